"""The benchmark runner behind ``tfm-kernels bench``: timing, the memory ceiling, reports and plots.

How a figure is measured
------------------------
* CUDA events on CuPy's current stream around each call; 3 warm-up calls first (compilation,
  caches, clocks), then ``repeats`` timed calls (20; 10 with ``--quick``); the median is reported
  (and min/max kept in the JSON).
* Inputs rotate: a case builds as many independent input sets as it takes for their total size to
  exceed 3x the L2 cache (H200: 60 MiB L2, so >= 180 MiB), capped at 24 sets, and call i uses set
  i mod n. A softmax over a 16 MiB matrix would otherwise be served partly from L2 and read faster
  than HBM allows.
* The ceiling is measured in the same run: a device-to-device ``cudaMemcpyAsync`` of a 1 GiB buffer
  (256 MiB with --quick) timed the same way, bytes read + bytes written over time.
  The peer (``torch.softmax``, cuBLAS through torch, SDPA) is timed the same way on the same
  inputs, so the ratio "ours / peer" compares like with like.
* Every configuration is verified before it is timed (when the case provides ``verify``): a wrong
  kernel is reported as WRONG, never as fast.

The protocol an op's benchmark module follows
---------------------------------------------
``tfm_kernels/bench/<op>.py`` (written by each op's engineer) defines::

    def cases(quick: bool) -> Iterable[BenchCase]

BenchCase fields (see the dataclass below):
    op        the registry op whose variants are timed (``"softmax"``)
    label     the configuration, short (``"8192x8192 fp32"``)
    series    the plot this point belongs to (``"fp32, 8192 rows"``): one PNG per (op, series),
              x-axis ``x`` (labelled ``x_label``), one line per variant, the peer dashed, the
              ceiling dotted
    x, x_label   the point's position on that plot's x-axis (``cols``, ``"row length"``)
    unit      ``"GB/s"`` (memory-bound: ``work`` is bytes moved) or ``"TFLOP/s"`` (``work`` is
              FLOPs); take both from ``tfm_kernels.costs``
    work      bytes or FLOPs per call
    footprint bytes of one input set (drives the rotation count)
    make_inputs()  -> one input set (any object; device arrays, outputs preallocated)
    run(inputs, backend, variant)   one call of our op (``variant`` is a registry key); a variant
              that cannot take the case raises TypeError/ValueError starting with "variant:"
    peer(inputs) / peer_name   the library call a user would make instead, or None
    verify(inputs, out) -> None | str   None when ``out`` (what ``run`` returned) is right,
              else what is wrong (compare with the peer's result or a float64 reference)
    ceiling   a fixed ceiling in ``unit`` (e.g. the datasheet tensor-core peak for TFLOP/s), or
              None: for GB/s the measured copy bandwidth is used

Results: ``bench.json`` (every measurement, the device and versions), ``bench.md`` (a Markdown
table: time, throughput, % of ceiling, ratio to the peer) and ``<op>_<series>.png`` plots under
``--out``.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

L2_ROTATE_FACTOR = 3
MAX_INPUT_SETS = 24
WARMUP = 3


@dataclass
class BenchCase:
    op: str
    label: str
    series: str
    x: float
    x_label: str
    unit: str  # "GB/s" or "TFLOP/s"
    work: float
    footprint: int
    make_inputs: Callable[[], Any]
    run: Callable[[Any, str, str], Any]
    peer: Callable[[Any], Any] | None = None
    peer_name: str | None = None
    verify: Callable[[Any, Any], str | None] | None = None
    ceiling: float | None = None


@dataclass
class Measurement:
    op: str
    label: str
    series: str
    x: float
    x_label: str
    unit: str
    who: str  # variant key, or the peer's name
    kind: str  # "variant" | "peer" | "ceiling"
    backend: str | None
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    throughput: float | None = None
    pct_ceiling: float | None = None
    vs_peer: float | None = None
    status: str = "ok"  # ok | WRONG: ... | n/a: ... | error: ...
    repeats: int = 0
    input_sets: int = 0


def cuda_torch():
    """torch, when it is installed and sees a CUDA device (the peers' library); else None, and the
    op's cases run without their torch peers."""
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


def _scale(unit: str) -> float:
    return {"GB/s": 1e9, "TFLOP/s": 1e12}[unit]


def time_calls(fn: Callable[[int], Any], repeats: int, warmup: int = WARMUP) -> list[float]:
    """Milliseconds of each of ``repeats`` calls ``fn(i)`` (after ``warmup`` calls), each bracketed
    by CUDA events on the current stream."""
    import cupy

    for i in range(warmup):
        fn(i)
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    starts = [cupy.cuda.Event() for _ in range(repeats)]
    ends = [cupy.cuda.Event() for _ in range(repeats)]
    for i in range(repeats):
        starts[i].record(stream)
        fn(warmup + i)
        ends[i].record(stream)
    ends[-1].synchronize()
    return [cupy.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + written per second)."""
    import cupy

    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    d2d = cupy.cuda.runtime.memcpyDeviceToDevice

    def copy(_):
        cupy.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, d2d,
                                      cupy.cuda.get_current_stream().ptr)

    ms = time_calls(copy, repeats)
    del src, dst
    return 2 * nbytes / (statistics.median(ms) * 1e-3) / 1e9


def _l2_bytes() -> int:
    import cupy

    try:
        return int(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["l2CacheSize"])
    except Exception:
        return 60 * 2**20


def _input_sets(case: BenchCase, l2: int) -> list[Any]:
    n = max(1, min(MAX_INPUT_SETS, math.ceil(L2_ROTATE_FACTOR * l2 / max(case.footprint, 1))))
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    n = max(1, min(n, int(0.5 * free // max(case.footprint, 1))))  # keep half the memory free
    return [case.make_inputs() for _ in range(n)]


class ContextLost(Exception):
    """A measurement failed and took the CUDA context with it (``_backend.context_lost``)."""

    def __init__(self, culprit: Measurement, error: str, measurements: list[Measurement]):
        super().__init__(error)
        self.culprit, self.error, self.measurements = culprit, error, measurements


def bench_case(case: BenchCase, variants: list, backends: list[str], repeats: int, l2: int,
               ceiling_gbs: float, log: Callable[[str], None]) -> list[Measurement]:
    """Time every variant on every backend, and the peer, for one case. Raises
    :class:`ContextLost` (with what was measured so far) when a failure lost the CUDA context."""
    import cupy

    from .. import _backend

    sets = _input_sets(case, l2)
    base = dict(op=case.op, label=case.label, series=case.series, x=case.x, x_label=case.x_label,
                unit=case.unit)
    ceiling = case.ceiling if case.ceiling is not None else (ceiling_gbs if case.unit == "GB/s" else None)
    out: list[Measurement] = []

    def measure(m: Measurement, call: Callable[[Any], Any], verify: bool) -> Measurement:
        try:
            if verify and case.verify is not None:
                res = call(sets[0])
                cupy.cuda.get_current_stream().synchronize()
                why = case.verify(sets[0], res)
                if why:
                    m.status = f"WRONG: {why}"
                    return m
            ms = time_calls(lambda i: call(sets[i % len(sets)]), repeats)
        except (TypeError, ValueError) as e:
            m.status = f"n/a: {e}" if str(e).startswith("variant:") else f"error: {type(e).__name__}: {e}"
            return m
        except Exception as e:
            m.status = f"error: {type(e).__name__}: {e}"
            if err := _backend.context_lost():
                raise ContextLost(m, err, out + [m]) from e
            return m
        m.median_ms, m.min_ms, m.max_ms = statistics.median(ms), min(ms), max(ms)
        m.repeats, m.input_sets = len(ms), len(sets)
        m.throughput = case.work / (m.median_ms * 1e-3) / _scale(case.unit)
        if ceiling:
            m.pct_ceiling = 100.0 * m.throughput / ceiling
        return m

    peer_tp = None
    if case.peer is not None:
        pm = measure(Measurement(**base, who=case.peer_name or "peer", kind="peer", backend=None),
                     case.peer, verify=False)
        peer_tp = pm.throughput
        out.append(pm)
        log(f"  {case.op} {case.label}: {pm.who}: {_fmt(pm)}")
    for v in variants:
        for be in backends:
            m = measure(Measurement(**base, who=v.key, kind="variant", backend=be),
                        lambda s, v=v, be=be: case.run(s, be, v.key), verify=True)
            if m.throughput and peer_tp:
                m.vs_peer = m.throughput / peer_tp
            out.append(m)
            log(f"  {case.op} {case.label}: {v.key} [{be}]: {_fmt(m)}")
    if ceiling:
        out.append(Measurement(**base, who="ceiling", kind="ceiling", backend=None, throughput=ceiling,
                               pct_ceiling=100.0))
    del sets
    cupy.get_default_memory_pool().free_all_blocks()
    return out


def _fmt(m: Measurement) -> str:
    if m.throughput is None:
        return m.status
    s = f"{m.median_ms * 1e3:.1f} us, {m.throughput:.1f} {m.unit}"
    if m.pct_ceiling is not None and m.kind != "ceiling":
        s += f" ({m.pct_ceiling:.0f}% of ceiling)"
    if m.vs_peer is not None:
        s += f", {m.vs_peer:.2f}x peer"
    return s


def environment() -> dict[str, Any]:
    from .. import _backend

    d = _backend.info()
    try:
        d["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).resolve().parents[2], timeout=10).stdout.strip() or None
    except Exception:
        d["commit"] = None
    # A copy of the tree without .git (the GPU machine) gets the commit from the caller.
    d["commit"] = d["commit"] or os.environ.get("TFM_COMMIT")
    d["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return d


def markdown(measurements: list[Measurement], env: dict[str, Any], ceiling_gbs: float) -> str:
    dev = env.get("device", {})
    lines = [f"# tfm-kernels bench: {dev.get('name', 'no device')}",
             "",
             f"{env.get('date')}, commit {env.get('commit')}, CUDA runtime {env.get('cuda_runtime')}, "
             f"driver {env.get('cuda_driver')}, CuPy {env.get('cupy')}, torch {env.get('torch')}. "
             f"Measured device-to-device copy: {ceiling_gbs:.0f} GB/s. CUDA events, median; inputs "
             f"rotated past L2.",
             "",
             "| op | case | who | backend | time (us) | throughput | % ceiling | vs peer | status |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    hidden = 0
    for m in measurements:
        if m.kind == "ceiling":
            continue
        if m.status.startswith("n/a"):  # kept in bench.json; in the table they drown the real rows
            hidden += 1
            continue
        t = f"{m.median_ms * 1e3:.1f}" if m.median_ms is not None else ""
        tp = f"{m.throughput:.1f} {m.unit}" if m.throughput is not None else ""
        pc = f"{m.pct_ceiling:.0f}%" if m.pct_ceiling is not None else ""
        vp = f"{m.vs_peer:.2f}x" if m.vs_peer is not None else ""
        status = m.status if len(m.status) < 80 else m.status[:77] + "..."
        cells = [m.op, m.label, m.who, m.backend or "", t, tp, pc, vp, status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    if hidden:
        lines += ["", f"{hidden} variant/case pairs that do not apply (dtype, shape, peer-only cases) are "
                      "left out of this table; bench.json lists them."]
    return "\n".join(lines) + "\n"


def plot(measurements: list[Measurement], outdir: Path, env: dict[str, Any]) -> list[Path]:
    """One PNG per (op, series): throughput against x, a line per variant (first backend measured),
    the peer dashed, the ceiling dotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    paths = []
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.op, m.series), []).append(m)
    for (op, series), ms in groups.items():
        try:
            paths.append(_plot_one(plt, op, series, ms, outdir, env))
        except Exception as e:  # a plot is a convenience; the JSON and the table are the record
            print(f"plot {op}/{series} failed: {type(e).__name__}: {e}")
    return paths


