"""The variant registry: every version of every op, numbered and described.

A *variant* is one way of computing an op (``softmax``, ``softmax_backward``, ``matmul``,
``attention_forward``, ``attention_backward``). Each op module (``tfm_kernels/softmax.py``, ...)
registers its variants here at import time with :func:`register`; nothing is compiled or launched
until a variant is called.

A variant's ``fn`` receives the backend object first, then the op's already-validated arguments
(CuPy arrays, output arrays allocated and poisoned by the caller where tests ask for it), and
issues its work through ``be.launch(Launch(...))``. Building a ``Launch`` is the same for both
backends; only ``be.launch`` differs (CuPy ``RawModule`` or the pybind11 extension's generic
launcher), so grid, block and shared-memory sizes are decided once, in Python, for both paths.
A composed variant (the naive attention built from this project's matmul and softmax) calls other
ops with ``backend=be.name`` instead of launching kernels itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Launch:
    """One kernel launch, described identically for both backends.

    source: file name under ``csrc/`` that holds the kernel (``"softmax.cu"``).
    kernel: the exported name expression, exactly as written in ``TFM_EXPORT(...)`` with runs of
        whitespace collapsed to one space (``"softmax_fwd_warp<float, 8>"``).
    grid, block: 3-tuples of ints.
    args: the kernel's parameters in order: CuPy arrays (passed as device pointers), NumPy scalars
        of the exact parameter type (``np.int32``, ``np.int64``, ``np.float32``, ``np.uint64``), or
        ``bytes`` for an opaque by-value struct (a TMA descriptor), which is passed 64-byte aligned.
    smem: dynamic shared memory in bytes; above 48 KiB the backend raises the kernel's limit first.
    """

    source: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[Any, ...]
    smem: int = 0


@dataclass(frozen=True)
class Variant:
    """One numbered version of an op.

    number, name: ``3``, ``"warp_vec4"``; printed as ``softmax/3_warp_vec4``.
    description: one line saying what this version changes relative to the one before it.
    fn: ``fn(be, *validated_args, **kwargs)``; see the module docstring.
    dtypes: input dtypes (NumPy names: ``"float32"``, ``"float16"``) this variant accepts.
    supports: ``supports(**shape_info) -> None | str``; a string is the reason this variant cannot
        take these arguments (the op raises ValueError with it when the variant was asked for by
        name, and skips the variant when choosing the default).
    kernels: ``(source, name_expression)`` pairs this variant may launch; the build tests compile
        each through NVRTC and read its ``ptxas -v`` report.
    hot: a kernel on the fast path; its ``ptxas -v`` report must show no register spills.
    arch: the lowest compute capability (major*10+minor) it runs on; 90 means sm_90a features.
    measured: the speedup or figure it was measured to give, with the GPU and command, or None.
    broken: None, or the reason it is known to give wrong results (never chosen by default).
    extra: free-form flags. ``extra["opt_in"]``: changes the precision contract (TF32) or is an
        experiment, so never the default. ``extra["unverified"]``: why this variant has not yet
        been seen passing on a GPU (written on a machine without one; compiled, emulated and
        tested on the CPU only); it is never the default until a GPU run (``scripts/gpu_check.sh``)
        shows it passing on both backends, and `tfm-kernels check` on a GPU is how to see it.
    """

    op: str
    number: int
    name: str
    description: str
    fn: Callable[..., Any]
    dtypes: tuple[str, ...] = ("float32",)
    supports: Callable[..., str | None] | None = None
    kernels: tuple[tuple[str, str], ...] = ()
    hot: bool = False
    arch: int = 80
    measured: str | None = None
    broken: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.number}_{self.name}"

    @property
    def qualname(self) -> str:
        return f"{self.op}/{self.key}"

    def reason_unsupported(self, **info) -> str | None:
        if self.supports is None:
            return None
        return self.supports(**info)


_REGISTRY: dict[str, dict[str, Variant]] = {}

# What a variant's `measured` says when its kernels are byte for byte the ones GPU run 1 built and
# ran, on both backends (scripts/run1_identity.py, with and without --nvrtc).
RUN1_CODE = "machine code identical to run 1's (scripts/run1_identity.py)"


def register(variant: Variant) -> Variant:
    """Add a variant; its key must be new within its op."""
    table = _REGISTRY.setdefault(variant.op, {})
    if variant.key in table:
        raise ValueError(f"variant {variant.qualname} registered twice")
    table[variant.key] = variant
    return variant


def ops() -> list[str]:
    _load_ops()
    return sorted(_REGISTRY)


def variants(op: str) -> list[Variant]:
    """The versions of ``op``, in ladder order."""
    _load_ops()
    if op not in _REGISTRY:
        raise ValueError(f"op: unknown op {op!r}; known ops are {sorted(_REGISTRY)}")
    return sorted(_REGISTRY[op].values(), key=lambda v: v.number)


def get(op: str, variant: str | int) -> Variant:
    """Look a variant up by key (``"3_warp_vec4"``), name (``"warp_vec4"``) or number (``3``)."""
    for v in variants(op):
        if variant in (v.key, v.name, v.number, str(v.number)):
            return v
    names = ", ".join(v.key for v in variants(op))
    raise ValueError(f"variant: {op} has no variant {variant!r}; it has {names}")


def names(key: str, text: str) -> bool:
    """Whether ``text`` (a test id, a log line) names the variant ``key`` as a word: "12_wgmma_tma"
    in "test_variant[cupy-12_wgmma_tma-NN]", never "2_flash" inside "12_flash" nor "14_wgmma" inside
    "14_wgmma_det". The one rule by which a GPU run's tests are put to a variant's account
    (scripts/gpu_verdicts.py) and by which the test suite runs first-time variants last (conftest.py)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", text) is not None


