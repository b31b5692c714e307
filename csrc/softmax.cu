// softmax.cu: softmax over the last axis, forward and backward, as a ladder of numbered versions.
//
//   y  = exp(x - m) / sum exp(x - m),  m = max x        (forward, per row of `cols` elements)
//   dx = y * (dy - sum(dy * y))                           (backward)
//
// Reference: numpy_ref/softmax.py. Inputs/outputs float32 or float16 (T = float / __half), math in
// fp32 always. Rows are contiguous, `rows * cols < 2^31` (tfm_kernels/softmax.py refuses more, so an
// element index inside a row fits an int; row offsets are computed in 64 bits anyway). Masks: an
// entry of -inf gives exactly 0; a row that is all -inf gives 0 everywhere, never NaN (safe_max in
// reduce.cuh shifts such a row by 0, so every exp is exp(-inf) = 0, the sum is 0 and 1/sum is
// replaced by 0). Backward then gives dx = 0 * (dy - 0) = 0 there too.
//
// Bytes per element, fp32 (minimum: forward reads x and writes y = 8 B; backward reads y, dy and
// writes dx = 12 B). The pass count is the lever: at 8192 x 8192 the data (256 MiB) is 5x the
// H200's 50 MiB L2, so a pass that re-reads x goes to HBM.
//
// Forward
//   1 softmax_fwd_naive   thread per row, three passes (max, sum, write) = 3 reads + 1 write:
//                         16 B/elt; a warp touches 32 rows at once, uncoalesced.
//   2 softmax_fwd_block   block per row, strided coalesced loads, shared-memory tree reductions
//                         (log2(256) = 8 barriers each); still 3 reads + 1 write.
//   3 softmax_fwd_3pass   warp per row (TPR = 32), shuffle reductions, 16-byte loads/stores (scalar
//                         head/tail where a row is not 16-byte aligned); still 3 reads + 1 write,
//                         but fewer instructions and no barriers.
//   4 softmax_fwd_online  one read for max and sum together (Milakov & Gimelshein 2018), then the
//                         write pass: 2 reads + 1 write = 12 B/elt (4 -> 3 accesses). Threads per
//                         row grow with the row (32 .. 512), so long rows are not starved.
//   5 softmax_fwd_regs    the row lives in registers (E = 32 floats per thread, TPR up to 1024 ->
//                         rows <= 32768): x read once, y written once = 8 B/elt, the minimum.
//   6 softmax_fwd_regs_exp2  (opt-in, never run on a GPU) 5 with exp2f and one bounds test per
//                         pack: ~half the instructions per element (fp16 was issue-bound in run 1).
//   7 softmax_fwd_cluster (opt-in, never run on a GPU) 5 for rows too long for one block: the
//                         row split over a cluster of 2-8 CTAs (sm_90), (max, sum) combined through
//                         distributed shared memory: 8 B/elt up to 262144 elements (4 reads x twice).
//
// Backward
//   1 softmax_bwd_naive   thread per row, two passes: 2x(y, dy) + dx = 20 B/elt.
//   2 softmax_bwd_block   block per row, shared-memory tree, two passes, 20 B/elt.
//   3 softmax_bwd_2pass   warp per row, shuffles, 16-byte vectors; 20 B/elt.
//   4 softmax_bwd_2pass   the same kernel with TPR up to 512 threads per row for long rows.
//   5 softmax_bwd_regs    y and dy in registers (E = 16 each, rows <= 16384): 12 B/elt, minimum.
//
// Launch shapes (grid, block, which instantiation) are planned once in tfm_kernels/softmax.py for
// both backends. Every row loop is grid-stride and uniform over a warp (TPR <= 32) or the block
// (TPR > 32): a group whose row is past the end works on 0 elements but still takes part in the
// shuffles and barriers of reduce.cuh.
#include "common.cuh"
#include "reduce.cuh"

#include <cuda_fp16.h>

// ------------------------------------------------------------------------- loads and stores
static __device__ __forceinline__ float to_float(float v) { return v; }
static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
static __device__ __forceinline__ void set_from_float(float& d, float v) { d = v; }
static __device__ __forceinline__ void set_from_float(__half& d, float v) { d = __float2half_rn(v); }

// N elements moved as one access: 16 bytes (ld.global.v4) for 4 floats or 8 halves.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

template <typename T, int N>
static __device__ __forceinline__ void load_pack(const T* p, float (&a)[N]) {
    const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = to_float(pk.v[k]);
}

