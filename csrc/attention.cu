// attention.cu: fp32 attention kernels, forward and backward (tfm_kernels/attention.py launches them).
//
// The algorithm is numpy_ref/attention.py's flash_attention_forward/backward (FlashAttention-2,
// Dao 2023), with its block names: Q_i (query block i), K_j/V_j (key block j), S_ij, P_ij, m_i, l_i,
// acc, lse_i, D_i = rowsum(dO_i * O_i). Tensors are (B, H, L, D) row-major; one (b, h) pair is a
// dense (L, D) matrix at offset (b*H + h) * L * D. kv_lens (B,) int32 is always given (Lk when the
// caller had none).
//
//   attention_fwd_flash<D, 4, false> variant attention_forward/2_flash (4 rows per thread)
//   attention_fwd_flash<D, 8, false> variant attention_forward/3_flash_r8 (8 rows per thread)
//   attention_fwd_flash<D, 8, true>  variant attention_forward/4_flash_r8_async (+ cp.async double
//                                   buffer of K_j/V_j: tile j+1 streams in while j computes)
//   attention_bwd_preprocess        D_i = rowsum(dO_i * O_i), one warp per row (backward 2 and 3)
//   attention_bwd_dkdv<D, true, 4>  variant attention_backward/2_flash: a CTA per 64-key block, dQ
//                                   by float atomicAdd
//   attention_bwd_dkdv<D, false, 4> + attention_bwd_dq<D>: attention_backward/3_flash_det, dQ by a
//                                   CTA per query block walking the key blocks in order
//   attention_bwd_dkdv<D, true, 8>  variant attention_backward/4_flash_r8 (D <= 64): 128-key blocks,
//                                   8 keys per thread
//   attention_naive_mask, attention_naive_lse
//                                   the two small kernels of the naive variants (the rest of naive
//                                   is this project's matmul and softmax)
//
// Tiling shared by the flash kernels. A CTA is 256 threads = 16 x 16: ty = tid / 16 owns R = 4
// consecutive rows (4ty .. 4ty+3; R = 8 in forward 3 and 4) of every 16R-row tile it computes,
// tx = tid % 16 owns the score columns tx, tx+16, tx+32, tx+48 of a 16R x 64 score tile, and D/16
// columns of a 16R x D output tile (float4 groups at 64g + 4tx, plus a float2 at 64*(D/64) + 2tx when D % 64 == 32). The 16
// threads of one row are 16 consecutive lanes of one warp, so row max and row sum are 4 xor-shuffles.
// Tiles live in shared memory with row stride D + 4 floats: D/4 + 1 16-byte words, which is 1 mod 8,
// so the 8 rows read by one quarter-warp's 16-byte loads fall in 8 different bank groups (stride D
// would put all 8 in the same banks, an 8-way conflict at D = 128).
//
// Per 64 x 64 score tile and D = 128, an R = 4 thread does 16 x 128 = 2048 FMAs from 2 x 4 x 32
// 16-byte shared loads, and the P V product another 4 x 8 x 64 = 2048 FMAs from 16 x 4 + 64 x 2
// loads: 1792 floats for 4096 FMAs. An SM serves 32 floats of shared memory per clock (128 B) and
// 128 FMAs, so at 2.3 FMAs per float shared memory is the limit: ~38 TFLOP/s at most, 34.6
// measured on the H200 (GPU run 1). R = 8 does 3.2 FMAs per float (see the forward kernel).
// fp32 attention runs on CUDA cores (no tensor cores in fp32 without TF32), so the ceiling is the
// H200's ~67 TFLOP/s; torch's memory-efficient fp32 backend reaches 35-45 (shared/ANCHORS.md).

#include "common.cuh"
#include "mma.cuh"  // cp_async_16 / cp_async_commit / cp_async_wait / smem_u32 (4_flash_r8_async)

#define ATT_BQ 64        // query rows per tile (tfm_kernels/attention.py: BLOCK_Q)
#define ATT_BK 64        // keys per tile (BLOCK_K)
#define ATT_THREADS 256  // 16 x 16
#define ATT_PS 68        // row stride of the 64 x 64 P / dS tile: 17 16-byte words, 1 mod 8 again

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

static __device__ __forceinline__ float att_ln2() { return 0.6931471805599453f; }
static __device__ __forceinline__ float att_log2e() { return 1.4426950408889634f; }

// The D/16 output columns a thread owns (see the header): n-th column of thread tx.
template <int D>
struct AttCols {
    static constexpr int N = D / 16;          // columns per thread
    static constexpr int NV4 = D / 64;        // float4 groups, at 64g + 4tx
    static constexpr bool TAIL = (D % 64) == 32;  // one float2 at 64*NV4 + 2tx
    static __device__ __forceinline__ int col(int n, int tx) {
        return n < 4 * NV4 ? 64 * (n / 4) + 4 * tx + (n % 4) : 64 * NV4 + 2 * tx + (n - 4 * NV4);
    }
};

