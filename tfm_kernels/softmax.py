"""softmax / softmax_backward over the last axis on the GPU: the ladders of csrc/softmax.cu and the
API every softmax variant is called through.

Same semantics as ``numpy_ref.softmax`` / ``numpy_ref.softmax_backward`` (the float64 reference the
tests compare against):

    softmax(x)              y  = exp(x - max x) / sum exp(x - max x)     over the last axis
    softmax_backward(dy, y) dx = y * (dy - sum(dy * y))                  over the last axis

Any rank >= 1 (every leading axis is a row: shape (..., cols) is rows = prod(...) rows of cols).
float32 or float16 in and out (float16 is computed in fp32 and rounded once on the store). Masks: an
entry of -inf gives exactly 0, a row that is all -inf gives 0 everywhere and zero gradient, never
NaN (torch gives NaN there). A last axis of length 0 gives an empty result without a launch.

Arguments: CUDA arrays (CuPy, or anything with ``__cuda_array_interface__``/DLPack on the GPU),
C-contiguous, fewer than 2**31 elements (kernels index a row with int32; row offsets are int64).
``out`` (optional) must have the input's shape and dtype and must not overlap an input (the kernels
read the inputs through ``__restrict__`` pointers). Every check runs on metadata before the device
is touched, so bad calls raise TypeError/ValueError naming the argument on a machine without a GPU.

The variant contract:
  forward  ``fn(be, x, out)``,     backward ``fn(be, dy, y, out)``: validated C-contiguous CuPy
  arrays, viewed as (rows, cols);
  ``supports(*, dtype, rows, cols)`` -> None or the reason the variant cannot take the shape.
Each fn plans its launch from the shape and the pointers' alignment: the 16-byte vector paths
(4 floats / 8 halves per access) are used only where they are legal (``_stream_vec``, ``_regs_vec``), else the same
kernel's scalar instantiation.

The ladders (numbers are the order to read csrc/softmax.cu in; the default is the highest-numbered
variant that takes the shape and is not opt-in: 5 up to its register capacity, 4 beyond; forwards 6
and 7 are opt-in until a GPU has measured them):
"""

from __future__ import annotations

import math

import numpy as np

from . import _validate
from ._registry import RUN1_CODE, Launch, Variant, choose, register

SOURCE = "softmax.cu"
DTYPES = ("float32", "float16")
_CTYPE = {"float32": "float", "float16": "__half"}

# Grid-stride loops cap the grid; tests lower this to make every kernel walk its row loop.
MAX_GRID = 65535

# Row-in-registers capacity: E fp32 values per thread x up to 1024 threads per row.
FWD_REGS_E = 32  # x: 32 registers of row data per thread -> rows up to 32768
BWD_REGS_E = 16  # y and dy: 2 x 16 registers per thread -> rows up to 16384
REGS_TPR = (1, 32, 128, 256, 512, 1024)  # instantiated threads-per-row of the *_regs kernels
STREAM_TPR = (32, 256, 512)              # instantiated threads-per-row of the streaming kernels
# Forward 7 (softmax_fwd_cluster): (threads per CTA, CTAs per cluster), the first whose registers
# hold the row (NT * C * CLUSTER_E >= cols) is used. 512 threads up to 8 x 16384 = 131072 elements:
# two CTAs per SM (64 registers each), so one streams while the other waits at its barriers; 1024
# threads (one CTA per SM) only for the longest rows, up to 8 x 32768 = 262144. Clusters of at most
# 8 CTAs: the portable size, launchable without cudaFuncAttributeNonPortableClusterSizeAllowed.
CLUSTER_E = 32
CLUSTER_PLANS = ((512, 2), (512, 4), (512, 8), (1024, 8))
CLUSTER_CAP = max(nt * c for nt, c in CLUSTER_PLANS) * CLUSTER_E  # 262144


# ---------------------------------------------------------------------------------------------
# Validation: metadata only, so every error is raised (and testable) without a GPU
# ---------------------------------------------------------------------------------------------

_Meta = _validate.ArrayMeta
_overlap = _validate.overlap


