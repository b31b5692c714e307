"""``tfm-kernels check``: every variant of every op, on both backends, against numpy_ref.

    tfm-kernels check                       # everything, both backends
    tfm-kernels check --op softmax --quick  # softmax and softmax_backward, fewer shapes
    tfm-kernels check --backend cupy --variant 3_warp_vec4 --json out.json

Prints one row per (op, variant, backend): cases passed, cases not applicable, the worst error and
the worst error as a fraction of its tolerance; then every failure with its case. Exit status 0
when everything that ran passed, 1 on any failure (a variant marked ``broken`` in the registry is
reported but does not fail the run), 2 when nothing could run (no GPU: the reason is printed).

The protocol an op module follows
---------------------------------
Every module that ``tfm_kernels/_ops.py`` imports may define::

    def check_cases(rng: numpy.random.Generator, quick: bool) -> Iterable[Case]

yielding :class:`Case` objects (or plain 5-tuples in the same order)::

    Case(op, description, run, reference, tolerance)

op
    the registry op the case exercises (``"softmax"``, ``"softmax_backward"``); every variant of
    that op is run on it.
description
    what is special about the inputs, short: ``"fp32 97x1025, row 3 all -inf"``.
run
    ``run(backend: str, variant: str) -> output`` (a CuPy array, or a tuple of them). It calls the
    public API (``tfm_kernels.softmax(x, backend=backend, variant=variant, out=out)``) with inputs
    the generator made once for the case (on the device, drawn from ``rng``) and a fresh ``out``
    filled with NaN, so an element the kernel never writes fails the comparison. A variant that
    cannot take the case raises TypeError/ValueError with a message starting ``"variant:"``
    (``_registry.choose`` does this); that is recorded as not applicable, not as a failure.
reference
    the float64 result from ``numpy_ref`` (an array, or a tuple matching run's outputs), or a
    zero-argument callable returning it (called once, only if some variant runs).
tolerance
    ``tolerance(out: np.ndarray, ref: np.ndarray) -> (ok, max_err, tol)``, or a tuple of them, one
    per output. Build it with :func:`fp32_rule` (relative 1e-6, scaled by sqrt(reduction length))
    or :func:`lowprec_rule` (2x the error of the same computation done in NumPy at the kernel's
    precision, plus a floor): the same rules as ``tests/helpers.py``.

``quick`` asks for a handful of small cases (the GPU check runs ``--quick``: seconds per op); the
full set should still cover the awkward sizes (1, 17, 97, 129, 1025, 4097, ...) and special values.
Seeds: each module gets ``default_rng([seed, crc32(module name)])``, so a failure reproduces with
the same ``--seed`` and adding cases to one module does not change another's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import types
import zlib
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

Verdict = tuple[bool, float, float]  # (ok, max abs error, tolerance)


class Case(NamedTuple):
    op: str
    description: str
    run: Callable[[str, str], Any]
    reference: Any
    tolerance: Any


# ---------------------------------------------------------------------------------------------
# Tolerance rules (the formulas of tests/helpers.py)
# ---------------------------------------------------------------------------------------------

def _host(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def errors(out, ref) -> tuple[float, float, float]:
    """(max abs error, mean abs error, max |ref| over finite entries), in float64. Matching
    infinities agree; NaN anywhere in out counts as an infinite error."""
    out = _host(out).astype(np.float64)
    ref = _host(ref).astype(np.float64)
    if out.shape != ref.shape:
        return math.inf, math.inf, 0.0
    both_inf = np.isinf(out) & np.isinf(ref) & (np.sign(out) == np.sign(ref))
    diff = np.where(both_inf, 0.0, np.abs(out - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = float(np.max(np.abs(np.where(np.isfinite(ref), ref, 0.0)), initial=0.0))
    return float(np.max(diff, initial=0.0)), float(np.mean(diff)) if diff.size else 0.0, scale


def fp32_rule(reduction: int = 1, rtol: float = 1e-6) -> Callable[[Any, Any], Verdict]:
    """max |out - ref| <= rtol * sqrt(reduction) * max |ref|."""
    def rule(out, ref) -> Verdict:
        mx, _, scale = errors(out, ref)
        tol = rtol * max(1.0, math.sqrt(reduction)) * max(scale, 1e-30) + 1e-30
        return mx <= tol, mx, tol
    return rule


def lowprec_rule(baseline, floor: float = 1e-5) -> Callable[[Any, Any], Verdict]:
    """max |out - ref| <= 2 * max |baseline - ref| + floor * max |ref|, where ``baseline`` is the
    same computation done in NumPy at the kernel's precision (FlashAttention's rule)."""
    def rule(out, ref) -> Verdict:
        mx, _, scale = errors(out, ref)
        base, _, _ = errors(baseline, ref)
        tol = 2.0 * base + floor * max(scale, 1e-30)
        return mx <= tol, mx, tol
    return rule


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

@dataclass
class Row:
    op: str
    variant: str
    backend: str
    passed: int = 0
    failed: int = 0
    not_applicable: int = 0
    max_err: float = 0.0
    worst_ratio: float = 0.0
    broken: str | None = None
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped_budget: int = 0
    # Set on the (op, variant, backend) whose failure left the CUDA context unusable: the error.
    context_error: str | None = None
    # Set on the rows that did not run (or not to the end) because of that: the culprit's name.
    lost: str | None = None

    @property
    def status(self) -> str:
        if self.failed:
            return "known broken" if self.broken else "FAIL"
        if self.lost:
            return "not run (context lost)"
        if self.passed:
            return "pass"
        return "n/a"


def op_modules() -> list[types.ModuleType]:
    from . import _ops

    # By name, not by the attribute's value: `from . import softmax` in _ops binds whatever the
    # package attribute is, and tfm_kernels/__init__.py rebinds `softmax` and `matmul` to the
    # functions, so vars(_ops) holds functions there, not the modules that define check_cases.
    return [sys.modules[f"{__package__}.{name}"] for name in vars(_ops)
            if not name.startswith("_") and f"{__package__}.{name}" in sys.modules]


def _matches(op: str, wanted: list[str] | None) -> bool:
    # "--op softmax" selects softmax and softmax_backward; "--op attention" both attention ops.
    return not wanted or any(op == w or op.startswith(w + "_") for w in wanted)


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _verdicts(case: Case, outs: tuple, refs: tuple) -> list[Verdict]:
    rules = case.tolerance if isinstance(case.tolerance, (tuple, list)) else (case.tolerance,) * len(refs)
    if len(outs) != len(refs) or len(rules) != len(refs):
        return [(False, math.inf, 0.0)]
    return [rule(_host(o), r) for rule, o, r in zip(rules, outs, refs)]


def _guarded(cases: Iterable, module: str, rows: dict) -> Iterable:
    """The cases of one module; if building them raises (a bug in check_cases, a CUDA error while
    making inputs), a failing row records it and the other modules still run."""
    it = iter(cases)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as e:
            row = rows.setdefault((module, "check_cases", "-"), Row(module, "check_cases", "-"))
            row.failed += 1
            row.failures.append(f"check_cases raised {type(e).__name__}: {e}")
            return
        yield item


class _ContextLost(Exception):
    pass


def run_checks(ops: list[str] | None = None, backends: list[str] | None = None,
               variants: list[str] | None = None, quick: bool = False, seed: int = 0,
               log: Callable[[str], None] | None = None, limit: int | None = None,
               budget: float | None = None, skip: list[str] | None = None) -> list[Row]:
    """Run every case of every selected op on every variant and backend; see the module docstring.
    ``variants``/``skip``: see :func:`tfm_kernels._registry.selected`. ``limit``: run each (op,
    variant, backend) on at most this many cases it can take, the first ones that apply
    (scripts/sanitize_cases.py uses 1: every variant runs once, an fp16-only variant on the first
    fp16 case). ``budget``: seconds; each (phase, op module) gets an equal share of what is left,
    and cases past its share are counted in ``Row.skipped_budget`` instead of run
    (scripts/gpu_check.sh must finish in minutes).

    Two phases: the variants already seen passing on a GPU, then the first-run ones
    (``_registry.first_run``), so a fault in a never-run kernel cannot cost the others their
    verdict. After any failure the CUDA context is probed (``_backend.context_lost``); when it is
    gone, nothing more runs: the culprit's row gets ``context_error`` and every selected row that
    had not finished gets ``lost`` (status "not run (context lost)"); :func:`run_isolated` reruns
    those in a fresh process."""
    from . import _backend
    from ._registry import first_run, selected
    from ._registry import ops as registry_ops
    from ._registry import variants as registry_variants

    avail = _backend.available()
    backends = [b for b in (backends or list(_backend.BACKENDS)) if b in avail]
    if not backends:
        raise RuntimeError("no backend can run: " + "; ".join(
            f"{k}: {v[1]}" for k, v in _backend.status().items() if not v[0]) or "none selected")
    cc = _backend.get(backends[0]).cc
    rows: dict[tuple[str, str, str], Row] = {}
    start = time.perf_counter()
    mods = [m for m in op_modules() if hasattr(m, "check_cases")]
    units = [(phase, mod) for phase in (False, True) for mod in mods]
    finished: set[tuple[str, str, str]] = set()
    culprit = None

    def row_of(op, v, be) -> Row:
        return rows.setdefault((op, v.key, be), Row(op, v.key, be, broken=v.broken))

    try:
        for k, (phase, mod) in enumerate(units):
            rng = np.random.default_rng([seed, zlib.crc32(mod.__name__.encode())])  # same cases each phase
            deadline = None
            if budget is not None:
                now = time.perf_counter()
                deadline = now + max(0.0, budget - (now - start)) / (len(units) - k)
            touched: set[tuple[str, str, str]] = set()
            for raw in _guarded(mod.check_cases(rng, quick), mod.__name__, rows):
                case = Case(*raw)
                if not _matches(case.op, ops):
                    continue
                todo = [(v, be) for v in registry_variants(case.op) if first_run(v) == phase
                        for be in backends if selected(v, be, variants, skip)]
                if not todo:
                    continue
                if deadline is not None and time.perf_counter() > deadline:
                    for v, be in todo:
                        row_of(case.op, v, be).skipped_budget += 1
                    continue
                refs = None
                for v, be in todo:
                    row = row_of(case.op, v, be)
                    touched.add((case.op, v.key, be))
                    if limit is not None and row.passed + row.failed >= limit:
                        continue
                    if cc < v.arch:
                        row.not_applicable += 1
                        continue
                    t0 = time.perf_counter()
                    try:
                        outs = _as_tuple(case.run(be, v.key))
                        if refs is None:
                            ref = case.reference() if callable(case.reference) else case.reference
                            refs = tuple(np.asarray(r, dtype=np.float64) for r in _as_tuple(ref))
                        verdicts = _verdicts(case, outs, refs)
                    except (TypeError, ValueError) as e:
                        if str(e).startswith("variant:"):
                            row.not_applicable += 1
                            continue
                        verdicts, err = [(False, math.inf, 0.0)], f"{type(e).__name__}: {e}"
                    except Exception as e:  # a CUDA error: record it and keep going
                        verdicts, err = [(False, math.inf, 0.0)], f"{type(e).__name__}: {e}"
                        if log:
                            log(traceback.format_exc(limit=3))
                    else:
                        err = None
                    row.seconds += time.perf_counter() - t0
                    ok = all(vd[0] for vd in verdicts)
                    for _, mx, tol in verdicts:
                        row.max_err = max(row.max_err, mx)
                        row.worst_ratio = max(row.worst_ratio, mx / tol if tol > 0 else math.inf)
                    if ok:
                        row.passed += 1
                    else:
                        row.failed += 1
                        detail = err or ", ".join(f"max err {mx:.3e} > tol {tol:.3e}" for ok_, mx, tol in verdicts if not ok_)
                        row.failures.append(f"{case.description}: {detail}")
                    if log:
                        log(f"{case.op}/{v.key} [{be}] {case.description}: {'ok' if ok else 'FAIL'}")
                    if not ok and (lost := _backend.context_lost()):
                        row.context_error = lost
                        culprit = (case.op, v.key, be)
                        raise _ContextLost
            finished |= touched
    except _ContextLost:
        name = f"{culprit[0]}/{culprit[1]}:{culprit[2]}"
        if log:
            log(f"CUDA context lost after {name}: {rows[culprit].context_error}; the rest is not run here")
        for op in registry_ops():
            if not _matches(op, ops):
                continue
            for v in registry_variants(op):
                for be in backends:
                    key = (op, v.key, be)
                    if key != culprit and key not in finished and selected(v, be, variants, skip):
                        row_of(op, v, be).lost = name
    return list(rows.values())


def context_lost(rows: list[Row]) -> Row | None:
    """The row whose failure lost the CUDA context, if one did."""
    return next((r for r in rows if r.context_error), None)


def run_isolated(child: Callable[[list[str] | None, list[str], float | None, str], list[str]],
                 budget: float | None = None, max_passes: int = 8,
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Run a check in child processes until nothing is left that a lost context kept from running.

    ``child(selection, skip, budget_left, json_path)`` returns the command of one pass: a process
    that runs :func:`run_checks` (``tfm-kernels check``, or scripts/sanitize_cases.py under
    compute-sanitizer) on ``selection`` (None: the caller's own; else ``op/key:backend`` entries)
    without ``skip``, and writes its rows to ``json_path``. When a pass reports a lost context,
    the culprit is skipped from then on and the rows it kept from running go to a fresh process.
    This process itself never touches the GPU. Returns ``{"rows": [...], "context_lost": [...],
    "passes": n, "returncodes": [...]}``, the rows as dicts, a later pass's row replacing a row it
    was asked to rerun."""
    import os
    import subprocess
    import tempfile

    merged: dict[tuple, dict] = {}
    events: list[dict] = []
    selection: list[str] | None = None
    skip: list[str] = []
    start = time.perf_counter()
    passes = 0
    codes: list[int] = []
    while passes < max_passes:
        left = None if budget is None else budget - (time.perf_counter() - start)
        if left is not None and left <= 1:
            log(f"check: out of time after {passes} passes; {len(selection or [])} rows not rerun")
            break
        passes += 1
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "pass.json")
            argv = child(selection, skip, left, path)
            rc = subprocess.run(argv).returncode
            codes.append(rc)
            try:
                with open(path) as f:
                    part = json.load(f)
            except (OSError, ValueError):
                part = {"rows": [], "error": f"pass {passes} ({' '.join(argv[:6])} ...) exited {rc} "
                                             "without writing its results"}
        if part.get("error"):
            events.append({"pass": passes, "error": part["error"]})
            break
        rows = part.get("rows", [])
        if selection is not None:  # rows asked for again and not produced (nothing applied) are done
            for key in [k for k, r in merged.items() if r.get("lost")
                        and f"{k[0]}/{k[1]}:{k[2]}" in selection]:
                del merged[key]
        for r in rows:
            merged[(r["op"], r["variant"], r["backend"])] = r
        bad = next((r for r in rows if r.get("context_error")), None)
        if bad is None:
            break
        name = f"{bad['op']}/{bad['variant']}:{bad['backend']}"
        events.append({"pass": passes, "variant": name, "error": bad["context_error"]})
        skip.append(name)
        selection = sorted(f"{r['op']}/{r['variant']}:{r['backend']}" for r in rows if r.get("lost"))
        log(f"check pass {passes}: CUDA context lost after {name} ({bad['context_error']}); "
            f"{len(selection)} rows go to a fresh process")
        if not selection:
            break
    return {"rows": list(merged.values()), "context_lost": events, "passes": passes, "returncodes": codes}


