// attention_tc.cuh: the device helpers of the fp16 tensor-core attention kernels, one definition each,
// shared by csrc/attention_tc.cu (mma.sync: forward 10/13, backward 11/12) and
// csrc/attention_sm90.cu (wgmma: forward 14). Block names as numpy_ref/attention.py's blocked
// flash_attention_forward / flash_attention_backward: Q_i (query tile, BM rows from m0), K_j / V_j
// (key block, BN keys from n0), m_i, l_i, acc.
//
//   tc_load_tile            rows of a [L][D] fp16 matrix -> smem [ROWS][D + 8] by cp.async, zero-filled
//                           past the edge
//   tc_query_tile, tc_kv_len, tc_query_keys, tc_fwd_tile
//                           which (b, h) and query tile Q_i a forward-shaped CTA owns (forward
//                           10/13/14, backward 12's dQ kernel), the keys it sees and the key blocks
//                           K_j it visits; tc_fwd_tile is all of it plus the forward's pointers
//   tc_ldsm_a / _a_trans    ldmatrix x4 of a 16x16 A fragment from a padded smem tile
//   tc_ldsm_bt / tc_ldsm_b  ldmatrix x4 of the B fragments of two n8 tiles (B^T stored / B stored)
//   tc_warp_abt             acc = A B^T for one warp's 16 rows (S = Q K^T and its transposes)
//   tc_warp_pv              acc += fp16(P) B with P from the warp's fp32 accumulators (P V_j, P^T dO_i,
//                           dS^T Q_i, dS K_j)
//   tc_scale_mask, tc_online_softmax, tc_store_o_lse, tc_store_empty_rows
//                           the forward's softmax on one m16 tile of S (the mma.sync C layout, which
//                           is also each warp's slice of a wgmma accumulator)
//   tc_store_row            one row of a warp's m16 x D fp32 tile, scaled, as fp16 (o, dq)
//   tc_row_stats            the backward's lse (base 2; +inf where P must be 0) and D_i of one row
//
// Left in the kernels on purpose: the edge-tile test (n0 + BN > kv_len || causal && ...), and backward
// 11/12's interleaved dK/dV stores. As helpers they changed the SASS of GPU-verified kernels (LLVM
// canonicalizes a helper's body on its own before inlining: the && came out as a branchless select,
// and two row stores per key were reordered), which scripts/sass_diff.py does not allow.
//
// Fragment ownership (lane = 4*g + t, g = lane/4 in 0..7, t = lane%4 in 0..3), per m16 tile:
//   S[nt][0..1]: row g,   keys n0 + 8*nt + 2t + {0,1};  S[nt][2..3]: row g+8, same keys.
//   acc[dt][..]: the same with head-dim columns 8*dt + 2t + {0,1}.
// So each row's values sit in the 4 lanes of one quad, and its max/sum needs shuffles by 1 and 2.
// tests/_emulate_attention_tc.py restates every helper here under the same name, lane by lane.
#pragma once

#include <cuda_fp16.h>

#include "common.cuh"
#include "mma.cuh"

// log2(e): softmax runs in base 2 (exp2f is one MUFU.EX2; expf is an FMUL plus EX2).
#define TFM_LOG2E 1.4426950408889634f
#define TFM_LN2 0.6931471805599453f

static __device__ __forceinline__ float tc_neg_inf() { return __int_as_float(0xff800000); }

static __device__ __forceinline__ float tc_quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

static __device__ __forceinline__ float tc_quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Copy rows [r0, r0 + ROWS) of a row-major [L][D] fp16 matrix into smem [ROWS][D + 8] with 16-byte
// cp.async; rows >= limit are zero-filled (src-size 0), so an edge tile never feeds garbage (possibly
// NaN bit patterns) into an mma where a zero probability would multiply it.
template <int ROWS, int D, int THREADS>
static __device__ __forceinline__ void tc_load_tile(__half* smem, const __half* g, int r0, int limit,
                                                    int tid) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    constexpr int LD = D + 8;
#pragma unroll
    for (int c = tid; c < ROWS * CHUNKS; c += THREADS) {
        const int r = c / CHUNKS, ch = c % CHUNKS;
        const bool ok = r0 + r < limit;
        const __half* src = ok ? g + (size_t)(r0 + r) * D + ch * 8 : g;
        cp_async_16(smem_u32(smem + r * LD + ch * 8), src, ok);
    }
}

