// attention_tc.cu: fp16 attention on tensor cores (mma.sync m16n8k16 + ldmatrix + cp.async),
// FlashAttention-2's structure. The algorithm is numpy_ref/attention.py's blocked
// flash_attention_forward / flash_attention_backward; comments reuse its block names (Q_i, K_j, V_j,
// m_i, l_i, acc, D_i).
//
// Kernels (variants in tfm_kernels/attention_tc.py):
//   attn_fwd_tc<D, BN, MW, QREG>
//                               forward 10 (and 13). CTA = one query tile of BM = 64*MW rows, 4
//                               warps, each warp owns MW m16 tiles (16*MW rows). Q_i lives in
//                               registers as mma A fragments (QREG) or is re-read from smem per k16
//                               step (13 at D = 96/128, to afford MW = 2 there); K_j/V_j (BN keys)
//                               are double-buffered in smem by cp.async.
//                               S = Q_i K_j^T and acc += P V_j accumulate in fp32 registers; the
//                               online softmax runs on the S fragments (row max/sum over the 4
//                               lanes of a quad: two shuffles); P goes to fp16 in registers and is
//                               the A operand of the PV mma directly (the m16n8 C layout of two
//                               adjacent n-tiles is exactly the m16k16 A layout).
//   attn_bwd_dot_tc<D>          D_i = rowsum(dO_i * O_i) in fp32 from fp16 inputs; zeroes the fp32
//                               dQ accumulator in the same pass.
//   attn_bwd_tc<D, BM, ATOMIC, NW>
//                               backward 11 (ATOMIC=true) / 12 (false). CTA = one key block of
//                               16*NW keys, NW warps of 16 keys; K_j and V_j stay in smem, dK_j
//                               and dV_j in fp32 registers; loop over query blocks Q_i (cp.async
//                               double buffer):
//                               S^T = K_j Q_i^T, P^T = exp(S^T - lse), dV += P^T dO_i,
//                               dP^T = V_j dO_i^T, dS^T = P^T (dP^T - D_i), dK += dS^T Q_i and, for
//                               11, dQ_i += dS K_j through fp32 atomics (dS staged in smem).
//   attn_bwd_dq_tc<D, BN>       backward 12's deterministic dQ: CTA per query tile (like the
//                               forward), loop over key blocks recomputing P and dS, dQ in registers.
//   attn_bwd_dq_convert<D>      dq = fp16(scale * dQ accumulator) for 11.
//
// Layout: q, o, do (B,H,Lq,D), k, v (B,H,Lk,D) contiguous fp16; lse, D_i (B,H,Lq) fp32. Masking
// follows numpy_ref: causal hides key j > query i (top-left), kv_lens[b] hides keys j >= kv_lens[b];
// masks are evaluated only on tiles that straddle a boundary. A row that sees no key: o = 0,
// lse = -inf, zero gradients.
//
// Shared memory rows are padded by 8 halves (16 bytes): a row of D halves is a multiple of 64 bytes,
// so 8 unpadded rows read by one ldmatrix 8x8 would hit the same 16-byte bank group 8 (D>=64) or 4
// (D=32) ways; with D+8 the 8 row starts land in 8 distinct 16-byte slots mod 128 for every D here.
#include "common.cuh"
#include "mma.cuh"

#include <cuda_fp16.h>

// log2(e): softmax runs in base 2 (exp2f is one MUFU.EX2; expf is an FMUL plus EX2).
#define TFM_LOG2E 1.4426950408889634f
#define TFM_LN2 0.6931471805599453f

// ------------------------------------------------------------------------------------------------
// Shared helpers for this file.

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

static __device__ __forceinline__ float tc_neg_inf() { return __int_as_float(0xff800000); }

static __device__ __forceinline__ float tc_quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

