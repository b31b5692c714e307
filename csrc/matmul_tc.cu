// matmul_tc.cu: fp16 matmul on tensor cores with mma.sync (sm_80+; runs on sm_90).
//
//   C[b] = op(A[b]) @ op(B[b]),  op(A) is M x K, op(B) is K x N; fp16 in, fp32 accumulate,
//   C in fp16 or fp32. TRANS_A: A is stored K x M (C = A^T B); TRANS_B: B is stored N x K.
//
// Ladder (numbers continue the fp32 ladder of matmul.cu; tfm_kernels/matmul_tc.py registers them):
//   10 mma_sync        128x128x32 CTA tile, 4 warps of 64x64, each warp issuing
//                      mma.sync.m16n8k16 (fp32 accumulators: 4x8 tiles x 4 = 128 floats per lane)
//                      on fragments loaded with ldmatrix; ONE shared-memory stage: load, wait,
//                      compute, repeat, so memory and tensor cores take turns. Plain row-major
//                      shared tiles: one ldmatrix phase reads 8 rows x 16 bytes; with 64-byte
//                      rows (K-contiguous, BK = 32) they hit 2 of the 8 16-byte bank groups
//                      (4-way conflict), with 256-byte rows (M/N-contiguous, 128) just 1 (8-way).
//   11 mma_pipelined   + a 4-stage cp.async pipeline (3 tiles in flight while one is consumed) and
//                      XOR-swizzled shared tiles: ldmatrix phases and cp.async stores hit 8
//                      distinct 16-byte bank groups (conflict-free), no padding bytes.
//
// Tiles keep the global layout: a K-contiguous tile (A, or B when TRANS_B) is read with plain
// ldmatrix, an M/N-contiguous tile with ldmatrix.trans (see mma.cuh for the fragment layouts; the
// kernels run lane by lane on the CPU in the host emulation, tests/test_matmul_emulation.py, which
// also counts the bank groups of every ldmatrix phase).
//
// Edges: any M, N, K >= 1. When every contiguous extent is a multiple of 8 halves (16 bytes) and
// the bases are 16-byte aligned (ALIGNED = true), tiles move as 16-byte cp.async chunks that are
// either wholly inside or wholly outside the matrix, the outside ones zero-filled. Otherwise
// (ALIGNED = false: K = 7, N = 1000 with a transposed operand, ...) each chunk is gathered with 8
// guarded 2-byte loads. Zero fill makes the ragged K tail contribute exactly 0; stores are guarded.
#include <cuda_fp16.h>

#include "common.cuh"
#include "mma.cuh"

// Shared-memory offset (in halves) of element (r, c) of a ROWS x COLS tile stored row-major, with
// SWIZZLE: the 16-byte chunk index is XORed with bits of the row so that 8 consecutive rows at
// one logical chunk land in 8 different 16-byte bank groups (a 128-byte line has 8 of them):
//   COLS = 32 (64-byte rows, 2 rows per line):  chunk ^ ((r >> 1) & 3)
//   COLS >= 64 (>= 128-byte rows):              chunk ^ (r & 7) on the chunk's low 3 bits
template <int COLS, bool SWIZZLE>
static __device__ __forceinline__ int tile_offset(int r, int c) {
    constexpr int CHUNKS = COLS / 8;
    static_assert(COLS % 8 == 0, "rows are whole 16-byte chunks");
    static_assert(!SWIZZLE || CHUNKS == 4 || CHUNKS % 8 == 0, "swizzle defined for 64B or 128nB rows");
    int chunk = c >> 3;
    if (SWIZZLE) chunk ^= (CHUNKS == 4) ? ((r >> 1) & 3) : (r & 7);
    return r * COLS + (chunk << 3) + (c & 7);
}

