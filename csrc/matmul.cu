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
// The ladder (after siboehm/SGEMM_CUDA; predicted % of cuBLAS fp32 on an H200 at 4096, where cuBLAS
// runs ~50 TFLOP/s; measured figures are in docs/matmul.md, generated from the benchmark's JSON):
//   1 naive          one thread per C element, threadIdx.x walks M: a warp reads 32 rows of A and
//                    writes 32 rows of C, 32 transactions per access.                        ~1-2%
//   2 coalesced      threadIdx.x walks N instead: a warp reads one broadcast A element and 32
//                    consecutive B/C elements (one 128-byte transaction).                  ~8-10x 1
//   3 smem_tiling    32x32 tiles of op(A) and op(B) staged in shared memory; each global element
//                    is read by 32 threads from smem instead of 32 times from L1/L2.          ~1.5x 2
//   4 blocktile_1d   each thread computes 8 outputs of a column (64x64x8 tile, 512 threads): one
//                    B value from smem is reused for 8 FMAs.                                   ~2-3x 3
//   5 blocktile_2d   each thread computes an 8x8 block (128x128x8 tile, 256 threads): 16 smem
//                    loads feed 64 FMAs.                                                       ~2x 4
//   6 vectorized     16-byte global loads, and A stored transposed (As[k][m]) so the inner loop
//                    reads both operands with 128-bit LDS instead of 32-bit ones.            ~1.2x 5
//   7 warptiling     the block tile split into 64x64 warp tiles (128 threads, 8x4 thread
//                    sub-tiles x4): a warp's smem reads hit few distinct rows, 128 FMA per
//                    6 LDS.128 per k.                                                        ~1.2x 6
//   8 cp_async       variant 7's tiling fed by a 3-stage cp.async pipeline (zero-fill at edges):
//                    global->smem copies bypass registers and overlap the FMAs.     ~1.1x 7, >=90%
//   9 tf32_mma       opt-in: mma.sync m16n8k8 TF32 tensor cores (operands rounded with
//                    cvt.rna.tf32.f32, ~1e-3 relative error, not the fp32 contract).  ~2-4x cuBLAS fp32
//
// Build checks without a GPU: nvcc -arch=sm_90 -Xptxas -v (no spills in 5..8) and NVRTC
// (tests/test_build.py); the tiling/index emulation is scripts/emulate_matmul_tiles.py.
#include "common.cuh"

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

// ============================================================================ 1 naive
// Block 32x32, one thread per C element; threadIdx.x -> m. Consecutive lanes own consecutive rows,
// so each lane's A read and C write land in a different 128-byte line (row stride K or N floats):
// 32 transactions where 1 would do. This is the baseline every later step is measured against.
template <bool TA, bool TB>
__global__ void __launch_bounds__(1024)
    matmul_naive(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                 int M, int N, int K, long long sA, long long sB, long long sC) {
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    const int m = blockIdx.x * 32 + threadIdx.x;
    const int n = blockIdx.y * 32 + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[a_index<TA>(m, k, M, K)] * B[b_index<TB>(k, n, K, N)];
    C[m * N + n] = acc;
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
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    const int n = blockIdx.x * 32 + threadIdx.x;
    const int m = blockIdx.y * 32 + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[a_index<TA>(m, k, M, K)] * B[b_index<TB>(k, n, K, N)];
    C[m * N + n] = acc;
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
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
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
    const int m = m0 + ty, n = n0 + tx;
    if (m < M && n < N) C[m * N + n] = acc;
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
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    const int tid = threadIdx.x;
    const int tcol = tid % BN, trow = tid / BN;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) acc[i] = 0.0f;
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
        if (m < M && n < N) C[m * N + n] = acc[i];
    }
}
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, false, false>)
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, false, true>)
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, true, false>)
TFM_EXPORT(matmul_blocktile_1d<64, 64, 8, 8, true, true>)

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
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    const int tid = threadIdx.x;
    const int tcol = tid % (BN / TN), trow = tid / (BN / TN);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
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
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += ra[i] * rb[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + trow * TM + i;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = n0 + tcol * TN + j;
            if (m < M && n < N) C[m * N + n] = acc[i][j];
        }
    }
}
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, false, false>)
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, false, true>)
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, true, false>)
TFM_EXPORT(matmul_blocktile_2d<128, 128, 8, 8, 8, true, true>)
