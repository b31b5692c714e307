// tfm-arch: sm_90a
// selftest.cu: kernels with known faults, for tests/test_emulation.py to check that the host
// emulation (cuda_host.h) reports each one instead of passing it or crashing. Not a project kernel.
// (Marked sm_90a so that the emulator's wgmma is compiled in: st_wgmma_race.)
#include <cuda_fp16.h>

#include "common.cuh"
#include "mma.cuh"

// Each thread writes its slot, then reads its neighbour's: right only with the barrier between.
template <bool BARRIER>
__global__ void st_neighbour(float* out, int n) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = static_cast<float>(t);
    if (BARRIER) __syncthreads();
    out[t] = s[(t + 33) % n];
}
TFM_EXPORT(st_neighbour<true>)
TFM_EXPORT(st_neighbour<false>)

// Half a warp shuffles while the other half waits at a CTA barrier (kind 0), or at __syncwarp
// (kind 1): the first never completes, the second pairs different collectives.
__global__ void st_divergent(float* out, int kind) {
    float v = static_cast<float>(threadIdx.x);
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else if (kind == 0) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = v;
}
TFM_EXPORT(st_divergent)

// One 16-byte cp.async per thread into shared memory, then a barrier and a read back; WAIT false
// skips the cp.async.wait_group, so the copy has not landed when it is read.
template <bool WAIT>
__global__ void st_cp_async(const float* in, float* out) {
    extern __shared__ __align__(16) float dyn[];
    const int t = threadIdx.x;
    cp_async_16(smem_u32(dyn + 4 * t), in + 4 * t, true);
    cp_async_commit();
    if (WAIT) cp_async_wait<0>();
    __syncthreads();
    for (int i = 0; i < 4; ++i) out[4 * t + i] = dyn[4 * t + i];
}
TFM_EXPORT(st_cp_async<true>)
TFM_EXPORT(st_cp_async<false>)

// Each thread reads the other warp's slot of a shared buffer, then the first 16 threads refill the
// whole buffer by cp.async: right only with the barrier between the reads and the refill (without
// it, a copy that lands early overwrites a slot the other warp has not read yet).
template <bool BARRIER>
__global__ void st_cp_async_war(const float* in, float* out) {
    extern __shared__ __align__(16) float dyn[];
    const int t = threadIdx.x;
    dyn[t] = -1.0f - static_cast<float>(t);
    __syncthreads();
    const float old = dyn[(t + 32) % 64];
    if (BARRIER) __syncthreads();
    if (t < 16) cp_async_16(smem_u32(dyn + 4 * t), in + 4 * t, true);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    out[t] = old;
}
TFM_EXPORT(st_cp_async_war<true>)
TFM_EXPORT(st_cp_async_war<false>)

// Writes dynamic shared memory at element `at` (past the launch's smem when at >= smem / 4).
__global__ void st_dyn_write(float* out, int at) {
    extern __shared__ float dyn[];
    if (threadIdx.x == 0) dyn[at] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = 0.0f;
}
TFM_EXPORT(st_dyn_write)

// ldmatrix with row addresses `skew` bytes past 16-byte aligned rows of a 64-byte tile (skew 0:
// in range; 8: misaligned; 4096: beyond the allocation).
__global__ void st_ldmatrix(float* out, int skew) {
    extern __shared__ __align__(16) unsigned char raw[];
    uint32_t r[4];
    ldmatrix_x4(r, smem_u32(raw) + 16 * (threadIdx.x % 4) + skew);
    out[threadIdx.x] = static_cast<float>(r[0] & 1);
}
TFM_EXPORT(st_ldmatrix)

__global__ void st_trap(float* out) {
    if (threadIdx.x == 5) __trap();
    out[threadIdx.x] = 1.0f;
}
TFM_EXPORT(st_trap)

// An mbarrier of count 2 given `arrivals` arrivals, then everyone waits for its phase 0: 2 and 3
// complete it (the third arrival counts toward phase 1), 1 never does.
__global__ void st_mbarrier(float* out, int arrivals) {
    __shared__ uint64_t bar;
    if (threadIdx.x == 0) mbar_init(&bar, 2);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < arrivals) mbar_arrive(&bar);
    mbar_wait(&bar, 0);
    out[threadIdx.x] = 1.0f;
}
TFM_EXPORT(st_mbarrier)

