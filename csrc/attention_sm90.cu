// tfm-arch: sm_90a
// attention_sm90.cu: fp16 attention on Hopper tensor cores (wgmma): attention_forward 14 and 15
// (15: with FA3's intra-warpgroup overlap) and attention_backward 13 (at the end of this file;
// tfm_kernels/attention_tc.py registers all three). The forward: same algorithm and block names as forward 10
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
//   K_j, V_j         double-buffered (V triple-buffered in 15), 16-byte cp.async by all 256 threads (rows past kv_len
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

// Rows [r0, r0 + ROWS) of a row-major [L][D] fp16 matrix into D/64 column blocks of [ROWS][64]
// halves, 128-byte swizzled (16-byte chunk c of row r at chunk c ^ (r % 8)): the layout the wgmma
// descriptors below describe. 16-byte cp.async from all THREADS threads; rows at or past `limit`
// are zero-filled (src-size 0, from a valid address), so edge tiles need no other guard.
template <int ROWS, int D, int THREADS>
static __device__ __forceinline__ void sw128_load(unsigned char* dst, const __half* src, int r0, int limit,
                                                  int tid) {
    static_assert((ROWS * D / 8) % THREADS == 0, "every thread moves the same number of chunks");
    // Unsigned index arithmetic: with signed ints every / and % by a power of two costs a sign
    // fix-up (LEA.HI + LOP3), ~2x the address instructions of the loop (NVRTC SASS).
#pragma unroll
    for (unsigned c = tid; c < ROWS * (D / 8); c += THREADS) {
        const unsigned r = c / (D / 8), ch = c % (D / 8);
        const bool ok = r0 + static_cast<int>(r) < limit;
        const __half* s = ok ? src + (size_t)(r0 + r) * D + ch * 8 : src;
        const unsigned off = (ch / 8) * ROWS * 128 + r * 128 + (((ch % 8) ^ (r % 8)) * 16);
        cp_async_16(smem_u32(dst + off), s, ok);
    }
}

// The 128-row query tile a CTA of forward 14/15 or backward 14's dQ kernel owns: grid x = tile *
// (B*H) + (b*H + h), and with causal the last tiles (the longest rows) run first. nblocks: how many
// BN-key blocks its rows see (kv_len, and with causal its last row).
struct QueryTile {
    int bhi, b, m0, kv_len, nblocks;
};
template <int BM, int BN>
static __device__ __forceinline__ QueryTile query_tile(const int* __restrict__ kv_lens, int H, int Lk, int ntiles,
                                                       int causal) {
    QueryTile qt;
    const int bh_count = gridDim.x / ntiles;
    const int tile = blockIdx.x / bh_count;
    qt.bhi = blockIdx.x % bh_count;
    qt.b = qt.bhi / H;
    qt.m0 = (causal ? ntiles - 1 - tile : tile) * BM;
    qt.kv_len = min(Lk, max(kv_lens[qt.b], 0));
    const int n_end = causal ? min(qt.kv_len, qt.m0 + BM) : qt.kv_len;
    qt.nblocks = n_end > 0 ? tfm_cdiv(n_end, BN) : 0;
    return qt;
}

// The mask of a BN-key tile starting at key n0, for this thread's query rows row0 + g and
// row0 + g + 8 (row0: its warp's first row): returns whether any of the warp's rows needs one (the
// tile crosses kv_len or, with causal, the diagonal), and sets end[r]: row r sees the tile's
// columns 8nt + 2t + c below end[r] (kv_len, and with causal its own index + 1). One integer bound
// per row, so each element's test is against an immediate: a per-element test has the compiler
// park its predicates in registers (170 P2R in backward 13 at 128-query steps, and spills).
template <int BN>
static __device__ __forceinline__ bool tile_key_bounds(int (&end)[2], int row0, int n0, int kv_len, bool causal,
                                                       int g, int t) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + g + 8 * r;
        end[r] = (causal ? min(kv_len, row + 1) : kv_len) - n0 - 2 * t;
    }
    return (n0 + BN > kv_len) || (causal && n0 + BN - 1 > row0);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)  // (the wgmma helpers of mma.cuh exist only there)
// acc (64 x N) += A B^T over a depth of D, both operands K-major in sw128_load's layout (D/64 column
// blocks; A's of A_ROWS rows, B's of B_ROWS rows): D/16 wgmma m64nNk16 from the descriptors a and b
// of the first k16 step (the k16 step kk is +32 bytes inside a 128-byte row, the next 64 columns
// the next block).
template <int N, int D, int A_ROWS, int B_ROWS>
static __device__ __forceinline__ void wgmma_ss_kmajor(float (&acc)[N / 2], uint64_t a, uint64_t b) {
    static_assert(N == 64 || N == 128, "m64n64k16 or m64n128k16");
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const uint64_t da = wgmma_desc_advance(a, (kk / 4) * A_ROWS * 128 + (kk % 4) * 32);
        const uint64_t db = wgmma_desc_advance(b, (kk / 4) * B_ROWS * 128 + (kk % 4) * 32);
        if constexpr (N == 128) wgmma_m64n128k16_f16<0, 0>(acc, da, db);
        else wgmma_m64n64k16_f16<0, 0>(acc, da, db);
    }
}

