// matmul.cu: the fp32 SGEMM ladder, C = op(A) @ op(B), from a naive kernel to a cp.async pipeline,
// plus an opt-in TF32 tensor-core version. Op `matmul` in tfm_kernels (tfm_kernels/matmul.py holds
// the launch plans); reference: numpy_ref/matmul.py; tests: tests/test_matmul.py; benchmark:
// benchmarks/bench_matmul.py. The fp16 tensor-core kernels of the same op are in matmul_tc.cu and
// matmul_sm90.cu.
//
// Layouts (all row-major, contiguous; TA/TB are template parameters, so each layout is its own
// instantiation and the index arithmetic folds at compile time):
//   A: (M, K), or (K, M) when TA      op(A)[m][k] = TA ? A[k*M + m] : A[m*K + k]
//   B: (K, N), or (N, K) when TB      op(B)[k][n] = TB ? B[n*K + k] : B[k*N + n]
//   C: (M, N)                          C[m*N + n] = sum_k op(A)[m][k] * op(B)[k][n]
// NN is a plain product, NT (TB) is a linear layer's forward x @ W^T, NN its dX = dY @ W and TN its
// dW = dY^T @ X. Batched: blockIdx.z walks the batch with element strides sA, sB, sC (int64);
// inside one matrix every index fits in 32 bits (the wrapper checks M*K, K*N, M*N < 2^31).
// Any M, N, K >= 1: every kernel guards its edge tiles itself (out-of-range loads read 0, stores are
// skipped), so the host never pads. Vector (16-byte) loads are taken only where the row length is a
// multiple of 4 floats and the pointer is 16-byte aligned; otherwise the same kernel takes a guarded
// scalar path.
//
// The ladder (after siboehm/SGEMM_CUDA). Figures: TFLOP/s at 4096^3 NN on an H200 (cuBLAS 51.2) and
// the speedup over the previous step, from GPU run 1 (benchmarks/results/matmul_h200_run1.md;
// regenerated tables go to docs/matmul.md). 7 was re-shaped after that run: predicted.
//   1 naive          one thread per C element, threadIdx.x walks M: a warp reads 32 rows of A and
//                    writes 32 rows of C, 32 transactions per access.        0.5 at 1024^3 (1%)
//   2 coalesced      threadIdx.x walks N instead: a warp reads one broadcast A element and 32
//                    consecutive B/C elements (one 128-byte transaction).      6.0 (12%), ~12x 1
//                    (NT stays strided on B: 0.5 TFLOP/s for x.W^T)
//   3 smem_tiling    32x32 tiles of op(A) and op(B) staged in shared memory; each global element
//                    is read by 32 threads from smem instead of 32 times from L1/L2.
//                                              6.7 (13%), 1.1x 2 (L1 had done most of it already)
//   4 blocktile_1d   each thread computes 8 outputs of a column (64x64x8 tile, 512 threads): one
//                    B value from smem is reused for 8 FMAs.                    14.0 (27%), 2.1x 3
//   5 blocktile_2d   each thread computes an 8x8 block (128x128x8 tile, 256 threads): 16 smem
//                    loads feed 64 FMAs. 144 registers: one block per SM.       21.1 (41%), 1.5x 4
//   6 vectorized     16-byte global loads, and A stored transposed (As[k][m]) so the inner loop
//                    reads both operands with 128-bit LDS instead of 32-bit ones.
//                    125 registers: two blocks per SM.                          29.5 (58%), 1.4x 5
//   7 warptiling     variant 6 with a warp-tiled thread map: 8 warps of 32x64, each lane 2x2
//                    blocks of 4x4, conflict-free LDS.128.                       predicted ~32, 1.1x 6
//                    (first version, 128 threads x 128 accumulators: 22.6, 8 warps per SM)
//   8 cp_async       the warp-tiled map at BK=16 fed by a 3-stage cp.async ring (zero-fill at
//                    edges): global->smem copies bypass registers and overlap the FMAs. It keeps
//                    7's first shape (128 threads, 64x64 warp tiles, 8x16 outputs per lane): in
//                    256-thread form its copy loop re-derived addresses every k-tile (75% FFMA in
//                    NN's k-loop against 81% here, docs/matmul.md), predicted 39-41.
//                                                             41.7 (81%), 42.2 (83%) at 8192^3
//   9 tf32_mma       opt-in: mma.sync m16n8k8 TF32 tensor cores (operands rounded with
//                    cvt.rna.tf32.f32, ~1e-3 relative error, not the fp32 contract).
//                                                                82.7 (1.6x cuBLAS fp32)
//  14 iterators      8 with its copies rebuilt (written after run 1; at the end of the file).
//  15 split_k        14's kernels with K split across CTAs when the grid is small (same place).
// Build checks without a GPU: nvcc -arch=sm_90 -Xptxas -v (no spills in 5..9, 14) and NVRTC
// (tests/test_build.py); every kernel here also runs its own source on the CPU, thread by thread,
// in the host emulation (tests/test_matmul_emulation.py), at awkward sizes, every layout.
#include "common.cuh"
#include "mma.cuh"  // smem_u32, cp_async_16 (zero-fill), cp_async_commit, cp_async_wait

// ============================================================================ shared helpers
// Element (m, k) of op(A) and (k, n) of op(B): the only place the layouts are spelled out.
template <bool TA>
static __device__ __forceinline__ int a_index(int m, int k, int M, int K) {
    return TA ? k * M + m : m * K + k;
}
template <bool TB>
static __device__ __forceinline__ int b_index(int k, int n, int K, int N) {
    return TB ? n * K + k : k * N + n;
}

// Batched launches: blockIdx.z picks the matrix, sA/sB/sC are element strides (int64: a batch of
// large matrices passes 2^31 elements). Templated so the kernels' __restrict__ pointers bind as is.
template <typename PA, typename PB, typename PC>
static __device__ __forceinline__ void select_batch(PA& A, PB& B, PC& C, long long sA, long long sB,
                                                    long long sC) {
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
}

// Zero every element of a register array of any rank (accumulator tiles: float acc[TM][TN], ...).
static __device__ __forceinline__ void zero_fill(float& x) { x = 0.0f; }
template <typename T, int N>
static __device__ __forceinline__ void zero_fill(T (&x)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) zero_fill(x[i]);
}

// C[m][n] = v if (m, n) lies inside the M x N matrix (edge tiles: the outside part is skipped).
static __device__ __forceinline__ void store_guarded(float* __restrict__ C, int m, int n, int M, int N,
                                                     float v) {
    if (m < M && n < N) C[m * N + n] = v;
}

// Copy a TR x TC tile of a row-major `rows x cols` matrix X (memory coordinates: TC runs along the
// contiguous dimension) starting at (row0, col0) into shared memory, one scalar per thread step.
// Consecutive threads take consecutive columns, so a warp reads whole 128-byte lines. STORE_T stores
// the tile transposed (S[c][r]) so the kernel sees op(X) in the orientation it wants whatever the
// layout. Out-of-range elements are stored as 0 (they then add nothing to the dot products).
template <int TR, int TC, int NT, bool STORE_T, int LDS>
static __device__ __forceinline__ void tile_load_scalar(float* S, const float* __restrict__ X,
                                                        int row0, int col0, int rows, int cols,
                                                        int tid) {
    static_assert((TR * TC) % NT == 0, "tile must split evenly over the threads");
#pragma unroll
    for (int j = 0; j < TR * TC / NT; ++j) {
        const int idx = tid + j * NT;
        const int r = idx / TC, c = idx % TC;
        const int gr = row0 + r, gc = col0 + c;
        const float v = (gr < rows && gc < cols) ? X[gr * cols + gc] : 0.0f;
        S[STORE_T ? c * LDS + r : r * LDS + c] = v;
    }
}

