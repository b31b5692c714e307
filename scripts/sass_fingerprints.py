#!/usr/bin/env python3
"""Fingerprints of the machine code GPU run 1 verified: tests/data/run1_sass.json.

    python scripts/sass_fingerprints.py        # rewrite it from the built extension

A variant whose `measured` says "machine code identical to run 1's" (RUN1_CODE) keeps GPU run 1's
verdict only while its kernels stay byte-identical to what ran (scripts/run1_identity.py
established that, and scripts/sass_diff.py checks a change against a revision). The JSON holds,
for each such kernel, the sha256 of its sm_90 instruction words as the extension builds it
(`setup.py build_ext`, TFM_CUDA_ARCHS=90, with the nvcc named in the file), so
tests/test_sass.py::test_run1_identity_claims can check every claim on every CI run from the
extension CI builds anyway, in seconds and without git history. Write it only from a build that
sass_diff has shown identical to the run-1 fingerprints (it was generated at e30f765, whose
kernels sass_diff --base e708ed2 --nvrtc finds identical for every source).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "run1_sass.json"


def nvcc_build() -> str:
    """The nvcc the extension was built with: the `Build cuda_...` line of its --version."""
    first = (ROOT / "build" / "ptxas" / "matmul.txt").read_text().splitlines()[0]
    nvcc = first.removeprefix("# ").split()[0]
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    return next(line for line in out.splitlines() if line.startswith("Build "))


def claims() -> dict[str, list[tuple[str, str]]]:
    """{variant qualname: its kernels (source, name expression)} for every variant claiming RUN1_CODE."""
    import tfm_kernels
    from tfm_kernels._registry import RUN1_CODE

    return {v.qualname: list(v.kernels) for op in tfm_kernels._registry.ops() for v in tfm_kernels.variants(op)
            if RUN1_CODE in (v.measured or "")}


def main() -> int:
    from tfm_kernels import _ext, _sass

    sass = _sass.dump_sass(_ext.__file__)
    by_expr = _sass.name_expressions(sorted(sass))
    kernels = {}
    for variant, ks in claims().items():
        for source, expr in ks:
            images = _sass.images(sass[by_expr[expr]])
            if len(images) != 1:  # the hash must be sm_90's alone
                print(f"{expr} has {len(images)} images: build the extension with TFM_CUDA_ARCHS=90",
                      file=sys.stderr)
                return 2
            kernels[expr] = {"source": source, "variant": variant, "sha256": _sass.words_hash(images[0])}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"nvcc": nvcc_build(), "arch": "sm_90", "kernels": kernels}, indent=1,
                              sort_keys=True) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(kernels)} kernels of {len(claims())} variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