static __device__ __forceinline__ float tc_quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ------------------------------------------------------------------------------------------------
// Forward (variant 10).
//
// Fragment ownership (lane = 4*g + t, g = lane/4 in 0..7, t = lane%4 in 0..3), per m16 tile:
//   S[mi][nt][0..1]: row g,   keys n0 + 8*nt + 2t + {0,1};  S[mi][nt][2..3]: row g+8, same keys.
//   acc[mi][dt][..]: the same with head-dim columns 8*dt + 2t + {0,1}.
// So each row's values sit in the 4 lanes of one quad, and its max/sum needs shuffles by 1 and 2.
template <int D, int BN, int MW, bool QREG>
__global__ void __launch_bounds__(128, 1)
attn_fwd_tc(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
            __half* __restrict__ o, float* __restrict__ lse, const int* __restrict__ kv_lens,
            int H, int Lq, int Lk, int ntiles, float scale_log2, int causal) {
    static_assert(D % 16 == 0 && D <= 256, "head dim: multiple of 16");
    static_assert(BN % 16 == 0, "BN: multiple of 16");
    constexpr int THREADS = 128, BM = 64 * MW, LD = D + 8;
    constexpr int KT = D / 16;   // k-steps of S = Q K^T
    constexpr int NT = BN / 8;   // n8 tiles of S
    constexpr int DT = D / 8;    // n8 tiles of acc
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __half* sQ = reinterpret_cast<__half*>(smem_raw);  // [BM][LD]
    __half* sK = sQ + BM * LD;                          // [2][BN][LD]
    __half* sV = sK + 2 * BN * LD;                      // [2][BN][LD]

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, t = lane % 4;
    // Grid: x = tile * (B*H) + (b*H + h), so consecutive CTAs are different heads of the same
    // tile index. Causal: the last query tiles see the most keys; numbering them first puts every
    // head's long tiles at the front of the launch and leaves short tiles for the tail.
    const int bh_count = gridDim.x / ntiles;
    const int tile = blockIdx.x / bh_count, bhi = blockIdx.x % bh_count;
    const int mblk = causal ? ntiles - 1 - tile : tile;
    const int b = bhi / H;
    const int m0 = mblk * BM;
    const size_t bh = bhi;
    q += bh * Lq * D;
    o += bh * Lq * D;
    lse += bh * Lq;
    k += bh * Lk * D;
    v += bh * Lk * D;

    const int kv_len = min(Lk, max(kv_lens[b], 0));
    // Keys this tile can see: j < kv_len, and with causal j <= last query of the tile.
    const int n_end = causal ? min(kv_len, m0 + BM) : kv_len;
    const int nblocks = n_end > 0 ? tfm_cdiv(n_end, BN) : 0;

    const int wrow = warp * 16 * MW;  // this warp's first row within the tile

    if (nblocks == 0) {  // every row sees no key: o = 0, lse = -inf
#pragma unroll
        for (int mi = 0; mi < MW; ++mi)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = m0 + wrow + mi * 16 + g + 8 * r;
                if (row >= Lq) continue;
#pragma unroll
                for (int dt = 0; dt < DT; ++dt)
                    *reinterpret_cast<uint32_t*>(o + (size_t)row * D + dt * 8 + 2 * t) = 0u;
                if (t == 0) lse[row] = tc_neg_inf();
            }
        return;
    }

    // Prologue: Q_i and the first K_j, V_j in one cp.async group.
    tc_load_tile<BM, D, THREADS>(sQ, q, m0, Lq, tid);
    tc_load_tile<BN, D, THREADS>(sK, k, 0, kv_len, tid);
    tc_load_tile<BN, D, THREADS>(sV, v, 0, kv_len, tid);
    cp_async_commit();

    // QREG: Q_i as mma A fragments, loaded once (MW * D/4 registers); otherwise re-read from smem at
    // every k16 step (one ldmatrix x4 per m16 tile per step), which frees those registers for a
    // second m16 tile at D = 96/128 (FA2's choice there).
    uint32_t qf[QREG ? MW : 1][QREG ? KT : 1][4];
    float acc[MW][DT][4];
    float m_i[MW][2], l_i[MW][2];  // running max (base-2, scaled) and this lane's partial row sum
#pragma unroll
    for (int mi = 0; mi < MW; ++mi) {
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mi][dt][c] = 0.f;
        m_i[mi][0] = m_i[mi][1] = tc_neg_inf();
        l_i[mi][0] = l_i[mi][1] = 0.f;
    }

    for (int jb = 0; jb < nblocks; ++jb) {
        const int buf = jb & 1;
        const int n0 = jb * BN;
        cp_async_wait<0>();
        __syncthreads();  // K_j/V_j visible to all; everyone is done with the buffer reloaded next
        // ldmatrix x4 address for A (16x16 at rows r, cols c): lane -> row r + lane%16,
        // col c + (lane/16)*8 (matrices: rows 0-7|8-15 x cols 0-7|8-15 = a0a1, a2a3, a4a5, a6a7).
        auto q_addr = [&](int mi, int kk) {
            return smem_u32(sQ + (wrow + mi * 16 + lane % 16) * LD + kk * 16 + (lane / 16) * 8);
        };
        if constexpr (QREG) {
            if (jb == 0) {
#pragma unroll
                for (int mi = 0; mi < MW; ++mi)
#pragma unroll
                    for (int kk = 0; kk < KT; ++kk) ldmatrix_x4(qf[mi][kk], q_addr(mi, kk));
            }
        }
        if (jb + 1 < nblocks) {  // prefetch K_{j+1}, V_{j+1} into the other buffer
            tc_load_tile<BN, D, THREADS>(sK + (buf ^ 1) * BN * LD, k, n0 + BN, kv_len, tid);
            tc_load_tile<BN, D, THREADS>(sV + (buf ^ 1) * BN * LD, v, n0 + BN, kv_len, tid);
        }
        cp_async_commit();
        const __half* Kj = sK + buf * BN * LD;
        const __half* Vj = sV + buf * BN * LD;

        // S = Q_i K_j^T. B[k][n] = K_j[n][k]: K_j's rows are B's columns, so plain ldmatrix; one x4
        // covers two n8 tiles (keys n..n+7 and n+8..n+15) at one k16 step: lane -> key
        // 16*np + lane%8 + (lane/16)*8, col 16*kk + ((lane/8)%2)*8.
        float s[MW][NT][4];
#pragma unroll
        for (int mi = 0; mi < MW; ++mi)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int c = 0; c < 4; ++c) s[mi][nt][c] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            uint32_t qa[MW][4];