// Same, for op(A) given in logical (m, k) coordinates: the memory tile is BM x BK (row-major A) or
// BK x BM (A stored transposed). KM_ORDER picks the smem orientation: false -> S[m][k], true -> S[k][m].
template <int BM, int BK, int NT, bool TA, bool KM_ORDER, int LDS>
static __device__ __forceinline__ void load_a_scalar(float* S, const float* __restrict__ A, int m0,
                                                     int k0, int M, int K, int tid) {
    if (TA)  // memory (k, m): rows are k
        tile_load_scalar<BK, BM, NT, !KM_ORDER, LDS>(S, A, k0, m0, K, M, tid);
    else     // memory (m, k)
        tile_load_scalar<BM, BK, NT, KM_ORDER, LDS>(S, A, m0, k0, M, K, tid);
}

// op(B) in logical (k, n) coordinates into S[k][n] (NK_ORDER false) or S[n][k] (true).
template <int BK, int BN, int NT, bool TB, bool NK_ORDER, int LDS>
static __device__ __forceinline__ void load_b_scalar(float* S, const float* __restrict__ B, int k0,
                                                     int n0, int K, int N, int tid) {
    if (TB)  // memory (n, k)
        tile_load_scalar<BN, BK, NT, !NK_ORDER, LDS>(S, B, n0, k0, N, K, tid);
    else     // memory (k, n)
        tile_load_scalar<BK, BN, NT, NK_ORDER, LDS>(S, B, k0, n0, K, N, tid);
}

// sum_k op(A)[m][k] * op(B)[k][n], every operand straight from global memory (variants 1 and 2: they
// differ only in which of m, n the lanes of a warp walk).
template <bool TA, bool TB>
static __device__ __forceinline__ float dot_global(const float* __restrict__ A, const float* __restrict__ B,
                                                   int m, int n, int M, int N, int K) {
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[a_index<TA>(m, k, M, K)] * B[b_index<TB>(k, n, K, N)];
    return acc;
}

// ============================================================================ 1 naive
// Block 32x32, one thread per C element; threadIdx.x -> m. Consecutive lanes own consecutive rows,
// so each lane's A read and C write land in a different 128-byte line (row stride K or N floats):
// 32 transactions where 1 would do. This is the baseline every later step is measured against.
template <bool TA, bool TB>
__global__ void __launch_bounds__(1024)
    matmul_naive(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                 int M, int N, int K, long long sA, long long sB, long long sC) {
    select_batch(A, B, C, sA, sB, sC);
    const int m = blockIdx.x * 32 + threadIdx.x;  // lanes walk m: stride K (A) and N (C) apart
    const int n = blockIdx.y * 32 + threadIdx.y;
    if (m >= M || n >= N) return;
    C[m * N + n] = dot_global<TA, TB>(A, B, m, n, M, N, K);
}
TFM_EXPORT(matmul_naive<false, false>)
TFM_EXPORT(matmul_naive<false, true>)
TFM_EXPORT(matmul_naive<true, false>)
TFM_EXPORT(matmul_naive<true, true>)

// ============================================================================ 2 coalesced
// The same arithmetic with threadIdx.x -> n: a warp now reads one A element (broadcast) and 32
// consecutive B elements, and writes 32 consecutive C elements: one transaction each. (With TB the
// B read is still strided by K; variant 3 fixes that by staging through shared memory.)
template <bool TA, bool TB>
__global__ void __launch_bounds__(1024)
    matmul_coalesced(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                     int M, int N, int K, long long sA, long long sB, long long sC) {
    select_batch(A, B, C, sA, sB, sC);
    const int n = blockIdx.x * 32 + threadIdx.x;  // lanes walk n: consecutive B and C elements
    const int m = blockIdx.y * 32 + threadIdx.y;
    if (m >= M || n >= N) return;
    C[m * N + n] = dot_global<TA, TB>(A, B, m, n, M, N, K);
}
TFM_EXPORT(matmul_coalesced<false, false>)
TFM_EXPORT(matmul_coalesced<false, true>)
TFM_EXPORT(matmul_coalesced<true, false>)
TFM_EXPORT(matmul_coalesced<true, true>)

// ============================================================================ 3 smem_tiling
// Block BSxBS threads, one C element each; per k-step the block stages a BSxBS tile of op(A) and of
// op(B) in shared memory (each loaded along its contiguous memory dimension, so every layout reads
// whole lines) and every thread reads BS values of each from smem. Global traffic drops BS-fold.
// Rows padded to BS+1 floats: a transposed store (TA/TB) then walks 33-float strides, one bank each.
template <int BS, bool TA, bool TB>
__global__ void __launch_bounds__(BS * BS)
    matmul_smem(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                int M, int N, int K, long long sA, long long sB, long long sC) {
    constexpr int LD = BS + 1;
    __shared__ float As[BS * LD];  // As[m][k]
    __shared__ float Bs[BS * LD];  // Bs[k][n]
    select_batch(A, B, C, sA, sB, sC);
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * BS + tx;
    const int m0 = blockIdx.y * BS, n0 = blockIdx.x * BS;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += BS) {
        load_a_scalar<BS, BS, BS * BS, TA, false, LD>(As, A, m0, k0, M, K, tid);
        load_b_scalar<BS, BS, BS * BS, TB, false, LD>(Bs, B, k0, n0, K, N, tid);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BS; ++k) acc += As[ty * LD + k] * Bs[k * LD + tx];
        __syncthreads();  // the next iteration overwrites the tiles
    }
    store_guarded(C, m0 + ty, n0 + tx, M, N, acc);
}
TFM_EXPORT(matmul_smem<32, false, false>)
TFM_EXPORT(matmul_smem<32, false, true>)
TFM_EXPORT(matmul_smem<32, true, false>)
TFM_EXPORT(matmul_smem<32, true, true>)

// ============================================================================ 4 blocktile_1d
// BM x BN tile, BK-deep k-steps, BM*BN/TM threads; thread t owns column t % BN and TM consecutive
// rows. Per k the thread loads one B value and TM A values from smem for TM FMAs, so smem traffic
// per FMA drops from 2 loads to (1 + TM)/TM. The A reads are warp-wide broadcasts (all 32 lanes of a
// warp share the row block), so they cost one transaction.
// Padding: As rows BK+1 (odd: a transposed store of 32 consecutive m hits 32 banks); Bs rows BN+4
// (a transposed store of 8 k x 4 n lands on banks 4k+n, all distinct).
template <int BM, int BN, int BK, int TM, bool TA, bool TB>
__global__ void __launch_bounds__(BM * BN / TM)
    matmul_blocktile_1d(const float* __restrict__ A, const float* __restrict__ B,
                        float* __restrict__ C, int M, int N, int K, long long sA, long long sB,
                        long long sC) {
    constexpr int NT = BM * BN / TM;
    constexpr int LDA = BK + 1, LDB = BN + 4;
    __shared__ float As[BM * LDA];  // As[m][k]
    __shared__ float Bs[BK * LDB];  // Bs[k][n]
    select_batch(A, B, C, sA, sB, sC);
    const int tid = threadIdx.x;
    const int tcol = tid % BN, trow = tid / BN;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM];
    zero_fill(acc);
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_a_scalar<BM, BK, NT, TA, false, LDA>(As, A, m0, k0, M, K, tid);
        load_b_scalar<BK, BN, NT, TB, false, LDB>(Bs, B, k0, n0, K, N, tid);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const float b = Bs[k * LDB + tcol];
#pragma unroll
            for (int i = 0; i < TM; ++i) acc[i] += As[(trow * TM + i) * LDA + k] * b;
        }
        __syncthreads();
    }
    const int n = n0 + tcol;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + trow * TM + i;
        store_guarded(C, m, n, M, N, acc[i]);
    }
}
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, false, false>)
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, false, true>)
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, true, false>)
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, true, true>)

// acc += a b^T: the R x C outer product of a register column and a register row, R*C FMAs on R+C
// values already in registers (the register blocking of variants 5..8).
template <int R, int C>
static __device__ __forceinline__ void outer_product_fma(float (&acc)[R][C], const float (&a)[R],
                                                         const float (&b)[C]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < C; ++j) acc[i][j] += a[i] * b[j];
}

