"""Build script: the pure-Python packages always; the CUDA extension tfm_kernels._ext when nvcc is found.

The extension (csrc/ext/launch.cpp + every csrc/*.cu and csrc/ext/*.cu) is built like this:
  * nvcc is CUDA_HOME/bin/nvcc, CUDA_PATH/bin/nvcc or the first nvcc on PATH; none found -> no
    extension, and `tfm_kernels.info()` says why (the CuPy backend still works).
  * each .cu is compiled on its own, in parallel (TFM_BUILD_JOBS, default: every core), with
      -DTFM_EXT_BUILD -std=c++17 -O3 -lineinfo -ftz=true -Xptxas -v -Xcompiler -fPIC
    (-ftz=true because CuPy adds it to every NVRTC compile: both backends flush fp32 denormals
    the same way) and, per architecture in TFM_CUDA_ARCHS (default "80;90"),
      -gencode arch=compute_XX,code=sm_XX, plus compute_YY PTX for the highest, for JIT on newer GPUs;
    a source whose first lines say `// tfm-arch: sm_90a` (wgmma) gets -gencode arch=compute_90a,code=sm_90a only.
  * the ptxas -v report of every source is kept in build/ptxas/<source>.txt (registers, spills,
    shared memory per kernel): the build artifact tests/test_build.py and reviewers read.
  * objects are reused when the source, the csrc/ headers and the command are unchanged.
  * launch.cpp is compiled by the host compiler with pybind11 and linked with the static CUDA
    runtime, so the module needs only the driver at run time.
  * TFM_BUILD_KEEP_GOING=1 (scripts/gpu_check.sh): a source nvcc rejects is left out and the module
    is built from the others (the command still fails at the end, and tests/test_build.py names the
    missing kernels), so one broken file does not take every kernel's ext backend down with it.
  * a python3 without setuptools can still run `python3 setup.py build_ext --inplace`: the same
    nvcc objects, linked by g++ directly (build_inplace_without_setuptools).

The .cu/.cuh files also ship inside the package (tfm_kernels/csrc/) so the CuPy backend, which
compiles them at run time, works from a non-editable install.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

try:
    from setuptools import Extension, find_packages, setup
    from setuptools.command.build_ext import build_ext
except ImportError:  # a bare python3 (3.12+ does not bundle setuptools): see build_inplace_without_setuptools
    build_ext = None

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
PTXAS_DIR = ROOT / "build" / "ptxas"
ARCH_MARK = re.compile(r"//\s*tfm-arch:\s*(sm_\w+)")


_LOG_LOCK = threading.Lock()


def log(msg: str) -> None:
    with _LOG_LOCK:  # nvcc jobs finish in parallel threads
        sys.stderr.write(f"[tfm-kernels build] {msg}\n")
        sys.stderr.flush()


def find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_root(nvcc: str) -> Path:
    """The toolkit root nvcc itself uses (it may be a wrapper script outside the toolkit)."""
    out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    m = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    if m:
        return Path(m.group(1)).resolve()
    return Path(nvcc).resolve().parent.parent


def gencode_flags(arch_mark: str | None) -> list[str]:
    if arch_mark:  # arch-specific features (sm_90a): that target only, no PTX fallback exists
        num = arch_mark[len("sm_"):]
        return [f"-gencode=arch=compute_{num},code={arch_mark}"]
    archs = [a.strip() for a in os.environ.get("TFM_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    top = max(archs, key=lambda a: int(re.sub(r"\D", "", a)))
    flags.append(f"-gencode=arch=compute_{top},code=compute_{top}")
    return flags


def cu_sources() -> list[Path]:
    return sorted(CSRC.glob("*.cu")) + sorted((CSRC / "ext").glob("*.cu"))


def arch_mark(path: Path) -> str | None:
    for line in path.read_text().splitlines()[:20]:
        m = ARCH_MARK.search(line)
        if m:
            return m.group(1)
    return None


def compile_sources(nvcc: str, obj_dir: Path, keep_going: bool) -> tuple[list[Path], list[str]]:
    """nvcc -c every .cu (in parallel; unchanged ones reused); returns (objects, failed sources).
    With keep_going a source that fails is reported and left out, so the others still load."""
    obj_dir.mkdir(parents=True, exist_ok=True)
    PTXAS_DIR.mkdir(parents=True, exist_ok=True)
    headers = sorted(CSRC.glob("*.cuh"))
    header_stamp = max((h.stat().st_mtime for h in headers), default=0.0)

    def compile_one(src: Path) -> Path | None:
        rel = src.relative_to(CSRC)
        stem = str(rel).replace("/", "__")
        obj = obj_dir / (stem + ".o")
        cmd = [nvcc, "-c", str(src), "-o", str(obj), "-DTFM_EXT_BUILD", "-std=c++17", "-O3",
               "-lineinfo", "-ftz=true", "-Xptxas", "-v", "-Xcompiler", "-fPIC", f"-I{CSRC}",
               *gencode_flags(arch_mark(src))]
        stamp = obj.with_suffix(".cmd")
        key = hashlib.sha1(" ".join(cmd).encode()).hexdigest()
        report = PTXAS_DIR / (stem.replace(".cu", "") + ".txt")
        if (obj.exists() and stamp.exists() and stamp.read_text() == key and report.exists()
                and obj.stat().st_mtime > max(src.stat().st_mtime, header_stamp)):
            return obj
        log(f"nvcc {rel} ({' '.join(gencode_flags(arch_mark(src)))})")
        out = subprocess.run(cmd, capture_output=True, text=True)
        report.write_text(f"# {shlex.join(cmd)}\n" + out.stdout + out.stderr)
        if out.returncode != 0:
            msg = f"nvcc failed on {rel} (exit {out.returncode}):\n{out.stderr[-8000:]}"
            if keep_going:
                log(msg)
                return None
            raise RuntimeError(msg)
        stamp.write_text(key)
        return obj

    srcs = cu_sources()
    jobs = int(os.environ.get("TFM_BUILD_JOBS", "0")) or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        objs = list(pool.map(compile_one, srcs))
    # Stale reports of deleted sources would mislead the build tests.
    names = {str(s.relative_to(CSRC)).replace("/", "__").replace(".cu", "") + ".txt" for s in srcs}
    for old in PTXAS_DIR.glob("*.txt"):
        if old.name not in names:
            old.unlink()
    failed = [str(s.relative_to(CSRC)) for s, o in zip(srcs, objs) if o is None]
    return [o for o in objs if o is not None], failed


def link_settings(nvcc: str) -> dict:
    """Include/library settings and the arch list baked into the module (tfm_kernels.info())."""
    root = cuda_root(nvcc)
    archs = sorted({g for s in cu_sources() for g in gencode_flags(arch_mark(s))} or set(gencode_flags(None)))
    libdirs = [str(p) for p in (root / "lib64", root / "targets" / "x86_64-linux" / "lib",
                                root / "targets" / "sbsa-linux" / "lib") if p.is_dir()]
    return {"include_dirs": [str(root / "include"), str(CSRC)], "library_dirs": libdirs,
            "libraries": ["cudart_static", "rt", "dl", "pthread"],
            "define_macros": [("TFM_BUILD_ARCHS", '"' + " ".join(archs) + '"')]}


KEEP_GOING = bool(os.environ.get("TFM_BUILD_KEEP_GOING"))


if build_ext is not None:
    class BuildExt(build_ext):
        """Compiles the .cu files with nvcc (in parallel), then lets setuptools build and link the
        pybind11 module with those objects. TFM_BUILD_KEEP_GOING=1 (scripts/gpu_check.sh): a source
        that fails to compile is left out, the module is built from the rest, and the command still
        exits non-zero at the end."""

        def build_extensions(self):
            objs, self.failed = compile_sources(self.nvcc, Path(self.build_temp).resolve() / "cu", KEEP_GOING)
            settings = link_settings(self.nvcc)
            for ext in self.extensions:
                ext.extra_objects = [str(o) for o in objs]
                # setuptools relinks only when a file in sources + depends is newer than the module:
                # without the objects here, an edited .cu was recompiled and the stale .so kept.
                ext.depends = [*ext.depends, *(str(o) for o in objs)]
                for k, v in settings.items():
                    getattr(ext, k).extend(v)
            super().build_extensions()

        def run(self):
            self.nvcc = find_nvcc()
            self.failed = []
            if self.nvcc is None:
                log("nvcc not found (CUDA_HOME, CUDA_PATH, PATH): building without tfm_kernels._ext; "
                    "the CuPy backend compiles the kernels at run time instead")
                self.extensions = []
                return
            super().run()
            if self.failed:
                raise SystemExit(f"tfm_kernels._ext was built WITHOUT {self.failed}: nvcc failed on them (above)")


def build_inplace_without_setuptools() -> int:
    """`python3 setup.py build_ext --inplace` on a machine whose python3 lacks setuptools (3.12
    no longer bundles it): the same nvcc objects, linked by the host compiler directly."""
    import sysconfig

    import pybind11

    nvcc = find_nvcc()
    if nvcc is None:
        log("nvcc not found: nothing to build")
        return 0
    objs, failed = compile_sources(nvcc, ROOT / "build" / "temp-manual" / "cu", KEEP_GOING)
    st = link_settings(nvcc)
    target = ROOT / "tfm_kernels" / ("_ext" + sysconfig.get_config_var("EXT_SUFFIX"))
    cxx = os.environ.get("CXX", "g++")
    cmd = [cxx, "-O2", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden",
           f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
           *[f"-I{d}" for d in st["include_dirs"]],
           *[f"-D{k}={v}" for k, v in st["define_macros"]],
           str(CSRC / "ext" / "launch.cpp"), *map(str, objs),
           *[f"-L{d}" for d in st["library_dirs"]], *[f"-l{lib}" for lib in st["libraries"]],
           "-o", str(target)]
    log(shlex.join(cmd))
    rc = subprocess.run(cmd).returncode
    if rc == 0 and failed:
        log(f"built WITHOUT {failed}: nvcc failed on them (above)")
        return 1
    return rc


def extensions() -> list[Extension]:
    if os.environ.get("TFM_SKIP_EXT"):  # `make setup`: the Makefile's `ext` step builds it in place
        log("TFM_SKIP_EXT is set: installing without tfm_kernels._ext")
        return []
    try:
        import pybind11
    except ImportError:
        log("pybind11 is not installed: building without tfm_kernels._ext")
        return []
    return [Extension(
        "tfm_kernels._ext",
        sources=["csrc/ext/launch.cpp"],
        include_dirs=[pybind11.get_include()],
        extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden"],
        language="c++",
    )]


if build_ext is None:
    if sys.argv[1:] and sys.argv[1] == "build_ext" and "--inplace" in sys.argv:
        sys.exit(build_inplace_without_setuptools())
    sys.exit("setuptools is not installed: only `python3 setup.py build_ext --inplace` works without it")

setup(
    packages=find_packages(include=["numpy_ref", "numpy_ref.*", "tfm_kernels", "tfm_kernels.*"])
    + ["tfm_kernels.csrc", "tfm_kernels.csrc.ext"],
    package_dir={"tfm_kernels.csrc": "csrc"},
    package_data={"tfm_kernels.csrc": ["*.cu", "*.cuh"], "tfm_kernels.csrc.ext": ["*.cu", "*.cpp"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt},
)
