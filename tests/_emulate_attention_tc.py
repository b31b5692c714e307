"""A lane-level NumPy emulation of csrc/attention_tc.cu, for checking its fragment indexing without a GPU.

The CUDA kernels were written blind (no GPU on the build machine), so their trickiest part, which
lane holds which element of which tile, is restated here one operation at a time: ``ldmatrix`` (x4,
with and without ``.trans``) reads 8x8 matrices from an emulated shared memory at the per-lane
addresses the kernel computes, ``mma_16816`` rebuilds A (16x16), B (16x8) and C (16x8) from the
lanes' registers by the PTX ISA's fragment tables and scatters D back, and quad shuffles combine the
4 lanes of a row. The kernel's control flow (tiles, masks, online softmax, epilogue) is transliterated
line for line, so a wrong address, a swapped register or a misplaced mask in the .cu shows up as a
mismatch against numpy_ref. Shared memory padding (the 8 halves after each row) is filled with NaN:
a read of it poisons the result.

Fragment tables (PTX ISA "Matrix Fragments for mma.m16n8k16" with .f16; lane l, g = l // 4, t = l % 4):
  A: reg0 = A[g][2t:2t+2]  reg1 = A[g+8][2t:2t+2]  reg2 = A[g][2t+8:2t+10]  reg3 = A[g+8][2t+8:2t+10]
  B: reg0 = B[2t:2t+2][g]  reg1 = B[2t+8:2t+10][g]
  C: c0, c1 = C[g][2t:2t+2]  c2, c3 = C[g+8][2t:2t+2]
ldmatrix: lanes 8j..8j+7 give the row addresses of matrix j; lane l receives M_j[l//4][2t:2t+2],
or with .trans M_j[2t:2t+2][l//4], into register j.
"""

from __future__ import annotations

import numpy as np

LANES = np.arange(32)
G = LANES // 4
T = LANES % 4
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ------------------------------------------------------------------------------------------ primitives

def ldmatrix_x4(smem: np.ndarray, addr: np.ndarray, trans: bool = False) -> np.ndarray:
    """smem: flat float16; addr: (32,) half offsets. Returns regs (32, 4, 2) float16."""
    regs = np.empty((32, 4, 2), dtype=np.float16)
    for j in range(4):
        rows = np.stack([smem[addr[8 * j + r]: addr[8 * j + r] + 8] for r in range(8)])  # (8, 8)
        assert rows.shape == (8, 8), "ldmatrix row address out of the shared-memory array"
        for l in range(32):
            g, t = l // 4, l % 4
            regs[l, j] = rows[g, 2 * t: 2 * t + 2] if not trans else rows[2 * t: 2 * t + 2, g]
    return regs


def a_matrix(a: np.ndarray) -> np.ndarray:
    """(32, 4, 2) A fragments -> 16x16."""
    A = np.empty((16, 16), dtype=a.dtype)
    for l in range(32):
        g, t = l // 4, l % 4
        A[g, 2 * t: 2 * t + 2] = a[l, 0]
        A[g + 8, 2 * t: 2 * t + 2] = a[l, 1]
        A[g, 2 * t + 8: 2 * t + 10] = a[l, 2]
        A[g + 8, 2 * t + 8: 2 * t + 10] = a[l, 3]
    return A


def b_matrix(b: np.ndarray) -> np.ndarray:
    """(32, 2, 2) B fragments -> 16x8."""
    B = np.empty((16, 8), dtype=b.dtype)
    for l in range(32):
        g, t = l // 4, l % 4
        B[2 * t: 2 * t + 2, g] = b[l, 0]
        B[2 * t + 8: 2 * t + 10, g] = b[l, 1]
    return B


def c_matrix(c: np.ndarray) -> np.ndarray:
    """(32, 4) fp32 accumulators -> 16x8."""
    C = np.empty((16, 8), dtype=np.float32)
    for l in range(32):
        g, t = l // 4, l % 4
        C[g, 2 * t: 2 * t + 2] = c[l, 0:2]
        C[g + 8, 2 * t: 2 * t + 2] = c[l, 2:4]
    return C


def c_fragments(C: np.ndarray) -> np.ndarray:
    c = np.empty((32, 4), dtype=np.float32)
    for l in range(32):
        g, t = l // 4, l % 4
        c[l, 0:2] = C[g, 2 * t: 2 * t + 2]
        c[l, 2:4] = C[g + 8, 2 * t: 2 * t + 2]
    return c