// ============================================================================ 5 blocktile_2d
// Each thread owns a TM x TN block of C (BM*BN/(TM*TN) threads). Per k it loads TM values of A and
// TN of B into registers and does TM*TN FMAs: 16 loads for 64 FMAs at 8x8, against 9 for 8 in
// variant 4. A stays in As[m][k] here (32-bit strided reads); variant 6 transposes it.
template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
__global__ void __launch_bounds__(BM * BN / (TM * TN))
    matmul_blocktile_2d(const float* __restrict__ A, const float* __restrict__ B,
                        float* __restrict__ C, int M, int N, int K, long long sA, long long sB,
                        long long sC) {
    constexpr int NT = BM * BN / (TM * TN);
    constexpr int LDA = BK + 1, LDB = BN + 4;
    __shared__ float As[BM * LDA];  // As[m][k]
    __shared__ float Bs[BK * LDB];  // Bs[k][n]
    select_batch(A, B, C, sA, sB, sC);
    const int tid = threadIdx.x;
    const int tcol = tid % (BN / TN), trow = tid / (BN / TN);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM][TN];
    zero_fill(acc);
    float ra[TM], rb[TN];
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_a_scalar<BM, BK, NT, TA, false, LDA>(As, A, m0, k0, M, K, tid);
        load_b_scalar<BK, BN, NT, TB, false, LDB>(Bs, B, k0, n0, K, N, tid);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
#pragma unroll
            for (int i = 0; i < TM; ++i) ra[i] = As[(trow * TM + i) * LDA + k];
#pragma unroll
            for (int j = 0; j < TN; ++j) rb[j] = Bs[k * LDB + tcol * TN + j];
            outer_product_fma(acc, ra, rb);  // TM*TN FMAs for TM+TN shared-memory loads
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + trow * TM + i;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = n0 + tcol * TN + j;
            store_guarded(C, m, n, M, N, acc[i][j]);
        }
    }
}
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, false, false>)
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, false, true>)
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, true, false>)
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, true, true>)

// ============================================================================ vector helpers (6..9)
// Four consecutive elements X[row][col..col+3] of a row-major `rows x cols` matrix, zeros outside.
// vec: cols % 4 == 0 and X 16-byte aligned (so with col % 4 == 0 a chunk is wholly inside or wholly
// outside the row and one 16-byte load is legal); otherwise, or at a ragged edge, four guarded
// scalar loads.
static __device__ __forceinline__ float4 load4_guarded(const float* __restrict__ X, int row, int col,
                                                       int rows, int cols, bool vec) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row < rows) {
        const float* p = X + row * cols + col;
        if (vec && col + 3 < cols) {
            v = *reinterpret_cast<const float4*>(p);
        } else {
            if (col < cols) v.x = p[0];
            if (col + 1 < cols) v.y = p[1];
            if (col + 2 < cols) v.z = p[2];
            if (col + 3 < cols) v.w = p[3];
        }
    }
    return v;
}

static __device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15) == 0;
}

// Four consecutive floats of shared memory into registers r[0..3] with one 16-byte load (LDS.128);
// p must be 16-byte aligned (row strides and offsets that are multiples of 4 floats).
static __device__ __forceinline__ void lds4(float* r, const float* p) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    r[0] = t.x, r[1] = t.y, r[2] = t.z, r[3] = t.w;
}

// tile_load_scalar with 16-byte loads along the contiguous dimension (TC % 4 == 0). A straight
// store writes the float4 as is (LDS % 4 == 0 keeps it aligned); STORE_T scatters its 4 floats down
// a column of S, which is how a row-major A tile becomes the k-major As[k][m] the inner loop wants.
template <int TR, int TC, int NT, bool STORE_T, int LDS>
static __device__ __forceinline__ void tile_load_vec4(float* S, const float* __restrict__ X, int row0,
                                                      int col0, int rows, int cols, bool vec, int tid) {
    constexpr int C4 = TC / 4;
    static_assert(TC % 4 == 0 && LDS % 4 == 0, "float4 chunks along the contiguous dimension");
    static_assert((TR * C4) % NT == 0, "tile must split evenly over the threads");
#pragma unroll
    for (int j = 0; j < TR * C4 / NT; ++j) {
        const int idx = tid + j * NT;
        const int r = idx / C4, c = (idx % C4) * 4;
        const float4 v = load4_guarded(X, row0 + r, col0 + c, rows, cols, vec);
        if (STORE_T) {
            S[(c + 0) * LDS + r] = v.x;
            S[(c + 1) * LDS + r] = v.y;
            S[(c + 2) * LDS + r] = v.z;
            S[(c + 3) * LDS + r] = v.w;
        } else {
            *reinterpret_cast<float4*>(&S[r * LDS + c]) = v;
        }
    }
}

// op(A) tile into As[k][m] (k-major), op(B) tile into Bs[k][n], 16-byte loads where allowed.
template <int BM, int BK, int NT, bool TA, int LDA>
static __device__ __forceinline__ void load_a_km_vec4(float* As, const float* __restrict__ A, int m0,
                                                      int k0, int M, int K, bool vec, int tid) {
    if (TA) tile_load_vec4<BK, BM, NT, false, LDA>(As, A, k0, m0, K, M, vec, tid);  // memory (k, m)
    else    tile_load_vec4<BM, BK, NT, true, LDA>(As, A, m0, k0, M, K, vec, tid);   // memory (m, k)
}
template <int BK, int BN, int NT, bool TB, int LDB>
static __device__ __forceinline__ void load_b_kn_vec4(float* Bs, const float* __restrict__ B, int k0,
                                                      int n0, int K, int N, bool vec, int tid) {
    if (TB) tile_load_vec4<BN, BK, NT, true, LDB>(Bs, B, n0, k0, N, K, vec, tid);   // memory (n, k)
    else    tile_load_vec4<BK, BN, NT, false, LDB>(Bs, B, k0, n0, K, N, vec, tid);  // memory (k, n)
}

// Four consecutive outputs C[m][n..n+3]: one 16-byte store when the row allows, else guarded scalars.
static __device__ __forceinline__ void store4_guarded(float* __restrict__ C, int m, int n, int M, int N,
                                                      bool vec, float x0, float x1, float x2, float x3) {
    if (m >= M) return;
    float* p = C + m * N + n;
    if (vec && n + 3 < N) {
        *reinterpret_cast<float4*>(p) = make_float4(x0, x1, x2, x3);
    } else {
        if (n < N) p[0] = x0;
        if (n + 1 < N) p[1] = x1;
        if (n + 2 < N) p[2] = x2;
        if (n + 3 < N) p[3] = x3;
    }
}

// ============================================================================ 6 vectorized
// Variant 5's tiling, two changes: global loads are 16 bytes wide (one LDG.128 instead of four
// LDG.32 where alignment allows), and A is stored k-major (As[k][m], transposed on the way in
// when A is row-major) so the inner loop reads TM consecutive A values as float4s, like B: 4
// LDS.128 per k instead of 16 LDS.32. C is written with 16-byte stores.
template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
__global__ void __launch_bounds__(BM * BN / (TM * TN))
    matmul_vectorized(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                      int M, int N, int K, long long sA, long long sB, long long sC) {
    constexpr int NT = BM * BN / (TM * TN);
    constexpr int LDA = BM + 4, LDB = BN + 4;  // +4: rows stay 16-byte aligned, transposed stores spread
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register blocks are read as float4s");
    __shared__ __align__(16) float As[BK * LDA];  // As[k][m]
    __shared__ __align__(16) float Bs[BK * LDB];  // Bs[k][n]
    select_batch(A, B, C, sA, sB, sC);
    const bool vecA = (TA ? M : K) % 4 == 0 && aligned16(A);
    const bool vecB = (TB ? K : N) % 4 == 0 && aligned16(B);
    const bool vecC = N % 4 == 0 && aligned16(C);
    const int tid = threadIdx.x;
    const int tcol = tid % (BN / TN), trow = tid / (BN / TN);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM][TN];
    zero_fill(acc);
    float ra[TM], rb[TN];
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_a_km_vec4<BM, BK, NT, TA, LDA>(As, A, m0, k0, M, K, vecA, tid);
        load_b_kn_vec4<BK, BN, NT, TB, LDB>(Bs, B, k0, n0, K, N, vecB, tid);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
#pragma unroll
            for (int i = 0; i < TM; i += 4) lds4(&ra[i], &As[k * LDA + trow * TM + i]);
