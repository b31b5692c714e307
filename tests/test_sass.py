"""tests/test_sass.py: reading machine code without a GPU (tfm_kernels/_sass.py, scripts/sass_diff.py,
`tfm-kernels sass`).

* The parsers: ptxas -v reports in nvcc's and NVRTC's formats, opcodes, backward-branch loops and
  the hot-loop pick, on hand-written SASS whose answer is known.
* sass_diff's verdicts on a real source compiled twice (csrc/ext/plumbing_test.cu, 4 small kernels):
  a moved line and a comment leave every kernel `identical`; a `+` turned into `-` makes the
  kernels that use it `differs` (and no other); a removed export shows as `removed`.
* `tfm-kernels sass matmul 10` compiles as the CuPy backend does and finds HMMA in the main loop.
Needs nvcc / cuobjdump / NVRTC where marked (the test extra installs cuobjdump and NVRTC; CI has
nvcc), never a GPU.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from tfm_kernels import _sass

ROOT = Path(__file__).resolve().parent.parent

NVCC_LOG = """\
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barv' for 'sm_90'
ptxas info    : Function properties for _Z3barv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers
"""
# NVRTC prefixes the properties line with "ptxas         ."
NVRTC_LOG = NVCC_LOG.replace("\n    8 bytes", "\nptxas         .     8 bytes").replace("\n    0 bytes", "\nptxas         .     0 bytes")

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
                                                                          /* 0x000fe20000000800 */
        /*0010*/                   S2R R0, SR_TID.X ;                     /* 0x0000000000007919 */
        /*0020*/                   LDS.128 R4, [R0] ;                     /* 0x0000000000007919 */
        /*0030*/                   FFMA.FTZ R8, R4, R5, R8 ;              /* 0x0000000000007919 */
        /*0040*/                   FFMA.FTZ R9, R6, R7, R9 ;              /* 0x0000000000007919 */
        /*0050*/               @P0 BRA 0x20 ;                             /* 0x0000000000007919 */
        /*0060*/                   HMMA.16816.F32 R12, R4, R6, R12 ;      /* 0x0000000000007919 */
        /*0070*/                   LDSM.16.M88.4 R4, [R0] ;               /* 0x0000000000007919 */
        /*0080*/              @!P1 BRA 0x60 ;                             /* 0x0000000000007919 */
        /*0090*/                   BRA 0x10 ;                             /* 0x0000000000007919 */
        /*00a0*/                   EXIT ;                                 /* 0x0000000000007919 */
"""


@pytest.mark.parametrize("log", [NVCC_LOG, NVRTC_LOG], ids=["nvcc", "nvrtc"])
def test_parse_ptxas(log):
    r = _sass.parse_ptxas(log)
    assert r["_Z3fooPf"] == {"registers": 255, "barriers": 1, "smem": 4096, "stack": 8,
                             "spill_stores": 4, "spill_loads": 12}
    assert r["_Z3barv"] == {"registers": 10, "barriers": 0, "smem": 0, "stack": 0,
                            "spill_stores": 0, "spill_loads": 0}


def test_opcodes_and_loops():
    assert _sass.opcode("@!P1 LDG.E.128.CONSTANT R4, desc[UR4][R2.64]") == "LDG.E"
    assert _sass.opcode("HMMA.16816.F32 R12, R4, R6, R12") == "HMMA.16816"
    assert _sass.opcode("EXIT") == "EXIT"
    insns = _sass.instructions(SASS)
    assert [a for a, _ in insns] == list(range(0, 0xb0, 0x10))
    spans = [(s, e, len(body)) for s, e, body in _sass.loops(SASS)]
    # three backward branches, longest first: 0x10-0x90 (9), 0x20-0x50 (4), 0x60-0x80 (3)
    assert spans == [(0x10, 0x90, 9), (0x20, 0x50, 4), (0x60, 0x80, 3)]
    # the hot loop: tensor-core instructions first, then math, then the tighter loop. The outer
    # loop holds all of it; without it, the HMMA loop beats the FFMA loop; without the HMMA, the
    # FFMA loop beats the outer loop that holds the same two FFMAs and more.
    assert _sass.main_loop(SASS)[:2] == (0x10, 0x90)
    no_outer = SASS.replace("BRA 0x10 ;", "NOP ;")
    assert _sass.main_loop(no_outer)[:2] == (0x60, 0x80)
    assert _sass.main_loop(SASS.replace("HMMA.16816.F32", "IADD3"))[:2] == (0x20, 0x50)
    assert "LDS.128 1" in _sass.mix_line([t for _, t in insns], 20)


def test_normalize_drops_addresses_and_encodings():
    lines = _sass.normalize(SASS)
    assert lines[0] == "LDC R1, c[0x0][0x28] ;"
    assert not any("/*" in ln for ln in lines) and len(lines) == 11


# ---------------------------------------------------------------------------------------------
# sass_diff on a real source
# ---------------------------------------------------------------------------------------------

