#!/usr/bin/env python3
"""Which kernels' current machine code is the code that passed on the H200 in GPU run 1?

    python scripts/run1_identity.py                       # the audit: fingerprints, kernels, variants
    python scripts/run1_identity.py --rev HEAD            # compare another revision against run 1
    python scripts/run1_identity.py --search csrc/attention_tc.cu d0c88f6 61250cd

GPU run 1 (2026-11-29 23:04 UTC, benchmarks/results/h200_2026-11-29_run1/) ran a copied working
tree with no .git, so no commit names its code. What survives is each source's `ptxas -v` report
(ptxas/<source>.txt inside logs.tar.gz; first line: the exact nvcc command). A source's *run-1
fingerprint* is a commit whose csrc/ tree, compiled with that exact command, reproduces the report
exactly: the same kernels and, per kernel, the same registers, barriers, stack, spill bytes and
static shared memory. The report is only a fingerprint, not the bytes, so the claim is: the code
that ran is that commit's, as far as ptxas's figures can tell; the commits in FINGERPRINTS below
were found with --search over the commits touching csrc/ between 22:00 and 23:20 UTC
(`git log --since --until -- csrc/`), nearest to 23:00 first. Each reproduces every kernel's figures
of its source. The neighbours tried do not (attention_tc 61250cd: 7 register counts; matmul_sm90
91e1cf6: a new signature; softmax caed7db: 50 differences), except for matmul_tc.cu, which 91e1cf6
(a mma.cuh change) reproduces too.

Then every kernel of that commit is compiled and disassembled beside the same source at --rev
(default HEAD), with the same command, and classified with scripts/sass_diff.py's words (identical /
same-insts / differs / added / removed), identical meaning the same instruction words (bytes).
Kernels are paired by name and template arguments (a changed parameter list is the same kernel); one
whose template arguments were extended since (attention_fwd_flash<64> -> <64, 4, false>) is paired
with the new kernel whose arguments extend its own. Each registered variant's kernels (tfm_kernels
registry, name expressions matched to mangled names through c++filt) then get one verdict: identical
for all its kernels, differs for k of n, or new since run 1. The run-1 test verdicts are RUN1_VERDICT below,
read off the run's summary.md and junit/*.xml.

Compiles one cubin per (source, revision) with nvcc (slow: about a minute for attention.cu on two
cores); no GPU needed. Not part of CI: it needs git history and the committed run-1 archive.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tfm_kernels import _sass  # noqa: E402

RUN1 = ROOT / "benchmarks" / "results" / "h200_2026-11-29_run1" / "logs.tar.gz"

# Source -> the commit whose tree reproduces run 1's ptxas report for it exactly (found with
# --search; see the module docstring). The run started at 23:01 UTC (env.txt) from a working tree.
FINGERPRINTS = {
    "csrc/attention.cu": "2be2fbe",
    "csrc/attention_tc.cu": "d0c88f6",
    "csrc/matmul.cu": "e4e6558",
    "csrc/matmul_sm90.cu": "79fbaa4",
    "csrc/matmul_tc.cu": "79fbaa4",
    "csrc/softmax.cu": "f38b1cc",
    "csrc/ext/plumbing_test.cu": "09a2c05",
}

# What run 1 said of each variant that existed then (summary.md, junit/*.xml, check.txt).
# Variants absent here did not exist at run 1.
_FP32_BWD = ("passed on both backends (test_backward's 4 failures are the test's fp32 tolerance "
             "bug: tolerances 1e-30 to 3e-20 for errors 2e-16 to 4e-6)")
RUN1_VERDICT = {
    **{("softmax", n): "passed on both backends" for n in range(1, 6)},
    **{("softmax_backward", n): "passed on both backends" for n in range(1, 6)},
    **{("matmul", n): "passed on both backends" for n in range(1, 12)},
    ("matmul", 12): "failed (host side: cuuint32_t TypeError before any launch)",
    ("attention_forward", 1): "passed on both backends",
    ("attention_forward", 2): "passed on both backends",
    ("attention_forward", 10): "passed on both backends",
    ("attention_forward", 13): "passed on both backends",
    ("attention_backward", 1): _FP32_BWD,
    ("attention_backward", 2): _FP32_BWD,
    ("attention_backward", 3): _FP32_BWD + "; attention_bwd_dq<64> spilled 8 bytes (test_build)",
    ("attention_backward", 11): "passed on both backends",
    ("attention_backward", 12): "passed on both backends",
}


def run1_reports() -> dict[str, str]:
    """{'csrc/<source>': ptxas report text} straight from the committed archive."""
    out = {}
    with tarfile.open(RUN1) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.lstrip("./").startswith("ptxas/"):
                stem = Path(m.name).stem.replace("__", "/")
                out[f"csrc/{stem}.cu"] = tar.extractfile(m).read().decode()
    return out


def nvcc_args(report: str, src: Path, csrc: Path, out: Path) -> list[str]:
    """Run 1's recorded command for one cubin, -Xptxas -v kept for the fingerprint (run 1 built one
    real arch per source, so the kept target is that one)."""
    return _sass.cubin_command(shlex.split(report.splitlines()[0][2:]), src, csrc, out, ptxas_v=True)


class Trees:
    """csrc/ of git revisions extracted once each, and (source, rev) compiled once each."""

    def __init__(self, tmp: Path, reports: dict[str, str]):
        self.tmp, self.reports, self.trees, self.built = tmp, reports, {}, {}

    def tree(self, rev: str) -> Path:
        if rev not in self.trees:
            d = self.tmp / f"tree{len(self.trees)}"
            d.mkdir()
            tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "csrc"],
                                 capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(d)], input=tar, check=True)
            self.trees[rev] = d / "csrc"
        return self.trees[rev]

    def build(self, rel: str, rev: str, nvrtc: bool = False) -> tuple[dict, dict] | None:
        """(ptxas figures, SASS) per mangled kernel name; None when the source is absent at rev.
        nvrtc: compiled as the CuPy backend compiles it (NVRTC, CuPy's options, sm_90 cubin)."""
        key = (rel, rev, nvrtc)
        if key not in self.built:
            csrc = self.tree(rev)
            src = csrc / Path(rel).relative_to("csrc")
            if not src.is_file():
                self.built[key] = None
                return None
            out = self.tmp / f"{len(self.built)}.cubin"
            if nvrtc:
                from tfm_kernels import _backend

                inner = str(Path(rel).relative_to("csrc"))
                cub, _, log = _sass.nvrtc_cubin(inner, _backend.parse_exports(src.read_text()), 90, csrc=csrc)
                out.write_bytes(cub)
                self.built[key] = (_sass.parse_ptxas(log), _sass.dump_sass.__wrapped__(str(out)))
                return self.built[key]
            done = subprocess.run(nvcc_args(self.reports[rel], src, csrc, out), capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"nvcc failed on {rel} at {rev}:\n{done.stderr[-3000:]}")
            self.built[key] = (_sass.parse_ptxas(done.stdout + done.stderr), _sass.dump_sass.__wrapped__(str(out)))
        return self.built[key]


def fingerprint_diff(run1: dict, mine: dict) -> list[str]:
    """What separates a compile's ptxas figures from run 1's (empty: an exact match)."""
    lines = [f"only in run 1: {k}" for k in sorted(set(run1) - set(mine))]
    lines += [f"not in run 1: {k}" for k in sorted(set(mine) - set(run1))]
    for k in sorted(set(run1) & set(mine)):
        if run1[k] != mine[k]:
            d = ", ".join(f"{f} {run1[k][f]}->{mine[k][f]}" for f in run1[k] if run1[k][f] != mine[k][f])
            lines.append(f"{k}: {d}")
    return lines


def demangle(names: list[str]) -> dict[str, str]:
    """mangled -> 'name<args>' (c++filt without the return type and parameter list)."""
    return {m: expr for expr, m in _sass.name_expressions(names).items()}


def canon(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


def search(trees: Trees, rel: str, revs: list[str]) -> int:
    run1 = _sass.parse_ptxas(trees.reports[rel])
    for rev in revs:
        b = trees.build(rel, rev)
        diff = ["source absent"] if b is None else fingerprint_diff(run1, b[0])
        print(f"{rel} @ {rev}: " + ("reproduces run 1's report exactly "
                                   f"({len(run1)} kernels)" if not diff else f"{len(diff)} difference(s)"))
        for line in diff[:12]:
            print(f"    {line}")
    return 0


def audit(trees: Trees, rev: str, nvrtc: bool = False) -> int:
    from tfm_kernels import _registry

    # (source, kernel at rev as 'name<args>') -> identical / same-insts / differs / added;
    # kernels are paired by their demangled name without the parameter list (a changed signature
    # is the same kernel), then a kernel gone since run 1 is paired with a new one whose template
    # arguments extend its own (attention_bwd_dkdv<32, true> -> <32, true, 4>).
    status: dict[tuple[str, str], str] = {}
    rank = {"identical": 0, "same-insts": 1, "differs": 2}
    path = "the CuPy backend's (NVRTC " + _nvrtc_version() + ")" if nvrtc else "the extension's (nvcc)"
    print(f"## Run-1 fingerprints and the kernels at {rev}: {path} machine code\n")
    for rel, fp in FINGERPRINTS.items():
        run1 = _sass.parse_ptxas(trees.reports[rel])
        diff = fingerprint_diff(run1, trees.build(rel, fp)[0])  # the fingerprint is nvcc's report
        old, new = trees.build(rel, fp, nvrtc), trees.build(rel, rev, nvrtc)
        print(f"{rel}: fingerprint {fp}: " + (f"reproduces run 1's ptxas report exactly ({len(run1)} kernels)"
                                               if not diff else f"{len(diff)} figure(s) differ: {diff[:3]}"))
        olds = {canon(d): old[1][m] for m, d in demangle(sorted(old[1])).items()}
        news = {canon(d): new[1][m] for m, d in demangle(sorted(new[1] if new else {})).items()}
        gone = sorted(set(olds) - set(news))
        fresh = set(news) - set(olds)
        counts: dict[str, int] = {}
        for k in sorted(set(olds) & set(news)):
            status[(rel, k)] = _sass.classify(olds[k], news[k])
        for g in list(gone):
            cands = [a for a in fresh if a.startswith(g[:-1] + ",")]
            if not cands:
                continue
            a = min(cands, key=lambda a: (rank[_sass.classify(olds[g], news[a])],
                                          abs(len(_sass.normalize(olds[g])) - len(_sass.normalize(news[a])))))
            status[(rel, a)] = _sass.classify(olds[g], news[a])
            print(f"    {status[(rel, a)]:<11} {a} (run 1: {g})")
            fresh.discard(a)
            gone.remove(g)
        for a in sorted(fresh):
            status[(rel, a)] = "added"
            print(f"    added       {a}")
        for g in gone:
            print(f"    removed     {g}")
            counts["removed"] = counts.get("removed", 0) + 1
        for (r, k), st in status.items():
            if r == rel:
                counts[st] = counts.get(st, 0) + 1
                if st in ("same-insts", "differs") and k in olds:
                    print(f"    {st:<11} {k}")
        print("    " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))

    print(f"\n## Variants: machine code at {rev} against run 1's\n")
    print("| op | variant | run 1 | machine code vs run 1 |")
    print("|---|---|---|---|")
    for op in _registry.ops():
        for v in _registry.variants(op):
            verdicts = []
            for source, expr in v.kernels:
                rel = f"csrc/{source}"
                verdicts.append("new" if rel not in FINGERPRINTS else status.get((rel, canon(expr)), "unmatched"))
            n = len(verdicts)
            bad = sum(s not in ("identical",) for s in verdicts)
            if all(s == "new" for s in verdicts):
                code = "new since run 1 (source not in run 1)"
            elif all(s == "added" for s in verdicts):
                code = f"all {n} kernels new since run 1"
            elif bad == 0:
                code = f"identical for all {n} kernels"
            else:
                kinds = sorted({s for s in verdicts if s != "identical"})
                code = (f"differs for {bad} of {n} kernels ("
                        + ", ".join(f"{verdicts.count(k)} {k}" for k in kinds) + ")")
            verdict = RUN1_VERDICT.get((op, v.number), "not run (did not exist)")
            print(f"| {op} | {v.number}_{v.name} | {verdict} | {code} |")
    return 0


def _nvrtc_version() -> str:
    from cuda.bindings import nvrtc

    _, major, minor = nvrtc.nvrtcVersion()
    return f"{major}.{minor}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="HEAD", help="revision to compare against run 1 (default HEAD)")
    ap.add_argument("--search", nargs="+", metavar=("SOURCE", "REV"),
                    help="check which of these revisions reproduce run 1's report for SOURCE")
    ap.add_argument("--nvrtc", action="store_true",
                    help="compare the CuPy backend's code (NVRTC) instead of the extension's (nvcc): "
                         "the two compilers emit different SASS for one source, and run 1 passed on "
                         "both. Use the NVRTC run 1 had (13.0: pip install nvidia-cuda-nvrtc==13.0.88)")
    args = ap.parse_args()
    if _sass.cuobjdump() is None:
        sys.exit("cuobjdump/nvdisasm not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    with tempfile.TemporaryDirectory() as tmp:
        trees = Trees(Path(tmp), run1_reports())
        if args.search:
            return search(trees, args.search[0], args.search[1:])
        return audit(trees, args.rev, args.nvrtc)


if __name__ == "__main__":
    sys.exit(main())
