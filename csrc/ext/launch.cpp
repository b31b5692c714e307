// launch.cpp: the pybind11 module tfm_kernels._ext -- one generic launcher and the kernel table.
//
// Every csrc/*.cu is compiled by nvcc with -DTFM_EXT_BUILD, so each TFM_EXPORT(name) line in it
// becomes a static initialiser that calls register_kernel(name, host stub) when this shared library
// is loaded (csrc/common.cuh). Python then launches any kernel by that exact name expression:
//
//   _ext.launch(name, grid, block, smem, stream, argbuffer, offsets, device=-1)
//
// `argbuffer` holds every kernel parameter by value at the offsets given (tfm_kernels/_backend.py
// packs it: pointers and 8-byte scalars 8-aligned, 4-byte scalars 4-aligned, by-value structs such
// as a CUtensorMap 64-aligned); cudaLaunchKernel copies each parameter from its address, sized by
// the kernel's own signature. There is no per-kernel C++ launcher to keep in step with the CuPy
// path: grid, block and shared memory are decided once, in Python, for both backends.
//
// Every CUDA call is checked; failures raise RuntimeError carrying the kernel name and CUDA's error
// name and string. Nothing here prints or exits.

#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace tfm_ext {

namespace {

struct Table {
    std::map<std::string, const void*> stubs;
    std::vector<std::string> duplicates;  // names exported by more than one translation unit
};

// Function-local static: safe to use from other translation units' static initialisers, whatever
// order the loader runs them in.
Table& table() {
    static Table t;
    return t;
}

[[noreturn]] void raise_cuda(const std::string& what, cudaError_t err) {
    // A failed runtime call also leaves its error as the thread's "last error"; consume it here, or
    // the next, valid launch would find it in its own cudaGetLastError and report it (seen on the
    // H200: a refused cudaFuncSetAttribute surfaced again at the following launch).
    cudaGetLastError();
    throw std::runtime_error(what + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

constexpr int kSmemDefaultLimit = 48 * 1024;
constexpr size_t kMaxParamBytes = 32764;  // CUDA 12.1+ kernel parameter limit on Volta and newer

}  // namespace

bool register_kernel(const char* name_expression, const void* host_stub) {
    Table& t = table();
    auto inserted = t.stubs.emplace(name_expression, host_stub);
    if (!inserted.second && inserted.first->second != host_stub) t.duplicates.emplace_back(name_expression);
    return true;
}

}  // namespace tfm_ext

namespace {

dim3 to_dim3(const std::vector<long long>& v, const char* what) {
    if (v.size() != 3) throw std::invalid_argument(std::string(what) + ": expected 3 dimensions");
    for (long long d : v)
        if (d < 1 || d > 0x7fffffffLL) throw std::invalid_argument(std::string(what) + ": dimension out of range");
    return dim3(static_cast<unsigned>(v[0]), static_cast<unsigned>(v[1]), static_cast<unsigned>(v[2]));
}

void launch(const std::string& name, const std::vector<long long>& grid, const std::vector<long long>& block,
            long long smem, std::uintptr_t stream, py::bytes argbuffer, const std::vector<size_t>& offsets,
            int device) {
    auto& t = tfm_ext::table();
    auto it = t.stubs.find(name);
    if (it == t.stubs.end()) throw std::invalid_argument("kernel: " + name + " is not in the extension's kernel table");
    for (const auto& d : t.duplicates)
        if (d == name) throw std::invalid_argument("kernel: " + name + " is exported by more than one source");
    const void* stub = it->second;

    std::string buf = argbuffer;  // one copy; cudaLaunchKernel reads the parameters synchronously
    if (buf.size() > tfm_ext::kMaxParamBytes) throw std::invalid_argument("launch " + name + ": parameters too large");
    // 64-byte aligned storage so a by-value CUtensorMap sits where its alignas(64) type expects it.
    alignas(64) unsigned char storage[tfm_ext::kMaxParamBytes + 64];
    std::memcpy(storage, buf.data(), buf.size());
    std::vector<void*> params(offsets.size());
    for (size_t i = 0; i < offsets.size(); ++i) {
        if (offsets[i] >= buf.size()) throw std::invalid_argument("launch " + name + ": argument offset out of range");
        params[i] = storage + offsets[i];
    }

    if (device >= 0) {
        int current = -1;
        cudaError_t err = cudaGetDevice(&current);
        if (err != cudaSuccess) tfm_ext::raise_cuda("launch " + name + ": cudaGetDevice", err);
        if (current != device) {
            err = cudaSetDevice(device);
            if (err != cudaSuccess) tfm_ext::raise_cuda("launch " + name + ": cudaSetDevice", err);
        }
    }
    if (smem > tfm_ext::kSmemDefaultLimit) {
        cudaError_t err = cudaFuncSetAttribute(stub, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (err != cudaSuccess) tfm_ext::raise_cuda("launch " + name + ": cudaFuncSetAttribute(smem=" + std::to_string(smem) + ")", err);
    }
    cudaError_t err = cudaLaunchKernel(stub, to_dim3(grid, "grid"), to_dim3(block, "block"),
                                       params.empty() ? nullptr : params.data(),
                                       static_cast<size_t>(smem), reinterpret_cast<cudaStream_t>(stream));
    cudaError_t last = cudaGetLastError();  // also clears a launch error so it does not leak into the next call
    if (err != cudaSuccess) tfm_ext::raise_cuda("launch " + name, err);
    if (last != cudaSuccess) tfm_ext::raise_cuda("launch " + name, last);
}

std::vector<std::string> kernels() {
    std::vector<std::string> names;
    for (const auto& kv : tfm_ext::table().stubs) names.push_back(kv.first);
    return names;
}

py::tuple device_count() {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();
        return py::make_tuple(0, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
    }
    return py::make_tuple(n, std::string(""));
}

int runtime_version() {
    int v = 0;
    return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int driver_version() {
    int v = 0;
    return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

}  // namespace

#ifndef TFM_BUILD_ARCHS
#define TFM_BUILD_ARCHS "unknown"
#endif

PYBIND11_MODULE(_ext, m) {
    m.doc() = "tfm_kernels._ext: every TFM_EXPORT kernel of csrc/*.cu, launched by name (see csrc/ext/launch.cpp)";
    m.def("launch", &launch, py::arg("name"), py::arg("grid"), py::arg("block"), py::arg("smem"),
          py::arg("stream"), py::arg("argbuffer"), py::arg("offsets"), py::arg("device") = -1,
          "Launch the exported kernel `name` on `stream` with parameters packed in `argbuffer` at `offsets`.");
    m.def("kernels", &kernels, "Every exported name expression, sorted.");
    m.def("duplicates", []() { return tfm_ext::table().duplicates; },
          "Names exported by more than one source (each is an error to launch).");
    m.def("device_count", &device_count, "(number of CUDA devices, error string when the query failed)");
    m.def("runtime_version", &runtime_version, "cudaRuntimeGetVersion of the linked runtime (0 on failure)");
    m.def("driver_version", &driver_version, "cudaDriverGetVersion (0 without a driver)");
    m.def("built_cuda_version", []() { return CUDART_VERSION; }, "CUDART_VERSION the extension was compiled against");
    m.def("build_archs", []() { return std::string(TFM_BUILD_ARCHS); }, "the -gencode targets of the build");
}