#pragma unroll
            for (int j = 0; j < TN; j += 4) lds4(&rb[j], &Bs[k * LDB + tcol * TN + j]);
            outer_product_fma(acc, ra, rb);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; j += 4)
            store4_guarded(C, m0 + trow * TM + i, n0 + tcol * TN + j, M, N, vecC, acc[i][j],
                           acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]);
}
TFM_EXPORT(matmul_vectorized<128, 128, 8, 8, 8, false, false>)
TFM_EXPORT(matmul_vectorized<128, 128, 8, 8, 8, false, true>)
TFM_EXPORT(matmul_vectorized<128, 128, 8, 8, 8, true, false>)
TFM_EXPORT(matmul_vectorized<128, 128, 8, 8, 8, true, true>)

// ============================================================================ warp tile (7, 8)
// The thread -> output map of variants 7 and 8 (siboehm's kernel 10). The BM x BN block tile is cut
// into WM x WN warp tiles; a warp walks its tile in WMITER x WNITER sub-tiles of WSUBM x WSUBN, and
// inside a sub-tile lane l owns the TM x TN block at row (l / (WSUBN/TN)) * TM, col (l % (WSUBN/TN)) * TN.
// Used at 128x128, 8 warps of 32x64 (CUTLASS's SIMT SGEMM shape), TM = TN = 4, WMITER = WNITER = 2:
// each lane owns 2 x 2 blocks of 4 x 4 (the same 64 outputs as variant 6's 8x8 block, spread out).
// A quarter-warp LDS.128 phase (lanes 8q .. 8q+7) then reads one 16-byte word of As (broadcast) and
// 8 consecutive words of Bs: conflict-free, where variant 6's 8x8 map had 2-way conflicts on Bs.
// (A first version used 128 threads with 8x16 outputs each, siboehm's A6000 choice: at ~230
// registers only 8 warps fit an SM, and on the H200 it ran at 22 TFLOP/s, below variant 6's 29.)
template <int BM, int BN, int BK, int WM, int WN, int WNITER, int TM, int TN, int NT>
struct WarpTile {
    static constexpr int WMITER = (WM * WN) / (32 * TM * TN * WNITER);
    static constexpr int WSUBM = WM / WMITER, WSUBN = WN / WNITER;
    static constexpr int LDA = BM + 4, LDB = BN + 4;  // As[k][m], Bs[k][n]
    static_assert(NT == (BM / WM) * (BN / WN) * 32, "one warp per warp tile");
    static_assert(WMITER * WNITER * TM * TN * 32 == WM * WN, "warp tile must split over 32 lanes");
    static_assert((WSUBN / TN) * (WSUBM / TM) == 32, "a sub-tile is 32 lanes");
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register blocks are read as float4s");

    int row, col;  // this lane's first output, relative to the block tile

    __device__ __forceinline__ WarpTile(int tid) {
        const int warp = tid / 32, lane = tid % 32;
        row = (warp / (BN / WN)) * WM + (lane / (WSUBN / TN)) * TM;
        col = (warp % (BN / WN)) * WN + (lane % (WSUBN / TN)) * TN;
    }

    // acc += As^T Bs over one BK-deep stage.
    __device__ __forceinline__ void compute(const float* As, const float* Bs,
                                            float (&acc)[WMITER * TM][WNITER * TN]) const {
        float ra[WMITER * TM], rb[WNITER * TN];
#pragma unroll
        for (int k = 0; k < BK; ++k) {
#pragma unroll
            for (int wm = 0; wm < WMITER; ++wm)
#pragma unroll
                for (int i = 0; i < TM; i += 4) lds4(&ra[wm * TM + i], &As[k * LDA + row + wm * WSUBM + i]);
#pragma unroll
            for (int wn = 0; wn < WNITER; ++wn)
#pragma unroll
                for (int j = 0; j < TN; j += 4) lds4(&rb[wn * TN + j], &Bs[k * LDB + col + wn * WSUBN + j]);
            outer_product_fma(acc, ra, rb);
        }
    }

    __device__ __forceinline__ void store(float* __restrict__ C, int m0, int n0, int M, int N, bool vec,
                                          const float (&acc)[WMITER * TM][WNITER * TN]) const {
#pragma unroll
        for (int wm = 0; wm < WMITER; ++wm)
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int wn = 0; wn < WNITER; ++wn)
#pragma unroll
                    for (int j = 0; j < TN; j += 4) {
                        const float* a = &acc[wm * TM + i][wn * TN + j];
                        store4_guarded(C, m0 + row + wm * WSUBM + i, n0 + col + wn * WSUBN + j, M, N, vec,
                                       a[0], a[1], a[2], a[3]);
                    }
    }
};

// ============================================================================ 7 warptiling
// Variant 6 with the warp-tiled thread map above and nothing else changed (same 128x128x8 tile, 256
// threads, 64 outputs per thread, register-staged loads). __launch_bounds__(NT, 2) caps registers at
// 128 so two blocks (16 warps) share an SM: without it nvcc takes 153 for NN and one block fits.
template <int BM, int BN, int BK, int WM, int WN, int WNITER, int TM, int TN, int NT, bool TA, bool TB>
__global__ void __launch_bounds__(NT, 2)
    matmul_warptile(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                    int M, int N, int K, long long sA, long long sB, long long sC) {
    using WT = WarpTile<BM, BN, BK, WM, WN, WNITER, TM, TN, NT>;
    __shared__ __align__(16) float As[BK * WT::LDA];
    __shared__ __align__(16) float Bs[BK * WT::LDB];
    // Written out, not select_batch/zero_fill as in its neighbours: the helpers swap two register
    // zeroings in the TA instantiations' SASS, and refactors keep SASS identical (scripts/sass_diff.py).
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    const bool vecA = (TA ? M : K) % 4 == 0 && aligned16(A);
    const bool vecB = (TB ? K : N) % 4 == 0 && aligned16(B);
    const bool vecC = N % 4 == 0 && aligned16(C);
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const WT wt(tid);
    float acc[WT::WMITER * TM][WNITER * TN];
#pragma unroll
    for (int i = 0; i < WT::WMITER * TM; ++i)
#pragma unroll
        for (int j = 0; j < WNITER * TN; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_a_km_vec4<BM, BK, NT, TA, WT::LDA>(As, A, m0, k0, M, K, vecA, tid);
        load_b_kn_vec4<BK, BN, NT, TB, WT::LDB>(Bs, B, k0, n0, K, N, vecB, tid);
        __syncthreads();
        wt.compute(As, Bs, acc);
        __syncthreads();
    }
    wt.store(C, m0, n0, M, N, vecC, acc);
}
TFM_EXPORT(matmul_warptile<128, 128, 8, 32, 64, 2, 4, 4, 256, false, false>)
TFM_EXPORT(matmul_warptile<128, 128, 8, 32, 64, 2, 4, 4, 256, false, true>)
TFM_EXPORT(matmul_warptile<128, 128, 8, 32, 64, 2, 4, 4, 256, true, false>)
TFM_EXPORT(matmul_warptile<128, 128, 8, 32, 64, 2, 4, 4, 256, true, true>)