template <typename T, int N>
static __device__ __forceinline__ void store_pack(T* p, const float (&a)[N]) {
    Pack<T, N> pk;
#pragma unroll
    for (int k = 0; k < N; ++k) set_from_float(pk.v[k], a[k]);
    *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

template <int N>
struct IntC {
    static constexpr int value = N;
};

// Elements before the first 16-byte boundary of a row (at most n). The wrapper launches VEC > 1
// only when every pointer has the same address mod 16, so one head fits all of a row's arrays.
template <typename T>
static __device__ __forceinline__ int head_elems(const T* p, int n) {
    const unsigned mis = static_cast<unsigned>(reinterpret_cast<unsigned long long>(p)) & 15u;
    const int h = static_cast<int>(((16u - mis) & 15u) / sizeof(T));
    return h < n ? h : n;
}

// Visit thread t's share of a row of n elements (a group of TPR threads per row) as: a scalar
// head up to the 16-byte boundary, whole VEC-packs (pack p goes to thread p % TPR: consecutive
// threads read consecutive 16 bytes), a scalar tail. f(i, IntC<W>) handles elements [i, i + W).
template <int VEC, int TPR, typename F>
static __device__ __forceinline__ void for_each_pack(int n, int head, int t, F&& f) {
    if constexpr (VEC == 1) {
#pragma unroll 4
        for (int i = t; i < n; i += TPR) f(i, IntC<1>());
    } else {
        for (int i = t; i < head; i += TPR) f(i, IntC<1>());
        const int packs = (n - head) / VEC;
        // 4 packs in flight per thread: the loads of one unrolled step are independent.
#pragma unroll 4
        for (int p = t; p < packs; p += TPR) f(head + p * VEC, IntC<VEC>());
        for (int i = head + packs * VEC + t; i < n; i += TPR) f(i, IntC<1>());
    }
}

// Rows per block for a group of TPR threads per row: blocks of at least 128 threads (4 warps) so
// short rows still give the SM enough warps per block; TPR > 32 means one row per block.
template <int TPR>
struct Groups {
    static constexpr int BLOCK = TPR < 128 ? 128 : TPR;
    static constexpr int RPB = BLOCK / TPR;
    // For __launch_bounds__: 1024 / BLOCK blocks of BLOCK threads per SM caps a thread at 64
    // registers, so half the SM's 2048 threads are resident whatever the group width (rows of
    // 8192 floats: 4 blocks of 256 threads = 128 KiB of loads in flight per SM). Left to itself
    // ptxas gave softmax_fwd_regs<float, 4, 256, 32> 80 registers (3 blocks), and
    // softmax_fwd_online<float, 4, 32> 32 registers with a 4-byte spill.
    static constexpr int MIN_BLOCKS = 1024 / BLOCK;
    static_assert(TPR <= 32 || BLOCK == TPR, "a row group wider than a warp must be the block");
};

// The row loop of the group kernels (3-5 and backward 3-5): group g = threadIdx.x / TPR of block b
// takes rows b * RPB + g, then every gridDim.x * RPB rows after it. The loop is uniform over the
// block: a group past the last row is handed row rows - 1 with n = 0 elements, so it still joins
// the shuffles and barriers of reduce.cuh. f(row, n): the row, and how many of its elements to touch.
template <int TPR, typename F>
static __device__ __forceinline__ void for_each_group_row(int rows, int cols, F&& f) {
    constexpr int RPB = Groups<TPR>::RPB;
    const int g = threadIdx.x / TPR;
    for (int64_t rb = static_cast<int64_t>(blockIdx.x) * RPB; rb < rows; rb += static_cast<int64_t>(gridDim.x) * RPB) {
        const int64_t row = rb + g < rows ? rb + g : rows - 1;
        const int n = rb + g < rows ? cols : 0;
        f(row, n);
    }
}

// The write pass of the streaming forward kernels (3 and 4), a for_each_pack visitor: x read once
// more, y = exp(x - ms) * inv. A visitor the kernel hands to for_each_pack itself, not a function
// wrapping the for_each_pack call: the wrapper (same statements, one inlining level deeper) moved
// two constant loads between registers in all 8 scalar/fp32 softmax_fwd_online instantiations
// (scripts/sass_diff.py), and those kernels were verified on an H200 as they are.
template <typename T>
struct WritePass {
    const T* xr;
    T* yr;
    float ms, inv;
    template <int W>
    __device__ __forceinline__ void operator()(int i, IntC<W>) const {
        float a[W];
        load_pack<T, W>(xr + i, a);
#pragma unroll
        for (int k = 0; k < W; ++k) a[k] = expf(a[k] - ms) * inv;
        store_pack<T, W>(yr + i, a);
    }
};

// Register slot j of thread t in the *_regs kernels: elements [i, i + VEC), i = (j * TPR + t) * VEC.
// A pack wholly inside the row is one 16-byte access; one that reaches past the end (only the last
// of a row, or all of a group with n = 0) is read element by element, `pad` past the end.
template <typename T, int VEC>
static __device__ __forceinline__ void load_slot(const T* __restrict__ p, int i, int n, float pad, float (&v)[VEC]) {
    if (i + VEC <= n) {
        load_pack<T, VEC>(p + i, v);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = i + k < n ? to_float(p[i + k]) : pad;
    }
}

template <typename T, int VEC>
static __device__ __forceinline__ void store_slot(T* __restrict__ p, int i, int n, const float (&v)[VEC]) {
    if (i + VEC <= n) {
        store_pack<T, VEC>(p + i, v);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k)
            if (i + k < n) set_from_float(p[i + k], v[k]);
    }
}

