"""The ``tfm-kernels`` command.

    tfm-kernels train ...        train the NumPy reference Transformer on the embedded task
    tfm-kernels translate ...    greedy-decode with a trained checkpoint
    tfm-kernels check ...        every variant of every op, both backends, against numpy_ref
    tfm-kernels bench ...        time every variant against the library a user would pick
    tfm-kernels info             device, CUDA versions, which backends loaded (or why not)
    tfm-kernels sass OP [V]      what a variant's kernels compile to: registers, spills, opcode mix

Each subcommand's module is imported only when it runs, so ``tfm-kernels train`` needs neither
CuPy nor a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines add_arguments(parser) and run(args) -> exit code
SUBCOMMANDS = {
    "train": ("numpy_ref.train", "train the NumPy reference Transformer on the embedded task"),
    "translate": ("numpy_ref.train", "translate text with a trained checkpoint (greedy decoding)"),
    "check": ("tfm_kernels.check", "check every kernel variant on both backends against numpy_ref"),
    "bench": ("tfm_kernels.bench", "benchmark every kernel variant against its peer library"),
    "info": ("tfm_kernels._backend", "print the device, CUDA versions and loaded backends"),
    "sass": ("tfm_kernels._sass", "show the SASS a variant's kernels compile to (no GPU needed)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfm-kernels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen subcommand's module is imported (argparse needs its options).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:
            mod = importlib.import_module(module)
            getattr(mod, f"add_{name}_arguments")(p)
            p.set_defaults(_run=getattr(mod, f"run_{name}"))
    args = parser.parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
