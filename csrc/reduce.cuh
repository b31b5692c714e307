// reduce.cuh: row reductions shared by the softmax kernels (and the attention kernels' softmax).
//
//   neg_inf()                  -inf without <cmath> (NVRTC has no INFINITY)
//   safe_max(m)                m, or 0 when m == -inf: the shift that turns an all -inf row into
//                              exp(-inf - 0) = 0 everywhere instead of exp(-inf + inf) = NaN
//   MaxOp, SumOp               the two reductions softmax needs
//   group_reduce<TPR>(v, op, scratch)
//                              reduce over the TPR threads that share a row, every thread gets the
//                              result. TPR <= 32: an aligned group of lanes in one warp, xor
//                              shuffles only (log2(TPR) steps, no shared memory, no barrier).
//                              TPR > 32: the whole block is the group (blockDim.x == TPR): shuffle
//                              inside each warp, one partial per warp through `scratch`
//                              (TPR/32 floats), two barriers.
//   online_merge(m, d, m2, d2) Milakov & Gimelshein (2018): merge two (running max, sum of
//                              exp(x - max)) pairs; group_reduce_online<TPR> does it over a group.
//   block_reduce_tree<NT>      the textbook shared-memory tree (NT floats, log2(NT) barriers):
//                              softmax variant 2 uses it on purpose, to show what shuffles save.
//
// Contract: every thread of a warp (TPR <= 32) or of the block (TPR > 32) must call these the same
// number of times: the shuffles name all 32 lanes and the barriers the whole block. The softmax
// kernels keep their row loops uniform (a group with no row left works on zero elements) for this.
#pragma once

#include "common.cuh"

static __device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000u); }

static __device__ __forceinline__ float safe_max(float m) { return m == neg_inf() ? 0.0f : m; }

struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

struct SumOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// Butterfly over aligned groups of W lanes (W a power of two <= 32): lane l exchanges with l ^ o,
// so it never leaves its group and every lane ends with the group's result.
template <int W, typename Op>
static __device__ __forceinline__ float warp_reduce(float v, Op op) {
    static_assert(W >= 1 && W <= 32 && (W & (W - 1)) == 0, "W must be a power of two <= 32");
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int TPR, typename Op>
static __device__ __forceinline__ float group_reduce(float v, Op op, float* scratch) {
    static_assert((TPR & (TPR - 1)) == 0 && TPR <= 1024, "TPR must be a power of two <= 1024");
    if constexpr (TPR <= 32) {
        return warp_reduce<TPR>(v, op);
    } else {
        constexpr int NW = TPR / 32;
        v = warp_reduce<32>(v, op);
        __syncthreads();  // the previous reduction may still be reading scratch
        if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
        __syncthreads();
        // Every thread folds the NW partials in the same order (broadcast reads, no bank conflicts),
        // so all threads hold the bit-identical result without a third barrier.
        float r = scratch[0];
#pragma unroll
        for (int w = 1; w < NW; ++w) r = op(r, scratch[w]);
        return r;
    }
}

// (m, d) <- merge of (m, d) and (m2, d2), where d = sum exp(x - safe_max(m)) over the elements seen.
// Both are rescaled to the new max; safe_max keeps -inf/-inf pairs (no element, or all masked) at
// d = 0 instead of NaN.
static __device__ __forceinline__ void online_merge(float& m, float& d, float m2, float d2) {
    const float mn = fmaxf(m, m2);
    const float ms = safe_max(mn);
    d = d * expf(m - ms) + d2 * expf(m2 - ms);
    m = mn;
}

template <int W>
static __device__ __forceinline__ void warp_reduce_online(float& m, float& d) {
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float d2 = __shfl_xor_sync(0xffffffffu, d, o);
        online_merge(m, d, m2, d2);
    }
}

// scratch: 2 * TPR / 32 floats when TPR > 32.
template <int TPR>
static __device__ __forceinline__ void group_reduce_online(float& m, float& d, float* scratch) {
    if constexpr (TPR <= 32) {
        warp_reduce_online<TPR>(m, d);
    } else {
        constexpr int NW = TPR / 32;
        warp_reduce_online<32>(m, d);
        __syncthreads();
        if ((threadIdx.x & 31) == 0) {
            scratch[threadIdx.x >> 5] = m;
            scratch[NW + (threadIdx.x >> 5)] = d;
        }
        __syncthreads();
        float rm = scratch[0], rd = scratch[NW];
#pragma unroll
        for (int w = 1; w < NW; ++w) online_merge(rm, rd, scratch[w], scratch[NW + w]);
        m = rm;
        d = rd;
    }
}

// The shared-memory tree: NT partials, halved log2(NT) times with a barrier each. s: NT floats.
template <int NT, typename Op>
static __device__ __forceinline__ float block_reduce_tree(float v, Op op, float* s) {
    static_assert((NT & (NT - 1)) == 0, "NT must be a power of two");
    const int t = threadIdx.x;
    s[t] = v;
    __syncthreads();
#pragma unroll
    for (int o = NT / 2; o > 0; o >>= 1) {
        if (t < o) s[t] = op(s[t], s[t + o]);
        __syncthreads();
    }
    const float r = s[0];
    __syncthreads();  // s is rewritten by the next call
    return r;
}