def _plot_one(plt, op: str, series: str, ms: list[Measurement], outdir: Path, env: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple[str, str, str | None], list[tuple[float, float]]] = {}
    for m in ms:
        if m.throughput is not None:
            lines.setdefault((m.kind, m.who, m.backend), []).append((m.x, m.throughput))
    backends = sorted({k[2] for k in lines if k[0] == "variant"})
    for (kind, who, be), pts in sorted(lines.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        if kind == "variant" and backends and be != backends[0]:
            continue  # both backends run the same machine code; one line per variant
        pts.sort()
        xs, ys = zip(*pts)
        style = {"variant": dict(marker="o", lw=1.5), "peer": dict(ls="--", marker="s", lw=2, color="k"),
                 "ceiling": dict(ls=":", lw=1.5, color="gray")}[kind]
        ax.plot(xs, ys, label=who if kind != "ceiling" else "ceiling (measured copy)" if ms[0].unit == "GB/s"
                else "ceiling", **style)
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)  # throughput from zero: ratios read off the plot honestly
    ax.set_xlabel(ms[0].x_label)
    ax.set_ylabel(ms[0].unit)
    ax.set_title(f"{op}: {series}\n{env.get('device', {}).get('name', '')}, commit {env.get('commit')}",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = outdir / f"{op}_{re.sub(r'[^A-Za-z0-9]+', '_', series).strip('_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(ops: list[str] | None, quick: bool, outdir: Path, backends: list[str] | None = None,
        variants: list[str] | None = None, log: Callable[[str], None] = print,
        budget: float | None = None, skip: list[str] | None = None,
        resume_at: str | None = None) -> dict[str, Any]:
    """Benchmark every case of every selected op; write bench.json, bench.md and plots to outdir.

    ``budget`` (seconds): each op's bench module gets an equal share of the time left and starts no
    case past it (those are listed as skipped). bench.json and bench.md are rewritten after every
    case, so a run cut short by a timeout still leaves its results. ``variants``/``skip``: the rule
    of ``tfm_kernels._registry.selected`` (scripts/gpu_check.sh skips the variants that failed their
    tests in the same run). A failure that loses the CUDA context (``_backend.context_lost``) ends
    the run there: every later measurement would fail whatever its kernel; the cases not run are
    listed as such, and ``result["context_lost"]`` names the culprit and the case (``op|label``)
    from which :func:`run_isolated` resumes in a fresh process (``resume_at``: cases before it
    are not run)."""
    import importlib
    import pkgutil

    from .. import _backend
    from .._registry import selected
    from .._registry import variants as registry_variants

    avail = _backend.available()
    if not avail:
        raise RuntimeError("no backend can run: " + "; ".join(
            f"{k}: {v[1]}" for k, v in _backend.status().items() if not v[0]))
    if backends is None:
        backends = [_backend.get(None).name]
    backends = [b for b in backends if b in avail]
    cc = _backend.get(backends[0]).cc
    outdir.mkdir(parents=True, exist_ok=True)
    repeats = 10 if quick else 20
    env = environment()
    l2 = _l2_bytes()
    ceiling = copy_bandwidth((256 if quick else 1024) * 2**20, repeats)
    log(f"device-to-device copy: {ceiling:.0f} GB/s (the memory ceiling); L2 {l2 / 2**20:.0f} MiB")

    from . import __path__ as bench_path

    mods = []
    for info in sorted(pkgutil.iter_modules(bench_path), key=lambda i: i.name):
        if info.name in ("core",) or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(mod, "cases"):
            mods.append(mod)

    measurements: list[Measurement] = []
    skipped: list[str] = []
    result: dict[str, Any] = {"env": env, "copy_gbs": ceiling, "l2_bytes": l2, "quick": quick,
                              "backends": backends}

    def save():
        result["measurements"] = [asdict(m) for m in measurements]
        result["skipped_for_time"] = skipped
        (outdir / "bench.json").write_text(json.dumps(result, indent=1, default=str))
        lost_note = result.get("context_lost")
        (outdir / "bench.md").write_text(markdown(measurements, env, ceiling)
                                         + (f"\nNot run (time budget): {', '.join(skipped)}\n" if skipped else "")
                                         + (f"\nCUDA context lost after {lost_note['after']} ({lost_note['case']}: "
                                            f"{lost_note['error']}); the cases after it did not run.\n"
                                            if lost_note else ""))

    start = time.perf_counter()
    lost = None
    for k, mod in enumerate(mods):
        deadline = None
        if budget is not None:
            now = time.perf_counter()
            deadline = now + max(0.0, budget - (now - start)) / (len(mods) - k)
        try:
            module_cases = list(mod.cases(quick))  # building a case list allocates nothing yet
        except Exception as e:
            log(f"{mod.__name__}.cases() raised {type(e).__name__}: {e}")
            measurements.append(Measurement(op=mod.__name__, label="cases()", series="-", x=0, x_label="-",
                                            unit="-", who="-", kind="variant", backend=None,
                                            status=f"error: cases() raised {type(e).__name__}: {e}"))
            continue
        for case in module_cases:
            if ops and not any(case.op == o or case.op.startswith(o + "_") for o in ops):
                continue
            if resume_at is not None:  # a later pass of run_isolated: start at the lost case
                if f"{case.op}|{case.label}" != resume_at:
                    continue
                resume_at = None
            if deadline is not None and time.perf_counter() > deadline:
                skipped.append(f"{case.op} {case.label}")
                continue
            vs = [v for v in registry_variants(case.op)
                  if not v.broken and cc >= v.arch and selected(v, None, variants, skip)]
            log(f"{case.op} {case.label}")
            try:
                measurements += bench_case(case, vs, backends, repeats, l2, ceiling, log)
            except ContextLost as e:
                measurements += e.measurements
                lost = result["context_lost"] = {
                    "after": f"{e.culprit.op}/{e.culprit.who}:{e.culprit.backend}", "case": e.culprit.label,
                    "resume_at": f"{case.op}|{case.label}", "error": e.error}
                log(f"CUDA context lost after {lost['after']} ({lost['case']}): {e.error}; nothing more "
                    "can run in this process")
            except Exception as e:  # e.g. out of memory making inputs: record it, go on
                log(f"  {case.op} {case.label}: {type(e).__name__}: {e}")
                measurements.append(Measurement(op=case.op, label=case.label, series=case.series, x=case.x,
                                                x_label=case.x_label, unit=case.unit, who="-", kind="variant",
                                                backend=None, status=f"error: {type(e).__name__}: {e}"))
            save()
            if lost is not None:
                break
        if lost is not None:
            break
    save()
    result["plots"] = [str(p) for p in plot(measurements, outdir, env)]
    return result


