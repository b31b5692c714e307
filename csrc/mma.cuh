// mma.cuh: inline-PTX wrappers for the tensor-core kernels (matmul_tc.cu, matmul_sm90.cu, and the
// attention tensor-core kernels).
//
// Ampere-style (sm_80+, also fast on sm_90):
//   smem_u32            generic -> shared-window address, what ldmatrix / cp.async / mbarrier take
//   ldmatrix_x4[_trans] four 8x8 b16 matrices from shared memory into the mma fragment layout;
//                       lanes 8j..8j+7 give the 8 row addresses of matrix j (16 bytes each)
//   mma_16816           mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: D = A*B + D, fp32 acc
//   zero_frags          accumulator fragments (float[N][4], float[M][N][4]) set to 0
//   cp_async_16         16-byte global->shared copy, zero-filled when the predicate is false (edge
//                       tiles: an out-of-range chunk reads 0 bytes and writes 16 zero bytes)
//   cp_async_commit / cp_async_wait<N>
//   pack_half2          two fp32 -> fp16x2 (round to nearest)
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
// M/N-contiguous tile feeds them with .trans (every layout passes tests/test_matmul_emulation.py).
// Every helper is `static __device__ __forceinline__` (common.cuh: no non-inline definitions).
#pragma once

#include "common.cuh"

static __device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The host emulation (tests/cuda_host/cuda_host.h, g++: no __CUDACC__) defines its own versions of
// the inline-PTX helpers below: ldmatrix_*, mma_16816, cp_async_*, pack_half2.
#if defined(__CUDACC__)
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

#endif  // __CUDACC__

// Accumulator fragments set to 0 (one n8 tile is float[4]; arrays of them, 2-D or 3-D).
template <int N>
static __device__ __forceinline__ void zero_frags(float (&x)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) x[i][c] = 0.f;
}
template <int M, int N>
static __device__ __forceinline__ void zero_frags(float (&x)[M][N][4]) {
#pragma unroll
    for (int i = 0; i < M; ++i) zero_frags(x[i]);
}

#if defined(__CUDACC__)
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

#endif  // __CUDACC__

// Epilogue: store the fp32 pair (v0, v1) at C[row][col..col+1], guarded against the matrix edge.
// pair_ok: col is even and every row of C starts 2-element aligned, so the pair is one 8-byte
// (fp32) or 4-byte (fp16, packed with cvt.rn.f16x2) store. OutT is float or __half (the including
// file includes cuda_fp16.h).
template <typename OutT>
static __device__ __forceinline__ void store_pair(OutT* __restrict__ C, int64_t ldc, int row, int col,
                                                  int M, int N, bool pair_ok, float v0, float v1) {
    if (row >= M) return;
    OutT* p = C + row * ldc + col;
    if (pair_ok && col + 1 < N) {
        if constexpr (sizeof(OutT) == 4) {
            *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
        } else {
            *reinterpret_cast<uint32_t*>(p) = pack_half2(v0, v1);
        }
    } else {
        if (col < N) p[0] = static_cast<OutT>(v0);
        if (col + 1 < N) p[1] = static_cast<OutT>(v1);
    }
}

// ================================================================================== Hopper
// A by-value kernel parameter holding a CUtensorMap (cuda.h's type is 128 bytes, alignas(64));
// declared here so the sources need no driver header (NVRTC has none). The host encodes it with
// cuTensorMapEncodeTiled; kernels take it as `const __grid_constant__ TmaDesc` and hand its
// parameter-space address to the TMA instruction. Visible to host passes too (kernel signatures).
struct alignas(64) TmaDesc {
    unsigned long long opaque[16];
};

// mbarrier and TMA exist from sm_90; wgmma and setmaxnreg only on the arch-specific sm_90a target.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)

// ------------------------------------------------------------------------------- mbarrier
static __device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(arrivals));
}

// Makes the generic-proxy mbarrier.init visible to the async proxy (TMA's complete_tx).
static __device__ __forceinline__ void mbar_fence_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also raises the phase's expected transaction count by `bytes` (what the TMA
// loads of this phase will deliver).
static __device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
}

static __device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

static __device__ __forceinline__ bool mbar_try_wait(uint32_t addr, uint32_t parity) {
    uint32_t done;  // try_wait suspends for a system-dependent time before reporting "not yet"
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
    return done != 0;
}