// acc (64 x N) += A B over KSTEPS k16 steps: A from registers (fragments a[kk], packed from an
// accumulator as P is), B N-major from the descriptor b of the first step (+2048 bytes per step:
// 16 k-rows of 128 bytes).
template <int N, int KSTEPS>
static __device__ __forceinline__ void wgmma_rs_nmajor(float (&acc)[N / 2], const uint32_t (&a)[KSTEPS][4], uint64_t b) {
    static_assert(N == 64 || N == 128, "m64n64k16 or m64n128k16");
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
        const uint64_t db = wgmma_desc_advance(b, kk * 2048);
        if constexpr (N == 64) wgmma_rs_m64n64k16_f16<1>(acc, a[kk], db);
        else wgmma_rs_m64n128k16_f16<1>(acc, a[kk], db);
    }
}
#endif

// The online-softmax step on this warp's 16 rows of a 64 x BN score tile s (the wgmma accumulator
// layout: element 4nt + c is row g + 8(c/2), key column 8nt + 2t + c%2 of the tile): scale to base
// 2; on edge tiles hide columns at or past end[r] (-inf); new row maxima into m_i; P = exp2(s - m)
// in place; l_i = l_i alpha + row sums. Returns each row's alpha in `alpha`, for the caller to
// rescale the output accumulator when no wgmma is writing it.
template <int NT>
static __device__ __forceinline__ void wgmma_softmax_step(float (&s)[NT * 4], float (&m_i)[2], float (&l_i)[2],
                                                          float (&alpha)[2], float scale_log2, bool edge,
                                                          const int (&end)[2]) {
    const float NEG_INF = __int_as_float(0xff800000);
#pragma unroll
    for (int i = 0; i < NT * 4; ++i) s[i] *= scale_log2;
    if (edge) {
        // One bound per row (kv_len, and with causal the row + 1), so each element's test is against
        // an immediate: a per-element test has the compiler park its predicates in registers.
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c)
                if (8 * nt + (c % 2) >= end[c / 2]) s[4 * nt + c] = NEG_INF;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float mx = m_i[r];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[4 * nt + 2 * r], s[4 * nt + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_use = mx == NEG_INF ? 0.f : mx;
        alpha[r] = exp2f(m_i[r] - m_use);
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
        l_i[r] = l_i[r] * alpha[r] + rs;
    }
}

