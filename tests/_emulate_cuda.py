"""Host emulation of csrc/: the real kernel sources compiled by g++ and run on the CPU.

What it is for: the kernels' own logic (index maps, edge guards, vector heads and tails, grid-stride
loops, barriers, warp shuffles, ldmatrix/mma.sync fragments, cp.async pipelines, -inf handling,
fp16 conversions) checked against numpy_ref on a machine without a GPU, through each variant's own
launch plan. tests/cuda_host/cuda_host.h says how a launch runs (a fiber per CUDA thread, one CTA or
cluster at a time, poisoned shared memory, deferred cp.async, warp collectives computed at the
warp's release) and what it cannot see.

How a source is built: its text with every `__shared__` declaration rewritten (a function-scope
`__shared__ T x[n];` becomes a per-CTA allocation in the emulated shared arena, `extern __shared__
T x[];` the launch's dynamic shared memory), after `#include "cuda_host.h"` and with a `#line 1`
so compiler messages name the real file, plus a dispatch entry for every TFM_EXPORT name
expression. The inline-PTX helpers of csrc/mma.cuh and csrc/matmul.cu are compiled under
__CUDACC__ only; cuda_host.h defines their host versions, mbarrier, TMA and wgmma included (the
sm_90a sources are built with __CUDA_ARCH_FEAT_SM90_ALL defined, and their launch plans take
`tma_descriptor` below in place of the driver's encoder).

    be = HostBackend()                        # builds on first use, cached under build/emulation/
    variant.fn(be, host_array(x), host_array(out))
    be.launched                               # the kernels that ran

A failed launch (deadlock, divergent warp collective, shared address out of range, a parameter of
the wrong size, CUDA's launch limits) raises EmulationError with the emulator's message. Needs g++
>= 12 (C++20, `_Float16` on x86-64).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import mmap
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from tfm_kernels._backend import parse_exports, source_arch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SHIM = Path(__file__).resolve().parent / "cuda_host"
CACHE = ROOT / "build" / "emulation"
CXXFLAGS = ("-std=c++20", "-O1", "-fPIC", "-shared", "-w", "-Wno-psabi")

# `extern __shared__ [__align__(n)] T name[];`
_DYN = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:<>, ]+?)\s+(\w+)\s*\[\s*\]\s*;")
# `__shared__ [__align__(n)] T name[count];` and `__shared__ T name;`
_STATIC = re.compile(r"__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:<>, ]+?)\s+(\w+)\s*(?:\[([^\]]+)\])?\s*;")


class EmulationError(AssertionError):
    """A launch the emulator refused or stopped; the message says why and where."""


def rewrite_shared(text: str) -> str:
    """Every `__shared__` declaration of a kernel source turned into the emulator's per-CTA shared
    arena (cuda_host.h: emu::dynamic_smem, emu::static_smem). Keeps every line where it was."""
    text = _DYN.sub(lambda m: f"{m[1]}* const {m[2]} = reinterpret_cast<{m[1]}*>(emu::dynamic_smem());", text)

    def static(m):
        t, name, count = m[1], m[2], m[3]
        if count is None:
            return f"{t}& {name} = *emu::static_smem<{t}>(__PRETTY_FUNCTION__, __LINE__, 1);"
        return f"{t}* const {name} = emu::static_smem<{t}>(__PRETTY_FUNCTION__, __LINE__, ({count}));"

    return _STATIC.sub(static, text)


def _path(source: str) -> Path:
    return Path(source) if Path(source).is_absolute() else CSRC / source


def translation_unit(source: str) -> str:
    """The C++ text g++ compiles for csrc/<source> (or for `source` itself, an absolute path): shim,
    rewritten source, dispatch table."""
    path = _path(source)
    text = path.read_text()
    names = parse_exports(text)
    lines = ['#include "cuda_host.h"', f'#line 1 "{path}"', rewrite_shared(text), "#include <cstring>",
             'extern "C" int emu_launch(const char* name, const unsigned* c, void** args, const int* sizes, int n) {',
             "    const emu::Config cfg{{c[0], c[1], c[2]}, {c[3], c[4], c[5]}, c[6], c[7], static_cast<int>(c[8]), c[9]};"]
    for n in names:
        lines.append(f'    if (!std::strcmp(name, "{n}")) return emu::launch(&{n}, cfg, args, sizes, n);')
    lines += ["    return 1;", "}", ""]
    return "\n".join(lines)


def _key(source: str, unit: str, cxx: str) -> str:
    h = hashlib.sha256(unit.encode())
    for p in sorted(SHIM.glob("*.h")) + sorted(CSRC.glob("*.cuh")):
        h.update(p.read_bytes())
    h.update(" ".join((cxx,) + CXXFLAGS).encode())
    return f"{Path(source).stem}-{h.hexdigest()[:16]}"


def _compile_cmd(cxx: str, cpp: Path, lib: Path, sm90a: bool) -> list[str]:
    # An sm_90a source's kernel bodies sit under __CUDA_ARCH_FEAT_SM90_ALL (nvcc defines it for
    # compute_90a); the host emulation defines it too and brings mbarrier/TMA/wgmma.
    extra = ["-D__CUDA_ARCH_FEAT_SM90_ALL"] if sm90a else []
    return [cxx, *CXXFLAGS, *extra, f"-I{SHIM}", f"-I{CSRC}", str(cpp), "-o", str(lib)]


def build(sources, cache: Path = CACHE) -> dict[str, Path | str]:
    """Compile the emulation of each source (in parallel, cached by content). Returns, per source,
    the shared library's path or a string saying why there is none."""
    cxx = shutil.which("g++")
    out: dict[str, Path | str] = {}
    if cxx is None:
        return {s: "g++ not found" for s in sources}
    cache.mkdir(parents=True, exist_ok=True)
    running = []
    for s in sources:
        unit = translation_unit(s)
        sm90a = source_arch(_path(s).read_text()) == "sm_90a"
        key = _key(s, unit + str(sm90a), cxx)
        lib = cache / f"{key}.so"
        out[s] = lib
        if not lib.exists():
            cpp = cache / f"{key}.{os.getpid()}.cpp"  # per process: concurrent test runs may build too
            cpp.write_text(unit)
            tmp = cache / f"{key}.{os.getpid()}.tmp.so"
            running.append((s, lib, tmp, subprocess.Popen(_compile_cmd(cxx, cpp, tmp, sm90a), stdout=subprocess.PIPE,
                                                          stderr=subprocess.STDOUT, text=True)))
    for s, lib, tmp, p in running:
        log = p.communicate()[0]
        if p.returncode != 0:
            out[s] = f"g++ could not build the emulation of {s}:\n{log[-4000:]}"
        else:
            tmp.replace(lib)
            for old in cache.glob(f"{Path(s).stem}-*"):  # earlier builds of this source
                if not old.name.startswith(lib.stem + "."):
                    old.unlink(missing_ok=True)
    return out


