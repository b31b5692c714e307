// tfm-arch: sm_90a
// matmul_sm90.cu: fp16 matmul on Hopper tensor cores: wgmma fed by TMA, warp-specialised.
//
//   C[b] = op(A[b]) @ op(B[b]); fp16 in, fp32 accumulate, C fp16 or fp32 (variants 12 and 13 of op
//   `matmul`, launched by tfm_kernels/matmul_tc.py; the mma.sync rungs 10-11 are in matmul_tc.cu).
//
// Built only for sm_90a (the marker above: nvcc -gencode=arch=compute_90a,code=sm_90a, NVRTC
// -arch=sm_90a): wgmma and setmaxnreg do not exist on any other target. The kernel body is
// compiled only where __CUDA_ARCH_FEAT_SM90_ALL is defined; elsewhere it is empty.
//
// CTA: one 128 x BN tile of C (BN = 256), 3 warpgroups (384 threads):
//   warpgroup 0, the producer: gives its registers back (setmaxnreg 40); one thread loops over K
//     in steps of BK = 64, waits for a free stage (mbarrier `empty`), announces the stage's
//     48 KiB on mbarrier `full` (arrive.expect_tx) and issues the TMA loads
//     (cp.async.bulk.tensor.3d) of the A and B tiles into 128-byte-swizzled shared memory.
//   warpgroups 1 and 2, the consumers: take registers (setmaxnreg 232), each owns 64 rows of the
//     tile and 128 fp32 accumulators per thread; per stage: wait on `full`, issue 4 wgmma
//     m64n256k16 (one per k16), commit, and release the PREVIOUS stage once its wgmma group
//     retires (wait_group 1): one group stays in flight while the next stage's data arrives.
//   STAGES = 4 stages x (16 KiB A + 32 KiB B) = 192 KiB of the 227 KiB of shared memory.
//
// Tiles: tile t (of tiles_m x tiles_n x batch) goes to CTA t % gridDim.x. Variant 12 launches one
// CTA per tile; variant 13 launches one CTA per SM (persistent), which loops over its tiles with
// the stage ring still turning: while the consumers store tile i, the producer is already
// loading tile i+1's first stages, so the pipeline never drains between tiles.
//
// Shared-memory layouts (what TMA writes with CU_TENSOR_MAP_SWIZZLE_128B and what the wgmma
// descriptors describe; all atoms 1024-byte aligned):
//   A, K-major (not trans_a): one box {64 k, 128 m}: 128 rows of 128 bytes; consumer c starts at
//     row 64c (+8 KiB). Descriptor: SBO 1024 (8 rows), k16 step +32 bytes.
//   A, M-major (trans_a, A stored K x M): two boxes {64 m, 64 k} at +0 / +8 KiB, one per consumer:
//     64 k-rows of 128 bytes (64 m). Descriptor transposed: SBO 1024 (8 k-rows), k16 step +2048.
//   B, K-major (trans_b, B stored N x K): one box {64 k, 256 n}: 256 rows of 128 bytes.
//   B, N-major (B stored K x N): four boxes {64 n, 64 k} at +0/8/16/24 KiB; descriptor
//     transposed: LBO 8 KiB (next 64 n), SBO 1024, k16 step +2048.
// Every global tensor is described as 3-D (inner, outer, batch) so a K tile that runs past K reads
// TMA's zero fill, never the next batch entry. TMA needs 16-byte global strides: the stored rows
// (K or M for A, N or K for B) must be multiples of 8 halves; tfm_kernels refuses other shapes
// for this variant with that reason.
//
// Tile order: consecutive tiles walk M-tiles in groups of 8 per N-column (Triton's grouped
// ordering), so the CTAs running together share 8 A row-blocks and few B column-blocks in L2.
#include <cuda_fp16.h>

#include "common.cuh"
#include "mma.cuh"