// ------------------------------------------------------------------------------------------------
// Grid of the forward-shaped kernels: x = tile * (B*H) + (b*H + h), so consecutive CTAs are
// different heads of the same tile index. Causal: the last query tiles see the most keys; numbering
// them first puts every head's long tiles at the front of the launch and leaves short tiles for the
// tail.
struct TcQueryTile {
    int bh;  // b*H + h: the (L, D) matrices of this head start at bh * L * D
    int b;   // batch (kv_lens[b])
    int m0;  // first query row of Q_i
};

template <int BM>
static __device__ __forceinline__ TcQueryTile tc_query_tile(int H, int ntiles, int causal) {
    const int bh_count = gridDim.x / ntiles;
    const int tile = blockIdx.x / bh_count, bhi = blockIdx.x % bh_count;
    const int mblk = causal ? ntiles - 1 - tile : tile;
    return {bhi, bhi / H, mblk * BM};
}

// Keys j < kv_len are visible: kv_lens[b] clamped to [0, Lk].
static __device__ __forceinline__ int tc_kv_len(const int* __restrict__ kv_lens, int b, int Lk) {
    return min(Lk, max(kv_lens[b], 0));
}

// The keys a query tile from m0 sees: j < kv_len (kv_lens[b] clamped to [0, Lk]) and, with causal,
// j <= the tile's last query m0 + BM - 1; key blocks K_j of BN keys past them are never loaded.
struct TcKeys {
    int kv_len;   // keys j < kv_len are visible (padding)
    int nblocks;  // key blocks K_j to visit
};

template <int BM, int BN>
static __device__ __forceinline__ TcKeys tc_query_keys(const int* __restrict__ kv_lens, int b, int Lk, int m0,
                                                       int causal) {
    const int kv_len = tc_kv_len(kv_lens, b, Lk);
    const int n_end = causal ? min(kv_len, m0 + BM) : kv_len;
    return {kv_len, n_end > 0 ? tfm_cdiv(n_end, BN) : 0};
}

// The forward kernels' (10/13, 14) CTA setup: its query tile, q/o/lse/k/v moved to its head's
// matrices, and the keys it sees.
struct TcFwdTile {
    int m0, kv_len, nblocks;
};

template <int D, int BM, int BN>
static __device__ __forceinline__ TcFwdTile tc_fwd_tile(const __half* __restrict__& q, const __half* __restrict__& k,
                                                        const __half* __restrict__& v, __half* __restrict__& o,
                                                        float* __restrict__& lse, const int* __restrict__ kv_lens,
                                                        int H, int Lq, int Lk, int ntiles, int causal) {
    const TcQueryTile qt = tc_query_tile<BM>(H, ntiles, causal);
    const size_t bh = qt.bh;
    q += bh * Lq * D;
    o += bh * Lq * D;
    lse += bh * Lq;
    k += bh * Lk * D;
    v += bh * Lk * D;
    const TcKeys keys = tc_query_keys<BM, BN>(kv_lens, qt.b, Lk, qt.m0, causal);
    return {qt.m0, keys.kv_len, keys.nblocks};
}

// The backward's per-row statistics of query row `row`: lse in base 2 (what P = exp2(S scale log2e -
// lse log2e) subtracts) and D_i. No-key rows (lse = -inf) and padding rows (row >= Lq) get +inf, so
// exp2(x - inf) = 0 exactly, and D_i = 0 past Lq.
static __device__ __forceinline__ void tc_row_stats(const float* __restrict__ lse, const float* __restrict__ Dd,
                                                    int row, int Lq, float& lse2, float& d) {
    const float l = row < Lq ? lse[row] : tc_neg_inf();
    lse2 = l == tc_neg_inf() ? __int_as_float(0x7f800000) : l * TFM_LOG2E;
    d = row < Lq ? Dd[row] : 0.f;
}

// ------------------------------------------------------------------------------------------------
// ldmatrix x4 addressing on a padded smem tile s[rows][LD] (halves). ldmatrix hands lane l the pair
// M[l/4][2(l%4)..] of each 8x8 matrix M (mma.cuh), lanes 8j..8j+7 addressing the rows of matrix j.