// Each thread reads in[t + skew] and writes out[t]: skew 1 reads one element past the end.
__global__ void st_read(const float* in, float* out, int skew) {
    out[threadIdx.x] = in[threadIdx.x + skew];
}
TFM_EXPORT(st_read)

// Two warpgroups each write half the rows of a 64 x 64 fp16 tile A and of B (K-major, 128-byte
// swizzled), then each issues one wgmma m64n64k16 on all of A and B (k 0..15) and stores its
// accumulators to out[warpgroup][thread][32]. Right only with the barrier between the writes and
// the wgmma: without it a warpgroup's wgmma reads rows the other has not written yet. FENCE false
// leaves out the fence.proxy.async: the writes went through the generic proxy, the wgmma reads
// through the async proxy, and nothing made the first visible to the second. WG_FENCE false leaves
// out the wgmma.fence before the wgmma.
template <bool BARRIER, bool FENCE = true, bool WG_FENCE = true>
__global__ void st_wgmma_race(float* out) {
    extern __shared__ __align__(1024) unsigned char tile[];  // A: 8 KiB, then B: 8 KiB
    const unsigned t = threadIdx.x, r = t / 4;
    for (unsigned k = 16 * (t % 4); k < 16 * (t % 4) + 16; ++k) {
        const unsigned at = r * 128 + (((k / 8) ^ (r % 8)) * 16) + (k % 8) * 2;
        *reinterpret_cast<__half*>(tile + at) = __float2half(static_cast<float>((r * 7 + k * 3) % 11) - 5.f);
        *reinterpret_cast<__half*>(tile + 8192 + at) = __float2half(static_cast<float>((r * 5 + k) % 9) - 4.f);
    }
    if (FENCE) fence_proxy_async_smem();
    if (BARRIER) __syncthreads();
    float d[32];
    for (int i = 0; i < 32; ++i) d[i] = 0.f;
    if (WG_FENCE) wgmma_fence();
    wgmma_m64n64k16_f16<0, 0>(d, wgmma_desc_sw128(smem_u32(tile), 16, 1024),
                              wgmma_desc_sw128(smem_u32(tile + 8192), 16, 1024));
    wgmma_commit();
    wgmma_wait<0>();
    for (int i = 0; i < 32; ++i) out[32 * t + i] = d[i];
}
TFM_EXPORT(st_wgmma_race<true>)
TFM_EXPORT(st_wgmma_race<false>)
TFM_EXPORT(st_wgmma_race<true, false>)
TFM_EXPORT(st_wgmma_race<true, true, false>)

// One TMA load of a 64 x 64 fp16 box into shared memory, signalled on an mbarrier, then copied out
// (still swizzled). FENCE false leaves out fence.mbarrier_init: the barrier's init is not visible
// to the async proxy that completes the load's transaction bytes.
template <bool FENCE>
__global__ void st_tma(const __grid_constant__ TmaDesc desc, __half* out) {
    extern __shared__ __align__(1024) unsigned char tile[];  // 8 KiB box, then the mbarrier
    uint64_t* bar = reinterpret_cast<uint64_t*>(tile + 8192);
    if (threadIdx.x == 0) {
        mbar_init(bar, 1);
        if (FENCE) mbar_fence_init();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        mbar_arrive_expect_tx(bar, 8192);
        tma_load_3d(tile, &desc, bar, 0, 0, 0);
    }
    mbar_wait(bar, 0);
    for (int i = threadIdx.x; i < 4096; i += blockDim.x) out[i] = reinterpret_cast<const __half*>(tile)[i];
}
TFM_EXPORT(st_tma<true>)
TFM_EXPORT(st_tma<false>)

// Warpgroup 0 gives registers back (setmaxnreg.dec 40), warpgroups 1 and 2 take them
// (setmaxnreg.inc INC), matmul_sm90's split. With 168 registers x 384 threads in the CTA's pool,
// 232 fits (128 x 40 + 256 x 232 = 64512) and 240 does not: the GPU would wait forever.
template <int INC>
__global__ void st_setmaxnreg(float* out) {
    if (threadIdx.x < 128) setmaxnreg_dec<40>();
    else setmaxnreg_inc<INC>();
    out[threadIdx.x] = 1.f;
}
TFM_EXPORT(st_setmaxnreg<232>)
TFM_EXPORT(st_setmaxnreg<240>)