def _meta(x, name: str) -> _Meta:
    """``x``'s metadata, dtype and contiguity checked (no device needed); at least 1-D."""
    m = _validate.meta(x, name, dtypes=DTYPES)
    if len(m.shape) == 0:
        raise ValueError(f"{name}: expected at least 1 dimension (softmax is over the last axis), "
                         f"got a 0-d array")
    return m


def _check_out(out: _Meta, ref: _Meta, ref_name: str, inputs: dict[str, _Meta]) -> None:
    if out.dtype != ref.dtype:
        raise TypeError(f"out: expected dtype {ref.dtype} (the dtype of {ref_name}), got {out.dtype}")
    if out.shape != ref.shape:
        raise ValueError(f"out: expected shape {ref.shape} (the shape of {ref_name}), got {out.shape}")
    for name, m in inputs.items():
        if _overlap(out, m):
            raise ValueError(f"out: overlaps {name} in memory; the kernels read {name} while writing "
                             f"out, so they must be separate buffers")


def _rows_cols(m: _Meta, name: str) -> tuple[int, int]:
    _validate.check_int32_indexing(name, *m.shape)
    cols = m.shape[-1]
    return (math.prod(m.shape[:-1]), cols)


def _check_backend(backend) -> None:
    if backend is not None and backend not in ("ext", "cupy"):
        raise ValueError(f"backend: expected 'ext', 'cupy' or None, got {backend!r}")


def softmax(x, *, backend=None, variant=None, out=None):
    """Softmax over the last axis of ``x``; see the module docstring. Returns ``out`` (allocated
    when None)."""
    _check_backend(backend)
    mx = _meta(x, "x")
    mo = None if out is None else _meta(out, "out")
    if mo is not None:
        _check_out(mo, mx, "x", {"x": mx})
    return _run("softmax", variant, backend, {"x": x}, out, "x", mx)


def softmax_backward(dy, y, *, backend=None, variant=None, out=None):
    """dx = y * (dy - sum(dy * y)) over the last axis; see the module docstring. Returns ``out``
    (allocated when None)."""
    _check_backend(backend)
    my = _meta(y, "y")
    mdy = _meta(dy, "dy")
    if mdy.dtype != my.dtype:
        raise TypeError(f"dy: expected y's dtype {my.dtype}, got {mdy.dtype}")
    if mdy.shape != my.shape:
        raise ValueError(f"dy: expected y's shape {my.shape}, got {mdy.shape}")
    mo = None if out is None else _meta(out, "out")
    if mo is not None:
        _check_out(mo, my, "y", {"dy": mdy, "y": my})
    return _run("softmax_backward", variant, backend, {"dy": dy, "y": y}, out, "y", my)


def _run(op: str, variant, backend, inputs: dict, out, name: str, m: _Meta):
    """What softmax and softmax_backward share after their own argument checks: the shape as rows x
    cols (from input ``name``, metadata ``m``) and the asked-for variant checked against it, before
    the device is touched; then the arrays (in the order of ``inputs``, the variant's fn's order),
    the empty case, the launch."""
    rows, cols = _rows_cols(m, name)
    if variant is not None:  # a bad name, dtype or shape for the asked-for variant: before the device
        choose(op, variant, dtype=m.dtype, rows=rows, cols=cols)
    # The device from here on.
    arrays = [_validate.as_array(a, n, dtypes=DTYPES) for n, a in inputs.items()]
    out = _validate.out_array(out, "out", m.shape, m.dtype)
    if rows * cols == 0:
        return out
    from . import _backend

    be = _backend.get(backend)
    v = choose(op, variant, dtype=m.dtype, cc=be.cc, rows=rows, cols=cols)
    v.fn(be, *(a.reshape(rows, cols) for a in arrays), out.reshape(rows, cols))
    return out


# ---------------------------------------------------------------------------------------------
# Launch planning, shared by both backends
# ---------------------------------------------------------------------------------------------

def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _vec_width(dtype: str) -> int:
    """Elements per 16-byte access."""
    return 16 // np.dtype(dtype).itemsize


