// cuda_host.h: just enough of CUDA, on the CPU, to run this project's kernel sources as written.
//
// tests/_emulate_cuda.py compiles a csrc/*.cu file with g++ after this header, so a kernel's own
// index maps, edge guards, barriers, shuffles, ldmatrix/mma fragments and cp.async pipelines are
// checked against numpy_ref on a machine without a GPU. How it runs a launch:
//   * One CTA at a time (one cluster of CTAs at a time for __cluster_dims__ kernels), blocks in
//     (z, y, x) order. Each CUDA thread is a fiber (ucontext) with its own stack, all on the calling
//     OS thread: deterministic, and a switch costs no kernel thread.
//   * A fiber runs until it reaches a barrier (__syncthreads, a cluster barrier) or a warp collective
//     (shuffle, ldmatrix, mma.sync, __syncwarp). The scheduler takes one warp at a time and runs it
//     as far as it goes: its lanes in turn until each waits; a collective all its lanes reached is
//     computed for the 32 at once (as the hardware does: ldmatrix reads shared memory as one
//     warp-wide access) and the warp goes on, until every lane waits at a CTA barrier or has
//     exited. Then the next warp. When no warp can move, CTA and cluster barriers whose live
//     threads have all arrived are released. So the order matters only where a kernel lacks a
//     barrier: the tests run every launch in both orders (first warp and lane first, then last
//     first), and a missing barrier between a write and another thread's read, or before another
//     warp overwrites what a slower one still reads, shows in one of them.
//   * Shared memory: one arena per CTA, poisoned with 0xff bytes (NaN in fp32 and fp16) before every
//     CTA. Dynamic shared memory (the launch's smem bytes) starts at offset 0 and is followed by a
//     canary that must survive the CTA; static __shared__ arrays are carved after it on first use.
//     More than 227 KiB in all fails the launch, as on an H100/H200. smem_u32-style 32-bit
//     addresses (what ldmatrix and cp.async take) are offsets into the arena, bounds-checked.
//   * cp.async copies land as late or as early as a GPU may land them: in the reverse order only at
//     the cp.async.wait_group that retires their group, so a read before the wait sees poison; in
//     the forward order at once, so a copy into a buffer that is still being read (by another
//     warp, or by an in-flight wgmma) overwrites it early and shows.
//   * Global memory is the caller's: a buffer placed between inaccessible pages (_emulate_cuda.py
//     `guarded`) turns an access past its end into a reported fault (SegvGuard, below).
//   * Failures (deadlock, divergent warp collective, a collective with exited lanes, a shared
//     address out of range, a guarded buffer overrun, a parameter of the wrong size, launch limits)
//     stop the launch and come back to Python as a message; nothing aborts the process.
// Not emulated: global-memory races between CTAs (one CTA runs at a time), memory-model subtleties
// below a barrier (proxy fences included), warp-synchronous code without *_sync, cluster
// multicast, timing. The Hopper part (mbarrier, TMA, wgmma) is described where it is defined.
#pragma once

#include <signal.h>
#include <ucontext.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_fp16.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __cluster_dims__(...)
#define __grid_constant__

using std::max;
using std::min;

struct emu_uint3 { unsigned x = 0, y = 0, z = 0; };
inline emu_uint3 threadIdx, blockIdx, blockDim, gridDim;

// ------------------------------------------------------------------------------ vector types
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float2 __half22float2(__half2 h) { return {static_cast<float>(h.x), static_cast<float>(h.y)}; }

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

namespace emu {

constexpr std::size_t kSmemMax = 227 * 1024;   // per-CTA opt-in maximum on sm_90
constexpr std::size_t kCanary = 256;           // bytes after the dynamic region that must survive
constexpr std::size_t kArena = kSmemMax + kCanary;
constexpr int kMaxCluster = 8;
constexpr std::size_t kStack = 256 * 1024;
constexpr unsigned char kCanaryByte = 0xa5;

enum class Wait { none, cta, warp, cluster, group, poll };

// A warp collective's completion: every lane's input (in[lane]) to every lane's output
// (out[lane]), run once when the whole warp has arrived. Returns an error message or nullptr.
using Complete = const char* (*)(const unsigned char (*in)[48], unsigned char (*out)[16], int arg);

struct Fiber {
    ucontext_t ctx;
    unsigned char* stack = nullptr;
    emu_uint3 tid;
    int cta = 0, lane = 0, warp = 0;
    bool done = false;
    Wait wait = Wait::none;
    Complete fn = nullptr;
    int arg = 0;
    bool wg_fenced = false;  // a wgmma.fence since this thread's last wgmma.wait_group (or its start)
    bool regs_wait = false;  // polling in setmaxnreg.inc for registers the CTA's pool does not have
    struct Copy { unsigned char* dst; unsigned char bytes[16]; int n; };
    std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
    std::vector<Copy> open;                 // issued since the last commit
};

struct Warp {
    unsigned parity = 0;
    alignas(16) unsigned char in[2][32][48];
    alignas(16) unsigned char out[2][32][16];
};

struct Static { const void* fn; int line; std::size_t off; };

struct Cta {
    unsigned char* smem = nullptr;
    unsigned char* view = nullptr;  // shared memory as the async proxy (wgmma, TMA) sees it
    std::size_t dyn = 0, used = 0;  // dynamic bytes; end of the static allocations
    std::vector<Static> statics;
    std::vector<Warp> warps;
    emu_uint3 bid;
    // setmaxnreg: the CTA's register pool (the kernel's count x its threads, per warp in steps of
    // 8; 0 = count unknown, not checked) and each warpgroup's current per-thread count
    unsigned pool = 0;
    std::vector<unsigned> wg_regs;
};

struct State {
    std::vector<Fiber> fibers;  // the current cluster's threads, CTA by CTA
    Cta ctas[kMaxCluster];
    int ncta = 1;
    unsigned nthreads = 0;      // per CTA
    Fiber* cur = nullptr;
    ucontext_t sched;
    bool failed = false;
    std::string err;
    std::function<void()> body;
    std::vector<unsigned char*> stacks;
    long long ldsm_phases[9] = {};  // ldmatrix 8-row phases by bank groups touched (1..8)
    bool land_late = false;  // TMA bytes and cp.async copies land at their wait (reverse order) or at once
    long long progress = 0;     // anything that changed: a deadlock is a round that changes nothing
    alignas(1024) unsigned char arena[kMaxCluster][kArena];
    // What the async proxy sees of each arena: TMA writes land in both; generic writes (st.shared,
    // cp.async) reach it only at a fence.proxy.async. A wgmma operand that differs between the two
    // was written through the generic proxy and never fenced.
    alignas(1024) unsigned char async_view[kMaxCluster][kArena];
};
inline State* S = new State;  // never freed: fibers' stacks may outlive a failed launch

inline std::string format(const char* fmt, va_list ap) {
    char buf[1024];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    return buf;
}

inline std::string where() {
    if (!S->cur) return "";
    const Fiber& f = *S->cur;
    const Cta& c = S->ctas[f.cta];
    char buf[160];
    std::snprintf(buf, sizeof buf, " (block (%u,%u,%u), thread (%u,%u,%u))", c.bid.x, c.bid.y, c.bid.z,
                  f.tid.x, f.tid.y, f.tid.z);
    return buf;
}

// Stop the launch from inside a kernel: back to the scheduler, never to return.
[[noreturn]] inline void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    S->err = format(fmt, ap) + where();
    va_end(ap);
    S->failed = true;
    Fiber* f = S->cur;
    swapcontext(&f->ctx, &S->sched);
    __builtin_unreachable();
}