class _Ptr:
    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr


class _Device:
    id = 0


class HostArray(np.ndarray):
    """A NumPy array that also answers ``.data.ptr`` (its address) and ``.device.id``, as a CuPy
    array does: the variants' launch plans read them (alignment decisions, TMA descriptors, the
    SM count)."""

    @property
    def data(self):  # noqa: D401 - mirrors cupy.ndarray.data
        return _Ptr(self.ctypes.data)

    @property
    def device(self):
        return _Device()


def host_array(a: np.ndarray) -> HostArray:
    return np.asarray(a).view(HostArray)


_PAGE = mmap.PAGESIZE


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def guarded(a: np.ndarray, align: int | None = None) -> HostArray:
    """A copy of `a` between two inaccessible pages: a kernel that reads or writes even one byte
    past its end (or into the page before it) stops with an EmulationError naming the address.
    align None: the last byte touches the page after (every overrun faults; the start is then
    aligned only as far as a.nbytes allows). align n: the start n-byte aligned, so vector paths stay
    on, and an overrun of less than n bytes may go unseen."""
    a = np.ascontiguousarray(a)
    pages = -(-(a.nbytes + (align or 1)) // _PAGE)
    mm = mmap.mmap(-1, (pages + 2) * _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    libc = _libc()
    for at in (base, base + (pages + 1) * _PAGE):
        if libc.mprotect(at, _PAGE, 0) != 0:  # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")
    end = base + (pages + 1) * _PAGE
    start = end - a.nbytes if align is None else (end - a.nbytes) // align * align
    out = np.frombuffer(mm, dtype=a.dtype, count=a.size, offset=start - base).reshape(a.shape).view(HostArray)
    out[...] = a
    return out


class _Aligned:
    """`raw` in a ctypes buffer at a 64-byte aligned address (a TmaDesc is alignas(64))."""

    def __init__(self, raw: bytes):
        self.buf = ctypes.create_string_buffer(len(raw) + 64)
        self.addr = (ctypes.addressof(self.buf) + 63) & ~63
        ctypes.memmove(self.addr, raw, len(raw))


def _pack(a):
    """(keep-alive object, address of the parameter's bytes, their size)."""
    if isinstance(a, np.ndarray):
        o = ctypes.c_void_p(a.ctypes.data)
        return o, ctypes.addressof(o), 8
    if isinstance(a, np.generic):
        raw = a.tobytes()
        o = (ctypes.c_char * len(raw)).from_buffer_copy(raw)
        return o, ctypes.addressof(o), len(raw)
    if isinstance(a, bytes):  # a by-value struct: a TMA descriptor from tma_descriptor below
        o = _Aligned(a)
        return o, o.addr, len(a)
    raise TypeError(f"launch argument of type {type(a).__name__}: the emulator takes NumPy arrays, NumPy "
                    "scalars and TMA descriptors (bytes)")


TMA_MAGIC = 0x54464D2D544D4131  # cuda_host.h emu::kTmaMagic


def tma_descriptor(ptr: int, inner: int, outer: int, batch: int, box_inner: int, box_outer: int) -> bytes:
    """The emulator's stand-in for tfm_kernels.matmul_tc.tma_descriptor (same arguments: a
    C-contiguous fp16 tensor (batch, outer, inner) read in (box_outer x box_inner) boxes, 128-byte
    swizzle, zero fill): cuda_host.h's tma_load_3d decodes it. Refuses what
    cuTensorMapEncodeTiled refuses for these arguments: a global address not 16-byte aligned, a
    row stride not a multiple of 16 bytes, a box dimension above 256, an inner box wider than the
    128-byte swizzle span."""
    import struct

    if ptr % 16 or (inner * 2) % 16 or not (0 < box_inner * 2 <= 128) or not (0 < box_outer <= 256):
        raise RuntimeError(f"cuTensorMapEncodeTiled (emulated) refuses a tensor of {batch} x {outer} x {inner} "
                           f"halves at {ptr:#x}, box {box_outer} x {box_inner}")
    return struct.pack("<QQ3Q2Q2I2I7Q", TMA_MAGIC, ptr, inner, outer, batch, inner * 2, inner * outer * 2,
                       box_inner, box_outer, 2, 128, *([0] * 7))


# Kernels launched as thread-block clusters: name prefix -> index of the cluster size among the
# template arguments (csrc/softmax.cu: softmax_fwd_cluster<T, VEC, NT, C, E>).
CLUSTER_ARG = {"softmax_fwd_cluster<": 3}


def cluster_size(name: str) -> int:
    for prefix, i in CLUSTER_ARG.items():
        if name.startswith(prefix):
            return int(name[name.index("<") + 1:name.rindex(">")].split(",")[i])
    return 1


@functools.lru_cache(maxsize=None)
def launch_limits() -> dict[str, dict]:
    """{name expression: {"max_threads", "registers"}} of the kernels in the built extension
    (tfm_kernels._sass.launch_limits: its ``__launch_bounds__`` and register counts, what the
    driver checks a launch against and the emulator otherwise cannot see, since cuda_host.h
    defines ``__launch_bounds__`` away); empty when the extension or cuobjdump is missing."""
    from tfm_kernels import _sass

    ext = sorted(Path(__file__).resolve().parents[1].glob("tfm_kernels/_ext*.so"))
    if not ext or _sass.cuobjdump() is None or shutil.which("c++filt") is None:
        return {}
    limits = _sass.launch_limits(str(ext[0]))
    return {expr: limits[m] for expr, m in _sass.name_expressions(sorted(limits)).items()}


def check_launch_limits(launch) -> dict | None:
    """EmulationError when the GPU would refuse ``launch``: more threads than the kernel's
    ``__launch_bounds__`` allow, or more registers than the 64K of an SM (allocated per warp, in
    steps of 8 per thread). Returns the kernel's limits (None when unknown)."""
    lim = launch_limits().get(" ".join(launch.kernel.split()))
    if not lim:
        return None
    threads = int(np.prod(launch.block))
    where = f"csrc/{launch.source} {launch.kernel} block {tuple(launch.block)}"
    if lim["max_threads"] and threads > lim["max_threads"]:
        raise EmulationError(f"{where}: {threads} threads, but its __launch_bounds__ allow "
                             f"{lim['max_threads']} (the GPU refuses the launch)")
    regs = -(-int(lim["registers"]) // 8) * 8
    if -(-threads // 32) * 32 * regs > 65536:
        raise EmulationError(f"{where}: {threads} threads x {lim['registers']} registers exceed the 64K "
                             "register file (the GPU refuses the launch: too many resources requested)")
    return lim


class HostBackend:
    """A stand-in for tfm_kernels._backend's backends whose ``launch`` runs the emulated kernel.
    order: "forward" runs each CTA's threads first to last between barriers, "reverse" last to
    first (run a case in both to expose a missing barrier)."""

    name = "host-emulation"
    cc = 90

    def __init__(self, order: str = "forward", libs: dict[str, Path | str] | None = None):
        assert order in ("forward", "reverse")
        self.order = order
        self._paths = dict(libs or {})
        self._dlls: dict[str, ctypes.CDLL] = {}
        self.launched: set[str] = set()
        self.launches: list = []
        # kernel -> [phases touching 0..8 of the 8 16-byte bank groups]: every ldmatrix's 8-row
        # phases (8 = conflict-free; 1 = the 8 rows on one group, an 8-way conflict)
        self.ldmatrix_phases: dict[str, list[int]] = {}

    def _dll(self, source: str) -> ctypes.CDLL:
        if source not in self._dlls:
            if source not in self._paths:
                self._paths.update(build([source]))
            lib = self._paths[source]
            if isinstance(lib, str):
                raise EmulationError(lib)
            dll = ctypes.CDLL(str(lib))
            dll.emu_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p),
                                       ctypes.POINTER(ctypes.c_int), ctypes.c_int]
            dll.emu_launch.restype = ctypes.c_int
            dll.emu_error.restype = ctypes.c_char_p
            dll.emu_ldmatrix_phases.argtypes = [ctypes.POINTER(ctypes.c_longlong)]
            self._dlls[source] = dll
        return self._dlls[source]

    def launch(self, launch) -> None:
        lim = check_launch_limits(launch)
        dll = self._dll(launch.source)
        packed = [_pack(a) for a in launch.args]
        args = (ctypes.c_void_p * max(1, len(packed)))(*[addr for _, addr, _ in packed])
        sizes = (ctypes.c_int * max(1, len(packed)))(*[n for _, _, n in packed])
        regs = int(lim["registers"] or 0) if lim else 0  # setmaxnreg's pool; 0: not checked
        cfg = (ctypes.c_uint * 10)(*launch.grid, *launch.block, int(launch.smem), cluster_size(launch.kernel),
                                   1 if self.order == "reverse" else 0, regs)
        dll.emu_ldmatrix_phases((ctypes.c_longlong * 9)())  # start this launch's count from zero
        rc = dll.emu_launch(launch.kernel.encode(), cfg, args, sizes, len(packed))
        if rc == 1:
            raise EmulationError(f"{launch.kernel} is not exported by csrc/{launch.source}")
        if rc != 0:
            raise EmulationError(f"csrc/{launch.source} {launch.kernel} grid {tuple(launch.grid)} block "
                                 f"{tuple(launch.block)} smem {launch.smem}: {dll.emu_error().decode()}")
        self.launched.add(launch.kernel)
        self.launches.append(launch)
        phases = (ctypes.c_longlong * 9)()
        dll.emu_ldmatrix_phases(phases)
        if any(phases):
            acc = self.ldmatrix_phases.setdefault(launch.kernel, [0] * 9)
            for g in range(9):
                acc[g] += phases[g]