def _stream_vec(dtype: str, *arrays) -> int:
    """VEC for the streaming kernels (3pass, online, 2pass): they peel a scalar head up to the
    16-byte boundary per row, which is one boundary for all arrays only when every pointer has the
    same address mod 16. Otherwise 1 (scalar, still coalesced)."""
    residues = {int(a.data.ptr) % 16 for a in arrays}
    return _vec_width(dtype) if len(residues) == 1 else 1


def _regs_vec(dtype: str, cols: int, *arrays) -> int:
    """VEC for the row-in-registers kernels: whole packs only, so every row start must be 16-byte
    aligned: cols a multiple of the pack and every pointer 16-byte aligned."""
    w = _vec_width(dtype)
    if cols % w == 0 and all(int(a.data.ptr) % 16 == 0 for a in arrays):
        return w
    return 1


def _groups_block(tpr: int) -> tuple[int, int]:
    """(threads per block, rows per block) of a group kernel: csrc/softmax.cu's Groups<TPR>."""
    block = max(tpr, 128)
    return block, block // tpr


def _grid(row_groups: int) -> tuple[int, int, int]:
    return (max(1, min(row_groups, MAX_GRID)), 1, 1)


def regs_tpr(cols: int, e: int) -> int | None:
    """Threads per row of a *_regs kernel: the fewest instantiated that hold the row (TPR*E >= cols)."""
    for tpr in REGS_TPR:
        if tpr * e >= cols:
            return tpr
    return None


def stream_tpr(cols: int) -> int:
    """Threads per row of the online / long-row streaming kernels: a warp up to 2048 elements (64
    per lane), 256 threads up to 16384, then 512: enough loads in flight per row without leaving
    most threads of a short row idle. Not 1024 for the longest rows: at <= 64 registers two
    512-thread blocks fit an SM, so one streams while the other waits in its reduction barriers."""
    if cols <= 2048:
        return 32
    if cols <= 16384:
        return 256
    return 512


def cluster_plan(cols: int) -> tuple[int, int] | None:
    """(threads per CTA, CTAs per cluster) of softmax_fwd_cluster for rows of `cols`, or None."""
    for nt, c in CLUSTER_PLANS:
        if nt * c * CLUSTER_E >= cols:
            return nt, c
    return None


def _args(*arrays, rows: int, cols: int) -> tuple:
    return tuple(arrays) + (np.int32(rows), np.int32(cols))


# Launchers: fn(be, *inputs, out) for the forward (x, out) and backward (dy, y, out) kernels alike,
# since every softmax kernel takes (inputs..., out, rows, cols).

def _plain(kernel: str, block: int, rows_per_block: int, extra: str = ""):
    """Variants 1 and 2: `block` threads, `rows_per_block` rows per block (1 and 2: a thread per row
    in blocks of 128, or a block per row), instantiated only on T."""
    def fn(be, *arrays):
        rows, cols = arrays[-1].shape
        t = _CTYPE[arrays[-1].dtype.name]
        be.launch(Launch(SOURCE, f"{kernel}<{t}{extra}>", _grid(_cdiv(rows, rows_per_block)), (block, 1, 1),
                         _args(*arrays, rows=rows, cols=cols)))
    return fn


def _group(kernel: str, tpr_of=None, *, e: int | None = None):
    """The group kernels (3-5), Groups<TPR>'s block. A streaming kernel <T, VEC, TPR> with TPR =
    tpr_of(cols) (scalar head and tail: _stream_vec), or with `e` a row-in-registers kernel
    <T, VEC, TPR, E> with TPR = regs_tpr(cols, e) (whole packs only: _regs_vec)."""
    def fn(be, *arrays):
        rows, cols = arrays[-1].shape
        dtype = arrays[-1].dtype.name
        vec = _stream_vec(dtype, *arrays) if e is None else _regs_vec(dtype, cols, *arrays)
        tpr = tpr_of(cols) if e is None else regs_tpr(cols, e)
        block, rpb = _groups_block(tpr)
        params = f"{_CTYPE[dtype]}, {vec}, {tpr}" + ("" if e is None else f", {e}")
        be.launch(Launch(SOURCE, f"{kernel}<{params}>", _grid(_cdiv(rows, rpb)), (block, 1, 1),
                         _args(*arrays, rows=rows, cols=cols)))
    return fn