inline void yield(Wait w) {
    Fiber* f = S->cur;
    f->wait = w;
    if (w != Wait::poll) ++S->progress;
    swapcontext(&f->ctx, &S->sched);
}

// ------------------------------------------------------------------------------ shared memory
inline Cta& cta() { return S->ctas[S->cur->cta]; }

inline void* dynamic_smem() { return cta().smem; }

// A function-scope `__shared__ T name[count]` (tests/_emulate_cuda.py rewrites the declaration to
// this call): one allocation per CTA per declaration, keyed by the enclosing function's
// __PRETTY_FUNCTION__ (distinct per template instantiation) and the line.
template <typename T>
inline T* static_smem(const char* fn, int line, std::size_t count) {
    Cta& c = cta();
    for (const Static& s : c.statics)
        if (s.fn == fn && s.line == line) return reinterpret_cast<T*>(c.smem + s.off);
    const std::size_t off = (c.used + 127) & ~std::size_t(127);
    const std::size_t bytes = sizeof(T) * count;
    if (off + bytes - kCanary > kSmemMax)
        fail("__shared__ at line %d: %zu bytes of dynamic + static shared memory exceed 227 KiB", line,
             off + bytes - kCanary);
    c.used = off + bytes;
    c.statics.push_back({fn, line, off});
    return reinterpret_cast<T*>(c.smem + off);
}

// What __cvta_generic_to_shared gives: the offset in this CTA's shared window.
inline std::size_t shared_offset(const void* p) {
    const unsigned char* b = static_cast<const unsigned char*>(p);
    Cta& c = cta();
    if (b < c.smem || b >= c.smem + c.used) fail("__cvta_generic_to_shared of %p: not this CTA's shared memory", p);
    return static_cast<std::size_t>(b - c.smem);
}

// The bytes at a 32-bit shared address, checked: inside the CTA's allocation, not in the canary
// after the dynamic region, aligned to `align`.
inline unsigned char* shared_at(const Cta& c, uint32_t a, std::size_t n, std::size_t align) {
    if (a % align) return nullptr;
    if (a + n > c.used || (a < c.dyn + kCanary && a + n > c.dyn)) return nullptr;
    return c.smem + a;
}

// ------------------------------------------------------------------------------ warp collectives
template <typename Out, typename In>
inline Out collective(Complete fn, int arg, const In& in) {
    static_assert(sizeof(In) <= 48 && sizeof(Out) <= 16, "collective slot sizes");
    Fiber* f = S->cur;
    Warp& w = cta().warps[f->warp];
    const unsigned p = w.parity;
    std::memcpy(w.in[p][f->lane], &in, sizeof(In));
    f->fn = fn;
    f->arg = arg;
    yield(Wait::warp);
    Out out;
    std::memcpy(&out, w.out[p][f->lane], sizeof(Out));
    return out;
}

struct ShflIn { uint64_t bits; int src; };

inline const char* complete_shfl(const unsigned char (*in)[48], unsigned char (*out)[16], int) {
    for (int l = 0; l < 32; ++l) {
        ShflIn s;
        std::memcpy(&s, in[l], sizeof s);
        ShflIn t;
        std::memcpy(&t, in[s.src], sizeof t);
        std::memcpy(out[l], &t.bits, 8);
    }
    return nullptr;
}

inline const char* complete_nothing(const unsigned char (*)[48], unsigned char (*)[16], int) { return nullptr; }

template <typename T>
inline T shfl(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    if (mask != 0xffffffffu) fail("shuffle with mask %#x: only full-warp shuffles are emulated", mask);
    ShflIn s{0, src};
    std::memcpy(&s.bits, &v, sizeof(T));
    const uint64_t r = collective<uint64_t>(complete_shfl, 0, s);
    T out;
    std::memcpy(&out, &r, sizeof(T));
    return out;
}

inline int lane() { return S->cur->lane; }

}  // namespace emu

// ------------------------------------------------------------------------------ CUDA intrinsics
inline void __syncthreads() { emu::yield(emu::Wait::cta); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu::fail("__syncwarp with mask %#x: only the full warp is emulated", mask);
    emu::collective<int>(emu::complete_nothing, 0, 0);
}
inline void __threadfence_block() {}
inline void __threadfence() {}
[[noreturn]] inline void __trap() { emu::fail("__trap()"); }
inline long long clock64() { static long long t = 0; return ++t; }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int l = emu::lane();
    const int src = l ^ lane_mask;
    return emu::shfl(mask, v, (src & ~(width - 1)) == (l & ~(width - 1)) ? src : l);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const int l = emu::lane();
    return emu::shfl(mask, v, (l & ~(width - 1)) + (src_lane & (width - 1)));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int l = emu::lane();
    const int src = l + static_cast<int>(delta);
    return emu::shfl(mask, v, (src & ~(width - 1)) == (l & ~(width - 1)) ? src : l);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int l = emu::lane();
    const int src = l - static_cast<int>(delta);
    return emu::shfl(mask, v, src >= (l & ~(width - 1)) ? src : l);
}