#pragma unroll
            for (int mi = 0; mi < MW; ++mi) {
                if constexpr (QREG) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) qa[mi][c] = qf[mi][kk][c];
                } else {
                    ldmatrix_x4(qa[mi], q_addr(mi, kk));
                }
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                uint32_t b[4];
                ldmatrix_x4(b, smem_u32(Kj + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                                        ((lane / 8) % 2) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                for (int mi = 0; mi < MW; ++mi) {
                    mma_16816(s[mi][2 * np], qa[mi], b0);
                    mma_16816(s[mi][2 * np + 1], qa[mi], b1);
                }
            }
        }

        // Scale to base 2 and mask. Only tiles crossing kv_len or the diagonal pay for the test.
        const bool edge = (n0 + BN > kv_len) || (causal && n0 + BN - 1 > m0 + wrow);
#pragma unroll
        for (int mi = 0; mi < MW; ++mi)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    float x = s[mi][nt][c] * scale_log2;
                    if (edge) {
                        const int row = m0 + wrow + mi * 16 + g + 8 * (c / 2);
                        const int col = n0 + nt * 8 + 2 * t + (c % 2);
                        if (col >= kv_len || (causal && col > row)) x = tc_neg_inf();
                    }
                    s[mi][nt][c] = x;
                }

        // Online softmax: m_i <- max(m_i, rowmax S); acc and l_i rescale by exp2(m_old - m_new).
#pragma unroll
        for (int mi = 0; mi < MW; ++mi)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = m_i[mi][r];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mi][nt][2 * r], s[mi][nt][2 * r + 1]));
                mx = tc_quad_max(mx);
                // A row with every key so far masked keeps max -inf; subtracting 0 instead keeps
                // exp2(-inf - -inf) = NaN out (p = 0, alpha = 0 there, as the reference's l = 0).
                const float m_use = mx == tc_neg_inf() ? 0.f : mx;
                const float alpha = exp2f(m_i[mi][r] - m_use);
                m_i[mi][r] = mx;
                float rs = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const float p0 = exp2f(s[mi][nt][2 * r] - m_use);
                    const float p1 = exp2f(s[mi][nt][2 * r + 1] - m_use);
                    s[mi][nt][2 * r] = p0;
                    s[mi][nt][2 * r + 1] = p1;
                    rs += p0 + p1;
                }
                // l_i sums the fp32 P (as numpy_ref); the quad reduction waits until the end.
                l_i[mi][r] = l_i[mi][r] * alpha + rs;
#pragma unroll
                for (int dt = 0; dt < DT; ++dt) {
                    acc[mi][dt][2 * r] *= alpha;
                    acc[mi][dt][2 * r + 1] *= alpha;
                }
            }

        // acc += P V_j. P (fp16) from the S fragments: for keys 16kk..16kk+15 the A fragment is
        // {S[2kk][0,1], S[2kk][2,3], S[2kk+1][0,1], S[2kk+1][2,3]}. B[k][n] = V_j[k][n] is row-major
        // in smem, so ldmatrix .trans: lane -> key 16kk + lane%8 + ((lane/8)%2)*8,
        // col 16*dp + (lane/16)*8; b[0..1] feed d-tile 2dp, b[2..3] d-tile 2dp+1.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            uint32_t pa[MW][4];
