"""tests/test_emulation.py: the host emulation itself (tests/_emulate_cuda.py, tests/cuda_host/).

The emulation tests of each op (test_softmax_emulation.py, test_matmul_emulation.py,
test_attention_emulation.py) are only as good as the emulator's eye for faults. Here it runs
tests/cuda_host/selftest.cu, small kernels with known faults, and must report each: a missing
barrier (a wrong result in at least one thread order), a warp collective some lanes never reach
(deadlock) or pair with a different one, a read of a cp.async copy before its wait, a cp.async
refill of a buffer other warps still read, a write past
the launch's dynamic shared memory, ldmatrix rows misaligned or out of range, an mbarrier phase
that never completes, a TMA load signalling an mbarrier whose init was never fenced, a wgmma with
no wgmma.fence before it, a setmaxnreg.inc the CTA's register pool cannot satisfy, a wgmma
reading another warpgroup's shared-memory writes with no barrier between or with no
fence.proxy.async after them, a read past a buffer's end (guard pages), __trap, a parameter of the wrong size, CUDA's
launch limits; and the correct versions pass. Also the source rewrite of
`__shared__` declarations, on every declaration form csrc/ uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfm_kernels._registry import Launch

emu = pytest.importorskip("_emulate_cuda")

SELFTEST = str(Path(__file__).resolve().parent / "cuda_host" / "selftest.cu")


@pytest.fixture(scope="module")
def lib():
    built = emu.build([SELFTEST])[SELFTEST]
    if isinstance(built, str):
        pytest.skip(f"host emulation unavailable: {built}")
    return built


def _launch(lib, order, kernel, block, args, smem=0, grid=(1, 1, 1)):
    be = emu.HostBackend(order, {SELFTEST: lib})
    be.launch(Launch(SELFTEST, kernel, grid, block, args, smem))


ORDERS = ("forward", "reverse")


def test_barrier_makes_the_difference(lib):
    n = 64
    for order in ORDERS:
        out = np.full(n, -1.0, np.float32)
        _launch(lib, order, "st_neighbour<true>", (n, 1, 1), (out, np.int32(n)))
        np.testing.assert_array_equal(out, (np.arange(n) + 33) % n)
    wrong = []
    for order in ORDERS:
        out = np.full(n, -1.0, np.float32)
        _launch(lib, order, "st_neighbour<false>", (n, 1, 1), (out, np.int32(n)))
        wrong.append(not np.array_equal(out, (np.arange(n) + 33) % n))
    assert all(wrong), "a missing barrier went unseen in some thread order"


@pytest.mark.parametrize("kind, message", [(0, "deadlock"), (1, "different warp collectives")])
def test_divergent_warp_collectives(lib, kind, message):
    out = np.zeros(64, np.float32)
    with pytest.raises(emu.EmulationError, match=message):
        _launch(lib, "forward", "st_divergent", (64, 1, 1), (out, np.int32(kind)))


def test_cp_async_lands_at_its_wait(lib):
    """Reverse order: a copy lands at the wait that retires it (the latest), so a read before the
    wait sees poison. Forward order: it lands at once (the earliest)."""
    x = np.arange(4 * 64, dtype=np.float32) + 1
    for order in ORDERS:
        out = np.zeros_like(x)
        _launch(lib, order, "st_cp_async<true>", (64, 1, 1), (x, out), smem=x.nbytes)
        np.testing.assert_array_equal(out, x)
    out = np.zeros_like(x)
    _launch(lib, "reverse", "st_cp_async<false>", (64, 1, 1), (x, out), smem=x.nbytes)
    assert np.isnan(out).all(), "a cp.async copy was visible before its wait_group"
    _launch(lib, "forward", "st_cp_async<false>", (64, 1, 1), (x, out), smem=x.nbytes)
    np.testing.assert_array_equal(out, x)


def test_cp_async_refill_needs_the_barrier(lib):
    """A cp.async into a buffer other warps still read: with the barrier before the refill every
    thread reads the old contents in both orders; without it the forward order, where copies land
    at once, shows the early overwrite."""
    x = np.arange(64, dtype=np.float32) + 1
    want = -1.0 - (np.arange(64) + 32) % 64
    for order in ORDERS:
        out = np.zeros(64, np.float32)
        _launch(lib, order, "st_cp_async_war<true>", (64, 1, 1), (x, out), smem=256)
        np.testing.assert_array_equal(out, want)
    out = np.zeros(64, np.float32)
    _launch(lib, "forward", "st_cp_async_war<false>", (64, 1, 1), (x, out), smem=256)
    assert not np.array_equal(out, want), "a refill racing with the readers went unseen"


def test_dynamic_shared_memory_bounds(lib):
    out = np.zeros(32, np.float32)
    _launch(lib, "forward", "st_dyn_write", (32, 1, 1), (out, np.int32(63)), smem=256)
    with pytest.raises(emu.EmulationError, match="wrote past its 256 bytes of dynamic shared memory"):
        _launch(lib, "forward", "st_dyn_write", (32, 1, 1), (out, np.int32(64)), smem=256)


@pytest.mark.parametrize("skew, ok", [(0, True), (8, False), (4096, False)])
def test_ldmatrix_addresses(lib, skew, ok):
    out = np.zeros(32, np.float32)
    if ok:
        _launch(lib, "forward", "st_ldmatrix", (32, 1, 1), (out, np.int32(skew)), smem=64)
    else:
        with pytest.raises(emu.EmulationError, match="ldmatrix: a row address"):
            _launch(lib, "forward", "st_ldmatrix", (32, 1, 1), (out, np.int32(skew)), smem=64)


def test_trap_parameters_and_limits(lib):
    out = np.zeros(64, np.float32)
    with pytest.raises(emu.EmulationError, match=r"__trap\(\).*thread \(5,0,0\)"):
        _launch(lib, "forward", "st_trap", (64, 1, 1), (out,))
    with pytest.raises(emu.EmulationError, match="parameter 1 is 4 bytes, the launch packed 8"):
        _launch(lib, "forward", "st_neighbour<true>", (64, 1, 1), (out, np.int64(64)))
    with pytest.raises(emu.EmulationError, match="takes 2 parameters, the launch gave 1"):
        _launch(lib, "forward", "st_neighbour<true>", (64, 1, 1), (out,))
    with pytest.raises(emu.EmulationError, match="1 to 1024 threads"):
        _launch(lib, "forward", "st_trap", (2048, 1, 1), (out,))
    with pytest.raises(emu.EmulationError, match="over 227 KiB"):
        _launch(lib, "forward", "st_dyn_write", (32, 1, 1), (out, np.int32(0)), smem=228 * 1024)
    with pytest.raises(emu.EmulationError, match="not exported"):
        _launch(lib, "forward", "st_nothing", (32, 1, 1), (out,))


def test_rewrite_shared_declarations():
    src = ("    __shared__ float As[BS * LD];  // As[m][k]\n"
           "    __shared__ __align__(16) float Bs[BK * WT::LDB];\n"
           "    __shared__ S s;\n"
           "    extern __shared__ float4 dyn_smem4[];\n"
           "    extern __shared__ __align__(128) unsigned char smem_raw[];\n")
    got = emu.rewrite_shared(src).splitlines()
    assert got == [
        "    float* const As = emu::static_smem<float>(__PRETTY_FUNCTION__, __LINE__, (BS * LD));  // As[m][k]",
        "    float* const Bs = emu::static_smem<float>(__PRETTY_FUNCTION__, __LINE__, (BK * WT::LDB));",
        "    S& s = *emu::static_smem<S>(__PRETTY_FUNCTION__, __LINE__, 1);",
        "    float4* const dyn_smem4 = reinterpret_cast<float4*>(emu::dynamic_smem());",
        "    unsigned char* const smem_raw = reinterpret_cast<unsigned char*>(emu::dynamic_smem());",
    ]


@pytest.mark.parametrize("arrivals, message", [(2, None), (3, None), (1, "waiting on an mbarrier phase")])
def test_mbarrier_phases(lib, arrivals, message):
    out = np.zeros(64, np.float32)
    args = ("st_mbarrier", (64, 1, 1), (out, np.int32(arrivals)))
    if message is None:
        _launch(lib, "forward", *args)
        assert (out == 1).all()
    else:
        with pytest.raises(emu.EmulationError, match=message):
            _launch(lib, "forward", *args)


def test_wgmma_reads_at_issue(lib):
    """A wgmma may read its shared-memory operands as soon as it issues: with the barrier after
    the two warpgroups' writes both get A B^T; without it each order reports the race, forward as
    an operand that changed between issue and retirement, reverse (a warpgroup released from a
    wgmma runs ahead) as the other warpgroup's unwritten, NaN-poisoned rows in the product."""
    r, k, n = np.arange(64)[:, None], np.arange(16)[None, :], np.arange(64)[:, None]
    a = ((r * 7 + k * 3) % 11 - 5).astype(np.float64)
    b = ((n * 5 + k) % 9 - 4).astype(np.float64)
    want = np.empty((256, 32))
    for tid in range(256):  # the accumulator layout: warp w rows 16w.., lane (g, t), n8 tile j
        w, g, t = tid % 128 // 32, tid % 32 // 4, tid % 4
        for i in range(32):
            j, e = divmod(i, 4)
            want[tid, i] = (a @ b.T)[16 * w + g + 8 * (e // 2), 8 * j + 2 * t + e % 2]
    for order in ORDERS:
        out = np.full(256 * 32, np.nan, np.float32)
        _launch(lib, order, "st_wgmma_race<true>", (256, 1, 1), (out,), smem=16384)
        assert np.array_equal(out.reshape(256, 32), want), order
    with pytest.raises(emu.EmulationError, match="changed between the wgmma's issue"):
        _launch(lib, "forward", "st_wgmma_race<false>", (256, 1, 1), (np.zeros(256 * 32, np.float32),), smem=16384)
    out = np.zeros(256 * 32, np.float32)
    _launch(lib, "reverse", "st_wgmma_race<false>", (256, 1, 1), (out,), smem=16384)
    assert not np.isfinite(out).all()


@pytest.mark.parametrize("order", ORDERS)
def test_wgmma_needs_the_proxy_fence(lib, order):
    """Shared memory written by st.shared (or cp.async: the generic proxy) is not visible to a wgmma
    (the async proxy) until a fence.proxy.async: the same kernel with the barrier but without the
    fence is reported, in either order."""
    with pytest.raises(emu.EmulationError, match="not made visible to the async proxy"):
        _launch(lib, order, "st_wgmma_race<true, false>", (256, 1, 1), (np.zeros(256 * 32, np.float32),),
                smem=16384)


def test_guard_pages(lib):
    """A read one element past a guarded buffer stops the launch with the address (and the process
    lives on to run the next launch); in bounds it runs as usual."""
    x = emu.guarded(np.arange(64, dtype=np.float32))
    out = emu.guarded(np.zeros(64, np.float32))
    _launch(lib, "forward", "st_read", (64, 1, 1), (x, out, np.int32(0)))
    np.testing.assert_array_equal(out, np.arange(64))
    with pytest.raises(emu.EmulationError, match=r"memory access at 0x[0-9a-f]+ faulted.*thread \(63,0,0\)"):
        _launch(lib, "forward", "st_read", (64, 1, 1), (x, out, np.int32(1)))
    _launch(lib, "reverse", "st_read", (64, 1, 1), (x, out, np.int32(0)))
    aligned = emu.guarded(np.arange(3, dtype=np.float32), align=16)
    assert aligned.data.ptr % 16 == 0


def test_every_source_is_emulated():
    """No kernel source is left out: each is built by an op's emulation tests."""
    import test_attention_emulation
    import test_matmul_emulation
    from tfm_kernels import _backend

    covered = set(test_attention_emulation.SOURCES) | set(test_matmul_emulation.SOURCES) | {"softmax.cu"}
    assert set(_backend.sources()) == covered


def test_launch_limits_cover_every_export():
    """The emulator defines __launch_bounds__ away, so each emulated launch is held against the
    built extension's own limits (cuobjdump -elf: the bound and the register count the driver
    checks); that only works if every exported name expression is found there."""
    from tfm_kernels import _backend

    limits = emu.launch_limits()
    if not limits:
        pytest.skip("the extension is not built here, or cuobjdump / c++filt is missing")
    missing = [(s, n) for s in _backend.sources() for n in _backend.exports(s) if " ".join(n.split()) not in limits]
    assert not missing, missing
    assert limits["attn_fwd_wgmma<128, 128, true>"]["max_threads"] == 256


def test_launches_the_gpu_would_refuse(monkeypatch):
    """A block larger than the kernel's __launch_bounds__, or more registers than an SM has: an
    EmulationError naming the reason, before the kernel runs."""
    monkeypatch.setattr(emu, "launch_limits", lambda: {
        "k_bounded": {"max_threads": 256, "registers": 64},
        "k_heavy": {"max_threads": None, "registers": 129}})
    ok = Launch("x.cu", "k_bounded", (1, 1, 1), (256, 1, 1), ())
    emu.check_launch_limits(ok)
    with pytest.raises(emu.EmulationError, match="__launch_bounds__ allow 256"):
        emu.check_launch_limits(Launch("x.cu", "k_bounded", (1, 1, 1), (16, 32, 1), ()))
    emu.check_launch_limits(Launch("x.cu", "k_heavy", (1, 1, 1), (480, 1, 1), ()))  # 15 warps x 136 x 32
    with pytest.raises(emu.EmulationError, match="64K register file"):
        emu.check_launch_limits(Launch("x.cu", "k_heavy", (1, 1, 1), (512, 1, 1), ()))
    emu.check_launch_limits(Launch("x.cu", "not_in_the_table", (1, 1, 1), (1024, 1, 1), ()))


@pytest.mark.parametrize("order", ORDERS)
def test_wgmma_needs_wgmma_fence(lib, order):
    """wgmma.fence before the first wgmma (and after each wait_group, before the next issue): the
    accumulators were just zeroed by ordinary instructions the wgmma must not overtake."""
    with pytest.raises(emu.EmulationError, match="no wgmma.fence since"):
        _launch(lib, order, "st_wgmma_race<true, true, false>", (256, 1, 1), (np.zeros(256 * 32, np.float32),),
                smem=16384)


@pytest.mark.parametrize("order", ORDERS)
def test_tma_needs_the_mbarrier_init_fence(lib, order):
    """A TMA load may only signal an mbarrier whose init a fence.mbarrier_init has made visible to
    the async proxy: with the fence the 64 x 64 box arrives (128-byte swizzled: 16-byte chunk c of
    row r at chunk c ^ (r % 8)); without it the emulator reports the missing fence."""
    src = np.arange(64 * 64, dtype=np.float16).reshape(64, 64) / 64
    desc = emu.tma_descriptor(src.ctypes.data, 64, 64, 1, 64, 64)
    out = np.full(64 * 64, np.nan, np.float16)
    _launch(lib, order, "st_tma<true>", (128, 1, 1), (desc, out), smem=8192 + 64)
    got = out.reshape(64, 8, 8)  # rows, 16-byte chunks, halves
    want = src.reshape(64, 8, 8)[np.arange(64)[:, None], np.arange(8)[None, :] ^ (np.arange(64)[:, None] % 8)]
    assert np.array_equal(got, want)
    with pytest.raises(emu.EmulationError, match="no fence.mbarrier_init"):
        _launch(lib, order, "st_tma<false>", (128, 1, 1), (desc, np.zeros(64 * 64, np.float16)), smem=8192 + 64)


@pytest.mark.parametrize("order", ORDERS)
def test_setmaxnreg_stays_within_the_pool(lib, order, monkeypatch):
    """setmaxnreg moves registers between warpgroups inside what the launch allocated (the kernel's
    count x its threads): matmul_sm90's split (producer 40, consumers 232 of 168 x 384) fits in
    either order (the consumers wait for the producer's registers in the reverse one); asking 240
    would wait forever, reported as a deadlock in setmaxnreg.inc."""
    limits = {name: {"max_threads": 384, "registers": 168} for name in ("st_setmaxnreg<232>", "st_setmaxnreg<240>")}
    monkeypatch.setattr(emu, "launch_limits", lambda: limits)
    out = np.zeros(384, np.float32)
    _launch(lib, order, "st_setmaxnreg<232>", (384, 1, 1), (out,))
    assert (out == 1).all()
    with pytest.raises(emu.EmulationError, match=r"deadlock: .* 128 in setmaxnreg.inc for registers the CTA.s pool cannot give"):
        _launch(lib, order, "st_setmaxnreg<240>", (384, 1, 1), (np.zeros(384, np.float32),))