// OVERLAP = false: forward 14. Per K_j/V_j tile: S = Q K_j^T, wait; softmax; acc += P V_j, wait.
// OVERLAP = true: forward 15, FA3's intra-warpgroup overlap (Shah et al. 2024, algorithm 2): the
// P V product of tile j-1 is issued right after S_j = Q K_j^T and runs while tile j's softmax is
// computed; the rescale of acc waits for it. V then needs 3 buffers (V_{j-1} is still read while
// V_{j+1} streams in), K keeps 2. Costs P's fp16 fragments live across the softmax (BN/2 registers).
template <int D, int BN, bool OVERLAP>
__global__ void __launch_bounds__(256, 1)
attn_fwd_wgmma(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
               __half* __restrict__ o, float* __restrict__ lse, const int* __restrict__ kv_lens, int H,
               int Lq, int Lk, int ntiles, float scale_log2, int causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert((D == 64 || D == 128) && BN == 128, "wgmma shapes: m64n128k16 (S), m64n{D}k16 (PV)");
    constexpr int THREADS = 256, BM = 128, VBUF = OVERLAP ? 3 : 2;
    constexpr int NT = BN / 8, DT = D / 8;
    constexpr int Q_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
    const float NEG_INF = __int_as_float(0xff800000);

    extern __shared__ unsigned char smem_raw[];
    unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
    unsigned char* sQ = smem;                          // Q_BYTES
    unsigned char* sK = sQ + Q_BYTES;                  // 2 x KV_BYTES
    unsigned char* sV = sK + 2 * KV_BYTES;             // VBUF x KV_BYTES

    const int tid = threadIdx.x, lane = tid % 32, w = (tid % 128) / 32;
    const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);  // warp-uniform, visibly (backward 13)
    const int g = lane / 4, t = lane % 4;
    const QueryTile qt = query_tile<BM, BN>(kv_lens, H, Lk, ntiles, causal);
    const int m0 = qt.m0, kv_len = qt.kv_len, nblocks = qt.nblocks;
    const size_t bh = qt.bhi;
    q += bh * Lq * D;
    o += bh * Lq * D;
    lse += bh * Lq;
    k += bh * Lk * D;
    v += bh * Lk * D;
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

    sw128_load<BM, D, THREADS>(sQ, q, m0, Lq, tid);
    sw128_load<BN, D, THREADS>(sK, k, 0, kv_len, tid);
    sw128_load<BN, D, THREADS>(sV, v, 0, kv_len, tid);
    cp_async_commit();

    float acc[DT * 4];
    float m_i[2] = {NEG_INF, NEG_INF}, l_i[2] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < DT * 4; ++i) acc[i] = 0.f;
    // P's k16 slice kk as an A fragment: {S[2kk][0,1], S[2kk][2,3], S[2kk+1][0,1], S[2kk+1][2,3]}
    // (n8 tiles 2kk, 2kk+1 of the accumulator), packed to fp16 before the fence so that no register
    // the wgmmas read is written between them (ptxas would serialize them).
    uint32_t pa[BN / 16][4];

    // acc += P V of the tile whose V sits in buffer vb.
    auto issue_pv = [&](int vb) {
#pragma unroll
        for (int i = 0; i < DT * 4; ++i) reg_fence(acc[i]);
        wgmma_fence();
        wgmma_rs_nmajor<D, BN / 16>(acc, pa, wgmma_desc_sw128(opaque_u32(smem_u32(sV + vb * KV_BYTES)), BN * 128, 1024));
        wgmma_commit();
    };

    for (int jb = 0; jb < nblocks; ++jb) {
        const int kbuf = jb & 1, n0 = jb * BN;
        cp_async_wait<0>();
        // cp.async wrote through the generic proxy; wgmma reads shared memory through the async
        // proxy: make the writes visible to it before the barrier publishes them. After the
        // barrier every wgmma of the tiles before (S_{j-1}; P V_{j-2} with OVERLAP, P V_{j-1}
        // without) has retired in both warpgroups, so their buffers can be refilled.
        fence_proxy_async_smem();
        __syncthreads();
        if (jb + 1 < nblocks) {
            sw128_load<BN, D, THREADS>(sK + (kbuf ^ 1) * KV_BYTES, k, n0 + BN, kv_len, tid);
            sw128_load<BN, D, THREADS>(sV + ((jb + 1) % VBUF) * KV_BYTES, v, n0 + BN, kv_len, tid);
        }
        cp_async_commit();

        // S = Q_i K_j^T; one descriptor per operand, stepped along k.
        const uint64_t Q_k = wgmma_desc_sw128(opaque_u32(smem_u32(sQ) + wg * 64 * 128), 16, 1024);
        const uint64_t K_k = wgmma_desc_sw128(opaque_u32(smem_u32(sK + kbuf * KV_BYTES)), 16, 1024);
        float s[NT * 4];
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) s[i] = 0.f;
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) reg_fence(s[i]);
        wgmma_fence();
        wgmma_ss_kmajor<BN, D, BM, BN>(s, Q_k, K_k);
        wgmma_commit();
        if constexpr (OVERLAP) {
            if (jb > 0) {
                issue_pv((jb - 1) % VBUF);  // P V_{j-1}, behind S_j
                wgmma_wait<1>();            // S_j has landed; P V_{j-1} runs on
            } else {
                wgmma_wait<0>();
            }
        } else {
            wgmma_wait<0>();
        }
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) reg_fence(s[i]);

        // Online softmax (forward 10's, one m16 tile per warp), masked below each row's bound.
        int end[2];
        const bool edge = tile_key_bounds<BN>(end, m0 + wrow, n0, kv_len, causal, g, t);
        float alpha[2];
        wgmma_softmax_step<NT>(s, m_i, l_i, alpha, scale_log2, edge, end);
        if constexpr (OVERLAP) {
            wgmma_wait<0>();  // P V_{j-1} retired: acc and pa are ours again
#pragma unroll
            for (int i = 0; i < DT * 4; ++i) reg_fence(acc[i]);
        }
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                acc[4 * dt + 2 * r] *= alpha[r];
                acc[4 * dt + 2 * r + 1] *= alpha[r];
            }
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
            for (int h = 0; h < 4; ++h) pa[kk][h] = pack_half2(s[8 * kk + 2 * h], s[8 * kk + 2 * h + 1]);
        if constexpr (!OVERLAP) {
            issue_pv(jb % VBUF);  // acc += P V_j
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < DT * 4; ++i) reg_fence(acc[i]);
        }
    }
    if constexpr (OVERLAP) {  // the last tile's P V
        issue_pv((nblocks - 1) % VBUF);
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

TFM_EXPORT(attn_fwd_wgmma<64, 128, false>)
TFM_EXPORT(attn_fwd_wgmma<128, 128, false>)
TFM_EXPORT(attn_fwd_wgmma<64, 128, true>)
TFM_EXPORT(attn_fwd_wgmma<128, 128, true>)

// ------------------------------------------------------------------------------------------------
// attention_backward 13 (Hopper): backward 11's algorithm (FlashAttention-2's backward, the block
// names of numpy_ref.flash_attention_backward) with every product a warpgroup MMA.
//
//   CTA = one key block K_j, V_j of BN = 128 keys (loaded once), 2 warpgroups (256 threads):
//   warpgroup c owns keys 64c..64c+63 and their dK_j, dV_j rows (fp32 accumulators, D/2 + D/2
//   registers). It walks the query blocks Q_i, dO_i of BM rows (double-buffered by cp.async;
//   lse_i, D_i carried through registers into smem): BM = 128 at D = 64, 64 at D = 128, FA3's
//   shapes, so S^T and dP^T take BM/2 registers each beside dK, dV's D. Per query block, keys as M:
//     S^T  = K_c Q_i^T                 m64n{BM}, A = K_j (K-major), B = Q_i (K-major), smem
//     dP^T = V_c dO_i^T                the same, issued before S^T is read so both run together
//     P^T  = exp2(S^T scale log2e - lse_i log2e), masked to 0 (edge tiles only)
//     dV_c += P^T dO_i                 m64n{D}, A = fp16(P^T) from registers, B = dO_i N-major;
//                                      it runs on while dS is computed
//     dS^T = P^T (dP^T - D_i)
//     dK_c += dS^T Q_i                 A = fp16(dS^T) from registers, B = Q_i N-major
//     dQ_i += dS K_j                   dS^T staged in smem as fp16 [key][query] (the dQ product
//                                      needs all 128 keys, i.e. both warpgroups' rows): m64n64
//                                      over the 128 keys, A = dS M-major (transpose bit), B = K_j
//                                      N-major; warpgroup c takes query rows 64c.. (D = 64) or d
//                                      columns 64c.. (D = 128). Added into the fp32 dq_acc by float2
//                                      atomics (sm_90), once per 128 keys (11's count).
// Registers, no spills: nvcc 13.0 255 (D = 128) and 245 (D = 64); NVRTC 255 and 243. What it took:
// the shared bases pass through opaque_u32 (else nvcc hoists every k-step's descriptor out of the
// query loop: 64 bytes of spills at D = 128); the masks are one integer bound per key row, compared
// with immediates (the first form, a full test per element, had the compiler park 64 predicates in
// registers at BM = 128: 92-208 bytes of spills, so D = 64 first ran with BM = 64).
// dK is scaled once at the end; dQ's scale is applied by attn_bwd_dq_convert (attention_tc.cu),
// which also runs after backward 11, as does its preprocessing pass attn_bwd_dot_tc.
//
// Shared memory (every tile 128-byte swizzled, D/64 or BM/64 column blocks of [rows][64], 1024-byte
// aligned): K_j, V_j [128][D]; 2 x Q_i, 2 x dO_i [BM][D]; dS^T [128][BM]; 2 x lse_i, D_i [BM] fp32.
// D = 64: 130 KiB, D = 128: 144.5 KiB (+1 KiB for the alignment); one CTA per SM (registers).
// Descriptors (conventions of forward 14 above and matmul_sm90.cu):
//   K-major X rows [r0, ..) of a [R][D] tile, k16 step kk: X + (kk/4) R 128 + r0 128 + (kk%4) 32,
//     SBO 1024 (8 rows).
//   N-major Y ([k][n] tile of R rows k, n = d), k16 step kk: Y + kk 2048, LBO = R 128 (the next
//     64-wide d block), SBO 1024 (8 k-rows).
// Compiled only for sm_90a (as forward 14).
template <int D, bool ATOMIC>
__global__ void __launch_bounds__(256, 1)
attn_bwd_wgmma(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
               const __half* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ Dd,
               __half* __restrict__ dk, __half* __restrict__ dv, float* __restrict__ dq_acc,
               const int* __restrict__ kv_lens, int H, int Lq, int Lk, int nkb, float scale, int causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(D == 64 || D == 128, "wgmma shapes: m64n{64,128}k16");
    constexpr int THREADS = 256, BN = 128, BM = D == 64 ? 128 : 64;
    constexpr int SN = BM / 2, AN = D / 2;  // accumulators per thread: S^T / dP^T, dK / dV
    constexpr int KV_BYTES = BN * D * 2, QO_BYTES = BM * D * 2, DS_BYTES = BN * BM * 2;
    const float NEG_INF = __int_as_float(0xff800000), POS_INF = __int_as_float(0x7f800000);

    extern __shared__ unsigned char smem_raw[];
    unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
    unsigned char* sK = smem;                       // KV_BYTES
    unsigned char* sV = sK + KV_BYTES;              // KV_BYTES
    unsigned char* sQ = sV + KV_BYTES;              // 2 x QO_BYTES
    unsigned char* sdO = sQ + 2 * QO_BYTES;         // 2 x QO_BYTES
    unsigned char* sdS = sdO + 2 * QO_BYTES;        // DS_BYTES: dS^T, [key][query]
    float* sL = reinterpret_cast<float*>(sdS + DS_BYTES);  // [2][BM] lse * log2e (+inf: no key)
    float* sD = sL + 2 * BM;                                // [2][BM] D_i

    const int tid = threadIdx.x, lane = tid % 32, w = (tid % 128) / 32;
    // The warpgroup index through a shuffle: the same value, but one the compiler knows is
    // warp-uniform, so the descriptors built from it live in uniform registers (CUTLASS's
    // canonical_warp_group_idx does the same).
    const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
    const int g = lane / 4, t = lane % 4;
    // Grid: x = key block * (B*H) + (b*H + h); with causal the first key blocks meet the most
    // query blocks, and they are launched first.
    const int bh_count = gridDim.x / nkb;
    const int jblk = blockIdx.x / bh_count, bhi = blockIdx.x % bh_count;
    const int b = bhi / H;
    const int n0 = jblk * BN;
    const int krow = wg * 64 + w * 16;  // this warp's first key within the block
    const size_t bh = bhi;
    q += bh * Lq * D;
    dout += bh * Lq * D;
    lse += bh * Lq;
    Dd += bh * Lq;
    if (ATOMIC) dq_acc += bh * Lq * D;  // (14 passes a placeholder it never touches)
    k += bh * Lk * D;
    v += bh * Lk * D;
    dk += bh * Lk * D;
    dv += bh * Lk * D;
    const float scale_log2 = scale * 1.4426950408889634f;

    const int kv_len = min(Lk, max(kv_lens[b], 0));
    // With causal, queries i < n0 see none of these keys: start at the query block holding n0.
    const int i_start = causal ? (n0 / BM) * BM : 0;
    const int nblocks = (n0 < kv_len && i_start < Lq) ? tfm_cdiv(Lq - i_start, BM) : 0;

    float dK[AN], dV[AN];
#pragma unroll
    for (int i = 0; i < AN; ++i) dK[i] = dV[i] = 0.f;

    // Registers that carry the next block's lse_i, D_i into smem (thread tid < BM owns row tid).
    float lse_next = 0.f, d_next = 0.f;
    auto fetch_rowstats = [&](int m0) {
        const int row = m0 + tid;
        if (tid < BM) {
            const float l = row < Lq ? lse[row] : NEG_INF;
            // No-key rows (lse = -inf) and padding rows get +inf: exp2(x - inf) = 0 exactly.
            lse_next = l == NEG_INF ? POS_INF : l * 1.4426950408889634f;
            d_next = row < Lq ? Dd[row] : 0.f;
        }
    };

    if (nblocks > 0) {
        sw128_load<BN, D, THREADS>(sK, k, n0, kv_len, tid);
        sw128_load<BN, D, THREADS>(sV, v, n0, kv_len, tid);
        sw128_load<BM, D, THREADS>(sQ, q, i_start, Lq, tid);
        sw128_load<BM, D, THREADS>(sdO, dout, i_start, Lq, tid);
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
        fence_proxy_async_smem();  // cp.async and st.shared wrote through the generic proxy
        // Q_i, dO_i, lse_i, D_i visible to every thread and to wgmma; the previous block's
        // wgmmas have all retired (wait<0> below), so its Q/dO buffer and sdS are free.
        __syncthreads();
        if (ib + 1 < nblocks) {
            sw128_load<BM, D, THREADS>(sQ + (buf ^ 1) * QO_BYTES, q, m0 + BM, Lq, tid);
            sw128_load<BM, D, THREADS>(sdO + (buf ^ 1) * QO_BYTES, dout, m0 + BM, Lq, tid);
            fetch_rowstats(m0 + BM);
        }
        cp_async_commit();
        // One descriptor per operand and block, stepped along k by immediates (wgmma_desc_advance).
        // The shared bases pass through opaque_u32 so that these are built here, per block: hoisted
        // out of the loop, every k-step's descriptor took registers of its own, and spilled.
        const uint32_t kA = opaque_u32(smem_u32(sK) + wg * 64 * 128), vA = opaque_u32(smem_u32(sV) + wg * 64 * 128);
        const uint32_t qB = opaque_u32(smem_u32(sQ + buf * QO_BYTES)), oB = opaque_u32(smem_u32(sdO + buf * QO_BYTES));
        const uint64_t K_k = wgmma_desc_sw128(kA, 16, 1024), V_k = wgmma_desc_sw128(vA, 16, 1024);  // K-major
        const uint64_t Q_k = wgmma_desc_sw128(qB, 16, 1024), dO_k = wgmma_desc_sw128(oB, 16, 1024);
        const uint64_t Q_n = wgmma_desc_sw128(qB, BM * 128, 1024), dO_n = wgmma_desc_sw128(oB, BM * 128, 1024);  // N-major
        const float* Li = sL + buf * BM;
        const float* Di = sD + buf * BM;

        // S^T = K_c Q_i^T, then dP^T = V_c dO_i^T: two groups in flight.
        float sT[SN], dpT[SN];
#pragma unroll
        for (int i = 0; i < SN; ++i) sT[i] = dpT[i] = 0.f;
#pragma unroll
        for (int i = 0; i < SN; ++i) {
            reg_fence(sT[i]);
            reg_fence(dpT[i]);
        }
        wgmma_fence();
        wgmma_ss_kmajor<BM, D, BN, BM>(sT, K_k, Q_k);
        wgmma_commit();
        wgmma_ss_kmajor<BM, D, BN, BM>(dpT, V_k, dO_k);
        wgmma_commit();
        wgmma_wait<1>();  // S^T has landed; dP^T may still run
#pragma unroll
        for (int i = 0; i < SN; ++i) reg_fence(sT[i]);

        // P^T = exp2(S^T scale log2e - lse_i log2e); masks only where this warp's 16 keys cross
        // kv_len or the diagonal. Accumulator element 4j + e: key krow + g + 8(e/2), query
        // 8j + 2t + e%2 of the block.
        const bool edge = (n0 + BN > kv_len) || (causal && n0 + krow + 15 > m0);
#pragma unroll
        for (int j = 0; j < BM / 8; ++j) {
            const float2 l2 = *reinterpret_cast<const float2*>(Li + 8 * j + 2 * t);  // queries qc, qc + 1
#pragma unroll
            for (int e = 0; e < 4; ++e)
                sT[4 * j + e] = exp2f(fmaf(sT[4 * j + e], scale_log2, -(e % 2 ? l2.y : l2.x)));
        }
        if (edge) {
            // Key row r (= e/2) is hidden from query column c = 8j + e%2 + 2t when the key is past
            // kv_len, or (causal) when c < key - m0: one integer bound per row, then each element's
            // test is against an immediate.
            int first[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int key = n0 + krow + g + 8 * r;
                first[r] = key >= kv_len ? BM : causal ? key - m0 - 2 * t : 0;
            }
#pragma unroll
            for (int j = 0; j < BM / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (8 * j + (e % 2) < first[e / 2]) sT[4 * j + e] = 0.f;
        }
        // fp16(P^T) as A fragments: the k16 slice kk (queries 16kk..) is n8 tiles 2kk, 2kk + 1 (the
        // forward's packing of P), all packed before the fence so no register a wgmma reads is
        // written between the wgmmas (ptxas would serialize them).
        uint32_t pa[BM / 16][4];
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
            for (int h = 0; h < 4; ++h) pa[kk][h] = pack_half2(sT[8 * kk + 2 * h], sT[8 * kk + 2 * h + 1]);
#pragma unroll
        for (int i = 0; i < AN; ++i) reg_fence(dV[i]);
        wgmma_fence();
        wgmma_rs_nmajor<D, BM / 16>(dV, pa, dO_n);  // dV_c += P^T dO_i
        wgmma_commit();
        wgmma_wait<1>();  // dP^T has landed; dV runs on while dS is computed
#pragma unroll
        for (int i = 0; i < SN; ++i) reg_fence(dpT[i]);

        // dS^T = P^T (dP^T - D_i), packed as A fragments for dK and staged for dQ.
        uint32_t dsa[BM / 16][4];
#pragma unroll
        for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
            for (int h = 0; h < 4; ++h) {
                const int i0 = 8 * kk + 2 * h;
                const float2 d2 = *reinterpret_cast<const float2*>(Di + 8 * (2 * kk + h / 2) + 2 * t);
                dsa[kk][h] = pack_half2(sT[i0] * (dpT[i0] - d2.x), sT[i0 + 1] * (dpT[i0 + 1] - d2.y));
            }
#pragma unroll
        for (int i = 0; i < AN; ++i) reg_fence(dK[i]);
        wgmma_fence();
        wgmma_rs_nmajor<D, BM / 16>(dK, dsa, Q_n);  // dK_c += dS^T Q_i
        wgmma_commit();
        // ATOMIC (13): dS^T to smem, [key][query] in BM/64 blocks of [128][64], swizzled: fragment
        // dsa[kk][h] holds keys krow + g + 8(h%2), queries 16kk + 8(h/2) + 2t, +1. A warp's 32
        // 4-byte stores hit 8 rows at 8 distinct 16-byte chunks: no bank conflict. Without it (14)
        // dQ is attn_bwd_dq_wgmma's, below, and this kernel ends its block here.
        if constexpr (ATOMIC) {
#pragma unroll
            for (int kk = 0; kk < BM / 16; ++kk)
#pragma unroll
                for (int h = 0; h < 4; ++h) {
                    const unsigned key = krow + g + 8 * (h % 2), qc = 16 * kk + 8 * (h / 2) + 2 * t;
                    const unsigned off = (qc / 64) * BN * 128 + key * 128 + ((((qc % 64) / 8) ^ (key % 8)) * 16) + (qc % 8) * 2;
                    *reinterpret_cast<uint32_t*>(sdS + off) = dsa[kk][h];
                }
            fence_proxy_async_smem();
            __syncthreads();  // both warpgroups' dS^T rows in place

            // dQ_i += dS K_j over the 128 keys, this warpgroup's 64 x 64 part.
            float dq[32];
#pragma unroll
            for (int i = 0; i < 32; ++i) dq[i] = 0.f;
#pragma unroll
            for (int i = 0; i < 32; ++i) reg_fence(dq[i]);
            wgmma_fence();
            const uint64_t dS_m =  // M-major, this warpgroup's query block at BM = 128
                wgmma_desc_sw128(opaque_u32(smem_u32(sdS) + (BM == 128 ? wg * BN * 128 : 0)), BN * 128, 1024);
            const uint64_t K_n =  // N-major, this warpgroup's d block
                wgmma_desc_sw128(opaque_u32(smem_u32(sK) + (D == 128 ? wg * BN * 128 : 0)), BN * 128, 1024);
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk)
                wgmma_m64n64k16_f16<1, 1>(dq, wgmma_desc_advance(dS_m, kk * 2048), wgmma_desc_advance(K_n, kk * 2048));
            wgmma_commit();
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < 32; ++i) reg_fence(dq[i]);
            const int dcol = (D == 128 ? wg * 64 : 0) + 2 * t;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int row = m0 + (BM == 128 ? wg * 64 : 0) + w * 16 + g + 8 * r;
                if (row >= Lq) continue;
                float* dst = dq_acc + (size_t)row * D + dcol;
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    atomicAdd(reinterpret_cast<float2*>(dst + 8 * j),
                              make_float2(dq[4 * j + 2 * r], dq[4 * j + 2 * r + 1]));
            }
        }  // ATOMIC
        // dK (and dQ) retired: every smem operand of this block is free after the next barrier.
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < AN; ++i) {
            reg_fence(dK[i]);
            reg_fence(dV[i]);
        }
    }
    cp_async_wait<0>();

    // Epilogue: dK_j = scale * dK_j, dV_j; keys >= kv_len came out 0 (their P was 0) and are written.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int key = n0 + krow + g + 8 * r;
        if (key >= Lk) continue;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
            *reinterpret_cast<uint32_t*>(dk + (size_t)key * D + 8 * j + 2 * t) =
                pack_half2(dK[4 * j + 2 * r] * scale, dK[4 * j + 2 * r + 1] * scale);
            *reinterpret_cast<uint32_t*>(dv + (size_t)key * D + 8 * j + 2 * t) =
                pack_half2(dV[4 * j + 2 * r], dV[4 * j + 2 * r + 1]);
        }
    }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