// A (16x16) at rows r0.., cols c0.. of a row-major [m][k] tile: lane -> row r0 + lane%16,
// col c0 + (lane/16)*8 (matrices: rows 0-7|8-15 x cols 0-7|8-15 = a0a1, a2a3, a4a5, a6a7).
template <int LD>
static __device__ __forceinline__ void tc_ldsm_a(uint32_t (&a)[4], const __half* s, int r0, int c0, int lane) {
    ldmatrix_x4(a, smem_u32(s + (r0 + lane % 16) * LD + c0 + (lane / 16) * 8));
}

// A (16x16, m x k) from a [k][m] tile (A^T stored), k from k0, m from m0: .trans, lane -> k row
// k0 + lane%8 + (lane/16)*8, m col m0 + ((lane/8)%2)*8.
template <int LD>
static __device__ __forceinline__ void tc_ldsm_a_trans(uint32_t (&a)[4], const __half* s, int k0, int m0,
                                                       int lane) {
    ldmatrix_x4_trans(a, smem_u32(s + (k0 + lane % 8 + (lane / 16) * 8) * LD + m0 + ((lane / 8) % 2) * 8));
}

// B (16 x 16: two n8 tiles) from a [n][k] tile (B^T stored: K_j's rows are the columns of B in
// S = Q_i K_j^T), n from n0, k from k0: plain ldmatrix, lane -> row n0 + lane%8 + (lane/16)*8,
// col k0 + ((lane/8)%2)*8. b[0..1] feed n8 tile n0/8, b[2..3] tile n0/8 + 1.
template <int LD>
static __device__ __forceinline__ void tc_ldsm_bt(uint32_t (&b)[4], const __half* s, int n0, int k0, int lane) {
    ldmatrix_x4(b, smem_u32(s + ((n0 + lane % 8 + (lane / 16) * 8) * LD + k0 + ((lane / 8) % 2) * 8)));
}

// B (16 x 16: two n8 tiles) from a row-major [k][n] tile (V_j in P V_j), k from k0, n from n0:
// .trans, lane -> row k0 + lane%8 + ((lane/8)%2)*8, col n0 + (lane/16)*8.
template <int LD>
static __device__ __forceinline__ void tc_ldsm_b(uint32_t (&b)[4], const __half* s, int k0, int n0, int lane) {
    ldmatrix_x4_trans(b, smem_u32(s + (k0 + lane % 8 + ((lane / 8) % 2) * 8) * LD + n0 + (lane / 16) * 8));
}

// ------------------------------------------------------------------------------------------------
// Warp products.

// acc = A[ar..ar+15][0..16KT) B[0..8NT)[0..16KT)^T: A's 16 rows from sA, B^T's 8NT rows from sB,
// both [rows][LD] with K contiguous. One A ldmatrix per k16 step, one B ldmatrix per two n8 tiles.
template <int KT, int NT, int LD>
static __device__ __forceinline__ void tc_warp_abt(float (&acc)[NT][4], const __half* sA, int ar,
                                                   const __half* sB, int lane) {
    zero_frags(acc);
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
        uint32_t a[4];
        tc_ldsm_a<LD>(a, sA, ar, kk * 16, lane);
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
            uint32_t b[4];
            tc_ldsm_bt<LD>(b, sB, np * 16, kk * 16, lane);
            mma_16816_x2(acc[2 * np], acc[2 * np + 1], a, b);
        }
    }
}