// ============================================================================ cp.async helpers (8, 9)
// 4 bytes global -> shared, zero-filled when pred is false (src-size 0: nothing is read); .ca, the only
// cache mode cp.async allows below 16 bytes (the 4 neighbours a warp copies share L1 lines).
#if defined(__CUDACC__)  // the host emulation (tests/cuda_host/cuda_host.h) has its own
static __device__ __forceinline__ void cp_async_4(uint32_t smem, const void* gmem, bool pred) {
    const int src_bytes = pred ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem), "l"(gmem), "r"(src_bytes));
}
#endif  // on the blank line's place: NVRTC's code for the TF32 kernels moved with their line numbers
// tile_load_vec4 without the register round trip: the copies land in shared memory asynchronously
// (visible after cp_async_wait + __syncthreads). A straight tile moves in 16-byte chunks when vec
// (each chunk wholly inside or outside the matrix, the outside ones zero-filled); a transposed tile
// (STORE_T) or an unaligned one moves element by element with 4-byte copies, consecutive lanes on
// consecutive columns so a warp still reads whole lines. Out-of-range copies point at X itself (a
// valid address; src-size 0 reads nothing).
template <int TR, int TC, int NT, bool STORE_T, int LDS>
static __device__ __forceinline__ void tile_cp_async(float* S, const float* __restrict__ X, int row0,
                                                     int col0, int rows, int cols, bool vec, int tid) {
    static_assert(TC % 4 == 0 && LDS % 4 == 0, "16-byte chunks along the contiguous dimension");
    if (!STORE_T && vec) {
        constexpr int C4 = TC / 4;
        static_assert((TR * C4) % NT == 0, "tile must split evenly over the threads");
#pragma unroll
        for (int j = 0; j < TR * C4 / NT; ++j) {
            const int idx = tid + j * NT;
            const int r = idx / C4, c = (idx % C4) * 4;
            const int gr = row0 + r, gc = col0 + c;
            const bool ok = gr < rows && gc < cols;
            cp_async_16(smem_u32(&S[r * LDS + c]), ok ? X + gr * cols + gc : X, ok);
        }
    } else {
        // Thread -> (r0 + j * RSTEP, c): the column is fixed per thread, so each copy is the
        // previous one's address plus a stride. Rolled by 4, not fully: 16 unrolled copies would
        // keep 16 source pointers live across the k-loop and push variant 8 past 255 registers.
        static_assert(NT % TC == 0 && TR % (NT / TC) == 0, "tile must split evenly over the threads");
        constexpr int RSTEP = NT / TC;
        constexpr uint32_t DSTEP = (STORE_T ? RSTEP : RSTEP * LDS) * sizeof(float);
        const int r0 = tid / TC, c = tid % TC;
        const int gc = col0 + c;
        const bool col_ok = gc < cols;
        // 64-bit offsets: a row past the edge (row0 + r0 >= rows, never read) may lie beyond int32.
        const float* src = X + static_cast<long long>(row0 + r0) * cols + gc;
        const uint32_t dst = smem_u32(&S[STORE_T ? c * LDS + r0 : r0 * LDS + c]);
#pragma unroll 4
        for (int j = 0; j < TR / RSTEP; ++j) {
            const bool ok = col_ok && row0 + r0 + j * RSTEP < rows;
            cp_async_4(dst + j * DSTEP, ok ? src + static_cast<long long>(j * RSTEP) * cols : X, ok);
        }
    }
}

// op(A) and op(B) tiles into shared memory in either orientation, as load_a_scalar/load_b_scalar do
// with registers: As[k][m] (KM_ORDER) or As[m][k]; Bs[n][k] (NK_ORDER) or Bs[k][n].
template <int BM, int BK, int NT, bool TA, bool KM_ORDER, int LDS>
static __device__ __forceinline__ void load_a_cp_async(float* S, const float* __restrict__ A, int m0,
                                                       int k0, int M, int K, bool vec, int tid) {
    if (TA) tile_cp_async<BK, BM, NT, !KM_ORDER, LDS>(S, A, k0, m0, K, M, vec, tid);  // memory (k, m)
    else    tile_cp_async<BM, BK, NT, KM_ORDER, LDS>(S, A, m0, k0, M, K, vec, tid);   // memory (m, k)
}
template <int BK, int BN, int NT, bool TB, bool NK_ORDER, int LDS>
static __device__ __forceinline__ void load_b_cp_async(float* S, const float* __restrict__ B, int k0,
                                                       int n0, int K, int N, bool vec, int tid) {
    if (TB) tile_cp_async<BN, BK, NT, !NK_ORDER, LDS>(S, B, n0, k0, N, K, vec, tid);  // memory (n, k)
    else    tile_cp_async<BK, BN, NT, NK_ORDER, LDS>(S, B, k0, n0, K, N, vec, tid);   // memory (k, n)
}

// ============================================================================ 8 cp_async
// The warp-tiled thread map at BK = 16 (half the barriers per FMA; affordable because the copies no
// longer stage through registers), fed by a STAGES-deep cp.async ring in dynamic shared memory:
// while the warps compute on stage kt % STAGES, the copies for tile kt + STAGES - 1 are in flight,
// so global latency hides behind STAGES-1 stages of FMAs instead of stalling every k-step, and the
// loads no longer pass through registers (variant 7 holds 2 float4s per thread across the store).
// Instantiated at 128 threads, 64x64 warp tiles, 8x16 outputs per lane (205-241 registers: two
// blocks, 8 warps, per SM): the shape GPU run 1 measured at 42.2 TFLOP/s. Its machine code is byte-identical to that run's
// (scripts/sass_diff.py --base e4e6558; register counts equal to run 1's ptxas report). The 256-thread
// shape variant 7 now uses was tried here after run 1 and set aside on its SASS: the scattered 4-byte
// copies of the transposed operand cost 92 instructions per 4 copies there against 57 here.
//
// The ring's two steps, shared with variant 9; load_stage(kt, stage) issues the copies of k-tile kt
// into ring slot `stage`. Group accounting: the prologue commits STAGES-1 groups and every k-step
// one more (possibly empty), so before computing tile kt, `wait_group STAGES-2` leaves only the
// newer ones in flight.
template <int STAGES, typename LoadStage>
static __device__ __forceinline__ void cp_async_prologue(int ktiles, LoadStage load_stage) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }
}

// Start of k-step kt: waits for tile kt, issues tile kt + STAGES - 1, returns tile kt's slot.
template <int STAGES, typename LoadStage>
static __device__ __forceinline__ int cp_async_advance(int kt, int ktiles, LoadStage load_stage) {
    cp_async_wait<STAGES - 2>();  // this thread's copies of tile kt have landed
    __syncthreads();              // everyone's have; and everyone is done with tile kt-1's stage
    const int next = kt + STAGES - 1;
    if (next < ktiles) load_stage(next, next % STAGES);  // refills the stage tile kt-1 used
    cp_async_commit();
    return kt % STAGES;
}

template <int BM, int BN, int BK, int WM, int WN, int WNITER, int TM, int TN, int NT, int STAGES,
          bool TA, bool TB>
__global__ void __launch_bounds__(NT)
    matmul_cp_async(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                    int M, int N, int K, long long sA, long long sB, long long sC) {
    using WT = WarpTile<BM, BN, BK, WM, WN, WNITER, TM, TN, NT>;
    constexpr int A_STAGE = BK * WT::LDA, B_STAGE = BK * WT::LDB;  // floats per stage
    extern __shared__ float4 dyn_smem4[];
    float* As = reinterpret_cast<float*>(dyn_smem4);   // STAGES x As[k][m]
    float* Bs = As + STAGES * A_STAGE;                 // STAGES x Bs[k][n]
    select_batch(A, B, C, sA, sB, sC);
    const bool vecA = (TA ? M : K) % 4 == 0 && aligned16(A);
    const bool vecB = (TB ? K : N) % 4 == 0 && aligned16(B);
    const bool vecC = N % 4 == 0 && aligned16(C);
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int ktiles = tfm_cdiv(K, BK);

    // As[k][m] and Bs[k][n], whatever the layout: a row-major A (or a transposed B) is scattered
    // with 4-byte copies, the other operand moves in 16-byte chunks.
    auto load_stage = [&](int kt, int stage) {
        const int k0 = kt * BK;
        load_a_cp_async<BM, BK, NT, TA, true, WT::LDA>(As + stage * A_STAGE, A, m0, k0, M, K, vecA, tid);
        load_b_cp_async<BK, BN, NT, TB, false, WT::LDB>(Bs + stage * B_STAGE, B, k0, n0, K, N, vecB, tid);
    };

    const WT wt(tid);
    float acc[WT::WMITER * TM][WNITER * TN];
    zero_fill(acc);
    cp_async_prologue<STAGES>(ktiles, load_stage);  // tiles 0 .. STAGES-2 in flight
    for (int kt = 0; kt < ktiles; ++kt) {
        const int stage = cp_async_advance<STAGES>(kt, ktiles, load_stage);
        wt.compute(As + stage * A_STAGE, Bs + stage * B_STAGE, acc);  // while later tiles land
    }
    cp_async_wait<0>();  // no copy may outlive the block (only empty groups remain by now)
    wt.store(C, m0, n0, M, N, vecC, acc);
}
TFM_EXPORT(matmul_cp_async<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, false, false>)
TFM_EXPORT(matmul_cp_async<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, false, true>)
TFM_EXPORT(matmul_cp_async<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, true, false>)
TFM_EXPORT(matmul_cp_async<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, true, true>)

