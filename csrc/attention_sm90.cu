// tfm-arch: sm_90a
// attention_sm90.cu: fp16 attention forward on Hopper tensor cores (wgmma), variant 14 of
// attention_forward (tfm_kernels/attention_tc.py). Same algorithm and block names as forward 10
// (csrc/attention_tc.cu, numpy_ref.flash_attention_forward), with the mma.sync tiles replaced by
// warpgroup MMAs:
//
//   CTA = 128 query rows, 2 warpgroups (256 threads); warpgroup c owns rows 64c..64c+63, its warp w
//   rows 16w..16w+15 of those (the wgmma accumulator layout is the mma.sync C layout repeated along
//   N, so the online softmax below is forward 10's, lane for lane).
//   S = Q_i K_j^T    wgmma m64n{BN}k16, A = Q_i and B = K_j both from shared memory (K-major)
//   acc += P V_j     wgmma m64n{D}k16 with A = P from registers (fp16, packed from the S
//                    accumulators exactly as forward 10 feeds mma.sync) and B = V_j from shared
//                    memory, N-major (the instruction's transpose bit)
//   K_j, V_j         double-buffered, 16-byte cp.async by all 256 threads (rows past kv_len
//                    zero-filled), written straight into the 128-byte-swizzled layout the wgmma
//                    descriptors describe (16-byte chunk c of row r at chunk c ^ (r % 8)).
//
// Shared-memory layout: every tile is stored as D/64 column blocks of [rows][64 halves] (128-byte
// rows, 1024-byte swizzle atoms of 8 rows; every block 1024-byte aligned):
//   Q_i: 2 x D/64 blocks of [128][64];  K_j, V_j: 2 buffers x D/64 blocks of [BN][64].
// Descriptors (mma.cuh wgmma_desc_sw128, the conventions matmul_sm90.cu uses):
//   A = Q_i rows 64c.., k16 step kk: block kk/4, + 64c rows (8 KiB), + (kk%4) * 32 bytes; SBO 1024.
//   B = K_j (K-major, N = keys): block kk/4, + (kk%4) * 32 bytes; SBO 1024.
//   B = V_j (N-major: N = d, K = keys), keys 16kk..: + kk * 16 rows * 128 bytes; LBO = the distance
//       between 64-wide d blocks (BN * 128 bytes), SBO 1024.
//
// Compiled only where __CUDA_ARCH_FEAT_SM90_ALL is defined (nvcc -gencode arch=compute_90a,
// code=sm_90a; NVRTC -arch=sm_90a); elsewhere the body is empty and tfm_kernels never launches it.
#include <cuda_fp16.h>

#include "common.cuh"
#include "mma.cuh"