// Load the ROWS x D tile starting at row row0 of a dense (L, D) matrix into shared memory (row
// stride D + 4); rows >= nrows are written as zeros, so edge tiles compute on finite values (a
// masked score times a zero V row is 0, never NaN).
template <int D, int ROWS = 64>
static __device__ __forceinline__ void att_load_tile(float* __restrict__ s, const float* __restrict__ g,
                                                     int row0, int nrows) {
    constexpr int V4_PER_ROW = D / 4;
#pragma unroll
    for (int it = 0; it < ROWS * D / 1024; ++it) {  // ROWS * D/4 float4 over 256 threads
        const int idx = threadIdx.x + it * ATT_THREADS;
        const int r = idx / V4_PER_ROW;
        const int c4 = idx % V4_PER_ROW;
        float4 val = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row0 + r < nrows) val = *reinterpret_cast<const float4*>(g + (row0 + r) * D + 4 * c4);
        *reinterpret_cast<float4*>(s + r * (D + 4) + 4 * c4) = val;
    }
}

// att_load_tile by cp.async (sm_80+): the copies run in the background until cp_async_wait; rows
// >= nrows are zero-filled by the copy itself (src-size 0).
template <int D, int ROWS = 64>
static __device__ __forceinline__ void att_load_tile_async(float* __restrict__ s, const float* __restrict__ g,
                                                           int row0, int nrows) {
    constexpr int V4_PER_ROW = D / 4;
#pragma unroll
    for (int it = 0; it < ROWS * D / 1024; ++it) {
        const int idx = threadIdx.x + it * ATT_THREADS;
        const int r = idx / V4_PER_ROW;
        const int c4 = idx % V4_PER_ROW;
        const bool in = row0 + r < nrows;
        cp_async_16(smem_u32(s + r * (D + 4) + 4 * c4), in ? g + (row0 + r) * D + 4 * c4 : g, in);
    }
}

// s[i][j] = sum_d A[R ty + i][d] * B[tx + 16j][d]: a 16R x 64 tile of A B^T, A and B shared tiles
// with row stride D + 4. Used for S = Q K^T, dP = dO V^T and, with the operands swapped, their
// transposes. R = 4 rows per thread everywhere but the forward's 3_flash_r8 (R = 8).
template <int D, int UNROLL = 8, int R = 4>
static __device__ __forceinline__ void att_abt(float (&s)[R][4], const float* __restrict__ A,
                                               const float* __restrict__ B, int ty, int tx) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
#pragma unroll UNROLL
    for (int d = 0; d < D; d += 4) {
        float4 a[R], b[4];
#pragma unroll
        for (int i = 0; i < R; ++i) a[i] = *reinterpret_cast<const float4*>(A + (R * ty + i) * (D + 4) + d);
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = *reinterpret_cast<const float4*>(B + (tx + 16 * j) * (D + 4) + d);
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[i][j] = fmaf(a[i].x, b[j].x, s[i][j]);
                s[i][j] = fmaf(a[i].y, b[j].y, s[i][j]);
                s[i][j] = fmaf(a[i].z, b[j].z, s[i][j]);
                s[i][j] = fmaf(a[i].w, b[j].w, s[i][j]);
            }
    }
}

// acc[i][n] += sum_c P(R ty + i, c) * V[c][col(n)] over the 64 rows c of the shared tile V (stride
// D + 4). P is the 16R x 64 shared tile T (stride ATT_PS), read as T[r][c] (TRANS = false: O = P V,
// dV = P^T dO with T = P^T, dK = dS^T Q with T = dS^T) or as T[c][r] (TRANS = true, R = 4: dQ = dS K
// with T = dS^T).
template <int D, bool TRANS, int R = 4, int NC = ATT_BK>
static __device__ __forceinline__ void att_pv(float (&acc)[R][D / 16], const float* __restrict__ T,
                                              const float* __restrict__ V, int ty, int tx) {
    using C = AttCols<D>;
    static_assert(!TRANS || R == 4, "the transposed read takes 4 rows as one float4");
#pragma unroll 2
    for (int c = 0; c < NC; c += 4) {  // NC rows of V (and columns of T; rows of T when TRANS)
        float p[R][4];  // p[i][cc] = P(R ty + i, c + cc)
#pragma unroll
        for (int x = 0; x < (TRANS ? 4 : R); ++x) {
            // TRANS: one float4 holds 4 rows of one column; else 4 columns of one row.
            const float4 t = *reinterpret_cast<const float4*>(
                TRANS ? T + (c + x) * ATT_PS + 4 * ty : T + (R * ty + x) * ATT_PS + c);
            if (TRANS) {
                p[0][x] = t.x; p[1][x] = t.y; p[2][x] = t.z; p[3][x] = t.w;
            } else {
                p[x][0] = t.x; p[x][1] = t.y; p[x][2] = t.z; p[x][3] = t.w;
            }
        }
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) {
            float vv[C::N];
            const float* vrow = V + (c + cc) * (D + 4);
#pragma unroll
            for (int g = 0; g < C::NV4; ++g) {
                const float4 t = *reinterpret_cast<const float4*>(vrow + 64 * g + 4 * tx);
                vv[4 * g] = t.x; vv[4 * g + 1] = t.y; vv[4 * g + 2] = t.z; vv[4 * g + 3] = t.w;
            }
            if (C::TAIL) {
                const float2 t = *reinterpret_cast<const float2*>(vrow + 64 * C::NV4 + 2 * tx);
                vv[C::N - 2] = t.x; vv[C::N - 1] = t.y;
            }
#pragma unroll
            for (int i = 0; i < R; ++i)
#pragma unroll
                for (int n = 0; n < C::N; ++n) acc[i][n] = fmaf(p[i][cc], vv[n], acc[i][n]);
        }
    }
}

