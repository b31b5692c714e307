// common.cuh: what every kernel source in csrc/ includes first.
//
// One kernel body, two launch paths. Every csrc/<op>.cu is compiled twice from the same text:
//   * by NVRTC through CuPy RawModule (the "cupy" backend): __CUDACC_RTC__ is defined, no host
//     headers exist, and the exported template instantiations are named to NVRTC through
//     `name_expressions`;
//   * by nvcc into the pybind11 extension (the "ext" backend): TFM_EXT_BUILD is defined, and each
//     exported instantiation registers its host stub under the same name expression, so the
//     extension's one generic launcher (csrc/ext/) can find it by name.
//
// The contract for exporting a kernel:
//   TFM_EXPORT(softmax_fwd_warp<float, 8>)
// on ONE line, at global scope, after the template's definition. The argument is the C++ name
// expression, exactly as it will be looked up; tfm_kernels parses these lines out of the source for
// CuPy (collapsing runs of whitespace to one space, as the preprocessor's # operator does), so both
// backends use the identical string as the kernel's key. Kernels live at global scope (no
// namespaces) so the name expression is the name.
//
// Rules for everything under csrc/: no exit(), no printf, no globals, no non-inline definitions in
// headers; every device helper in a header is `static __device__ __forceinline__` or a template.
#pragma once

#if defined(__CUDACC_RTC__)
// NVRTC: no <cstdint>; the fixed-width types kernels use.
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#else
#include <cstdint>
#endif

#define TFM_CAT_(a, b) a##b
#define TFM_CAT(a, b) TFM_CAT_(a, b)

#if defined(TFM_EXT_BUILD) && !defined(__CUDACC_RTC__)
namespace tfm_ext {
// Defined once, in csrc/ext/launch.cpp. Returns true so it can initialise a static.
bool register_kernel(const char* name_expression, const void* host_stub);
}  // namespace tfm_ext
#define TFM_EXPORT(...)                                                                        \
    static const bool TFM_CAT(tfm_exported_, __COUNTER__) =                                   \
        ::tfm_ext::register_kernel(#__VA_ARGS__, reinterpret_cast<const void*>(&__VA_ARGS__));
#else
#define TFM_EXPORT(...)
#endif

// Ceil division for launch-shape arithmetic inside kernels.
static __host__ __device__ __forceinline__ int tfm_cdiv(int a, int b) { return (a + b - 1) / b; }