def rows_from_dicts(dicts: list[dict]) -> list[Row]:
    names = {f.name for f in fields(Row)}
    return [Row(**{k: v for k, v in d.items() if k in names}) for d in dicts]


def format_table(rows: list[Row]) -> str:
    head = ("op", "variant", "backend", "passed", "n/a", "max err", "err/tol", "status", "not run (time)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ran = r.passed + r.failed
        lines.append(f"| {r.op} | {r.variant} | {r.backend} | {r.passed}/{ran} | {r.not_applicable} | "
                     f"{r.max_err:.2e} | {r.worst_ratio:.2f} | {r.status} | {r.skipped_budget or ''} |")
    fails = [(r, f) for r in rows for f in r.failures]
    if fails:
        lines.append("")
        lines.append("Failures:")
        for r, f in fails[:200]:
            tag = " (known broken: " + r.broken + ")" if r.broken else ""
            lines.append(f"- {r.op}/{r.variant} [{r.backend}]{tag}: {f}")
    for r in rows:
        if r.context_error:
            lost = sum(1 for x in rows if x.lost == f"{r.op}/{r.variant}:{r.backend}")
            lines += ["", f"CUDA context lost after {r.op}/{r.variant} [{r.backend}]: {r.context_error}. "
                          f"{lost} rows marked 'not run (context lost)' could not run in that process "
                          "(`--isolate` reruns them in a fresh one)."]
    return "\n".join(lines)


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--op", action="append", help="op to check (repeatable; 'softmax' includes softmax_backward)")
    p.add_argument("--backend", choices=["ext", "cupy", "both"], default="both")
    p.add_argument("--variant", action="append",
                   help="variant key, name or number, or op/key[:backend] (repeatable)")
    p.add_argument("--skip", action="append", help="a variant not to run, same forms as --variant (repeatable)")
    p.add_argument("--quick", action="store_true", help="a few small cases per op")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="stop starting new cases after this long (shared equally among op modules)")
    p.add_argument("--isolate", action="store_true",
                   help="run in child processes: a kernel fault that loses the CUDA context stops only "
                        "its own process, and what it kept from running is rerun in a fresh one")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print every case as it runs")