TFM_EXPORT(attn_bwd_wgmma<64, true>)
TFM_EXPORT(attn_bwd_wgmma<128, true>)
TFM_EXPORT(attn_bwd_wgmma<64, false>)
TFM_EXPORT(attn_bwd_wgmma<128, false>)

// ------------------------------------------------------------------------------------------------
// attention_backward 14's dQ, without atomics (backward 12's plan on warpgroup MMAs): CTA = 128
// query rows, 2 warpgroups x 64 (forward 14's shape); Q_i and dO_i loaded once, K_j / V_j
// double-buffered; dQ_i in fp32 accumulators, written once: the same bits every run. Per key block
// of BN keys (128 at D = 64, 64 at D = 128, so S, dP and dQ fit in 255 registers):
//   S  = Q_i K_j^T    m64n{BN}, A = Q_i, B = K_j, both K-major       (recomputed: 12's price)
//   dP = dO_i V_j^T   m64n{BN}, A = dO_i, B = V_j, both K-major      (recomputed)
//   P  = exp2(S scale log2e - lse_i log2e), masked; dS = P (dP - D_i)
//   dQ_i += dS K_j    m64n{D}, A = fp16(dS) from registers, B = K_j N-major
// dq = fp16(scale dQ_i). lse and D_i of this thread's two rows are read once into registers.
template <int D>
__global__ void __launch_bounds__(256, 1)
attn_bwd_dq_wgmma(const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
                  const __half* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ Dd,
                  __half* __restrict__ dq, const int* __restrict__ kv_lens, int H, int Lq, int Lk, int ntiles,
                  float scale, int causal) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(D == 64 || D == 128, "wgmma shapes: m64n{64,128}k16");
    constexpr int THREADS = 256, BM = 128, BN = D == 64 ? 128 : 64;
    constexpr int NT = BN / 8, DT = D / 8;
    constexpr int QO_BYTES = BM * D * 2, KV_BYTES = BN * D * 2;
    const float NEG_INF = __int_as_float(0xff800000), POS_INF = __int_as_float(0x7f800000);

    extern __shared__ unsigned char smem_raw[];
    unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
    unsigned char* sQ = smem;                  // QO_BYTES
    unsigned char* sdO = sQ + QO_BYTES;        // QO_BYTES
    unsigned char* sK = sdO + QO_BYTES;        // 2 x KV_BYTES
    unsigned char* sV = sK + 2 * KV_BYTES;     // 2 x KV_BYTES

    const int tid = threadIdx.x, lane = tid % 32, w = (tid % 128) / 32;
    const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
    const int g = lane / 4, t = lane % 4;
    const QueryTile qt = query_tile<BM, BN>(kv_lens, H, Lk, ntiles, causal);
    const int m0 = qt.m0, kv_len = qt.kv_len, nblocks = qt.nblocks;
    const int wrow = wg * 64 + w * 16;
    const size_t bh = qt.bhi;
    q += bh * Lq * D;
    dout += bh * Lq * D;
    dq += bh * Lq * D;
    lse += bh * Lq;
    Dd += bh * Lq;
    k += bh * Lk * D;
    v += bh * Lk * D;
    const float scale_log2 = scale * 1.4426950408889634f;

    // This thread's rows g, g + 8: lse in base 2 (+inf where no key is seen, or past Lq: P = 0).
    float L[2], Di[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = m0 + wrow + g + 8 * r;
        const float l = row < Lq ? lse[row] : NEG_INF;
        L[r] = l == NEG_INF ? POS_INF : l * 1.4426950408889634f;
        Di[r] = row < Lq ? Dd[row] : 0.f;
    }

    float acc[DT * 4];