// The largest of a thread's register slots (before the group reduction).
template <int NV, int VEC>
static __device__ __forceinline__ float regs_max(const float (&v)[NV][VEC]) {
    float m = neg_inf();
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int k = 0; k < VEC; ++k) m = fmaxf(m, v[j][k]);
    return m;
}

// v <- exp(v - ms) in place, the thread's sum of them returned (before the group reduction).
template <int NV, int VEC>
static __device__ __forceinline__ float exp_shifted_sum(float (&v)[NV][VEC], float ms) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            v[j][k] = expf(v[j][k] - ms);
            s += v[j][k];
        }
    return s;
}

// ------------------------------------------------------------------------- thread-block clusters
// sm_90: the CTAs of a cluster are scheduled together on one GPC, can wait for each other
// (barrier.cluster) and read each other's shared memory (distributed shared memory: mapa turns a
// shared-memory address of this CTA into the same variable's address in CTA `rank`). Plain sm_90
// PTX, not sm_90a, so softmax.cu needs no `// tfm-arch` mark. setup.py also builds sm_80 by default,
// where nvcc rejects __cluster_dims__ (and ptxas the PTX below): there the attribute is dropped and
// the primitives trap (the variant's arch = 90 keeps it from being launched). The cluster size is
// compile-time (__cluster_dims__), so neither launcher (cudaLaunchKernel, CuPy's cuLaunchKernel)
// passes a launch attribute; the grid must be a multiple of it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define TFM_CLUSTER_DIMS(c)
#define TFM_SM90_ASM(...) __trap()
#else
#define TFM_CLUSTER_DIMS(c) __cluster_dims__(c, 1, 1)
#define TFM_SM90_ASM(...) asm volatile(__VA_ARGS__)
#endif

// The host emulation (tests/cuda_host/cuda_host.h, g++: no __CUDACC__) brings its own versions of
// these five, with an array of CTAs standing for the cluster.
#if defined(__CUDACC__)
static __device__ __forceinline__ unsigned cluster_ctarank() {
    unsigned r = 0;
    TFM_SM90_ASM("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// Every thread of every CTA of the cluster: release this CTA's shared-memory writes, wait for all.
static __device__ __forceinline__ void cluster_sync() {
    TFM_SM90_ASM("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The same barrier without the release: it orders no memory, it only makes every CTA wait for all.
// cluster_sync's release compiles to MEMBAR.ALL.GPU (sm_90 SASS), which waits for this thread's
// outstanding global stores; before a CTA exits that would be a whole slice of y (64 KiB).
static __device__ __forceinline__ void cluster_sync_relaxed() {
    TFM_SM90_ASM("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
}

// The address of *p (a __shared__ variable of this CTA) in CTA `rank` of the cluster, generic.
template <typename P>
static __device__ __forceinline__ const P* cluster_map(const P* p, unsigned rank) {
    uint64_t a = 0;
    TFM_SM90_ASM("mapa.u64 %0, %1, %2;" : "=l"(a) : "l"(reinterpret_cast<uint64_t>(p)), "r"(rank));
    return reinterpret_cast<const P*>(a);
}

// This CTA's one S in shared memory (a function-scope __shared__ is per CTA and per S).
template <typename S>
static __device__ __forceinline__ S& cta_shared() {
    __shared__ S s;
    return s;
}
#endif

// ================================================================================= forward

// 1: thread per row. Three sequential walks over the row; lanes of a warp are `cols` elements
// apart, so each load instruction touches up to 32 different cache lines.
template <typename T>
__global__ void softmax_fwd_naive(const T* __restrict__ x, T* __restrict__ y, int rows, int cols) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
         row += stride) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        float m = neg_inf();
        for (int i = 0; i < cols; ++i) m = fmaxf(m, to_float(xr[i]));
        const float ms = safe_max(m);
        float s = 0.0f;
        for (int i = 0; i < cols; ++i) s += expf(to_float(xr[i]) - ms);
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;
        for (int i = 0; i < cols; ++i) set_from_float(yr[i], expf(to_float(xr[i]) - ms) * inv);
    }
}
TFM_EXPORT(softmax_fwd_naive<float>)
TFM_EXPORT(softmax_fwd_naive<__half>)

// 2: block of NT threads per row; thread t takes elements t, t + NT, ... (coalesced), then the
// shared-memory tree combines the NT partials.
template <typename T, int NT>
__global__ void __launch_bounds__(NT) softmax_fwd_block(const T* __restrict__ x, T* __restrict__ y,
                                                       int rows, int cols) {
    __shared__ float red[NT];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        float m = neg_inf();
        for (int i = threadIdx.x; i < cols; i += NT) m = fmaxf(m, to_float(xr[i]));
        m = block_reduce_tree<NT>(m, MaxOp(), red);
        const float ms = safe_max(m);
        float s = 0.0f;
        for (int i = threadIdx.x; i < cols; i += NT) s += expf(to_float(xr[i]) - ms);
        s = block_reduce_tree<NT>(s, SumOp(), red);
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;
        for (int i = threadIdx.x; i < cols; i += NT) set_from_float(yr[i], expf(to_float(xr[i]) - ms) * inv);
    }
}
TFM_EXPORT(softmax_fwd_block<float, 256>)
TFM_EXPORT(softmax_fwd_block<__half, 256>)

// 3: a group of TPR threads per row (the ladder uses TPR = 32, a warp), three passes over global
// memory as in 1 and 2, but with shuffle reductions and 16-byte accesses.
template <typename T, int VEC, int TPR>
__global__ void __launch_bounds__(Groups<TPR>::BLOCK, Groups<TPR>::MIN_BLOCKS)
    softmax_fwd_3pass(const T* __restrict__ x, T* __restrict__ y, int rows, int cols) {
    __shared__ float scratch[TPR > 32 ? TPR / 32 : 1];
    const int t = threadIdx.x % TPR;
    for_each_group_row<TPR>(rows, cols, [&](int64_t row, int n) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        const int head = VEC > 1 ? head_elems(xr, n) : 0;

        float m = neg_inf();
        for_each_pack<VEC, TPR>(n, head, t, [&](int i, auto w) {
            constexpr int W = decltype(w)::value;
            float a[W];
            load_pack<T, W>(xr + i, a);
#pragma unroll
            for (int k = 0; k < W; ++k) m = fmaxf(m, a[k]);
        });
        m = group_reduce<TPR>(m, MaxOp(), scratch);
        const float ms = safe_max(m);

        float s = 0.0f;
        for_each_pack<VEC, TPR>(n, head, t, [&](int i, auto w) {
            constexpr int W = decltype(w)::value;
            float a[W];
            load_pack<T, W>(xr + i, a);
#pragma unroll
            for (int k = 0; k < W; ++k) s += expf(a[k] - ms);
        });
        s = group_reduce<TPR>(s, SumOp(), scratch);
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;

        for_each_pack<VEC, TPR>(n, head, t, WritePass<T>{xr, yr, ms, inv});
    });
}
TFM_EXPORT(softmax_fwd_3pass<float, 4, 32>)
TFM_EXPORT(softmax_fwd_3pass<float, 1, 32>)
TFM_EXPORT(softmax_fwd_3pass<__half, 8, 32>)
TFM_EXPORT(softmax_fwd_3pass<__half, 1, 32>)