// Copy rows [row0, row0+ROWS) x cols [col0, col0+COLS) of a row-major matrix (nrows x ncols,
// leading dimension ld) into a shared tile, zero-filling everything outside the matrix.
template <int ROWS, int COLS, int THREADS, bool SWIZZLE, bool ALIGNED>
static __device__ __forceinline__ void load_tile(__half* tile, const __half* __restrict__ g, int64_t ld,
                                                 int row0, int col0, int nrows, int ncols) {
    constexpr int CHUNKS_PER_ROW = COLS / 8;
    constexpr int CHUNKS = ROWS * CHUNKS_PER_ROW;
    static_assert(CHUNKS % THREADS == 0, "every thread moves the same number of chunks");
    if constexpr (ALIGNED) {
#pragma unroll
        for (int i = 0; i < CHUNKS / THREADS; ++i) {
            const int idx = static_cast<int>(threadIdx.x) + i * THREADS;
            const int r = idx / CHUNKS_PER_ROW, c = (idx % CHUNKS_PER_ROW) * 8;
            const int gr = row0 + r, gc = col0 + c;
            // ncols % 8 == 0 here, so a chunk starting inside the row ends inside it.
            const bool ok = gr < nrows && gc < ncols;
            const __half* src = ok ? g + gr * ld + gc : g;
            cp_async_16(smem_u32(tile + tile_offset<COLS, SWIZZLE>(r, c)), src, ok);
        }
    } else {
        // Gathered: 8 guarded 2-byte loads per chunk, one 16-byte shared store. Not unrolled: this
        // path exists for correctness on odd shapes, and unrolling it costs the hot loop registers.
#pragma unroll 1
        for (int i = 0; i < CHUNKS / THREADS; ++i) {
            const int idx = static_cast<int>(threadIdx.x) + i * THREADS;
            const int r = idx / CHUNKS_PER_ROW, c = (idx % CHUNKS_PER_ROW) * 8;
            const int gr = row0 + r, gc = col0 + c;
            union { uint4 v; __half h[8]; } u;
            const bool row_ok = gr < nrows;
#pragma unroll
            for (int e = 0; e < 8; ++e)
                u.h[e] = (row_ok && gc + e < ncols) ? g[gr * ld + gc + e] : __float2half_rn(0.0f);
            *reinterpret_cast<uint4*>(tile + tile_offset<COLS, SWIZZLE>(r, c)) = u.v;
        }
    }
}

// One CTA computes a BM x BN tile of C[blockIdx.z]; WARPS_M x WARPS_N warps each own a
// (BM/WARPS_M) x (BN/WARPS_N) sub-tile. Shared memory (dynamic): STAGES x (A tile + B tile).
//   A tile: BM x BK (K-contiguous) or, TRANS_A, BK x BM;  B tile: BK x BN or, TRANS_B, BN x BK.
// lda/ldb/ldc: leading dimensions of the stored matrices; sa/sb/sc: batch strides (0 broadcasts).
template <int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES, bool SWIZZLE, bool TRANS_A,
          bool TRANS_B, bool ALIGNED, typename OutT>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32)
