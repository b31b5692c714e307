"""Lane-level NumPy emulation of csrc/matmul_tc.cu's matmul_mma kernel (used by tests/test_matmul_tc.py).

Blind-written tensor-core kernels go wrong in their index math: which lane hands ldmatrix which row
address, which 8x8 matrix lands in which fragment register, how the XOR swizzle maps a tile element
to a shared-memory slot. This module runs the kernel's own formulas (tile_offset, load_tile, the
ldmatrix row addresses of compute_stage, the epilogue's (row, col) per lane), copied one for one,
on top of an emulation of the hardware written from the PTX ISA's definitions:

  ldmatrix .m8n8.x4 [.trans]  lanes 8j..8j+7 give the row addresses of 8x8 matrix j; lane l
                              receives M_j[l/4][2(l%4) .. +1] (no .trans) or M_j[2(l%4) .. +1][l/4]
  mma.m16n8k16 .row.col       A reg0..3 = A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..];
                              B reg0..1 = B[2t..][g], B[2t+8..][g]; C c0..3 = C[g][2t..], C[g+8][2t..]
                              (g = lane/4, t = lane%4)

It also records, for every ldmatrix phase (8 lanes = 8 row addresses of 16 bytes), how many of the
8 16-byte bank groups of a 128-byte line it touches: 8 means conflict-free.
"""

from __future__ import annotations

import numpy as np

LANE = np.arange(32)
G, T = LANE // 4, LANE % 4


def tile_offset(cols: int, swizzle: bool, r, c):
    """csrc/matmul_tc.cu tile_offset<COLS, SWIZZLE>(r, c), vectorized."""
    r, c = np.asarray(r), np.asarray(c)
    chunks = cols // 8
    chunk = c >> 3
    if swizzle:
        chunk = chunk ^ (((r >> 1) & 3) if chunks == 4 else (r & 7))
    return r * cols + (chunk << 3) + (c & 7)


