"""The two launch paths for one kernel source: the pybind11 extension ("ext") and CuPy ("cupy").

A variant describes a launch once (``_registry.Launch``: source file, exported name expression,
grid, block, arguments, dynamic shared memory) and hands it to ``be.launch``. The two backends then
do the same thing by different routes, on CuPy's current device and stream:

* ``cupy``: the source text, prefixed with ``#line 1 "<absolute path>"`` so NVRTC's errors point
  at the real file, is compiled once per process per (source, arch options) by
  ``cupy.RawModule(code=..., options=nvrtc_options(...), name_expressions=<every TFM_EXPORT name>)``
  and each kernel is fetched with ``get_function(name_expression)``.
* ``ext``: ``tfm_kernels._ext.launch(name, grid, block, smem, stream, argbuffer, offsets)`` looks
  the kernel's host stub up in the table ``TFM_EXPORT`` filled when the extension was loaded
  (csrc/common.cuh), then calls cudaFuncSetAttribute (smem > 48 KiB), cudaLaunchKernel and
  cudaGetLastError, raising RuntimeError with the CUDA error string.

Arguments are checked and converted here, once, for both: CuPy arrays become device pointers;
NumPy scalars (int32, uint32, int64, uint64, float32, float64) go by value at their natural
alignment; ``bytes`` (a 128-byte CUtensorMap) go by value at 64-byte alignment. The extension gets
them packed into one buffer with their offsets; CuPy gets the scalars as they are and each
``bytes`` as a size-one NumPy ``void`` array, which CuPy passes by value
(``cupy/cuda/function.pyx``: ``CNumpyArray``, "numpy.ndarrays of size one can be passed by
value"); the driver copies it into the parameter slot at the kernel's own (64-byte) offset.

Sources whose first lines say ``// tfm-arch: sm_90a`` use Hopper-only instructions (wgmma,
setmaxnreg). NVRTC compiles them with ``-arch=sm_90a`` in our options; CuPy appends its own
``-arch=sm_<device cc>`` after ours, and NVRTC keeps the arch-specific target when both name the
same SM (tests/test_build.py checks it with exactly CuPy's option list; it held with NVRTC 13.0 on
the H200 in GPU run 1 and with 13.5 here). nvcc builds those
sources for ``sm_90a`` only (setup.py).

CuPy also adds ``-ftz=true`` to every NVRTC compile (cupy/cuda/compiler.py); setup.py passes
``-ftz=true`` to nvcc too, so the two backends run the same machine code up to register allocation.

Nothing here touches the GPU at import; ``status()`` probes once and caches the answer.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ._registry import Launch

BACKENDS = ("ext", "cupy")

# Above 48 KiB of dynamic shared memory a kernel must opt in (cudaFuncAttributeMaxDynamicSharedMemorySize).
_SMEM_DEFAULT_LIMIT = 48 * 1024
_ARCH_MARK = re.compile(r"//\s*tfm-arch:\s*(sm_\w+)")
_EXPORT = re.compile(r"^\s*TFM_EXPORT\((.*)\)\s*;?\s*(//.*)?$")


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

@functools.cache
def csrc_dir() -> Path:
    """Where the kernel sources are: the copy installed inside the package (non-editable install),
    else the repository's csrc/ (editable install, or running from a checkout)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "csrc", here.parent / "csrc"):
        if (cand / "common.cuh").is_file():
            return cand
    raise RuntimeError(f"kernel sources not found: neither {here / 'csrc'} nor {here.parent / 'csrc'} "
                       "holds common.cuh (a broken install?)")


def sources() -> list[str]:
    """Every kernel source file name under csrc/ (``["matmul.cu", "softmax.cu", ...]``)."""
    return sorted(p.name for p in csrc_dir().glob("*.cu"))


@functools.cache
def _source_text(source: str) -> str:
    path = csrc_dir() / source
    if not path.is_file():
        raise ValueError(f"source: no kernel source {source!r} in {csrc_dir()}")
    return path.read_text()


def parse_exports(text: str) -> list[str]:
    """The name expressions of the ``TFM_EXPORT(...)`` lines of a source, whitespace runs collapsed
    to one space exactly as the preprocessor's ``#`` operator does (common.cuh)."""
    names = []
    for line in text.splitlines():
        m = _EXPORT.match(line)
        if m:
            names.append(" ".join(m.group(1).split()))
    return names