// Store row r of a thread's 64 x D tile, times `mul`, to dst (the row's start in global memory).
template <int D>
static __device__ __forceinline__ void att_store_row(float* __restrict__ dst, const float (&a)[D / 16],
                                                     float mul, int tx) {
    using C = AttCols<D>;
#pragma unroll
    for (int g = 0; g < C::NV4; ++g)
        *reinterpret_cast<float4*>(dst + 64 * g + 4 * tx) =
            make_float4(a[4 * g] * mul, a[4 * g + 1] * mul, a[4 * g + 2] * mul, a[4 * g + 3] * mul);
    if (C::TAIL)
        *reinterpret_cast<float2*>(dst + 64 * C::NV4 + 2 * tx) = make_float2(a[C::N - 2] * mul, a[C::N - 1] * mul);
}

// dst[col(n)] += a[n] * mul for the thread's columns of one row: float atomics, as 16-byte vector
// atomics on sm_90 (one RED.128 instead of four; fewer instructions and address registers).
template <int D>
static __device__ __forceinline__ void att_atomic_add_row(float* __restrict__ dst, const float (&a)[D / 16],
                                                          float mul, int tx) {
    using C = AttCols<D>;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll
    for (int g = 0; g < C::NV4; ++g)
        atomicAdd(reinterpret_cast<float4*>(dst + 64 * g + 4 * tx),
                  make_float4(a[4 * g] * mul, a[4 * g + 1] * mul, a[4 * g + 2] * mul, a[4 * g + 3] * mul));
    if (C::TAIL)
        atomicAdd(reinterpret_cast<float2*>(dst + 64 * C::NV4 + 2 * tx), make_float2(a[C::N - 2] * mul, a[C::N - 1] * mul));
#else
#pragma unroll
    for (int n = 0; n < C::N; ++n) atomicAdd(dst + C::col(n, tx), a[n] * mul);
#endif
}

// The query block a forward-shaped CTA owns (forward 2-4, backward 3's dQ): grid.x = B*H * nq, the
// nq query blocks of one head adjacent so the CTAs running together share K/V in L2. Under causal,
// later query blocks see more keys; within a head the heaviest go first so the short ones fill the
// tail of the grid.
struct AttQueryBlock {
    int bh;  // b*H + h
    int b;   // batch (kv_lens[b])
    int q0;  // first query row
};
template <int BQ>
static __device__ __forceinline__ AttQueryBlock att_query_block(int H, int nq, int causal) {
    const int bh = blockIdx.x / nq;
    const int qb = causal ? nq - 1 - blockIdx.x % nq : blockIdx.x % nq;
    const int q0 = qb * BQ;
    return {bh, bh / H, q0};
}

// Keys the query block from q0 can see: j < kv_len and, under causal, j <= its last row
// min(q0 + BQ, Lq) - 1. Key blocks at or past this end are never loaded (about half of them for
// causal Lq = Lk).
template <int BQ>
static __device__ __forceinline__ int att_key_end(const int* __restrict__ kv_lens, int b, int Lq, int Lk, int q0,
                                                  int causal) {
    const int kv_len = min(kv_lens[b], Lk);
    return causal ? min(kv_len, min(q0 + BQ, Lq)) : kv_len;
}

