"""``tfm-kernels bench``: time every kernel variant against the library a user would pick.

    tfm-kernels bench                          # every op, full sizes, the default backend
    tfm-kernels bench --op softmax --quick     # a few sizes, seconds
    tfm-kernels bench --backend both --out runs/bench
    tfm-kernels bench --quick --isolate          # child processes: a faulting kernel costs only its figures

The runner (timing, L2 rotation, the measured copy ceiling, JSON/Markdown/plots) is
``tfm_kernels/bench/core.py``; the cases of each op live beside it in ``tfm_kernels/bench/<op>.py``
(``cases(quick) -> Iterable[BenchCase]``, the protocol in core.py's docstring).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--op", action="append", help="op to time (repeatable; 'softmax' includes softmax_backward)")
    p.add_argument("--variant", action="append",
                   help="variant key, name or number, or op/key (repeatable)")
    p.add_argument("--skip", action="append", help="a variant not to time, same forms as --variant (repeatable)")
    p.add_argument("--backend", choices=["ext", "cupy", "both"], default=None,
                   help="default: the extension when it loaded, else CuPy")
    p.add_argument("--quick", action="store_true", help="a few sizes, fewer repeats")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="stop starting new cases after this long (shared equally among ops)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="directory for bench.json, bench.md, plots")
    p.add_argument("--isolate", action="store_true",
                   help="run in child processes: a kernel fault that loses the CUDA context costs only that "
                        "variant; the rest is measured in a fresh process, from the case where it happened")
    p.add_argument("--resume-at", metavar="OP|LABEL", help="start at this case (what --isolate's later passes do)")


def run_bench(args: argparse.Namespace) -> int:
    from . import core

    backends = None if args.backend is None else (["ext", "cupy"] if args.backend == "both" else [args.backend])
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.isolate:
        from ..check import child_options

        def child(skip, resume_at, budget, pass_dir):
            return [sys.executable, "-m", "tfm_kernels", "bench", f"--out={pass_dir}",
                    *child_options(args, None, skip, budget)] + ([f"--resume-at={resume_at}"] if resume_at else [])

        res = core.run_isolated(child, args.out, budget=args.budget, log=log)
        if not res["measurements"]:
            print("tfm-kernels bench: nothing was measured (see above)", file=sys.stderr)
            return 2
    else:
        try:
            res = core.run(args.op, args.quick, args.out, backends, args.variant, log=log, budget=args.budget,
                           skip=args.skip, resume_at=args.resume_at)
        except RuntimeError as e:
            print(f"tfm-kernels bench: {e}", file=sys.stderr)
            return 2
    print((args.out / "bench.md").read_text())
    print(f"wrote {args.out / 'bench.json'}, {args.out / 'bench.md'} and {len(res['plots'])} plots")
    wrong = [m for m in res["measurements"] if m["status"].startswith(("WRONG", "error"))]
    return 1 if wrong else 0