def exports(source: str) -> list[str]:
    """The exported name expressions of ``csrc/<source>``."""
    return parse_exports(_source_text(source))


def source_arch(text: str) -> str | None:
    """``"sm_90a"`` when the source's first 20 lines carry ``// tfm-arch: sm_90a``, else None."""
    for line in text.splitlines()[:20]:
        m = _ARCH_MARK.search(line)
        if m:
            return m.group(1)
    return None


def nvrtc_options(source: str) -> tuple[str, ...]:
    """The options this package passes to ``cupy.RawModule`` for ``csrc/<source>``. CuPy adds its
    own include paths, ``-ftz=true``, ``-arch=sm_<cc>`` and ``--device-as-default-execution-space``
    (tests/test_build.py compiles with the complete list)."""
    opts = [f"-I{csrc_dir()}", "-std=c++17", "-lineinfo"]
    arch = source_arch(_source_text(source))
    if arch:
        opts.append(f"-arch={arch}")
    return tuple(opts)


def cupy_nvrtc_options(source: str, cc: int) -> tuple[str, ...]:
    """The complete NVRTC option list ``RawModule(code, options=nvrtc_options(source))`` ends up
    compiling with for a device of compute capability ``cc``: ours, CuPy's include paths
    (``cupy._core.core.assemble_cupy_compiler_options``) and what ``cupy/cuda/compiler.py`` appends.
    Without CuPy, the toolkit's include folder found the way CuPy finds it. Used by the build tests
    and by ``tfm-kernels sass`` to compile exactly what the CuPy backend runs, with no GPU."""
    ours = nvrtc_options(source)
    try:
        from cupy._core.core import assemble_cupy_compiler_options

        full = tuple(assemble_cupy_compiler_options(ours))
    except Exception:  # CuPy absent or broken: its include paths, found the way it finds them
        inc = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        full = ours + (f"-I{inc}/include",)
    return full + ("-ftz=true", f"-arch=sm_{cc}", "--device-as-default-execution-space")


def nvrtc_code(source: str) -> str:
    """The text NVRTC compiles: the file, with a ``#line`` directive so errors name the real file."""
    path = (csrc_dir() / source).resolve()
    return f'#line 1 "{path}"\n' + _source_text(source)


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------

def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()


@functools.cache
def status() -> dict[str, tuple[bool, str]]:
    """``{"device": (ok, reason), "ext": (ok, reason), "cupy": (ok, reason)}``; never raises.

    device: a CUDA device is usable (CUDA's error string when not). ext: the pybind11 extension
    imported (why not, when it did not). cupy: CuPy imported and NVRTC loads.
    """
    out: dict[str, tuple[bool, str]] = {}
    cupy = None
    try:
        import cupy  # noqa: F401

        try:
            v = cupy.cuda.nvrtc.getVersion()
            out["cupy"] = (True, f"CuPy {cupy.__version__}, NVRTC {v[0]}.{v[1]}")
        except Exception as e:
            out["cupy"] = (False, f"CuPy {cupy.__version__} imported but NVRTC did not load: {_err(e)}")
    except Exception as e:
        out["cupy"] = (False, f"CuPy is not importable ({_err(e)}); pip install cupy-cuda13x")

    try:
        from . import _ext

        out["ext"] = (True, f"{Path(_ext.__file__).name}, {len(_ext.kernels())} kernels")
    except Exception as e:
        out["ext"] = (False, f"tfm_kernels._ext is not built or does not load ({_err(e)}); it is built "
                             "by `pip install -e .` or `python setup.py build_ext --inplace` when nvcc "
                             "is found (CUDA_HOME or PATH)")

    if cupy is not None:
        try:
            n = cupy.cuda.runtime.getDeviceCount()
            if n < 1:
                out["device"] = (False, "the CUDA runtime reports 0 devices")
            else:
                dev = cupy.cuda.Device()
                props = cupy.cuda.runtime.getDeviceProperties(dev.id)
                name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
                # A context is what a launch needs; creating it here turns a broken driver into a
                # reason now rather than an error inside the first kernel call.
                cupy.cuda.runtime.free(0)
                out["device"] = (True, f"device {dev.id}: {name}, sm_{dev.compute_capability}")
        except Exception as e:
            out["device"] = (False, _err(e))
    elif out["ext"][0]:
        from . import _ext

        n, why = _ext.device_count()
        out["device"] = (n > 0, f"{n} devices" if n > 0 else why)
    else:
        out["device"] = (False, "neither CuPy nor the extension is available to reach a GPU")
    return out


