// Host stand-in for cuda_fp16.h (tests/cuda_host/cuda_host.h): __half as IEEE binary16 (_Float16,
// round to nearest even), with the conversions the kernels in csrc/ use.
#pragma once
struct __half {
    _Float16 h;
    __half() = default;
    __half(float f) : h(static_cast<_Float16>(f)) {}
    operator float() const { return static_cast<float>(h); }
};
struct __half2 { __half x, y; };
inline float __half2float(__half v) { return static_cast<float>(v.h); }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