// 4: online softmax. Each thread keeps (m, d) = (running max, sum of exp(x - m)) and rescales d
// when the max grows: one pass finds both, the group merges the pairs, the second pass writes.
template <typename T, int VEC, int TPR>
__global__ void __launch_bounds__(Groups<TPR>::BLOCK, Groups<TPR>::MIN_BLOCKS)
    softmax_fwd_online(const T* __restrict__ x, T* __restrict__ y, int rows, int cols) {
    __shared__ float scratch[TPR > 32 ? 2 * TPR / 32 : 1];
    const int t = threadIdx.x % TPR;
    for_each_group_row<TPR>(rows, cols, [&](int64_t row, int n) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;
        const int head = VEC > 1 ? head_elems(xr, n) : 0;

        float m = neg_inf(), d = 0.0f;
        for_each_pack<VEC, TPR>(n, head, t, [&](int i, auto w) {
            constexpr int W = decltype(w)::value;
            float a[W];
            load_pack<T, W>(xr + i, a);
            // One rescale per pack, not per element: W + 1 exps for W elements.
            float mc = a[0];
#pragma unroll
            for (int k = 1; k < W; ++k) mc = fmaxf(mc, a[k]);
            const float mn = fmaxf(m, mc);
            const float ms = safe_max(mn);
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < W; ++k) s += expf(a[k] - ms);
            d = d * expf(m - ms) + s;
            m = mn;
        });
        group_reduce_online<TPR>(m, d, scratch);
        const float ms = safe_max(m);
        const float inv = d > 0.0f ? 1.0f / d : 0.0f;

        for_each_pack<VEC, TPR>(n, head, t, WritePass<T>{xr, yr, ms, inv});
    });
}
TFM_EXPORT(softmax_fwd_online<float, 4, 32>)
TFM_EXPORT(softmax_fwd_online<float, 4, 256>)
TFM_EXPORT(softmax_fwd_online<float, 4, 512>)
TFM_EXPORT(softmax_fwd_online<float, 1, 32>)
TFM_EXPORT(softmax_fwd_online<float, 1, 256>)
TFM_EXPORT(softmax_fwd_online<float, 1, 512>)
TFM_EXPORT(softmax_fwd_online<__half, 8, 32>)
TFM_EXPORT(softmax_fwd_online<__half, 8, 256>)
TFM_EXPORT(softmax_fwd_online<__half, 8, 512>)
TFM_EXPORT(softmax_fwd_online<__half, 1, 32>)
TFM_EXPORT(softmax_fwd_online<__half, 1, 256>)
TFM_EXPORT(softmax_fwd_online<__half, 1, 512>)