# ---------------------------------------------------------------------------------------------
# Arguments: checked and packed once, for both backends
# ---------------------------------------------------------------------------------------------

# NumPy scalar type -> (struct format, alignment); the kernel parameter must have exactly this type.
_SCALARS = {
    np.int32: ("<i", 4), np.uint32: ("<I", 4), np.float32: ("<f", 4),
    np.int64: ("<q", 8), np.uint64: ("<Q", 8), np.float64: ("<d", 8),
}
_BYVALUE_ALIGN = 64  # CUtensorMap is declared alignas(64)



def unavailable(backend: str | None = None) -> str | None:
    """Why kernels cannot run here, on ``backend`` or (None) on any backend; None when they can.
    The one skip reason every GPU test and benchmark prints."""
    st = status()
    ok, why = st["device"]
    if not ok:
        return f"no usable CUDA device: {why}"
    if backend is not None:
        ok, why = st[backend]
        if not ok:
            return f"backend {backend!r} unavailable: {why}"
    return None

def context_lost() -> str | None:
    """The CUDA error that has made this process's context unusable, or None while it works.

    A kernel fault (an illegal address, a misaligned access, a ``trap`` such as the mbarrier
    watchdog's in mma.cuh) is "sticky": every later CUDA call in the process fails with the same
    error, whatever the kernel it launches. So after one failure, whatever runs many variants in
    one process (``tfm-kernels check``, the GPU tests under conftest.py) asks this before blaming
    the next variant: a string means stop launching here and rerun the rest in a fresh process.
    Both backends share the device's primary context, so one probe answers for both. A refused
    launch (bad configuration, too much shared memory) is not sticky and leaves this None."""
    if not status()["device"][0]:
        return None
    import cupy

    try:
        cupy.cuda.runtime.deviceSynchronize()  # returns the sticky error of any earlier fault
        cupy.cuda.runtime.free(cupy.cuda.runtime.malloc(256))
    except Exception as e:
        return _err(e)
    return None


def _check_launch(launch: Launch) -> None:
    where = f"launch {launch.source}:{launch.kernel}"
    for what, dims in (("grid", launch.grid), ("block", launch.block)):
        if len(dims) != 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in dims):
            raise ValueError(f"{where}: {what} must be three positive ints, got {dims}")
    gx, gy, gz = (int(d) for d in launch.grid)
    if gx > 2**31 - 1 or gy > 65535 or gz > 65535:
        raise ValueError(f"{where}: grid {launch.grid} exceeds (2**31-1, 65535, 65535)")
    bx, by, bz = (int(d) for d in launch.block)
    if bx * by * bz > 1024 or bz > 64:
        raise ValueError(f"{where}: block {launch.block} exceeds 1024 threads (or z > 64)")
    if not isinstance(launch.smem, (int, np.integer)) or launch.smem < 0:
        raise ValueError(f"{where}: smem must be a non-negative int, got {launch.smem!r}")


def _arg_error(launch: Launch, i: int, a: Any) -> TypeError:
    return TypeError(f"launch {launch.source}:{launch.kernel}: argument {i} is a {type(a).__name__}; "
                     "pass a CuPy array, a NumPy scalar (int32, uint32, int64, uint64, float32, "
                     "float64) of the parameter's exact type, or bytes for a by-value struct")


def _pack(launch: Launch, cupy) -> tuple[bytes, list[int]]:
    """The extension's argument buffer: each parameter at its alignment, and the offsets."""
    buf = bytearray()
    offsets = []
    for i, a in enumerate(launch.args):
        if isinstance(a, cupy.ndarray):
            fmt, align, val = "<Q", 8, a.data.ptr
        elif type(a) in _SCALARS:
            (fmt, align), val = _SCALARS[type(a)], a.item()
        elif isinstance(a, (bytes, bytearray)):
            fmt, align, val = None, _BYVALUE_ALIGN, bytes(a)
        else:
            raise _arg_error(launch, i, a)
        buf.extend(b"\0" * (-len(buf) % align))
        offsets.append(len(buf))
        buf.extend(val if fmt is None else struct.pack(fmt, val))
    return bytes(buf), offsets


