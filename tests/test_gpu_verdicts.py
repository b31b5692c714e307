"""tests/test_gpu_verdicts.py: scripts/gpu_verdicts.py read against GPU run 1's own results
(benchmarks/results/h200_2026-11-29_run1: summary.json and junit.xml), whose outcome is known from
its README: matmul 12 stopped at a host-side TypeError, the fp32 attention backward failed its dq
tolerance, everything else that existed passed, and what was written later did not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
RUN1 = ROOT / "benchmarks" / "results" / "h200_2026-11-29_run1"


@pytest.fixture(scope="module")
def rows():
    gv = load_script("gpu_verdicts")
    summary = json.loads((RUN1 / "summary.json").read_text())
    out = gv.verdicts(summary, gv.junit_cases(RUN1 / "junit.xml"))
    gv.markdown(out, summary)  # renders
    return {(r["op"], r["variant"]): r for r in out}


def test_failures_are_named(rows):
    r = rows[("matmul", "12_wgmma_tma")]
    assert r["verdict"] == "FAILED" and r["action"].startswith("fix")
    assert any("TypeError" in f for f in r["failures"])
    for v in ("1_naive", "2_flash"):  # the dq tolerance failures of run 1
        assert rows[("attention_backward", v)]["verdict"] == "FAILED"


def test_forward_is_not_blamed_for_backward(rows):
    """test_attention::test_backward names "2_flash"; attention_forward's 2_flash passed its own."""
    for v in ("1_naive", "2_flash"):
        r = rows[("attention_forward", v)]
        assert r["verdict"] == "passed" and not r["failures"], r


def test_passes_need_both_backends(rows):
    for key in (("softmax", "5_regs"), ("matmul", "11_mma_pipelined"), ("attention_forward", "13_tc_m128"),
                ("attention_backward", "12_tc_det")):
        r = rows[key]
        assert r["verdict"] == "passed", key
        assert all(s["tests_passed"] + s["check_passed"] > 0 for s in r["seen"].values()), key
    assert rows[("softmax", "5_regs")]["best"]["unit"] == "GB/s"


def test_later_variants_did_not_run(rows):
    for key in (("matmul", "14_iterators"), ("attention_forward", "15_wgmma_overlap"),
                ("attention_backward", "13_wgmma"), ("softmax", "7_cluster")):
        r = rows[key]
        assert r["verdict"] == "not run" and r["action"] == "" and r["unverified"], key


def test_failed_before_bench(tmp_path):
    """What gpu_check.sh asks between its tests and its benchmarks (check.json and the per-pass
    junit files of its scratch directory; run 1's, from its logs.tar.gz): the variants run 1 saw
    fail, and only those, are skipped in the benchmarks and profiles."""
    import tarfile

    gv = load_script("gpu_verdicts")
    with tarfile.open(RUN1 / "logs.tar.gz") as t:
        t.extractall(tmp_path, filter="data")
    failed = gv.failed_so_far(tmp_path / "logs" / "check.json", tmp_path / "junit")
    assert sorted(failed) == ["attention_backward/1_naive", "attention_backward/2_flash",
                              "attention_backward/3_flash_det", "matmul/12_wgmma_tma"]
    assert gv.failed_so_far(None, tmp_path / "absent") == []
    # a killed pass: no junit, and matmul 13's test was running when the cap struck
    import json

    (tmp_path / "progress").mkdir()
    hung = "tests/test_matmul_tc.py::test_variant[ext-13_wgmma_persistent-NN-float16]"
    (tmp_path / "progress" / "test_matmul_tc.2.jsonl").write_text(
        json.dumps({"collected": [hung]}) + "\n" + json.dumps({"start": hung}) + "\n")
    assert "matmul/13_wgmma_persistent" in gv.failed_so_far(tmp_path / "logs" / "check.json", tmp_path / "junit")