// One CTA runs at a time and its threads never interleave inside a statement, so a plain
// read-modify-write is atomic here.
inline float atomicAdd(float* p, float v) { const float o = *p; *p = o + v; return o; }
inline int atomicAdd(int* p, int v) { const int o = *p; *p = o + v; return o; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { const unsigned o = *p; *p = o + v; return o; }
inline float2 atomicAdd(float2* p, float2 v) {
    const float2 o = *p;
    *p = make_float2(o.x + v.x, o.y + v.y);
    return o;
}
inline float4 atomicAdd(float4* p, float4 v) {
    const float4 o = *p;
    *p = make_float4(o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w);
    return o;
}

inline std::size_t __cvta_generic_to_shared(const void* p) { return emu::shared_offset(p); }

// ------------------------------------------------------------------------------ thread-block clusters
// (csrc/softmax.cu declares its own device versions under __CUDACC__; these stand in for them.)
inline unsigned cluster_ctarank() { return static_cast<unsigned>(emu::S->cur->cta); }
inline void cluster_sync() { emu::yield(emu::Wait::cluster); }
inline void cluster_sync_relaxed() { emu::yield(emu::Wait::cluster); }
template <typename P>
inline const P* cluster_map(const P* p, unsigned rank) {
    const std::size_t off = emu::shared_offset(p);
    if (rank >= static_cast<unsigned>(emu::S->ncta)) emu::fail("cluster_map to rank %u of a %d-CTA cluster", rank, emu::S->ncta);
    return reinterpret_cast<const P*>(emu::S->ctas[rank].smem + off);
}
template <typename S_>
inline S_& cta_shared() {
    return *emu::static_smem<S_>(__PRETTY_FUNCTION__, __LINE__, 1);
}

// ------------------------------------------------------------------------------ tensor-core and copy
// The inline-PTX helpers of csrc/mma.cuh and csrc/matmul.cu (theirs are compiled under __CUDACC__
// only). Fragment layouts as the PTX ISA states them (mma.cuh's header comment); g = lane/4,
// t = lane%4.
namespace emu {

inline float half_bits_to_float(uint16_t b) {
    _Float16 h;
    std::memcpy(&h, &b, 2);
    return static_cast<float>(h);
}

// ldmatrix .x1/.x2/.x4 [.trans]: lanes 8j..8j+7 give the row addresses of matrix j (16 bytes each,
// 16-byte aligned). arg = nmat * 2 + trans.
inline const char* complete_ldmatrix(const unsigned char (*in)[48], unsigned char (*out)[16], int arg) {
    const int nmat = arg / 2;
    const bool trans = arg & 1;
    const Cta& c = S->ctas[S->cur ? S->cur->cta : 0];
    unsigned char* row[32];
    for (int l = 0; l < 8 * nmat; ++l) {
        uint32_t a;
        std::memcpy(&a, in[l], 4);
        row[l] = shared_at(c, a, 16, 16);
        if (!row[l]) return "ldmatrix: a row address out of the CTA's shared memory or not 16-byte aligned";
    }
    for (int j = 0; j < nmat; ++j) {  // bank groups: how many of the 8 16-byte groups of banks
        unsigned seen = 0;               // this 8-row phase touches (8: one wavefront, no conflict)
        for (int r = 0; r < 8; ++r) {
            uint32_t a;
            std::memcpy(&a, in[8 * j + r], 4);
            seen |= 1u << ((a / 16) % 8);
        }
        ++S->ldsm_phases[__builtin_popcount(seen)];
    }
    for (int l = 0; l < 32; ++l) {
        for (int j = 0; j < nmat; ++j) {
            uint32_t r;
            if (!trans) {
                std::memcpy(&r, row[8 * j + l / 4] + 4 * (l % 4), 4);
            } else {
                uint16_t lo, hi;
                std::memcpy(&lo, row[8 * j + 2 * (l % 4)] + 2 * (l / 4), 2);
                std::memcpy(&hi, row[8 * j + 2 * (l % 4) + 1] + 2 * (l / 4), 2);
                r = lo | (static_cast<uint32_t>(hi) << 16);
            }
            std::memcpy(out[l] + 4 * j, &r, 4);
        }
    }
    return nullptr;
}

template <int N>
inline void ldmatrix(uint32_t (&r)[N], uint32_t addr, bool trans) {
    struct R { uint32_t v[4]; };
    const R out = collective<R>(complete_ldmatrix, N * 2 + (trans ? 1 : 0), addr);
    for (int j = 0; j < N; ++j) r[j] = out.v[j];
}

struct MmaIn { uint32_t a[4], b[2]; float c[4]; };

// mma.sync m16n8k16 f16 (arg 0) or m16n8k8 tf32 (arg 1), fp32 accumulate: the products are exact in
// fp32; they are summed in k order onto C.
inline const char* complete_mma(const unsigned char (*in)[48], unsigned char (*out)[16], int tf32) {
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        MmaIn m;
        std::memcpy(&m, in[l], sizeof m);
        const int g = l / 4, t = l % 4;
        if (!tf32) {
            for (int i = 0; i < 4; ++i) {
                const int r = g + 8 * (i % 2), k = 2 * t + 8 * (i / 2);
                A[r][k] = half_bits_to_float(m.a[i] & 0xffff);
                A[r][k + 1] = half_bits_to_float(m.a[i] >> 16);
            }
            for (int i = 0; i < 2; ++i) {
                B[2 * t + 8 * i][g] = half_bits_to_float(m.b[i] & 0xffff);
                B[2 * t + 8 * i + 1][g] = half_bits_to_float(m.b[i] >> 16);
            }
        } else {
            for (int i = 0; i < 4; ++i) std::memcpy(&A[g + 8 * (i % 2)][t + 4 * (i / 2)], &m.a[i], 4);
            for (int i = 0; i < 2; ++i) std::memcpy(&B[t + 4 * i][g], &m.b[i], 4);
        }
        C[g][2 * t] = m.c[0];
        C[g][2 * t + 1] = m.c[1];
        C[g + 8][2 * t] = m.c[2];
        C[g + 8][2 * t + 1] = m.c[3];
    }
    const int K = tf32 ? 8 : 16;
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        float d[4];
        for (int i = 0; i < 4; ++i) {
            const int r = g + 8 * (i / 2), n = 2 * t + i % 2;
            float s = C[r][n];
            for (int k = 0; k < K; ++k) s += A[r][k] * B[k][n];
            d[i] = s;
        }
        std::memcpy(out[l], d, 16);
    }
    return nullptr;
}

inline void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], int tf32) {
    MmaIn m;
    std::memcpy(m.a, a, 16);
    std::memcpy(m.b, b, 8);
    std::memcpy(m.c, d, 16);
    struct D { float v[4]; };
    const D r = collective<D>(complete_mma, tf32, m);
    std::memcpy(d, r.v, 16);
}

// cp.async: snapshot the source now (or zeros for a false predicate), land at the wait.
inline void cp_async(uint32_t smem, const void* gmem, int n, bool pred) {
    unsigned char* dst = shared_at(cta(), smem, n, n);
    if (!dst) fail("cp.async of %d bytes to shared address %u: out of the CTA's shared memory or misaligned", n, smem);
    Fiber::Copy c{dst, {}, n};
    if (pred) {
        if (reinterpret_cast<uintptr_t>(gmem) % n) fail("cp.async of %d bytes from a misaligned global address %p", n, gmem);
        std::memcpy(c.bytes, gmem, n);
    }
    if (S->land_late) S->cur->open.push_back(c);  // reverse order: lands at its wait (the latest)
    else std::memcpy(c.dst, c.bytes, n);             // forward order: lands at once (the earliest)
}

}  // namespace emu

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix(r, addr, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) { emu::ldmatrix(r, addr, true); }
inline void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) { emu::ldmatrix(r, addr, false); }
inline void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) { emu::ldmatrix(r, addr, true); }
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { emu::mma(d, a, b, 0); }
inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { emu::mma(d, a, b, 1); }
inline void cp_async_16(uint32_t smem, const void* gmem, bool pred) { emu::cp_async(smem, gmem, 16, pred); }
inline void cp_async_4(uint32_t smem, const void* gmem, bool pred) { emu::cp_async(smem, gmem, 4, pred); }
inline void cp_async_commit() {
    emu::Fiber* f = emu::S->cur;
    f->groups.push_back(std::move(f->open));
    f->open.clear();
}
template <int N>
inline void cp_async_wait() {
    emu::Fiber* f = emu::S->cur;
    while (f->groups.size() > static_cast<std::size_t>(N)) {
        for (const auto& c : f->groups.front()) std::memcpy(c.dst, c.bytes, c.n);
        f->groups.erase(f->groups.begin());
    }
}
// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero (the result is an fp32 bit
// pattern with the low 13 bits clear). Inf and NaN pass through.
inline uint32_t to_tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;
    return u;
}
// cvt.rn.f16x2.f32: low half = lo.
inline uint32_t pack_half2(float lo, float hi) {
    const _Float16 l = static_cast<_Float16>(lo), h = static_cast<_Float16>(hi);
    uint16_t a, b;
    std::memcpy(&a, &l, 2);
    std::memcpy(&b, &h, 2);
    return a | (static_cast<uint32_t>(b) << 16);
}