// 5: the row in registers. Thread t of the group holds packs j*TPR + t (j < E/VEC), so every
// load instruction of the group is one contiguous TPR*VEC-element span; slots past the row hold
// -inf (exp gives 0). x is read once and y written once: the minimum traffic. The register array
// is indexed only by unrolled constants, so it stays in registers (ptxas -v: no local memory).
// VEC > 1 only when cols % VEC == 0 and the pointers are 16-byte aligned (the wrapper checks).
template <typename T, int VEC, int TPR, int E>
__global__ void __launch_bounds__(Groups<TPR>::BLOCK, Groups<TPR>::MIN_BLOCKS)
    softmax_fwd_regs(const T* __restrict__ x, T* __restrict__ y, int rows, int cols) {
    static_assert(E % VEC == 0, "E must be a multiple of VEC");
    constexpr int NV = E / VEC;
    __shared__ float scratch[TPR > 32 ? TPR / 32 : 1];
    const int t = threadIdx.x % TPR;
    for_each_group_row<TPR>(rows, cols, [&](int64_t row, int n) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;

        float v[NV][VEC];  // -inf past the row: exp gives 0 there
#pragma unroll
        for (int j = 0; j < NV; ++j) load_slot<T, VEC>(xr, (j * TPR + t) * VEC, n, neg_inf(), v[j]);
        const float m = group_reduce<TPR>(regs_max(v), MaxOp(), scratch);
        const float ms = safe_max(m);
        const float s = group_reduce<TPR>(exp_shifted_sum(v, ms), SumOp(), scratch);
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;

#pragma unroll
        for (int j = 0; j < NV; ++j) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[j][k] *= inv;
            store_slot<T, VEC>(yr, (j * TPR + t) * VEC, n, v[j]);
        }
    });
}
TFM_EXPORT(softmax_fwd_regs<float, 4, 1, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 4, 32, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 4, 128, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 4, 256, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 4, 512, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 4, 1024, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 1, 1, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 1, 32, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 1, 128, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 1, 256, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 1, 512, 32>)
TFM_EXPORT(softmax_fwd_regs<float, 1, 1024, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 8, 1, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 8, 32, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 8, 128, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 8, 256, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 8, 512, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 8, 1024, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 1, 1, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 1, 32, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 1, 128, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 1, 256, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 1, 512, 32>)
TFM_EXPORT(softmax_fwd_regs<__half, 1, 1024, 32>)

// 6 (opt-in, added after GPU run 1, never run on a GPU): variant 5 with fewer instructions per
// element. GPU run 1 measured fp16 at the same time per element as fp32 (8192x8192: 126 vs 134 us),
// which points at instruction issue, not bytes: the PTX of 5 has ~31 instructions per element.
// Two changes: exp(x - m) = exp2((x - m) * log2 e) is an FADD, an FMUL and one MUFU.EX2 (expf's
// accurate range reduction is ~8 instructions); subtracting first keeps the argument exact for
// |x| ~ 1e4 (an FFMA of x * log2e - m * log2e would round m * log2e to ~1e-3 there). And one
// bounds test per pack: the wrapper passes VEC > 1 only when cols % VEC == 0, so a pack is either
// wholly inside the row or wholly past it. exp2f is within 2 ulp (CUDA math API), so fp32 results
// stay within ~3e-7 of max|y|.
template <typename T, int VEC, int TPR, int E>
__global__ void __launch_bounds__(Groups<TPR>::BLOCK, Groups<TPR>::MIN_BLOCKS)
    softmax_fwd_regs_exp2(const T* __restrict__ x, T* __restrict__ y, int rows, int cols) {
    static_assert(E % VEC == 0, "E must be a multiple of VEC");
    constexpr int NV = E / VEC;
    constexpr float LOG2E = 1.4426950408889634f;
    __shared__ float scratch[TPR > 32 ? TPR / 32 : 1];
    const int t = threadIdx.x % TPR;
    for_each_group_row<TPR>(rows, cols, [&](int64_t row, int n) {
        const T* xr = x + row * cols;
        T* yr = y + row * cols;

        float v[NV][VEC];
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = (j * TPR + t) * VEC;
            if (i < n) {
                load_pack<T, VEC>(xr + i, v[j]);
            } else {
#pragma unroll
                for (int k = 0; k < VEC; ++k) v[j][k] = neg_inf();
            }
        }
        const float m = group_reduce<TPR>(regs_max(v), MaxOp(), scratch);
        const float ms = safe_max(m);

        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                v[j][k] = exp2f((v[j][k] - ms) * LOG2E);
                s += v[j][k];
            }
        s = group_reduce<TPR>(s, SumOp(), scratch);
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;

#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = (j * TPR + t) * VEC;
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[j][k] *= inv;
            if (i < n) store_pack<T, VEC>(yr + i, v[j]);
        }
    });
}
TFM_EXPORT(softmax_fwd_regs_exp2<float, 4, 1, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 4, 32, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 4, 128, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 4, 256, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 4, 512, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 4, 1024, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 1, 1, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 1, 32, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 1, 128, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 1, 256, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 1, 512, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<float, 1, 1024, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 8, 1, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 8, 32, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 8, 128, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 8, 256, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 8, 512, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 8, 1024, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 1, 1, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 1, 32, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 1, 128, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 1, 256, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 1, 512, 32>)
TFM_EXPORT(softmax_fwd_regs_exp2<__half, 1, 1024, 32>)