def _sass_diff():
    spec = importlib.util.spec_from_file_location("sass_diff", ROOT / "scripts" / "sass_diff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


needs_tools = pytest.mark.skipif(
    _sass.cuobjdump() is None or shutil.which("nvcc") is None
    or not (ROOT / "build" / "ptxas" / "ext__plumbing_test.txt").is_file(),
    reason="needs nvcc, cuobjdump and a built extension (build/ptxas reports)")


@needs_tools
def test_sass_diff_verdicts(tmp_path, capsys):
    mod = _sass_diff()
    rel = Path("csrc/ext/plumbing_test.cu")
    src = (ROOT / rel).read_text()
    csrc = ROOT / "csrc"

    def tree(name, text):
        d = tmp_path / name
        shutil.copytree(csrc, d, ignore=shutil.ignore_patterns("*.cu", "ext"))
        (d / "ext").mkdir()
        (d / rel.relative_to("csrc")).write_text(text)
        return d

    base = tree("base", src)
    fill = "out[i] = value + static_cast<T>(SCALE)"
    assert fill in src
    moved = tree("moved", "// a comment and a blank line move every line below\n\n" + src.replace(
        fill, fill.replace("value + ", "value +  ")) + "\n// trailing comment\n")
    assert mod.compare(base, moved, [rel]) == 0
    out = capsys.readouterr().out
    assert "4 identical" in out and "differs" not in out

    flipped = tree("flipped", src.replace(fill, fill.replace("value + ", "value - ")))
    assert mod.compare(base, flipped, [rel]) == 2  # both instantiations of tfm_plumbing_fill
    out = capsys.readouterr().out
    assert len(re.findall(r"differs\s+_Z17tfm_plumbing_fill", out)) == 2 and "2 identical" in out

    line = next(ln for ln in src.splitlines() if ln.startswith("TFM_EXPORT(tfm_plumbing_fill<int64_t"))
    dropped = tree("dropped", src.replace(line + "\n", ""))
    assert mod.compare(base, dropped, [rel]) == 1
    assert re.search(r"removed\s+_Z17tfm_plumbing_fillIl", capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------
# tfm-kernels sass
# ---------------------------------------------------------------------------------------------

def test_cli_sass_matmul_mma(capsys):
    pytest.importorskip("cuda.bindings.nvrtc")
    if _sass.cuobjdump() is None:
        pytest.skip("cuobjdump not found")
    from tfm_kernels.cli import main

    assert main(["sass", "matmul", "10", "--kernel", "false, false"]) == 0
    out = capsys.readouterr().out
    assert "matmul/10_mma_sync" in out
    m = re.search(r"main loop \(0x[0-9a-f]+-0x[0-9a-f]+, (\d+) instructions\): (.*)", out)
    assert m and "HMMA.16816" in m.group(2), out
    assert re.search(r"\d+ registers", out) and "SPILLS" not in out


def test_cli_sass_bad_arguments(capsys):
    from tfm_kernels.cli import main

    if _sass.cuobjdump() is None:
        assert main(["sass", "matmul"]) == 2
        return
    assert main(["sass", "matmul", "99"]) == 2
    assert "no variant '99'" in capsys.readouterr().err
    assert main(["sass", "nosuch"]) == 2
    assert "unknown op" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# GPU run 1's verdicts stand on byte-identical machine code
# ---------------------------------------------------------------------------------------------

def test_run1_identity_claims():
    """Every variant whose `measured` says its machine code is run 1's (RUN1_CODE) still builds to
    the same sm_90 instruction words: tests/data/run1_sass.json holds their sha256 per kernel
    (scripts/sass_fingerprints.py), checked here against the extension this build made. A change
    that moves one instruction of such a kernel (even from elsewhere in its source: plumbing.md's
    tfm_cdiv finding) fails here, where it would otherwise keep a GPU verdict it no longer has.
    Skips where the extension was built by another nvcc (other compilers give other bytes)."""
    import json

    from helpers import ext_sass

    data = json.loads((ROOT / "tests" / "data" / "run1_sass.json").read_text())
    sass = ext_sass()  # skips without cuobjdump or the extension
    spec = importlib.util.spec_from_file_location("sass_fingerprints", ROOT / "scripts" / "sass_fingerprints.py")
    fp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fp)
    try:
        built_by = fp.nvcc_build()
    except (OSError, StopIteration, IndexError) as e:
        pytest.skip(f"cannot tell which nvcc built the extension: {e}")
    if built_by != data["nvcc"]:
        pytest.skip(f"the extension was built by {built_by}; the fingerprints are {data['nvcc']}'s")
    claims = fp.claims()
    claimed = {expr for ks in claims.values() for _, expr in ks}
    assert claimed == set(data["kernels"]), (
        f"claims without fingerprints: {sorted(claimed - set(data['kernels']))}; "
        f"fingerprints without claims: {sorted(set(data['kernels']) - claimed)}")
    by_expr = _sass.name_expressions(sorted(sass))
    changed = []
    for expr, rec in sorted(data["kernels"].items()):
        hashes = {_sass.words_hash(img) for img in _sass.images(sass[by_expr[expr]])}
        if rec["sha256"] not in hashes:
            changed.append(f"{rec['variant']}: {expr}")
    assert not changed, ("machine code no longer run 1's (drop RUN1_CODE from `measured`, or undo the "
                         "change; scripts/sass_diff.py shows the difference):\n" + "\n".join(changed))