template <int BN, int STAGES, bool TRANS_A, bool TRANS_B, typename OutT>
__global__ void __launch_bounds__(384, 1)
matmul_wgmma(const __grid_constant__ TmaDesc tma_a, const __grid_constant__ TmaDesc tma_b,
             OutT* __restrict__ C, int M, int N, int K, int batch, int64_t ldc, int64_t sc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr int BM = 128, BK = 64, GROUP_M = 8;
    constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    constexpr int BOX = 64 * BK * 2;  // one {64, 64} box: 8 KiB
    static_assert(BN == 256, "the consumer issues m64n256k16");

    // Swizzle atoms must be 1024-byte aligned; dynamic shared memory is only guaranteed 16.
    extern __shared__ unsigned char smem_raw[];
    unsigned char* smem = smem_raw + ((1024u - (smem_u32(smem_raw) & 1023u)) & 1023u);
    unsigned char* sA = smem;
    unsigned char* sB = smem + STAGES * A_BYTES;
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * STAGE_BYTES);
    uint64_t* empty = full + STAGES;

    const int tiles_m = tfm_cdiv(M, BM), tiles_n = tfm_cdiv(N, BN);
    const int tiles_mn = tiles_m * tiles_n, tiles = tiles_mn * batch;
    const int KT = tfm_cdiv(K, BK);

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(&full[s], 1);   // the producer's arrive.expect_tx (+ the TMA bytes)
            mbar_init(&empty[s], 2);  // one arrival per consumer warpgroup
        }
        mbar_fence_init();
    }
    __syncthreads();

    // Tile t of this CTA: batch entry z, then grouped order over the (tiles_m x tiles_n) grid.
    auto tile_coords = [&](int t, int& bm0, int& bn0, int& z) {
        z = t / tiles_mn;
        const int pid = t % tiles_mn;
        const int first_m = (pid / (GROUP_M * tiles_n)) * GROUP_M;
        const int group_rows = min(tiles_m - first_m, GROUP_M);
        const int in_group = pid % (GROUP_M * tiles_n);
        bm0 = (first_m + in_group % group_rows) * BM;
        bn0 = (in_group / group_rows) * BN;
    };

    // Stage/phase bookkeeping runs on `it`, the CTA's k-block count across all its tiles, so a
    // persistent CTA (gridDim.x < tiles) keeps the ring turning from one tile into the next.
    const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
    if (wg == 0) {
        // ------------------------------------------------------------------ producer
        setmaxnreg_dec<40>();
        if (tid == 0) {
            tma_prefetch_desc(&tma_a);
            tma_prefetch_desc(&tma_b);
            int it = 0;
            for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
                int bm0, bn0, z;
                tile_coords(t, bm0, bn0, z);
                for (int kt = 0; kt < KT; ++kt, ++it) {
                    const int s = it % STAGES;
                    mbar_wait(&empty[s], ((it / STAGES) & 1) ^ 1);  // round 0 passes at once
                    mbar_arrive_expect_tx(&full[s], STAGE_BYTES);
                    unsigned char* a = sA + s * A_BYTES;
                    unsigned char* b = sB + s * B_BYTES;
                    const int k0 = kt * BK;
                    if (TRANS_A) {
                        tma_load_3d(a, &tma_a, &full[s], bm0, k0, z);
                        tma_load_3d(a + BOX, &tma_a, &full[s], bm0 + 64, k0, z);
                    } else {
                        tma_load_3d(a, &tma_a, &full[s], k0, bm0, z);
                    }
                    if (TRANS_B) {
                        tma_load_3d(b, &tma_b, &full[s], k0, bn0, z);
                    } else {
#pragma unroll
                        for (int i = 0; i < BN / 64; ++i)
                            tma_load_3d(b + i * BOX, &tma_b, &full[s], bn0 + 64 * i, k0, z);
                    }
                }
            }
        }
    } else {
        // ------------------------------------------------------------------ consumers
        setmaxnreg_inc<232>();
        const int c = wg - 1;  // rows 64c .. 64c+63 of the tile
        const int lane = tid & 31, w = tid >> 5;
        float acc[BN / 2];
        int it = 0;
        for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
            int bm0, bn0, z;
            tile_coords(t, bm0, bn0, z);
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;

            for (int kt = 0; kt < KT; ++kt, ++it) {
                const int s = it % STAGES;
                mbar_wait(&full[s], (it / STAGES) & 1);
                const uint32_t a0 = smem_u32(sA + s * A_BYTES + c * BOX);
                const uint32_t b0 = smem_u32(sB + s * B_BYTES);
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(acc[i]);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < BK / 16; ++kk) {
                    const uint64_t da = TRANS_A ? wgmma_desc_sw128(a0 + kk * 2048, BOX, 1024)
                                                : wgmma_desc_sw128(a0 + kk * 32, 16, 1024);
                    const uint64_t db = TRANS_B ? wgmma_desc_sw128(b0 + kk * 32, 16, 1024)
                                                : wgmma_desc_sw128(b0 + kk * 2048, BOX, 1024);
                    wgmma_m64n256k16_f16<TRANS_A ? 1 : 0, TRANS_B ? 0 : 1>(acc, da, db);
                }
                wgmma_commit();
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(acc[i]);
                // The group issued for the previous k-block has retired: its stage can be refilled.
                wgmma_wait<1>();
                if (kt > 0 && tid == 0) mbar_arrive(&empty[(it - 1) % STAGES]);
            }
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) reg_fence(acc[i]);
            // The tile's last stage; the producer may already be filling the next tile's stages,
            // which is the overlap a persistent CTA buys (loads during this epilogue).
            if (tid == 0) mbar_arrive(&empty[(it - 1) % STAGES]);

            // Epilogue: warp w of this warpgroup holds rows 16w + g and 16w + g + 8 (g = lane/4),
            // columns 8j + 2t, +1 (t = lane%4) in acc[4j .. 4j+3].
            OutT* Cz = C + z * sc;
            const bool pair_ok = (ldc % 2 == 0) &&
                                 (reinterpret_cast<unsigned long long>(Cz) % (2 * sizeof(OutT)) == 0);
            const int row = bm0 + c * 64 + w * 16 + (lane >> 2);
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
                const int col = bn0 + 8 * j + 2 * (lane & 3);
                store_pair(Cz, ldc, row, col, M, N, pair_ok, acc[4 * j], acc[4 * j + 1]);
                store_pair(Cz, ldc, row + 8, col, M, N, pair_ok, acc[4 * j + 2], acc[4 * j + 3]);
            }
        }
    }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// Exports: layout (TRANS_A, TRANS_B) x output dtype; names built by tfm_kernels/matmul_tc.py.
TFM_EXPORT(matmul_wgmma<256, 4, false, false, float>)
TFM_EXPORT(matmul_wgmma<256, 4, false, true, float>)
TFM_EXPORT(matmul_wgmma<256, 4, true, false, float>)
TFM_EXPORT(matmul_wgmma<256, 4, true, true, float>)
TFM_EXPORT(matmul_wgmma<256, 4, false, false, __half>)
TFM_EXPORT(matmul_wgmma<256, 4, false, true, __half>)
TFM_EXPORT(matmul_wgmma<256, 4, true, false, __half>)
TFM_EXPORT(matmul_wgmma<256, 4, true, true, __half>)