def report(rows: list[Row], seconds: float, json_path: str | None, extra: dict | None = None) -> int:
    """Print the table and the totals, write ``json_path`` (the rows, and ``context_lost``: what
    lost the CUDA context, per pass); return the exit status of ``tfm-kernels check``: 0 all
    passed, 1 a failure or a row a lost context kept from running, 2 nothing ran."""
    print(format_table(rows))
    failed = [r for r in rows if r.failed and not r.broken]
    lost = [r for r in rows if r.lost and not r.failed]
    ran = sum(r.passed + r.failed for r in rows)
    print(f"\n{ran} runs, {sum(r.passed for r in rows)} passed, {sum(r.failed for r in rows)} failed "
          f"({len(failed)} rows failing, not counting known-broken variants) in {seconds:.1f}s"
          + (f"; {sum(r.skipped_budget for r in rows)} not run (time budget)" if any(r.skipped_budget for r in rows) else "")
          + (f"; {len(lost)} rows not run (CUDA context lost)" if lost else ""))
    if json_path:
        culprit = context_lost(rows)
        doc = {"rows": [dict(vars(r), status=r.status) for r in rows], **(extra or {})}
        doc.setdefault("context_lost", [] if culprit is None else [{
            "pass": 1, "variant": f"{culprit.op}/{culprit.variant}:{culprit.backend}", "error": culprit.context_error}])
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    if ran == 0:
        print("nothing ran: no op module defines check_cases for this selection", file=sys.stderr)
        return 2
    return 1 if failed or lost else 0


