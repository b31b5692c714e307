#!/usr/bin/env python3
"""The summary of one `scripts/gpu_check.sh` run: OUTDIR/summary.md, summary.json and junit.xml.

    python3 scripts/gpu_summary.py WORKDIR OUTDIR ROOT T0 SANITIZERS_RAN GPU_OK
    python3 scripts/gpu_summary.py --remaining WORKDIR/progress/FILE.PASS.jsonl

WORKDIR is gpu_check.sh's scratch directory: steps.tsv, info.json, check.json, logs/ (one log per
step, ``pytest_<file>.<pass>.txt``, the sanitizer and ncu logs), junit/ (``<file>.<pass>.xml``, one
per pytest pass), progress/ (``<file>.<pass>.jsonl``: conftest.py's line per test, the record of a
pass its time cap killed before pytest wrote the junit) and bench/. After a killed pass, the tests
it never started get another pass (``--remaining``); the one running when it was killed counts
as failed. A test file runs in one or more passes: after a kernel fault loses the
CUDA context, conftest.py skips the rest of the file as "CUDA context lost after <test>" and
gpu_check.sh reruns those tests in a fresh process. Here each test counts once, by its last real
outcome; a test skipped for a lost context and never rerun counts as "not run (context lost)".
The merged junit.xml holds exactly those outcomes (what scripts/gpu_verdicts.py reads).
Written as a script beside gpu_check.sh so the CPU tests can run it on GPU run 1's own files
(tests/test_gpu_summary.py).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

# scripts/gpu_check.sh exports the same rule (a test taking the `backend` fixture is a GPU test)
GPU_TESTS = r"def test_\w*\([^)]*\bbackend\b"
LOST = "CUDA context lost after "


def _backend_of(name: str) -> str:
    params = re.search(r"\[(.*)\]$", name)
    parts = params.group(1).split("-") if params else []
    return "ext" if "ext" in parts else "cupy" if "cupy" in parts else "-"


KILLED = "killed by the time cap while running"


def read_progress(path: str) -> tuple[list[str], dict[str, dict], str | None]:
    """(collected ids, {id: last outcome record}, the id started and never finished) from a
    ``--tfm-progress-file`` (conftest.py); a half-written last line is ignored."""
    collected, done, running = [], {}, None
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return collected, done, running
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "collected" in r:
            collected = r["collected"]
        elif "start" in r:
            running = r["start"]
        elif "nodeid" in r:
            prev = done.get(r["nodeid"])
            if prev is None or prev["outcome"] == "passed" or r["outcome"] == "failed":
                done[r["nodeid"]] = r  # a failed teardown outlives a passed call
            if running == r["nodeid"]:
                running = None
    return collected, done, running


def remaining(path: str) -> list[str]:
    """The tests of a killed pass that never started, or were skipped for a lost context: what the
    next pass runs (the one running when the cap struck is not among them; the summary reports it
    as failed)."""
    collected, done, running = read_progress(path)
    return [n for n in collected if n != running and (n not in done or LOST in done[n].get("message", ""))]


def _testcase(nodeid: str, outcome: str, message: str) -> ET.Element:
    """A junit <testcase> for a test known only from a progress file (its pass was killed)."""
    parts = nodeid.split("::")
    module = parts[0][:-3].replace("/", ".") if parts[0].endswith(".py") else parts[0]
    tc = ET.Element("testcase", classname=".".join([module, *parts[1:-1]]), name=parts[-1], time="0")
    if outcome == "failed":
        ET.SubElement(tc, "failure", message=message)
    elif outcome == "skipped":
        ET.SubElement(tc, "skipped", type="pytest.skip", message=message)
    return tc


def _progress_root(path: str) -> ET.Element:
    """What a killed pass's junit would have held, from its progress file: every test that
    reported, and the one running when it was killed, as a failure."""
    _, done, running = read_progress(path)
    suite = ET.Element("testsuite", name="pytest (from the progress file; the pass was killed)")
    for nodeid, r in done.items():
        suite.append(_testcase(nodeid, r["outcome"], r.get("message", "")))
    if running and running not in done:
        suite.append(_testcase(running, "failed", f"{KILLED} (a hang, or the file outran its cap)"))
    return suite


def merge_junit(junit_dir: str, progress_dir: str | None = None):
    """(cases, lost, failures, files) from ``junit_dir/<file>.<pass>.xml``: every test case once, by
    the last pass that ran it, as {file, test, backend, status: passed|failed|skipped, element};
    the tests skipped for a lost context and never rerun (status "lost", lost_after: the test
    whose failure lost it); "file::test: message" per failure; the test files with results.
    A pass without a junit file (killed by its time cap) is read from
    ``progress_dir/<file>.<pass>.jsonl`` when there is one."""
    latest: dict[tuple[str, str, str], dict] = {}
    lost: dict[tuple[str, str, str], dict] = {}
    failures: list[str] = []
    files: set[str] = set()

    def order(path):
        m = re.match(r"(.*?)(?:\.(\d+))?\.(?:xml|jsonl)$", os.path.basename(path))
        return m.group(1), int(m.group(2) or 1)

    passes = {order(p): p for p in glob.glob(os.path.join(progress_dir, "*.jsonl"))} if progress_dir else {}
    passes.update({order(p): p for p in glob.glob(os.path.join(junit_dir, "*.xml"))})  # junit wins
    for (fname, npass), path in sorted(passes.items()):
        files.add(fname)
        try:
            root = _progress_root(path) if path.endswith(".jsonl") else ET.parse(path).getroot()
        except Exception as e:
            failures.append(f"{fname}: unreadable junit of pass {npass} ({e})")
            latest[(fname, "", f"<junit pass {npass}>")] = {"file": fname, "test": f"<junit pass {npass}>",
                                                         "backend": "-", "status": "failed", "element": None}
            continue
        for tc in root.iter("testcase"):
            name = tc.get("name", "")
            key = (fname, tc.get("classname", ""), name)  # TestA::test_out and TestB::test_out differ
            sk = tc.find("skipped")
            msg = (sk.get("message") or "") if sk is not None else ""
            c = {"file": fname, "test": name, "backend": _backend_of(name), "element": tc}
            if sk is not None and LOST in msg:
                after = msg.split(LOST, 1)[1].split(" (")[0]
                lost[key] = {**c, "lost_after": after}
                continue
            lost.pop(key, None)
            bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
            c["status"] = "failed" if bad is not None else "skipped" if sk is not None else "passed"
            latest[key] = c
    for (fname, _, name), c in latest.items():
        if c["status"] == "failed" and c["element"] is not None:
            el = c["element"].find("failure") if c["element"].find("failure") is not None else c["element"].find("error")
            msg = (el.get("message") or "").splitlines()[0][:200] if el is not None and el.get("message") else ""
            failures.append(f"{fname}::{name}: {msg}")
    for c in lost.values():
        c["status"] = "lost"
    return list(latest.values()), list(lost.values()), failures, files


def write_junit(cases: list[dict], lost: list[dict], path: str) -> None:
    """One junit.xml: a testsuite per test file, each test once (its last real outcome); a test a
    lost context kept from running stays a skip with that message."""
    suite = ET.Element("testsuites")
    by_file: dict[str, ET.Element] = {}
    for c in [*cases, *lost]:
        if c.get("element") is None:
            continue
        ts = by_file.get(c["file"])
        if ts is None:
            ts = by_file[c["file"]] = ET.SubElement(suite, "testsuite", name=c["file"])
        ts.append(copy.deepcopy(c["element"]))
    for ts in by_file.values():
        tcs = list(ts)
        ts.set("tests", str(len(tcs)))
        ts.set("failures", str(sum(t.find("failure") is not None for t in tcs)))
        ts.set("errors", str(sum(t.find("error") is not None for t in tcs)))
        ts.set("skipped", str(sum(t.find("skipped") is not None for t in tcs)))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def sanitizer_counts(text: str) -> tuple[int | None, int, int]:
    """(errors, hazards, processes) summed over every "ERROR SUMMARY: N errors" (memcheck,
    synccheck) and "RACECHECK SUMMARY: H hazards displayed (E errors, W warnings)" in a log;
    errors is None when the log holds no summary at all."""
    errs = [int(x) for x in re.findall(r"ERROR SUMMARY: (\d+) error", text)]
    race = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) error", text)
    if not errs and not race:
        return None, 0, 0
    return sum(errs) + sum(int(e) for _, e in race), sum(int(h) for h, _ in race), len(errs) + len(race)


def main(W: str, OUT: str, ROOT: str, T0: str, SAN: str, GPU_OK: str) -> int:
    steps = []
    for line in open(os.path.join(W, "steps.tsv")):
        name, rc, dt, log = line.rstrip("\n").split("\t")
        if not rc.lstrip("-").isdigit():  # a step not started ("skipped: time budget")
            steps.append({"step": name, "exit": None, "seconds": int(dt), "log": log, "verdict": rc})
            continue
        rc = int(rc)
        steps.append({"step": name, "exit": rc, "seconds": int(dt), "log": log,
                      "verdict": "ok" if rc == 0 else "TIMEOUT" if rc in (124, 137) else f"FAIL (exit {rc})"})

    def load(p, default=None):
        try:
            with open(p) as f:
                return json.load(f)
        except Exception:
            return default

    info = load(os.path.join(W, "info.json"), {}) or {}
    dev = info.get("device", {})
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""
    commit = git("rev-parse", "--short", "HEAD") or os.environ.get("TFM_COMMIT")
    if not commit:  # a copy of the tree without .git: name the sources by their content instead
        import hashlib
        h = hashlib.sha1()
        for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu*"), recursive=True)
                        + glob.glob(os.path.join(ROOT, "tfm_kernels", "**", "*.py"), recursive=True)):
            h.update(open(p, "rb").read())
        commit = f"unknown (no .git; sources sha1 {h.hexdigest()[:10]})"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if git("rev-parse", "HEAD") else None
    if dirty is None and os.environ.get("TFM_DIRTY"):  # no .git here: the caller says
        dirty = os.environ["TFM_DIRTY"].lower() not in ("0", "false", "no", "")
    smi = ""
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        pass

    # pytest: per (test file, backend) counts from the junit files of every pass
    cases, tests_lost, failures, ran_files = merge_junit(os.path.join(W, "junit"), os.path.join(W, "progress"))
    tests = {}
    for c in cases:
        t = tests.setdefault((c["file"], c["backend"]), {"passed": 0, "failed": 0, "skipped": 0, "lost": 0})
        t[c["status"]] += 1
    for c in tests_lost:
        tests.setdefault((c["file"], c["backend"]), {"passed": 0, "failed": 0, "skipped": 0, "lost": 0})["lost"] += 1
    all_files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
                 if p.endswith("test_build.py") or re.search(os.environ.get("GPU_TESTS", GPU_TESTS), open(p).read())}
    not_run = sorted(all_files - ran_files)
    lost_events = sorted({c["lost_after"] for c in tests_lost} | {c["lost_after"] for c in cases if c.get("lost_after")})

    # sanitizers
    san = {}
    for tool in ("memcheck", "racecheck", "synccheck"):
        p = os.path.join(W, "logs", f"{tool}.txt")
        if not os.path.exists(p):
            san[tool] = "not run" + (" (no GPU)" if GPU_OK != "1" else " (compute-sanitizer missing)")
            continue
        text = open(p, errors="replace").read()
        # memcheck and synccheck end with "ERROR SUMMARY: N errors"; racecheck with
        # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"
        # scripts/sanitize_cases.py runs the cases in one or more child processes, each ending with
        # its own summary: the verdict adds them up.
        errs, hazards, procs = sanitizer_counts(text)
        st = next((s for s in steps if s["step"] == tool), {})
        lost = re.findall(r"^pass \d+: CUDA context lost after (\S+)", text, re.M)
        tail = f" ({procs} processes; context lost after {', '.join(lost)})" if lost else f" ({procs} processes)" if procs > 1 else ""
        if st.get("exit") in (124, 137):
            san[tool] = f"TIMEOUT after {st.get('seconds')}s" + (f"; {errs} errors so far" if errs else "")
        elif st.get("exit") == 2:  # scripts/sanitize_cases.py: no row ran (no usable GPU)
            san[tool] = "nothing ran (exit 2; see its log)"
        elif errs is None:
            san[tool] = f"no summary (exit {st.get('exit')})"
        elif errs == 0 and not hazards:
            san[tool] = "clean (0 errors)" + tail + ("" if st.get("exit") == 0 else
                                                     f"; script exit {st.get('exit')}: a result was wrong or a row could not run")
        else:
            san[tool] = f"{errs} errors" + (f", {hazards} hazards" if hazards else "") + tail

    # Nsight Compute (steps `profile_*`): the rows of its --csv details page whose metric name says what
    # the docs' open questions rest on (matmul 14's prediction, what holds matmul 11 and attention 13).
    PROFILE_KEYS = re.compile(r"Issue Slots Busy|Issued Warp Per Scheduler|No Eligible|Executed Ipc Active|"
                              r"FMA|Tensor|L2 Cache Throughput|DRAM Throughput|Memory Throughput|"
                              r"Compute \(SM\) Throughput|Duration|SM Frequency|Bank Conflicts|"
                              r"Executed Instructions$|Stall (Long Scoreboard|Barrier|MIO Throttle|Short Scoreboard|"
                              r"Math Pipe Throttle|Not Selected|Wait)", re.I)
    def profile_rows(path):
        import csv
        if not os.path.exists(path):
            return []
        try:
            lines = [ln for ln in open(path, errors="replace") if ln.startswith('"')]
            rows = []
            for r in csv.DictReader(lines):
                name = r.get("Metric Name") or ""
                if PROFILE_KEYS.search(name):
                    rows.append({"kernel": (r.get("Kernel Name") or "").split("(")[0].split("<")[0].split()[-1],
                                 "metric": name, "unit": r.get("Metric Unit"), "value": r.get("Metric Value")})
            return rows
        except Exception as e:
            return [{"kernel": "-", "metric": f"unreadable ({e})", "unit": "", "value": ""}]

    check = load(os.path.join(W, "check.json"), {}) or {}
    bench = load(os.path.join(W, "bench", "bench.json"), {}) or {}
    summary = {
        "gpu": dev.get("name") or (smi.split(",")[0] if smi else None), "gpu_usable": GPU_OK == "1",
        "gpu_detail": dev.get("detail"), "compute_capability": dev.get("compute_capability"),
        "driver": info.get("cuda_driver"), "driver_version": smi.split(",")[-1].strip() if smi else None,
        "cuda_runtime": info.get("cuda_runtime"), "nvrtc": info.get("nvrtc"), "cupy": info.get("cupy"),
        "torch": info.get("torch"), "commit": commit, "dirty": dirty,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": int(time.time() - int(T0)),
        "backends": info.get("backends"), "steps": steps,
        "tests": [{"file": f, "backend": b, **c} for (f, b), c in sorted(tests.items())],
        "tests_not_run": not_run, "test_failures": failures[:100],
        "tests_lost": [c["test"] for c in tests_lost], "context_lost": {"tests": lost_events,
                                                                         "check": check.get("context_lost") or []},
        "sanitizers": san,
        "check": [{k: r.get(k) for k in ("op", "variant", "backend", "passed", "failed", "not_applicable",
                                         "max_err", "worst_ratio", "status")} for r in check.get("rows", [])],
        "check_error": check.get("error"),
        "bench_copy_gbs": bench.get("copy_gbs"),
        "profile": {op: profile_rows(os.path.join(W, "logs", f"profile_{op}.csv")) for op in ("matmul", "attention", "hopper")},
        "bench": [m for m in bench.get("measurements", []) if m.get("kind") != "ceiling"],
    }
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)

    L = [f"# tfm-kernels GPU check: {summary['gpu'] or 'NO GPU'}", ""]
    L.append(f"{summary['date']}, commit {commit}{' (+ uncommitted changes)' if dirty else ''}, "
             f"driver {summary['driver_version'] or summary['driver']}, CUDA runtime {summary['cuda_runtime']}, "
             f"NVRTC {summary['nvrtc']}, CuPy {summary['cupy']}, torch {summary['torch']}; {summary['seconds']} s.")
    if GPU_OK != "1":
        L += ["", f"**No usable GPU**: {dev.get('detail')}. Only the build and the tests that need no GPU ran; "
                  "every GPU test was skipped with that reason."]
    L += ["", "## Steps", "", "| step | verdict | seconds | log |", "|---|---|---:|---|"]
    L += [f"| {s['step']} | {s['verdict']} | {s['seconds']} | {s['log']} |" for s in steps]
    L += ["", "## Tests (pytest, per file and backend)", "",
          "| file | backend | passed | failed | skipped | not run (context lost) |", "|---|---|---:|---:|---:|---:|"]
    L += [f"| {t['file']} | {t['backend']} | {t['passed']} | {t['failed']} | {t['skipped']} | {t['lost'] or ''} |"
          for t in summary["tests"]]
    if lost_events or summary["context_lost"]["check"]:
        L += ["", "A kernel fault lost the CUDA context (every later call in that process fails); what it kept "
                  "from running was rerun in a fresh process (conftest.py, tfm-kernels check --isolate):", ""]
        L += [f"- tests: after {e}" for e in lost_events]
        L += [f"- check pass {e.get('pass')}: " + (f"after {e['variant']}: {e['error']}" if "variant" in e else e.get("error", ""))
              for e in summary["context_lost"]["check"]]
        if tests_lost:
            L.append(f"- {len(tests_lost)} tests could not be rerun in time: " + ", ".join(c["test"] for c in tests_lost[:20]))
    if not_run:
        L += ["", "Not run (timed out or crashed before writing results): " + ", ".join(not_run)]
    if failures:
        L += ["", "Failures:", ""] + [f"- {x}" for x in failures[:40]]
    L += ["", "## Sanitizers (scripts/sanitize_cases.py: every variant once, both backends)", ""]
    L += [f"- {k}: {v}" for k, v in san.items()]
    L += ["", "## tfm-kernels check --quick", ""]
    if summary["check"]:
        L += ["| op | variant | backend | passed | n/a | max err | err/tol | status |", "|---|---|---|---:|---:|---:|---:|---|"]
        L += [f"| {r['op']} | {r['variant']} | {r['backend']} | {r['passed']}/{(r['passed'] or 0) + (r['failed'] or 0)} | "
              f"{r['not_applicable']} | {r['max_err']:.2e} | {r['worst_ratio']:.2f} | {r['status']} |"
              for r in summary["check"] if r.get("max_err") is not None]
    else:
        L.append(f"did not run: {summary['check_error'] or 'see check.txt'}")
    L += ["", "## tfm-kernels bench --quick", ""]
    if summary["bench"]:
        L.append(f"Measured device-to-device copy: {summary['bench_copy_gbs']:.0f} GB/s.")
        L += ["", "| op | case | who | backend | time (us) | throughput | % ceiling | vs peer | status |",
              "|---|---|---|---|---:|---:|---:|---:|---|"]
        shown = [m for m in summary["bench"] if not str(m.get("status", "")).startswith("n/a")]
        for m in shown:
            t = f"{m['median_ms'] * 1e3:.1f}" if m.get("median_ms") else ""
            tp = f"{m['throughput']:.1f} {m['unit']}" if m.get("throughput") else ""
            pc = f"{m['pct_ceiling']:.0f}%" if m.get("pct_ceiling") else ""
            vp = f"{m['vs_peer']:.2f}x" if m.get("vs_peer") else ""
            cells = [m["op"], m["label"], m["who"], m.get("backend") or "", t, tp, pc, vp, str(m["status"])[:60]]
            L.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        if len(shown) < len(summary["bench"]):
            L += ["", f"{len(summary['bench']) - len(shown)} pairs that do not apply (dtype, shape, peer-only cases) "
                      "are left out here; bench.json lists them."]
    else:
        L.append("did not run (no GPU, or see bench.txt)")
    for op, what in (("matmul", "matmul 8, 14 (fp32) and 11, 13 (fp16), 4096^3 NN"),
                     ("attention", "fp16 attention forward B4 H16 N4096 D128: variant 13 and SDPA's flash kernel"),
                     ("hopper", "the wgmma attention pair, same shape: forward 14 and backward 13")):
        rows = summary["profile"][op]
        L += ["", f"## Profile: {what} (ncu, scripts/profile_cases.py {op})", ""]
        if not rows:
            L.append(f"did not run (no GPU or no ncu; see profile_{op}.csv in logs.tar.gz)")
            continue
        kernels = sorted({r["kernel"] for r in rows})
        metrics = list(dict.fromkeys((r["metric"], r["unit"]) for r in rows))
        vals = {(r["kernel"], r["metric"]): r["value"] for r in rows}
        L += ["| metric | unit | " + " | ".join(kernels) + " |", "|---|---|" + "---:|" * len(kernels)]
        L += [f"| {m} | {u or ''} | " + " | ".join(str(vals.get((k, m), "")) for k in kernels) + " |" for m, u in metrics]
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    write_junit(cases, tests_lost, os.path.join(OUT, "junit.xml"))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--remaining"]:  # gpu_check.sh, after a pass was killed: what is left
        for nodeid in remaining(sys.argv[2]):  # nothing at all when nothing is left: an empty
            print(nodeid)                          # line would make pytest collect everything
        sys.exit(0)
    sys.exit(main(*sys.argv[1:7]))