// ------------------------------------------------------------------------------ Hopper (sm_90a)
// mbarrier, TMA and wgmma, for the sm_90a sources (built with __CUDA_ARCH_FEAT_SM90_ALL defined;
// mma.cuh's inline-PTX versions are compiled under __CUDACC__ only).
//   * An mbarrier lives in a side table keyed by its shared address (init count, pending arrivals,
//     transaction bytes, phase). mbar_wait polls: the thread yields and is retried on the next
//     round; a round in which nothing anywhere changes is a deadlock.
//   * TMA (tma_load_3d) decodes the emulator's own descriptor (tests/_emulate_cuda.py
//     tma_descriptor: the CUtensorMap is opaque, the driver's encoder needs a GPU), gathers the
//     box with zero fill outside the tensor, 128-byte swizzled by address bits as the hardware
//     does. In the forward order the bytes land at once; in the reverse order they land only when
//     a thread waits on the barrier with every arrival in (the latest they may), so a read before
//     the wait sees poison, and (forward) a stage refilled while a wgmma may still read it is
//     overwritten early.
//   * wgmma is a warpgroup collective (128 threads). Its shared-memory operands are read when it
//     issues and again at the wgmma.wait_group that retires its group, and must not differ (the
//     hardware may read them at any time in between); it is computed at that wait. So a write by
//     another warpgroup that no barrier orders before the issue, and a stage released (and
//     overwritten) before the retiring wait, both fail. Descriptors follow the 128-byte-swizzle canonical layouts
//     (mma.cuh wgmma_desc_sw128): K-major element (r, k) at start + (r/8) SBO + (r%8) 128 + 2k;
//     MN-major (mn, k) at start + 2 (mn%64) + (mn/64) LBO + (k%8) 128 + (k/8) SBO; then the
//     address swizzle. The accumulator is the mma.sync C layout repeated along N, warp w owning
//     rows 16w..16w+15; a register A operand is the mma.sync A layout of the same rows.
//   * Proxies: wgmma and TMA use the async proxy, st.shared and cp.async the generic proxy. Each
//     CTA's arena has a second copy (State::async_view), what the async proxy sees: TMA writes land
//     in both, generic writes reach it at a fence.proxy.async. A wgmma whose operands differ
//     between the two read generic writes never fenced, and fails at issue. Likewise a TMA load may
//     only signal an mbarrier whose init a fence.mbarrier_init has followed, and a wgmma may only
//     issue after a wgmma.fence by its thread since that thread's last wgmma.wait_group.
namespace emu {

struct EmuTma {  // the 128 bytes tests/_emulate_cuda.py tma_descriptor packs
    uint64_t magic, base;
    uint64_t dims[3];     // innermost first, elements
    uint64_t strides[2];  // bytes, of dims 1 and 2
    uint32_t box[2];      // inner, outer (elements)
    uint32_t elem, swizzle;
    uint64_t pad[7];
};
static_assert(sizeof(EmuTma) == 128, "TmaDesc is 128 bytes");
constexpr uint64_t kTmaMagic = 0x54464d2d544d4131ull;  // "TFM-TMA1"

struct Mbar {
    bool fenced = false;  // a fence.mbarrier_init since its init: the async proxy (TMA) may use it
    int count = 0, pending = 0;
    long long tx = 0;
    unsigned phase = 0;
    std::vector<std::pair<uint32_t, std::vector<unsigned char>>> queued;  // (dst, 128-byte rows) chunks
};

inline std::vector<std::pair<uint32_t, Mbar>> g_mbars[kMaxCluster];
inline std::vector<std::pair<uint32_t, Mbar>>& mbars() { return g_mbars[S->cur ? S->cur->cta : 0]; }

inline long long& progress() { return S->progress; }

inline Mbar& mbar_at(const void* bar, bool create = false) {
    const std::size_t off = shared_offset(bar);
    if (off % 8) fail("mbarrier at shared offset %zu: not 8-byte aligned", off);
    for (auto& e : mbars())
        if (e.first == off) return e.second;
    if (!create) fail("mbarrier at shared offset %zu used before mbarrier.init", off);
    mbars().push_back({static_cast<uint32_t>(off), Mbar{}});
    return mbars().back().second;
}

inline void mbar_check(Mbar& m) {
    if (m.pending == 0 && m.tx == 0) {
        m.phase ^= 1;
        m.pending = m.count;
        ++progress();
    }
}

inline void land(Mbar& m) {
    Cta& c = cta();
    for (auto& q : m.queued) {
        std::memcpy(c.smem + q.first, q.second.data(), q.second.size());
        std::memcpy(c.view + q.first, q.second.data(), q.second.size());  // TMA: the async proxy
        m.tx -= static_cast<long long>(q.second.size());
    }
    if (!m.queued.empty()) ++progress();
    m.queued.clear();
}

// ---- warpgroup collectives (wgmma issue / commit / wait)
struct Wgmma {
    int n = 0, tb = 0, ta = 0;
    bool rs = false;
    uint64_t da = 0, db = 0;
    float* d[128];
    uint32_t a[128][4];
    std::vector<float> A, B;  // the shared-memory operands as read at issue ([64][16], [n][16])
};
struct GroupState {
    std::vector<std::vector<Wgmma>> committed;
    std::vector<Wgmma> open;
};
inline std::vector<GroupState> g_groups[kMaxCluster];
inline std::vector<GroupState>& groups() { return g_groups[S->cur ? S->cur->cta : 0]; }

struct GroupIn { int kind; int n, ta, tb; uint64_t da, db; float* d; uint32_t a[4]; };

inline float smem_half(const Cta& c, uint32_t addr, bool& ok, bool async_view) {
    addr ^= ((addr >> 7) & 7) << 4;  // 128-byte swizzle, by address bits
    if (addr + 2 > c.used || addr % 2) { ok = false; return 0.f; }
    uint16_t b;
    std::memcpy(&b, (async_view ? c.view : c.smem) + addr, 2);
    return half_bits_to_float(b);
}

// The operands of a wgmma: A [64][16] (from its descriptor, or the warps' register fragments) and
// B [n][16], as shared memory holds them now (or as the async proxy sees it: async_view).
inline const char* wgmma_operands(const Wgmma& op, std::vector<float>& A, std::vector<float>& B,
                                  bool async_view = false) {
    const Cta& c = cta();
    auto field = [](uint64_t desc, int lo) { return static_cast<uint32_t>(((desc >> lo) & 0x3fff) << 4); };
    if ((op.db >> 62) != 1 || (!op.rs && (op.da >> 62) != 1)) return "wgmma descriptor without the 128-byte swizzle layout";
    // operand(mn, k) of a descriptor: K-major or MN-major
    auto at = [&](uint64_t desc, bool mn_major, int mn, int k) -> uint32_t {
        const uint32_t start = field(desc, 0), lbo = field(desc, 16), sbo = field(desc, 32);
        return mn_major ? start + 2 * (mn % 64) + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo
                        : start + (mn / 8) * sbo + (mn % 8) * 128 + 2 * k;
    };
    A.assign(64 * 16, 0.f);
    B.assign(static_cast<std::size_t>(op.n) * 16, 0.f);
    bool ok = true;
    for (int m = 0; m < 64; ++m)
        for (int k = 0; k < 16; ++k) {
            if (op.rs) {  // warp m/16's mma.sync A fragment
                const int w = m / 16, r = m % 16;
                const int g = r % 8, hi = r / 8, kh = k / 8, t = (k % 8) / 2;
                const uint32_t reg = op.a[32 * w + 4 * g + t][hi + 2 * kh];
                A[16 * m + k] = half_bits_to_float(k % 2 ? reg >> 16 : reg & 0xffff);
            } else {
                A[16 * m + k] = smem_half(c, at(op.da, op.ta, m, k), ok, async_view);
            }
        }
    for (int n = 0; n < op.n; ++n)
        for (int k = 0; k < 16; ++k) B[16 * n + k] = smem_half(c, at(op.db, op.tb, n, k), ok, async_view);
    return ok ? nullptr : "wgmma: a descriptor reaches outside the CTA's shared memory";
}

// A wgmma may read its shared-memory operands at any time between its issue and the wait that
// retires it: they are read at both ends here, and must agree (bit for bit). A write another
// warpgroup makes without a barrier before the issue (the operand is read at issue: NaN poison or
// stale data), or one made before the retiring wait (a stage refilled early), both fail.
inline const char* wgmma_compute(const Wgmma& op) {
    std::vector<float> A, B;
    if (const char* e = wgmma_operands(op, A, B)) return e;
    if (std::memcmp(A.data(), op.A.data(), A.size() * sizeof(float)) != 0 ||
        std::memcmp(B.data(), op.B.data(), B.size() * sizeof(float)) != 0)
        return "wgmma: a shared-memory operand changed between the wgmma's issue and the wait that retires it "
               "(a write not ordered before the issue by a barrier, or made before the retiring wait)";
    for (int tid = 0; tid < 128; ++tid) {
        const int w = tid / 32, l = tid % 32, g = l / 4, t = l % 4;
        for (int j = 0; j < op.n / 8; ++j)
            for (int e = 0; e < 4; ++e) {
                const int m = 16 * w + g + 8 * (e / 2), n = 8 * j + 2 * t + e % 2;
                float s = op.d[tid][4 * j + e];
                for (int k = 0; k < 16; ++k) s += A[16 * m + k] * B[16 * n + k];
                op.d[tid][4 * j + e] = s;
            }
    }
    return nullptr;
}

// kind 0: issue (arg = n), 1: commit, 2: wait (arg = groups allowed in flight)
inline const char* complete_group(const unsigned char (*in)[64], int kind, int arg, int wgi) {
    auto& gs = groups();
    if (gs.size() <= static_cast<std::size_t>(wgi)) gs.resize(wgi + 1);
    GroupState& st = gs[wgi];
    if (kind == 0) {
        Wgmma op;
        GroupIn g0;
        std::memcpy(&g0, in[0], sizeof g0);
        op.n = g0.n; op.ta = g0.ta; op.tb = g0.tb; op.da = g0.da; op.db = g0.db; op.rs = g0.kind == 1;
        for (int t = 0; t < 128; ++t) {
            GroupIn g;
            std::memcpy(&g, in[t], sizeof g);
            if (g.da != g0.da || g.db != g0.db) return "wgmma: descriptors differ across the warpgroup";
            op.d[t] = g.d;
            std::memcpy(op.a[t], g.a, 16);
        }
        if (const char* e = wgmma_operands(op, op.A, op.B)) return e;
        std::vector<float> vA, vB;  // the same operands through the async proxy's eyes
        wgmma_operands(op, vA, vB, true);
        if (std::memcmp(vA.data(), op.A.data(), vA.size() * sizeof(float)) != 0 ||
            std::memcmp(vB.data(), op.B.data(), vB.size() * sizeof(float)) != 0)
            return "wgmma: a shared-memory operand was written through the generic proxy (st.shared, cp.async) "
                   "and not made visible to the async proxy: fence.proxy.async (fence_proxy_async_smem) after "
                   "the writes, before the barrier that publishes them";
        st.open.push_back(std::move(op));
    } else if (kind == 1) {
        st.committed.push_back(std::move(st.open));
        st.open.clear();
    } else {
        while (st.committed.size() > static_cast<std::size_t>(arg)) {
            for (const Wgmma& op : st.committed.front())
                if (const char* e = wgmma_compute(op)) return e;
            st.committed.erase(st.committed.begin());
        }
    }
    ++progress();
    return nullptr;
}

}  // namespace emu