matmul_mma(const __half* __restrict__ A, const __half* __restrict__ B, OutT* __restrict__ C, int M,
           int N, int K, int64_t lda, int64_t ldb, int64_t ldc, int64_t sa, int64_t sb, int64_t sc) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
    constexpr int MT = WTM / 16, NT = WTN / 8;              // mma tiles per warp
    constexpr int A_ELEMS = BM * BK, B_ELEMS = BK * BN;
    static_assert(WTM % 16 == 0 && WTN % 16 == 0 && BK % 16 == 0, "whole mma tiles, B loaded in pairs");

    extern __shared__ __align__(128) unsigned char smem_raw[];
    __half* sA = reinterpret_cast<__half*>(smem_raw);
    __half* sB = sA + STAGES * A_ELEMS;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int bm0 = blockIdx.y * BM, bn0 = blockIdx.x * BN;
    A += blockIdx.z * sa;
    B += blockIdx.z * sb;
    C += blockIdx.z * sc;

    auto load_stage = [&](int stage, int k0) {
        __half* ta = sA + stage * A_ELEMS;
        __half* tb = sB + stage * B_ELEMS;
        if (TRANS_A) load_tile<BK, BM, THREADS, SWIZZLE, ALIGNED>(ta, A, lda, k0, bm0, K, M);
        else         load_tile<BM, BK, THREADS, SWIZZLE, ALIGNED>(ta, A, lda, bm0, k0, M, K);
        if (TRANS_B) load_tile<BN, BK, THREADS, SWIZZLE, ALIGNED>(tb, B, ldb, bn0, k0, N, K);
        else         load_tile<BK, BN, THREADS, SWIZZLE, ALIGNED>(tb, B, ldb, k0, bn0, K, N);
    };

    float acc[MT][NT][4];
    zero_frags(acc);

    // Tensor-core work on one resident stage: BK/16 k-steps of MT x NT mma.sync each.
    auto compute_stage = [&](int stage) {
        const __half* ta = sA + stage * A_ELEMS;
        const __half* tb = sB + stage * B_ELEMS;
        const int j = lane >> 3, r8 = lane & 7;  // this lane addresses row r8 of 8x8 matrix j
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t af[MT][4], bf[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int m = wm * WTM + mt * 16;
                if (TRANS_A) {  // tile is k x m: matrix j = (m half j&1, k half j>>1), transposed
                    const int off = tile_offset<BM, SWIZZLE>(kk + (j >> 1) * 8 + r8, m + (j & 1) * 8);
                    ldmatrix_x4_trans(af[mt], smem_u32(ta + off));
                } else {        // tile is m x k: matrix j = (m half j&1, k half j>>1)
                    const int off = tile_offset<BK, SWIZZLE>(m + (j & 1) * 8 + r8, kk + (j >> 1) * 8);
                    ldmatrix_x4(af[mt], smem_u32(ta + off));
                }
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {  // two n8 tiles per ldmatrix.x4
                const int n = wn * WTN + np * 16;
                uint32_t t[4];
                if (TRANS_B) {  // tile is n x k: matrix j = (n half j>>1, k half j&1)
                    const int off = tile_offset<BK, SWIZZLE>(n + (j >> 1) * 8 + r8, kk + (j & 1) * 8);
                    ldmatrix_x4(t, smem_u32(tb + off));
                } else {        // tile is k x n: matrix j = (k half j&1, n half j>>1), transposed
                    const int off = tile_offset<BN, SWIZZLE>(kk + (j & 1) * 8 + r8, n + (j >> 1) * 8);
                    ldmatrix_x4_trans(t, smem_u32(tb + off));
                }
                bf[2 * np][0] = t[0];
                bf[2 * np][1] = t[1];
                bf[2 * np + 1][0] = t[2];
                bf[2 * np + 1][1] = t[3];
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mma_16816(acc[mt][nt], af[mt], bf[nt]);
        }
    };

    const int KT = tfm_cdiv(K, BK);
    if constexpr (STAGES == 1) {
        for (int kt = 0; kt < KT; ++kt) {
            load_stage(0, kt * BK);
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();   // the tile is visible to every warp
            compute_stage(0);
            __syncthreads();   // every warp is done reading before the next load overwrites it
        }
    } else {
        // Prologue: STAGES-1 tiles in flight. Every iteration commits exactly one group (possibly
        // empty) so that wait_group<STAGES-2> always means "tile kt has landed".
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < KT) load_stage(s, s * BK);
            cp_async_commit();
        }
        for (int kt = 0; kt < KT; ++kt) {
            cp_async_wait<STAGES - 2>();
            // Makes tile kt visible, and proves every warp finished tile kt-1, whose slot the
            // load below reuses.
            __syncthreads();
            const int next = kt + STAGES - 1;
            if (next < KT) load_stage(next % STAGES, next * BK);
            cp_async_commit();
            compute_stage(kt % STAGES);
        }
        cp_async_wait<0>();
    }

    // Epilogue: each lane holds C[g][2t..2t+1] and C[g+8][2t..2t+1] of every 16x8 tile.
    // Paired (8-byte fp32 / 4-byte fp16) stores need every row of this matrix aligned to a pair.
    const bool pair_ok = (ldc % 2 == 0) &&
                         (reinterpret_cast<unsigned long long>(C) % (2 * sizeof(OutT)) == 0);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int row = bm0 + wm * WTM + mt * 16 + (lane >> 2);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int col = bn0 + wn * WTN + nt * 8 + (lane & 3) * 2;
            store_pair(C, ldc, row, col, M, N, pair_ok, acc[mt][nt][0], acc[mt][nt][1]);
            store_pair(C, ldc, row + 8, col, M, N, pair_ok, acc[mt][nt][2], acc[mt][nt][3]);
        }
    }
}

// Exports: variant x layout (TRANS_A, TRANS_B) x ALIGNED x output dtype. Names are parsed by
// tfm_kernels/matmul_tc.py (kernel_name) in exactly this spelling.
// 10: mma_sync, one stage, row-major tiles.
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, false, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, true, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, false, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, true, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, false, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, true, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, false, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, true, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, false, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, true, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, false, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, true, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, false, false, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, false, true, false, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, false, false, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 1, false, true, true, false, __half>)
// 11: mma_pipelined, 4 stages, swizzled tiles.
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, false, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, true, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, false, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, true, true, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, false, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, true, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, false, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, true, false, float>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, false, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, true, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, false, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, true, true, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, false, false, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, false, true, false, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, false, false, __half>)
TFM_EXPORT(matmul_mma<128, 128, 32, 2, 2, 4, true, true, true, false, __half>)
