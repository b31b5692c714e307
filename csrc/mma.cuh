// mma.cuh: inline-PTX wrappers for the tensor-core kernels (matmul_tc.cu, matmul_sm90.cu, and the
// attention tensor-core kernels).
//
// Ampere-style (sm_80+, also fast on sm_90):
//   smem_u32            generic -> shared-window address, what ldmatrix / cp.async / mbarrier take
//   ldmatrix_x4[_trans] four 8x8 b16 matrices from shared memory into the mma fragment layout;
//                       lanes 8j..8j+7 give the 8 row addresses of matrix j (16 bytes each)
//   mma_16816           mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: D = A*B + D, fp32 acc
//   cp_async_16         16-byte global->shared copy, zero-filled when the predicate is false (edge
//                       tiles: an out-of-range chunk reads 0 bytes and writes 16 zero bytes)
//   cp_async_commit / cp_async_wait<N>
// Hopper (sm_90a only; the *_sm90 helpers exist only where __CUDA_ARCH_FEAT_SM90_ALL is defined,
// so a file compiled for plain sm_80/sm_90 can include this header):
//   wgmma descriptors, wgmma.fence / commit_group / wait_group, mbarrier, TMA 2-D loads,
//   setmaxnreg, fence.proxy.async.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16", f16): lane l, g = l/4, t = l%4
//   A (16x16, row):  reg0 = A[g][2t..2t+1]   reg1 = A[g+8][2t..]   reg2 = A[g][2t+8..]   reg3 = A[g+8][2t+8..]
//   B (16x8, col):   reg0 = B[2t..2t+1][g]   reg1 = B[2t+8..][g]
//   C (16x8, fp32):  c0,c1 = C[g][2t..2t+1]  c2,c3 = C[g+8][2t..2t+1]
// ldmatrix (no .trans) hands lane l the pair M[l/4][2(l%4)..+1] of each 8x8 matrix M; with .trans it
// hands M[2(l%4)..+1][l/4]. So a K-contiguous tile feeds A and B with plain ldmatrix and an
// M/N-contiguous tile feeds them with .trans (tests/_emulate_matmul_tc.py checks this in NumPy).
// Every helper is `static __device__ __forceinline__` (common.cuh: no non-inline definitions).
#pragma once

#include "common.cuh"

static __device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------------------------- ldmatrix
static __device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

static __device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

static __device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

// ---------------------------------------------------------------------------------- mma.sync
// D += A * B for one 16x8x16 tile; fp16 inputs, fp32 accumulators (in place).
static __device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---------------------------------------------------------------------------------- cp.async
// 16 bytes global -> shared. pred false: src-size 0, so nothing is read and the 16 destination
// bytes are zero-filled; gmem must still be a valid-looking address (callers pass the base).
// .cg: bypass L1 (each tile element is read once per CTA; L2 serves the reuse across CTAs).
static __device__ __forceinline__ void cp_async_16(uint32_t smem, const void* gmem, bool pred) {
    const int src_bytes = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem),
                 "r"(src_bytes));
}

static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// fp32 pair -> packed fp16x2 (low half = lo), round to nearest even.
static __device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