def _cupy_args(launch: Launch, cupy) -> tuple:
    out = []
    for i, a in enumerate(launch.args):
        if isinstance(a, cupy.ndarray) or type(a) in _SCALARS:
            out.append(a)
        elif isinstance(a, (bytes, bytearray)):
            # Size-one ndarray: CuPy passes its bytes by value (see the module docstring).
            out.append(np.frombuffer(bytes(a), dtype=np.dtype((np.void, len(a)))))
        else:
            raise _arg_error(launch, i, a)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------

class Backend:
    """One launch path. ``name``: ``"ext"`` or ``"cupy"``; ``cc``: the current device's compute
    capability as major*10+minor (90 on an H100/H200); ``launch(Launch)``: issue one kernel on
    CuPy's current stream."""

    name: str

    def __init__(self) -> None:
        import cupy

        self._cupy = cupy

    @property
    def cc(self) -> int:
        return int(self._cupy.cuda.Device().compute_capability)

    def _check_arch(self, launch: Launch) -> None:
        arch = source_arch(_source_text(launch.source))
        if arch is not None and f"sm_{self.cc}" != arch.rstrip("a"):
            raise RuntimeError(f"launch {launch.source}:{launch.kernel}: the source is built for "
                               f"{arch} only; this device is sm_{self.cc}")

    def launch(self, launch: Launch) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<tfm_kernels backend {self.name!r}>"


class CupyBackend(Backend):
    """The same source compiled by NVRTC through ``cupy.RawModule``."""

    name = "cupy"

    def __init__(self) -> None:
        super().__init__()
        self._modules: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._kernels: dict[tuple[int, str, str], Any] = {}
        self._smem_set: dict[tuple[int, str, str], int] = {}
        self._lock = threading.Lock()

    def module(self, source: str):
        """The ``RawModule`` for ``csrc/<source>``, created once per process (NVRTC runs at the
        first ``get_function``; CuPy also caches the cubin on disk under ~/.cupy/kernel_cache)."""
        opts = nvrtc_options(source)
        key = (source, opts)
        with self._lock:
            mod = self._modules.get(key)
            if mod is None:
                names = exports(source)
                if not names:
                    raise ValueError(f"source: {source} exports no kernels (no TFM_EXPORT lines)")
                mod = self._cupy.RawModule(code=nvrtc_code(source), options=opts,
                                           name_expressions=names)
                self._modules[key] = mod
        return mod

    def kernel(self, source: str, name: str):
        dev = self._cupy.cuda.Device().id
        key = (dev, source, name)
        k = self._kernels.get(key)
        if k is None:
            if name not in exports(source):
                raise ValueError(f"kernel: {name!r} is not exported by {source} "
                                 f"(its TFM_EXPORT names: {exports(source)})")
            k = self.module(source).get_function(name)
            self._kernels[key] = k
        return k

    def launch(self, launch: Launch) -> None:
        _check_launch(launch)
        self._check_arch(launch)
        args = _cupy_args(launch, self._cupy)
        k = self.kernel(launch.source, launch.kernel)
        smem = int(launch.smem)
        if smem > _SMEM_DEFAULT_LIMIT:
            key = (self._cupy.cuda.Device().id, launch.source, launch.kernel)
            if self._smem_set.get(key, 0) < smem:
                k.max_dynamic_shared_size_bytes = smem
                self._smem_set[key] = smem
        k(tuple(int(d) for d in launch.grid), tuple(int(d) for d in launch.block), args,
          shared_mem=smem)


class ExtBackend(Backend):
    """The pybind11 extension built by nvcc from the same sources."""

    name = "ext"

    def __init__(self) -> None:
        super().__init__()
        from . import _ext

        self._ext = _ext
        self._names = frozenset(_ext.kernels())

    def launch(self, launch: Launch) -> None:
        _check_launch(launch)
        self._check_arch(launch)
        if launch.kernel not in self._names:
            raise ValueError(f"kernel: {launch.kernel!r} is not in the extension's kernel table "
                             f"(exported by {launch.source}? rebuild with `python setup.py build_ext "
                             f"--inplace`)")
        buf, offsets = _pack(launch, self._cupy)
        cp = self._cupy
        self._ext.launch(launch.kernel, tuple(int(d) for d in launch.grid),
                         tuple(int(d) for d in launch.block), int(launch.smem),
                         cp.cuda.get_current_stream().ptr, buf, offsets, cp.cuda.Device().id)


_BACKENDS: dict[str, Backend] = {}
_CLASSES = {"ext": ExtBackend, "cupy": CupyBackend}