def mma_16816(d: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """d (32, 4) fp32 += A(a) @ B(b), in place; products exact, sums in fp32."""
    A = a_matrix(a).astype(np.float32)
    B = b_matrix(b).astype(np.float32)
    d[:] = c_fragments(c_matrix(d) + A @ B)


def pack_half2(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(32,) fp32 pairs -> (32, 2) fp16: element 0 is the low half (the lower column)."""
    return np.stack([lo.astype(np.float16), hi.astype(np.float16)], axis=-1)


def shfl_xor(x: np.ndarray, mask: int) -> np.ndarray:
    return x[LANES ^ mask]


def quad_max(x):
    x = np.maximum(x, shfl_xor(x, 1))
    return np.maximum(x, shfl_xor(x, 2))


def quad_sum(x):
    x = x + shfl_xor(x, 1)
    return x + shfl_xor(x, 2)


def load_tile(rows: int, D: int, g: np.ndarray, r0: int, limit: int) -> np.ndarray:
    """tc_load_tile: rows [r0, r0+rows) of g (L, D) into flat smem [rows][D+8]; rows >= limit zero,
    padding NaN (the kernel never reads it; the emulation proves that)."""
    LD = D + 8
    s = np.full((rows, LD), np.nan, dtype=np.float16)
    for r in range(rows):
        s[r, :D] = g[r0 + r] if r0 + r < limit else 0
    return s.reshape(-1)


# ------------------------------------------------------------------------------------------ forward

def fwd_cta(q, k, v, o, lse, *, kv_len, causal, scale, D, BN, MW, mblk, QREG=True):
    """attn_fwd_tc<D, BN, MW, QREG> for one (b, h) and query tile mblk (the remapped index).
    q (Lq, D), k, v (Lk, D) fp16; writes o (Lq, D) fp16 and lse (Lq,) fp32."""
    Lq, Lk = q.shape[0], k.shape[0]
    BM, LD, KT, NT, DT = 64 * MW, D + 8, D // 16, BN // 8, D // 8
    scale_log2 = np.float32(scale * LOG2E)
    m0 = mblk * BM
    n_end = min(kv_len, m0 + BM) if causal else kv_len
    nblocks = -(-n_end // BN) if n_end > 0 else 0
    sQ = load_tile(BM, D, q, m0, Lq)
    for warp in range(4):
        wrow = warp * 16 * MW
        if nblocks == 0:
            for mi in range(MW):
                for r in range(2):
                    rows = m0 + wrow + mi * 16 + G + 8 * r
                    for l in range(32):
                        if rows[l] < Lq:
                            o[rows[l], 2 * T[l]::8] = 0  # every dt: cols 8dt + 2t, 8dt + 2t + 1
                            o[rows[l], 2 * T[l] + 1::8] = 0
                            if T[l] == 0:
                                lse[rows[l]] = -np.inf
            continue
        qf = np.empty((MW, KT, 32, 4, 2), dtype=np.float16)
        acc = np.zeros((MW, DT, 32, 4), dtype=np.float32)
        m_i = np.full((MW, 2, 32), -np.inf, dtype=np.float32)
        l_i = np.zeros((MW, 2, 32), dtype=np.float32)
        for jb in range(nblocks):
            n0 = jb * BN
            Kj = load_tile(BN, D, k, n0, kv_len)
            Vj = load_tile(BN, D, v, n0, kv_len)
            def q_addr(mi, kk):
                return (wrow + mi * 16 + LANES % 16) * LD + kk * 16 + (LANES // 16) * 8

            if QREG and jb == 0:
                for mi in range(MW):
                    for kk in range(KT):
                        qf[mi, kk] = ldmatrix_x4(sQ, q_addr(mi, kk))
            s = np.zeros((MW, NT, 32, 4), dtype=np.float32)
            for kk in range(KT):
                qa = [qf[mi, kk] if QREG else ldmatrix_x4(sQ, q_addr(mi, kk)) for mi in range(MW)]
                for np_ in range(NT // 2):
                    b = ldmatrix_x4(Kj, (np_ * 16 + LANES % 8 + (LANES // 16) * 8) * LD + kk * 16 + ((LANES // 8) % 2) * 8)
                    for mi in range(MW):
                        mma_16816(s[mi, 2 * np_], qa[mi], b[:, 0:2])
                        mma_16816(s[mi, 2 * np_ + 1], qa[mi], b[:, 2:4])
            edge = (n0 + BN > kv_len) or (causal and n0 + BN - 1 > m0 + wrow)
            for mi in range(MW):
                for nt in range(NT):
                    for c in range(4):
                        x = s[mi, nt, :, c] * scale_log2
                        if edge:
                            row = m0 + wrow + mi * 16 + G + 8 * (c // 2)
                            col = n0 + nt * 8 + 2 * T + (c % 2)
                            x = np.where((col >= kv_len) | (causal & (col > row)), np.float32(-np.inf), x)
                        s[mi, nt, :, c] = x
            for mi in range(MW):
                for r in range(2):
                    mx = m_i[mi, r].copy()
                    for nt in range(NT):
                        mx = np.maximum(mx, np.maximum(s[mi, nt, :, 2 * r], s[mi, nt, :, 2 * r + 1]))
                    mx = quad_max(mx)
                    m_use = np.where(mx == -np.inf, np.float32(0), mx)
                    alpha = np.exp2(m_i[mi, r] - m_use)
                    m_i[mi, r] = mx
                    rs = np.zeros(32, np.float32)
                    for nt in range(NT):
                        p0 = np.exp2(s[mi, nt, :, 2 * r] - m_use)
                        p1 = np.exp2(s[mi, nt, :, 2 * r + 1] - m_use)
                        s[mi, nt, :, 2 * r] = p0
                        s[mi, nt, :, 2 * r + 1] = p1
                        rs += p0 + p1
                    l_i[mi, r] = l_i[mi, r] * alpha + rs
                    acc[mi, :, :, 2 * r] *= alpha
                    acc[mi, :, :, 2 * r + 1] *= alpha
            for kk in range(BN // 16):
                pa = np.empty((MW, 32, 4, 2), dtype=np.float16)
                for mi in range(MW):
                    pa[mi, :, 0] = pack_half2(s[mi, 2 * kk, :, 0], s[mi, 2 * kk, :, 1])
                    pa[mi, :, 1] = pack_half2(s[mi, 2 * kk, :, 2], s[mi, 2 * kk, :, 3])
                    pa[mi, :, 2] = pack_half2(s[mi, 2 * kk + 1, :, 0], s[mi, 2 * kk + 1, :, 1])
                    pa[mi, :, 3] = pack_half2(s[mi, 2 * kk + 1, :, 2], s[mi, 2 * kk + 1, :, 3])
                for dp in range(D // 16):
                    b = ldmatrix_x4(Vj, (kk * 16 + LANES % 8 + ((LANES // 8) % 2) * 8) * LD + dp * 16 + (LANES // 16) * 8,
                                    trans=True)
                    for mi in range(MW):
                        mma_16816(acc[mi, 2 * dp], pa[mi], b[:, 0:2])
                        mma_16816(acc[mi, 2 * dp + 1], pa[mi], b[:, 2:4])
        for mi in range(MW):
            for r in range(2):
                lsum = quad_sum(l_i[mi, r])
                inv = np.where(lsum > 0, 1 / np.where(lsum > 0, lsum, 1), 0).astype(np.float32)
                rows = m0 + wrow + mi * 16 + G + 8 * r
                for l in range(32):
                    row = rows[l]
                    if row >= Lq:
                        continue
                    for dt in range(DT):
                        o[row, dt * 8 + 2 * T[l]: dt * 8 + 2 * T[l] + 2] = pack_half2(
                            acc[mi, dt, l:l + 1, 2 * r] * inv[l], acc[mi, dt, l:l + 1, 2 * r + 1] * inv[l])[0]
                    if T[l] == 0:
                        lse[row] = (m_i[mi, r, l] + np.log2(lsum[l])) * LN2 if lsum[l] > 0 else -np.inf


def fwd(q, k, v, *, kv_len, causal, scale, D, BN, MW, QREG=True):
    """The whole grid for one (b, h): every query tile, in the kernel's causal launch order."""
    Lq = q.shape[0]
    o = np.full((Lq, D), np.nan, dtype=np.float16)
    lse = np.full((Lq,), np.nan, dtype=np.float32)
    BM = 64 * MW
    grid = -(-Lq // BM)
    for bx in range(grid):
        mblk = grid - 1 - bx if causal else bx
        fwd_cta(q, k, v, o, lse, kv_len=kv_len, causal=causal, scale=scale, D=D, BN=BN, MW=MW, mblk=mblk,
                QREG=QREG)
    return o, lse


# ------------------------------------------------------------------------------------------ backward

def _a_from_acc(x, kk):
    """The A fragment (32, 4, 2) fp16 of columns 16kk..16kk+15 from (n8 tiles, 32, 4) fp32 C
    fragments: {X[2kk][0,1], X[2kk][2,3], X[2kk+1][0,1], X[2kk+1][2,3]}."""
    return np.stack([pack_half2(x[2 * kk][:, 0], x[2 * kk][:, 1]), pack_half2(x[2 * kk][:, 2], x[2 * kk][:, 3]),
                     pack_half2(x[2 * kk + 1][:, 0], x[2 * kk + 1][:, 1]),
                     pack_half2(x[2 * kk + 1][:, 2], x[2 * kk + 1][:, 3])], axis=1)


def bwd_dot(do, o):
    """attn_bwd_dot_tc: D_i in fp32 (the lane-strided order of the kernel's sum does not change what
    is checked here: fp32 accumulation of exact fp16 products)."""
    return np.sum(do.astype(np.float32) * o.astype(np.float32), axis=-1, dtype=np.float32)


def _rowstats(lse, Dd, m0, BM, Lq):
    rows = m0 + np.arange(BM)
    lv = np.where(rows < Lq, lse[np.minimum(rows, Lq - 1)], -np.inf).astype(np.float32)
    sl = np.where(lv == -np.inf, np.float32(np.inf), lv * np.float32(LOG2E)).astype(np.float32)
    sd = np.where(rows < Lq, Dd[np.minimum(rows, Lq - 1)], 0).astype(np.float32)
    return sl, sd


def bwd_cta(q, k, v, do, lse, Dd, dk, dv, dq_acc, *, kv_len, causal, scale, D, BM, atomic, jblk):
    """attn_bwd_tc<D, BM, ATOMIC> for one (b, h) and key block jblk."""
    Lq, Lk = q.shape[0], k.shape[0]
    BN, LD, LDS, KT, DT, MT = 64, D + 8, BM + 8, D // 16, D // 8, BM // 8
    scale_log2 = np.float32(scale * LOG2E)
    n0 = jblk * BN
    i_start = (n0 // BM) * BM if causal else 0
    nblocks = -(-(Lq - i_start) // BM) if (n0 < kv_len and i_start < Lq) else 0
    sK = load_tile(BN, D, k, n0, kv_len)
    sV = load_tile(BN, D, v, n0, kv_len)
    dK = np.zeros((4, DT, 32, 4), np.float32)
    dV = np.zeros((4, DT, 32, 4), np.float32)
    for ib in range(nblocks):
        m0 = i_start + ib * BM
        Qi = load_tile(BM, D, q, m0, Lq)
        dOi = load_tile(BM, D, do, m0, Lq)
        Li, Di = _rowstats(lse, Dd, m0, BM, Lq)
        sdS = np.full((BN * LDS,), np.nan, np.float16)
        dsT_all = []
        for warp in range(4):
            kw = warp * 16
            sT = np.zeros((MT, 32, 4), np.float32)
            for kk in range(KT):
                a = ldmatrix_x4(sK, (kw + LANES % 16) * LD + kk * 16 + (LANES // 16) * 8)
                for np_ in range(MT // 2):
                    b = ldmatrix_x4(Qi, (np_ * 16 + LANES % 8 + (LANES // 16) * 8) * LD + kk * 16 + ((LANES // 8) % 2) * 8)
                    mma_16816(sT[2 * np_], a, b[:, 0:2])
                    mma_16816(sT[2 * np_ + 1], a, b[:, 2:4])
            edge = (n0 + BN > kv_len) or (causal and n0 + kw + 15 > m0)
            for nt in range(MT):
                for c in range(4):
                    qcol = nt * 8 + 2 * T + (c % 2)
                    with np.errstate(invalid="ignore"):
                        p = np.exp2(sT[nt, :, c] * scale_log2 - Li[qcol]).astype(np.float32)
                    if edge:
                        key = n0 + kw + G + 8 * (c // 2)
                        p = np.where((key >= kv_len) | (causal & (key > m0 + qcol)), np.float32(0), p)
                    sT[nt, :, c] = p
            for kk in range(BM // 16):
                pa = _a_from_acc(sT, kk)
                for dp in range(D // 16):
                    b = ldmatrix_x4(dOi, (kk * 16 + LANES % 8 + ((LANES // 8) % 2) * 8) * LD + dp * 16 + (LANES // 16) * 8, trans=True)
                    mma_16816(dV[warp, 2 * dp], pa, b[:, 0:2])
                    mma_16816(dV[warp, 2 * dp + 1], pa, b[:, 2:4])
            dsT = np.zeros((MT, 32, 4), np.float32)
            for kk in range(KT):
                a = ldmatrix_x4(sV, (kw + LANES % 16) * LD + kk * 16 + (LANES // 16) * 8)
                for np_ in range(MT // 2):
                    b = ldmatrix_x4(dOi, (np_ * 16 + LANES % 8 + (LANES // 16) * 8) * LD + kk * 16 + ((LANES // 8) % 2) * 8)
                    mma_16816(dsT[2 * np_], a, b[:, 0:2])
                    mma_16816(dsT[2 * np_ + 1], a, b[:, 2:4])
            for nt in range(MT):
                for c in range(4):
                    dsT[nt, :, c] = sT[nt, :, c] * (dsT[nt, :, c] - Di[nt * 8 + 2 * T + (c % 2)])
            for kk in range(BM // 16):
                da = _a_from_acc(dsT, kk)
                for dp in range(D // 16):
                    b = ldmatrix_x4(Qi, (kk * 16 + LANES % 8 + ((LANES // 8) % 2) * 8) * LD + dp * 16 + (LANES // 16) * 8, trans=True)
                    mma_16816(dK[warp, 2 * dp], da, b[:, 0:2])
                    mma_16816(dK[warp, 2 * dp + 1], da, b[:, 2:4])
            dsT_all.append(dsT)
        if atomic:
            for warp in range(4):
                kw = warp * 16
                for nt in range(MT):
                    for r in range(2):
                        addr = (kw + G + 8 * r) * LDS + nt * 8 + 2 * T
                        pair = pack_half2(dsT_all[warp][nt, :, 2 * r], dsT_all[warp][nt, :, 2 * r + 1])
                        sdS[addr] = pair[:, 0]
                        sdS[addr + 1] = pair[:, 1]
            for warp in range(4):
                for tile in range(warp, (BM // 16) * (D // 16), 4):
                    mt, dp = tile // (D // 16), tile % (D // 16)
                    acc = np.zeros((2, 32, 4), np.float32)
                    for kk in range(BN // 16):
                        a = ldmatrix_x4(sdS, (kk * 16 + LANES % 8 + (LANES // 16) * 8) * LDS + mt * 16 + ((LANES // 8) % 2) * 8, trans=True)
                        b = ldmatrix_x4(sK, (kk * 16 + LANES % 8 + ((LANES // 8) % 2) * 8) * LD + dp * 16 + (LANES // 16) * 8, trans=True)
                        mma_16816(acc[0], a, b[:, 0:2])
                        mma_16816(acc[1], a, b[:, 2:4])
                    for r in range(2):
                        rows = m0 + mt * 16 + G + 8 * r
                        for l in range(32):
                            if rows[l] >= Lq:
                                continue
                            for h in range(2):
                                col = dp * 16 + 2 * T[l] + h * 8
                                dq_acc[rows[l], col] += acc[h, l, 2 * r]
                                dq_acc[rows[l], col + 1] += acc[h, l, 2 * r + 1]
    for warp in range(4):
        for r in range(2):
            keys = n0 + warp * 16 + G + 8 * r
            for l in range(32):
                if keys[l] >= Lk:
                    continue
                for dt in range(DT):
                    cs = slice(dt * 8 + 2 * T[l], dt * 8 + 2 * T[l] + 2)
                    dk[keys[l], cs] = pack_half2(dK[warp, dt, l:l + 1, 2 * r] * np.float32(scale),
                                                 dK[warp, dt, l:l + 1, 2 * r + 1] * np.float32(scale))[0]
                    dv[keys[l], cs] = pack_half2(dV[warp, dt, l:l + 1, 2 * r], dV[warp, dt, l:l + 1, 2 * r + 1])[0]


def dq_cta(q, k, v, do, lse, Dd, dq, *, kv_len, causal, scale, D, BN, mblk):
    """attn_bwd_dq_tc<D, BN> for one (b, h) and query tile mblk (remapped index)."""
    Lq, Lk = q.shape[0], k.shape[0]
    BM, LD, KT, NT, DT = 64, D + 8, D // 16, BN // 8, D // 8
    scale_log2 = np.float32(scale * LOG2E)
    m0 = mblk * BM
    n_end = min(kv_len, m0 + BM) if causal else kv_len
    nblocks = -(-n_end // BN) if n_end > 0 else 0
    sQ = load_tile(BM, D, q, m0, Lq)
    sdO = load_tile(BM, D, do, m0, Lq)
    Lrow, Drow = _rowstats(lse, Dd, m0, BM, Lq)
    for warp in range(4):
        wrow = warp * 16
        lrow = [Lrow[wrow + G + 8 * r] for r in range(2)]
        drow = [Drow[wrow + G + 8 * r] for r in range(2)]
        acc = np.zeros((DT, 32, 4), np.float32)
        qf = [ldmatrix_x4(sQ, (wrow + LANES % 16) * LD + kk * 16 + (LANES // 16) * 8) for kk in range(KT)]
        dof = [ldmatrix_x4(sdO, (wrow + LANES % 16) * LD + kk * 16 + (LANES // 16) * 8) for kk in range(KT)]
        for jb in range(nblocks):
            n0 = jb * BN
            Kj = load_tile(BN, D, k, n0, kv_len)
            Vj = load_tile(BN, D, v, n0, kv_len)
            s = np.zeros((NT, 32, 4), np.float32)
            dp = np.zeros((NT, 32, 4), np.float32)
            for kk in range(KT):
                for np_ in range(NT // 2):
                    off = (np_ * 16 + LANES % 8 + (LANES // 16) * 8) * LD + kk * 16 + ((LANES // 8) % 2) * 8
                    b = ldmatrix_x4(Kj, off)
                    mma_16816(s[2 * np_], qf[kk], b[:, 0:2])
                    mma_16816(s[2 * np_ + 1], qf[kk], b[:, 2:4])
                    b = ldmatrix_x4(Vj, off)
                    mma_16816(dp[2 * np_], dof[kk], b[:, 0:2])
                    mma_16816(dp[2 * np_ + 1], dof[kk], b[:, 2:4])
            edge = (n0 + BN > kv_len) or (causal and n0 + BN - 1 > m0 + wrow)
            for nt in range(NT):
                for c in range(4):
                    r = c // 2
                    p = np.exp2(s[nt, :, c] * scale_log2 - lrow[r]).astype(np.float32)
                    if edge:
                        row = m0 + wrow + G + 8 * r
                        col = n0 + nt * 8 + 2 * T + (c % 2)
                        p = np.where((col >= kv_len) | (causal & (col > row)), np.float32(0), p)
                    s[nt, :, c] = p * (dp[nt, :, c] - drow[r])
            for kk in range(BN // 16):
                da = _a_from_acc(s, kk)
                for dpi in range(D // 16):
                    b = ldmatrix_x4(Kj, (kk * 16 + LANES % 8 + ((LANES // 8) % 2) * 8) * LD + dpi * 16 + (LANES // 16) * 8, trans=True)
                    mma_16816(acc[2 * dpi], da, b[:, 0:2])
                    mma_16816(acc[2 * dpi + 1], da, b[:, 2:4])
        for r in range(2):
            rows = m0 + wrow + G + 8 * r
            for l in range(32):
                if rows[l] >= Lq:
                    continue
                for dt in range(DT):
                    dq[rows[l], dt * 8 + 2 * T[l]: dt * 8 + 2 * T[l] + 2] = pack_half2(
                        acc[dt, l:l + 1, 2 * r] * np.float32(scale), acc[dt, l:l + 1, 2 * r + 1] * np.float32(scale))[0]


def bwd(q, k, v, o, do, lse, *, kv_len, causal, scale, D, BM, DQ_BN, deterministic):
    """Backward 11 (deterministic=False) or 12 for one (b, h): (dq, dk, dv) fp16."""
    Lq, Lk = q.shape[0], k.shape[0]
    Dd = bwd_dot(do, o)
    dq = np.full((Lq, D), np.nan, np.float16)
    dk = np.full((Lk, D), np.nan, np.float16)
    dv = np.full((Lk, D), np.nan, np.float16)
    dq_acc = np.zeros((Lq, D), np.float32)
    for jblk in range(-(-Lk // 64)):
        bwd_cta(q, k, v, do, lse, Dd, dk, dv, dq_acc, kv_len=kv_len, causal=causal, scale=scale, D=D,
                BM=BM, atomic=not deterministic, jblk=jblk)
    if deterministic:
        nq = -(-Lq // 64)
        for bx in range(nq):
            dq_cta(q, k, v, do, lse, Dd, dq, kv_len=kv_len, causal=causal, scale=scale, D=D, BN=DQ_BN,
                   mblk=nq - 1 - bx if causal else bx)
    else:
        dq[:] = (dq_acc * np.float32(scale)).astype(np.float16)
    return dq, dk, dv
