"""tests/test_gpu_summary.py: scripts/gpu_summary.py (the summary step of scripts/gpu_check.sh) on
GPU run 1's own files (benchmarks/results/h200_2026-11-29_run1/logs.tar.gz holds its scratch
directory), then on the same files split into the passes a lost CUDA context causes."""

from __future__ import annotations

import json
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
RUN1 = ROOT / "benchmarks" / "results" / "h200_2026-11-29_run1"


@pytest.fixture(scope="module")
def gs():
    return load_script("gpu_summary")


def _workdir(tmp_path: Path) -> Path:
    """Run 1's scratch directory as gpu_check.sh left it before packing."""
    w = tmp_path / "w"
    w.mkdir()
    with tarfile.open(RUN1 / "logs.tar.gz") as t:
        t.extractall(w, filter="data")
    for name in ("steps.tsv", "info.json", "check.json"):
        shutil.copy(w / "logs" / name, w / name)
    return w


def _summarize(gs, w: Path, tmp_path: Path) -> tuple[dict, str]:
    out = tmp_path / "out"
    out.mkdir()
    assert gs.main(str(w), str(out), str(ROOT), "0", "1", "1") == 0
    return json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text()


def test_run1_reads_as_it_did(gs, tmp_path):
    """The counts per file and backend, the failures and the sanitizer verdicts come out as run 1's
    own summary.json has them (its racecheck line predates the summary parser that reads it)."""
    run1 = json.loads((RUN1 / "summary.json").read_text())
    summary, md = _summarize(gs, _workdir(tmp_path), tmp_path)
    mine = {(t["file"], t["backend"]): (t["passed"], t["failed"], t["skipped"]) for t in summary["tests"]}
    theirs = {(t["file"], t["backend"]): (t["passed"], t["failed"], t["skipped"]) for t in run1["tests"]}
    assert mine == theirs
    assert sorted(summary["test_failures"]) == sorted(run1["test_failures"])
    assert summary["sanitizers"]["memcheck"] == "clean (0 errors)"
    assert summary["sanitizers"]["racecheck"] == "clean (0 errors)"
    assert summary["gpu"] == run1["gpu"] and summary["tests_lost"] == [] and "lost the CUDA context" not in md
    merged = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert sum(1 for _ in merged.iter("testcase")) == sum(1 for _ in ET.parse(RUN1 / "junit.xml").getroot().iter("testcase"))


def test_passes_after_a_lost_context(gs, tmp_path):
    """Run 1's test_matmul_tc as if a fault in its 20th test had lost the context: pass 1 skips
    everything after it as lost, pass 2 reruns them all but the last 3, which time ran out for.
    Each test counts once, by its last real outcome; the 3 count as 'not run (context lost)'."""
    w = _workdir(tmp_path)
    src = w / "junit" / "test_matmul_tc.xml"
    tree = ET.parse(src)
    cases = list(tree.getroot().iter("testcase"))
    culprit = cases[19]
    lost_msg = f"CUDA context lost after tests/test_matmul_tc.py::{culprit.get('name')} (cudaErrorIllegalAddress)"
    pass2 = ET.Element("testsuites")
    suite2 = ET.SubElement(pass2, "testsuite", name="pytest")
    for tc in cases[20:]:
        if tc is not cases[-1] and tc is not cases[-2] and tc is not cases[-3]:
            suite2.append(ET.fromstring(ET.tostring(tc)))
        for child in list(tc):
            tc.remove(child)
        ET.SubElement(tc, "skipped", type="pytest.skip", message=lost_msg)
    src.rename(w / "junit" / "test_matmul_tc.1.xml")
    tree.write(w / "junit" / "test_matmul_tc.1.xml")
    ET.ElementTree(pass2).write(w / "junit" / "test_matmul_tc.2.xml")

    run1 = json.loads((RUN1 / "summary.json").read_text())
    summary, md = _summarize(gs, w, tmp_path)
    lost = {c.get("name") for c in cases[-3:]}
    assert sorted(summary["tests_lost"]) == sorted(lost)
    mine = {t["backend"]: t for t in summary["tests"] if t["file"] == "test_matmul_tc"}
    theirs = {t["backend"]: t for t in run1["tests"] if t["file"] == "test_matmul_tc"}
    for be in theirs:  # the 3 lost tests moved from their outcome to "lost"; nothing counted twice
        total = lambda t: t["passed"] + t["failed"] + t["skipped"] + t.get("lost", 0)  # noqa: E731
        assert total(mine[be]) == total(theirs[be]), be
    assert sum(t["lost"] for t in mine.values()) == 3
    assert "test_matmul_tc" not in summary["tests_not_run"]
    assert f"tests: after tests/test_matmul_tc.py::{culprit.get('name')}" in md
    assert "3 tests could not be rerun in time" in md
    merged = [tc for tc in ET.parse(tmp_path / "out" / "junit.xml").getroot().iter("testcase")
              if "matmul_tc" in tc.get("classname", "")]
    assert len(merged) == len(cases)  # once each


