"""tests/test_matmul_tc.py: the fp16 tensor-core matmul variants (csrc/matmul_tc.cu, mma.sync, 10-11;
csrc/matmul_sm90.cu, wgmma + TMA, 12-13), registered by tfm_kernels/matmul_tc.py as op `matmul`.

No GPU needed:
* the registry: numbered, described, every kernel a variant may launch is exported by its source;
  the launch plans match the kernels' parameter lists; 12-13 refuse what TMA cannot read, with the
  reason, and the default then falls back to 11; the TMA encoder takes the plan's arguments;
* a randomly interleaved model of matmul_wgmma's mbarrier protocol (tests/_emulate_matmul_tc.py)
  never deadlocks, never hands a consumer the wrong k-block, never overwrites a stage still being
  read (the kernels' own source runs on the CPU in tests/test_matmul_emulation.py, bank conflicts
  of their ldmatrix addresses included);
* NVRTC compiles the kernels and the PTX of each holds the instructions it is meant to
  (mma.sync.aligned.m16n8k16 with ldmatrix[.trans] where the layout needs it; wgmma m64n256k16
  with the layout's transpose bits, TMA loads, mbarrier waits, setmaxnreg).
Where cuobjdump and the built extension exist (CI too: the test extra installs cuobjdump): the SASS
of every matmul_mma kernel contains HMMA and LDSM, of every matmul_wgmma kernel HGMMA and UTMALDG.
GPU: every variant x both backends x all four layouts x (fp16 out, fp32 out) over awkward shapes
(and batched, and misaligned views) against numpy_ref.matmul in float64, outputs poisoned with NaN.
Tolerance (helpers.assert_close_lowprec): error <= 2 x the error of NumPy computing the same product
from the same fp16 inputs in float32 and rounding to the output dtype, + 1e-5 x max|ref|.
"""

from __future__ import annotations

import functools
import re
import threading

import numpy as np
import pytest

import _emulate_matmul_tc as pipeline_model
import numpy_ref
import tfm_kernels
import helpers
from helpers import POISON, assert_close_lowprec
from tfm_kernels import _backend, _registry
from tfm_kernels import matmul_tc as tc

FP16 = [v for v in tfm_kernels.variants("matmul") if "float16" in v.dtypes]
MMA = [v for v in FP16 if v.number in (10, 11)]
WGMMA = [v for v in FP16 if v.number in (12, 13)]
LAYOUTS = [(False, False), (False, True), (True, False), (True, True)]
LAYOUT_IDS = ["NN", "NT", "TN", "TT"]


# ---------------------------------------------------------------------------------------------
# Registry, no GPU
# ---------------------------------------------------------------------------------------------

def test_registered():
    nums = [v.number for v in FP16]
    assert nums[:4] == [10, 11, 12, 13], nums
    for v in FP16:
        assert v.op == "matmul" and v.dtypes == ("float16",) and v.description, v.qualname
        exported = set(_backend.exports(v.kernels[0][0]))
        for source, name in v.kernels:
            assert name in exported, f"{v.qualname}: {source} does not export {name}"
    for v in MMA:  # 4 layouts x (aligned, gathered) x (fp32, fp16 out)
        assert len(set(v.kernels)) == 16, v.qualname
    for v in WGMMA:  # 4 layouts x (fp32, fp16 out), Hopper only
        assert len(set(v.kernels)) == 8 and v.arch == 90 and v.hot, v.qualname
        assert _backend.source_arch(open(_backend.csrc_dir() / v.kernels[0][0]).read()) == "sm_90a"


FakeDeviceArray = functools.partial(helpers.FakeDeviceArray, dtype="float16")