// Reductions over the 16 lanes of one row group (lanes 0-15 or 16-31 of a warp).
static __device__ __forceinline__ float att_row_max(float x) {
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}
static __device__ __forceinline__ float att_row_sum(float x) {
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

// ------------------------------------------------------------------------------------------------
// Forward: one CTA per (query block i, b*H + h); grid.x = B*H * cdiv(Lq, 64), query blocks of one
// head adjacent so the CTAs running together share K/V in L2.
//
// R = 4 (2_flash): query blocks of 64 rows, 4 rows per thread. Shared memory: Q_i and V_j
// (64 x (D+4) each) and one buffer for K_j that P_ij (64 x 68) reuses once S_ij is in registers:
// 99 KB at D = 128 (two CTAs per SM), 51 KB at D = 64.
// R = 8 (3_flash_r8): query blocks of 128 rows, 8 rows per thread. Per 4-wide step of d a thread
// loads 8 + 4 float4 for 128 FMAs (S) and 8 + D/16 floats per key for 8 D/16 FMAs (P V), against
// 4 + 4 for 64 and 4 + D/16 for 4 D/16 at R = 4: ~1.4x fewer shared-memory bytes per FMA, the
// limit at R = 4 (4096 FMAs per 1792 floats loaded per thread and key block at D = 128, where the
// SM delivers 32 floats per 128 FMA slots). The price: 136 KB of shared memory at D = 128, so one
// CTA (8 warps) per SM, which then stalls whole on every K_j/V_j load; ASYNC (4_flash_r8_async)
// double-buffers K_j/V_j with cp.async so tile j+1 streams in while tile j computes (200 KB at
// D = 128). The one barrier at the top of iteration j both publishes tile j and retires iteration
// j-1's reads of the other stage, which the prefetch then overwrites.
// Scores live in the log2 domain (scale_log2 = scale * log2(e)) so each exp is one exp2f; m_i is in
// that domain and lse = ln2 * (m_i + log2 l_i).
// Two CTAs per SM (128 registers) for R = 4, and for R = 8 at D = 32; R = 8 at D = 64 would spill
// 132 bytes at 128 registers (ptxas), so one.
template <int D, int R, bool ASYNC>
__global__ void __launch_bounds__(ATT_THREADS, (R == 4 || D <= 32 ? 2 : 1))
attention_fwd_flash(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                    const int* __restrict__ kv_lens, float* __restrict__ o, float* __restrict__ lse,
                    int H, int Lq, int Lk, int nq, int causal, float scale_log2) {
    using C = AttCols<D>;
    constexpr int BQ = 16 * R;                        // query rows per CTA
    constexpr int STAGES = ASYNC ? 2 : 1;             // K_j/V_j buffers (ASYNC: j+1 loads during j)
    constexpr int KP = ATT_BK * (D + 4) > BQ * ATT_PS ? ATT_BK * (D + 4) : BQ * ATT_PS;
    extern __shared__ float4 att_smem[];
    float* Qs = reinterpret_cast<float*>(att_smem);  // Q_i  [BQ][D+4]
    float* Vs0 = Qs + BQ * (D + 4);                   // V_j  [64][D+4] x STAGES
    float* KPs0 = Vs0 + STAGES * ATT_BK * (D + 4);    // K_j  [64][D+4], then P_ij [BQ][68]; x STAGES

    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const AttQueryBlock qblk = att_query_block<BQ>(H, nq, causal);
    const int bh = qblk.bh, q0 = qblk.q0;
    const float* qh = q + (int64_t)bh * Lq * D;
    const float* kh = k + (int64_t)bh * Lk * D;
    const float* vh = v + (int64_t)bh * Lk * D;
    const int n_end = att_key_end<BQ>(kv_lens, qblk.b, Lq, Lk, q0, causal);

    att_load_tile<D, BQ>(Qs, qh, q0, Lq);

    float m_i[R], l_i[R], acc[R][C::N];  // l_i: this thread's partial sum over its 4 columns
#pragma unroll
    for (int i = 0; i < R; ++i) {
        m_i[i] = -INFINITY;
        l_i[i] = 0.f;
#pragma unroll
        for (int n = 0; n < C::N; ++n) acc[i][n] = 0.f;
    }

    const int num_kb = tfm_cdiv(n_end, ATT_BK);
    if (ASYNC && num_kb > 0) {
        att_load_tile_async<D>(KPs0, kh, 0, n_end);
        att_load_tile_async<D>(Vs0, vh, 0, n_end);
        cp_async_commit();
    }
    for (int kb = 0; kb < num_kb; ++kb) {
        const int k0 = kb * ATT_BK;
        float* KPs = KPs0 + (kb % STAGES) * KP;
        float* Vs = Vs0 + (kb % STAGES) * ATT_BK * (D + 4);
        if (ASYNC) {
            cp_async_wait<0>();  // this thread's copies of K_j, V_j have landed
            __syncthreads();     // everyone's have, and iteration j-1 no longer reads the other stage
            if (kb + 1 < num_kb) {  // K_{j+1}, V_{j+1} stream in while this block computes
                const int nxt = (kb + 1) % STAGES;
                att_load_tile_async<D>(KPs0 + nxt * KP, kh, k0 + ATT_BK, n_end);
                att_load_tile_async<D>(Vs0 + nxt * ATT_BK * (D + 4), vh, k0 + ATT_BK, n_end);
                cp_async_commit();
            }
        } else {
            __syncthreads();  // the previous P_ij (in KPs) and V_j are no longer read
            att_load_tile<D>(KPs, kh, k0, n_end);
            att_load_tile<D>(Vs, vh, k0, n_end);
            __syncthreads();
        }

        float s[R][4];  // S_ij for rows q0 + R ty + i, keys k0 + tx + 16j
        att_abt<D, (R == 8 ? 4 : 8), R>(s, Qs, KPs, ty, tx);
        float m_new[R];
#pragma unroll
        for (int i = 0; i < R; ++i) {
            const int row = q0 + R * ty + i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = k0 + tx + 16 * j;
                const bool visible = col < n_end && (!causal || col <= row);
                s[i][j] = visible ? s[i][j] * scale_log2 : -INFINITY;
                mx = fmaxf(mx, s[i][j]);
            }
            m_new[i] = fmaxf(m_i[i], att_row_max(mx));
        }
#pragma unroll
        for (int i = 0; i < R; ++i) {
            // A row with no visible key so far has m_new = -inf: shift by 0 instead, so P_ij and
            // alpha are exp2(-inf) = 0 rather than exp2(-inf - -inf) = NaN.
            const float m_use = m_new[i] == -INFINITY ? 0.f : m_new[i];
            const float alpha = exp2f(m_i[i] - m_use);
            m_i[i] = m_new[i];
            float rowsum = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[i][j] = exp2f(s[i][j] - m_use);  // P_ij
                rowsum += s[i][j];
            }
            l_i[i] = l_i[i] * alpha + rowsum;
#pragma unroll
            for (int n = 0; n < C::N; ++n) acc[i][n] *= alpha;
        }
        __syncthreads();  // every thread is done reading K_j: KPs becomes P_ij
#pragma unroll
        for (int i = 0; i < R; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) KPs[(R * ty + i) * ATT_PS + tx + 16 * j] = s[i][j];
        __syncthreads();
        att_pv<D, false, R>(acc, KPs, Vs, ty, tx);  // acc += P_ij V_j
    }

    // Epilogue: O_i = acc / l_i, lse_i = m_i + log l_i; rows with no visible key (l_i = 0) get 0
    // and -inf.
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const float l = att_row_sum(l_i[i]);
        const int row = q0 + R * ty + i;
        if (row < Lq) {
            att_store_row<D>(o + (int64_t)bh * Lq * D + (int64_t)row * D, acc[i], l > 0.f ? 1.f / l : 0.f, tx);
            if (tx == 0) lse[(int64_t)bh * Lq + row] = l > 0.f ? (m_i[i] + log2f(l)) * att_ln2() : -INFINITY;
        }
    }
}
TFM_EXPORT(attention_fwd_flash<32, 4, false>)
TFM_EXPORT(attention_fwd_flash<64, 4, false>)
TFM_EXPORT(attention_fwd_flash<96, 4, false>)
TFM_EXPORT(attention_fwd_flash<128, 4, false>)
TFM_EXPORT(attention_fwd_flash<32, 8, false>)
TFM_EXPORT(attention_fwd_flash<64, 8, false>)
TFM_EXPORT(attention_fwd_flash<96, 8, false>)
TFM_EXPORT(attention_fwd_flash<128, 8, false>)
TFM_EXPORT(attention_fwd_flash<32, 8, true>)
TFM_EXPORT(attention_fwd_flash<64, 8, true>)
TFM_EXPORT(attention_fwd_flash<96, 8, true>)
TFM_EXPORT(attention_fwd_flash<128, 8, true>)

