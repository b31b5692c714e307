#!/usr/bin/env python3
"""Does a source change alter the machine code? Compiles csrc/ sources at a base revision and in the
working tree with the extension build's exact nvcc command (and, with --nvrtc, as the CuPy backend
compiles them), disassembles both, and compares every kernel's SASS.

    python scripts/sass_diff.py                      # every csrc/*.cu, working tree vs HEAD
    python scripts/sass_diff.py --base 4a9683c csrc/softmax.cu csrc/attention_tc.cu

Why: a kernel seen passing on a GPU can be refactored on a machine without one (a helper pulled
out, a repeated block made a function) and still count as verified when its SASS is unchanged.
Per kernel it prints
    identical   the same bytes (instructions and scheduling control words)
    same-insts  the same instruction stream, other control words (stall counts, barriers)
    differs     with the instruction counts and the first lines of a diff
    added / removed
and exits 1 when any kernel differs, is added or removed (0 when all are identical or same-insts).

The nvcc command is the one recorded at the top of build/ptxas/<source>.txt by the last extension
build (`make ext`), so both sides compile with the flags the extension uses; the base side gets the
same command with its own csrc/ (extracted with `git archive`) as source and include folder.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfm_kernels import _sass  # noqa: E402


def recorded_command(src: Path) -> list[str]:
    """The nvcc command of the last extension build of this source (build/ptxas/<stem>.txt)."""
    rel = src.relative_to(ROOT / "csrc")
    report = ROOT / "build" / "ptxas" / (str(rel).replace("/", "__").replace(".cu", "") + ".txt")
    if not report.is_file():
        sys.exit(f"{report} is missing: build the extension first (make ext)")
    first = report.read_text().splitlines()[0]
    if not first.startswith("# "):
        sys.exit(f"{report}: no recorded command on its first line")
    return shlex.split(first[2:])


def cubin(cmd: list[str], src: Path, csrc: Path, out: Path) -> Path:
    """Recompile `src` to a cubin with the recorded command (tfm_kernels._sass.cubin_command)."""
    done = subprocess.run(_sass.cubin_command(cmd, src, csrc, out), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"nvcc failed on {src}:\n{done.stderr[-4000:]}")
    return out


def report(rel: Path, base: str, old: dict[str, str], new: dict[str, str], context: int) -> int:
    """Print one source's comparison; the number of kernels that differ, were added or removed."""
    bad = 0
    counts = {"identical": 0, "same-insts": 0}
    print(f"== {rel} ({base} -> new): {len(old)} -> {len(new)} kernels")
    for name in sorted(set(old) | set(new)):
        verdict = _sass.classify(old.get(name), new.get(name))
        if verdict == "identical":
            counts["identical"] += 1
        elif verdict == "same-insts":
            counts["same-insts"] += 1
            print(f"  same-insts  {name}")
        elif verdict == "removed":
            print(f"  removed     {name}")
            bad += 1
        elif verdict == "added":
            print(f"  added       {name} ({len(_sass.normalize(new[name]))} instructions)")
            bad += 1
        else:
            a, b = _sass.normalize(old[name]), _sass.normalize(new[name])
            bad += 1
            print(f"  differs     {name}: {len(a)} -> {len(b)} instructions")
            for line in list(difflib.unified_diff(a, b, lineterm="", n=1))[2:2 + context]:
                print(f"      {line}")
    print(f"  {counts['identical']} identical, {counts['same-insts']} same-insts")
    return bad


def nvrtc_sass(inner: Path, csrc: Path, tmp: Path) -> dict[str, str]:
    """{kernel: SASS} of csrc/<inner> compiled as the CuPy backend compiles it (NVRTC, CuPy's options,
    sm_90 cubin), for every name its own TFM_EXPORT lines list."""
    from tfm_kernels import _backend

    names = _backend.parse_exports((csrc / inner).read_text())
    cub, _, _ = _sass.nvrtc_cubin(str(inner), names, 90, csrc=csrc)
    out = tmp / (str(inner).replace("/", "__") + f".{abs(hash(str(csrc)))}.cubin")
    out.write_bytes(cub)
    return _sass.dump_sass.__wrapped__(str(out))


def compare_nvrtc(old_csrc: Path, new_csrc: Path, rels: list[Path], base: str = "base",
                  context: int = 12) -> int:
    """As compare(), for the CuPy backend's compiler: NVRTC (whichever cuda.bindings loads)."""
    bad = 0
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        jobs = []
        for rel in rels:
            inner = Path(rel).relative_to("csrc")
            old = pool.submit(nvrtc_sass, inner, old_csrc, Path(tmp)) if (old_csrc / inner).is_file() else None
            jobs.append((rel, old, pool.submit(nvrtc_sass, inner, new_csrc, Path(tmp))))
        for rel, old, new in jobs:
            bad += report(Path(f"{rel} [NVRTC]"), base, old.result() if old else {}, new.result(), context)
    return bad


def compare(old_csrc: Path, new_csrc: Path, rels: list[Path], base: str = "base",
            context: int = 12) -> int:
    """Compile every source (a path relative to the repository root, under csrc/) from both trees
    and print the per-kernel comparison; the number of kernels that differ, were added or removed.
    The command of each comes from this checkout's build/ptxas report; -I points at its own tree."""
    jobs = []  # (source, old cubin job or None, new cubin job)
    with tempfile.TemporaryDirectory() as tmp:
        for i, rel in enumerate(rels):
            cmd = recorded_command(ROOT / rel)
            inner = Path(rel).relative_to("csrc")
            old_src, new_src = old_csrc / inner, new_csrc / inner
            new_job = (cmd, new_src, new_csrc, Path(tmp) / f"new{i}.cubin")
            old_job = (cmd, old_src, old_csrc, Path(tmp) / f"old{i}.cubin") if old_src.is_file() else None
            jobs.append((rel, old_job, new_job))
        bad = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            # Compiles are queued first, so a dump never waits on a compile that has no thread.
            futs = [(rel, o and pool.submit(cubin, *o), pool.submit(cubin, *n)) for rel, o, n in jobs]
            dumps = [(rel, o and pool.submit(lambda f: _sass.dump_sass.__wrapped__(str(f.result())), o),
                      pool.submit(lambda f: _sass.dump_sass.__wrapped__(str(f.result())), n)) for rel, o, n in futs]
            for rel, o, n in dumps:
                bad += report(rel, base, o.result() if o else {}, n.result(), context)
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", help="csrc/*.cu files (default: all)")
    ap.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    ap.add_argument("--context", type=int, default=12, help="diff lines shown per differing kernel")
    ap.add_argument("--nvrtc", action="store_true",
                    help="also compare the CuPy backend's code (NVRTC): nvcc and NVRTC emit different "
                         "SASS for the same source, so each path needs its own proof")
    args = ap.parse_args()
    if _sass.cuobjdump() is None:
        sys.exit("cuobjdump/nvdisasm not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    rels = [(ROOT / s).resolve().relative_to(ROOT) for s in args.sources] or \
        [p.relative_to(ROOT) for p in sorted((ROOT / "csrc").glob("*.cu"))]
    with tempfile.TemporaryDirectory() as tmp:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", args.base, "csrc"],
                             capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True)
        bad = compare(Path(tmp) / "csrc", ROOT / "csrc", rels, args.base, args.context)
        if args.nvrtc:
            bad += compare_nvrtc(Path(tmp) / "csrc", ROOT / "csrc", rels, args.base, args.context)
    print("SASS unchanged" if bad == 0 else f"{bad} kernel(s) changed, added or removed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