@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
def test_wgmma_refuses_what_tma_cannot_read(ta, tb):
    """TMA needs 16-byte global row strides and bases: variants 12-13 asked for by name refuse the
    rest with ValueError saying why (before any launch); the default choice falls back to 11."""
    F = FakeDeviceArray
    M, N, K = 64, 64, 64
    for bad in ("M", "N", "K"):
        dims = {"M": M, "N": N, "K": K, bad: 60 + 3}
        m, n, k = dims["M"], dims["N"], dims["K"]
        stored_a = m if ta else k
        stored_b = k if tb else n
        a = F((k, m) if ta else (m, k))
        b = F((n, k) if tb else (k, n))
        if stored_a % 8 == 0 and stored_b % 8 == 0:
            continue  # this dimension is not a stored row length in this layout
        for v in WGMMA:
            with pytest.raises(ValueError, match="TMA needs 16-byte row strides"):
                tfm_kernels.matmul(a, b, ta, tb, variant=v.key)
        info = dict(M=m, N=n, K=k, batch=1, trans_a=ta, trans_b=tb, out_dtype="float16", align=256)
        assert _registry.choose("matmul", None, dtype="float16", cc=90, **info).number == 11
    a = F((K, M) if ta else (M, K), offset=2)  # a view 2 bytes into its allocation
    b = F((N, K) if tb else (K, N))
    for v in WGMMA:
        with pytest.raises(ValueError, match="TMA needs 16-byte aligned"):
            tfm_kernels.matmul(a, b, ta, tb, variant=v.key)


def test_kernel_choice():
    """The launch plan picks the 16-byte cp.async path only when every chunk is whole and aligned."""
    class Arr:  # the metadata _aligned16 reads
        def __init__(self, shape, ptr):
            self.shape, self.data = shape, type("D", (), {"ptr": ptr})()

    assert tc._aligned16(Arr((5, 64), 256))
    assert not tc._aligned16(Arr((5, 63), 256))      # a ragged last chunk
    assert not tc._aligned16(Arr((5, 64), 258))      # a view 1 half into its allocation
    name = tc.mma_kernel_name(4, True, True, False, True, np.float16)
    assert name == "matmul_mma<128, 128, 32, 2, 2, 4, true, true, false, true, __half>"


def test_tma_encode_arguments_convert():
    """cuTensorMapEncodeTiled accepts the arguments the wgmma launch plan builds: on the GPU machine
    it encodes a 128-byte descriptor; without a driver the call gets past argument conversion and
    stops at loading libcuda (never a TypeError from the bindings)."""
    drv = pytest.importorskip("cuda.bindings.driver")
    args = tc.tma_encode_args(drv, 1 << 32, 1000, 136, 3, 64, 128)
    try:
        drv = tc._driver()  # cuInit
    except TypeError:
        raise
    except Exception:  # no driver on this machine: the encoder itself must still take the args
        with pytest.raises(Exception, match="(?i)driver|libcuda") as info:
            drv.cuTensorMapEncodeTiled(*args)
        assert not isinstance(info.value, TypeError), repr(info.value)
        return
    err, tmap = drv.cuTensorMapEncodeTiled(*args)
    assert err == drv.CUresult.CUDA_SUCCESS, err
    assert len(tmap.opaque) == 16


class _FakeCupy:
    """What the launch plans read from a CuPy array: shape, dtype, data.ptr, device.id."""

    def __init__(self, shape, dtype="float16", ptr=1 << 32):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.data = type("Mem", (), {"ptr": ptr})()
        self.device = type("Dev", (), {"id": 0})()


def _kernel_params(source: str, kernel: str) -> list[str]:
    """The parameter types of `kernel`'s definition in csrc/<source>, e.g. ['const __half*', 'int']."""
    text = (_backend.csrc_dir() / source).read_text()
    m = re.search(rf"\n{kernel}\((.*?)\)\s*\{{", text, re.S)
    assert m, f"{kernel} not found in {source}"
    params = [" ".join(p.split()) for p in m.group(1).split(",")]
    return [re.sub(r"\s*\b\w+$", "", p.replace("__restrict__", "").strip()) for p in params]


def _check_args(launch, params):
    assert len(launch.args) == len(params), (launch.kernel, len(launch.args), params)
    for arg, ptype in zip(launch.args, params):
        if ptype.endswith("*"):
            assert isinstance(arg, _FakeCupy), (launch.kernel, ptype, arg)
        elif "TmaDesc" in ptype:
            assert isinstance(arg, bytes) and len(arg) == 128, (launch.kernel, ptype)
        else:
            want = {"int": np.int32, "int64_t": np.int64}[ptype]
            assert type(arg) is want, (launch.kernel, ptype, type(arg))