def _fwd_cluster(be, x, out):
    """Forward 7: C CTAs per row (a cluster, sized at compile time by the kernel's __cluster_dims__,
    so the grid is a whole number of clusters: C x min(rows, MAX_GRID // C), the rows looped)."""
    rows, cols = x.shape
    dtype = x.dtype.name
    vec = _regs_vec(dtype, cols, x, out)
    nt, c = cluster_plan(cols)
    clusters = max(1, min(rows, MAX_GRID // c))
    be.launch(Launch(SOURCE, f"softmax_fwd_cluster<{_CTYPE[dtype]}, {vec}, {nt}, {c}, {CLUSTER_E}>",
                     (c * clusters, 1, 1), (nt, 1, 1), _args(x, out, rows=rows, cols=cols)))


# The kernels each variant may launch (the build tests compile them and read their ptxas reports).

def _names(template: str, vecs: dict[str, tuple[int, ...]], tprs=(None,), extra: str = "") -> tuple:
    out = []
    for dt, t in _CTYPE.items():
        for vec in vecs[dt]:
            for tpr in tprs:
                inner = ", ".join(str(p) for p in (t, vec if vec else None, tpr) if p is not None)
                out.append((SOURCE, f"{template}<{inner}{extra}>"))
    return tuple(out)


_NOVEC = {"float32": (None,), "float16": (None,)}
_VECS = {"float32": (4, 1), "float16": (8, 1)}


def _cluster_supports(*, dtype, rows, cols, **_):
    if cols > CLUSTER_CAP:
        nt, c = CLUSTER_PLANS[-1]
        return (f"rows of {cols} elements do not fit in a cluster's registers ({c} CTAs x {nt} threads x "
                f"{CLUSTER_E} = {CLUSTER_CAP} elements at most)")
    return None


def _regs_supports(e: int):
    cap = REGS_TPR[-1] * e

    def supports(*, dtype, rows, cols, **_):
        if cols > cap:
            return (f"rows of {cols} elements do not fit in registers ({REGS_TPR[-1]} threads x {e} "
                    f"= {cap} elements at most)")
        return None
    return supports


# (number, name, fn, kernels, hot, description: what it changes and the predicted effect)
FORWARD = [
    (1, "naive", _plain("softmax_fwd_naive", 128, 128), _names("softmax_fwd_naive", _NOVEC), False,
     "a thread per row, three passes (max, sum, write): 3 reads + 1 write, uncoalesced (~1-5% of copy)"),
    (2, "block", _plain("softmax_fwd_block", 256, 1, ", 256"), _names("softmax_fwd_block", _NOVEC, extra=", 256"), False,
     "a 256-thread block per row, coalesced, shared-memory tree reductions; still 4 accesses/elt "
     "(~40-50% of copy: 3 of them reach HBM once rows exceed L2 reuse)"),
    (3, "warp_vec", _group("softmax_fwd_3pass", lambda cols: 32),
     _names("softmax_fwd_3pass", _VECS, (32,)), False,
     "a warp per row, shuffle reductions, 16-byte loads (scalar head/tail); same 4 accesses/elt, "
     "fewer instructions, no barriers (~1.1x 2 on short rows)"),
    (4, "online", _group("softmax_fwd_online", stream_tpr),
     _names("softmax_fwd_online", _VECS, STREAM_TPR), True,
     "online max+sum in one read (Milakov & Gimelshein 2018), then the write pass: 3 accesses/elt "
     "instead of 4 (~1.3x 3); 32-512 threads per row by length, the default beyond 32768"),
    (5, "regs", _group("softmax_fwd_regs", e=FWD_REGS_E), _names("softmax_fwd_regs", _VECS, REGS_TPR, extra=f", {FWD_REGS_E}"),
     True,
     "the row held in registers (32 per thread, 1-1024 threads per row): x read once, y written once, "
     "2 accesses/elt = the minimum bytes (>= 90% of copy); rows up to 32768"),
    (6, "regs_exp2", _group("softmax_fwd_regs_exp2", e=FWD_REGS_E),
     _names("softmax_fwd_regs_exp2", _VECS, REGS_TPR, extra=f", {FWD_REGS_E}"), True,
     "5 with exp2f((x - m) * log2 e) and one bounds test per pack: ~13 instead of ~31 PTX instructions "
     "per element, aimed at fp16 (issue-bound at 51% of copy in run 1); opt-in, never run on a GPU"),
    (7, "cluster", _fwd_cluster,
     tuple((SOURCE, f"softmax_fwd_cluster<{_CTYPE[dt]}, {vec}, {nt}, {c}, {CLUSTER_E}>")
           for dt in _CTYPE for vec in _VECS[dt] for nt, c in CLUSTER_PLANS), True,
     "5 across a thread-block cluster (sm_90) for rows beyond one block's registers: 2-8 CTAs of "
     "512-1024 threads hold the row (32 registers each, up to 262144 elements), (max, sum) merged "
     "through distributed shared memory, x read once: 8 B/elt instead of 4's 12. Predicted 1024x65536 "
     "fp32 (537 MB; 4 moves 805): 3.3-3.8 TB/s, 80-92% of the 4.16 TB/s copy (4 measured 2.70); opt-in, "
     "never run on a GPU"),
]
# Variants added after the only GPU run: never the default until measured (choose() skips opt-in).
OPT_IN = {("softmax", 6): "added after GPU run 1 (2026-11-29); never run on a GPU: correctness checked on "
                          "the host emulation only, speed unmeasured",
          ("softmax", 7): "added after GPU run 1 (2026-11-29); never run on a GPU: correctness checked on "
                          "the host emulation only (cluster ranks and distributed shared memory emulated), "
                          "cluster launch through both backends and speed unchecked"}
# What a variant needs beyond the defaults (every dtype and shape, compute capability 8.0).
SUPPORTS = {("softmax", 7): _cluster_supports}
ARCH = {("softmax", 7): 90}  # thread-block clusters: sm_90 (not sm_90a)

BACKWARD = [
    (1, "naive", _plain("softmax_bwd_naive", 128, 128), _names("softmax_bwd_naive", _NOVEC), False,
     "a thread per row, two passes (sum(dy*y), write): 5 accesses/elt, uncoalesced"),
    (2, "block", _plain("softmax_bwd_block", 256, 1, ", 256"), _names("softmax_bwd_block", _NOVEC, extra=", 256"), False,
     "a 256-thread block per row, coalesced, shared-memory tree reduction; 5 accesses/elt"),
    (3, "warp_vec", _group("softmax_bwd_2pass", lambda cols: 32), _names("softmax_bwd_2pass", _VECS, (32,)), False,
     "a warp per row, shuffle reduction, 16-byte loads (scalar head/tail); 5 accesses/elt"),
    (4, "block_vec", _group("softmax_bwd_2pass", stream_tpr), _names("softmax_bwd_2pass", _VECS, STREAM_TPR), True,
     "the same two passes with 32-512 threads per row by length: long rows get a block's worth of "
     "loads in flight; the default beyond 16384"),
    (5, "regs", _group("softmax_bwd_regs", e=BWD_REGS_E), _names("softmax_bwd_regs", _VECS, REGS_TPR, extra=f", {BWD_REGS_E}"), True,
     "y and dy held in registers (16 each per thread): read once, dx written once, 3 accesses/elt = "
     "the minimum bytes (>= 85% of copy); rows up to 16384"),
]

# Measured on an NVIDIA H200 (GPU run 1, 2026-11-29, `tfm-kernels bench --quick`, ext backend, CUDA
# events, median; copy ceiling measured in the same run: 4161 GB/s). Effective bandwidth = the
# minimum bytes (costs.py) / time; "torch" = torch.softmax / torch._softmax_backward_data, same run.
_RUN1 = "H200 run 1, " + RUN1_CODE + "; tfm-kernels bench --quick: "
MEASURED = {
    ("softmax", 1): _RUN1 + "8192x8192 fp32 175 GB/s (4% of copy, 0.09x torch)",
    ("softmax", 2): _RUN1 + "8192x8192 fp32 2667 GB/s (64%, 1.38x torch); 65536x1024 2493 GB/s (60%)",
    ("softmax", 3): _RUN1 + "8192x8192 fp32 1982 GB/s (48%); 65536x1024 3583 GB/s (86%)",
    ("softmax", 4): _RUN1 + "8192x8192 fp32 3781 GB/s (91%, 1.95x torch); 1024x65536 2697 GB/s (65%, 1.36x torch)",
    ("softmax", 5): _RUN1 + "8192x8192 fp32 4010 GB/s (96% of copy, 2.07x torch); 65536x1024 4054 GB/s (97%, "
                            "1.03x torch); 8192x8192 fp16 2126 GB/s (51%, 2.05x torch)",
    ("softmax_backward", 1): _RUN1 + "8192x8192 fp32 247 GB/s (6%, 0.12x torch)",
    ("softmax_backward", 2): _RUN1 + "8192x8192 fp32 2526 GB/s (61%, 1.18x torch); 65536x1024 3869 GB/s (93%)",
    ("softmax_backward", 3): _RUN1 + "8192x8192 fp32 2543 GB/s (61%, 1.19x torch)",
    ("softmax_backward", 4): _RUN1 + "8192x8192 fp32 3264 GB/s (78%, 1.53x torch); 1024x65536 2556 GB/s (61%, "
                                     "1.43x torch)",
    ("softmax_backward", 5): _RUN1 + "8192x8192 fp32 4284 GB/s (103% of copy, 2.01x torch); 8192x8192 fp16 "
                                     "2955 GB/s (71%, 1.43x torch)",
}

for _op, _ladder, _e in (("softmax", FORWARD, FWD_REGS_E), ("softmax_backward", BACKWARD, BWD_REGS_E)):
    for _n, _name, _fn, _kernels, _hot, _desc in _ladder:
        _why = OPT_IN.get((_op, _n))
        _supports = _regs_supports(_e) if _name.startswith("regs") else SUPPORTS.get((_op, _n))
        register(Variant(op=_op, number=_n, name=_name, description=_desc, fn=_fn, dtypes=DTYPES,
                         supports=_supports, kernels=_kernels, hot=_hot, arch=ARCH.get((_op, _n), 80),
                         measured=MEASURED.get((_op, _n)),
                         extra={"opt_in": True, "unverified": _why} if _why else {}))

if __doc__:  # None under python -OO
    __doc__ += "".join(f"\n  softmax/{n}_{name:<10} {d}" for n, name, _f, _k, _h, d in FORWARD)
    __doc__ += "\n" + "".join(f"\n  softmax_backward/{n}_{name:<10} {d}" for n, name, _f, _k, _h, d in BACKWARD)


# ---------------------------------------------------------------------------------------------
# Cases for `tfm-kernels check` (protocol: tfm_kernels/check.py)
# ---------------------------------------------------------------------------------------------

def _case_inputs(rng, rows: int, cols: int, kind: str) -> np.ndarray:
    """float64 logits: "normal" (N(0, 2^2)), "large" (uniform +-1e4: near one-hot rows; fits fp16),
    "masked" (~30% -inf, one row all -inf, one row with a single finite entry)."""
    if kind == "large":
        return rng.uniform(-1e4, 1e4, (rows, cols))
    x = rng.standard_normal((rows, cols)) * 2.0
    if kind == "masked":
        x[rng.random((rows, cols)) < 0.3] = -np.inf
        x[int(rng.integers(rows))] = -np.inf
        if rows > 1:
            r = (rows - 1) // 2
            x[r] = -np.inf
            x[r, int(rng.integers(cols))] = 1.0
    return x


def backward_rule(dy: np.ndarray, y: np.ndarray, baseline: np.ndarray | None = None):
    """The tolerance of softmax_backward for `tfm-kernels check` (check.py's protocol): like
    fp32_rule / lowprec_rule, but relative to max_i y_i * (|dy_i| + sum_j |dy_j y_j|), the size of
    the terms dx = y*dy - y*s is the difference of, instead of max |dx|. On near one-hot rows dx
    cancels to ~1e-6 of its terms while fp32 rounding leaves ~1e-8 of them (NumPy's float32 does
    the same), so the output's own magnitude is the wrong yardstick there.
    fp32 (baseline None): err <= 1e-6 * sqrt(cols) * scale; fp16: err <= 2 * baseline err + 1e-5 * scale."""
    from .check import errors

    d64, y64 = dy.astype(np.float64), y.astype(np.float64)
    t = np.abs(d64 * y64).sum(axis=-1, keepdims=True)
    scale = float(np.max(np.abs(y64) * (np.abs(d64) + t), initial=0.0))
    cols = y.shape[-1]

    def rule(out, ref):
        mx, _, _ = errors(out, ref)
        if baseline is None:
            tol = 1e-6 * max(1.0, math.sqrt(cols)) * scale + 1e-30
        else:
            tol = 2.0 * errors(baseline, ref)[0] + 1e-5 * scale + 1e-30
        return mx <= tol, mx, tol
    return rule


def check_cases(rng, quick: bool):
    """Forward and backward cases over awkward row lengths (every planning threshold), masks,
    large magnitudes, both dtypes; outputs NaN-filled before each run."""
    from .check import Case, fp32_rule, lowprec_rule
    import numpy_ref

    # The first quick case is the one scripts/sanitize_cases.py runs under compute-sanitizer: 4099
    # columns give every kernel a shared-memory group reduction (TPR 256) or tree, a scalar head
    # and tail in every row after the first, a partial last block, and masked rows.
    if quick:
        shapes = [(5, 4099), (1, 1), (9, 31), (17, 33), (97, 1024), (3, 8192), (2, 32769), (3000, 3)]
    else:
        shapes = [(5, 4099), (1, 1), (5, 1), (6, 8), (7, 17), (5, 24), (9, 31), (11, 33), (3, 97), (64, 129),
                  (40, 1000), (4, 1024), (6, 1025), (3, 2048), (3, 4096), (3, 4097), (2, 8192), (3, 8193),
                  (2, 16384), (2, 16385), (2, 32768), (2, 32769), (2, 100000), (1, 262144), (70000, 3)]
    kinds = ("masked", "normal", "large")
    for i, (rows, cols) in enumerate(shapes):
        kind = kinds[i % 3]
        for dt in (np.float32, np.float16):
            x = _case_inputs(rng, rows, cols, kind).astype(dt)
            dy = rng.standard_normal((rows, cols)).astype(dt)
            y = numpy_ref.softmax(x.astype(np.float64)).astype(dt)
            tag = f"{np.dtype(dt).name} {rows}x{cols} {kind}"
            if dt == np.float32:
                tol_f, tol_b = fp32_rule(reduction=cols), backward_rule(dy, y)
            else:  # same computation in NumPy: float32 math, one rounding to float16
                tol_f = lowprec_rule(numpy_ref.softmax(x.astype(np.float32)).astype(np.float16))
                tol_b = backward_rule(dy, y, numpy_ref.softmax_backward(dy.astype(np.float32), y.astype(np.float32))
                                      .astype(np.float16))

            def run_f(backend, variant, x=x):
                import cupy as cp

                out = cp.full(x.shape, np.nan, dtype=x.dtype)
                return softmax(cp.asarray(x), backend=backend, variant=variant, out=out)

            def run_b(backend, variant, dy=dy, y=y):
                import cupy as cp

                out = cp.full(y.shape, np.nan, dtype=y.dtype)
                return softmax_backward(cp.asarray(dy), cp.asarray(y), backend=backend, variant=variant, out=out)

            yield Case("softmax", tag, run_f, lambda x=x: numpy_ref.softmax(x.astype(np.float64)), tol_f)
            yield Case("softmax_backward", tag, run_b,
                       lambda dy=dy, y=y: numpy_ref.softmax_backward(dy.astype(np.float64), y.astype(np.float64)),
                       tol_b)