// Block until the phase with parity `parity` has completed. A fresh barrier is in phase 0, so
// waiting for parity 1 returns at once (the "previous" phase counts as complete): a producer
// waiting on an empty-slot barrier starts with parity 1.
// Watchdog: a pipeline bug (a phase that never completes, a transaction count that is never met)
// would hang the process; after 2^35 cycles (~18 s at 1.9 GHz, far beyond any legitimate wait)
// the kernel traps instead, and the launch fails with an error the caller sees.
static __device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
    const uint32_t addr = smem_u32(bar);
    if (mbar_try_wait(addr, parity)) return;
    const long long t0 = clock64();
    while (!mbar_try_wait(addr, parity)) {
        if (clock64() - t0 > (1ll << 35)) asm volatile("trap;");
    }
}

// ------------------------------------------------------------------------------------ TMA
static __device__ __forceinline__ void tma_prefetch_desc(const TmaDesc* desc) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(desc)) : "memory");
}

// Box at coordinates (c0 innermost, c1, c2) of a 3-D tensor map -> shared memory at dst; the bytes
// are counted on `bar`. Out-of-range elements of the box are written as zeros (and still counted).
static __device__ __forceinline__ void tma_load_3d(void* dst, const TmaDesc* desc, uint64_t* bar,
                                                   int c0, int c1, int c2) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(smem_u32(dst)),
        "l"(reinterpret_cast<uint64_t>(desc)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
}

#endif  // sm_90

#if defined(__CUDACC__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)  // the host emulation has its own

// ----------------------------------------------------------------------------------- wgmma
// Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, leading
// and stride byte offsets (all >> 4, 14 bits each), layout type in bits 62-63 (1 = 128-byte
// swizzle). For the 128B-swizzled canonical layouts (CUTLASS make_gmma_desc):
//   K-major:  rows of 128 bytes (64 halves of K), 8-row / 1024-byte swizzle atoms; SBO = the
//             byte distance between 8-row groups along M/N (1024 when packed); LBO unused (1).
//             Stepping K by 16 inside the 128-byte row = start address + 32 bytes.
//   MN-major: rows of 128 bytes (64 halves of M/N) per k, 8 k-rows per 1024-byte atom;
//             SBO = the byte distance between 8-k-row groups (1024 when packed), LBO = the byte
//             distance between 64-wide M/N column blocks. Stepping K by 16 = start + 2 * SBO.
// The atoms must sit on 1024-byte boundaries (base offset field 0).
static __device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t smem_addr, uint32_t lbo,
                                                            uint32_t sbo) {
    return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) |
           (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
           (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// Orders this warpgroup's register accesses (accumulators) before the following wgmma.
static __device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
static __device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Wait until at most N committed wgmma groups of this warpgroup are pending.
template <int N>
static __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of an accumulator register across wgmma fences/waits
// (the asynchronous wgmma writes it behind the compiler's back).
static __device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }

#define TFM_ACC8(d, i)                                                                          \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
        "+f"(d[i + 6]), "+f"(d[i + 7])
#define TFM_ACC32(d, i) TFM_ACC8(d, i), TFM_ACC8(d, i + 8), TFM_ACC8(d, i + 16), TFM_ACC8(d, i + 24)

// D(64x256, fp32, registers) += A(64x16, smem desc) * B(16x256, smem desc); fp16 inputs.
// TA / TB: 0 = K-major operand, 1 = M/N-major ("transposed") operand. D's fragment: warp w of the
// warpgroup holds rows 16w..16w+15; lane l, g = l/4, t = l%4: d[4j+0..1] = D[16w+g][8j+2t..+1],
// d[4j+2..3] = D[16w+g+8][8j+2t..+1] (the mma.sync C layout repeated along N).
template <int TA, int TB>
static __device__ __forceinline__ void wgmma_m64n256k16_f16(float (&d)[128], uint64_t desc_a,
                                                            uint64_t desc_b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, 1, 1, 1, %130, %131;\n"
        "}\n"
        : TFM_ACC32(d, 0), TFM_ACC32(d, 32), TFM_ACC32(d, 64), TFM_ACC32(d, 96)
        : "l"(desc_a), "l"(desc_b), "n"(TA), "n"(TB));
}