@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
def test_launch_plans_match_kernels(ta, tb, monkeypatch):
    """Each plan's arguments line up with its kernel's parameters (count, pointer / int32 / int64 /
    128-byte TMA descriptor), its kernel name is exported, its grid covers every tile and its shared
    memory fits the H200's 227 KiB per block."""
    monkeypatch.setattr(tc, "tma_descriptor", lambda *a: bytes(128))
    monkeypatch.setattr(tc, "_sm_count", lambda dev: 132)
    for batch, M, N, K in ((1, 1000, 1000, 1000), (3, 136, 520, 72)):
        lead = (batch,) if batch > 1 else ()
        a = _FakeCupy(lead + ((K, M) if ta else (M, K)))
        b = _FakeCupy(lead + ((N, K) if tb else (K, N)))
        for od in ("float16", "float32"):
            out = _FakeCupy(lead + (M, N), od)
            for stages, swz in ((1, False), (4, True)):
                L = tc._mma_launch(stages, swz, a, b, ta, tb, out)
                assert L.kernel in _backend.exports(L.source)
                _check_args(L, _kernel_params(L.source, "matmul_mma"))
                assert L.grid == (-(-N // 128), -(-M // 128), batch) and L.block == (128, 1, 1)
                assert L.smem <= 227 * 1024
            for persistent in (False, True):
                L = tc._wgmma_launch(a, b, ta, tb, out, persistent)
                assert L.kernel in _backend.exports(L.source)
                _check_args(L, _kernel_params(L.source, "matmul_wgmma"))
                tiles = -(-M // 128) * -(-N // 256) * batch
                assert L.grid == ((min(tiles, 132) if persistent else tiles), 1, 1)
                assert L.block == (384, 1, 1) and L.smem <= 227 * 1024


# ---------------------------------------------------------------------------------------------
# The wgmma pipeline's protocol, no GPU (the kernels themselves: tests/test_matmul_emulation.py)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tiles", [1, 2, 5], ids=lambda n: f"{n}tiles")
@pytest.mark.parametrize("KT", [1, 3, 4, 9], ids=lambda k: f"KT{k}")
def test_wgmma_pipeline_protocol(n_tiles, KT):
    """matmul_wgmma's full/empty mbarrier protocol (parities, the one-behind release, the release at
    the end of each tile a persistent CTA needs) under 30 random interleavings of producer,
    consumers and TMA landings: no deadlock, every consumer finds its k-block, no stage is
    overwritten while a consumer may still read it. KT < STAGES and KT = 1 included."""
    for seed in range(30):
        assert pipeline_model.simulate_wgmma_pipeline(n_tiles, KT, seed=seed)


# ---------------------------------------------------------------------------------------------
# Build: NVRTC PTX, and SASS where cuobjdump exists
# ---------------------------------------------------------------------------------------------

def _nvrtc_ptx(source: str, names: list[str], arch: str) -> dict[str, str]:
    """Compile csrc/<source> for `names` with NVRTC (no GPU needed); the PTX body of each kernel."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    from pathlib import Path

    inc = [f"-I{p}" for p in ("/usr/local/cuda/include",) if Path(p).is_dir()]
    opts = [o for o in _backend.nvrtc_options(source) if not o.startswith("-arch")]
    opts = [o.encode() for o in opts + inc + [f"-arch={arch}"]]
    err, prog = nvrtc.nvrtcCreateProgram(_backend.nvrtc_code(source).encode(), source.encode(), 0, [], [])
    for n in names:
        nvrtc.nvrtcAddNameExpression(prog, n.encode())
    (res,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert res == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    _, size = nvrtc.nvrtcGetPTXSize(prog)
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(prog, ptx)
    ptx = ptx.decode(errors="replace")
    bodies = {}
    for n in names:
        _, lowered = nvrtc.nvrtcGetLoweredName(prog, n.encode())
        lowered = lowered.decode()
        start = ptx.index(f".entry {lowered}(")
        end = ptx.find(".entry ", start + 1)
        bodies[n] = ptx[start:end if end > 0 else len(ptx)]
    return bodies


def test_nvrtc_ptx_mma_sync():
    """One kernel per (variant, layout): mma.sync m16n8k16 with f32 accumulators, cp.async, and
    ldmatrix.trans exactly for the M/N-contiguous operands (A when trans_a, B when not trans_b)."""
    want = [(1, False, ta, tb, ta == tb, "float16" if ta else "float32") for ta, tb in LAYOUTS]
    want += [(4, True, ta, tb, ta != tb, "float32" if ta else "float16") for ta, tb in LAYOUTS]
    names = {tc.mma_kernel_name(st, sw, ta, tb, al, od): (ta, tb) for st, sw, ta, tb, al, od in want}
    bodies = _nvrtc_ptx(tc.SOURCE_MMA, list(names), "compute_90")
    for name, body in bodies.items():
        ta, tb = names[name]
        assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in body, name
        n_trans = body.count("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16")
        n_plain = body.count("ldmatrix.sync.aligned.m8n8.x4.shared.b16")
        # per k16 step: 4 A loads (trans iff ta) and 4 B loads (trans iff not tb)
        assert n_trans == 4 * (int(ta) + int(not tb)) * 2, (name, n_trans)
        assert n_plain == 4 * (int(not ta) + int(tb)) * 2, (name, n_plain)
        if "true, __half>" in name or "true, float>" in name:  # ALIGNED: the zero-fill cp.async path
            assert "cp.async.cg.shared.global" in body, name


def test_nvrtc_ptx_wgmma():
    """sm_90a: each layout's kernel issues wgmma m64n256k16 with the transpose bits of its layout,
    TMA loads (one box for a K-major operand tile, 2 or 4 for an M/N-major one), mbarrier waits and
    the setmaxnreg pair."""
    names = {tc.wgmma_kernel_name(ta, tb, od): (ta, tb) for ta, tb in LAYOUTS
             for od in (("float16",) if ta == tb else ("float32",))}
    bodies = _nvrtc_ptx(tc.SOURCE_SM90, list(names), "compute_90a")
    for name, body in bodies.items():
        ta, tb = names[name]
        wg = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n256k16\.f32\.f16\.f16[^;]*;", body)
        assert len(wg) == 4, (name, len(wg))  # BK = 64: four k16 steps per stage
        for w in wg:  # ..., scale-d, scale-a, scale-b, tnsp-a, tnsp-b
            assert w.replace(" ", "").endswith(f",1,1,1,{int(ta)},{int(not tb)};"), (name, w)
        assert body.count("cp.async.bulk.tensor.3d") == (2 if ta else 1) + (1 if tb else 4), name
        assert "mbarrier.try_wait.parity" in body and "mbarrier.arrive.expect_tx" in body, name
        assert "setmaxnreg.dec.sync.aligned.u32 40" in body, name
        assert "setmaxnreg.inc.sync.aligned.u32 232" in body, name


def test_sass_hmma():
    """Every matmul_mma kernel in the extension runs on the tensor cores (HMMA in its SASS)."""
    funcs = {n: s for n, s in helpers.ext_sass().items() if n.startswith("_Z10matmul_mma")}
    assert len(funcs) >= 32, f"expected the 32 matmul_mma instantiations, found {len(funcs)}"
    for name, sass in funcs.items():
        assert "HMMA.16816.F32" in sass, f"{name}: no HMMA.16816.F32 in its SASS"
        assert "LDSM" in sass, f"{name}: no LDSM (ldmatrix) in its SASS"


def test_sass_hgmma():
    """The wgmma kernels run on Hopper's warpgroup tensor cores (HGMMA in the sm_90a SASS) and load
    through TMA (UTMALDG)."""
    funcs = {n: s for n, s in helpers.ext_sass().items() if n.startswith("_Z12matmul_wgmma")}
    assert len(funcs) >= 8, f"expected the 8 matmul_wgmma instantiations, found {len(funcs)}"
    for name, sass in funcs.items():
        assert re.search(r"HGMMA\.64x256x16\.F32", sass), f"{name}: no HGMMA.64x256x16.F32 in its SASS"
        assert "UTMALDG" in sass, f"{name}: no UTMALDG (TMA load) in its SASS"


# ---------------------------------------------------------------------------------------------
# GPU: every variant, both backends, all four layouts, both output dtypes
# ---------------------------------------------------------------------------------------------

# (M, N, K): smaller than an mma tile; 7s (odd: the gathered, non-cp.async path); around the
# 128-tiles; K = 1000 with ragged M/N (aligned K-contiguous operands, gathered M/N-contiguous
# ones); K = 4097 and 4096 (long reductions, both paths); tall; wide; a multi-tile aligned square.
# Multiples of 8 with ragged tiles (what TMA can read: the wgmma variant runs only these) follow:
# smaller than a tile, K below BK = 64, K tail 4104 = 64 x 64 + 8, tall, wide.
SHAPES = [
    (1, 1, 1), (7, 7, 7), (1, 129, 127), (129, 1, 7), (127, 129, 129), (129, 127, 1000),
    (64, 72, 4097), (136, 264, 4096), (4097, 24, 64), (24, 4097, 64), (512, 384, 256),
    (1000, 1000, 1000),
    (8, 8, 8), (24, 40, 72), (200, 264, 520), (136, 520, 4104), (4104, 16, 64), (16, 4104, 64),
]


@functools.lru_cache(maxsize=None)
def _case(M, N, K, ta, tb, batch=0):
    """fp16 operands (never zero: standard normal), the float64 reference and the float32 NumPy
    product of the same fp16 values, for one shape and layout; cached across variants, backends
    and output dtypes so each reference is computed once."""
    rng = np.random.default_rng([M, N, K, int(ta), int(tb), batch])
    lead = (batch,) if batch else ()
    a = rng.standard_normal(lead + ((K, M) if ta else (M, K))).astype(np.float16)
    b = rng.standard_normal(lead + ((N, K) if tb else (K, N))).astype(np.float16)
    ref = numpy_ref.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb)
    f32 = numpy_ref.matmul(a.astype(np.float32), b.astype(np.float32), ta, tb)
    return a, b, ref, f32


def _run_case(backend, variant, a, b, ta, tb, out_dtype):
    import cupy as cp

    M = a.shape[-1] if ta else a.shape[-2]
    N = b.shape[-2] if tb else b.shape[-1]
    out = cp.full(a.shape[:-2] + (M, N), POISON, dtype=out_dtype)
    got = tfm_kernels.matmul(cp.asarray(a), cp.asarray(b), ta, tb, backend=backend,
                             variant=variant.key, out=out)
    assert got is out
    return cp.asnumpy(out)


_WARM: dict[str, threading.Thread] = {}


@pytest.fixture(scope="module", autouse=True)
def _warm_cupy_modules():
    """NVRTC takes ~30 s for matmul_tc.cu's 32 instantiations (GPU run 1): compile the CuPy modules
    in a background thread while the CPU-only tests and the ext-backend tests run; the first
    cupy-backend test waits for it (_ready). Errors are left for that test to meet and report."""
    st = _backend.status()
    if st["device"][0] and st["cupy"][0]:
        def warm():
            try:
                be = _backend.get("cupy")
                for v in (MMA[:1] + (WGMMA[:1] if be.cc >= 90 else [])):
                    be.kernel(*v.kernels[0])
            except Exception:
                pass

        _WARM["cupy"] = threading.Thread(target=warm, name="warm-cupy-modules", daemon=True)
        _WARM["cupy"].start()
    yield
    _WARM.clear()


def _ready(backend):
    """The backend object, once any background compilation for it has finished."""
    t = _WARM.pop(backend, None)
    if t is not None:
        t.join()
    return _backend.get(backend)


def _needs(variant, backend):
    cc = _ready(backend).cc
    if cc < variant.arch:
        pytest.skip(f"{variant.qualname} needs sm_{variant.arch}, device is sm_{cc}")


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", FP16, ids=lambda v: v.key)
def test_variant(backend, variant, ta, tb, out_dtype):
    _needs(variant, backend)
    for M, N, K in SHAPES:
        a, b, ref, f32 = _case(M, N, K, ta, tb)
        info = dict(M=M, N=N, K=K, batch=1, trans_a=ta, trans_b=tb, out_dtype=out_dtype, align=256)
        why = variant.reason_unsupported(dtype="float16", **info)
        if why:  # refused shapes must say why (the wgmma variant's TMA alignment rule)
            assert isinstance(why, str) and why
            continue
        out = _run_case(backend, variant, a, b, ta, tb, out_dtype)
        assert_close_lowprec(out, ref, f32.astype(out_dtype),
                             what=f"{variant.qualname} {backend} M={M} N={N} K={K} ta={ta} tb={tb} "
                                  f"out={out_dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", FP16, ids=lambda v: v.key)
def test_variant_batched(backend, variant, ta, tb):
    """blockIdx.z walks the batch: each matrix its own data, ragged edges (M, N) and an aligned K."""
    _needs(variant, backend)
    for M, N, K in ((133, 67, 45), (200, 136, 64)):
        a, b, ref, f32 = _case(M, N, K, ta, tb, batch=3)
        info = dict(M=M, N=N, K=K, batch=3, trans_a=ta, trans_b=tb, out_dtype="float16", align=256)
        if variant.reason_unsupported(dtype="float16", **info):
            continue
        out = _run_case(backend, variant, a, b, ta, tb, "float16")
        assert_close_lowprec(out, ref, f32.astype(np.float16),
                             what=f"{variant.qualname} {backend} batched M={M} N={N} K={K} ta={ta} tb={tb}")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", MMA, ids=lambda v: v.key)
def test_misaligned_views(backend, variant):
    """Views starting 2 bytes into their allocations: every row length is a multiple of 8 halves, so
    only the base addresses rule out the 16-byte cp.async path and the paired stores."""
    import cupy as cp

    _ready(backend)
    M, N, K = 72, 80, 48
    for ta, tb in LAYOUTS:
        a, b, ref, f32 = _case(M, N, K, ta, tb)
        for out_dtype in ("float16", "float32"):
            da = cp.empty(a.size + 1, cp.float16)[1:].reshape(a.shape)
            db = cp.empty(b.size + 1, cp.float16)[1:].reshape(b.shape)
            da[...] = cp.asarray(a)
            db[...] = cp.asarray(b)
            out = cp.full(M * N + 1, POISON, out_dtype)[1:].reshape(M, N)
            tfm_kernels.matmul(da, db, ta, tb, backend=backend, variant=variant.key, out=out)
            assert_close_lowprec(out, ref, f32.astype(out_dtype),
                                 what=f"{variant.qualname} {backend} misaligned ta={ta} tb={tb} out={out_dtype}")


@pytest.mark.gpu
def test_default_fp16_variant(backend):
    """No variant named: float16 inputs run the highest-numbered tensor-core variant that takes the
    shape on this device and has been seen passing on a GPU (not marked unverified), and give a
    float16 result."""
    import cupy as cp

    a, b, ref, f32 = _case(256, 256, 256, False, True)
    be = _ready(backend)
    v = _registry.choose("matmul", None, dtype="float16", cc=be.cc, M=256, N=256, K=256, batch=1,
                         trans_a=False, trans_b=True, out_dtype="float16", align=256)
    assert v.number == max(x.number for x in FP16 if x.arch <= be.cc and not x.broken
                           and not x.extra.get("opt_in") and not x.extra.get("unverified")), v.qualname
    got = tfm_kernels.matmul(cp.asarray(a), cp.asarray(b), False, True, backend=backend)
    assert got.dtype == cp.float16
    assert_close_lowprec(got, ref, f32.astype(np.float16), what=f"default {v.qualname} {backend}")
