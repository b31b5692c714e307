"""SASS, the machine code a GPU runs, read without a GPU: find cuobjdump, disassemble a binary into
{kernel: instructions}, and normalize it so two builds can be compared.

Used by the build tests (tensor-core kernels must show HMMA/HGMMA, TMA kernels UTMALDG) and by
scripts/sass_diff.py, which proves a source refactor left the machine code of every kernel as it was
(the way kernels verified on a GPU are changed on a machine without one).

cuobjdump and the nvdisasm it calls come from the CUDA toolkit or from the `nvidia-cuda-cuobjdump`
and `nvidia-cuda-nvdisasm` wheels (the `test` extra installs them: 5 MB, and the CI machine's
toolkit ships neither).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["cuobjdump", "dump_sass", "normalize"]


def _wheel_bin() -> Path | None:
    """The bin/ folder of the nvidia-cuda-cuobjdump wheel (site-packages/nvidia/cu*/bin)."""
    for entry in sys.path:
        for cand in sorted(Path(entry).glob("nvidia/cu*/bin")) if entry else ():
            if (cand / "cuobjdump").is_file():
                return cand
    return None


@functools.lru_cache(maxsize=None)
def cuobjdump() -> tuple[str, dict[str, str]] | None:
    """(path to cuobjdump, environment to run it with) or None when there is none. The wheel's
    cuobjdump finds its nvdisasm through PATH, so that folder is put in front."""
    env = dict(os.environ)
    exe = shutil.which("cuobjdump")
    if exe is None:
        for var in ("CUDA_HOME", "CUDA_PATH"):
            home = os.environ.get(var)
            if home and (Path(home) / "bin" / "cuobjdump").is_file():
                exe = str(Path(home) / "bin" / "cuobjdump")
                break
    if exe is None:
        wheel = _wheel_bin()
        if wheel is None:
            return None
        exe = str(wheel / "cuobjdump")
    folder = str(Path(exe).parent)
    if not (Path(folder) / "nvdisasm").is_file() and shutil.which("nvdisasm") is None:
        wheel = _wheel_bin()  # a toolkit cuobjdump without nvdisasm: borrow the wheel's
        if wheel is None or not (wheel / "nvdisasm").is_file():
            return None
        folder = str(wheel)
    env["PATH"] = folder + os.pathsep + env.get("PATH", "")
    return exe, env


@functools.lru_cache(maxsize=None)
def dump_sass(path: str) -> dict[str, str]:
    """{mangled kernel name: SASS text} of every kernel in a cubin, object file or shared library
    (several ELF images: a name seen in more than one, e.g. sm_80 and sm_90, gets them joined).
    Cached per path: the whole extension takes about 20 s on two cores."""
    found = cuobjdump()
    if found is None:
        raise FileNotFoundError("cuobjdump (with nvdisasm) not found: install the nvidia-cuda-cuobjdump "
                                "and nvidia-cuda-nvdisasm wheels or a full CUDA toolkit")
    exe, env = found
    out = subprocess.run([exe, "--dump-sass", path], capture_output=True, text=True, env=env,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"cuobjdump --dump-sass {path} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    funcs: dict[str, str] = {}
    for chunk in re.split(r"\n\s*Function : ", out.stdout)[1:]:
        name, _, body = chunk.partition("\n")
        # The next ELF image's header ("Fatbin elf code", "code for sm_XX") is not code.
        body = body.split("\nFatbin ")[0]
        funcs[name.strip()] = funcs.get(name.strip(), "") + body
    return funcs


_ADDR = re.compile(r"/\*[0-9a-f]{4,}\*/")          # /*01a0*/ instruction address
_ENC = re.compile(r"/\* 0x[0-9a-f]{16} \*/")        # /* 0x000fe20000000800 */ encoding word


def normalize(sass: str) -> list[str]:
    """The instructions only, one per line, whitespace folded: addresses and encodings dropped
    (the encoding words carry scheduling control bits, which follow the instructions; branch
    targets stay, so a moved block still shows)."""
    lines = []
    for line in sass.splitlines():
        line = _ENC.sub("", _ADDR.sub("", line)).strip()
        if not line or line.startswith((".", "//", "..")):
            continue
        lines.append(" ".join(line.split()))
    return lines
