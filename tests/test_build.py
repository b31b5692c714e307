"""Build tests: the GPU code compiles, on a machine with no GPU.

* Every kernel source (csrc/*.cu, csrc/ext/*.cu) compiles through NVRTC for sm_90 (sm_90a where the
  source says ``// tfm-arch: sm_90a``) with exactly the option list the CuPy backend ends up
  passing: ours (``_backend.nvrtc_options``), CuPy's include paths
  (``cupy._core.core.assemble_cupy_compiler_options``) and what ``cupy/cuda/compiler.py`` appends
  (``-ftz=true``, ``-arch=sm_90``, ``--device-as-default-execution-space``), plus ``-Xptxas -v``
  for the register report. Every TFM_EXPORT name expression is registered and must lower to a
  mangled name, as ``RawModule(name_expressions=...)`` requires.
* Every registered variant's ``kernels`` exist among its source's exports.
* The extension was built by nvcc (when nvcc exists) and its kernel table holds every exported
  name of every source, each once.
* No kernel of a ``hot`` variant spills registers (ptxas: 0 bytes spill stores and loads).

``cuda.bindings.nvrtc`` needs neither a GPU nor a driver; the sources compile in parallel threads
(NVRTC releases the GIL) once per session.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tfm_kernels import _backend, _sass
from tfm_kernels import _registry

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (NVRTC) is not installed")

CC = 90
SOURCES = _backend.sources() + sorted(
    f"ext/{p.name}" for p in (_backend.csrc_dir() / "ext").glob("*.cu"))


def cupy_options(source: str, cc: int = CC) -> tuple[str, ...]:
    """The complete NVRTC option list of ``RawModule(code, options=nvrtc_options(source))``."""
    return _backend.cupy_nvrtc_options(source, cc)


@dataclass
class Compiled:
    source: str
    ok: bool
    log: str
    ptx: str = ""
    lowered: dict[str, str | None] = field(default_factory=dict)

    def spills(self) -> dict[str, tuple[int, int, int]]:
        """mangled name -> (spill store bytes, spill load bytes, registers) from ptxas -v."""
        return {k: (r["spill_stores"], r["spill_loads"], r["registers"])
                for k, r in _sass.parse_ptxas(self.log).items()}


def _check(res, what: str):
    err = res[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what}: {err}")
    return res[1] if len(res) > 1 else None


def compile_source(source: str, cc: int = CC, extra: tuple[str, ...] = ("--ptxas-options=-v",)) -> Compiled:
    code = _backend.nvrtc_code(source).encode()
    prog = _check(nvrtc.nvrtcCreateProgram(code, source.encode(), 0, [], []), "create")
    try:
        names = _backend.exports(source)
        for n in names:
            _check(nvrtc.nvrtcAddNameExpression(prog, n.encode()), f"name expression {n}")
        opts = [o.encode() for o in cupy_options(source, cc) + extra]
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        log = log.decode(errors="replace").rstrip("\x00 ")
        ok = res[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
        c = Compiled(source, ok, log)
        if ok:
            size = _check(nvrtc.nvrtcGetPTXSize(prog), "ptx size")
            ptx = b" " * size
            nvrtc.nvrtcGetPTX(prog, ptx)
            c.ptx = ptx.decode(errors="replace")
            for n in names:
                r = nvrtc.nvrtcGetLoweredName(prog, n.encode())
                c.lowered[n] = r[1].decode() if r[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS else None
        return c
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.fixture(scope="session")
def compiled() -> dict[str, Compiled]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(SOURCES, pool.map(compile_source, SOURCES)))


def test_sources_found():
    assert "ext/plumbing_test.cu" in SOURCES
    assert (_backend.csrc_dir() / "common.cuh").is_file()


@pytest.mark.parametrize("source", SOURCES)
def test_nvrtc_compiles_with_cupy_options(compiled, source):
    c = compiled[source]
    assert c.ok, f"NVRTC failed on {source} with {' '.join(cupy_options(source))}:\n{c.log}"
    arch = _backend.source_arch(_backend._source_text(source))
    target = re.search(r"^\.target\s+(\S+)", c.ptx, re.M)
    assert target and target.group(1) == (arch or f"sm_{CC}"), f"{source}: PTX target {target and target.group(1)}"


@pytest.mark.parametrize("source", SOURCES)
def test_every_export_lowers(compiled, source):
    c = compiled[source]
    if not c.ok:
        pytest.fail(f"{source} did not compile (see test_nvrtc_compiles_with_cupy_options)")
    names = _backend.exports(source)
    assert names, f"{source} exports no kernel (no TFM_EXPORT line)"
    assert len(set(names)) == len(names), f"{source} exports a name twice"
    missing = [n for n, low in c.lowered.items() if not low]
    assert not missing, f"{source}: NVRTC could not lower {missing}"
    # each lowered name is a kernel entry in the PTX: what RawModule.get_function will look up
    absent = [n for n, low in c.lowered.items() if f".entry {low}(" not in c.ptx]
    assert not absent, f"{source}: no PTX entry for {absent}"


def test_sm90a_survives_cupys_arch_option():
    """CuPy appends -arch=sm_<cc> after our -arch=sm_90a; NVRTC must keep the arch-specific target
    (wgmma needs it), with this machine's NVRTC. The #error fires if sm_90a features are off."""
    src = (b"#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)\n#error no sm_90a\n#endif\n"
           b"extern \"C\" __global__ void k(float* x) { x[0] = 1.f; }\n")
    prog = _check(nvrtc.nvrtcCreateProgram(src, b"arch.cu", 0, [], []), "create")
    try:
        opts = [b"-std=c++17", b"-arch=sm_90a", b"-ftz=true", b"-arch=sm_90", b"--device-as-default-execution-space"]
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert res[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def test_parse_exports_matches_stringification():
    text = ("// TFM_EXPORT(commented<out>)\n"
            "TFM_EXPORT(k<float,  8>)\n"
            "   TFM_EXPORT( k2<__half, 4, true> );\n"
            "#define TFM_EXPORT(...)\n"
            "TFM_EXPORT(plain)  // trailing comment\n")
    assert _backend.parse_exports(text) == ["k<float, 8>", "k2<__half, 4, true>", "plain"]


def _all_variants():
    return [v for op in _registry.ops() for v in _registry.variants(op)]


def test_variant_kernels_are_exported():
    problems = []
    for v in _all_variants():
        for source, name in v.kernels:
            if source not in SOURCES:
                problems.append(f"{v.qualname}: no source {source}")
            elif name not in _backend.exports(source):
                problems.append(f"{v.qualname}: {name!r} is not exported by {source}")
    assert not problems, "\n".join(problems)


def _hot_kernels():
    return sorted({(s, n, v.qualname) for v in _all_variants() if v.hot for s, n in v.kernels})


@pytest.mark.parametrize("source,name,variant", _hot_kernels() or [pytest.param(None, None, None, marks=pytest.mark.skip(
    reason="no variant is marked hot yet"))])
def test_hot_kernels_do_not_spill(compiled, source, name, variant):
    c = compiled[source]
    assert c.ok, f"{source} did not compile"
    low = c.lowered.get(name)
    assert low, f"{variant}: {name} has no lowered name"
    report = c.spills()
    assert low in report, f"{variant}: no ptxas -v entry for {name} ({low}) in:\n{c.log[:2000]}"
    st, ld, regs = report[low]
    assert st == 0 and ld == 0, f"{variant}: {name} spills {st} bytes stored / {ld} loaded ({regs} registers)"


def _nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _ext_or_skip():
    try:
        from tfm_kernels import _ext
    except ImportError as e:
        if _nvcc() is None:
            pytest.skip(f"no nvcc, so no extension to check: {e}")
        pytest.fail(f"nvcc is here but tfm_kernels._ext does not import ({e}); build it with "
                    "`python setup.py build_ext --inplace` (make test does)")
    return _ext


def test_extension_holds_every_export():
    ext = _ext_or_skip()
    table = set(ext.kernels())
    missing = [(s, n) for s in SOURCES for n in _backend.exports(s) if n not in table]
    assert not missing, f"the extension lacks {missing[:10]} (stale build? rebuild it)"
    assert not ext.duplicates(), f"exported by more than one source: {ext.duplicates()}"


def test_extension_not_older_than_its_objects():
    """The module was linked after its newest nvcc object: setup.py lists the objects as the
    extension's depends, so editing a .cu relinks it (setuptools compared launch.cpp alone and kept
    a stale .so, whose kernels then were not the sources' ones)."""
    ext = _ext_or_skip()
    built = Path(ext.__file__).stat().st_mtime
    objs = [o for o in (Path(__file__).resolve().parents[1] / "build").glob(f"temp.*-{sys.implementation.cache_tag}/cu/*.o")]
    if not objs:
        pytest.skip("no setuptools build objects here (built elsewhere, or without setuptools)")
    newer = [o.name for o in objs if o.stat().st_mtime > built + 1]
    assert not newer, f"{ext.__file__} is older than {newer}: relink with python setup.py build_ext --inplace"


def test_ptxas_reports_kept():
    """setup.py keeps one ptxas -v report per source in build/ptxas/ (the build artifact)."""
    _ext_or_skip()
    reports = Path(__file__).resolve().parents[1] / "build" / "ptxas"
    if not reports.is_dir():
        pytest.skip("no build/ptxas here (the extension was built elsewhere, e.g. from an sdist)")
    for s in SOURCES:
        r = reports / (s.replace("/", "__").replace(".cu", "") + ".txt")
        assert r.is_file(), f"no ptxas report for {s} at {r}"
        assert "spill stores" in r.read_text(), f"{r} has no ptxas -v output"