// 7 (opt-in, added after GPU run 1, never run on a GPU): a row too long for one block's registers
// split over a thread-block cluster (sm_90). Beyond 32768 elements variant 4 reads x twice (run 1,
// 1024 x 65536 fp32: 2.70 TB/s = 65% of copy; its second read mostly missed L2). Here the C CTAs
// of a cluster share one row: CTA r holds the slice [r * S, r * S + S) in registers (S = cols / C
// rounded up to whole packs, at most NT * E), reduces it to (m_r, d_r) = (max, sum exp(x - m_r))
// and keeps exp(x - m_r) in its registers; the C pairs meet through distributed shared memory
// (each CTA reads all C in rank order after one cluster barrier, so all hold the bit-identical
// row (M, D)), and each CTA writes its slice as exp(x - m_r) * exp(m_r - M) / D. x is read once
// and y written once: 8 B/elt fp32, the minimum, as variant 5 but for rows up to C * NT * E =
// 8 x 1024 x 32 = 262144 elements. One exp per element, as in 5.
//
// Prediction (written before any GPU run), 1024 x 65536 fp32, plan (512 threads, 4 CTAs): 537 MB
// moved, 129 us at the 4.16 TB/s copy of run 1. Variant 4 moved 805 MB (12 B/elt) in 199 us, 4.04
// TB/s of real traffic: it sits on its own 3-access roofline, so the lost third is exactly its
// second read. Expected 140-165 us = 3.3-3.8 TB/s (80-92% of copy), below 5's 96% because the CTAs
// of a cluster wait for the slowest at one barrier per row, and 2 CTAs per SM (not 4) overlap
// less of one CTA's reductions with another's streaming.
//
// Masks: a slice that is all -inf (or empty: short rows leave the last CTAs with nothing) has
// m_r = -inf, registers of exp(-inf - 0) = 0 and scale exp(-inf - M) = 0, never 0 * inf: the scale
// uses m_r itself, not safe_max(m_r). An all -inf row: M = -inf, D = 0, inv = 0, y = 0.
//
// The exchange slot is double-buffered by row parity, so one cluster barrier per row suffices: a
// CTA rewrites md[p] two rows later only after every CTA has arrived at the barrier in between,
// which each does after reading this row's pairs. A last barrier keeps every CTA (and its shared
// memory, which the peers read) alive until all have read; it needs no release (the reads it waits
// for have been consumed by then: their values are in the stored y), so it is the relaxed one and
// a CTA does not wait for its y stores to drain before leaving.
template <int NW>
struct ClusterShared {
    float scratch[NW];  // group_reduce's partials (one per warp)
    float md[2][2];     // (m_r, d_r) of this CTA, by row parity
};