#pragma unroll
    for (int i = 0; i < DT * 4; ++i) acc[i] = 0.f;
    if (nblocks > 0) {
        sw128_load<BM, D, THREADS>(sQ, q, m0, Lq, tid);
        sw128_load<BM, D, THREADS>(sdO, dout, m0, Lq, tid);
        sw128_load<BN, D, THREADS>(sK, k, 0, kv_len, tid);
        sw128_load<BN, D, THREADS>(sV, v, 0, kv_len, tid);
        cp_async_commit();
    }
    for (int jb = 0; jb < nblocks; ++jb) {
        const int buf = jb & 1, n0 = jb * BN;
        cp_async_wait<0>();
        fence_proxy_async_smem();
        __syncthreads();  // K_j, V_j visible; block j-1's wgmmas retired, its buffers free
        if (jb + 1 < nblocks) {
            sw128_load<BN, D, THREADS>(sK + (buf ^ 1) * KV_BYTES, k, n0 + BN, kv_len, tid);
            sw128_load<BN, D, THREADS>(sV + (buf ^ 1) * KV_BYTES, v, n0 + BN, kv_len, tid);
        }
        cp_async_commit();
        const uint64_t Q_k = wgmma_desc_sw128(opaque_u32(smem_u32(sQ) + wg * 64 * 128), 16, 1024);
        const uint64_t dO_k = wgmma_desc_sw128(opaque_u32(smem_u32(sdO) + wg * 64 * 128), 16, 1024);
        const uint32_t kb = opaque_u32(smem_u32(sK + buf * KV_BYTES));
        const uint64_t K_k = wgmma_desc_sw128(kb, 16, 1024), K_n = wgmma_desc_sw128(kb, BN * 128, 1024);
        const uint64_t V_k = wgmma_desc_sw128(opaque_u32(smem_u32(sV + buf * KV_BYTES)), 16, 1024);

        float s[NT * 4], dp[NT * 4];
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) s[i] = dp[i] = 0.f;
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) {
            reg_fence(s[i]);
            reg_fence(dp[i]);
        }
        wgmma_fence();
        wgmma_ss_kmajor<BN, D, BM, BN>(s, Q_k, K_k);  // S = Q_i K_j^T
        wgmma_commit();
        wgmma_ss_kmajor<BN, D, BM, BN>(dp, dO_k, V_k);  // dP = dO_i V_j^T
        wgmma_commit();
        wgmma_wait<1>();  // S has landed; dP runs on
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) reg_fence(s[i]);

        // P = exp2(S scale log2e - lse log2e), masked below each row's bound (as forward 14).
        int end[2];
        const bool edge = tile_key_bounds<BN>(end, m0 + wrow, n0, kv_len, causal, g, t);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[4 * nt + c] = exp2f(fmaf(s[4 * nt + c], scale_log2, -L[c / 2]));
        if (edge) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int c = 0; c < 4; ++c)
                    if (8 * nt + (c % 2) >= end[c / 2]) s[4 * nt + c] = 0.f;
        }
        wgmma_wait<0>();  // dP has landed
