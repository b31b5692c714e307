"""Host emulation of csrc/softmax.cu: the real kernel source compiled by g++ and run on the CPU.

Used by tests/test_softmax.py (test_host_emulation_*) so the kernels' logic (index mappings,
vector heads and tails, grouped rows, grid-stride loops, shuffles, barriers, -inf handling, fp16
conversions) is checked against numpy_ref on a machine without a GPU.

How: a small shim defines the CUDA keywords away and emulates what the kernels use: one OS thread
per CUDA thread, one block at a time (so function-static `__shared__` arrays are per block),
`std::barrier` for `__syncthreads` and for the two phases of a warp shuffle (every lane writes its
value, waits, reads its partner's, waits), `__half` as `_Float16`. Thread-block clusters (forward 7,
`softmax_fwd_cluster<T, VEC, NT, C, E>`): the C blocks of one cluster run at once, one cluster at a
time; each block has its own shared-memory buffer behind `cta_shared<S>()` (the kernel's only
shared memory), `cluster_map(p, rank)` moves an address from this block's buffer to the same offset
in block `rank`'s (distributed shared memory), `cluster_ctarank()` is blockIdx.x % C and
`cluster_sync()` a barrier over all C x NT threads. Every `TFM_EXPORT` name
expression gets a dispatch entry, so the variants' own launch plans (tfm_kernels/softmax.py) run
unchanged through a fake backend whose arrays are NumPy buffers (their addresses drive the vector
path decisions exactly as device pointers would).

Not emulated: memory ordering subtleties beyond barriers, warp-synchronous behaviour without
`*_sync`, timing. It needs g++ >= 12 (C++20 <barrier>, `_Float16` on x86-64).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FP16_H = r"""
// Host stand-in for cuda_fp16.h: __half as IEEE binary16 (round to nearest even).
#pragma once
struct __half { _Float16 h; };
static inline float __half2float(__half v) { return (float)v.h; }
static inline __half __float2half_rn(float f) { __half r; r.h = (_Float16)f; return r; }
"""

SHIM_H = r"""
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static
#define __cluster_dims__(...)
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
struct WarpState { std::unique_ptr<std::barrier<>> bar; float vals[32]; };
// One block: its barrier, its warps' shuffle state, its shared memory for cta_shared<S>().
struct Cta {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<WarpState>> warps;
    unsigned rank = 0;
    alignas(16) unsigned char smem[4096];
};
struct Cluster { std::unique_ptr<std::barrier<>> bar; std::vector<std::unique_ptr<Cta>> ctas; };
inline thread_local Cta* g_cta;
inline Cluster* g_cluster;
inline void __syncthreads() { g_cta->bar->arrive_and_wait(); }
inline unsigned cluster_ctarank() { return g_cta->rank; }
inline void cluster_sync() { g_cluster->bar->arrive_and_wait(); }
inline void cluster_sync_relaxed() { g_cluster->bar->arrive_and_wait(); }
template <typename P>
const P* cluster_map(const P* p, unsigned rank) {
    const auto* b = reinterpret_cast<const unsigned char*>(p);
    if (b < g_cta->smem || b >= g_cta->smem + sizeof(g_cta->smem) || rank >= g_cluster->ctas.size())
        std::abort();  // not this block's shared memory, or no such block in the cluster
    return reinterpret_cast<const P*>(g_cluster->ctas[rank]->smem + (b - g_cta->smem));
}
template <typename S>
S& cta_shared() {
    static_assert(sizeof(S) <= sizeof(Cta::smem), "grow Cta::smem");
    return *reinterpret_cast<S*>(g_cta->smem);
}
inline float __shfl_xor_sync(unsigned mask, float v, int o) {
    if (mask != 0xffffffffu) std::abort();  // the kernels always shuffle with the full warp
    WarpState& w = *g_cta->warps[threadIdx.x / 32];
    const int lane = threadIdx.x % 32;
    w.vals[lane] = v;
    w.bar->arrive_and_wait();
    const float r = w.vals[lane ^ o];
    w.bar->arrive_and_wait();
    return r;
}
inline float __int_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
// `cluster` blocks at once (1 for every kernel but softmax_fwd_cluster), one cluster after another.
// Returns 2 where the launch would fail on the device: a grid that is not whole clusters.
template <typename K, typename... A>
int emu_launch(K kernel, unsigned gx, unsigned bx, unsigned cluster, A... args) {
    if (bx % 32 || bx > 1024 || cluster < 1 || cluster > 8) std::abort();
    if (gx % cluster) return 2;
    gridDim.x = gx;
    blockDim.x = bx;
    for (unsigned b0 = 0; b0 < gx; b0 += cluster) {
        Cluster cl;
        cl.bar = std::make_unique<std::barrier<>>(cluster * bx);
        for (unsigned c = 0; c < cluster; ++c) {
            auto cta = std::make_unique<Cta>();
            cta->bar = std::make_unique<std::barrier<>>(bx);
            cta->rank = c;
            std::memset(cta->smem, 0xff, sizeof(cta->smem));  // NaN-poisoned, as uninitialised
            for (unsigned w = 0; w < bx / 32; ++w) {
                cta->warps.push_back(std::make_unique<WarpState>());
                cta->warps.back()->bar = std::make_unique<std::barrier<>>(32);
            }
            cl.ctas.push_back(std::move(cta));
        }
        g_cluster = &cl;
        std::vector<std::thread> ts;
        for (unsigned c = 0; c < cluster; ++c)
            for (unsigned t = 0; t < bx; ++t) {
                Cta* cta = cl.ctas[c].get();
                ts.emplace_back([=] { threadIdx.x = t; blockIdx.x = b0 + c; g_cta = cta; kernel(args...); });
            }
        for (auto& th : ts) th.join();
    }
    return 0;
}
"""


def cluster_size(name: str) -> int:
    """Blocks per cluster of an exported kernel: C of softmax_fwd_cluster<T, VEC, NT, C, E>, else 1."""
    if name.startswith("softmax_fwd_cluster<"):
        return int(name[name.index("<") + 1:name.rindex(">")].split(",")[3])
    return 1


def _dispatch_source(source: Path) -> str:
    names = [" ".join(m.group(1).split())
             for m in re.finditer(r"^\s*TFM_EXPORT\((.*)\)\s*$", source.read_text(), re.M)]
    lines = ['#include "shim.h"', f'#include "{source}"', "#include <string>",
             'extern "C" int emu(const char* name, unsigned gx, unsigned bx, void** p, int rows, int cols) {',
             "    const std::string n(name);"]
    for n in names:
        t = "__half" if "<__half" in n else "float"
        cluster = cluster_size(n)
        if n.startswith("softmax_fwd"):
            call = f"emu_launch(&{n}, gx, bx, {cluster}, (const {t}*)p[0], ({t}*)p[1], rows, cols)"
        else:
            call = f"emu_launch(&{n}, gx, bx, {cluster}, (const {t}*)p[0], (const {t}*)p[1], ({t}*)p[2], rows, cols)"
        lines.append(f'    if (n == "{n}") return {call};')
    lines += ["    return 1;", "}"]
    return "\n".join(lines) + "\n"


def build(workdir: Path) -> tuple[ctypes.CDLL | None, str]:
    """(library, "") or (None, why not)."""
    cxx = shutil.which("g++")
    if cxx is None:
        return None, "g++ not found"
    inc = workdir / "inc"
    inc.mkdir(parents=True, exist_ok=True)
    (inc / "cuda_fp16.h").write_text(FP16_H)
    (workdir / "shim.h").write_text(SHIM_H)
    (workdir / "emu.cpp").write_text(_dispatch_source(ROOT / "csrc" / "softmax.cu"))
    lib = workdir / "libsoftmax_emu.so"
    cmd = [cxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", f"-I{inc}", f"-I{workdir}",
           f"-I{ROOT / 'csrc'}", str(workdir / "emu.cpp"), "-o", str(lib)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, "g++ could not build the emulation: " + r.stderr[-2000:]
    dll = ctypes.CDLL(str(lib))
    dll.emu.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p),
                        ctypes.c_int, ctypes.c_int]
    dll.emu.restype = ctypes.c_int
    return dll, ""


class _Data:
    def __init__(self, ptr: int):
        self.ptr = ptr


class HostArray:
    """What a variant's fn reads from a CuPy array (dtype, shape, data.ptr), over a NumPy view."""

    def __init__(self, a):
        self.a = a
        self.dtype = a.dtype
        self.shape = a.shape
        self.data = _Data(a.ctypes.data)


class HostBackend:
    """A stand-in for tfm_kernels._backend's backends: `launch` runs the emulated kernel."""

    name = "host-emulation"
    cc = 90

    def __init__(self, dll):
        self.dll = dll
        self.launched: set[str] = set()

    def launch(self, launch) -> None:
        arrays = [a for a in launch.args if isinstance(a, HostArray)]
        scalars = [int(a) for a in launch.args if not isinstance(a, HostArray)]
        assert len(scalars) == 2, launch
        assert tuple(launch.grid[1:]) == (1, 1) and tuple(launch.block[1:]) == (1, 1), launch
        assert launch.smem == 0, launch
        ptrs = (ctypes.c_void_p * len(arrays))(*[a.a.ctypes.data for a in arrays])
        rc = self.dll.emu(launch.kernel.encode(), int(launch.grid[0]), int(launch.block[0]), ptrs,
                          scalars[0], scalars[1])
        assert rc != 1, f"{launch.kernel} is not exported by csrc/softmax.cu"
        assert rc != 2, f"{launch.kernel}: grid {launch.grid} is not a whole number of clusters"
        assert rc == 0, rc
        self.launched.add(launch.kernel)