template <typename T, int VEC, int NT, int C, int E>
__global__ void TFM_CLUSTER_DIMS(C) __launch_bounds__(NT, 1024 / NT)
    softmax_fwd_cluster(const T* __restrict__ x, T* __restrict__ y, int rows, int cols) {
    static_assert(E % VEC == 0, "E must be a multiple of VEC");
    static_assert(C >= 2 && C <= 8, "portable cluster sizes: 2 .. 8 CTAs");
    static_assert(NT >= 64 && NT <= 1024 && (NT & (NT - 1)) == 0, "NT: the block is the row group");
    constexpr int NV = E / VEC;
    ClusterShared<NT / 32>& sh = cta_shared<ClusterShared<NT / 32>>();
    const int t = threadIdx.x;
    const int r = static_cast<int>(cluster_ctarank());  // == blockIdx.x % C for a (C, 1, 1) cluster
    // This CTA's slice: whole VEC-packs, so with VEC > 1 (cols % VEC == 0, aligned pointers) every
    // slice starts on a 16-byte boundary. The wrapper guarantees C * NT * E >= cols, so S <= NT * E.
    const int S = (tfm_cdiv(cols, C) + VEC - 1) / VEC * VEC;
    const int n = cols - r * S < 0 ? 0 : (cols - r * S < S ? cols - r * S : S);
    int p = 0;
    // Cluster k of the grid takes rows k, k + gridDim.x / C, ...: the same rows for its C CTAs, so
    // the cluster barriers below are uniform.
    for (int64_t row = blockIdx.x / C; row < rows; row += gridDim.x / C) {
        const T* xr = x + row * cols + r * S;
        T* yr = y + row * cols + r * S;

        float v[NV][VEC];  // -inf past the slice: exp gives 0 there
#pragma unroll
        for (int j = 0; j < NV; ++j) load_slot<T, VEC>(xr, (j * NT + t) * VEC, n, neg_inf(), v[j]);
        const float m = group_reduce<NT>(regs_max(v), MaxOp(), sh.scratch);
        const float s = group_reduce<NT>(exp_shifted_sum(v, safe_max(m)), SumOp(), sh.scratch);

        // The cluster's combine: publish (m_r, d_r), one barrier, read all C pairs from the peers'
        // shared memory (the same addresses for every lane of a warp: one broadcast access each).
        if (t == 0) {
            sh.md[p][0] = m;
            sh.md[p][1] = s;
        }
        cluster_sync();
        const float* md0 = cluster_map(&sh.md[p][0], 0);
        float M = md0[0], D = md0[1];
#pragma unroll
        for (int q = 1; q < C; ++q) {
            const float* mdq = cluster_map(&sh.md[p][0], static_cast<unsigned>(q));
            online_merge(M, D, mdq[0], mdq[1]);
        }
        const float inv = D > 0.0f ? 1.0f / D : 0.0f;
        const float scale = expf(m - safe_max(M)) * inv;

#pragma unroll
        for (int j = 0; j < NV; ++j) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[j][k] *= scale;
            store_slot<T, VEC>(yr, (j * NT + t) * VEC, n, v[j]);
        }
        p ^= 1;
    }
    cluster_sync_relaxed();
}
TFM_EXPORT(softmax_fwd_cluster<float, 4, 512, 2, 32>)
TFM_EXPORT(softmax_fwd_cluster<float, 4, 512, 4, 32>)
TFM_EXPORT(softmax_fwd_cluster<float, 4, 512, 8, 32>)
TFM_EXPORT(softmax_fwd_cluster<float, 4, 1024, 8, 32>)
TFM_EXPORT(softmax_fwd_cluster<float, 1, 512, 2, 32>)
TFM_EXPORT(softmax_fwd_cluster<float, 1, 512, 4, 32>)
TFM_EXPORT(softmax_fwd_cluster<float, 1, 512, 8, 32>)
TFM_EXPORT(softmax_fwd_cluster<float, 1, 1024, 8, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 8, 512, 2, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 8, 512, 4, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 8, 512, 8, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 8, 1024, 8, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 1, 512, 2, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 1, 512, 4, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 1, 512, 8, 32>)
TFM_EXPORT(softmax_fwd_cluster<__half, 1, 1024, 8, 32>)

// ================================================================================= backward

// 1: thread per row: s = sum(dy * y), then dx = y * (dy - s). Reads y and dy twice.
template <typename T>
__global__ void softmax_bwd_naive(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                  int rows, int cols) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
         row += stride) {
        const T* gr = dy + row * cols;
        const T* yr = y + row * cols;
        T* dr = dx + row * cols;
        float s = 0.0f;
        for (int i = 0; i < cols; ++i) s += to_float(gr[i]) * to_float(yr[i]);
        for (int i = 0; i < cols; ++i) set_from_float(dr[i], to_float(yr[i]) * (to_float(gr[i]) - s));
    }
}
TFM_EXPORT(softmax_bwd_naive<float>)
TFM_EXPORT(softmax_bwd_naive<__half>)

// 2: block per row, shared-memory tree for the one sum.
template <typename T, int NT>
__global__ void __launch_bounds__(NT) softmax_bwd_block(const T* __restrict__ dy, const T* __restrict__ y,
                                                       T* __restrict__ dx, int rows, int cols) {
    __shared__ float red[NT];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* gr = dy + row * cols;
        const T* yr = y + row * cols;
        T* dr = dx + row * cols;
        float s = 0.0f;
        for (int i = threadIdx.x; i < cols; i += NT) s += to_float(gr[i]) * to_float(yr[i]);
        s = block_reduce_tree<NT>(s, SumOp(), red);
        for (int i = threadIdx.x; i < cols; i += NT)
            set_from_float(dr[i], to_float(yr[i]) * (to_float(gr[i]) - s));
    }
}
TFM_EXPORT(softmax_bwd_block<float, 256>)
TFM_EXPORT(softmax_bwd_block<__half, 256>)