// acc += fp16(P) B over 16*KS rows of B: P (16 x 16KS) is the warp's fp32 C fragments p[2KS][4],
// repacked as A fragments (the m16n8 C layout of two adjacent n8 tiles is the m16k16 A layout), and
// B = sB[0..16KS)[0..8DT) row-major with row stride LD (.trans).
template <int KS, int DT, int LD>
static __device__ __forceinline__ void tc_warp_pv(float (&acc)[DT][4], const float (&p)[2 * KS][4],
                                                  const __half* sB, int lane) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        uint32_t pa[4];
        pack_a_from_c(pa, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < DT / 2; ++dp) {
            uint32_t b[4];
            tc_ldsm_b<LD>(b, sB, kk * 16, dp * 16, lane);
            mma_16816_x2(acc[2 * dp], acc[2 * dp + 1], pa, b);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The forward's online softmax, on one m16 tile of S (rows row0 + g, row0 + g + 8).

// S <- S * scale_log2 (base 2), -inf at keys j >= kv_len and, with causal, j > query row.
template <int NT>
static __device__ __forceinline__ void tc_scale_mask(float (&s)[NT][4], float scale_log2, bool edge, int row0,
                                                     int n0, int kv_len, int causal, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            float x = s[nt][c] * scale_log2;
            if (edge) {
                const int row = row0 + g + 8 * (c / 2);
                const int col = n0 + nt * 8 + 2 * t + (c % 2);
                if (col >= kv_len || (causal && col > row)) x = tc_neg_inf();
            }
            s[nt][c] = x;
        }
}

// m_i <- max(m_i, rowmax S); S <- P = exp2(S - m_i); acc and l_i rescale by exp2(m_old - m_new).
// m_i: the running max (base 2, scaled); l_i: this lane's partial row sum (the quad reduction waits
// until the epilogue).
template <int NT, int DT>
static __device__ __forceinline__ void tc_online_softmax(float (&s)[NT][4], float (&acc)[DT][4], float (&m_i)[2],
                                                         float (&l_i)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = m_i[r];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
        mx = tc_quad_max(mx);
        // A row with every key so far masked keeps max -inf; subtracting 0 instead keeps
        // exp2(-inf - -inf) = NaN out (p = 0, alpha = 0 there, as the reference's l = 0).
        const float m_use = mx == tc_neg_inf() ? 0.f : mx;
        const float alpha = exp2f(m_i[r] - m_use);
        m_i[r] = mx;
        float rs = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const float p0 = exp2f(s[nt][2 * r] - m_use);
            const float p1 = exp2f(s[nt][2 * r + 1] - m_use);
            s[nt][2 * r] = p0;
            s[nt][2 * r + 1] = p1;
            rs += p0 + p1;
        }
        // l_i sums the fp32 P (as numpy_ref).
        l_i[r] = l_i[r] * alpha + rs;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            acc[dt][2 * r] *= alpha;
            acc[dt][2 * r + 1] *= alpha;
        }
    }
}

// Row g + 8r of a warp's m16 x D fp32 tile (acc[dt][2r..2r+1] at columns 8dt + 2t..), times mul, as
// fp16 pairs to dst_row (that row's start in global memory).
template <int D>
static __device__ __forceinline__ void tc_store_row(__half* dst_row, const float (&acc)[D / 8][4], int r,
                                                    float mul, int t) {
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<uint32_t*>(dst_row + dt * 8 + 2 * t) = pack_half2(acc[dt][2 * r] * mul, acc[dt][2 * r + 1] * mul);
}

// Epilogue: o = acc / l_i, lse = (m_i + log2 l_i) ln 2 for rows row0 + g, row0 + g + 8 below Lq;
// l_i = 0 (a row that saw no key) -> o = 0, lse = -inf. o and lse point at this head's rows.
template <int D>
static __device__ __forceinline__ void tc_store_o_lse(__half* o, float* lse,
                                                      const float (&acc)[D / 8][4], const float (&m_i)[2],
                                                      const float (&l_i)[2], int row0, int Lq, int g, int t) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = tc_quad_sum(l_i[r]);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int row = row0 + g + 8 * r;
        if (row >= Lq) continue;
        tc_store_row<D>(o + (size_t)row * D, acc, r, inv, t);
        if (t == 0) lse[row] = l > 0.f ? (m_i[r] + __log2f(l)) * TFM_LN2 : tc_neg_inf();
    }
}

// A tile that sees no key at all (nblocks == 0): o = 0, lse = -inf on rows row0 + g, row0 + g + 8.
template <int D>
static __device__ __forceinline__ void tc_store_empty_rows(__half* o, float* lse,
                                                           int row0, int Lq, int g, int t) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + g + 8 * r;
        if (row >= Lq) continue;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            *reinterpret_cast<uint32_t*>(o + (size_t)row * D + dt * 8 + 2 * t) = 0u;
        if (t == 0) lse[row] = tc_neg_inf();
    }
}