def test_sanitizer_counts_add_up_over_processes(gs):
    text = ("========= ERROR SUMMARY: 0 errors\n...\n========= ERROR SUMMARY: 2 errors\n"
            "========= RACECHECK SUMMARY: 3 hazards displayed (1 errors, 2 warnings)\n")
    assert gs.sanitizer_counts(text) == (3, 3, 3)
    assert gs.sanitizer_counts("no summary here") == (None, 0, 0)


def test_a_killed_pass_is_read_from_its_progress_file(gs, tmp_path):
    """Run 1's test_softmax as if its time cap had struck during its 31st test: no junit, only the
    progress lines conftest.py flushes per test. The 30 finished tests count by their outcome, the
    31st as failed ('killed by the time cap'), and the rest are what --remaining hands the next pass."""
    w = _workdir(tmp_path)
    src = w / "junit" / "test_softmax.xml"
    cases = list(ET.parse(src).getroot().iter("testcase"))
    src.unlink()

    def nodeid(tc):
        mod, *cls = tc.get("classname").split(".")[1:]
        return "::".join([f"tests/{mod}.py", *cls, tc.get("name")])

    ids = [nodeid(tc) for tc in cases]
    lines = [{"collected": ids}]
    for tc, n in zip(cases[:30], ids):
        outcome = "failed" if tc.find("failure") is not None else "skipped" if tc.find("skipped") is not None else "passed"
        lines += [{"start": n}, {"nodeid": n, "when": "call", "outcome": outcome, "message": ""}]
    lines.append({"start": ids[30]})
    (w / "progress").mkdir()
    path = w / "progress" / "test_softmax.1.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"nodeid": "half a li')

    assert gs.remaining(str(path)) == ids[31:]
    summary, md = _summarize(gs, w, tmp_path)
    counts = [t for t in summary["tests"] if t["file"] == "test_softmax"]
    assert sum(t["passed"] + t["failed"] + t["skipped"] for t in counts) == 31
    killed = [f for f in summary["test_failures"] if gs.KILLED in f]
    assert len(killed) == 1 and cases[30].get("name") in killed[0]
    assert "test_softmax" not in summary["tests_not_run"]


def test_remaining_prints_nothing_when_nothing_is_left(tmp_path):
    """gpu_check.sh hands --remaining's lines to pytest as test ids: an empty line there would
    make pytest collect the whole repository."""
    import subprocess
    import sys

    path = tmp_path / "p.jsonl"
    path.write_text('{"collected": ["t.py::a"]}\n{"start": "t.py::a"}\n'
                    '{"nodeid": "t.py::a", "when": "call", "outcome": "passed", "message": ""}\n')
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_summary.py"), "--remaining", str(path)],
                         capture_output=True, text=True, check=True).stdout
    assert out == ""