// ------------------------------------------------------------------------------------------------
// Backward preprocessing: D_i = rowsum(dO_i * O_i) (= rowsum(P_i * dP_i)), one warp per row of the
// (B*H*Lq, D) matrices; any D.
__global__ void attention_bwd_preprocess(const float* __restrict__ dout, const float* __restrict__ o,
                                         float* __restrict__ d_rows, int rows, int D) {
    const int row = (int)((blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // whole warps exit together (blockDim is a multiple of 32)
    const float* a = dout + (int64_t)row * D;
    const float* c = o + (int64_t)row * D;
    float sum = 0.f;
    for (int j = lane; j < D; j += 32) sum = fmaf(a[j], c[j], sum);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) d_rows[row] = sum;
}
TFM_EXPORT(attention_bwd_preprocess)

// Load lse_i (to the log2 domain) and D_i of the 64 rows from q0 into shared memory. Rows past Lq
// and rows that see no key (lse = -inf) get lse = +inf, so P = exp2(S - lse) = 0 there exactly.
static __device__ __forceinline__ void att_load_rows(float* __restrict__ lse_s, float* __restrict__ d_s,
                                                     const float* __restrict__ lse, const float* __restrict__ d_rows,
                                                     int q0, int Lq) {
    const int t = threadIdx.x;
    if (t < ATT_BQ) {
        const int row = q0 + t;
        float l = INFINITY, d = 0.f;
        if (row < Lq) {
            l = lse[row];
            l = l == -INFINITY ? INFINITY : l * att_log2e();
            d = d_rows[row];
        }
        lse_s[t] = l;
        d_s[t] = d;
    }
}

// Backward, one CTA per (key block j, b*H + h), FlashAttention-2's outer loop over keys: K_j and
// V_j stay in shared memory, dK_j and dV_j in registers (thread rows = keys 4ty + i), while the CTA
// walks the query blocks i that see any key of block j. Per query block:
//   S_ij^T = K_j Q_i^T, P_ij^T = exp2(S^T * scale_log2 - lse_i) (0 where hidden)
//   dV_j  += P_ij^T dO_i
//   dP_ij^T = V_j dO_i^T,  dS_ij^T = P_ij^T * (dP_ij^T - D_i)
//   dK_j  += dS_ij^T Q_i                     (times scale once, at the end)
//   dQ_i  += scale * dS_ij K_j               (DQ_ATOMIC: float atomicAdd into dq, zeroed first)
// Shared memory: K_j, V_j, Q_i, dO_i (64 x (D+4) each), the P^T / dS^T tile (64 x 68), lse_i and
// D_i: 153 KB at D = 128 (one CTA per SM, so up to 255 registers), 88 KB at D = 64 (two).
template <int D, bool DQ_ATOMIC, int R>
__global__ void __launch_bounds__(ATT_THREADS, (D <= 64 && R == 4 ? 2 : 1))
attention_bwd_dkdv(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                   const float* __restrict__ dout, const float* __restrict__ lse,
                   const float* __restrict__ d_rows, const int* __restrict__ kv_lens,
                   float* __restrict__ dk, float* __restrict__ dv, float* __restrict__ dq,
                   int H, int Lq, int Lk, int causal, float scale, int nk) {
    using C = AttCols<D>;
    constexpr int BK = 16 * R;                        // keys per CTA: R per thread
    extern __shared__ float4 att_smem[];
    float* Ks = reinterpret_cast<float*>(att_smem);  // K_j  [BK][D+4]
    float* Vs = Ks + BK * (D + 4);                    // V_j  [BK][D+4]
    float* Qs = Vs + BK * (D + 4);                    // Q_i  [64][D+4]
    float* dOs = Qs + ATT_BQ * (D + 4);               // dO_i [64][D+4]
    float* Ts = dOs + ATT_BQ * (D + 4);               // P_ij^T, then dS_ij^T [BK keys][68]
    float* lse_s = Ts + BK * ATT_PS;                  // lse_i (log2 domain) [64]
    float* d_s = lse_s + ATT_BQ;                      // D_i [64]

    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int bh = blockIdx.x / nk;
    const int kb = blockIdx.x % nk;
    const int k0 = kb * BK;
    const int b = bh / H;
    // This head's matrices (one 64-bit pointer each, no separate offsets: registers are tight).
    const float* qh = q + (int64_t)bh * Lq * D;
    const float* doh = dout + (int64_t)bh * Lq * D;
    float* dqh = dq + (int64_t)bh * Lq * D;
    const float* lseh = lse + (int64_t)bh * Lq;
    const float* dh = d_rows + (int64_t)bh * Lq;
    const int64_t koff = (int64_t)bh * Lk * D;
    const int kv_len = min(kv_lens[b], Lk);
    const float scale_log2 = scale * att_log2e();

    float dK[R][C::N], dV[R][C::N];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int n = 0; n < C::N; ++n) dK[i][n] = dV[i][n] = 0.f;

    if (k0 < kv_len) {  // a key block wholly past kv_len is seen by no query: its grads are 0
        att_load_tile<D, BK>(Ks, k + koff, k0, kv_len);
        att_load_tile<D, BK>(Vs, v + koff, k0, kv_len);
        // Under causal, queries before k0 see none of these keys.
        const int qb_start = causal ? k0 / ATT_BQ : 0;
        const int nqb = tfm_cdiv(Lq, ATT_BQ);
        for (int qb = qb_start; qb < nqb; ++qb) {
            const int q0 = qb * ATT_BQ;
            __syncthreads();  // the previous Q_i, dO_i, T, lse_i, D_i are no longer read
            att_load_tile<D>(Qs, qh, q0, Lq);
            att_load_tile<D>(dOs, doh, q0, Lq);
            att_load_rows(lse_s, d_s, lseh, dh, q0, Lq);
            __syncthreads();

            float pt[R][4];  // [key R ty + i][query tx + 16j]: S^T, then P^T
            att_abt<D, (R == 8 ? 4 : 8), R>(pt, Ks, Qs, ty, tx);
#pragma unroll
            for (int i = 0; i < R; ++i) {
                const int key = k0 + R * ty + i;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const int r = tx + 16 * j;
                    const bool visible = key < kv_len && (!causal || key <= q0 + r);
                    Ts[(R * ty + i) * ATT_PS + r] = visible ? exp2f(fmaf(pt[i][j], scale_log2, -lse_s[r])) : 0.f;
                }
            }
            __syncthreads();
            att_pv<D, false, R>(dV, Ts, dOs, ty, tx);  // dV_j += P^T dO_i
            // dP^T after dV, so it is not live across the dV product, and P^T is read back from T
            // (each thread its own 16 entries, still unchanged) rather than kept in registers across
            // the dP^T product: 16 fewer live registers at the peak, where the 128-register cap of
            // two CTAs per SM (D <= 64) otherwise spills.
            float dst[R][4];  // dP^T, then dS^T
            att_abt<D, (R == 8 ? 4 : 8), R>(dst, Vs, dOs, ty, tx);
#pragma unroll
            for (int i = 0; i < R; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    dst[i][j] = Ts[(R * ty + i) * ATT_PS + tx + 16 * j] * (dst[i][j] - d_s[tx + 16 * j]);
            __syncthreads();  // P^T is no longer read: T becomes dS^T
#pragma unroll
            for (int i = 0; i < R; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) Ts[(R * ty + i) * ATT_PS + tx + 16 * j] = dst[i][j];
            __syncthreads();
            att_pv<D, false, R>(dK, Ts, Qs, ty, tx);  // dK_j += dS^T Q_i
            if (DQ_ATOMIC) {
                float dQ[4][C::N];  // rows q0 + 4ty + i
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int n = 0; n < C::N; ++n) dQ[i][n] = 0.f;
                att_pv<D, true, 4, BK>(dQ, Ts, Ks, ty, tx);  // dS K_j, over the BK keys
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int row = q0 + 4 * ty + i;
                    if (row < Lq) att_atomic_add_row<D>(dqh + row * D, dQ[i], scale, tx);
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int key = k0 + R * ty + i;
        if (key < Lk) {
            att_store_row<D>(dk + koff + (int64_t)key * D, dK[i], scale, tx);
            att_store_row<D>(dv + koff + (int64_t)key * D, dV[i], 1.f, tx);
        }
    }
}
TFM_EXPORT(attention_bwd_dkdv<32, true, 4>)
TFM_EXPORT(attention_bwd_dkdv<64, true, 4>)
TFM_EXPORT(attention_bwd_dkdv<96, true, 4>)
TFM_EXPORT(attention_bwd_dkdv<128, true, 4>)
TFM_EXPORT(attention_bwd_dkdv<32, false, 4>)
TFM_EXPORT(attention_bwd_dkdv<64, false, 4>)
TFM_EXPORT(attention_bwd_dkdv<96, false, 4>)
TFM_EXPORT(attention_bwd_dkdv<128, false, 4>)
TFM_EXPORT(attention_bwd_dkdv<32, true, 8>)
TFM_EXPORT(attention_bwd_dkdv<64, true, 8>)

// Deterministic dQ: one CTA per (query block i, b*H + h), the forward's loop structure. Q_i, dO_i,
// lse_i, D_i stay in shared memory while the CTA walks key blocks j = 0, 1, ... in order:
//   S_ij = Q_i K_j^T, P_ij = exp2(S * scale_log2 - lse_i), dP_ij = dO_i V_j^T,
//   dS_ij = P_ij * (dP_ij - D_i), dQ_i += dS_ij K_j (in registers; times scale at the end).
// The same sums in the same order every run; the price is recomputing S and dP (2 of the backward's
// 5 matmuls) once more.
template <int D>
__global__ void __launch_bounds__(ATT_THREADS, (D <= 64 ? 2 : 1))
attention_bwd_dq(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                 const float* __restrict__ dout, const float* __restrict__ lse,
                 const float* __restrict__ d_rows, const int* __restrict__ kv_lens, float* __restrict__ dq,
                 int H, int Lq, int Lk, int causal, float scale, int nq) {
    using C = AttCols<D>;
    extern __shared__ float4 att_smem[];
    float* Qs = reinterpret_cast<float*>(att_smem);  // Q_i  [64][D+4]
    float* dOs = Qs + ATT_BQ * (D + 4);               // dO_i [64][D+4]
    float* Ks = dOs + ATT_BQ * (D + 4);               // K_j  [64][D+4]
    float* Vs = Ks + ATT_BK * (D + 4);                // V_j  [64][D+4]
    float* Ts = Vs + ATT_BK * (D + 4);                // dS_ij [64 queries][68]
    float* lse_s = Ts + ATT_BQ * ATT_PS;
    float* d_s = lse_s + ATT_BQ;

    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const AttQueryBlock qblk = att_query_block<ATT_BQ>(H, nq, causal);
    const int bh = qblk.bh, q0 = qblk.q0;
    const int64_t qoff = (int64_t)bh * Lq * D, koff = (int64_t)bh * Lk * D, roff = (int64_t)bh * Lq;
    const int n_end = att_key_end<ATT_BQ>(kv_lens, qblk.b, Lq, Lk, q0, causal);
    const float scale_log2 = scale * att_log2e();

    att_load_tile<D>(Qs, q + qoff, q0, Lq);
    att_load_tile<D>(dOs, dout + qoff, q0, Lq);
    att_load_rows(lse_s, d_s, lse + roff, d_rows + roff, q0, Lq);

    float dQ[4][C::N];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int n = 0; n < C::N; ++n) dQ[i][n] = 0.f;

    const int num_kb = tfm_cdiv(n_end, ATT_BK);
    for (int kb = 0; kb < num_kb; ++kb) {
        const int k0 = kb * ATT_BK;
        __syncthreads();  // the previous K_j, V_j, dS_ij are no longer read
        att_load_tile<D>(Ks, k + koff, k0, n_end);
        att_load_tile<D>(Vs, v + koff, k0, n_end);
        __syncthreads();
        // P_ij goes to T first and is read back (each thread its own entries) once dP_ij is done:
        // not holding P in registers across the dP product keeps D = 64 under 128 registers.
        float s[4][4];  // [query 4ty + i][key tx + 16j]: S_ij, then dP_ij
        att_abt<D>(s, Qs, Ks, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = 4 * ty + i;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int key = k0 + tx + 16 * j;
                const bool visible = key < n_end && (!causal || key <= q0 + r);
                Ts[r * ATT_PS + tx + 16 * j] = visible ? exp2f(fmaf(s[i][j], scale_log2, -lse_s[r])) : 0.f;
            }
        }
        att_abt<D>(s, dOs, Vs, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = 4 * ty + i;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float* t = Ts + r * ATT_PS + tx + 16 * j;
                *t = *t * (s[i][j] - d_s[r]);  // dS_ij = P_ij (dP_ij - D_i)
            }
        }
        __syncthreads();
        att_pv<D, false>(dQ, Ts, Ks, ty, tx);  // dQ_i += dS_ij K_j
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = q0 + 4 * ty + i;
        if (row < Lq) att_store_row<D>(dq + qoff + (int64_t)row * D, dQ[i], scale, tx);
    }
}
TFM_EXPORT(attention_bwd_dq<32>)
TFM_EXPORT(attention_bwd_dq<64>)
TFM_EXPORT(attention_bwd_dq<96>)
TFM_EXPORT(attention_bwd_dq<128>)