#pragma unroll
            for (int mi = 0; mi < MW; ++mi) {
                pa[mi][0] = pack_half2(s[mi][2 * kk][0], s[mi][2 * kk][1]);
                pa[mi][1] = pack_half2(s[mi][2 * kk][2], s[mi][2 * kk][3]);
                pa[mi][2] = pack_half2(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
                pa[mi][3] = pack_half2(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, smem_u32(Vj + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD +
                                              dp * 16 + (lane / 16) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                for (int mi = 0; mi < MW; ++mi) {
                    mma_16816(acc[mi][2 * dp], pa[mi], b0);
                    mma_16816(acc[mi][2 * dp + 1], pa[mi], b1);
                }
            }
        }
    }
    cp_async_wait<0>();  // the last (empty) group: nothing may be in flight at exit

    // Epilogue: o = acc / l_i, lse = (m_i + log2 l_i) ln 2; l_i = 0 -> o = 0, lse = -inf.
#pragma unroll
    for (int mi = 0; mi < MW; ++mi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float l = tc_quad_sum(l_i[mi][r]);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int row = m0 + wrow + mi * 16 + g + 8 * r;
            if (row >= Lq) continue;
            __half* orow = o + (size_t)row * D;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt)
                *reinterpret_cast<uint32_t*>(orow + dt * 8 + 2 * t) =
                    pack_half2(acc[mi][dt][2 * r] * inv, acc[mi][dt][2 * r + 1] * inv);
            if (t == 0) lse[row] = l > 0.f ? (m_i[mi][r] + __log2f(l)) * TFM_LN2 : tc_neg_inf();
        }
}

TFM_EXPORT(attn_fwd_tc<32, 64, 2, true>)
TFM_EXPORT(attn_fwd_tc<64, 64, 2, true>)
TFM_EXPORT(attn_fwd_tc<96, 64, 1, true>)
TFM_EXPORT(attn_fwd_tc<128, 64, 1, true>)
TFM_EXPORT(attn_fwd_tc<96, 32, 2, false>)
TFM_EXPORT(attn_fwd_tc<128, 32, 2, false>)

// ------------------------------------------------------------------------------------------------
// Backward preprocessing: D_i = rowsum(dO_i * O_i) (fp32 sums of fp16 products), one warp per row;
// with zero_dq it also zeroes the fp32 dQ accumulator rows that backward 11 adds into.
template <int D>
__global__ void __launch_bounds__(256)
attn_bwd_dot_tc(const __half* __restrict__ dout, const __half* __restrict__ out, float* __restrict__ Dd,
                float* __restrict__ dq_acc, int rows, int zero_dq) {
    const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const __half2* a = reinterpret_cast<const __half2*>(dout + (size_t)row * D);
    const __half2* b = reinterpret_cast<const __half2*>(out + (size_t)row * D);
    float s = 0.f;
#pragma unroll
    for (int c = lane; c < D / 2; c += 32) {
        const float2 x = __half22float2(a[c]), y = __half22float2(b[c]);
        s = fmaf(x.x, y.x, fmaf(x.y, y.y, s));
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) Dd[row] = s;
    if (zero_dq) {
        float2* z = reinterpret_cast<float2*>(dq_acc + (size_t)row * D);
#pragma unroll
        for (int c = lane; c < D / 2; c += 32) z[c] = make_float2(0.f, 0.f);
    }
}

TFM_EXPORT(attn_bwd_dot_tc<32>)
TFM_EXPORT(attn_bwd_dot_tc<64>)
TFM_EXPORT(attn_bwd_dot_tc<96>)
TFM_EXPORT(attn_bwd_dot_tc<128>)

