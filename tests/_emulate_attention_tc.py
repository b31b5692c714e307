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


# ------------------------------------------------------------------------------------------ shared steps
# The steps the kernels of csrc/attention_tc.cu and attention_sm90.cu write inline, one function each
# here (docs/attention_tc.md says why the kernels do not share them through a header); fragments are
# (n8 tiles, 32 lanes, 4) fp32 arrays (a tile's registers across the warp), A/B fragments (32, 4|2, 2)
# fp16.

def tc_query_tile(tile, ntiles, causal, BM):
    """tc_query_tile's m0 (this emulation walks one (b, h), so only the tile remap is left)."""
    mblk = ntiles - 1 - tile if causal else tile
    return mblk * BM


def tc_query_keys(kv_len, m0, causal, BM, BN):
    """tc_query_keys's nblocks: key blocks of BN keys the tile from m0 visits (kv_len given clamped)."""
    n_end = min(kv_len, m0 + BM) if causal else kv_len
    return -(-n_end // BN) if n_end > 0 else 0


def tc_ldsm_a(s, r0, c0, LD):
    """A 16x16 at rows r0.., cols c0.. of a row-major [m][k] tile."""
    return ldmatrix_x4(s, (r0 + LANES % 16) * LD + c0 + (LANES // 16) * 8)


def tc_ldsm_a_trans(s, k0, m0, LD):
    """A 16x16 (m x k) from a [k][m] tile (.trans)."""
    return ldmatrix_x4(s, (k0 + LANES % 8 + (LANES // 16) * 8) * LD + m0 + ((LANES // 8) % 2) * 8, trans=True)


def tc_ldsm_bt(s, n0, k0, LD):
    """B of two n8 tiles from a [n][k] tile (B^T stored), plain."""
    return ldmatrix_x4(s, (n0 + LANES % 8 + (LANES // 16) * 8) * LD + k0 + ((LANES // 8) % 2) * 8)


def tc_ldsm_b(s, k0, n0, LD):
    """B of two n8 tiles from a row-major [k][n] tile (.trans)."""
    return ldmatrix_x4(s, (k0 + LANES % 8 + ((LANES // 8) % 2) * 8) * LD + n0 + (LANES // 16) * 8, trans=True)


def mma_16816_x2(d0, d1, a, b):
    """Two n8 tiles that share A and one ldmatrix x4 of B: d0 += A b[0..1], d1 += A b[2..3]."""
    mma_16816(d0, a, b[:, 0:2])
    mma_16816(d1, a, b[:, 2:4])


def pack_a_from_c(c0, c1):
    """The A fragment (32, 4, 2) fp16 from the (32, 4) fp32 C fragments of two
    adjacent n8 tiles: {c0[0,1], c0[2,3], c1[0,1], c1[2,3]}."""
    return np.stack([pack_half2(c0[:, 0], c0[:, 1]), pack_half2(c0[:, 2], c0[:, 3]),
                     pack_half2(c1[:, 0], c1[:, 1]), pack_half2(c1[:, 2], c1[:, 3])], axis=1)


def tc_warp_abt(KT, NT, sA, ar, sB, LD):
    """acc = A[ar..ar+15] B^T over 16KT columns: (NT, 32, 4)."""
    acc = np.zeros((NT, 32, 4), np.float32)
    for kk in range(KT):
        a = tc_ldsm_a(sA, ar, kk * 16, LD)
        for np_ in range(NT // 2):
            mma_16816_x2(acc[2 * np_], acc[2 * np_ + 1], a, tc_ldsm_bt(sB, np_ * 16, kk * 16, LD))
    return acc


def tc_warp_pv(acc, p, sB, KS, DT, LD):
    """acc (DT, 32, 4) += fp16(P) B, P the (2KS, 32, 4) fp32 fragments, B = sB rows 0..16KS."""
    for kk in range(KS):
        pa = pack_a_from_c(p[2 * kk], p[2 * kk + 1])
        for dp in range(DT // 2):
            mma_16816_x2(acc[2 * dp], acc[2 * dp + 1], pa, tc_ldsm_b(sB, kk * 16, dp * 16, LD))


def tc_scale_mask(s, scale_log2, edge, row0, n0, kv_len, causal):
    """s (NT, 32, 4) in place: times scale_log2, -inf at hidden keys (only when edge)."""
    for nt in range(s.shape[0]):
        for c in range(4):
            x = s[nt, :, c] * scale_log2
            if edge:
                row = row0 + G + 8 * (c // 2)
                col = n0 + nt * 8 + 2 * T + (c % 2)
                x = np.where((col >= kv_len) | (causal & (col > row)), np.float32(-np.inf), x)
            s[nt, :, c] = x


def tc_online_softmax(s, acc, m_i, l_i):
    """In place: s (NT, 32, 4) -> P, acc (DT, 32, 4) and l_i (2, 32) rescaled, m_i (2, 32) updated."""
    NT = s.shape[0]
    for r in range(2):
        mx = m_i[r].copy()
        for nt in range(NT):
            mx = np.maximum(mx, np.maximum(s[nt, :, 2 * r], s[nt, :, 2 * r + 1]))
        mx = quad_max(mx)
        m_use = np.where(mx == -np.inf, np.float32(0), mx)
        alpha = np.exp2(m_i[r] - m_use)
        m_i[r] = mx
        rs = np.zeros(32, np.float32)
        for nt in range(NT):
            p0 = np.exp2(s[nt, :, 2 * r] - m_use)
            p1 = np.exp2(s[nt, :, 2 * r + 1] - m_use)
            s[nt, :, 2 * r] = p0
            s[nt, :, 2 * r + 1] = p1
            rs += p0 + p1
        l_i[r] = l_i[r] * alpha + rs
        acc[:, :, 2 * r] *= alpha
        acc[:, :, 2 * r + 1] *= alpha


def tc_store_row(dst, row, acc, r, mul, l):
    """Lane l's part of row g + 8r of an m16 x D fp32 tile (DT, 32, 4), times mul, as fp16 pairs at
    dst[row, 8dt + 2t..]."""
    for dt in range(acc.shape[0]):
        dst[row, dt * 8 + 2 * T[l]: dt * 8 + 2 * T[l] + 2] = pack_half2(
            acc[dt, l:l + 1, 2 * r] * mul, acc[dt, l:l + 1, 2 * r + 1] * mul)[0]


def tc_store_o_lse(o, lse, acc, m_i, l_i, row0, Lq):
    """o = acc / l_i (fp16), lse = (m_i + log2 l_i) ln 2 on rows row0 + g, row0 + g + 8 below Lq."""
    for r in range(2):
        lsum = quad_sum(l_i[r])
        inv = np.where(lsum > 0, 1 / np.where(lsum > 0, lsum, 1), 0).astype(np.float32)
        rows = row0 + G + 8 * r
        for l in range(32):
            row = rows[l]
            if row >= Lq:
                continue
            tc_store_row(o, row, acc, r, inv[l], l)
            if T[l] == 0:
                lse[row] = (m_i[r, l] + np.log2(lsum[l])) * LN2 if lsum[l] > 0 else -np.inf


def tc_store_empty_rows(o, lse, row0, Lq):
    """o = 0, lse = -inf on rows row0 + g, row0 + g + 8 below Lq (a tile that sees no key)."""
    for r in range(2):
        rows = row0 + G + 8 * r
        for l in range(32):
            if rows[l] < Lq:
                o[rows[l], 2 * T[l]::8] = 0  # every dt: cols 8dt + 2t, 8dt + 2t + 1
                o[rows[l], 2 * T[l] + 1::8] = 0
                if T[l] == 0:
                    lse[rows[l]] = -np.inf


# ------------------------------------------------------------------------------------------ forward

def fwd_cta(q, k, v, o, lse, *, kv_len, causal, scale, D, BN, MW, m0, QREG=True):
    """attn_fwd_tc<D, BN, MW, QREG> for one (b, h) and the query tile from row m0.
    q (Lq, D), k, v (Lk, D) fp16; writes o (Lq, D) fp16 and lse (Lq,) fp32."""
    Lq = q.shape[0]
    BM, LD, KT, NT, DT = 64 * MW, D + 8, D // 16, BN // 8, D // 8
    scale_log2 = np.float32(scale * LOG2E)
    nblocks = tc_query_keys(kv_len, m0, causal, BM, BN)
    sQ = load_tile(BM, D, q, m0, Lq)
    for warp in range(4):
        wrow = warp * 16 * MW
        if nblocks == 0:
            for mi in range(MW):
                tc_store_empty_rows(o, lse, m0 + wrow + mi * 16, Lq)
            continue
        qf = np.empty((MW, KT, 32, 4, 2), dtype=np.float16)
        acc = np.zeros((MW, DT, 32, 4), dtype=np.float32)
        m_i = np.full((MW, 2, 32), -np.inf, dtype=np.float32)
        l_i = np.zeros((MW, 2, 32), dtype=np.float32)
        for jb in range(nblocks):
            n0 = jb * BN
            Kj = load_tile(BN, D, k, n0, kv_len)
            Vj = load_tile(BN, D, v, n0, kv_len)
            if QREG and jb == 0:
                for mi in range(MW):
                    for kk in range(KT):
                        qf[mi, kk] = tc_ldsm_a(sQ, wrow + mi * 16, kk * 16, LD)
            s = np.zeros((MW, NT, 32, 4), dtype=np.float32)
            for kk in range(KT):
                qa = [qf[mi, kk] if QREG else tc_ldsm_a(sQ, wrow + mi * 16, kk * 16, LD) for mi in range(MW)]
                for np_ in range(NT // 2):
                    b = tc_ldsm_bt(Kj, np_ * 16, kk * 16, LD)
                    for mi in range(MW):
                        mma_16816_x2(s[mi, 2 * np_], s[mi, 2 * np_ + 1], qa[mi], b)
            edge = (n0 + BN > kv_len) or (causal and n0 + BN - 1 > m0 + wrow)
            for mi in range(MW):
                tc_scale_mask(s[mi], scale_log2, edge, m0 + wrow + mi * 16, n0, kv_len, causal)
            for mi in range(MW):
                tc_online_softmax(s[mi], acc[mi], m_i[mi], l_i[mi])
            for kk in range(BN // 16):
                pa = [pack_a_from_c(s[mi, 2 * kk], s[mi, 2 * kk + 1]) for mi in range(MW)]
                for dp in range(D // 16):
                    b = tc_ldsm_b(Vj, kk * 16, dp * 16, LD)
                    for mi in range(MW):
                        mma_16816_x2(acc[mi, 2 * dp], acc[mi, 2 * dp + 1], pa[mi], b)
        for mi in range(MW):
            tc_store_o_lse(o, lse, acc[mi], m_i[mi], l_i[mi], m0 + wrow + mi * 16, Lq)


def fwd(q, k, v, *, kv_len, causal, scale, D, BN, MW, QREG=True):
    """The whole grid for one (b, h): every query tile, in the kernel's causal launch order."""
    Lq = q.shape[0]
    o = np.full((Lq, D), np.nan, dtype=np.float16)
    lse = np.full((Lq,), np.nan, dtype=np.float32)
    BM = 64 * MW
    grid = -(-Lq // BM)
    for bx in range(grid):
        fwd_cta(q, k, v, o, lse, kv_len=kv_len, causal=causal, scale=scale, D=D, BN=BN, MW=MW,
                m0=tc_query_tile(bx, grid, causal, BM), QREG=QREG)
    return o, lse


# ------------------------------------------------------------------------------------------ backward

def bwd_dot(do, o):
    """attn_bwd_dot_tc: D_i in fp32 (the lane-strided order of the kernel's sum does not change what
    is checked here: fp32 accumulation of exact fp16 products)."""
    return np.sum(do.astype(np.float32) * o.astype(np.float32), axis=-1, dtype=np.float32)


def tc_row_stats(lse, Dd, rows, Lq):
    """The backward's row statistics of query rows `rows` (an array): lse in base 2, +inf for no-key
    and padding rows; D_i, 0 past Lq."""
    lv = np.where(rows < Lq, lse[np.minimum(rows, Lq - 1)], -np.inf).astype(np.float32)
    sl = np.where(lv == -np.inf, np.float32(np.inf), lv * np.float32(LOG2E)).astype(np.float32)
    sd = np.where(rows < Lq, Dd[np.minimum(rows, Lq - 1)], 0).astype(np.float32)
    return sl, sd


def bwd_cta(q, k, v, do, lse, Dd, dk, dv, dq_acc, *, kv_len, causal, scale, D, BM, atomic, jblk, NW):
    """attn_bwd_tc<D, BM, ATOMIC, NW> for one (b, h) and key block jblk."""
    Lq, Lk = q.shape[0], k.shape[0]
    BN, LD, LDS, KT, DT, MT = 16 * NW, D + 8, BM + 8, D // 16, D // 8, BM // 8
    scale_log2 = np.float32(scale * LOG2E)
    n0 = jblk * BN
    i_start = (n0 // BM) * BM if causal else 0
    nblocks = -(-(Lq - i_start) // BM) if (n0 < kv_len and i_start < Lq) else 0
    sK = load_tile(BN, D, k, n0, kv_len)
    sV = load_tile(BN, D, v, n0, kv_len)
    dK = np.zeros((NW, DT, 32, 4), np.float32)
    dV = np.zeros((NW, DT, 32, 4), np.float32)
    for ib in range(nblocks):
        m0 = i_start + ib * BM
        Qi = load_tile(BM, D, q, m0, Lq)
        dOi = load_tile(BM, D, do, m0, Lq)
        Li, Di = tc_row_stats(lse, Dd, m0 + np.arange(BM), Lq)
        sdS = np.full((BN * LDS,), np.nan, np.float16)
        dsT_all = []
        for warp in range(NW):
            kw = warp * 16
            sT = tc_warp_abt(KT, MT, sK, kw, Qi, LD)
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
            tc_warp_pv(dV[warp], sT, dOi, BM // 16, DT, LD)
            dsT = tc_warp_abt(KT, MT, sV, kw, dOi, LD)
            for nt in range(MT):
                for c in range(4):
                    dsT[nt, :, c] = sT[nt, :, c] * (dsT[nt, :, c] - Di[nt * 8 + 2 * T + (c % 2)])
            tc_warp_pv(dK[warp], dsT, Qi, BM // 16, DT, LD)
            dsT_all.append(dsT)
        if atomic:
            for warp in range(NW):
                kw = warp * 16
                for nt in range(MT):
                    for r in range(2):
                        addr = (kw + G + 8 * r) * LDS + nt * 8 + 2 * T
                        pair = pack_half2(dsT_all[warp][nt, :, 2 * r], dsT_all[warp][nt, :, 2 * r + 1])
                        sdS[addr] = pair[:, 0]
                        sdS[addr + 1] = pair[:, 1]
            for warp in range(NW):
                for tile in range(warp, (BM // 16) * (D // 16), NW):
                    mt, dp = tile // (D // 16), tile % (D // 16)
                    acc = np.zeros((2, 32, 4), np.float32)
                    for kk in range(BN // 16):
                        a = tc_ldsm_a_trans(sdS, kk * 16, mt * 16, LDS)
                        b = tc_ldsm_b(sK, kk * 16, dp * 16, LD)
                        mma_16816_x2(acc[0], acc[1], a, b)
                    for r in range(2):
                        rows = m0 + mt * 16 + G + 8 * r
                        for l in range(32):
                            if rows[l] >= Lq:
                                continue
                            for h in range(2):
                                col = dp * 16 + 2 * T[l] + h * 8
                                dq_acc[rows[l], col] += acc[h, l, 2 * r]
                                dq_acc[rows[l], col + 1] += acc[h, l, 2 * r + 1]
    for warp in range(NW):
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


def dq_cta(q, k, v, do, lse, Dd, dq, *, kv_len, causal, scale, D, BN, m0):
    """attn_bwd_dq_tc<D, BN> for one (b, h) and the query tile from row m0."""
    Lq = q.shape[0]
    BM, LD, KT, NT, DT = 64, D + 8, D // 16, BN // 8, D // 8
    scale_log2 = np.float32(scale * LOG2E)
    nblocks = tc_query_keys(kv_len, m0, causal, BM, BN)
    sQ = load_tile(BM, D, q, m0, Lq)
    sdO = load_tile(BM, D, do, m0, Lq)
    Lrow, Drow = tc_row_stats(lse, Dd, m0 + np.arange(BM), Lq)
    for warp in range(4):
        wrow = warp * 16
        lrow = [Lrow[wrow + G + 8 * r] for r in range(2)]
        drow = [Drow[wrow + G + 8 * r] for r in range(2)]
        acc = np.zeros((DT, 32, 4), np.float32)
        qf = [tc_ldsm_a(sQ, wrow, kk * 16, LD) for kk in range(KT)]
        dof = [tc_ldsm_a(sdO, wrow, kk * 16, LD) for kk in range(KT)]
        for jb in range(nblocks):
            n0 = jb * BN
            Kj = load_tile(BN, D, k, n0, kv_len)
            Vj = load_tile(BN, D, v, n0, kv_len)
            s = np.zeros((NT, 32, 4), np.float32)
            dp = np.zeros((NT, 32, 4), np.float32)
            for kk in range(KT):
                for np_ in range(NT // 2):
                    mma_16816_x2(s[2 * np_], s[2 * np_ + 1], qf[kk], tc_ldsm_bt(Kj, np_ * 16, kk * 16, LD))
                    mma_16816_x2(dp[2 * np_], dp[2 * np_ + 1], dof[kk], tc_ldsm_bt(Vj, np_ * 16, kk * 16, LD))
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
            tc_warp_pv(acc, s, Kj, BN // 16, DT, LD)
        for r in range(2):
            rows = m0 + wrow + G + 8 * r
            for l in range(32):
                if rows[l] >= Lq:
                    continue
                tc_store_row(dq, rows[l], acc, r, np.float32(scale), l)


def bwd(q, k, v, o, do, lse, *, kv_len, causal, scale, D, BM, DQ_BN, deterministic, NW):
    """Backward 11 (deterministic=False) or 12 for one (b, h): (dq, dk, dv) fp16."""
    Lq, Lk = q.shape[0], k.shape[0]
    Dd = bwd_dot(do, o)
    dq = np.full((Lq, D), np.nan, np.float16)
    dk = np.full((Lk, D), np.nan, np.float16)
    dv = np.full((Lk, D), np.nan, np.float16)
    dq_acc = np.zeros((Lq, D), np.float32)
    for jblk in range(-(-Lk // (16 * NW))):
        bwd_cta(q, k, v, do, lse, Dd, dk, dv, dq_acc, kv_len=kv_len, causal=causal, scale=scale, D=D,
                BM=BM, atomic=not deterministic, jblk=jblk, NW=NW)
    if deterministic:
        nq = -(-Lq // 64)
        for bx in range(nq):
            dq_cta(q, k, v, do, lse, Dd, dq, kv_len=kv_len, causal=causal, scale=scale, D=D, BN=DQ_BN,
                   m0=tc_query_tile(bx, nq, causal, 64))
    else:
        dq[:] = (dq_acc * np.float32(scale)).astype(np.float16)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------ forward 14 (wgmma)
#
# csrc/attention_sm90.cu writes its tiles with cp.async into a 128-byte-swizzled layout and hands
# wgmma descriptors of it. The model of what a descriptor means (PTX ISA "Shared Memory Matrix
# Layout", 128B swizzle; the canonical layouts CUTLASS builds): element addresses are computed
# without swizzle from the start address and the strides, then bits 4-6 of the byte address are
# XORed with bits 7-9 (Swizzle<3,4,3>; the atoms are 1024-byte aligned).
#   K-major (A = Q_i, B = K_j): row r (M or N), k: start + (r // 8) * SBO + (r % 8) * 128 + 2k.
#   MN-major (B = V_j, tnspB): k, n: start + (k // 8) * SBO + (k % 8) * 128 + (n // 64) * LBO
#                                    + 2 (n % 64).
# The warpgroup's accumulator (m64nN) is the mma.sync C layout with warp w owning rows 16w..16w+15;
# the register A operand is the mma.sync A layout of the same rows.

def _swz(addr):
    return addr ^ (((addr >> 7) & 7) << 4)


def wg_load(smem: np.ndarray, base: int, g: np.ndarray, rows: int, r0: int, limit: int, pending: list):
    """The kernel's load(): rows [r0, r0+rows) of g (L, D) fp16 into smem (uint8) at base, as
    16-byte cp.async copies: until cp_async_wait (wg_cp_async_wait) lands them, their destination
    reads as 0xFF bytes (NaN halves), so a wgmma that reads a stage before its wait poisons o."""
    D = g.shape[1]
    for c in range(rows * (D // 8)):
        r, ch = c // (D // 8), c % (D // 8)
        off = (ch // 8) * rows * 128 + r * 128 + (((ch % 8) ^ (r % 8)) * 16)
        chunk = g[r0 + r, ch * 8: ch * 8 + 8] if r0 + r < limit else np.zeros(8, np.float16)
        smem[base + off: base + off + 16] = 0xFF
        pending.append((base + off, np.ascontiguousarray(chunk).view(np.uint8)))


def wg_cp_async_wait(smem: np.ndarray, pending: list):
    """cp_async_wait<0> (then the proxy fence and barrier): every issued copy has landed."""
    for dst, data in pending:
        smem[dst: dst + 16] = data
    pending.clear()


def _read_half(smem, addr):
    return smem[addr: addr + 2].view(np.float16)[0]


def desc_kmajor(smem, start, rows, sbo=1024):
    """(rows x 16) fp16 matrix a K-major descriptor at `start` (one k16 step) describes."""
    out = np.empty((rows, 16), np.float16)
    for r in range(rows):
        for kk in range(16):
            out[r, kk] = _read_half(smem, _swz(start + (r // 8) * sbo + (r % 8) * 128 + 2 * kk))
    return out


def desc_mnmajor(smem, start, n, lbo, sbo=1024):
    """(16 x n) fp16 B matrix (k x n) an MN-major descriptor at `start` describes."""
    out = np.empty((16, n), np.float16)
    for kk in range(16):
        for j in range(n):
            out[kk, j] = _read_half(smem, _swz(start + (kk // 8) * sbo + (kk % 8) * 128 + (j // 64) * lbo + 2 * (j % 64)))
    return out


def wg_acc_to_matrix(acc):
    """(4 warps, 32 lanes, 4*NT) accumulators -> 64 x 8NT."""
    NT = acc.shape[2] // 4
    return np.concatenate([np.concatenate([c_matrix(acc[w, :, 4 * j: 4 * j + 4]) for j in range(NT)], axis=1)
                           for w in range(4)], axis=0)


def wg_matrix_to_acc(M):
    NT = M.shape[1] // 8
    acc = np.empty((4, 32, 4 * NT), np.float32)
    for w in range(4):
        for j in range(NT):
            acc[w, :, 4 * j: 4 * j + 4] = c_fragments(M[16 * w: 16 * w + 16, 8 * j: 8 * j + 8])
    return acc


def wgmma_ss(acc, smem, da_start, db_start, N):
    """m64nNk16, A and B K-major: acc (4, 32, N/2) += A @ B^T-as-stored."""
    A = desc_kmajor(smem, da_start, 64).astype(np.float32)
    B = desc_kmajor(smem, db_start, N).astype(np.float32)   # N x 16 (rows = keys)
    acc[:] = wg_matrix_to_acc(wg_acc_to_matrix(acc) + A @ B.T)


def wgmma_rs(acc, pa, smem, db_start, N, lbo):
    """m64nNk16, A from registers pa (4 warps, 32, 4, 2) fp16, B MN-major."""
    A = np.concatenate([a_matrix(pa[w]) for w in range(4)], axis=0).astype(np.float32)
    B = desc_mnmajor(smem, db_start, N, lbo).astype(np.float32)
    acc[:] = wg_matrix_to_acc(wg_acc_to_matrix(acc) + A @ B)


def _frags(x):
    """(32 lanes, 4*NT) wgmma accumulators of one warp -> an (NT, 32, 4) view (the per-n8-tile
    fragments the kernel's float (&)[NT][4] reference names)."""
    view = x.reshape(32, -1, 4).transpose(1, 0, 2)
    assert np.shares_memory(view, x)
    return view


def fwd_wgmma(q, k, v, *, kv_len, causal, scale, D, BN=128):
    """attn_fwd_wgmma<D, BN> over every query tile of one (b, h)."""
    Lq = q.shape[0]
    BM, NT, DT = 128, BN // 8, D // 8
    Q_BYTES, KV_BYTES = BM * D * 2, BN * D * 2
    scale_log2 = np.float32(scale * LOG2E)
    o = np.full((Lq, D), np.nan, np.float16)
    lse = np.full((Lq,), np.nan, np.float32)
    ntiles = -(-Lq // BM)
    for tile in range(ntiles):
        m0 = tc_query_tile(tile, ntiles, causal, BM)
        nblocks = tc_query_keys(kv_len, m0, causal, BM, BN)
        smem = np.full(Q_BYTES + 2 * KV_BYTES * 2, 0xFF, np.uint8)   # 0xFFFF halves are NaN
        sQ, sK, sV = 0, Q_BYTES, Q_BYTES + 2 * KV_BYTES
        if nblocks == 0:
            for wrow in range(0, BM, 16):
                tc_store_empty_rows(o, lse, m0 + wrow, Lq)
            continue
        # The kernel's pipeline, for both warpgroups at once: Q_i, K_0, V_0 issued in the prologue;
        # at the top of block jb the wait lands everything issued, then K_{jb+1}, V_{jb+1} are
        # issued into the other buffer while block jb computes from buffer jb & 1.
        pending = []
        wg_load(smem, sQ, q, BM, m0, Lq, pending)
        wg_load(smem, sK, k, BN, 0, kv_len, pending)
        wg_load(smem, sV, v, BN, 0, kv_len, pending)
        acc = np.zeros((2, 4, 32, DT * 4), np.float32)
        m_i = np.full((2, 4, 2, 32), -np.inf, np.float32)
        l_i = np.zeros((2, 4, 2, 32), np.float32)
        for jb in range(nblocks):
            n0, buf = jb * BN, jb & 1
            wg_cp_async_wait(smem, pending)
            if jb + 1 < nblocks:
                wg_load(smem, sK + (buf ^ 1) * KV_BYTES, k, BN, n0 + BN, kv_len, pending)
                wg_load(smem, sV + (buf ^ 1) * KV_BYTES, v, BN, n0 + BN, kv_len, pending)
            kb, vb = sK + buf * KV_BYTES, sV + buf * KV_BYTES
            for wg in range(2):
                wrow0, qa = wg * 64, sQ + wg * 64 * 128
                s = np.zeros((4, 32, NT * 4), np.float32)
                for kk in range(D // 16):
                    wgmma_ss(s, smem, qa + (kk // 4) * BM * 128 + (kk % 4) * 32,
                             kb + (kk // 4) * BN * 128 + (kk % 4) * 32, BN)
                pa = np.empty((BN // 16, 4, 32, 4, 2), np.float16)
                for w in range(4):
                    # The warp's accumulators as forward 10's fragments: s4[nt] = s[w, :, 4nt:4nt+4]
                    # (views, so the helpers update s and acc in place).
                    s4 = _frags(s[w])
                    wrow = wrow0 + w * 16
                    edge = (n0 + BN > kv_len) or (causal and n0 + BN - 1 > m0 + wrow)
                    tc_scale_mask(s4, scale_log2, edge, m0 + wrow, n0, kv_len, causal)
                    tc_online_softmax(s4, _frags(acc[wg, w]), m_i[wg, w], l_i[wg, w])
                    for kk in range(BN // 16):
                        pa[kk, w] = pack_a_from_c(s4[2 * kk], s4[2 * kk + 1])
                for kk in range(BN // 16):
                    wgmma_rs(acc[wg], pa[kk], smem, vb + kk * 16 * 128, D, BN * 128)
        for wg in range(2):
            for w in range(4):
                tc_store_o_lse(o, lse, _frags(acc[wg, w]), m_i[wg, w], l_i[wg, w], m0 + wg * 64 + w * 16, Lq)
    return o, lse
