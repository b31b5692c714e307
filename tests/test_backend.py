"""The launch plumbing: validation, backend selection, argument packing, and (on a GPU) the two
backends launching the self-test kernels of csrc/ext/plumbing_test.cu with identical results.

Without a GPU: import works, ``status()`` explains, a call raises RuntimeError with the reason, and
every validation error (TypeError/ValueError naming the argument) is raised before the device is
needed. With a GPU, each backend must pass every parameter kind of the Launch contract bit for bit
(int32, int64, float32, uint64, uint32, float64, a 128-byte alignas(64) struct by value), template
name expressions, more than 48 KiB of dynamic shared memory, a non-default stream, and raise
RuntimeError with CUDA's error string when a launch is refused.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from tfm_kernels import _backend, _validate
from tfm_kernels._registry import Launch

PLUMB = "ext/plumbing_test.cu"


class FakeCuda:
    """Metadata of a CUDA array (``__cuda_array_interface__``) with no memory behind it."""

    def __init__(self, shape=(3, 4), typestr="<f4", strides=None, ptr=0x7F0000000000):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "strides": strides,
                                         "data": (ptr, False), "version": 3}


def _no_device() -> bool:
    return not _backend.status()["device"][0]


# --- import and status ---------------------------------------------------------------------------

def test_import_does_no_gpu_work():
    code = ("import sys, tfm_kernels; tfm_kernels.variants('softmax'); "
            "assert 'cupy' not in sys.modules, 'importing tfm_kernels imported cupy'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_status_is_total_and_cached():
    st = _backend.status()
    assert set(st) == {"device", "ext", "cupy"}
    for key, (ok, why) in st.items():
        assert isinstance(ok, bool) and isinstance(why, str) and why, key
    assert _backend.status() is st


def test_info_never_raises():
    d = _backend.info()
    assert {"device", "backends", "csrc"} <= set(d)
    assert d["device"]["ok"] == _backend.status()["device"][0]


@pytest.mark.skipif(not _no_device(), reason="a CUDA device is usable here")
def test_no_device_get_raises_with_reason():
    why = _backend.status()["device"][1]
    for name in (None, "ext", "cupy"):
        with pytest.raises(RuntimeError, match="no CUDA device is usable") as e:
            _backend.get(name)
        assert why in str(e.value)


@pytest.mark.skipif(not _no_device(), reason="a CUDA device is usable here")
def test_no_device_valid_array_raises_runtime_error():
    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        _validate.as_array(FakeCuda(), "x")
    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        _validate.out_array(None, "out", (3, 4), "float32")


@pytest.mark.skipif(not _no_device(), reason="a CUDA device is usable here")
def test_no_device_op_raises_runtime_error():
    import tfm_kernels

    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        tfm_kernels.softmax(FakeCuda((5, 7)))


def test_unknown_backend_is_value_error():
    with pytest.raises(ValueError, match=r"^backend: "):
        _backend.get("opencl")


# --- validation: metadata errors, no device needed ----------------------------------------------

@pytest.mark.parametrize("bad,kind,pattern", [
    (np.ones((3, 4), np.float32), TypeError, "on the host"),
    ([1.0, 2.0], TypeError, "expected a CUDA array"),
    (None, TypeError, "expected a CUDA array"),
    (FakeCuda(typestr="<f8"), TypeError, "expected dtype float32, got float64"),
    (FakeCuda(strides=(4, 12)), ValueError, "C-contiguous"),
])
def test_as_array_rejects(bad, kind, pattern):
    with pytest.raises(kind, match=pattern) as e:
        _validate.as_array(bad, "weights")
    assert str(e.value).startswith("weights: ")


def test_as_array_rejects_ndim_and_shape():
    with pytest.raises(ValueError, match=r"^x: expected 3 dimensions"):
        _validate.as_array(FakeCuda(), "x", ndim=3)
    with pytest.raises(ValueError, match=r"^x: expected 1 or 3 dimensions"):
        _validate.as_array(FakeCuda(), "x", ndim=(1, 3))
    with pytest.raises(ValueError, match=r"^out: expected shape \(4, 3\)"):
        _validate.out_array(FakeCuda(), "out", (4, 3), "float32")
    with pytest.raises(TypeError, match=r"^out: expected dtype float16"):
        _validate.out_array(FakeCuda(), "out", (3, 4), "float16")


def test_as_array_accepts_size_one_strides():
    # PyTorch reports arbitrary strides for size-1 dimensions; they do not make a view strided.
    assert _validate._c_contiguous((1, 4), (999, 4), 4)
    assert _validate._c_contiguous((3, 4), (16, 4), 4)
    assert not _validate._c_contiguous((3, 4), (32, 4), 4)


def test_torch_cpu_tensor_is_type_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^q: expected a CUDA array.*DLPack device type 1"):
        _validate.as_array(torch.ones(3), "q")


def test_check_int32_indexing():
    assert _validate.INDEX_MAX == 2**31 - 1 - 2**16  # headroom for loop bounds stepping past the end
    assert _validate.check_int32_indexing("x", 2**15, 2**16 - 3) == 2**15 * (2**16 - 3)
    with pytest.raises(ValueError, match=r"^x: 32768 x 65534 = 2147418112 elements overflows"):
        _validate.check_int32_indexing("x", 2**15, 2**16 - 2)
    with pytest.raises(ValueError, match=r"^x: 1 x 2147483547 = .* overflows"):  # one long dimension
        _validate.check_int32_indexing("x", 1, 2**31 - 101)


# --- argument packing and launch checks (pure Python) ---------------------------------------------

def test_pack_alignment_matches_the_abi():
    cupy = pytest.importorskip("cupy")
    blob = bytes(range(128))
    launch = Launch(PLUMB, "tfm_plumbing_args", (1, 1, 1), (1, 1, 1),
                    (np.int32(-5), np.int64(7), np.float32(1.5), np.uint64(2**63 + 1), np.uint32(9),
                     np.float64(-2.25), blob))
    buf, offsets = _backend._pack(launch, cupy)
    # int32 at 0, int64 at 8, float at 16, uint64 at 24, uint32 at 32, double at 40, struct at 64
    assert offsets == [0, 8, 16, 24, 32, 40, 64]
    assert len(buf) == 192
    assert struct.unpack_from("<i", buf, 0)[0] == -5
    assert struct.unpack_from("<Q", buf, 24)[0] == 2**63 + 1
    assert buf[64:] == blob


@pytest.mark.parametrize("arg", [3, 2.5, np.int16(1), np.ones(2, np.float32), "s"])
def test_pack_refuses_ambiguous_arguments(arg):
    cupy = pytest.importorskip("cupy")
    launch = Launch(PLUMB, "tfm_plumbing_fill<float, 1>", (1, 1, 1), (1, 1, 1), (arg,))
    with pytest.raises(TypeError, match="argument 0"):
        _backend._pack(launch, cupy)
    with pytest.raises(TypeError, match="argument 0"):
        _backend._cupy_args(launch, cupy)


@pytest.mark.parametrize("grid,block,smem", [
    ((0, 1, 1), (32, 1, 1), 0), ((1, 1), (32, 1, 1), 0), ((1, 65536, 1), (32, 1, 1), 0),
    ((1, 1, 1), (1025, 1, 1), 0), ((1, 1, 1), (32, 1, 1), -1),
])
def test_launch_shape_checked_before_launch(grid, block, smem):
    with pytest.raises(ValueError, match="tfm_plumbing_smem"):
        _backend._check_launch(Launch(PLUMB, "tfm_plumbing_smem", grid, block, (), smem))


def test_arch_marker():
    assert _backend.source_arch("// x.cu\n// tfm-arch: sm_90a\n") == "sm_90a"
    assert _backend.source_arch("// x.cu\n") is None


# --- on a GPU: both backends, the same bits ----------------------------------------------------------

def _args_launch(out, blob):
    return Launch(PLUMB, "tfm_plumbing_args", (1, 1, 1), (32, 1, 1),
                  (out, np.int32(-123456), np.int64(-(2**40) - 3), np.float32(3.25), np.uint64(2**64 - 2),
                   np.uint32(4000000000), np.float64(-1.0e300), blob))


def test_gpu_scalar_and_struct_arguments(backend):
    import cupy

    be = _backend.get(backend)
    out = cupy.zeros(22, dtype=cupy.uint64)
    blob = np.arange(16, dtype=np.uint64) * np.uint64(0x0101010101010101)
    be.launch(_args_launch(out, blob.tobytes()))
    got = out.get()
    assert got[0] == np.uint64(-123456 & (2**64 - 1))
    assert got[1] == np.uint64(-(2**40) - 3 & (2**64 - 1))
    assert got[2] == struct.unpack("<I", struct.pack("<f", 3.25))[0]
    assert got[3] == 2**64 - 2
    assert got[4] == 4000000000
    assert got[5] == struct.unpack("<Q", struct.pack("<d", -1.0e300))[0]
    np.testing.assert_array_equal(got[6:], blob)


@pytest.mark.parametrize("name,dtype,scale", [("tfm_plumbing_fill<float, 1>", np.float32, 1),
                                              ("tfm_plumbing_fill<int64_t, 2>", np.int64, 2)])
def test_gpu_template_name_expressions(backend, name, dtype, scale):
    import cupy

    be = _backend.get(backend)
    n = 4097  # not a multiple of the block: the guard matters
    out = cupy.full(n + 3, 7, dtype=dtype)  # 3 sentinels past the end must survive
    be.launch(Launch(PLUMB, name, (5, 1, 1), (128, 1, 1), (out, np.int32(n), dtype(11))))
    got = out.get()
    np.testing.assert_array_equal(got[:n], dtype(11) + dtype(scale) * np.arange(n, dtype=dtype))
    np.testing.assert_array_equal(got[n:], 7)


def test_gpu_large_dynamic_shared_memory(backend):
    import cupy

    be = _backend.get(backend)
    n = 40_000  # 160 KB of dynamic shared memory: > 48 KiB default, < 227 KiB on sm_90
    x = cupy.arange(n, dtype=cupy.float32)
    y = cupy.full(n, cupy.nan, dtype=cupy.float32)
    be.launch(Launch(PLUMB, "tfm_plumbing_smem", (1, 1, 1), (512, 1, 1), (x, y, np.int32(n)), smem=4 * n))
    np.testing.assert_array_equal(y.get(), np.arange(n, dtype=np.float32)[::-1])


def test_gpu_refused_launch_raises_cuda_error(backend):
    import cupy

    be = _backend.get(backend)
    x = cupy.zeros(4, dtype=cupy.float32)
    # 1 MiB of shared memory exceeds every GPU's limit: the driver refuses the launch.
    with pytest.raises(RuntimeError) as e:
        be.launch(Launch(PLUMB, "tfm_plumbing_smem", (1, 1, 1), (32, 1, 1), (x, x, np.int32(4)), smem=2**20))
    assert "cuda" in str(e.value).lower() or "invalid" in str(e.value).lower()
    # the context is still usable afterwards
    out = cupy.zeros(8, dtype=cupy.float32)
    be.launch(Launch(PLUMB, "tfm_plumbing_fill<float, 1>", (1, 1, 1), (32, 1, 1), (out, np.int32(8), np.float32(1))))
    np.testing.assert_array_equal(out.get(), 1 + np.arange(8, dtype=np.float32))


def test_gpu_unknown_kernel_is_value_error(backend):
    be = _backend.get(backend)
    with pytest.raises(ValueError, match="kernel: "):
        be.launch(Launch(PLUMB, "tfm_plumbing_nope", (1, 1, 1), (32, 1, 1), ()))


def test_gpu_launches_on_the_current_stream(backend):
    import cupy

    be = _backend.get(backend)
    n = 1 << 20
    out = cupy.zeros(n, dtype=cupy.float32)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        be.launch(Launch(PLUMB, "tfm_plumbing_fill<float, 1>", (64, 1, 1), (256, 1, 1),
                         (out, np.int32(n), np.float32(0))))
        total = float(out[-1])  # enqueued on s after the kernel, so it sees the kernel's writes
    assert total == n - 1


def test_gpu_as_array_zero_copy(backend):
    import cupy

    x = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    assert _validate.as_array(x, "x") is x
    with pytest.raises(ValueError, match=r"^x: must be C-contiguous"):
        _validate.as_array(x.T, "x")
    y = _validate.as_array(FakeCudaOf(x), "x")
    assert y.data.ptr == x.data.ptr
    out = _validate.out_array(None, "out", (2, 5), "float16")
    assert out.shape == (2, 5) and out.dtype == np.float16


def test_gpu_torch_tensor_zero_copy(backend):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    t = torch.arange(10, dtype=torch.float32, device="cuda")
    a = _validate.as_array(t, "t")
    assert a.data.ptr == t.data_ptr()
    with pytest.raises(TypeError, match=r"^t: expected dtype float32, got float64"):
        _validate.as_array(t.double(), "t")


class FakeCudaOf:
    """Re-exports a CuPy array through ``__cuda_array_interface__`` only (like Numba would)."""

    def __init__(self, a):
        self.__cuda_array_interface__ = a.__cuda_array_interface__


# --- the check runner's protocol, on a fake backend (no GPU needed) --------------------------------

def test_check_runner_protocol(monkeypatch):
    import types

    from tfm_kernels import _registry, check

    keys = [v.key for v in _registry.variants("softmax")]
    assert len(keys) >= 2, "needs the softmax ladder registered"
    ref = np.linspace(0.1, 1.0, 12).reshape(3, 4)

    def run(backend, variant):
        if variant == keys[0]:
            raise ValueError(f"variant: softmax/{variant} cannot take these arguments: test")
        if variant == keys[1] and backend == "cupy":
            return (ref + 1e-3).astype(np.float32)  # wrong by 1e-3: must fail the fp32 rule
        if variant == keys[1]:
            raise RuntimeError("cudaErrorIllegalAddress: simulated")
        return ref.astype(np.float32)

    fake = types.ModuleType("fake_ops")
    fake.check_cases = lambda rng, quick: [
        check.Case("softmax", "3x4 linspace", run, lambda: ref, check.fp32_rule(reduction=4)),
        ("softmax_backward", "not selected", run, ref, check.fp32_rule()),
    ]
    monkeypatch.setattr(check, "op_modules", lambda: [fake])
    monkeypatch.setattr(_backend, "available", lambda: ["ext", "cupy"])
    monkeypatch.setattr(_backend, "get", lambda name=None: types.SimpleNamespace(cc=90, name=name))
    # "--op softmax" selects softmax_backward too; select the forward alone by its exact name
    rows = check.run_checks(["softmax"], quick=True)
    assert {r.op for r in rows} == {"softmax", "softmax_backward"}
    rows = {(r.variant, r.backend): r for r in rows if r.op == "softmax"}
    assert rows[(keys[0], "ext")].status == "n/a" and rows[(keys[0], "ext")].not_applicable == 1
    assert rows[(keys[1], "cupy")].status == "FAIL" and rows[(keys[1], "cupy")].max_err > 9e-4
    assert "simulated" in rows[(keys[1], "ext")].failures[0]
    for k in keys[2:]:
        if _registry.get("softmax", k).arch <= 90:
            assert rows[(k, "ext")].status == "pass", rows[(k, "ext")]
    table = check.format_table(list(rows.values()))
    assert "FAIL" in table and "Failures:" in table


def test_check_runner_limit_runs_each_variant_on_its_first_applicable_case(monkeypatch):
    import types

    from tfm_kernels import _registry, check

    keys = [v.key for v in _registry.variants("softmax")]
    ref = np.ones((2, 3))
    seen = []

    def make_run(case_no):
        def run(backend, variant):
            if variant == keys[0] and case_no == 0:  # like an fp16-only variant on an fp32 case
                raise TypeError(f"variant: softmax/{variant} takes float16 inputs, not float32")
            seen.append((case_no, variant, backend))
            return ref
        return run

    fake = types.ModuleType("fake_ops")
    fake.check_cases = lambda rng, quick: [
        check.Case("softmax", f"case {i}", make_run(i), ref, check.fp32_rule()) for i in range(3)]
    monkeypatch.setattr(check, "op_modules", lambda: [fake])
    monkeypatch.setattr(_backend, "available", lambda: ["ext"])
    monkeypatch.setattr(_backend, "get", lambda name=None: types.SimpleNamespace(cc=90, name=name))
    rows = {r.variant: r for r in check.run_checks(["softmax"], limit=1)}
    runnable = [k for k in keys if _registry.get("softmax", k).arch <= 90]
    assert sorted(v for _, v, _ in seen) == sorted(runnable)  # each variant exactly once
    assert (1, keys[0], "ext") in seen  # the "fp16-only" variant ran on the first case it takes
    assert rows[keys[0]].passed == 1 and rows[keys[0]].not_applicable == 1


def test_check_runner_survives_a_failing_check_cases(monkeypatch):
    import types

    from tfm_kernels import check

    def broken(rng, quick):
        yield check.Case("softmax", "fine", lambda b, v: np.ones(2), np.ones(2), check.fp32_rule())
        raise RuntimeError("cudaErrorMemoryAllocation: simulated while making inputs")

    bad = types.ModuleType("bad_ops")
    bad.check_cases = broken
    monkeypatch.setattr(check, "op_modules", lambda: [bad])
    monkeypatch.setattr(_backend, "available", lambda: ["ext"])
    monkeypatch.setattr(_backend, "get", lambda name=None: types.SimpleNamespace(cc=90, name=name))
    rows = check.run_checks(["softmax"])
    failing = [r for r in rows if r.status == "FAIL"]
    assert len(failing) == 1 and failing[0].variant == "check_cases"
    assert "simulated" in failing[0].failures[0]
    assert any(r.op == "softmax" and r.passed for r in rows)


def _fake_check(monkeypatch, run, backends=("ext", "cupy")):
    import types

    from tfm_kernels import check

    ref = np.linspace(0.1, 1.0, 6)
    fake = types.ModuleType("fake_ops")
    fake.check_cases = lambda rng, quick: [
        check.Case("softmax", f"case {i}", run, ref, check.fp32_rule()) for i in range(2)]
    monkeypatch.setattr(check, "op_modules", lambda: [fake])
    monkeypatch.setattr(_backend, "available", lambda: list(backends))
    monkeypatch.setattr(_backend, "get", lambda name=None: types.SimpleNamespace(cc=90, name=name))
    return ref


def test_check_runs_first_run_variants_last_and_stops_at_a_lost_context(monkeypatch):
    """A never-run variant that faults cannot take the verdicts of the others with it: the
    variants seen passing on a GPU all run first, the faulting one is named with its error, and
    what it kept from running is 'not run (context lost)', never FAIL."""
    from tfm_kernels import _registry, check

    vs = _registry.variants("softmax")
    first = [v.key for v in vs if _registry.first_run(v)]
    trusted = [v.key for v in vs if not _registry.first_run(v) and v.arch <= 90]
    assert first and trusted, "needs a first-run softmax variant (extra['unverified']) and a trusted one"
    order, state = [], {"lost": None}

    def run(backend, variant):
        assert state["lost"] is None, "a launch after the context was lost"
        order.append((variant, backend))
        if variant == first[0] and backend == "ext":
            state["lost"] = "cudaErrorLaunchFailure: unspecified launch failure (simulated trap)"
            raise RuntimeError(state["lost"])
        return ref

    ref = _fake_check(monkeypatch, run)
    monkeypatch.setattr(_backend, "context_lost", lambda: state["lost"])
    rows = {(r.variant, r.backend): r for r in check.run_checks(["softmax"])
            if r.op == "softmax"}
    firsts = [i for i, (v, _) in enumerate(order) if v in first]
    assert firsts and max(i for i, (v, _) in enumerate(order) if v in trusted) < min(firsts)
    bad = rows[(first[0], "ext")]
    assert bad.status == "FAIL" and "simulated trap" in bad.context_error
    assert check.context_lost(list(rows.values())) is bad
    for k in trusted:  # every case, both backends, before the fault
        assert rows[(k, "ext")].status == rows[(k, "cupy")].status == "pass" and rows[(k, "cupy")].passed == 2
    lost = [r for r in rows.values() if r.lost]
    assert rows[(first[0], "cupy")] in lost and all(r.lost == f"softmax/{first[0]}:ext" for r in lost)
    assert all(r.status == "not run (context lost)" and not r.failed for r in lost)
    assert "CUDA context lost after softmax/" in check.format_table(list(rows.values()))


def test_check_skip_and_qualified_selection(monkeypatch):
    from tfm_kernels import _registry, check

    keys = [v.key for v in _registry.variants("softmax") if v.arch <= 90]
    seen = []
    _fake_check(monkeypatch, lambda b, v: seen.append((v, b)) or np.linspace(0.1, 1.0, 6))
    check.run_checks(["softmax"], variants=[f"softmax/{keys[0]}:cupy", keys[1]], skip=[f"softmax/{keys[1]}:ext"])
    assert sorted(set(seen)) == sorted({(keys[0], "cupy"), (keys[1], "cupy")})
    v2 = _registry.get("softmax", keys[2])
    for form in (f"softmax/{v2.number}", f"softmax/{v2.name}:ext", str(v2.number)):
        seen.clear()
        check.run_checks(["softmax"], variants=[keys[2]], skip=[form])
        assert set(seen) == ({(keys[2], "cupy")} if form.endswith(":ext") else set()), form


def test_run_isolated_reruns_what_a_lost_context_kept_from_running(tmp_path):
    """The driver against a stand-in child (no GPU): pass 1 faults in A:ext and loses B and A:cupy;
    pass 2 gets exactly those, with A:ext skipped, faults again in B:ext; pass 3 finishes."""
    import json
    import sys

    from tfm_kernels import check

    script = tmp_path / "child.py"
    script.write_text(r'''
import json, sys
path, sel, skip = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def row(v, b, **kw):
    return {"op": "softmax", "variant": v, "backend": b, "passed": 0, "failed": 0, **kw}
if sel is None:
    rows = [row("T", "ext", passed=2), row("T", "cupy", passed=2),
            row("A", "ext", failed=1, context_error="cudaErrorIllegalAddress"),
            row("A", "cupy", lost="softmax/A:ext"), row("B", "ext", lost="softmax/A:ext"),
            row("B", "cupy", lost="softmax/A:ext")]
elif "softmax/A:ext" in skip and "softmax/B:ext" not in skip:
    assert sel == ["softmax/A:cupy", "softmax/B:cupy", "softmax/B:ext"], sel
    rows = [row("A", "cupy", passed=2), row("B", "ext", failed=1, context_error="cudaErrorLaunchFailure"),
            row("B", "cupy", lost="softmax/B:ext")]
else:
    assert sel == ["softmax/B:cupy"] and skip == ["softmax/A:ext", "softmax/B:ext"], (sel, skip)
    rows = [row("B", "cupy", passed=2)]
json.dump({"rows": rows}, open(path, "w"))
''')
    logs = []
    res = check.run_isolated(lambda sel, skip, budget, path: [sys.executable, str(script), path, json.dumps(sel),
                                                               json.dumps(skip)], log=logs.append)
    rows = {(r["variant"], r["backend"]): r for r in res["rows"]}
    assert res["passes"] == 3 and [e["variant"] for e in res["context_lost"]] == ["softmax/A:ext", "softmax/B:ext"]
    assert rows[("A", "cupy")]["passed"] == 2 and rows[("B", "cupy")]["passed"] == 2
    assert rows[("A", "ext")]["context_error"] and rows[("B", "ext")]["failed"] == 1
    assert not any(r.get("lost") for r in res["rows"]) and len(logs) == 2


def test_run_isolated_reports_a_child_that_wrote_nothing(tmp_path):
    import sys

    from tfm_kernels import check

    res = check.run_isolated(lambda sel, skip, budget, path: [sys.executable, "-c", "raise SystemExit(3)"],
                             log=lambda s: None)
    assert res["rows"] == [] and "exited 3 without writing" in res["context_lost"][0]["error"]


def test_pytest_skips_what_follows_a_lost_context(tmp_path):
    """The repository conftest on a pretend GPU: a first-run variant's test is moved after the
    others of its file; once a failing test leaves the context lost, the tests after it are skipped
    as 'CUDA context lost', never failed, and their ids go to --tfm-lost-file (what
    scripts/gpu_check.sh reruns in a fresh process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tfm_kernels import _registry

    root = Path(__file__).resolve().parents[1]
    first = next(v.key for v in _registry.variants("softmax") if _registry.first_run(v))
    (tmp_path / "conftest.py").write_text((root / "conftest.py").read_text())
    (tmp_path / "test_fake.py").write_text(f'''
import conftest, pytest
from tfm_kernels import _backend
conftest._gpu = lambda: True
_backend.status = lambda: {{"device": (True, "pretend"), "ext": (True, ""), "cupy": (True, "")}}
STATE = {{}}
_backend.context_lost = lambda: STATE.get("lost")
ORDER = []

@pytest.fixture
def backend():
    return "ext"

@pytest.mark.parametrize("variant", ["{first}", "1_naive", "2_block"])
def test_variant(backend, variant):
    ORDER.append(variant)
    if variant == "2_block":
        STATE["lost"] = "cudaErrorIllegalAddress: simulated"
        raise RuntimeError(STATE["lost"])

def test_after(backend):
    pass
''')
    lost, progress = tmp_path / "lost.txt", tmp_path / "progress.jsonl"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_fake.py",
                        f"--tfm-lost-file={lost}", f"--tfm-progress-file={progress}"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    out = r.stdout + r.stderr
    assert "1 failed, 1 passed, 2 skipped" in out, out
    assert "CUDA context lost after test_fake.py::test_variant[2_block]" in out, out
    order = ["test_fake.py::test_variant[1_naive]", "test_fake.py::test_variant[2_block]",
             "test_fake.py::test_after", f"test_fake.py::test_variant[{first}]"]
    assert lost.read_text().split() == order[2:], out
    # the progress file: the collected order, each start, each outcome, as they happened
    import json

    recs = [json.loads(line) for line in progress.read_text().splitlines()]
    assert recs[0] == {"collected": order}
    assert [r["start"] for r in recs if "start" in r] == order
    outcomes = {r["nodeid"]: r["outcome"] for r in recs if "nodeid" in r}
    assert outcomes == {order[0]: "passed", order[1]: "failed", order[2]: "skipped", order[3]: "skipped"}
    assert "simulated" in next(r["message"] for r in recs if r.get("outcome") == "failed")


def test_bench_isolated_resumes_at_the_lost_case(tmp_path):
    """bench --isolate's driver against a stand-in child (no GPU): pass 1 measures case A, then
    loses the context at variant Y of case B; pass 2 runs without Y from case B on. The merged
    result has A once, B's peer and X once (pass 2's), Y's error, and C; the table and notes say so."""
    import json

    from tfm_kernels.bench import core

    script = tmp_path / "child.py"
    script.write_text(r'''
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
skip, resume, out = args.get("--skip"), args.get("--resume-at"), Path(args["--out"])
def m(label, who, kind="variant", status="ok", tp=1.0):
    return {"op": "softmax", "label": label, "series": "s", "x": 1, "x_label": "n", "unit": "GB/s", "who": who,
            "kind": kind, "backend": None if kind == "peer" else "ext", "median_ms": 1.0, "throughput": tp,
            "status": status}
res = {"env": {"device": {"name": "stand-in"}}, "copy_gbs": 100.0, "skipped_for_time": []}
if resume is None:
    res["measurements"] = [m("A", "torch", "peer"), m("A", "X"), m("A", "Y"), m("B", "torch", "peer"), m("B", "X"),
                           m("B", "Y", status="error: cudaErrorIllegalAddress", tp=None)]
    res["context_lost"] = {"after": "softmax/Y:ext", "case": "B", "resume_at": "softmax|B",
                           "error": "cudaErrorIllegalAddress"}
else:
    assert resume == "softmax|B" and skip == "softmax/Y", (resume, skip)
    res["measurements"] = [m("B", "torch", "peer", tp=2.0), m("B", "X", tp=2.0), m("C", "torch", "peer"), m("C", "X")]
out.mkdir(parents=True, exist_ok=True)
(out / "bench.json").write_text(json.dumps(res))
''')

    def child(skip, resume_at, budget, pass_dir):
        return [sys.executable, str(script), f"--out={pass_dir}"] + [f"--skip={s}" for s in skip] + (
            [f"--resume-at={resume_at}"] if resume_at else [])

    logs = []
    res = core.run_isolated(child, tmp_path / "out", log=logs.append)
    got = [(m["label"], m["who"], m["throughput"]) for m in res["measurements"]]
    assert got == [("A", "torch", 1.0), ("A", "X", 1.0), ("A", "Y", 1.0), ("B", "Y", None),
                   ("B", "torch", 2.0), ("B", "X", 2.0), ("C", "torch", 1.0), ("C", "X", 1.0)], got
    assert res["passes"] == 2 and res["context_lost"][0]["after"] == "softmax/Y:ext" and len(logs) == 1
    md = (tmp_path / "out" / "bench.md").read_text()
    assert "CUDA context lost in pass 1 after softmax/Y:ext" in md and "cudaErrorIllegalAddress" in md
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["passes"] == 2