// The warpgroup collective: deposit, wait for the 128 threads, completed once at the release.
namespace emu {
struct GroupSlots { int kind = -1, arg = 0; unsigned char in[128][64]; };
inline std::vector<GroupSlots> g_group_slots[kMaxCluster];
inline std::vector<GroupSlots>& group_slots() { return g_group_slots[S->cur ? S->cur->cta : 0]; }
inline void group_op(int kind, int arg, const GroupIn& in) {
    Fiber* f = S->cur;
    // wgmma.fence must come before the first wgmma and between any access to the registers a
    // wgmma reads or accumulates into and that wgmma: in practice, after every wait_group (the
    // thread then reads and rescales accumulators, packs A fragments) and before the next issue.
    if (kind == 0 && !f->wg_fenced)
        fail("wgmma issued with no wgmma.fence since this thread's last wgmma.wait_group (or its start): "
             "its accumulator or A registers may be read before the thread's own writes to them land");
    if (kind == 2) f->wg_fenced = false;
    const int t = static_cast<int>(f->tid.x + blockDim.x * (f->tid.y + blockDim.y * f->tid.z));
    auto& gs = group_slots();
    if (gs.size() <= static_cast<std::size_t>(t / 128)) gs.resize(t / 128 + 1);
    std::memcpy(gs[t / 128].in[t % 128], &in, sizeof in);
    f->fn = nullptr;
    f->arg = kind * 1000000 + arg;
    yield(Wait::group);
}
}  // namespace emu

