// plumbing_test.cu: kernels that test the launch plumbing itself, not any op.
//
// tests/test_backend.py launches these on both backends ("ext" and "cupy") and checks that they see
// the same parameters: every scalar type the Launch contract allows, a 128-byte by-value struct
// aligned to 64 bytes (the shape of a CUtensorMap), template name expressions, and more than the
// default 48 KiB of dynamic shared memory. If these pass and an op fails, the op is at fault.
#include "common.cuh"

// 128 bytes, alignas(64): the size and alignment of CUtensorMap (cuda.h), without needing cuda.h.
struct alignas(64) TfmTestBlob {
    uint64_t words[16];
};

// Echoes every parameter into out[0..21] as raw 64-bit words, so the host compares bits.
__global__ void tfm_plumbing_args(uint64_t* out, int32_t a, int64_t b, float c, uint64_t d, uint32_t e,
                                  double f, TfmTestBlob blob) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = static_cast<uint64_t>(static_cast<int64_t>(a));
    out[1] = static_cast<uint64_t>(b);
    out[2] = __float_as_uint(c);
    out[3] = d;
    out[4] = e;
    out[5] = static_cast<uint64_t>(__double_as_longlong(f));
    for (int i = 0; i < 16; ++i) out[6 + i] = blob.words[i];
}
TFM_EXPORT(tfm_plumbing_args)

// out[i] = value + SCALE * i for i < n: a template, exported under two name expressions.
template <typename T, int SCALE>
__global__ void tfm_plumbing_fill(T* out, int n, T value) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = value + static_cast<T>(SCALE) * static_cast<T>(i);
}
TFM_EXPORT(tfm_plumbing_fill<float, 1>)
TFM_EXPORT(tfm_plumbing_fill<int64_t, 2>)

// One block stages n floats through dynamic shared memory and writes them reversed; with n large
// enough (n * 4 > 48 KiB) it only runs if the backend raised the kernel's shared-memory limit.
__global__ void tfm_plumbing_smem(const float* in, float* out, int n) {
    extern __shared__ float buf[];
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = in[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = buf[n - 1 - i];
}
TFM_EXPORT(tfm_plumbing_smem)