def get(name: str | None = None) -> Backend:
    """The backend object: ``"ext"``, ``"cupy"``, or None for the extension when it loaded, else
    CuPy. ValueError for an unknown name; RuntimeError when no CUDA device is usable or the backend
    did not load, with the reason."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))} or None, got {name!r}")
    st = status()
    ok, why = st["device"]
    if not ok:
        raise RuntimeError(f"no CUDA device is usable: {why}")
    if not st["cupy"][0]:
        raise RuntimeError(f"CuPy is required by both backends (arrays, streams): {st['cupy'][1]}")
    if name is None:
        name = "ext" if st["ext"][0] else "cupy"
    ok, why = st[name]
    if not ok:
        raise RuntimeError(f"backend {name!r} is unavailable: {why}")
    be = _BACKENDS.get(name)
    if be is None:
        be = _BACKENDS[name] = _CLASSES[name]()
    return be


def available() -> list[str]:
    """The backends usable now (both need a device)."""
    st = status()
    if not st["device"][0]:
        return []
    return [b for b in BACKENDS if st[b][0] and st["cupy"][0]]


# ---------------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------------

def _fmt_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def info() -> dict[str, Any]:
    """Device name, compute capability, SM count, memory, CUDA runtime and driver versions, and
    which backends loaded (or why not). Never raises."""
    st = status()
    d: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "csrc": str(_safe(csrc_dir)),
        "backends": {k: {"ok": st[k][0], "detail": st[k][1]} for k in BACKENDS},
        "device": {"ok": st["device"][0], "detail": st["device"][1]},
    }
    try:
        import cupy

        d["cupy"] = cupy.__version__
        rt = cupy.cuda.runtime
        d["cuda_runtime"] = _fmt_version(_safe(rt.runtimeGetVersion, 0))
        d["cuda_driver"] = _fmt_version(_safe(rt.driverGetVersion, 0))
        v = _safe(cupy.cuda.nvrtc.getVersion)
        d["nvrtc"] = f"{v[0]}.{v[1]}" if v else "none"
        if st["device"][0]:
            dev = cupy.cuda.Device()
            p = rt.getDeviceProperties(dev.id)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            free, total = rt.memGetInfo()
            d["device"].update({
                "id": dev.id, "name": name, "compute_capability": int(dev.compute_capability),
                "sm_count": int(p["multiProcessorCount"]),
                "memory_gib": round(total / 2**30, 1), "memory_free_gib": round(free / 2**30, 1),
                "l2_mib": round(p["l2CacheSize"] / 2**20, 1),
                "smem_per_block_optin_kib": p.get("sharedMemPerBlockOptin", 0) // 1024,
                "clock_mhz": p.get("clockRate", 0) // 1000,
            })
    except Exception as e:
        d["cupy"] = f"not importable: {_err(e)}"
    if st["ext"][0]:
        from . import _ext

        d["ext"] = {"file": _ext.__file__, "kernels": len(_ext.kernels()),
                    "built_with_cuda": _fmt_version(_ext.built_cuda_version()),
                    "archs": _ext.build_archs()}
    try:
        import torch

        d["torch"] = torch.__version__
    except Exception:
        d["torch"] = None
    return d


def _safe(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_info(args: argparse.Namespace) -> int:
    d = info()
    if getattr(args, "json", False):
        print(json.dumps(d, indent=2))
        return 0
    dev = d["device"]
    if dev["ok"] and "name" in dev:
        print(f"device        {dev['name']} (sm_{dev['compute_capability']}, {dev['sm_count']} SMs, "
              f"{dev['memory_gib']} GiB, L2 {dev['l2_mib']} MiB)")
    else:
        print(f"device        none usable: {dev['detail']}")
    print(f"CUDA          runtime {d.get('cuda_runtime', '?')}, driver {d.get('cuda_driver', '?')}, "
          f"NVRTC {d.get('nvrtc', '?')}")
    print(f"CuPy          {d.get('cupy')}")
    print(f"torch         {d.get('torch')}")
    for k in BACKENDS:
        b = d["backends"][k]
        print(f"backend {k:<5} {'loaded' if b['ok'] else 'unavailable'}: {b['detail']}")
    if "ext" in d:
        print(f"extension     built with CUDA {d['ext']['built_with_cuda']} for {d['ext']['archs']}")
    print(f"sources       {d['csrc']}")
    return 0