// ============================================================================ 9 tf32_mma (opt-in)
// Tensor cores on fp32 data: mma.sync m16n8k8 with TF32 operands (10 explicit mantissa bits,
// rounded from fp32 with cvt.rna, round-half-away), fp32 accumulation. Each input carries a
// relative rounding error up to 2^-11, so a product is off by up to ~1e-3 relative: it is NOT the
// fp32 contract, which is why the variant is opt-in (never chosen by default). The test checks it
// to fp32 accuracy against a reference computed from TF32-rounded inputs, and to ~1e-3 * sqrt(K)
// of max|C| against the exact product.
//
// BM x BN x BK block tile, WARPS_M x WARPS_N warps, each warp a (BM/WARPS_M) x (BN/WARPS_N) tile of
// 16x8 mma tiles. Shared tiles keep k contiguous, As[m][k] and Bs[n][k] (the mma's "row.col"
// operands), rows padded to BK + 4 floats: the fragment loads (lane l reads row l/4, column l%4)
// then hit banks 20*(l/4) + l%4 mod 32, all 32 distinct. Fed by the same cp.async ring as variant 8.
// Fragments (PTX ISA, mma.m16n8k8 .tf32; g = lane/4, t = lane%4):
//   A 16x8: a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]
//   B 8x8:  b0 = B[t][g], b1 = B[t+4][g];  C 16x8: c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
#if defined(__CUDACC__)  // the host emulation (tests/cuda_host/cuda_host.h) has its own
static __device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

static __device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4],
                                                     const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif
template <int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES, bool TA, bool TB>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32)
    matmul_tf32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                int M, int N, int K, long long sA, long long sB, long long sC) {
    constexpr int NT = WARPS_M * WARPS_N * 32;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
    constexpr int MT = WTM / 16, NTL = WTN / 8;            // mma tiles per warp
    constexpr int LD = BK + 4;                              // As[m][k], Bs[n][k] row stride
    constexpr int A_STAGE = BM * LD, B_STAGE = BN * LD;
    static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % 8 == 0, "whole mma tiles");
    extern __shared__ float4 dyn_smem4[];
    float* As = reinterpret_cast<float*>(dyn_smem4);
    float* Bs = As + STAGES * A_STAGE;
    select_batch(A, B, C, sA, sB, sC);
    const bool vecA = (TA ? M : K) % 4 == 0 && aligned16(A);
    const bool vecB = (TB ? K : N) % 4 == 0 && aligned16(B);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, t = lane % 4;
    const int wm0 = (warp / WARPS_N) * WTM, wn0 = (warp % WARPS_N) * WTN;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int ktiles = tfm_cdiv(K, BK);

    auto load_stage = [&](int kt, int stage) {  // As[m][k], Bs[n][k]: k contiguous
        const int k0 = kt * BK;
        load_a_cp_async<BM, BK, NT, TA, false, LD>(As + stage * A_STAGE, A, m0, k0, M, K, vecA, tid);
        load_b_cp_async<BK, BN, NT, TB, true, LD>(Bs + stage * B_STAGE, B, k0, n0, K, N, vecB, tid);
    };

    float acc[MT][NTL][4];
    zero_fill(acc);
    cp_async_prologue<STAGES>(ktiles, load_stage);
    for (int kt = 0; kt < ktiles; ++kt) {
        const int stage = cp_async_advance<STAGES>(kt, ktiles, load_stage);
        const float* as = As + stage * A_STAGE;
        const float* bs = Bs + stage * B_STAGE;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 8) {
            uint32_t af[MT][4], bf[NTL][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                const float* p = as + (wm0 + i * 16 + g) * LD + kk + t;
                af[i][0] = to_tf32(p[0]);
                af[i][1] = to_tf32(p[8 * LD]);
                af[i][2] = to_tf32(p[4]);
                af[i][3] = to_tf32(p[8 * LD + 4]);
            }
#pragma unroll
            for (int j = 0; j < NTL; ++j) {
                const float* p = bs + (wn0 + j * 8 + g) * LD + kk + t;
                bf[j][0] = to_tf32(p[0]);
                bf[j][1] = to_tf32(p[4]);
            }
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NTL; ++j) mma_1688_tf32(acc[i][j], af[i], bf[j]);
        }
    }
    cp_async_wait<0>();
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NTL; ++j) {
            const int m = m0 + wm0 + i * 16 + g, n = n0 + wn0 + j * 8 + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; ++h) {  // rows g and g + 8
                const int mm = m + 8 * h;
                if (mm < M) {
                    if (n < N) C[mm * N + n] = acc[i][j][2 * h];
                    if (n + 1 < N) C[mm * N + n + 1] = acc[i][j][2 * h + 1];
                }
            }
        }
}
TFM_EXPORT(matmul_tf32<128, 128, 16, 2, 4, 3, false, false>)
TFM_EXPORT(matmul_tf32<128, 128, 16, 2, 4, 3, false, true>)
TFM_EXPORT(matmul_tf32<128, 128, 16, 2, 4, 3, true, false>)
TFM_EXPORT(matmul_tf32<128, 128, 16, 2, 4, 3, true, true>)

// ============================================================================ 14 iterators
// Variant 8's warp tile, ring and k-tile (2048 FFMA + 96 LDS.128 per warp), with a k-loop that does
// little else. 8's SASS spends 371 issue slots per k-tile outside them in NN (619 in NT, 195 in TN;
// docs/matmul.md): every copy re-derives its source address and edge predicate from (row, col, M, K)
// each k-tile, and the operand that must be transposed moves as sixteen 4-byte cp.async per thread.
// Run 1 measured 8 at about its FFMA share x 51-52 TFLOP/s, so those slots cost it 8-13 TFLOP/s.
//   * Tile iterators (CUTLASS's predicated tile iterators, reduced to what this tile needs): each
//     thread's source pointer is set once and stepped by a constant per k-tile. A position past the
//     m or n edge is clamped onto the last row or chunk inside the matrix: it reads real data into
//     tile rows/columns whose outputs are never stored, so only the k edge needs a predicate, and
//     only in the last k-tile (the copy code's second, EDGE instance).
//   * The operand stored k-contiguous (A of NN/NT, B of NT/TT) moves as four 16-byte cp.async of
//     four consecutive rows per thread into a staging ring; a k-step later the same thread reads
//     them back, transposes the 4x4 block in registers and stores it k-major (4 STS.128).
//   * 16-byte chunks only: each stored row a multiple of 4 floats, buffers 16-byte aligned
//     (tfm_kernels refuses anything else for this variant with the reason; 8 takes any shape).
// The steady-state k-loop issues 92.3% FFMA in NN (8: 81.4%), 91.2% in NT (74.1%), 93.6% in TN
// (87.6%): tests/test_matmul.py::test_iterators_ffma_share; prediction and risks in docs/matmul.md.
// Variant 15 launches the same kernels with `splits` > 1 when M x N tiles leave SMs idle (1024^3:
// 64 tiles): blockIdx.z = batch * splits + split, each split sums its own run of k-tiles into its
// own slice of a workspace, and matmul_split_reduce (below) adds the slices in split order, so
// the result is bitwise reproducible (iter_splits in tfm_kernels/matmul.py picks the count).

template <bool COND, typename T, typename F> struct pick_type { using type = T; };
template <typename T, typename F> struct pick_type<false, T, F> { using type = F; };
template <bool V> struct bool_tag { static constexpr bool value = V; };  // a compile-time argument