inline void mbar_init(uint64_t* bar, uint32_t arrivals) {
    emu::Mbar& m = emu::mbar_at(bar, true);
    m = emu::Mbar{};
    m.count = m.pending = static_cast<int>(arrivals);
    ++emu::progress();
}
// fence.mbarrier_init: the CTA's mbarrier inits so far become visible to the async proxy, whose
// complete_tx (a TMA load) may only then signal them.
inline void mbar_fence_init() {
    for (auto& b : emu::mbars()) b.second.fenced = true;
}
inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
    emu::Mbar& m = emu::mbar_at(bar);
    m.tx += bytes;
    if (--m.pending < 0) emu::fail("mbarrier: an arrival beyond its count while the phase waits for transaction bytes");
    ++emu::progress();
    emu::mbar_check(m);
}
inline void mbar_arrive(uint64_t* bar) {
    emu::Mbar& m = emu::mbar_at(bar);
    if (--m.pending < 0) emu::fail("mbarrier: an arrival beyond its count while the phase waits for transaction bytes");
    ++emu::progress();
    emu::mbar_check(m);
}
inline bool mbar_try_wait_ptr(uint64_t* bar, uint32_t parity) {
    emu::Mbar& m = emu::mbar_at(bar);
    if (m.pending == 0 && !m.queued.empty()) {  // deferred TMA: the bytes land now, at the latest
        emu::land(m);
        emu::mbar_check(m);
    }
    return m.phase != (parity & 1);
}
inline void mbar_wait(uint64_t* bar, uint32_t parity) {
    while (!mbar_try_wait_ptr(bar, parity)) emu::yield(emu::Wait::poll);
}
inline void tma_prefetch_desc(const void*) {}  // (mma.cuh's TmaDesc comes after this header)
inline void tma_load_3d(void* dst, const void* desc, uint64_t* bar, int c0, int c1, int c2) {
    emu::EmuTma t;
    std::memcpy(&t, desc, sizeof t);
    if (t.magic != emu::kTmaMagic) emu::fail("TMA descriptor not made by the emulator's tma_descriptor");
    const std::size_t off = emu::shared_offset(dst);
    const uint32_t row = t.box[0] * t.elem;
    if (row != 128 || t.swizzle != 128) emu::fail("TMA: only 128-byte rows with the 128-byte swizzle are emulated");
    if (off % 128) emu::fail("TMA destination at shared offset %zu: not 128-byte aligned", off);
    const std::size_t bytes = static_cast<std::size_t>(row) * t.box[1];
    if (off + bytes > emu::cta().used) emu::fail("TMA box of %zu bytes past the CTA's shared memory", bytes);
    emu::Mbar& m = emu::mbar_at(bar);
    if (!m.fenced)
        emu::fail("TMA signals an mbarrier whose init no fence.mbarrier_init made visible to the async proxy "
                  "(mbar_fence_init after mbar_init, before the barrier that publishes it)");
    for (uint32_t o = 0; o < t.box[1]; ++o) {
        std::vector<unsigned char> chunk(row, 0);
        const long long go = static_cast<long long>(c1) + o;
        for (uint32_t i = 0; i < t.box[0]; ++i) {
            const long long gi = static_cast<long long>(c0) + i;
            if (gi < 0 || go < 0 || c2 < 0 || static_cast<uint64_t>(gi) >= t.dims[0] ||
                static_cast<uint64_t>(go) >= t.dims[1] || static_cast<uint64_t>(c2) >= t.dims[2])
                continue;  // zero fill
            const auto* src = reinterpret_cast<const unsigned char*>(t.base) + c2 * t.strides[1] + go * t.strides[0] + gi * t.elem;
            std::memcpy(&chunk[i * t.elem], src, t.elem);
        }
        for (uint32_t ch = 0; ch < row / 16; ++ch) {  // 16-byte chunks to their swizzled places
            uint32_t a = static_cast<uint32_t>(off) + o * row + 16 * ch;
            a ^= ((a >> 7) & 7) << 4;
            std::vector<unsigned char> c16(chunk.begin() + 16 * ch, chunk.begin() + 16 * ch + 16);
            if (emu::S->land_late) {
                m.queued.push_back({a, std::move(c16)});
            } else {
                std::memcpy(emu::cta().smem + a, c16.data(), 16);
                std::memcpy(emu::cta().view + a, c16.data(), 16);  // TMA: the async proxy
                m.tx -= 16;
            }
        }
    }
    ++emu::progress();
    emu::mbar_check(m);
}
// fence.proxy.async.shared::cta: this thread's generic writes become visible to the async proxy.
// The emulator publishes every generic write so far (all threads'): it catches a missing fence,
// not a fence that only some of the writers execute.
inline void fence_proxy_async_smem() {
    emu::Cta& c = emu::cta();
    std::memcpy(c.view, c.smem, c.used);
}
// setmaxnreg moves registers between a CTA's warpgroups within the pool the launch allocated (the
// kernel's register count x its threads): .dec returns some, .inc waits until the pool can give
// what it asks. Asking for more than the others leave waits forever on the GPU: a deadlock here.
namespace emu {
inline unsigned& wg_regs(int regs, const char* what) {
    Cta& c = cta();
    const Fiber& f = *S->cur;
    const unsigned t = f.tid.x + blockDim.x * (f.tid.y + blockDim.y * f.tid.z);
    if (regs % 8 || regs < 24 || regs > 256) fail("%s %d: a multiple of 8 from 24 to 256", what, regs);
    return c.wg_regs[t / 128];
}
}  // namespace emu
template <int REGS> inline void setmaxnreg_dec() {
    if (!emu::cta().pool) return;
    unsigned& mine = emu::wg_regs(REGS, "setmaxnreg.dec");
    if (REGS > static_cast<int>(mine)) emu::fail("setmaxnreg.dec to %d registers, above the warpgroup's %u", REGS, mine);
    if (mine != static_cast<unsigned>(REGS)) ++emu::progress();
    mine = REGS;
}
template <int REGS> inline void setmaxnreg_inc() {
    emu::Cta& c = emu::cta();
    if (!c.pool) return;
    unsigned& mine = emu::wg_regs(REGS, "setmaxnreg.inc");
    if (REGS < static_cast<int>(mine)) emu::fail("setmaxnreg.inc to %d registers, below the warpgroup's %u", REGS, mine);
    for (;;) {
        unsigned used = 0;
        for (unsigned r : c.wg_regs) used += 128 * r;
        if (used - 128 * mine + 128 * REGS <= c.pool) break;
        emu::S->cur->regs_wait = true;
        emu::yield(emu::Wait::poll);
    }
    emu::S->cur->regs_wait = false;
    if (mine != static_cast<unsigned>(REGS)) ++emu::progress();
    mine = REGS;
}
inline void reg_fence(float&) {}
inline uint32_t opaque_u32(uint32_t x) { return x; }
inline uint64_t wgmma_desc_sw128(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
    return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
           (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}
inline void wgmma_fence() { emu::S->cur->wg_fenced = true; }
inline void wgmma_commit() { emu::group_op(1, 0, emu::GroupIn{}); }
template <int N> inline void wgmma_wait() { emu::group_op(2, N, emu::GroupIn{}); }
template <int TA, int TB>
inline void wgmma_m64n256k16_f16(float (&d)[128], uint64_t da, uint64_t db) {
    emu::group_op(0, 256, emu::GroupIn{0, 256, TA, TB, da, db, d, {}});
}
template <int TA, int TB>
inline void wgmma_m64n128k16_f16(float (&d)[64], uint64_t da, uint64_t db) {
    emu::group_op(0, 128, emu::GroupIn{0, 128, TA, TB, da, db, d, {}});
}
template <int TA, int TB>
inline void wgmma_m64n64k16_f16(float (&d)[32], uint64_t da, uint64_t db) {
    emu::group_op(0, 64, emu::GroupIn{0, 64, TA, TB, da, db, d, {}});
}
template <int TB>
inline void wgmma_rs_m64n64k16_f16(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
    emu::group_op(0, 64, emu::GroupIn{1, 64, 0, TB, 0, db, d, {a[0], a[1], a[2], a[3]}});
}
template <int TB>
inline void wgmma_rs_m64n128k16_f16(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
    emu::group_op(0, 128, emu::GroupIn{1, 128, 0, TB, 0, db, d, {a[0], a[1], a[2], a[3]}});
}

// ------------------------------------------------------------------------------ launch
namespace emu {

struct Config {
    unsigned grid[3], block[3];
    unsigned smem, cluster;
    int reverse;     // the last CTA, warp and lane first
    unsigned regs;   // the kernel's register count (tests/_emulate_cuda.py launch_limits), 0 = unknown
};

inline void fiber_entry() {
    S->body();
    S->cur->done = true;
    ++S->progress;
}  // returns to uc_link, the scheduler

inline int fail_launch(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    S->err = format(fmt, ap);
    va_end(ap);
    return 3;
}

// Threads [t0, t0 + size) of CTA c (a warp, a warpgroup): 1 if every live one waits at the same
// collective of this `kind`, 0 if not all have arrived, -1 (why says) if some are absent (exited,
// or the block is smaller) or they reached different collectives (divergence).
inline int collective_ready(int c, unsigned t0, unsigned size, Wait kind, const char* what, std::string& why) {
    const unsigned nt = S->nthreads;
    if (t0 >= nt) return 0;
    Fiber* fs = &S->fibers[c * nt + t0];
    const unsigned n = std::min(size, nt - t0);
    unsigned alive = 0, waiting = 0;
    for (unsigned t = 0; t < n; ++t) {
        alive += !fs[t].done;
        waiting += fs[t].wait == kind;
    }
    if (waiting == 0 || waiting != alive) return 0;
    if (alive != size) {
        why = std::string("a ") + what + " collective with " + std::to_string(size - alive) +
              " threads absent (exited, or no such thread)";
        return -1;
    }
    for (unsigned t = 1; t < size; ++t)
        if (fs[t].fn != fs[0].fn || fs[t].arg != fs[0].arg) {
            why = std::string("threads of one ") + what + " at different " + what + " collectives (divergence)";
            return -1;
        }
    return 1;
}

// Release warp `w` of CTA `c` if its 32 lanes wait at one warp collective (shuffle, ldmatrix,
// mma.sync, __syncwarp), computing it for all of them: 1 released, 0 not ready, -1 an error.
inline int release_warp(int c, unsigned w, std::string& why) {
    const int r = collective_ready(c, 32 * w, 32, Wait::warp, "warp", why);
    if (r <= 0) return r;
    Fiber* lanes = &S->fibers[c * S->nthreads + 32 * w];
    Warp& W = S->ctas[c].warps[w];
    S->cur = &lanes[0];
    const char* e = lanes[0].fn(W.in[W.parity], W.out[W.parity], lanes[0].arg);
    S->cur = nullptr;
    if (e) {
        why = e;
        return -1;
    }
    W.parity ^= 1;
    for (unsigned l = 0; l < 32; ++l) lanes[l].wait = Wait::none;
    return 1;
}

// Release warpgroup `wgi` of CTA `c` if its 128 threads wait at one warpgroup collective (wgmma
// issue, commit, wait): 1 released, 0 not ready, -1 an error.
inline int release_group(int c, unsigned wgi, std::string& why) {
    const int r = collective_ready(c, 128 * wgi, 128, Wait::group, "warpgroup (wgmma)", why);
    if (r <= 0) return r;
    Fiber* fs = &S->fibers[c * S->nthreads + 128 * wgi];
    S->cur = &fs[0];
    const int kind = fs[0].arg / 1000000, arg = fs[0].arg % 1000000;
    const char* e = complete_group(g_group_slots[c][wgi].in, kind, arg, static_cast<int>(wgi));
    S->cur = nullptr;
    if (e) {
        why = e;
        return -1;
    }
    for (unsigned t = 0; t < 128; ++t) fs[t].wait = Wait::none;
    ++S->progress;
    return 1;
}

// Release every CTA or cluster barrier all of whose live threads wait at it; false if none could
// be (why says what everyone waits for).
inline bool release(std::string& why) {
    bool any = false;
    const unsigned nt = S->nthreads;
    for (int c = 0; c < S->ncta; ++c) {
        Fiber* fs = &S->fibers[c * nt];
        unsigned alive = 0, waiting = 0;
        for (unsigned t = 0; t < nt; ++t) {
            alive += !fs[t].done;
            waiting += fs[t].wait == Wait::cta;
        }
        if (waiting && waiting == alive) {
            for (unsigned t = 0; t < nt; ++t) fs[t].wait = Wait::none;
            any = true;
        }
    }
    unsigned alive = 0, waiting = 0;
    for (const Fiber& f : S->fibers) {
        alive += !f.done;
        waiting += f.wait == Wait::cluster;
    }
    if (waiting && waiting == alive) {
        for (Fiber& f : S->fibers) f.wait = Wait::none;
        any = true;
    }
    if (!any) {
        unsigned at_cta = 0, at_warp = 0, at_cluster = 0, at_group = 0, polling = 0, at_regs = 0, done = 0;
        for (const Fiber& f : S->fibers) {
            done += f.done;
            at_cta += f.wait == Wait::cta;
            at_warp += f.wait == Wait::warp;
            at_cluster += f.wait == Wait::cluster;
            at_group += f.wait == Wait::group;
            polling += f.wait == Wait::poll && !f.regs_wait;
            at_regs += f.wait == Wait::poll && f.regs_wait;
        }
        why = "deadlock: " + std::to_string(at_cta) + " threads at __syncthreads, " + std::to_string(at_warp) +
              " at a warp collective, " + std::to_string(at_group) + " at a warpgroup collective (wgmma), " +
              std::to_string(polling) + " waiting on an mbarrier phase, " + std::to_string(at_regs) +
              " in setmaxnreg.inc for registers the CTA's pool cannot give, " + std::to_string(at_cluster) +
              " at a cluster barrier, " + std::to_string(done) + " exited";
    }
    return any;
}

// One cluster of CTAs (blocks b0 .. b0+ncta-1 along x of row (y, z)).
inline int run_cluster(const Config& cfg, unsigned bx0, unsigned by, unsigned bz) {
    const unsigned nt = cfg.block[0] * cfg.block[1] * cfg.block[2];
    S->nthreads = nt;
    S->ncta = static_cast<int>(cfg.cluster);
    const std::size_t total = nt * cfg.cluster;
    while (S->stacks.size() < total) {
        void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return fail_launch("could not map a fiber stack");
        S->stacks.push_back(static_cast<unsigned char*>(p));
    }
    for (int c = 0; c < S->ncta; ++c) {
        Cta& C = S->ctas[c];
        C.smem = S->arena[c];
        C.view = S->async_view[c];
        C.dyn = cfg.smem;
        C.used = cfg.smem + kCanary;
        C.statics.clear();
        C.warps.assign((nt + 31) / 32, Warp{});
        const unsigned r8 = (cfg.regs + 7) / 8 * 8;
        C.pool = r8 * 32 * ((nt + 31) / 32);
        C.wg_regs.assign((nt + 127) / 128, r8);
        C.bid = {bx0 + c, by, bz};
        std::memset(C.smem, 0xff, kArena);
        std::memset(C.smem + cfg.smem, kCanaryByte, kCanary);
        std::memcpy(C.view, C.smem, kArena);
        g_mbars[c].clear();
        g_groups[c].assign((nt + 127) / 128, GroupState{});
        g_group_slots[c].assign((nt + 127) / 128, GroupSlots{});
    }
    S->land_late = cfg.reverse != 0;
    S->fibers.assign(total, Fiber{});
    for (std::size_t i = 0; i < total; ++i) {
        Fiber& f = S->fibers[i];
        const unsigned t = static_cast<unsigned>(i % nt);
        f.cta = static_cast<int>(i / nt);
        f.tid = {t % cfg.block[0], (t / cfg.block[0]) % cfg.block[1], t / (cfg.block[0] * cfg.block[1])};
        f.warp = static_cast<int>(t / 32);
        f.lane = static_cast<int>(t % 32);
        f.stack = S->stacks[i];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = &S->sched;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    // Warp by warp, each as far as it can go: its lanes run in order until each waits or exits;
    // a warp collective they all reached is completed at once and the warp goes on, so one warp
    // reaches its next CTA barrier before the next warp starts. Then CTA and cluster barriers
    // whose threads have all arrived are released, and the round repeats. Reverse: the last CTA,
    // warp and lane first, and a warpgroup released from a wgmma collective runs on, all four
    // warps, until it stops at something else (a barrier, an mbarrier, the end): it races ahead of
    // the other warpgroups, so a wgmma that reads another warpgroup's shared-memory writes with no
    // barrier between reads them before they happen. (Forward keeps warpgroups in step, one
    // collective per round, so an in-flight wgmma's operands stay exposed to the others' writes.)
    std::string why;
    const unsigned nwarps = (nt + 31) / 32;
    auto run_warp = [&](int c, unsigned w) -> int {  // 0: blocked, 1: its warpgroup was released, 3: failed
        const unsigned n = std::min(32u, nt - 32 * w);
        for (;;) {
            for (unsigned l = 0; l < n; ++l) {
                Fiber& f = S->fibers[c * nt + 32 * w + (cfg.reverse ? n - 1 - l : l)];
                if (f.done || f.wait != Wait::none) continue;
                S->cur = &f;
                threadIdx = f.tid;
                blockIdx = S->ctas[f.cta].bid;
                swapcontext(&S->sched, &f.ctx);
                S->cur = nullptr;
                if (S->failed) return 3;
            }
            int r = release_warp(c, w, why);
            bool group = false;
            if (r == 0) group = (r = release_group(c, w / 4, why)) > 0;
            if (r < 0) {
                const Cta& C = S->ctas[c];
                fail_launch("%s in block (%u,%u,%u), warp %u", why.c_str(), C.bid.x, C.bid.y, C.bid.z, w);
                return 3;
            }
            if (r == 0) return 0;
            if (group && cfg.reverse) return 1;
        }
    };
    for (;;) {
        const long long before = S->progress;
        for (Fiber& f : S->fibers)
            if (f.wait == Wait::poll) f.wait = Wait::none;  // mbarrier waiters look again each round
        for (unsigned k = 0; k < S->ncta * nwarps; ++k) {
            const unsigned kw = cfg.reverse ? S->ncta * nwarps - 1 - k : k;
            const int c = static_cast<int>(kw / nwarps);
            int r = run_warp(c, kw % nwarps);
            while (r == 1) {  // reverse: the released warpgroup's warps, last first, until it stops
                const unsigned g0 = (kw % nwarps) / 4 * 4, g1 = std::min(g0 + 4, nwarps);
                r = 0;
                for (unsigned w = g1; w-- > g0 && r != 3;) {
                    const int rw = run_warp(c, w);
                    r = rw == 0 ? r : rw;
                }
            }
            if (r == 3) return 3;
        }
        bool all_done = true;
        for (const Fiber& f : S->fibers) all_done = all_done && f.done;
        if (all_done) break;
        bool polling = false, runnable = false;  // (a warpgroup released late in the round: runnable)
        for (const Fiber& f : S->fibers) {
            polling = polling || f.wait == Wait::poll;
            runnable = runnable || (!f.done && f.wait == Wait::none);
        }
        if (!release(why) && !runnable && (!polling || S->progress == before)) {
            char buf[96];
            std::snprintf(buf, sizeof buf, " in block (%u,%u,%u)", bx0, by, bz);
            return fail_launch("%s%s", why.c_str(), buf);
        }
    }
    for (int c = 0; c < S->ncta; ++c) {
        const Cta& C = S->ctas[c];
        for (std::size_t i = 0; i < kCanary; ++i)
            if (C.smem[C.dyn + i] != kCanaryByte)
                return fail_launch("block (%u,%u,%u) wrote past its %u bytes of dynamic shared memory", C.bid.x,
                                   C.bid.y, C.bid.z, cfg.smem);
    }
    return 0;
}

// Memory errors: a kernel touching an inaccessible page (tests/_emulate_cuda.py `guarded` puts one
// right after, and one before, a buffer) stops the launch with the faulting address, instead of
// killing the process. Installed for the launch only; the previous handler (Python's
// faulthandler) comes back after it. A fault outside a kernel thread is re-raised as it was.
inline struct sigaction g_old_segv;
inline void on_segv(int sig, siginfo_t* si, void*) {
    if (!S->cur) {
        sigaction(SIGSEGV, &g_old_segv, nullptr);
        raise(sig);
        return;
    }
    char buf[160];
    std::snprintf(buf, sizeof buf, "memory access at %p faulted: outside every buffer (a guard page next to one)",
                  si->si_addr);
    S->err = buf + where();
    S->failed = true;
    setcontext(&S->sched);  // back to the scheduler, which reports it; the fiber is abandoned
}
struct SegvGuard {
    stack_t old_stack{};
    SegvGuard() {
        static unsigned char alt[64 * 1024];
        stack_t ss{};
        ss.ss_sp = alt;
        ss.ss_size = sizeof alt;
        sigaltstack(&ss, &old_stack);
        struct sigaction sa{};
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
    }
    ~SegvGuard() {
        sigaction(SIGSEGV, &g_old_segv, nullptr);
        sigaltstack(&old_stack, nullptr);
    }
};

inline int run(const Config& cfg) {
    S->failed = false;
    S->err.clear();
    const SegvGuard guard;
    const unsigned long long nt = 1ull * cfg.block[0] * cfg.block[1] * cfg.block[2];
    if (nt == 0 || nt > 1024 || cfg.block[2] > 64)
        return fail_launch("block (%u,%u,%u): 1 to 1024 threads, z at most 64", cfg.block[0], cfg.block[1], cfg.block[2]);
    if (cfg.grid[0] == 0 || cfg.grid[1] == 0 || cfg.grid[2] == 0 || cfg.grid[0] > 0x7fffffffu || cfg.grid[1] > 65535 ||
        cfg.grid[2] > 65535)
        return fail_launch("grid (%u,%u,%u) out of CUDA's limits", cfg.grid[0], cfg.grid[1], cfg.grid[2]);
    if (cfg.smem > kSmemMax) return fail_launch("%u bytes of dynamic shared memory: over 227 KiB", cfg.smem);
    if (cfg.cluster < 1 || cfg.cluster > kMaxCluster) return fail_launch("cluster of %u CTAs", cfg.cluster);
    if (cfg.grid[0] % cfg.cluster) return fail_launch("grid.x %u is not a whole number of %u-CTA clusters", cfg.grid[0], cfg.cluster);
    gridDim = {cfg.grid[0], cfg.grid[1], cfg.grid[2]};
    blockDim = {cfg.block[0], cfg.block[1], cfg.block[2]};
    for (unsigned z = 0; z < cfg.grid[2]; ++z)
        for (unsigned y = 0; y < cfg.grid[1]; ++y)
            for (unsigned x = 0; x < cfg.grid[0]; x += cfg.cluster)
                if (int rc = run_cluster(cfg, x, y, z)) return rc;
    return 0;
}

template <typename... P, std::size_t... I>
inline void call(void (*k)(P...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<P>>*>(args[I])...);
}

// Launch kernel k: args[i] points at parameter i's bytes (cudaLaunchKernel's convention), sizes[i]
// is how many the caller packed (checked against the kernel's parameter).
template <typename... P>
inline int launch(void (*k)(P...), const Config& cfg, void** args, const int* sizes, int nargs) {
    constexpr std::size_t n = sizeof...(P);
    if (static_cast<std::size_t>(nargs) != n) return fail_launch("the kernel takes %zu parameters, the launch gave %d", n, nargs);
    const std::size_t want[] = {sizeof(std::remove_cv_t<std::remove_reference_t<P>>)..., 0};
    for (std::size_t i = 0; i < n; ++i)
        if (static_cast<std::size_t>(sizes[i]) != want[i])
            return fail_launch("parameter %zu is %zu bytes, the launch packed %d", i, want[i], sizes[i]);
    S->body = [=] { call(k, args, std::index_sequence_for<P...>{}); };
    return run(cfg);
}

}  // namespace emu

extern "C" const char* emu_error() { return emu::S->err.c_str(); }
// The ldmatrix phase histogram since the last call (out[g] = phases touching g bank groups), reset.
extern "C" void emu_ldmatrix_phases(long long* out) {
    for (int g = 0; g < 9; ++g) {
        out[g] = emu::S->ldsm_phases[g];
        emu::S->ldsm_phases[g] = 0;
    }
}