class Smem:
    """Shared memory as a flat array of halves (held in float64), with a bank-conflict log."""

    def __init__(self, n_halves: int):
        self.data = np.full(n_halves, np.nan)
        self.phase_groups: list[int] = []  # distinct 16-byte bank groups per 8-address phase

    def ldmatrix_x4(self, offsets, trans: bool):
        """offsets: 32 element offsets (row starts). Returns regs (32, 4, 2)."""
        offsets = np.asarray(offsets)
        assert offsets.shape == (32,) and np.all(offsets % 8 == 0), "rows must be 16-byte aligned"
        rows = self.data[offsets[:, None] + np.arange(8)]  # (32, 8): row (lane%8) of matrix lane//8
        mats = rows.reshape(4, 8, 8)
        for j in range(4):
            self.phase_groups.append(len(set(((offsets[8 * j:8 * j + 8] * 2) // 16 % 8).tolist())))
        regs = np.empty((32, 4, 2))
        for j in range(4):
            if trans:
                regs[:, j, 0], regs[:, j, 1] = mats[j][2 * T, G], mats[j][2 * T + 1, G]
            else:
                regs[:, j, 0], regs[:, j, 1] = mats[j][G, 2 * T], mats[j][G, 2 * T + 1]
        return regs


def mma_16816(acc, a, b):
    """acc (32, 4) += A(16x16) @ B(16x8) with A, B rebuilt from the lanes' fragments."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for h in range(2):
        A[G, 2 * T + h] = a[:, 0, h]
        A[G + 8, 2 * T + h] = a[:, 1, h]
        A[G, 2 * T + 8 + h] = a[:, 2, h]
        A[G + 8, 2 * T + 8 + h] = a[:, 3, h]
        B[2 * T + h, G] = b[:, 0, h]
        B[2 * T + 8 + h, G] = b[:, 1, h]
    assert not np.isnan(A).any() and not np.isnan(B).any(), "fragment does not cover the tile"
    Cm = A @ B
    for h in range(2):
        acc[:, h] += Cm[G, 2 * T + h]
        acc[:, 2 + h] += Cm[G + 8, 2 * T + h]


def load_tile(smem: Smem, base: int, rows: int, cols: int, swizzle: bool, g, row0: int, col0: int):
    """load_tile<ROWS, COLS, ...>: g is the stored (nrows x ncols) matrix; outside reads 0."""
    nrows, ncols = g.shape
    idx = np.arange(rows * cols // 8)
    r, c = idx // (cols // 8), (idx % (cols // 8)) * 8
    for e in range(8):
        gr, gc = row0 + r, col0 + c + e
        ok = (gr < nrows) & (gc < ncols)
        vals = np.where(ok, g[np.minimum(gr, nrows - 1), np.minimum(gc, ncols - 1)], 0.0)
        smem.data[base + tile_offset(cols, swizzle, r, c) + e] = vals


def matmul_mma(A, B, trans_a: bool, trans_b: bool, *, BM=128, BN=128, BK=32, WARPS_M=2, WARPS_N=2,
               swizzle=True, stages=1):
    """The whole kernel for one matrix: A stored (M, K) or (K, M), B stored (K, N) or (N, K).
    Returns (C, smem_log) where smem_log lists the bank groups touched per ldmatrix phase."""
    M, K = (A.shape[1], A.shape[0]) if trans_a else A.shape
    N = B.shape[0] if trans_b else B.shape[1]
    WTM, WTN = BM // WARPS_M, BN // WARPS_N
    MT, NT = WTM // 16, WTN // 8
    A_ELEMS, B_ELEMS = BM * BK, BK * BN
    C = np.full((M, N), np.nan)
    log: list[int] = []
    j, r8 = LANE >> 3, LANE & 7
    for by in range(-(-M // BM)):
        for bx in range(-(-N // BN)):
            bm0, bn0 = by * BM, bx * BN
            smem = Smem(stages * (A_ELEMS + B_ELEMS))
            acc = np.zeros((WARPS_M * WARPS_N, MT, NT, 32, 4))
            for kt in range(-(-K // BK)):
                stage, k0 = kt % stages, kt * BK
                ta, tb = stage * A_ELEMS, stages * A_ELEMS + stage * B_ELEMS
                if trans_a:
                    load_tile(smem, ta, BK, BM, swizzle, A, k0, bm0)
                else:
                    load_tile(smem, ta, BM, BK, swizzle, A, bm0, k0)
                if trans_b:
                    load_tile(smem, tb, BN, BK, swizzle, B, bn0, k0)
                else:
                    load_tile(smem, tb, BK, BN, swizzle, B, k0, bn0)
                for warp in range(WARPS_M * WARPS_N):
                    wm, wn = warp // WARPS_N, warp % WARPS_N
                    for kk in range(0, BK, 16):
                        af = []
                        for mt in range(MT):
                            m = wm * WTM + mt * 16
                            if trans_a:
                                off = tile_offset(BM, swizzle, kk + (j >> 1) * 8 + r8, m + (j & 1) * 8)
                                af.append(smem.ldmatrix_x4(ta + off, trans=True))
                            else:
                                off = tile_offset(BK, swizzle, m + (j & 1) * 8 + r8, kk + (j >> 1) * 8)
                                af.append(smem.ldmatrix_x4(ta + off, trans=False))
                        bf = [None] * NT
                        for np_ in range(NT // 2):
                            n = wn * WTN + np_ * 16
                            if trans_b:
                                off = tile_offset(BK, swizzle, n + (j >> 1) * 8 + r8, kk + (j & 1) * 8)
                                t = smem.ldmatrix_x4(tb + off, trans=False)
                            else:
                                off = tile_offset(BN, swizzle, kk + (j & 1) * 8 + r8, n + (j >> 1) * 8)
                                t = smem.ldmatrix_x4(tb + off, trans=True)
                            bf[2 * np_] = t[:, 0:2]
                            bf[2 * np_ + 1] = t[:, 2:4]
                        for mt in range(MT):
                            for nt in range(NT):
                                mma_16816(acc[warp, mt, nt], af[mt], bf[nt])
            for warp in range(WARPS_M * WARPS_N):
                wm, wn = warp // WARPS_N, warp % WARPS_N
                for mt in range(MT):
                    row = bm0 + wm * WTM + mt * 16 + (LANE >> 2)
                    for nt in range(NT):
                        col = bn0 + wn * WTN + nt * 8 + (LANE & 3) * 2
                        for dr, e0 in ((0, 0), (8, 2)):
                            for dc in range(2):
                                rr, cc = row + dr, col + dc
                                ok = (rr < M) & (cc < N)
                                C[rr[ok], cc[ok]] = acc[warp, mt, nt][ok, e0 + dc]
            log.extend(smem.phase_groups)
    return C, log


# ------------------------------------------------------------------------------------------------
# matmul_wgmma (csrc/matmul_sm90.cu): TMA boxes into 128B-swizzled smem, read back through wgmma
# descriptors. The hardware side is modelled from its definitions:
#   TMA, CU_TENSOR_MAP_SWIZZLE_128B: box element (outer o, inner i) of a box whose inner extent
#     is 128 bytes lands at byte o*128 + 2i of the box, then the 16-byte chunk bits [4:6] are
#     XORed with the row bits [7:9] (Swizzle<3,4,3>); elements outside the tensor are zeros.
#   wgmma descriptors (CUTLASS make_gmma_desc canonical layouts, 16-bit types, 128B swizzle;
#     the same XOR applied to the absolute, 1024-aligned address):
#     K-major:  (mn, k) -> start + (mn % 8) * 128 + (mn // 8) * SBO + 2k
#     MN-major: (mn, k) -> start + 2 (mn % 64) + (mn // 64) * LBO + (k % 8) * 128 + (k // 8) * SBO
#   wgmma D fragment (m64nN, f32): warp w, lane l: d[4j + e] = D[16w + l/4 + 8(e >= 2)][8j + 2(l%4) + e%2]
# ------------------------------------------------------------------------------------------------

def swizzle128(off):
    off = np.asarray(off)
    return off ^ (((off >> 7) & 7) << 4)


def tma_box(smem, base, g, o0, i0, box_outer, box_inner=64):
    """Write box (box_outer x box_inner) of the 2-D tensor g (outer x inner) at byte `base`."""
    assert base % 1024 == 0 and box_inner * 2 == 128
    o = np.arange(box_outer)[:, None]
    i = np.arange(box_inner)[None, :]
    go, gi = o0 + o, i0 + i
    ok = (go >= 0) & (go < g.shape[0]) & (gi >= 0) & (gi < g.shape[1])
    vals = np.where(ok, g[np.clip(go, 0, g.shape[0] - 1), np.clip(gi, 0, g.shape[1] - 1)], 0.0)
    smem[(base + swizzle128(o * 128 + 2 * i)) // 2] = vals


def desc_read(smem, start, lbo, sbo, mn_major: bool, n_mn: int):
    """The (n_mn x 16) operand a wgmma descriptor designates (rows mn, columns k)."""
    mn = np.arange(n_mn)[:, None]
    k = np.arange(16)[None, :]
    if mn_major:
        off = start + 2 * (mn % 64) + (mn // 64) * lbo + (k % 8) * 128 + (k // 8) * sbo
    else:
        off = start + (mn % 8) * 128 + (mn // 8) * sbo + 2 * k
    assert np.all(off % 2 == 0)
    return smem[swizzle128(off) // 2]


def matmul_wgmma(A, B, trans_a: bool, trans_b: bool, *, BN=256, STAGES=4, GROUP_M=8):
    """csrc/matmul_sm90.cu's tile order, TMA coordinates, smem offsets, descriptors (start, LBO,
    SBO, k16 steps, transpose bits) and epilogue, for one matrix. Returns C."""
    BM, BK, BOX = 128, 64, 8192
    A_BYTES, B_BYTES = BM * BK * 2, BN * BK * 2
    M, K = (A.shape[1], A.shape[0]) if trans_a else A.shape
    N = B.shape[0] if trans_b else B.shape[1]
    tiles_m, tiles_n = -(-M // BM), -(-N // BN)
    KT = -(-K // BK)
    C = np.full((M, N), np.nan)
    seen = set()
    for pid in range(tiles_m * tiles_n):
        group = pid // (GROUP_M * tiles_n)
        first_m = group * GROUP_M
        group_rows = min(tiles_m - first_m, GROUP_M)
        in_group = pid % (GROUP_M * tiles_n)
        bm0, bn0 = (first_m + in_group % group_rows) * BM, (in_group // group_rows) * BN
        seen.add((bm0, bn0))
        smem = np.full(STAGES * (A_BYTES + B_BYTES) // 2, np.nan)
        sA, sB = 0, STAGES * A_BYTES
        acc = np.zeros((2, 64, BN))
        for kt in range(KT):
            s, k0 = kt % STAGES, kt * BK
            a, b = sA + s * A_BYTES, sB + s * B_BYTES
            if trans_a:  # A stored (K, M): inner m
                tma_box(smem, a, A, k0, bm0, 64)
                tma_box(smem, a + BOX, A, k0, bm0 + 64, 64)
            else:        # A stored (M, K): inner k
                tma_box(smem, a, A, bm0, k0, 128)
            if trans_b:  # B stored (N, K): inner k
                tma_box(smem, b, B, bn0, k0, BN)
            else:        # B stored (K, N): inner n
                for i in range(BN // 64):
                    tma_box(smem, b + i * BOX, B, k0, bn0 + 64 * i, 64)
            for c in range(2):
                a0, b0 = a + c * BOX, b
                for kk in range(BK // 16):
                    if trans_a:
                        opa = desc_read(smem, a0 + kk * 2048, BOX, 1024, True, 64)
                    else:
                        opa = desc_read(smem, a0 + kk * 32, 16, 1024, False, 64)
                    if trans_b:
                        opb = desc_read(smem, b0 + kk * 32, 16, 1024, False, BN)
                    else:
                        opb = desc_read(smem, b0 + kk * 2048, BOX, 1024, True, BN)
                    assert not np.isnan(opa).any() and not np.isnan(opb).any(), "read unwritten smem"
                    acc[c] += opa @ opb.T  # opa (64 x 16: m, k), opb (BN x 16: n, k)
        # epilogue through the D fragment layout: thread tid, accumulator 4j + e
        tid = np.arange(128)[:, None, None]
        j = np.arange(BN // 8)[None, :, None]
        e = np.arange(4)[None, None, :]
        lane, w = tid & 31, tid >> 5
        lr = w * 16 + (lane >> 2) + 8 * (e >= 2)  # row inside the consumer's 64
        lc = 8 * j + 2 * (lane & 3) + e % 2
        lr, lc = np.broadcast_arrays(lr, lc)
        for c in range(2):
            r, cc = bm0 + c * 64 + lr, bn0 + lc
            ok = (r < M) & (cc < N)
            C[r[ok], cc[ok]] = acc[c][lr[ok], lc[ok]]
    assert len(seen) == tiles_m * tiles_n, "the tile order must visit every tile once"
    return C


# ------------------------------------------------------------------------------------------------
# matmul_wgmma's mbarrier protocol, as a randomly scheduled discrete-event model: the producer, the
# two consumers and the TMA landings interleave in a random order; the model checks that nothing
# deadlocks, that a consumer always finds the k-block it expects in its stage, and that TMA never
# overwrites a stage a consumer's wgmma may still be reading (released only after the NEXT
# k-block's wgmma_wait<1>, or at the end of the tile).
# ------------------------------------------------------------------------------------------------

class _Bar:
    """mbarrier: `count` arrivals plus a transaction count complete a phase;
    try_wait.parity(P) is true when the phase of parity P has completed, i.e. the current
    (incomplete) phase's parity differs from P."""

    def __init__(self, count: int):
        self.count, self.pending, self.tx, self.completed = count, count, 0, 0

    def _check(self):
        if self.pending == 0 and self.tx == 0:
            self.completed += 1
            self.pending = self.count

    def arrive(self, expect_tx: int = 0):
        self.tx += expect_tx
        self.pending -= 1
        self._check()

    def complete_tx(self, n: int):
        self.tx -= n
        self._check()

    def passes(self, parity: int) -> bool:
        return self.completed % 2 != parity


def simulate_wgmma_pipeline(n_tiles: int, KT: int, STAGES: int = 4, consumers: int = 2, seed: int = 0):
    """Run the protocol of csrc/matmul_sm90.cu for one CTA that owns n_tiles tiles of KT k-blocks."""
    rng = np.random.default_rng(seed)
    full = [_Bar(1) for _ in range(STAGES)]
    empty = [_Bar(consumers) for _ in range(STAGES)]
    slot = [None] * STAGES                 # which k-block (it) a stage holds
    in_use = [set() for _ in range(consumers)]
    landings = []                          # TMA loads in flight: (stage, it)
    BYTES = 1

    def producer():
        it = 0
        for _ in range(n_tiles):
            for _ in range(KT):
                s = it % STAGES
                yield (empty[s], ((it // STAGES) & 1) ^ 1)
                full[s].arrive(expect_tx=BYTES)
                landings.append((s, it))
                it += 1

    def consumer(c):
        it = 0
        for _ in range(n_tiles):
            for kt in range(KT):
                s = it % STAGES
                yield (full[s], (it // STAGES) & 1)
                assert slot[s] == it, f"consumer {c} at k-block {it} found {slot[s]} in stage {s}"
                in_use[c].add(s)
                if kt > 0:
                    in_use[c].discard((it - 1) % STAGES)
                    empty[(it - 1) % STAGES].arrive()
                it += 1
            in_use[c].discard((it - 1) % STAGES)
            empty[(it - 1) % STAGES].arrive()

    agents = {"producer": producer(), **{f"consumer{c}": consumer(c) for c in range(consumers)}}
    waiting = {name: None for name in agents}  # the (barrier, parity) each agent is blocked on
    done = set()
    while len(done) < len(agents) or landings:
        runnable = [n for n in agents if n not in done and (waiting[n] is None or waiting[n][0].passes(waiting[n][1]))]
        choices = runnable + (["tma"] if landings else [])
        assert choices, f"deadlock: {waiting}"
        pick = choices[rng.integers(len(choices))]
        if pick == "tma":
            s, it = landings.pop(rng.integers(len(landings)))
            assert not any(s in u for u in in_use), f"TMA overwrote stage {s} while a consumer reads it"
            slot[s] = it
            full[s].complete_tx(BYTES)
            continue
        try:
            waiting[pick] = next(agents[pick])
        except StopIteration:
            done.add(pick)
            waiting[pick] = None
    return True
