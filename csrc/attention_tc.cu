// attention_tc.cu: fp16 attention on tensor cores (mma.sync m16n8k16 + ldmatrix + cp.async),
// FlashAttention-2's structure. The algorithm is numpy_ref/attention.py's blocked
// flash_attention_forward / flash_attention_backward; comments reuse its block names (Q_i, K_j, V_j,
// m_i, l_i, acc, D_i).
//
// Kernels (variants in tfm_kernels/attention_tc.py):
//   attn_fwd_tc<D, BN, MW>      forward 10. CTA = one query tile of BM = 64*MW rows, 4 warps, each
//                               warp owns MW m16 tiles (16*MW rows). Q_i lives in registers as mma A
//                               fragments; K_j/V_j (BN keys) are double-buffered in smem by cp.async.
//                               S = Q_i K_j^T and acc += P V_j accumulate in fp32 registers; the
//                               online softmax runs on the S fragments (row max/sum over the 4
//                               lanes of a quad: two shuffles); P goes to fp16 in registers and is
//                               the A operand of the PV mma directly (the m16n8 C layout of two
//                               adjacent n-tiles is exactly the m16k16 A layout).
//   attn_bwd_dot_tc<D>          D_i = rowsum(dO_i * O_i) in fp32 from fp16 inputs; zeroes the fp32
//                               dQ accumulator in the same pass.
//   attn_bwd_tc<D, BM, ATOMIC>  backward 11 (ATOMIC=true) / 12 (false). CTA = one key block of 64
//                               keys, 4 warps of 16 keys; K_j and V_j stay in smem, dK_j and dV_j in
//                               fp32 registers; loop over query blocks Q_i (cp.async double buffer):
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
template <int D, int BN, int MW>
__global__ void __launch_bounds__(128)
attn_fwd_tc(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
            __half* __restrict__ o, float* __restrict__ lse, const int* __restrict__ kv_lens,
            int has_kv_lens, int H, int Lq, int Lk, float scale_log2, int causal) {
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
    // Causal: diagonal tiles cost more the later they sit; launch those first so the tail of the
    // grid is short tiles (FA2 does the same).
    const int mblk = causal ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int m0 = mblk * BM;
    const size_t bh = (size_t)blockIdx.z * H + blockIdx.y;
    q += bh * Lq * D;
    o += bh * Lq * D;
    lse += bh * Lq;
    k += bh * Lk * D;
    v += bh * Lk * D;

    int kv_len = Lk;
    if (has_kv_lens) kv_len = min(Lk, max(kv_lens[blockIdx.z], 0));
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

    uint32_t qf[MW][KT][4];  // Q_i as mma A fragments, loaded once
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
        if (jb == 0) {
            // ldmatrix x4 address for A (16x16 at rows r, cols c): lane -> row r + lane%16,
            // col c + (lane/16)*8 (matrices: rows 0-7|8-15 x cols 0-7|8-15 = a0a1, a2a3, a4a5, a6a7).
#pragma unroll
            for (int mi = 0; mi < MW; ++mi)
#pragma unroll
                for (int kk = 0; kk < KT; ++kk)
                    ldmatrix_x4(qf[mi][kk], smem_u32(sQ + (wrow + mi * 16 + lane % 16) * LD + kk * 16 +
                                                     (lane / 16) * 8));
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
        for (int kk = 0; kk < KT; ++kk)
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                uint32_t b[4];
                ldmatrix_x4(b, smem_u32(Kj + (np * 16 + lane % 8 + (lane / 16) * 8) * LD + kk * 16 +
                                        ((lane / 8) % 2) * 8));
                const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
                for (int mi = 0; mi < MW; ++mi) {
                    mma_16816(s[mi][2 * np], qf[mi][kk], b0);
                    mma_16816(s[mi][2 * np + 1], qf[mi][kk], b1);
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

TFM_EXPORT(attn_fwd_tc<32, 64, 2>)
TFM_EXPORT(attn_fwd_tc<64, 64, 2>)
TFM_EXPORT(attn_fwd_tc<96, 64, 1>)
TFM_EXPORT(attn_fwd_tc<128, 64, 1>)