// An operand stored k-major, memory (k, x): K rows of `xs` floats -> S[k][x] as it lies. Thread t
// copies chunk column t % C4 of rows r0 + j * RSTEP (r0 = t / C4) with cp.async: a warp moves one
// 512-byte row segment per instruction, a quarter-warp's 8 chunks hit 8 distinct bank groups.
template <int BK, int BX, int NT, int LDS>
struct KMajorTile {
    static constexpr int C4 = BX / 4, RSTEP = NT / C4, RN = BK / RSTEP;
    static_assert(NT % C4 == 0 && BK % RSTEP == 0, "tile must split evenly over the threads");
    const float* src;  // this thread's chunk in row r0 of the next k-tile
    int ld;            // floats per stored row (offsets in 64-bit: rows past a short K may pass 2^31)
    uint32_t dst;      // this thread's chunk in ring slot 0 (shared-space byte address)
    int r0;

    __device__ __forceinline__ KMajorTile(const float* X, int x0, int xs, int /*K*/, const float* S, int tid,
                                          int k_begin)
        : ld(xs), r0(tid / C4) {
        const int c = x0 + (tid % C4) * 4;
        src = X + static_cast<long long>(k_begin + r0) * ld + (c < xs ? c : xs - 4);  // past x: the last chunk
        dst = smem_u32(S + r0 * LDS + (tid % C4) * 4);
    }
    // k-tile [k0, k0 + BK) into the ring slot `slot_floats` past slot 0; EDGE zero-fills rows >= K.
    template <bool EDGE>
    __device__ __forceinline__ void issue(int slot_floats, int, int k0, int K, const float* X) {
#pragma unroll
        for (int j = 0; j < RN; ++j) {
            const bool ok = !EDGE || k0 + r0 + j * RSTEP < K;
            cp_async_16(dst + (slot_floats + j * RSTEP * LDS) * 4,
                        ok ? src + static_cast<long long>(j * RSTEP) * ld : X, ok);
        }
        src += static_cast<long long>(BK) * ld;
    }
    __device__ __forceinline__ void land(float*, int, const float*, int) {}  // cp.async wrote the ring
};

// An operand stored k-contiguous, memory (x, k): `xs` rows of K floats -> S[k][x], transposed.
// Thread t owns chunk kc = (t / 8) % KC (columns k0 + 4kc .. +3) of rows 4rg .. 4rg + 3,
// rg = t % 8 + 8 (t / (8 KC)). It copies them with cp.async into its own slots of a 2-deep staging
// ring (chunk-major, R[i][t]: a quarter-warp's 8 chunks in 8 distinct bank groups), and one k-step
// later, after its own cp.async.wait, reads them back (4 LDS.128), transposes the 4x4 block in
// registers and stores it as S[4kc + j][4rg .. 4rg + 3] (4 STS.128, 8 consecutive 16-byte words per
// quarter-warp: conflict-free). No other thread touches its staging slots, so no barrier guards
// them; and nothing is held in registers across the FFMAs (loading into registers instead held 16
// there and pushed NVRTC's build of NN past 255 registers). Each LDG-equivalent of a warp covers 8
// rows x 64 contiguous bytes: 16 whole sectors.
template <int BK, int BX, int NT, int LDS>
struct KContigTile {
    static constexpr int KC = BK / 4;
    static constexpr int STAGING = 2 * 4 * 4 * NT;  // floats: 2 slots x 4 chunks x 4 floats x NT
    static_assert(BK % 4 == 0 && BX * KC == 4 * NT && NT % (8 * KC) == 0, "4 chunks per thread");
    const float* src;  // chunk kc of row min(4rg, xs - 1) in the next k-tile
    int off[3];        // rows 4rg + 1 .. 4rg + 3 from it, each clamped to the last row, times K
    uint32_t raw;      // this thread's chunk 0 in staging slot 0 (shared-space byte address)
    int sdst;          // S[4kc][4rg] in ring slot 0, in floats
    int kc4;

    __device__ __forceinline__ KContigTile(const float* X, int x0, int xs, int K, const float* staging,
                                           int tid, int k_begin) {
        const int kc = (tid / 8) % KC, rg = tid % 8 + 8 * (tid / (8 * KC));
        const int r = x0 + 4 * rg, r_in = r < xs ? r : xs - 1;
        // Rows past the x edge re-read the last row (their outputs are never stored): no branch.
#pragma unroll
        for (int i = 1; i < 4; ++i) off[i - 1] = ((r + i < xs ? r + i : xs - 1) - r_in) * K;
        kc4 = 4 * kc;
        src = X + r_in * K + k_begin + kc4;
        raw = smem_u32(staging + 4 * tid);
        sdst = kc4 * LDS + 4 * rg;
    }
    // k-tile [k0, k0 + BK) into staging slot `stage` (0 or 1); EDGE zero-fills chunks past K.
    template <bool EDGE>
    __device__ __forceinline__ void issue(int, int stage, int k0, int K, const float* X) {
        const bool ok = !EDGE || k0 + kc4 < K;  // K % 4 == 0: a chunk is wholly in or out
        const uint32_t d = raw + stage * (STAGING / 2) * 4;
        cp_async_16(d, ok ? src : X, ok);
#pragma unroll
        for (int i = 1; i < 4; ++i) cp_async_16(d + i * NT * 16, ok ? src + off[i - 1] : X, ok);
        src += BK;
    }
    // Staging slot `stage`, landed (this thread's cp.async.wait), transposed into ring slot `slot_floats`.
    __device__ __forceinline__ void land(float* S, int slot_floats, const float* staging, int stage) {
        const float* r = staging + stage * (STAGING / 2) + 4 * threadIdx.x;
        float4 v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = *reinterpret_cast<const float4*>(r + i * 4 * NT);
        float* s = S + slot_floats + sdst;
        *reinterpret_cast<float4*>(s + 0 * LDS) = make_float4(v[0].x, v[1].x, v[2].x, v[3].x);
        *reinterpret_cast<float4*>(s + 1 * LDS) = make_float4(v[0].y, v[1].y, v[2].y, v[3].y);
        *reinterpret_cast<float4*>(s + 2 * LDS) = make_float4(v[0].z, v[1].z, v[2].z, v[3].z);
        *reinterpret_cast<float4*>(s + 3 * LDS) = make_float4(v[0].w, v[1].w, v[2].w, v[3].w);
    }
};

// WarpTile::compute from per-lane pointers a = As + row, b = Bs + col: every offset left is a
// compile-time constant, which both compilers fold into the LDS.128s. With WarpTile::compute's
// (k * LDA + row + ...) indices NVRTC hoisted ~100 sign-extended 64-bit offsets out of this
// kernel's k-loops and ran out of registers (255, spills, 87% FFMA in NN where nvcc got 92%).
// WarpTile::compute itself stays as it is: variant 8's machine code through it is what GPU run 1
// verified (tests/test_sass.py::test_run1_identity_claims), so the two loops are kept apart.
template <typename WT, int BK, int TM, int TN, int WNITER>
static __device__ __forceinline__ void warp_tile_fma(const float* a, const float* b,
                                                     float (&acc)[WT::WMITER * TM][WNITER * TN]) {
    float ra[WT::WMITER * TM], rb[WNITER * TN];
#pragma unroll
    for (int k = 0; k < BK; ++k) {
#pragma unroll
        for (int wm = 0; wm < WT::WMITER; ++wm)
#pragma unroll
            for (int i = 0; i < TM; i += 4) lds4(&ra[wm * TM + i], a + k * WT::LDA + wm * WT::WSUBM + i);
#pragma unroll
        for (int wn = 0; wn < WNITER; ++wn)
#pragma unroll
            for (int j = 0; j < TN; j += 4) lds4(&rb[wn * TN + j], b + k * WT::LDB + wn * WT::WSUBN + j);
        outer_product_fma(acc, ra, rb);
    }
}

template <int BM, int BN, int BK, int WM, int WN, int WNITER, int TM, int TN, int NT, int STAGES,
          bool TA, bool TB>