def run_isolated(child: Callable[[list[str], str | None, float | None, Path], list[str]], outdir: Path,
                 budget: float | None = None, max_passes: int = 6,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """``tfm-kernels bench --isolate``: the benchmark in child processes, so that a kernel fault
    (which loses the CUDA context, and with it every figure after it) costs only the faulting
    variant. ``child(skip, resume_at, budget_left, pass_dir)`` is the command of one pass. After a
    pass that lost its context, the next skips every culprit so far and resumes at the case where
    it happened; that case's measurements from the lost pass are dropped except the culprit's
    error. This process never touches the GPU. Writes the merged bench.json, bench.md and plots to
    ``outdir`` and returns the merged result."""
    import shutil

    outdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    merged: dict[str, Any] | None = None
    skip: list[str] = []
    resume_at: str | None = None
    events: list[dict] = []
    for k in range(1, max_passes + 1):
        left = None if budget is None else budget - (time.perf_counter() - start)
        if left is not None and left <= 1:
            log(f"bench: out of time after {k - 1} passes; the cases from {resume_at} on were not run")
            break
        pass_dir = outdir / f"pass{k}"
        shutil.rmtree(pass_dir, ignore_errors=True)
        subprocess.run(child(skip, resume_at, left, pass_dir))
        try:
            part = json.loads((pass_dir / "bench.json").read_text())
        except (OSError, ValueError):
            events.append({"pass": k, "error": f"pass {k} wrote no bench.json"})
            break
        ms = part.get("measurements", [])
        if merged is None:
            merged = part
        else:
            if resume_at is not None:  # the lost case's figures: the new pass measured it again
                op, label = resume_at.split("|", 1)
                merged["measurements"] = [m for m in merged["measurements"]
                                          if not (m["op"] == op and m["label"] == label and not
                                                  str(m.get("status", "")).startswith("error"))]
            merged["measurements"] += ms
            merged["skipped_for_time"] = part.get("skipped_for_time", [])
        lost = part.get("context_lost")
        if not lost:
            merged.pop("context_lost", None)
            break
        events.append({"pass": k, **lost})
        culprit = lost["after"].rsplit(":", 1)[0]  # op/key: skip it on both backends from now on
        skip.append(culprit)
        resume_at = lost["resume_at"]
        log(f"bench pass {k}: CUDA context lost after {lost['after']} ({lost['case']}): {lost['error']}; "
            f"resuming at {resume_at} in a fresh process without {culprit}")
    if merged is None:
        return {"measurements": [], "context_lost": events, "plots": []}
    merged["context_lost"] = events
    merged["passes"] = k
    fields = Measurement.__dataclass_fields__
    measurements = [Measurement(**{f: m[f] for f in fields if f in m}) for m in merged["measurements"]]
    (outdir / "bench.json").write_text(json.dumps(merged, indent=1, default=str))
    notes = "".join(f"\nCUDA context lost in pass {e['pass']} after {e['after']} ({e['case']}: {e['error']}); "
                    "the rest ran in a fresh process without it.\n" for e in events if "after" in e)
    (outdir / "bench.md").write_text(markdown(measurements, merged.get("env", {}), merged.get("copy_gbs") or 0.0)
                                     + (f"\nNot run (time budget): {', '.join(merged['skipped_for_time'])}\n"
                                        if merged.get("skipped_for_time") else "") + notes)
    merged["plots"] = [str(p) for p in plot(measurements, outdir, merged.get("env", {}))]
    return merged