#pragma unroll
        for (int i = 0; i < NT * 4; ++i) reg_fence(dp[i]);

        // dS = P (dP - D_i), packed as A fragments (forward 14's packing of P), then dQ_i += dS K_j.
        uint32_t dsa[BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
            for (int h = 0; h < 4; ++h) {
                const int i0 = 8 * kk + 2 * h;
                dsa[kk][h] = pack_half2(s[i0] * (dp[i0] - Di[h % 2]), s[i0 + 1] * (dp[i0 + 1] - Di[h % 2]));
            }
#pragma unroll
        for (int i = 0; i < DT * 4; ++i) reg_fence(acc[i]);
        wgmma_fence();
        wgmma_rs_nmajor<D, BN / 16>(acc, dsa, K_n);
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int i = 0; i < DT * 4; ++i) reg_fence(acc[i]);
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = m0 + wrow + g + 8 * r;
        if (row >= Lq) continue;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt)
            *reinterpret_cast<uint32_t*>(dq + (size_t)row * D + dt * 8 + 2 * t) =
                pack_half2(acc[4 * dt + 2 * r] * scale, acc[4 * dt + 2 * r + 1] * scale);
    }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

TFM_EXPORT(attn_bwd_dq_wgmma<64>)
TFM_EXPORT(attn_bwd_dq_wgmma<128>)