// 3 (TPR = 32) and 4 (TPR up to 512, long rows): shuffles, 16-byte accesses, two passes.
template <typename T, int VEC, int TPR>
__global__ void __launch_bounds__(Groups<TPR>::BLOCK, Groups<TPR>::MIN_BLOCKS)
    softmax_bwd_2pass(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, int rows, int cols) {
    __shared__ float scratch[TPR > 32 ? TPR / 32 : 1];
    const int t = threadIdx.x % TPR;
    for_each_group_row<TPR>(rows, cols, [&](int64_t row, int n) {
        const T* gr = dy + row * cols;
        const T* yr = y + row * cols;
        T* dr = dx + row * cols;
        const int head = VEC > 1 ? head_elems(yr, n) : 0;

        float s = 0.0f;
        for_each_pack<VEC, TPR>(n, head, t, [&](int i, auto w) {
            constexpr int W = decltype(w)::value;
            float a[W], b[W];
            load_pack<T, W>(gr + i, a);
            load_pack<T, W>(yr + i, b);
#pragma unroll
            for (int k = 0; k < W; ++k) s += a[k] * b[k];
        });
        s = group_reduce<TPR>(s, SumOp(), scratch);

        for_each_pack<VEC, TPR>(n, head, t, [&](int i, auto w) {
            constexpr int W = decltype(w)::value;
            float a[W], b[W];
            load_pack<T, W>(gr + i, a);
            load_pack<T, W>(yr + i, b);
#pragma unroll
            for (int k = 0; k < W; ++k) a[k] = b[k] * (a[k] - s);
            store_pack<T, W>(dr + i, a);
        });
    });
}
TFM_EXPORT(softmax_bwd_2pass<float, 4, 32>)
TFM_EXPORT(softmax_bwd_2pass<float, 4, 256>)
TFM_EXPORT(softmax_bwd_2pass<float, 4, 512>)
TFM_EXPORT(softmax_bwd_2pass<float, 1, 32>)
TFM_EXPORT(softmax_bwd_2pass<float, 1, 256>)
TFM_EXPORT(softmax_bwd_2pass<float, 1, 512>)
TFM_EXPORT(softmax_bwd_2pass<__half, 8, 32>)
TFM_EXPORT(softmax_bwd_2pass<__half, 8, 256>)
TFM_EXPORT(softmax_bwd_2pass<__half, 8, 512>)
TFM_EXPORT(softmax_bwd_2pass<__half, 1, 32>)
TFM_EXPORT(softmax_bwd_2pass<__half, 1, 256>)
TFM_EXPORT(softmax_bwd_2pass<__half, 1, 512>)

// 5: y and dy in registers (E each: 2E floats per thread, so E = 16 keeps TPR = 1024 under the
// 64-registers-per-thread cap of a full block): one read of each, one write of dx.
template <typename T, int VEC, int TPR, int E>
__global__ void __launch_bounds__(Groups<TPR>::BLOCK, Groups<TPR>::MIN_BLOCKS)
    softmax_bwd_regs(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, int rows, int cols) {
    static_assert(E % VEC == 0, "E must be a multiple of VEC");
    constexpr int NV = E / VEC;
    __shared__ float scratch[TPR > 32 ? TPR / 32 : 1];
    const int t = threadIdx.x % TPR;
    for_each_group_row<TPR>(rows, cols, [&](int64_t row, int n) {
        const T* gr = dy + row * cols;
        const T* yr = y + row * cols;
        T* dr = dx + row * cols;

        // a = dy, b = y; 0 past the row. Both arrays of a slot under one bounds test (two load_slot
        // calls compile to other SASS for all 24 instantiations).
        float a[NV][VEC], b[NV][VEC];
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const int i = (j * TPR + t) * VEC;
            if (i + VEC <= n) {
                load_pack<T, VEC>(gr + i, a[j]);
                load_pack<T, VEC>(yr + i, b[j]);
            } else {
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    a[j][k] = i + k < n ? to_float(gr[i + k]) : 0.0f;
                    b[j][k] = i + k < n ? to_float(yr[i + k]) : 0.0f;
                }
            }
        }
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int k = 0; k < VEC; ++k) s += a[j][k] * b[j][k];
        s = group_reduce<TPR>(s, SumOp(), scratch);

#pragma unroll
        for (int j = 0; j < NV; ++j) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) a[j][k] = b[j][k] * (a[j][k] - s);
            store_slot<T, VEC>(dr, (j * TPR + t) * VEC, n, a[j]);
        }
    });
}
TFM_EXPORT(softmax_bwd_regs<float, 4, 1, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 4, 32, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 4, 128, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 4, 256, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 4, 512, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 4, 1024, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 1, 1, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 1, 32, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 1, 128, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 1, 256, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 1, 512, 16>)
TFM_EXPORT(softmax_bwd_regs<float, 1, 1024, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 8, 1, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 8, 32, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 8, 128, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 8, 256, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 8, 512, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 8, 1024, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 1, 1, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 1, 32, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 1, 128, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 1, 256, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 1, 512, 16>)
TFM_EXPORT(softmax_bwd_regs<__half, 1, 1024, 16>)