def first_run(v: Variant) -> bool:
    """A variant never yet seen passing on a GPU (``extra["unverified"]``): the likeliest to fault.
    A fault (an illegal address, a trap) loses the whole process's CUDA context, so whatever runs
    many variants in one process runs these last and stops at a lost context (tfm_kernels.check,
    conftest.py)."""
    return bool(v.extra.get("unverified"))


def selected(v: Variant, backend: str | None, wanted: list[str] | None, skip: list[str] | None = None) -> bool:
    """The ``--variant``/``--skip`` rule of ``tfm-kernels check`` and ``bench``: an entry is a key,
    name or number ("12_wgmma_tma", "wgmma_tma", "12"), any of them after the op ("matmul/12",
    "matmul/12_wgmma_tma"), or one backend of that ("matmul/12_wgmma_tma:ext"). Skipped wins;
    no ``wanted`` means all."""
    names = {v.key, v.name, str(v.number)}
    names |= {f"{v.op}/{n}" for n in tuple(names)}
    if backend is not None:
        names |= {f"{n}:{backend}" for n in tuple(names) if "/" in n}
    if skip and names & set(skip):
        return False
    return not wanted or bool(names & set(wanted))


def _load_ops() -> None:
    # The op modules register their variants when imported; importing them here (not at package
    # import) keeps `import tfm_kernels` free of work, and is idempotent.
    from . import _ops  # noqa: F401


def choose(op: str, variant: str | int | None, *, dtype: str, cc: int | None = None, **info) -> Variant:
    """The variant to run.

    Asked for by name: that variant, or ValueError naming the argument when it cannot take these
    arguments (wrong dtype, unsupported shape, needs a newer GPU). Asked for nothing (None): the
    highest-numbered variant that supports the arguments, is not marked broken and is not opt-in
    (``extra={"opt_in": True}``, e.g. TF32, which changes the precision contract) and has been seen
    passing on a GPU (no ``extra["unverified"]``). ``cc`` is the
    device's compute capability (major*10+minor), when known.
    """
    if variant is not None:
        v = get(op, variant)
        if dtype not in v.dtypes:
            raise TypeError(f"variant: {v.qualname} takes {'/'.join(v.dtypes)} inputs, not {dtype}")
        if cc is not None and cc < v.arch:
            raise ValueError(f"variant: {v.qualname} needs compute capability {v.arch / 10:.1f}, "
                             f"this device has {cc / 10:.1f}")
        why = v.reason_unsupported(dtype=dtype, **info)
        if why:
            raise ValueError(f"variant: {v.qualname} cannot take these arguments: {why}")
        return v
    reasons = []
    for v in reversed(variants(op)):
        if v.broken or v.extra.get("opt_in") or v.extra.get("unverified"):
            continue
        if dtype not in v.dtypes or (cc is not None and cc < v.arch):
            continue
        why = v.reason_unsupported(dtype=dtype, **info)
        if why:
            reasons.append(f"{v.key}: {why}")
            continue
        return v
    raise ValueError(f"no {op} variant takes dtype {dtype} with {info}: " + "; ".join(reasons))