// ------------------------------------------------------------------------------------------------
// The naive variants' two small kernels, on the materialized (B*H, Lq, Lk) score matrix. Row
// (bh, i) sees keys j < n_vis = min(kv_len, causal ? i + 1 : Lk): both masks are prefixes.

static __device__ __forceinline__ int att_visible_count(const int* __restrict__ kv_lens, int row, int H,
                                                        int Lq, int Lk, int causal) {
    const int bh = row / Lq, i = row % Lq;
    const int kv_len = min(kv_lens[bh / H], Lk);
    return causal ? min(kv_len, i + 1) : kv_len;
}

// mode 0 (before softmax): s = scale * s on visible keys, -inf on hidden ones; a row with no
//        visible key is set to 0 instead, so this project's softmax sees finite values (its
//        result on that row is then zeroed by mode 1);
// mode 1 (after softmax): rows with no visible key zeroed (the others already have exact zeros at
//        hidden keys, exp(-inf) = 0);
// mode 2 (backward): s = scale * s (dS; hidden keys have P = 0, hence dS = 0, already).
// One CTA per row (grid-stride over rows), threads along the row: coalesced.
__global__ void attention_naive_mask(float* __restrict__ s, const int* __restrict__ kv_lens, int H, int Lq,
                                     int Lk, int causal, float scale, int mode, int rows) {
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const int n_vis = att_visible_count(kv_lens, row, H, Lq, Lk, causal);
        float* x = s + (int64_t)row * Lk;
        if (mode == 1 && n_vis > 0) continue;
        for (int j = threadIdx.x; j < Lk; j += blockDim.x) {
            if (mode == 0) x[j] = n_vis == 0 ? 0.f : (j < n_vis ? x[j] * scale : -INFINITY);
            else if (mode == 1) x[j] = 0.f;
            else x[j] *= scale;
        }
    }
}
TFM_EXPORT(attention_naive_mask)

// lse of each row of the masked, scaled scores (mode 0's output): max, then sum of exp(s - max), one
// warp per row; -inf for rows with no visible key.
__global__ void attention_naive_lse(const float* __restrict__ s, const int* __restrict__ kv_lens,
                                    float* __restrict__ lse, int H, int Lq, int Lk, int causal, int rows) {
    const int row = (int)((blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int n_vis = att_visible_count(kv_lens, row, H, Lq, Lk, causal);
    const float* x = s + (int64_t)row * Lk;
    float mx = -INFINITY;
    for (int j = lane; j < n_vis; j += 32) mx = fmaxf(mx, x[j]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
    for (int j = lane; j < n_vis; j += 32) sum += expf(x[j] - mx);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) lse[row] = n_vis == 0 ? -INFINITY : mx + logf(sum);
}
TFM_EXPORT(attention_naive_lse)