def child_options(args: argparse.Namespace, selection: list[str] | None, skip: list[str],
                  budget: float | None) -> list[str]:
    """The options of one child pass of an isolated run, from the parent's (``add_check_arguments``,
    scripts/sanitize_cases.py's, or ``bench``'s: any parser with ``op``, ``backend``, ``variant``,
    ``skip``; a backend of None is left to the child's default)."""
    argv = [f"--op={o}" for o in args.op or []] + ([f"--backend={args.backend}"] if args.backend else [])
    argv += [f"--variant={v}" for v in (selection if selection is not None else args.variant or [])]
    argv += [f"--skip={v}" for v in [*(args.skip or []), *skip]]
    if getattr(args, "quick", False):
        argv.append("--quick")
    if getattr(args, "seed", None) is not None:
        argv.append(f"--seed={args.seed}")
    if budget is not None:
        argv.append(f"--budget={budget:.0f}")
    return argv


def run_check(args: argparse.Namespace) -> int:
    backends = None if args.backend == "both" else [args.backend]
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
    t0 = time.perf_counter()
    if args.isolate:
        def child(selection, skip, budget, path):
            return [sys.executable, "-m", "tfm_kernels", "check", *child_options(args, selection, skip, budget),
                    f"--json={path}"] + (["-v"] if args.verbose else [])

        res = run_isolated(child, budget=args.budget)
        errors = [e["error"] for e in res["context_lost"] if "variant" not in e]
        if errors and not res["rows"]:
            if errors[0].startswith("pass "):  # else the child has said it already
                print(f"tfm-kernels check: {errors[0]}", file=sys.stderr)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"error": errors[0], "rows": []}, f, indent=1)
            return 2
        print(f"(--isolate: {res['passes']} processes)")
        return report(rows_from_dicts(res["rows"]), time.perf_counter() - t0, args.json,
                       {"context_lost": res["context_lost"], "passes": res["passes"]})
    try:
        rows = run_checks(args.op, backends, args.variant, args.quick, args.seed, log, budget=args.budget,
                          skip=args.skip)
    except RuntimeError as e:
        print(f"tfm-kernels check: {e}", file=sys.stderr)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"error": str(e), "rows": []}, f, indent=1)
        return 2
    return report(rows, time.perf_counter() - t0, args.json)
