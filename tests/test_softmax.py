"""tests/test_softmax.py: the softmax ladders (csrc/softmax.cu) and the `tfm_kernels.softmax` /
`tfm_kernels.softmax_backward` API.

* Validation (no GPU needed): every bad argument raises TypeError/ValueError naming it, before any
  launch; device arrays are faked with `__cuda_array_interface__` metadata.
* Registry and planning (no GPU): forward 1-7 and backward 1-5 (forward 6 and 7 opt-in, 7 needing
  sm_90), every kernel a variant may launch is exported by the source, the default is the
  row-in-registers variant up to its capacity and the streaming one beyond, and a NumPy emulation of
  the kernels' index mappings (the scalar head / 16-byte packs / scalar tail walk of the streaming
  kernels, the register slots of the *_regs kernels, the CTA slices of the cluster kernel, the
  uniform row loop of grouped rows) covers every element exactly once, with every pack 16-byte
  aligned. The online (max, sum) merge is emulated in float32 on masked rows: no NaN.
* GPU: every variant x both dtypes x both backends against numpy_ref in float64: row lengths 1, 17,
  31, 33, 97, 129, 1000, 1025, 4097, 100000 and 262144, 70000 rows of 3 (grid limits), values of
  magnitude 1e4, rows with -inf entries, a row that is all -inf; outputs poisoned with NaN and
  guarded by poisoned margins (an out-of-bounds write shows up). Forward fp32: |err| <= 1e-6 *
  sqrt(cols) * max|ref|; fp16: <= 2x the error of the same computation in NumPy (float32 math, one
  rounding to float16) + 1e-5 * max|ref| (tests/helpers.py). Backward: the same, with max|ref|
  replaced by the size of the terms dx is the difference of (backward_term_scale: dx cancels). Also: N-D and 1-D inputs, misaligned and
  differently aligned views (the vector paths must fall back), the grid-stride loops (MAX_GRID
  lowered), the default variant, the all -inf row giving exact zeros; forward 7 also on rows whose
  masks and maxima sit on its CTA slices (cluster_slice_inputs), at every cluster plan.
* tests/test_softmax_emulation.py runs csrc/softmax.cu itself on the CPU (no GPU needed).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
from helpers import POISON, FakeDeviceArray, assert_close_fp32, assert_close_lowprec, errors
from tfm_kernels import _backend, _registry

sm = importlib.import_module("tfm_kernels.softmax")

FWD = tfm_kernels.variants("softmax")
BWD = tfm_kernels.variants("softmax_backward")


# ---------------------------------------------------------------------------------------------
# Validation, no GPU
# ---------------------------------------------------------------------------------------------


F = FakeDeviceArray


@pytest.mark.parametrize("x, kw, exc, match", [
    (np.ones((4, 4), np.float32), {}, TypeError, r"^x: expected a CUDA array.*host"),
    ([[1.0, 2.0]], {}, TypeError, r"^x: expected a CUDA array"),
    (None, {}, TypeError, r"^x: expected a CUDA array"),
    (F((4, 4), "float64"), {}, TypeError, r"^x: expected dtype float32 or float16, got float64"),
    (F((4, 4), "int32"), {}, TypeError, r"^x: expected dtype"),
    (F(()), {}, ValueError, r"^x: expected at least 1 dimension"),
    (F((4, 5), strides=(4, 16)), {}, ValueError, r"^x: must be C-contiguous"),
    (F((4, 6), strides=(48, 8)), {}, ValueError, r"^x: must be C-contiguous"),  # x[:, ::2]
    (F((65536, 32768)), {}, ValueError, r"^x: 65536 x 32768 = .* overflows 32-bit"),
    (F((2, 1024, 1 << 20)), {}, ValueError, r"^x: .* overflows 32-bit"),
    (F((4, 5)), {"out": F((5, 4))}, ValueError, r"^out: expected shape \(4, 5\)"),
    (F((4, 5)), {"out": F((20,))}, ValueError, r"^out: expected shape \(4, 5\)"),
    (F((4, 5)), {"out": F((4, 5), "float16")}, TypeError, r"^out: expected dtype float32"),
    (F((4, 5), "float16"), {"out": F((4, 5))}, TypeError, r"^out: expected dtype float16"),
    (F((4, 5)), {"out": F((4, 5), "float64")}, TypeError, r"^out: expected dtype"),
    (F((4, 5)), {"out": np.empty((4, 5), np.float32)}, TypeError, r"^out: expected a CUDA array"),
    (F((4, 5)), {"out": F((4, 5), strides=(4, 16))}, ValueError, r"^out: must be C-contiguous"),
    (F((4, 5)), {"backend": "cuda"}, ValueError, r"^backend: expected 'ext', 'cupy' or None"),
    (F((4, 5)), {"variant": "no_such"}, ValueError, r"^variant: softmax has no variant 'no_such'"),
    (F((4, 5)), {"variant": 9}, ValueError, r"^variant: softmax has no variant 9"),
    (F((2, 40000)), {"variant": "5_regs"}, ValueError,
     r"^variant: softmax/5_regs cannot take these arguments: rows of 40000 elements do not fit"),
    (F((2, 262145)), {"variant": "7_cluster"}, ValueError,
     r"^variant: softmax/7_cluster cannot take these arguments: rows of 262145 elements do not fit in a "
     r"cluster's registers \(8 CTAs x 1024 threads x 32 = 262144"),
])
def test_validation_forward(x, kw, exc, match):
    with pytest.raises(exc, match=match):
        tfm_kernels.softmax(x, **kw)


@pytest.mark.parametrize("dy, y, kw, exc, match", [
    (np.ones((4, 4), np.float32), F((4, 4)), {}, TypeError, r"^dy: expected a CUDA array.*host"),
    (F((4, 4)), np.ones((4, 4), np.float32), {}, TypeError, r"^y: expected a CUDA array.*host"),
    (F((4, 4)), F((4, 4), "float64"), {}, TypeError, r"^y: expected dtype float32 or float16"),
    (F((4, 4), "float16"), F((4, 4)), {}, TypeError, r"^dy: expected y's dtype float32, got float16"),
    (F((4, 5)), F((4, 4)), {}, ValueError, r"^dy: expected y's shape \(4, 4\), got \(4, 5\)"),
    (F((20,)), F((4, 5)), {}, ValueError, r"^dy: expected y's shape \(4, 5\)"),
    (F(()), F(()), {}, ValueError, r"^y: expected at least 1 dimension"),
    (F((4, 5), strides=(4, 16)), F((4, 5)), {}, ValueError, r"^dy: must be C-contiguous"),
    (F((4, 5)), F((4, 5), strides=(4, 16)), {}, ValueError, r"^y: must be C-contiguous"),
    (F((65536, 32768)), F((65536, 32768)), {}, ValueError, r"^y: 65536 x 32768 = .* overflows 32-bit"),
    (F((4, 5)), F((4, 5)), {"out": F((4, 4))}, ValueError, r"^out: expected shape \(4, 5\)"),
    (F((4, 5)), F((4, 5)), {"out": F((4, 5), "float16")}, TypeError, r"^out: expected dtype float32"),
    (F((4, 5)), F((4, 5)), {"backend": "torch"}, ValueError, r"^backend: expected 'ext', 'cupy' or None"),
    (F((4, 5)), F((4, 5)), {"variant": "online"}, ValueError, r"^variant: softmax_backward has no variant 'online'"),
    (F((2, 20000)), F((2, 20000)), {"variant": "regs"}, ValueError,
     r"^variant: softmax_backward/5_regs cannot take these arguments: rows of 20000 elements"),
])
def test_validation_backward(dy, y, kw, exc, match):
    with pytest.raises(exc, match=match):
        tfm_kernels.softmax_backward(dy, y, **kw)


def test_out_aliasing_refused():
    x = F((8, 8), ptr=1 << 40)
    with pytest.raises(ValueError, match=r"^out: overlaps x in memory"):
        tfm_kernels.softmax(x, out=F((8, 8), ptr=(1 << 40) + 64))
    with pytest.raises(ValueError, match=r"^out: overlaps x in memory"):
        tfm_kernels.softmax(x, out=x)  # in place is refused too: the kernels read x through __restrict__
    dy, y = F((8, 8), ptr=1 << 41), F((8, 8), ptr=1 << 42)
    with pytest.raises(ValueError, match=r"^out: overlaps dy in memory"):
        tfm_kernels.softmax_backward(dy, y, out=dy)
    with pytest.raises(ValueError, match=r"^out: overlaps y in memory"):
        tfm_kernels.softmax_backward(dy, y, out=F((8, 8), ptr=(1 << 42) + 252))


def test_valid_call_without_device_says_why():
    """A well-formed call on a machine with no usable GPU stops at the device check with
    RuntimeError, after every argument check passed."""
    if _backend.status()["device"][0]:
        pytest.skip("a CUDA device is usable here; this checks the GPU-less path")
    for call in (lambda: tfm_kernels.softmax(F((3, 5))),
                 lambda: tfm_kernels.softmax(F((7,)), variant="1_naive"),
                 lambda: tfm_kernels.softmax_backward(F((2, 3, 5), "float16"), F((2, 3, 5), "float16"))):
        with pytest.raises(RuntimeError, match="no CUDA device is usable"):
            call()


# ---------------------------------------------------------------------------------------------
# Registry and launch planning, no GPU
# ---------------------------------------------------------------------------------------------

def test_ladders_registered():
    for op, ladder, numbers in (("softmax", FWD, [1, 2, 3, 4, 5, 6, 7]), ("softmax_backward", BWD, [1, 2, 3, 4, 5])):
        assert [v.number for v in ladder] == numbers, op
        for v in ladder:
            assert v.description and v.dtypes == ("float32", "float16"), v.qualname
            assert v.kernels, v.qualname
        assert [v.number for v in ladder if v.hot] == numbers[3:], op
    # Added after the only GPU run: opt-in (never the default) and saying why.
    for n in (6, 7):
        v = _registry.get("softmax", n)
        assert v.extra.get("opt_in") and "never run on a GPU" in v.extra.get("unverified", ""), n
    assert all(not v.extra.get("opt_in") for v in FWD[:5] + BWD)
    # Thread-block clusters: compute capability 9.0, refused on older devices before any launch.
    assert _registry.get("softmax", 7).arch == 90 and all(v.arch == 80 for v in FWD[:6] + BWD)
    with pytest.raises(ValueError, match=r"^variant: softmax/7_cluster needs compute capability 9.0"):
        _registry.choose("softmax", "7_cluster", dtype="float32", cc=80, rows=4, cols=65536)


def test_every_kernel_is_exported_and_launched():
    """Each (source, name) a variant lists is a TFM_EXPORT line of csrc/softmax.cu, and every
    export belongs to some variant (no dead instantiations compiled into both backends)."""
    exported = set(_backend.exports("softmax.cu"))
    listed = {k for v in FWD + BWD for s, k in v.kernels if s == "softmax.cu"}
    assert listed <= exported, sorted(listed - exported)
    assert exported <= listed, sorted(exported - listed)


@pytest.mark.parametrize("op, cap", [("softmax", 32768), ("softmax_backward", 16384)])
def test_default_choice_by_row_length(op, cap):
    for cols in (1, 3, 31, 1000, 8192, cap):
        for dt in ("float32", "float16"):
            assert _registry.choose(op, None, dtype=dt, rows=10, cols=cols).key == "5_regs", (cols, dt)
    for cols in (cap + 1, 100000, 262144):
        assert _registry.choose(op, None, dtype="float32", rows=10, cols=cols).number == 4, cols
        # The cluster variant (7) is opt-in: never the default, even on an sm_90 device.
        assert _registry.choose(op, None, dtype="float32", cc=90, rows=10, cols=cols).number == 4, cols


def test_planning_tables():
    assert [sm.regs_tpr(c, 32) for c in (1, 32, 33, 1024, 1025, 4096, 8192, 8193, 32768)] == \
           [1, 1, 32, 32, 128, 128, 256, 512, 1024]
    assert sm.regs_tpr(32769, 32) is None
    assert [sm.regs_tpr(c, 16) for c in (16, 17, 512, 8192, 16384)] == [1, 32, 32, 512, 1024]
    assert [sm.stream_tpr(c) for c in (1, 2048, 2049, 16384, 16385, 262144)] == [32, 32, 256, 256, 512, 512]
    assert [sm.cluster_plan(c) for c in (1, 32768, 32769, 65536, 65537, 131072, 131073, 262144)] == \
           [(512, 2), (512, 2), (512, 4), (512, 4), (512, 8), (512, 8), (1024, 8), (1024, 8)]
    assert sm.cluster_plan(262145) is None and sm.CLUSTER_CAP == 262144
    for tpr in sm.REGS_TPR + sm.STREAM_TPR:
        block, rpb = sm._groups_block(tpr)
        assert block * 1 <= 1024 and block % 32 == 0 and block == rpb * tpr


# --- NumPy emulation of the kernels' index mappings (csrc/softmax.cu) -------------------------

def emulate_for_each_pack(n: int, head: int, t: int, tpr: int, vec: int) -> list[tuple[int, int]]:
    """for_each_pack<VEC, TPR>: the (start, width) chunks thread t visits, in order."""
    if vec == 1:
        return [(i, 1) for i in range(t, n, tpr)]
    chunks = [(i, 1) for i in range(t, head, tpr)]
    packs = (n - head) // vec
    chunks += [(head + p * vec, vec) for p in range(t, packs, tpr)]
    chunks += [(i, 1) for i in range(head + packs * vec + t, n, tpr)]
    return chunks


def emulate_head(addr: int, n: int, itemsize: int) -> int:
    """head_elems: elements before the first 16-byte boundary, at most n."""
    return min(((16 - (addr & 15)) & 15) // itemsize, n)


@pytest.mark.parametrize("itemsize, vec", [(4, 4), (2, 8), (4, 1), (2, 1)])
def test_emulated_stream_walk_covers_each_element_once(itemsize, vec):
    rng = np.random.default_rng(1)
    for n in [1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100, 1000, 1025, 4097]:
        for tpr in (32, 256):
            for residue in range(0, 16, itemsize):  # row start address mod 16
                addr = 4096 * int(rng.integers(1, 100)) + residue
                head = emulate_head(addr, n, itemsize) if vec > 1 else 0
                seen = np.zeros(n, np.int64)
                for t in range(tpr):
                    for start, w in emulate_for_each_pack(n, head, t, tpr, vec):
                        assert 0 <= start and start + w <= n
                        if w > 1:  # a pack must be a whole aligned 16-byte access
                            assert w == vec and (addr + start * itemsize) % 16 == 0
                        seen[start:start + w] += 1
                assert (seen == 1).all(), (n, tpr, residue)


def emulate_regs_slots(cols: int, tpr: int, vec: int, e: int) -> dict[int, list[int]]:
    """softmax_*_regs: thread t's register slots -> element index (or -1 for padding)."""
    out = {}
    for t in range(tpr):
        slots = []
        for j in range(e // vec):
            i = (j * tpr + t) * vec
            if i + vec <= cols:
                slots += list(range(i, i + vec))
            else:
                slots += [i + k if i + k < cols else -1 for k in range(vec)]
        out[t] = slots
    return out


@pytest.mark.parametrize("e", [sm.FWD_REGS_E, sm.BWD_REGS_E])
def test_emulated_register_slots_cover_each_element_once(e):
    for cols in [1, 2, 3, 4, 5, 8, 16, 17, 31, 32, 33, 100, 1000, 1024, 1025, 4097, 8192, 16384, 32768]:
        tpr = sm.regs_tpr(cols, e)
        if tpr is None:
            continue
        for vec in (1, 4, 8):
            if vec > 1 and cols % vec:
                continue  # the wrapper uses the pack path only when whole rows are packs
            if e % vec:
                continue
            seen = np.zeros(cols, np.int64)
            for t, slots in emulate_regs_slots(cols, tpr, vec, e).items():
                for idx in slots:
                    if idx >= 0:
                        seen[idx] += 1
            assert (seen == 1).all(), (cols, tpr, vec)


def emulate_cluster_slices(cols: int, c: int, nt: int, vec: int, e: int) -> list[tuple[int, int]]:
    """softmax_fwd_cluster: (start, n) of each CTA rank's slice: S = cdiv(cols, C) rounded up to
    whole VEC-packs, rank r takes min(S, cols - r * S) (at least 0) elements from r * S."""
    s = sm._cdiv(sm._cdiv(cols, c), vec) * vec
    assert s <= nt * e, (cols, c, nt)
    return [(r * s, max(0, min(s, cols - r * s))) for r in range(c)]


def test_emulated_cluster_slices_cover_each_element_once():
    """Each CTA's slice, walked by the register slots of a (NT threads, E) block, covers the row
    exactly once, and with VEC > 1 every slice (so every pack) starts 16-byte aligned."""
    for cols in [1, 2, 7, 8, 17, 1000, 4097, 32768, 32769, 65536, 65537, 100000, 131072, 131073, 262144]:
        nt, c = sm.cluster_plan(cols)
        for vec in (1, 4, 8):
            if vec > 1 and cols % vec:
                continue
            seen = np.zeros(cols, np.int64)
            for start, n in emulate_cluster_slices(cols, c, nt, vec, sm.CLUSTER_E):
                assert start % vec == 0 or n == 0
                for idx in (i for slots in emulate_regs_slots(n, nt, vec, sm.CLUSTER_E).values() for i in slots):
                    if idx >= 0:
                        seen[start + idx] += 1
            assert (seen == 1).all(), (cols, vec)


def test_cluster_kernels_machine_code():
    """softmax_fwd_cluster as the CuPy backend compiles it (NVRTC, sm_90 cubin; no GPU): each of the
    16 carries its compile-time cluster size (EIATTR_CTA_PER_CLUSTER = C x 1 x 1: what lets both
    launchers launch it without a cluster launch attribute), and its SASS has exactly two cluster
    barriers (the per-row exchange and the exit) with one MEMBAR: the exit barrier is the relaxed
    one, so a CTA does not wait for its y stores to drain before leaving."""
    import re
    import subprocess
    import tempfile

    from tfm_kernels import _sass

    if _sass.cuobjdump() is None:
        pytest.skip("no cuobjdump (nvidia-cuda-cuobjdump wheel or a CUDA toolkit)")
    v = _registry.get("softmax", 7)
    names = [n for _, n in v.kernels]
    cubin, lowered, _ = _sass.nvrtc_cubin("softmax.cu", names)
    exe, env = _sass.cuobjdump()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = _sass.dump_sass.__wrapped__(f.name)
        elf = subprocess.run([exe, "-elf", f.name], capture_output=True, text=True, env=env, check=True).stdout
    # "<section header>\n ... EIATTR_CTA_PER_CLUSTER ... Value: 0xC 0x1 0x1" per kernel's .nv.info
    dims = {m.group(1): tuple(int(d, 16) for d in m.group(2).split())
            for m in re.finditer(r"^\.nv\.info\.(\S+)\n(?:(?!^\.nv\.info).*\n)*?\s*Attribute:\s*EIATTR_CTA_PER_CLUSTER"
                                 r"\s*\n(?:.*\n)*?\s*Value:\s*((?:0x[0-9a-f]+\s*){3})", elf, re.M)}
    for n in names:
        c = int(n.split(",")[3])
        assert dims.get(lowered[n]) == (c, 1, 1), (n, dims.get(lowered[n]))
        ops = [_sass.opcode(i) for _, i in _sass.instructions(sass[lowered[n]])]
        counts = {k: sum(o.startswith(k) for o in ops) for k in ("UCGABAR_ARV", "UCGABAR_WAIT", "MEMBAR")}
        assert counts == {"UCGABAR_ARV": 2, "UCGABAR_WAIT": 2, "MEMBAR": 1}, (n, counts)


def test_emulated_row_loop_reaches_every_row():
    """The uniform row loop (rb = blockIdx*RPB; rb < rows; rb += grid*RPB; row = rb + g) with the
    grid capped: every row exactly once, and no block skips a barrier round another block takes."""
    for tpr in (1, 32, 256):
        block, rpb = sm._groups_block(tpr)
        for rows in (1, 3, 127, 128, 129, 1000):
            for grid in (1, 2, 7, sm._cdiv(rows, rpb)):
                seen = np.zeros(rows, np.int64)
                for b in range(grid):
                    rb = b * rpb
                    while rb < rows:
                        for g in range(rpb):
                            if rb + g < rows:
                                seen[rb + g] += 1
                        rb += grid * rpb
                assert (seen == 1).all(), (tpr, rows, grid)


def _online_merge(m, d, m2, d2):
    """reduce.cuh online_merge, in float32."""
    mn = np.maximum(m, m2)
    ms = np.where(mn == -np.inf, np.float32(0), mn)
    with np.errstate(invalid="ignore"):
        return mn, (d * np.exp(m - ms) + d2 * np.exp(m2 - ms)).astype(np.float32)


def test_emulated_online_softmax_matches_reference_and_masks():
    """softmax_fwd_online's algorithm in float32 NumPy: per-thread (m, d) over VEC-packs, then the
    xor butterfly, then the write pass; masked and all -inf rows give exact zeros."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 77)).astype(np.float32) * 3
    x[1, rng.random(77) < 0.3] = -np.inf
    x[2, :] = -np.inf
    x[3, :-1] = -np.inf
    tpr, vec = 8, 4
    y = np.empty_like(x)
    for r in range(x.shape[0]):
        ms_t, d_t = np.full(tpr, -np.inf, np.float32), np.zeros(tpr, np.float32)
        for t in range(tpr):
            for start, w in emulate_for_each_pack(x.shape[1], 0, t, tpr, vec):
                a = x[r, start:start + w]
                mn = np.maximum(ms_t[t], a.max())
                s = np.float32(0)
                msafe = np.float32(0) if mn == -np.inf else mn
                s = np.exp(a - msafe).sum(dtype=np.float32)
                with np.errstate(invalid="ignore"):
                    d_t[t] = d_t[t] * np.exp(ms_t[t] - msafe) + s
                ms_t[t] = mn
        o = tpr // 2
        while o:  # butterfly: lane l merges with l ^ o
            idx = np.arange(tpr) ^ o
            ms_t, d_t = _online_merge(ms_t, d_t, ms_t[idx], d_t[idx])
            o //= 2
        assert np.all(ms_t == ms_t[0]) and np.all(d_t == d_t[0])
        m, d = ms_t[0], d_t[0]
        msafe = np.float32(0) if m == -np.inf else m
        inv = np.float32(1) / d if d > 0 else np.float32(0)
        y[r] = np.exp(x[r] - msafe) * inv
    assert not np.isnan(y).any()
    ref = numpy_ref.softmax(x.astype(np.float64))
    assert_close_fp32(y, ref, reduction=77)
    assert (y[2] == 0).all() and (y[1][x[1] == -np.inf] == 0).all() and y[3, -1] == 1


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------

# (rows, cols): awkward lengths on both sides of every planning threshold, and multiples of 8 that
# take the 16-byte path of every register-kernel width (TPR 1, 32, 128, 256, 512, 1024).
SHAPES = [(1, 1), (5, 1), (6, 8), (7, 17), (5, 24), (9, 31), (11, 33), (3, 97), (64, 129), (40, 1000),
          (4, 1024), (6, 1025), (3, 2048), (3, 4096), (3, 4097), (2, 8192), (3, 8193), (2, 16384),
          (2, 16385), (2, 32768), (2, 100000), (1, 262144), (70000, 3)]
MARGIN = 64  # poisoned elements before and after every output: a stray write changes them


def _inputs(rng, rows, cols, dtype, kind="normal"):
    if kind == "large":  # |x| up to 1e4 (fits float16's 65504): near one-hot rows, max-subtraction matters
        x = rng.uniform(-1e4, 1e4, (rows, cols))
    else:
        x = rng.standard_normal((rows, cols)) * 2.0
    if kind == "masked":  # ~30% -inf entries, one row all -inf, one row with a single finite entry
        x[rng.random((rows, cols)) < 0.3] = -np.inf
        x[rng.integers(rows)] = -np.inf
        if rows > 1:
            r = (rows - 1) // 2
            x[r] = -np.inf
            x[r, rng.integers(cols)] = 1.0
    return x.astype(dtype)


def _guarded_out(shape, dtype):
    """A poisoned output inside a poisoned buffer: (out view, whole buffer)."""
    import cupy as cp

    n = int(np.prod(shape))
    buf = cp.full(n + 2 * MARGIN, POISON, dtype=dtype)
    return buf[MARGIN:MARGIN + n].reshape(shape), buf


def _margins_untouched(buf, what):
    import cupy as cp

    host = cp.asnumpy(buf)
    assert np.isnan(host[:MARGIN]).all() and np.isnan(host[-MARGIN:]).all(), f"{what}: wrote outside out"


def _check_fwd(y, x, dtype, what):
    cols = x.shape[-1]
    ref = numpy_ref.softmax(x.astype(np.float64))
    if dtype == np.float32:
        assert_close_fp32(y, ref, reduction=cols, what=what)
    else:
        base = numpy_ref.softmax(x.astype(np.float32)).astype(np.float16)
        assert_close_lowprec(y, ref, base, what=what)
    # Masks are exact: -inf entries (and all -inf rows) give 0, never NaN.
    masked = np.isneginf(x)
    assert (np.asarray(y)[masked] == 0).all(), f"{what}: masked entries not exactly 0"


def backward_term_scale(dy, y) -> float:
    """max_i y_i * (|dy_i| + sum_j |dy_j y_j|): the size of the terms dx_i = y_i*dy_i - y_i*s is
    made of. Rounding errors scale with it, not with |dx|: on a near one-hot row (|x| ~ 1e4)
    dx at the peak is dy_p - s with s ~ dy_p, a cancellation that leaves |dx| ~ 1e-6 while fp32
    leaves an error ~ 1e-8 (the float32 NumPy computation too), so "1e-6 x max|dx|" would demand
    more than fp32 holds."""
    dy, y = dy.astype(np.float64), y.astype(np.float64)
    t = np.abs(dy * y).sum(axis=-1, keepdims=True)
    return float(np.max(np.abs(y) * (np.abs(dy) + t), initial=0.0))


def _check_bwd(dx, dy, y, dtype, what):
    cols = y.shape[-1]
    ref = numpy_ref.softmax_backward(dy.astype(np.float64), y.astype(np.float64))
    scale = backward_term_scale(dy, y)
    mx, mean, _ = errors(dx, ref)
    if dtype == np.float32:
        tol = 1e-6 * np.sqrt(cols) * scale
        assert mx <= tol, f"{what}: max err {mx:.3e} (mean {mean:.3e}) > tol {tol:.3e}, term scale {scale:.3e}"
    else:  # 2x the float32-math NumPy baseline (rounded to float16) + 1e-5 of the term scale
        base, _, _ = errors(numpy_ref.softmax_backward(dy.astype(np.float32), y.astype(np.float32))
                            .astype(np.float16), ref)
        tol = 2.0 * base + 1e-5 * scale
        assert mx <= tol, f"{what}: max err {mx:.3e} (mean {mean:.3e}) > 2 x baseline {base:.3e} + 1e-5 x {scale:.3e}"
    assert (np.asarray(dx)[y == 0] == 0).all(), f"{what}: zero-probability entries got a gradient"


def _run_fwd(backend, variant, x):
    import cupy as cp

    out, buf = _guarded_out(x.shape, x.dtype)
    got = tfm_kernels.softmax(cp.asarray(x), backend=backend, variant=variant, out=out)
    assert got is out
    _margins_untouched(buf, f"softmax/{variant}")
    return cp.asnumpy(out)


def _run_bwd(backend, variant, dy, y):
    import cupy as cp

    out, buf = _guarded_out(y.shape, y.dtype)
    got = tfm_kernels.softmax_backward(cp.asarray(dy), cp.asarray(y), backend=backend, variant=variant, out=out)
    assert got is out
    _margins_untouched(buf, f"softmax_backward/{variant}")
    return cp.asnumpy(out)


def _backward_inputs(rng, rows, cols, dtype, kind="normal"):
    x = _inputs(rng, rows, cols, np.float64, kind)
    y = numpy_ref.softmax(x).astype(dtype)
    dy = rng.standard_normal((rows, cols)).astype(dtype)
    return dy, y


DTYPE_IDS = {np.float32: "fp32", np.float16: "fp16"}


def _skip_unless_device_has(backend, variant):
    """A variant newer than the device (forward 7: thread-block clusters, sm_90): its refusal is
    checked (forward) and the test skipped."""
    import cupy as cp

    cc = _backend.get(backend).cc
    if cc < variant.arch:
        if variant.op == "softmax":
            with pytest.raises(ValueError, match=r"^variant: .* needs compute capability"):
                tfm_kernels.softmax(cp.ones((2, 8), cp.float32), backend=backend, variant=variant.key)
        pytest.skip(f"{variant.qualname} needs compute capability {variant.arch / 10:.1f}, this device has {cc / 10:.1f}")


def cluster_slice_inputs(rng, rows, cols, dtype):
    """Rows built on softmax_fwd_cluster's slices (sm.cluster_plan; the scalar slices: with 16-byte
    packs a boundary moves by less than a pack, the pattern stays): row 0 has slice 0 all -inf and
    N(0, 2^2) elsewhere; row 1 is -inf but in the last slice, whose values sit just below -1e4 (a
    CTA with m_r = -inf beside a row max of -1e4: its scale must be exp(-inf - M) = 0, not
    exp(0 + 1e4) = inf, or 0 * inf = NaN); row 2 is -inf but for one entry in the middle slice;
    further rows N(0, 2^2) with their max in the last slice. Any rows/cols (short rows leave CTAs
    with empty slices)."""
    _, c = sm.cluster_plan(cols)
    s = sm._cdiv(cols, c)
    x = rng.standard_normal((rows, cols)) * 2.0
    x[0, :s] = -np.inf
    if rows > 1:
        x[1] = -np.inf
        last = (c - 1) * s if (c - 1) * s < cols else 0
        x[1, last:] = -1e4 - rng.uniform(0, 50, cols - last)
    if rows > 2:
        x[2] = -np.inf
        x[2, min(cols - 1, (c // 2) * s + s // 2)] = 3.0
    if rows > 3:
        x[3:, -1] = 30.0
    return x.astype(dtype)


def _sweep(variant, dtype):
    """(rows, cols, kind) of the GPU sweep: every shape of SHAPES the variant takes, each value
    pattern; the value patterns do not depend on size, so "large" and "masked" run only where the
    float64 reference stays small (<= 300000 elements)."""
    for rows, cols in SHAPES:
        if variant.reason_unsupported(dtype=np.dtype(dtype).name, rows=rows, cols=cols):
            continue
        for kind in ("normal", "large", "masked"):
            if kind == "normal" or rows * cols <= 300_000:
                yield rows, cols, kind


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("variant", FWD, ids=lambda v: v.key)
def test_forward_variant(backend, variant, dtype, rng):
    _skip_unless_device_has(backend, variant)
    for rows, cols, kind in _sweep(variant, dtype):
        x = _inputs(rng, rows, cols, dtype, kind)
        y = _run_fwd(backend, variant.key, x)
        _check_fwd(y, x, dtype, f"{variant.qualname} {backend} {DTYPE_IDS[dtype]} {rows}x{cols} {kind}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("variant", BWD, ids=lambda v: v.key)
def test_backward_variant(backend, variant, dtype, rng):
    for rows, cols, kind in _sweep(variant, dtype):
        dy, y = _backward_inputs(rng, rows, cols, dtype, kind)
        dx = _run_bwd(backend, variant.key, dy, y)
        _check_bwd(dx, dy, y, dtype, f"{variant.qualname} {backend} {DTYPE_IDS[dtype]} {rows}x{cols} {kind}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=DTYPE_IDS.get)
def test_cluster_slices(backend, dtype, rng):
    """Forward 7 on rows whose masks and maxima sit on its CTA slices, at every cluster plan (2, 4,
    8 CTAs of 512 threads, 8 of 1024) and its edges, lengths 1 .. 262144."""
    v = _registry.get("softmax", 7)
    _skip_unless_device_has(backend, v)
    for rows, cols in ((4, 1), (5, 17), (4, 4097), (5, 32768), (4, 32769), (4, 65536), (3, 100000),
                       (3, 131072), (3, 131073), (4, 262144)):
        x = cluster_slice_inputs(rng, rows, cols, dtype)
        _check_fwd(_run_fwd(backend, v.key, x), x, dtype, f"{v.qualname} {backend} {DTYPE_IDS[dtype]} {rows}x{cols} slices")


@pytest.mark.gpu
def test_all_neg_inf_row_gives_exact_zeros(backend):
    import cupy as cp

    for dtype in (cp.float32, cp.float16):
        for v in FWD:
            if _backend.get(backend).cc < v.arch:
                continue  # 7_cluster on a device before sm_90
            x = cp.full((3, 37), -cp.inf, dtype=dtype)
            x[1] = cp.arange(37, dtype=dtype) / 10
            y = tfm_kernels.softmax(x, backend=backend, variant=v.key).get()
            assert (y[0] == 0).all() and (y[2] == 0).all() and not np.isnan(y).any(), v.qualname
        for v in BWD:
            y = cp.zeros((2, 37), dtype=dtype)
            dy = cp.ones((2, 37), dtype=dtype)
            dx = tfm_kernels.softmax_backward(dy, y, backend=backend, variant=v.key).get()
            assert (dx == 0).all(), v.qualname


@pytest.mark.gpu
@pytest.mark.parametrize("variant", FWD + BWD, ids=lambda v: v.qualname)
def test_grid_stride_loops(backend, variant, rng, monkeypatch):
    """MAX_GRID lowered to 3 blocks: every kernel must walk its row loop (and keep its barriers and
    shuffles uniform while some groups run out of rows)."""
    _skip_unless_device_has(backend, variant)
    monkeypatch.setattr(sm, "MAX_GRID", 3)
    for rows, cols in ((1001, 33), (37, 1025), (300, 5)):
        if variant.op == "softmax":
            x = _inputs(rng, rows, cols, np.float32, "masked")
            _check_fwd(_run_fwd(backend, variant.key, x), x, np.float32, f"{variant.qualname} grid=3 {rows}x{cols}")
        else:
            dy, y = _backward_inputs(rng, rows, cols, np.float32, "masked")
            _check_bwd(_run_bwd(backend, variant.key, dy, y), dy, y, np.float32,
                       f"{variant.qualname} grid=3 {rows}x{cols}")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", FWD + BWD, ids=lambda v: v.qualname)
def test_misaligned_views(backend, variant, rng):
    """Views that start 1 element into their allocation (co-aligned: the streaming kernels peel a
    scalar head; the register kernels fall back to scalar), and inputs and output with different
    residues mod 16 (every kernel falls back to scalar). Row lengths a multiple of the pack, so
    only the addresses forbid the vector path."""
    _skip_unless_device_has(backend, variant)
    import cupy as cp

    for dtype in (np.float32, np.float16):
        rows, cols = 9, 64
        for x_off, o_off in ((1, 1), (1, 0), (0, 3)):
            def view(a, off):
                buf = cp.full(a.size + off, POISON, dtype=a.dtype)
                v = buf[off:].reshape(a.shape)
                v[...] = cp.asarray(a)
                return v
            out = view(np.full((rows, cols), np.nan, dtype), o_off)
            what = f"{variant.qualname} {backend} {DTYPE_IDS[dtype]} offsets x={x_off} out={o_off}"
            if variant.op == "softmax":
                x = _inputs(rng, rows, cols, dtype, "masked")
                tfm_kernels.softmax(view(x, x_off), backend=backend, variant=variant.key, out=out)
                _check_fwd(cp.asnumpy(out), x, dtype, what)
            else:
                dy, y = _backward_inputs(rng, rows, cols, dtype, "masked")
                tfm_kernels.softmax_backward(view(dy, x_off), view(y, o_off), backend=backend,
                                             variant=variant.key, out=out)
                _check_bwd(cp.asnumpy(out), dy, y, dtype, what)


@pytest.mark.gpu
def test_ranks_default_variant_and_allocation(backend, rng):
    """Any rank >= 1, softmax over the last axis; no variant, no out: a fresh array of x's shape
    and dtype from the default variant."""
    import cupy as cp

    for shape in ((1000,), (1,), (2, 3, 5, 33), (4, 1, 129), (3, 0), (0, 7)):
        for dtype in (np.float32, np.float16):
            x = _inputs(rng, int(np.prod(shape[:-1])), shape[-1], dtype).reshape(shape)
            y = tfm_kernels.softmax(cp.asarray(x), backend=backend)
            assert y.shape == shape and y.dtype == dtype
            dy = rng.standard_normal(shape).astype(dtype)
            yr = numpy_ref.softmax(x.astype(np.float64)).astype(dtype)
            dx = tfm_kernels.softmax_backward(cp.asarray(dy), cp.asarray(yr), backend=backend)
            assert dx.shape == shape and dx.dtype == dtype
            if x.size:
                _check_fwd(cp.asnumpy(y), x, dtype, f"default {backend} {shape}")
                _check_bwd(cp.asnumpy(dx), dy, yr, dtype, f"default backward {backend} {shape}")


@pytest.mark.gpu
def test_torch_cuda_tensors_accepted(backend, rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    x = torch.randn(33, 1000, device="cuda")
    y = tfm_kernels.softmax(x, backend=backend)
    torch.cuda.synchronize()
    ref = torch.softmax(x.double(), dim=-1).cpu().numpy()
    assert_close_fp32(y.get(), ref, reduction=1000)