template <int D, int BN>
__global__ void __launch_bounds__(256, 1)
attn_fwd_wgmma(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
               __half* __restrict__ o, float* __restrict__ lse, const int* __restrict__ kv_lens, int H,
               int Lq, int Lk, int ntiles, float scale_log2, int causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert((D == 64 || D == 128) && BN == 128, "wgmma shapes: m64n128k16 (S), m64n{D}k16 (PV)");
    constexpr int THREADS = 256, BM = 128;
    constexpr int NT = BN / 8, DT = D / 8;
    constexpr int Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
    const float NEG_INF = __int_as_float(0xff800000);

    extern __shared__ unsigned char smem_raw[];
    unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
    unsigned char* sQ = smem;                          // Q_BYTES
    unsigned char* sK = sQ + Q_BYTES;                  // 2 x KV_BYTES
    unsigned char* sV = sK + 2 * KV_BYTES;             // 2 x KV_BYTES

    const int tid = threadIdx.x, wg = tid / 128, lane = tid % 32, w = (tid % 128) / 32;
    const int g = lane / 4, t = lane % 4;
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
    const int n_end = causal ? min(kv_len, m0 + BM) : kv_len;
    const int nblocks = n_end > 0 ? tfm_cdiv(n_end, BN) : 0;
    const int wrow = wg * 64 + w * 16;  // this warp's first row within the tile

    if (nblocks == 0) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = m0 + wrow + g + 8 * r;
            if (row >= Lq) continue;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt)
                *reinterpret_cast<uint32_t*>(o + (size_t)row * D + dt * 8 + 2 * t) = 0u;
            if (t == 0) lse[row] = NEG_INF;
        }
        return;
    }

    // Rows [r0, r0+ROWS) of a [L][D] matrix into the swizzled [CB][ROWS][64] layout.
    auto load = [&](unsigned char* dst, const __half* src, int ROWS, int r0, int limit) {
        for (int c = tid; c < ROWS * (D / 8); c += THREADS) {
            const int r = c / (D / 8), ch = c % (D / 8);
            const bool ok = r0 + r < limit;
            const __half* s = ok ? src + (size_t)(r0 + r) * D + ch * 8 : src;
            const int off = (ch / 8) * ROWS * 128 + r * 128 + (((ch % 8) ^ (r % 8)) * 16);
            cp_async_16(smem_u32(dst + off), s, ok);
        }
    };
    load(sQ, q, BM, m0, Lq);
    load(sK, k, BN, 0, kv_len);
    load(sV, v, BN, 0, kv_len);
    cp_async_commit();

    float acc[DT * 4];
    float m_i[2] = {NEG_INF, NEG_INF}, l_i[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < DT * 4; ++i) acc[i] = 0.f;

    for (int jb = 0; jb < nblocks; ++jb) {
        const int buf = jb & 1, n0 = jb * BN;
        cp_async_wait<0>();
        // cp.async wrote through the generic proxy; wgmma reads shared memory through the async
        // proxy: make the writes visible to it before the barrier publishes them.
        fence_proxy_async_smem();
        __syncthreads();
        if (jb + 1 < nblocks) {
            load(sK + (buf ^ 1) * KV_BYTES, k, BN, n0 + BN, kv_len);
            load(sV + (buf ^ 1) * KV_BYTES, v, BN, n0 + BN, kv_len);
        }
        cp_async_commit();
        const uint32_t qa = smem_u32(sQ) + wg * 64 * 128;
        const uint32_t kb = smem_u32(sK + buf * KV_BYTES);
        const uint32_t vb = smem_u32(sV + buf * KV_BYTES);

        // S = Q_i K_j^T
        float s[NT * 4];
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) s[i] = 0.f;
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) reg_fence(s[i]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            const uint64_t da = wgmma_desc_sw128(qa + (kk / 4) * BM * 128 + (kk % 4) * 32, 16, 1024);
            const uint64_t db = wgmma_desc_sw128(kb + (kk / 4) * BN * 128 + (kk % 4) * 32, 16, 1024);
            wgmma_m64n128k16_f16<0, 0>(s, da, db);
        }
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) reg_fence(s[i]);

        // Scale to base 2, mask edge tiles, online softmax (forward 10's, one m16 tile per warp).
        const bool edge = (n0 + BN > kv_len) || (causal && n0 + BN - 1 > m0 + wrow);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                float x = s[4 * nt + c] * scale_log2;
                if (edge) {
                    const int row = m0 + wrow + g + 8 * (c / 2);
                    const int col = n0 + nt * 8 + 2 * t + (c % 2);
                    if (col >= kv_len || (causal && col > row)) x = NEG_INF;
                }
                s[4 * nt + c] = x;
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = m_i[r];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * r], s[4 * nt + 2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_use = mx == NEG_INF ? 0.f : mx;
            const float alpha = exp2f(m_i[r] - m_use);
            m_i[r] = mx;
            float rs = 0.f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const float p0 = exp2f(s[4 * nt + 2 * r] - m_use);
                const float p1 = exp2f(s[4 * nt + 2 * r + 1] - m_use);
                s[4 * nt + 2 * r] = p0;
                s[4 * nt + 2 * r + 1] = p1;
                rs += p0 + p1;
            }
            l_i[r] = l_i[r] * alpha + rs;
#pragma unroll
            for (int dt = 0; dt < DT; ++dt) {
                acc[4 * dt + 2 * r] *= alpha;
                acc[4 * dt + 2 * r + 1] *= alpha;
            }
        }

        // acc += P V_j: P's k16 slice kk is {S[2kk][0,1], S[2kk][2,3], S[2kk+1][0,1], S[2kk+1][2,3]}
        // (n8 tiles 2kk, 2kk+1 of the accumulator), packed to fp16 before the fence so that no
        // register the wgmmas read is written between them (ptxas would serialize them).
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
            for (int h = 0; h < 4; ++h) pa[kk][h] = pack_half2(s[8 * kk + 2 * h], s[8 * kk + 2 * h + 1]);
#pragma unroll
        for (int i = 0; i < DT * 4; ++i) reg_fence(acc[i]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            const uint64_t dv = wgmma_desc_sw128(vb + kk * 16 * 128, BN * 128, 1024);
            if constexpr (D == 64) wgmma_rs_m64n64k16_f16<1>(acc, pa[kk], dv);
            else wgmma_rs_m64n128k16_f16<1>(acc, pa[kk], dv);
        }
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < DT * 4; ++i) reg_fence(acc[i]);
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = l_i[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int row = m0 + wrow + g + 8 * r;
        if (row >= Lq) continue;
        __half* orow = o + (size_t)row * D;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<uint32_t*>(orow + dt * 8 + 2 * t) =
                pack_half2(acc[4 * dt + 2 * r] * inv, acc[4 * dt + 2 * r + 1] * inv);
        if (t == 0) lse[row] = l > 0.f ? (m_i[r] + __log2f(l)) * 0.6931471805599453f : NEG_INF;
    }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

TFM_EXPORT(attn_fwd_wgmma<64, 128>)
TFM_EXPORT(attn_fwd_wgmma<128, 128>)