// The same for N = 128 (64 accumulators).
template <int TA, int TB>
static __device__ __forceinline__ void wgmma_m64n128k16_f16(float (&d)[64], uint64_t desc_a,
                                                            uint64_t desc_b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, 1, 1, 1, %66, %67;\n"
        "}\n"
        : TFM_ACC32(d, 0), TFM_ACC32(d, 32)
        : "l"(desc_a), "l"(desc_b), "n"(TA), "n"(TB));
}

#undef TFM_ACC32
#undef TFM_ACC8

// Warp-specialised register budgets: a producer warpgroup that only issues TMA gives registers
// back, consumer warpgroups holding 128 fp32 accumulators take them (multiples of 8, 24..256).
template <int REGS>
static __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
}
template <int REGS>
static __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL


// ------------------------------------------------------------------ wgmma, A from registers
// (added for csrc/attention_sm90.cu; sm_90a only.) D(64xN, fp32) += A(64x16, registers) *
// B(16xN, smem desc): A is this warp's 16x16 slice of the warpgroup's 64 rows in the mma.sync A
// fragment layout (4 x f16x2: rows g / g+8, cols 2t.. / 2t+8..), which is what packing the fp32
// accumulator pairs of two adjacent n8 tiles gives: attention's P = softmax(S) goes from the S
// accumulators into the P V product without touching shared memory. TB: 1 = B is N-major.
#if defined(__CUDACC__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int TB>
static __device__ __forceinline__ void wgmma_rs_m64n64k16_f16(float (&d)[32], const uint32_t (&a)[4],
                                                             uint64_t desc_b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31 "
        "}, {%32, %33, %34, %35}, %36, 1, 1, 1, %37;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(TB));
}
template <int TB>
static __device__ __forceinline__ void wgmma_rs_m64n128k16_f16(float (&d)[64], const uint32_t (&a)[4],
                                                             uint64_t desc_b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63 "
        "}, {%64, %65, %66, %67}, %68, 1, 1, 1, %69;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(TB));
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// cp.async and plain stores write shared memory through the generic proxy; wgmma and TMA read it
// through the async proxy. This fence makes this thread's generic writes visible to the async
// proxy (a barrier then publishes them to the other threads' wgmmas). Appended at the end of the
// file so that no line above it moves, and sm_90a-only: NVRTC 13.0's code for a matmul.cu kernel
// (plain sm_90) changed when this unused function was visible there (docs/plumbing.md).
#if defined(__CUDACC__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

// D(64x64, fp32) += A(64x16, smem desc) * B(16x64, smem desc), both operands from shared memory
// (added for attention_backward 13, csrc/attention_sm90.cu: S^T, dP^T at D = 128 and its dQ
// product, which reads A = dS from a [key][query] tile, i.e. M-major: TA = 1). Accumulator layout
// as wgmma_m64n256k16_f16's, 32 registers. sm_90a only.
#if defined(__CUDACC__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <int TA, int TB>
static __device__ __forceinline__ void wgmma_m64n64k16_f16(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31 "
        "}, %32, %33, 1, 1, 1, %34, %35;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "n"(TA), "n"(TB));
}
#endif

// The value unchanged, but opaque to the optimizer: a shared-memory base that passes through it
// inside a loop is recomputed there, not hoisted. Without it nvcc hoists every loop-invariant
// wgmma descriptor of attention_backward 13 (16 k-steps x 2 operands x 64 bits) out of the query
// loop and spills at 255 registers. sm_90a only, like the helpers above: an unused function
// visible to a plain sm_90 source has changed NVRTC's code for it before (docs/plumbing.md).
#if defined(__CUDACC__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ uint32_t opaque_u32(uint32_t x) {
    asm volatile("" : "+r"(x));
    return x;
}
#endif

// The descriptor of the operand `bytes` further on (a multiple of 16; the start address stays
// below 256 KiB, so the 14-bit start field cannot carry into LBO): one add on the descriptor, where
// wgmma_desc_sw128 masks, shifts and merges three fields. A k-loop builds one descriptor per
// operand and steps it (attention_backward 13's main loop, NVRTC, D = 128: 1354 instructions with
// a descriptor built per k-step, 995 with this, a warp-uniform warpgroup index and unsigned tile
// indexing).
// Plain integer code: the host emulation uses this definition too.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ uint64_t wgmma_desc_advance(uint64_t desc, uint32_t bytes) {
    return desc + (bytes >> 4);
}
#endif