__global__ void __launch_bounds__(NT)
    matmul_iter(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                int M, int N, int K, long long sA, long long sB, long long sC, int splits) {
    using WT = WarpTile<BM, BN, BK, WM, WN, WNITER, TM, TN, NT>;
    using ATile = typename pick_type<TA, KMajorTile<BK, BM, NT, WT::LDA>, KContigTile<BK, BM, NT, WT::LDA>>::type;
    using BTile = typename pick_type<!TB, KMajorTile<BK, BN, NT, WT::LDB>, KContigTile<BK, BN, NT, WT::LDB>>::type;
    constexpr bool STAGED = !TA || TB;  // an operand goes through the staging ring
    constexpr int A_STAGE = BK * WT::LDA, B_STAGE = BK * WT::LDB;  // floats per ring slot
    extern __shared__ float4 dyn_smem4[];
    float* As = reinterpret_cast<float*>(dyn_smem4);  // STAGES x As[k][m]
    float* Bs = As + STAGES * A_STAGE;                // STAGES x Bs[k][n]
    float* Ar = Bs + STAGES * B_STAGE;                // staging of a k-contiguous A (NN, NT)
    float* Br = Ar + KContigTile<BK, BM, NT, WT::LDA>::STAGING;  // ... and B (NT, TT)
    // Registers are the limit (255 at 8x16 outputs per thread): what only the epilogue needs (C's
    // batch offset and alignment, the tile origin) is derived after the k-loop, and the zero-filled
    // copies of the edge tile point at the kernel's parameters A0/B0 (any valid address will do).
    const float* const A0 = A;
    const float* const B0 = B;
    // Split-K (variant 15): blockIdx.z = batch * splits + split, and this CTA sums k-tiles
    // [kt0, kt0 + ktiles) of its matrix into its own output matrix: C is then a workspace of
    // batch * splits matrices (sC = M N), summed in split order by matmul_split_reduce.
    const int batch = blockIdx.z / splits, split = blockIdx.z % splits;
    A += batch * sA;
    B += batch * sB;
    const int tid = threadIdx.x;
    // Spelled out, not tfm_cdiv/min: tfm_cdiv with a runtime divisor anywhere in this file changes
    // the machine code nvcc and NVRTC give variants 8 and 9 (instruction order in their prologues),
    // whose bytes GPU run 1 verified (scripts/sass_diff.py --base e708ed2 finds them identical).
    const int kt_all = (K + BK - 1) / BK;
    const int per_split = (kt_all + splits - 1) / splits;
    const int kt0 = split * per_split;
    const int ktiles = kt_all - kt0 < per_split ? kt_all - kt0 : per_split;  // this CTA's (>= 1: see host)
    const int kfull = K / BK - kt0 < ktiles ? K / BK - kt0 : ktiles;  // tiles kfull.. (one at most) cross K

    ATile la(A, blockIdx.y * BM, M, K, TA ? As : Ar, tid, kt0 * BK);  // op(A) (m, k) into As[k][m]
    BTile lb(B, blockIdx.x * BN, N, K, TB ? Br : Bs, tid, kt0 * BK);  // op(B) (k, n) into Bs[k][n]
    // Tile kt's copies: into ring slot `slot` (k-major operands) or staging slot kt % 2; FULL with no
    // predicates for tiles inside K, the EDGE instance for the one that crosses it. Tiles are issued
    // in order 0, 1, 2, ...: each issue steps the iterators by BK.
    auto issue = [&](int kt, int slot, auto full) {
        constexpr bool EDGE = !decltype(full)::value;
        la.template issue<EDGE>(slot * A_STAGE, kt & 1, (kt0 + kt) * BK, K, A0);
        lb.template issue<EDGE>(slot * B_STAGE, kt & 1, (kt0 + kt) * BK, K, B0);
    };
    // Tile kt's staged operand, landed, into its ring slot (k-major operands: nothing to do).
    auto land = [&](int kt, int slot) {
        if (STAGED) {
            cp_async_wait<1>();  // this thread's copies of tile kt (the newest group is kt + 1's)
            la.land(As, slot * A_STAGE, Ar, kt & 1);
            lb.land(Bs, slot * B_STAGE, Br, kt & 1);
        }
    };

    const WT wt(tid);
    float acc[WT::WMITER * TM][WNITER * TN];
    zero_fill(acc);
    static_assert(STAGES == 3, "the staging ring is 2 deep: tile kt + 2 copies while kt + 1 lands");
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {  // tiles 0, 1 into slots 0, 1; tile 0 landed
        if (s < kfull) issue(s, s, bool_tag<true>());
        else if (s < ktiles) issue(s, s, bool_tag<false>());
        cp_async_commit();
    }
    land(0, 0);
    // k-step kt computes tile kt from slot rd while tile kt + 2 copies into slot wr (tile kt-1's,
    // free once every warp is past the barrier), then lands tile kt + 1 into slot (rd + 1) % 3 (tile
    // kt-2's). Two instances of the step: the steady state, whose next tile is always full (its
    // SASS is the k-loop docs/matmul.md counts: no predicates, no branch but the loop's), and the
    // last two steps, which copy the tile that crosses K, if any, and then nothing.
    int rd = 0, wr = STAGES - 1;
    auto step = [&](int kt, auto steady) {
        cp_async_wait<STAGES - 2>();  // this thread's copies of tile kt have landed
        __syncthreads();              // everyone's, and their stores; tile kt-1's slot is free
        const int next = kt + STAGES - 1;
        if (decltype(steady)::value) issue(next, wr, bool_tag<true>());
        else if (next < ktiles) issue(next, wr, bool_tag<false>());  // kfull .. : the crossing tile
        cp_async_commit();
        warp_tile_fma<WT, BK, TM, TN, WNITER>(As + rd * A_STAGE + wt.row, Bs + rd * B_STAGE + wt.col, acc);
        rd = rd + 1 == STAGES ? 0 : rd + 1;
        if (decltype(steady)::value || kt + 1 < ktiles) land(kt + 1, rd);  // visible after the next barrier
        wr = wr + 1 == STAGES ? 0 : wr + 1;
    };
    int kt = 0;
    for (; kt + STAGES - 1 < kfull; ++kt) step(kt, bool_tag<true>());
    for (; kt < ktiles; ++kt) step(kt, bool_tag<false>());
    cp_async_wait<0>();  // no copy may outlive the block (only empty groups remain by now)
    C += blockIdx.z * sC;  // splits == 1: the batch's matrix; else this split's slice of the workspace
    wt.store(C, blockIdx.y * BM, blockIdx.x * BN, M, N, N % 4 == 0 && aligned16(C), acc);
}
TFM_EXPORT(matmul_iter<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, false, false>)
TFM_EXPORT(matmul_iter<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, false, true>)
TFM_EXPORT(matmul_iter<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, true, false>)
TFM_EXPORT(matmul_iter<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, true, true>)

// Variant 15's second kernel: C[b][i] = W[b][0][i] + W[b][1][i] + ... + W[b][splits-1][i], the
// partial products of matmul_iter's splits added in split order (bitwise reproducible; float atomics
// would make the order, and the rounding, vary run to run). One thread per 4 outputs, 16-byte
// accesses when M N % 4 == 0 and both buffers are 16-byte aligned. Memory-bound: it reads
// splits x 4 bytes and writes 4 per output, ~10% of a 1024^3 product's time at 4 splits.
__global__ void __launch_bounds__(256)
    matmul_split_reduce(const float* __restrict__ W, float* __restrict__ C, long long MN, int splits) {
    const long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
    if (i >= MN) return;
    const float* w = W + static_cast<long long>(blockIdx.y) * splits * MN;  // blockIdx.y: the batch
    float* c = C + static_cast<long long>(blockIdx.y) * MN;
    if (MN % 4 == 0 && aligned16(W) && aligned16(C)) {
        float4 acc = *reinterpret_cast<const float4*>(w + i);
        for (int s = 1; s < splits; ++s) {
            const float4 t = *reinterpret_cast<const float4*>(w + s * MN + i);
            acc.x += t.x, acc.y += t.y, acc.z += t.z, acc.w += t.w;
        }
        *reinterpret_cast<float4*>(c + i) = acc;
    } else {
        for (long long j = i; j < i + 4 && j < MN; ++j) {
            float acc = w[j];
            for (int s = 1; s < splits; ++s) acc += w[s * MN + j];
            c[j] = acc;
        }
    }
}
TFM_EXPORT(matmul_split_reduce)