// ------------------------------------------------------------------------------------------------
// Backward 11 / 12: CTA per key block K_j, V_j of BN = 16*NW keys; warp w owns keys 16w..16w+15 of
// it, and their dK_j, dV_j rows (fp32 registers). 11 uses NW = 8 (128 keys, FA2's shape: half the
// dQ atomics and half the Q_i/dO_i loads per key of NW = 4); 12 keeps NW = 4 (measured on an H200). Everything is computed transposed (keys are the mma's M),
// so the score fragments are S^T: sT[nt][0..1] = key g, queries 8nt + 2t + {0,1}; [2..3] = key g+8.
// Per query block Q_i (BM rows; Q_i, dO_i double-buffered by cp.async, lse_i and D_i through
// registers into smem):
//   S^T  = K_j Q_i^T                 A = K_j (plain ldmatrix), B = Q_i rows (plain)
//   P^T  = exp2(S^T * scale*log2e - lse_i*log2e), masked to 0
//   dV  += P^T dO_i                  A = fp16(P^T) from registers, B = dO_i (.trans)
//   dP^T = V_j dO_i^T                A = V_j (plain), B = dO_i rows (plain)
//   dS^T = P^T (dP^T - D_i)
//   dK  += dS^T Q_i                  A = fp16(dS^T), B = Q_i (.trans)
//   ATOMIC: dQ_i += dS K_j           dS^T staged in smem as fp16 [key][query]; A = dS (.trans of the
//                                    staged tile), B = K_j (.trans); fp32 atomics into dq_acc.
// dK is scaled once at the end; dQ's scale is applied when dq_acc is converted.
template <int D, int BM, bool ATOMIC, int NW>
__global__ void __launch_bounds__(NW * 32, 1)
attn_bwd_tc(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
            const __half* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ Dd,
            __half* __restrict__ dk, __half* __restrict__ dv, float* __restrict__ dq_acc,
            const int* __restrict__ kv_lens, int H, int Lq, int Lk, int ntiles, float scale,
            int causal) {
    static_assert(D % 16 == 0 && BM % 16 == 0, "tile shapes: multiples of 16");
    constexpr int THREADS = NW * 32, BN = NW * 16, LD = D + 8, LDS = BM + 8;
    constexpr int KT = D / 16, DT = D / 8, MT = BM / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __half* sK = reinterpret_cast<__half*>(smem_raw);  // [BN][LD]
    __half* sV = sK + BN * LD;                          // [BN][LD]
    __half* sQ = sV + BN * LD;                          // [2][BM][LD]
    __half* sdO = sQ + 2 * BM * LD;                     // [2][BM][LD]
    __half* sdS = sdO + 2 * BM * LD;                    // [BN][LDS] (ATOMIC only)
    float* sL = reinterpret_cast<float*>(sdS + (ATOMIC ? BN * LDS : 0));  // [2][BM] lse * log2e
    float* sD = sL + 2 * BM;                                               // [2][BM] D_i

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, t = lane % 4;
    // Grid: x = key block * (B*H) + (b*H + h); with causal the first key blocks meet the most
    // query blocks, and they are launched first.
    const int bh_count = gridDim.x / ntiles;
    const int jblk = blockIdx.x / bh_count, bhi = blockIdx.x % bh_count;
    const int b = bhi / H;
    const int n0 = jblk * BN, kw = warp * 16;
    const size_t bh = bhi;
    q += bh * Lq * D;
    dout += bh * Lq * D;
    lse += bh * Lq;
    Dd += bh * Lq;
    k += bh * Lk * D;
    v += bh * Lk * D;
    dk += bh * Lk * D;
    dv += bh * Lk * D;
    if (ATOMIC) dq_acc += bh * Lq * D;
    const float scale_log2 = scale * TFM_LOG2E;

    const int kv_len = min(Lk, max(kv_lens[b], 0));
    // With causal, queries i < n0 see none of these keys: start at the query block holding n0.
    const int i_start = causal ? (n0 / BM) * BM : 0;
    const int nblocks = (n0 < kv_len && i_start < Lq) ? tfm_cdiv(Lq - i_start, BM) : 0;

    float dK[DT][4], dV[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int c = 0; c < 4; ++c) dK[dt][c] = dV[dt][c] = 0.f;

    // Registers that carry the next block's lse_i, D_i into smem (thread tid < BM owns row tid).
    float lse_next = 0.f, d_next = 0.f;
    auto fetch_rowstats = [&](int m0) {
        const int row = m0 + tid;
        if (tid < BM) {
            const float l = row < Lq ? lse[row] : tc_neg_inf();
            // No-key rows (lse = -inf) and padding rows get +inf: exp2(x - inf) = 0 exactly.
            lse_next = l == tc_neg_inf() ? __int_as_float(0x7f800000) : l * TFM_LOG2E;
            d_next = row < Lq ? Dd[row] : 0.f;
        }
    };

    if (nblocks > 0) {
        tc_load_tile<BN, D, THREADS>(sK, k, n0, kv_len, tid);
        tc_load_tile<BN, D, THREADS>(sV, v, n0, kv_len, tid);
        tc_load_tile<BM, D, THREADS>(sQ, q, i_start, Lq, tid);
        tc_load_tile<BM, D, THREADS>(sdO, dout, i_start, Lq, tid);
        cp_async_commit();
        fetch_rowstats(i_start);
    }

    for (int ib = 0; ib < nblocks; ++ib) {
        const int buf = ib & 1;
        const int m0 = i_start + ib * BM;
        if (tid < BM) {
            sL[buf * BM + tid] = lse_next;
            sD[buf * BM + tid] = d_next;
        }
        cp_async_wait<0>();
        __syncthreads();  // Q_i, dO_i, lse_i, D_i visible; the other buffers (and sdS) are free
        if (ib + 1 < nblocks) {
            tc_load_tile<BM, D, THREADS>(sQ + (buf ^ 1) * BM * LD, q, m0 + BM, Lq, tid);
            tc_load_tile<BM, D, THREADS>(sdO + (buf ^ 1) * BM * LD, dout, m0 + BM, Lq, tid);
            fetch_rowstats(m0 + BM);
        }
        cp_async_commit();
        const __half* Qi = sQ + buf * BM * LD;
        const __half* dOi = sdO + buf * BM * LD;
        const float* Li = sL + buf * BM;
        const float* Di = sD + buf * BM;

        // S^T = K_j Q_i^T (this warp's 16 keys x BM queries).
        float sT[MT][4];
#pragma unroll
        for (int nt = 0; nt < MT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) sT[nt][c] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            uint32_t a[4];
            ldmatrix_x4(a, smem_u32(sK + (kw + lane % 16) * LD + kk * 16 + (lane / 16) * 8));
#pragma unroll
            for (int np = 0; np < MT / 2; ++np) {
                uint32_t b[4];
                ldmatrix_x4(b, smem_u32(Qi + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                                        ((lane / 8) % 2) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                mma_16816(sT[2 * np], a, b0);
                mma_16816(sT[2 * np + 1], a, b1);
            }
        }

        // P^T = exp2(S^T scale log2e - lse log2e); masks only on tiles crossing kv_len or the diagonal.
        const bool edge = (n0 + BN > kv_len) || (causal && n0 + kw + 15 > m0);
#pragma unroll
        for (int nt = 0; nt < MT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int qcol = nt * 8 + 2 * t + (c % 2);
                float p = exp2f(fmaf(sT[nt][c], scale_log2, -Li[qcol]));
                if (edge) {
                    const int key = n0 + kw + g + 8 * (c / 2);
                    if (key >= kv_len || (causal && key > m0 + qcol)) p = 0.f;
                }
                sT[nt][c] = p;
            }

        // dV_j += P^T dO_i.
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
            const uint32_t pa[4] = {pack_half2(sT[2 * kk][0], sT[2 * kk][1]),
                                    pack_half2(sT[2 * kk][2], sT[2 * kk][3]),
                                    pack_half2(sT[2 * kk + 1][0], sT[2 * kk + 1][1]),
                                    pack_half2(sT[2 * kk + 1][2], sT[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, smem_u32(dOi + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD +
                                              dp * 16 + (lane / 16) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                mma_16816(dV[2 * dp], pa, b0);
                mma_16816(dV[2 * dp + 1], pa, b1);
            }
        }

        // dP^T = V_j dO_i^T, then dS^T = P^T (dP^T - D_i) in place.
        float dsT[MT][4];
#pragma unroll
        for (int nt = 0; nt < MT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) dsT[nt][c] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk) {
            uint32_t a[4];
            ldmatrix_x4(a, smem_u32(sV + (kw + lane % 16) * LD + kk * 16 + (lane / 16) * 8));
#pragma unroll
            for (int np = 0; np < MT / 2; ++np) {
                uint32_t b[4];
                ldmatrix_x4(b, smem_u32(dOi + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                                        ((lane / 8) % 2) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                mma_16816(dsT[2 * np], a, b0);
                mma_16816(dsT[2 * np + 1], a, b1);
            }
        }
#pragma unroll
        for (int nt = 0; nt < MT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) dsT[nt][c] = sT[nt][c] * (dsT[nt][c] - Di[nt * 8 + 2 * t + (c % 2)]);

        // dK_j += dS^T Q_i.
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk) {
            const uint32_t da[4] = {pack_half2(dsT[2 * kk][0], dsT[2 * kk][1]),
                                    pack_half2(dsT[2 * kk][2], dsT[2 * kk][3]),
                                    pack_half2(dsT[2 * kk + 1][0], dsT[2 * kk + 1][1]),
                                    pack_half2(dsT[2 * kk + 1][2], dsT[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, smem_u32(Qi + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD +
                                              dp * 16 + (lane / 16) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                mma_16816(dK[2 * dp], da, b0);
                mma_16816(dK[2 * dp + 1], da, b1);
            }
        }

        if constexpr (ATOMIC) {
            // Stage dS^T as fp16 [key][query]; the next loop's top __syncthreads protects it from
            // being overwritten while another warp still reads it.
#pragma unroll
            for (int nt = 0; nt < MT; ++nt)
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    *reinterpret_cast<uint32_t*>(sdS + (kw + g + 8 * r) * LDS + nt * 8 + 2 * t) =
                        pack_half2(dsT[nt][2 * r], dsT[nt][2 * r + 1]);
            __syncthreads();
            // dQ_i += dS K_j over the BN keys: (BM/16) x (D/16) output tiles of 16x16 dealt to the
            // NW warps round-robin. A[query][key] = sdS[key][query] (.trans): lane -> key
            // 16kk + lane%8 + (lane/16)*8, query 16mt + ((lane/8)%2)*8. B = K_j[key][d] (.trans).
            for (int tile = warp; tile < (BM / 16) * (D / 16); tile += NW) {
                const int mt = tile / (D / 16), dp = tile % (D / 16);
                float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
                for (int kk = 0; kk < BN / 16; ++kk) {
                    uint32_t a[4], b[4];
                    ldmatrix_x4_trans(a, smem_u32(sdS + (kk * 16 + lane % 8 + (lane / 16) * 8) * LDS +
                                                  mt * 16 + ((lane / 8) % 2) * 8));
                    ldmatrix_x4_trans(b, smem_u32(sK + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD +
                                                  dp * 16 + (lane / 16) * 8));
                    const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                    mma_16816(acc[0], a, b0);
                    mma_16816(acc[1], a, b1);
                }
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int row = m0 + mt * 16 + g + 8 * r;
                    if (row >= Lq) continue;
                    float* dst = dq_acc + (size_t)row * D + dp * 16 + 2 * t;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        atomicAdd(dst + h * 8, acc[h][2 * r]);
                        atomicAdd(dst + h * 8 + 1, acc[h][2 * r + 1]);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

    // Epilogue: dK_j = scale * dK_j, dV_j; keys >= kv_len came out 0 (their P was 0) and are written.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = n0 + kw + g + 8 * r;
        if (key >= Lk) continue;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
            *reinterpret_cast<uint32_t*>(dk + (size_t)key * D + dt * 8 + 2 * t) =
                pack_half2(dK[dt][2 * r] * scale, dK[dt][2 * r + 1] * scale);
            *reinterpret_cast<uint32_t*>(dv + (size_t)key * D + dt * 8 + 2 * t) =
                pack_half2(dV[dt][2 * r], dV[dt][2 * r + 1]);
        }
    }
}

TFM_EXPORT(attn_bwd_tc<32, 64, true, 8>)
TFM_EXPORT(attn_bwd_tc<64, 64, true, 8>)
TFM_EXPORT(attn_bwd_tc<96, 32, true, 8>)
TFM_EXPORT(attn_bwd_tc<128, 32, true, 8>)
TFM_EXPORT(attn_bwd_tc<32, 64, false, 4>)
TFM_EXPORT(attn_bwd_tc<64, 64, false, 4>)
TFM_EXPORT(attn_bwd_tc<96, 32, false, 4>)
TFM_EXPORT(attn_bwd_tc<128, 32, false, 4>)

// dq = fp16(scale * dq_acc), 4 elements per thread (D % 16 == 0, so the total is a multiple of 4).
__global__ void __launch_bounds__(256)
attn_bwd_dq_convert(const float* __restrict__ dq_acc, __half* __restrict__ dq, int64_t n4, float scale) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        const float4 x = reinterpret_cast<const float4*>(dq_acc)[i];
        uint2 y;
        y.x = pack_half2(x.x * scale, x.y * scale);
        y.y = pack_half2(x.z * scale, x.w * scale);
        reinterpret_cast<uint2*>(dq)[i] = y;
    }
}

TFM_EXPORT(attn_bwd_dq_convert)

// ------------------------------------------------------------------------------------------------
// Backward 12's dQ, without atomics: CTA per query tile of 64 rows (warp = 16 rows), like the
// forward; Q_i and dO_i as A fragments in registers, K_j / V_j double-buffered, dQ_i in fp32
// registers. Per key block: S = Q_i K_j^T, P = exp2(S scale log2e - lse log2e) (masked 0),
// dP = dO_i V_j^T (B = V_j rows, plain ldmatrix), dS = P (dP - D_i), dQ_i += dS K_j (B = K_j .trans).
template <int D, int BN>
__global__ void __launch_bounds__(128, 1)
attn_bwd_dq_tc(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
               const __half* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ Dd,
               __half* __restrict__ dq, const int* __restrict__ kv_lens, int H, int Lq,
               int Lk, int ntiles, float scale, int causal) {
    constexpr int THREADS = 128, BM = 64, LD = D + 8;
    constexpr int KT = D / 16, NT = BN / 8, DT = D / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __half* sQ = reinterpret_cast<__half*>(smem_raw);  // [BM][LD]
    __half* sdO = sQ + BM * LD;                         // [BM][LD]
    __half* sK = sdO + BM * LD;                         // [2][BN][LD]
    __half* sV = sK + 2 * BN * LD;                      // [2][BN][LD]

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, t = lane % 4;
    const int bh_count = gridDim.x / ntiles;  // grid as in the forward
    const int tile = blockIdx.x / bh_count, bhi = blockIdx.x % bh_count;
    const int mblk = causal ? ntiles - 1 - tile : tile;
    const int b = bhi / H;
    const int m0 = mblk * BM, wrow = warp * 16;
    const size_t bh = bhi;
    q += bh * Lq * D;
    dout += bh * Lq * D;
    dq += bh * Lq * D;
    lse += bh * Lq;
    Dd += bh * Lq;
    k += bh * Lk * D;
    v += bh * Lk * D;
    const float scale_log2 = scale * TFM_LOG2E;

    const int kv_len = min(Lk, max(kv_lens[b], 0));
    const int n_end = causal ? min(kv_len, m0 + BM) : kv_len;
    const int nblocks = n_end > 0 ? tfm_cdiv(n_end, BN) : 0;

    // This lane's two rows: lse in base 2 (+inf for no-key and padding rows: P = 0) and D_i.
    float lrow[2], drow[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = m0 + wrow + g + 8 * r;
        const float l = row < Lq ? lse[row] : tc_neg_inf();
        lrow[r] = l == tc_neg_inf() ? __int_as_float(0x7f800000) : l * TFM_LOG2E;
        drow[r] = row < Lq ? Dd[row] : 0.f;
    }

    float acc[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[dt][c] = 0.f;

    if (nblocks > 0) {
        tc_load_tile<BM, D, THREADS>(sQ, q, m0, Lq, tid);
        tc_load_tile<BM, D, THREADS>(sdO, dout, m0, Lq, tid);
        tc_load_tile<BN, D, THREADS>(sK, k, 0, kv_len, tid);
        tc_load_tile<BN, D, THREADS>(sV, v, 0, kv_len, tid);
        cp_async_commit();
    }
    uint32_t qf[KT][4], dof[KT][4];
    for (int jb = 0; jb < nblocks; ++jb) {
        const int buf = jb & 1, n0 = jb * BN;
        cp_async_wait<0>();
        __syncthreads();
        if (jb == 0) {
#pragma unroll
            for (int kk = 0; kk < KT; ++kk) {
                ldmatrix_x4(qf[kk], smem_u32(sQ + (wrow + lane % 16) * LD + kk * 16 + (lane / 16) * 8));
                ldmatrix_x4(dof[kk], smem_u32(sdO + (wrow + lane % 16) * LD + kk * 16 + (lane / 16) * 8));
            }
        }
        if (jb + 1 < nblocks) {
            tc_load_tile<BN, D, THREADS>(sK + (buf ^ 1) * BN * LD, k, n0 + BN, kv_len, tid);
            tc_load_tile<BN, D, THREADS>(sV + (buf ^ 1) * BN * LD, v, n0 + BN, kv_len, tid);
        }
        cp_async_commit();
        const __half* Kj = sK + buf * BN * LD;
        const __half* Vj = sV + buf * BN * LD;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[nt][c] = dp[nt][c] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KT; ++kk)
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                uint32_t b[4];
                const int off = (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8;
                ldmatrix_x4(b, smem_u32(Kj + off));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                mma_16816(s[2 * np], qf[kk], b0);
                mma_16816(s[2 * np + 1], qf[kk], b1);
                ldmatrix_x4(b, smem_u32(Vj + off));
                const uint32_t c0[2] = {b[0], b[1]}, c1[2] = {b[2], b[3]};
                mma_16816(dp[2 * np], dof[kk], c0);
                mma_16816(dp[2 * np + 1], dof[kk], c1);
            }
        const bool edge = (n0 + BN > kv_len) || (causal && n0 + BN - 1 > m0 + wrow);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int r = c / 2;
                float p = exp2f(fmaf(s[nt][c], scale_log2, -lrow[r]));
                if (edge) {
                    const int row = m0 + wrow + g + 8 * r;
                    const int col = n0 + nt * 8 + 2 * t + (c % 2);
                    if (col >= kv_len || (causal && col > row)) p = 0.f;
                }
                s[nt][c] = p * (dp[nt][c] - drow[r]);  // dS
            }
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            const uint32_t da[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                    pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dpi = 0; dpi < D / 16; ++dpi) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, smem_u32(Kj + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * LD +
                                              dpi * 16 + (lane / 16) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
                mma_16816(acc[2 * dpi], da, b0);
                mma_16816(acc[2 * dpi + 1], da, b1);
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = m0 + wrow + g + 8 * r;
        if (row >= Lq) continue;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<uint32_t*>(dq + (size_t)row * D + dt * 8 + 2 * t) =
                pack_half2(acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale);
    }
}

TFM_EXPORT(attn_bwd_dq_tc<32, 64>)
TFM_EXPORT(attn_bwd_dq_tc<64, 64>)
TFM_EXPORT(attn_bwd_dq_tc<96, 64>)
TFM_EXPORT(attn_bwd_dq_tc<128, 32>)
