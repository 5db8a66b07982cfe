// The CPU noise generators: Philox-4x32-10 + Box–Muller over many counters at once (normal_blocks), the
// Brownian tree over arrays (brownian_blocks), and the noise fill's loop (csrc/core/noise_fill.h).
//
// Vector lanes, same bits. A group of kGroup consecutive Philox blocks is computed as structure-of-arrays
// loops over the group (ten rounds, each one loop over the counters; then Box–Muller over the word pairs),
// loops GCC vectorizes at -O3 because the scalar transform of csrc/core/philox.h has no data-dependent
// branch and no conditional floating-point operation. Every lane performs the scalar code's operations
// in the same order, and the vector +, −, ×, / and sqrt round as the scalar ones do (IEEE, no contraction:
// CMakeLists sets -ffp-contract=off), so each normal is bit-identical to normal4 / normal_at, on the CPU
// and on CUDA (tests/test_philox_simd.py).
//
// The module is built for baseline x86-64, so the group loop is compiled three times (baseline, AVX2,
// AVX-512: 2, 4 and 8 doubles per instruction) and the variant is picked once from the running CPU.
#include <cmath>

#include "core/noise_fill.h"
#include "cpu/chunked.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DC_NOISE_X86 1
#define DC_NOISE_AVX2 __attribute__((target("avx2")))
#define DC_NOISE_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))
#else
#define DC_NOISE_X86 0
#endif

namespace dc {
namespace {

// Blocks per group: enough lanes for the widest vectors and for several independent multiply chains
// per round, little enough that a group's words and normals (6 KiB) stay in L1.
constexpr int kGroup = 64;

// A group's normals in pair order: pair A (words 0, 1) gives elements 4j, 4j+1, pair B (words 2, 3)
// gives 4j+2, 4j+3.
struct GroupNormals {
  alignas(64) double a0[kGroup], b0[kGroup], a1[kGroup], b1[kGroup];
};

__attribute__((always_inline)) inline void philox_group(const NoiseKey& k, uint64_t q0, uint32_t (&w)[4][kGroup]) {
  alignas(64) uint32_t c0[kGroup], c1[kGroup], c2[kGroup], c3[kGroup];
  for (int j = 0; j < kGroup; ++j) {
    const uint64_t q = q0 + uint64_t(j);
    c0[j] = uint32_t(q);
    c1[j] = k.id;
    c2[j] = k.draw;
    c3[j] = k.domain ^ (uint32_t(q >> 32) << 8);
  }
  uint32_t k0 = k.k0, k1 = k.k1;
  for (int r = 0; r < 10; ++r) {  // the rounds of philox4x32_10, each over all counters
#pragma omp simd
    for (int j = 0; j < kGroup; ++j) {
      const uint64_t p0 = uint64_t(0xD2511F53u) * c0[j];
      const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2[j];
      const uint32_t n0 = uint32_t(p1 >> 32) ^ c1[j] ^ k0;
      const uint32_t n2 = uint32_t(p0 >> 32) ^ c3[j] ^ k1;
      c0[j] = n0; c1[j] = uint32_t(p1); c2[j] = n2; c3[j] = uint32_t(p0);
    }
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  for (int j = 0; j < kGroup; ++j) { w[0][j] = c0[j]; w[1][j] = c1[j]; w[2][j] = c2[j]; w[3][j] = c3[j]; }
}

__attribute__((always_inline)) inline void box_muller_lanes(const uint32_t* __restrict u, const uint32_t* __restrict v,
                                                            double* __restrict a, double* __restrict b) {
#pragma omp simd
  for (int j = 0; j < kGroup; ++j) box_muller(u[j], v[j], &a[j], &b[j]);
}

__attribute__((always_inline)) inline void normal_blocks_body(const NoiseKey& k, uint64_t q0, int nb, double* out) {
  alignas(64) uint32_t w[4][kGroup];
  GroupNormals g;
  for (int j0 = 0; j0 < nb; j0 += kGroup) {
    // a short last group computes whole lanes and keeps its first m blocks (the draws are pure functions)
    philox_group(k, q0 + uint64_t(j0), w);
    box_muller_lanes(w[0], w[1], g.a0, g.b0);
    box_muller_lanes(w[2], w[3], g.a1, g.b1);
    const int m = nb - j0 < kGroup ? nb - j0 : kGroup;
    double* o = out + 4 * int64_t(j0);
    for (int j = 0; j < m; ++j) {
      o[4 * j] = g.a0[j]; o[4 * j + 1] = g.b0[j]; o[4 * j + 2] = g.a1[j]; o[4 * j + 3] = g.b1[j];
    }
  }
}

void blocks_baseline(const NoiseKey& k, uint64_t q0, int nb, double* out) { normal_blocks_body(k, q0, nb, out); }
#if DC_NOISE_X86
DC_NOISE_AVX2 void blocks_avx2(const NoiseKey& k, uint64_t q0, int nb, double* out) {
  normal_blocks_body(k, q0, nb, out);
}
DC_NOISE_AVX512 void blocks_avx512(const NoiseKey& k, uint64_t q0, int nb, double* out) {
  normal_blocks_body(k, q0, nb, out);
}
#endif

using BlocksFn = void (*)(const NoiseKey&, uint64_t, int, double*);

BlocksFn blocks_variant(int isa) {
#if DC_NOISE_X86
  if (isa == 2) return blocks_avx512;
  if (isa == 1) return blocks_avx2;
#endif
  return blocks_baseline;
}

int best_isa() {
#if DC_NOISE_X86
  __builtin_cpu_init();  // may run from a static initializer, before libgcc's own
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    return 2;
  if (__builtin_cpu_supports("avx2")) return 1;
#endif
  return 0;
}

int active_isa() {
  static const int isa = best_isa();
  return isa;
}

void active_blocks(const NoiseKey& k, uint64_t q0, int nb, double* out) {
  static const BlocksFn fn = blocks_variant(active_isa());
  fn(k, q0, nb, out);
}

// Sub-range of brownian_blocks: the bridge values of kBrownianBlocks blocks (4 KiB per array) stay in L1
// while the normals of every visited node are added to them.
constexpr int kBrownianBlocks = 128;
constexpr int kBrownianLen = 4 * kBrownianBlocks;

// One level of the walk: W(m) = ½(W(a) + W(b)) + √((b − a)/4)·N_node replaces W(a) (right) or W(b) (left).
inline void bridge_level(const NoiseKey& k, uint32_t node, uint64_t q0, int nb, double sc, bool right,
                         double* __restrict wa, double* __restrict wb, double* __restrict nz) {
  NoiseKey kn = k;
  kn.draw = node;
  active_blocks(kn, q0, nb, nz);
  const int n = 4 * nb;
  if (right) {
    for (int i = 0; i < n; ++i) wa[i] = 0.5 * (wa[i] + wb[i]) + sc * nz[i];
  } else {
    for (int i = 0; i < n; ++i) wb[i] = 0.5 * (wa[i] + wb[i]) + sc * nz[i];
  }
}

// brownian_descend over arrays (the same walk and arithmetic).
inline void descend_blocks(const NoiseKey& k, uint64_t q0, int nb, double tau, double a, double b,
                           double* __restrict wa, double* __restrict wb, uint32_t node, int level, int depth,
                           double* __restrict nz, double* __restrict w) {
  for (; level < depth && tau != a && tau != b; ++level) {
    const double m = 0.5 * (a + b);
    const double sc = sqrt(0.25 * (b - a));
    const bool right = tau >= m;
    bridge_level(k, node, q0, nb, sc, right, wa, wb, nz);
    if (right) a = m; else b = m;
    node = 2 * node + (right ? 1u : 0u);
  }
  const double f = b > a ? (tau - a) / (b - a) : 0.0;
  const int n = 4 * nb;
  for (int i = 0; i < n; ++i) w[i] = wa[i] + f * (wb[i] - wa[i]);
}

}  // namespace

const char* noise_isa_name(int isa) {
  static const char* const names[kNoiseIsaCount] = {"baseline", "avx2", "avx512"};
  return isa >= 0 && isa < kNoiseIsaCount ? names[isa] : "";
}

bool noise_isa_supported(int isa) { return isa >= 0 && isa <= active_isa(); }

int noise_isa_active() { return active_isa(); }

void normal_blocks_isa(int isa, const NoiseKey& k, uint64_t q0, int nb, double* out) {
  blocks_variant(noise_isa_supported(isa) ? isa : 0)(k, q0, nb, out);
}

void normal_blocks(const NoiseKey& k, uint64_t q0, int nb, double* out) { active_blocks(k, q0, nb, out); }

void brownian_blocks(const NoiseKey& key, uint64_t q0, int nb, double ta, double tb, double T0, double T1, int depth,
                     double* out) {
  NoiseKey k = key;
  k.domain = kDomainBrownian;
  alignas(64) double wa[kBrownianLen], wb[kBrownianLen], wa2[kBrownianLen], wb2[kBrownianLen], nz[kBrownianLen];
  const double root = sqrt(T1 - T0);
  const double inv = 1.0 / sqrt(ta > tb ? ta - tb : tb - ta);
  for (int j0 = 0; j0 < nb; j0 += kBrownianBlocks) {
    const int m = nb - j0 < kBrownianBlocks ? nb - j0 : kBrownianBlocks;
    const int n = 4 * m;
    const uint64_t q = q0 + uint64_t(j0);
    k.draw = 0u;
    active_blocks(k, q, m, nz);
    for (int i = 0; i < n; ++i) { wa[i] = 0.0; wb[i] = root * nz[i]; }
    double a = T0, b = T1;
    uint32_t node = 1;
    int level = 0;
    for (; level < depth; ++level) {  // the shared prefix of the two walks
      const double mid = 0.5 * (a + b);
      const bool ra = ta >= mid, rb = tb >= mid;
      if (ra != rb) break;
      bridge_level(k, node, q, m, sqrt(0.25 * (b - a)), ra, wa, wb, nz);
      if (ra) a = mid; else b = mid;
      node = 2 * node + (ra ? 1u : 0u);
    }
    for (int i = 0; i < n; ++i) { wa2[i] = wa[i]; wb2[i] = wb[i]; }
    double* w1 = out + 4 * int64_t(j0);
    descend_blocks(k, q, m, ta, a, b, wa, wb, node, level, depth, nz, w1);
    descend_blocks(k, q, m, tb, a, b, wa2, wb2, node, level, depth, nz, wa);  // w2 into wa (no longer needed)
    for (int i = 0; i < n; ++i) w1[i] = (w1[i] - wa[i]) * inv;
  }
}

namespace {

constexpr int64_t kChunk = 4096;  // a multiple of 4: chunks start on a Philox block

template <class T>
void fill_typed(const NoiseFillArgs& a, int nthreads) {
  for_each_chunk(a.B, a.N, kChunk, nthreads, 1 << 14, [&](int64_t b, int64_t n0, int64_t len) {
    T* out = static_cast<T*>(a.out) + b * a.out_sb + n0;
    alignas(64) double v[kChunk + 4];
    const int nb = int((len + 3) / 4);
    if (a.brownian) {
      const double* iv = a.iv + b * a.iv_sb;
      brownian_blocks(a.key(b), uint64_t(n0 >> 2), nb, iv[0], iv[1], a.T0, a.T1, a.depth, v);
    } else {
      normal_blocks(a.key(b), uint64_t(n0 >> 2), nb, v);
    }
    for (int64_t i = 0; i < len; ++i) store_from(out + i, v[i]);
  });
}

}  // namespace

void noise_fill_cpu(const NoiseFillArgs& a, DType dtype, int nthreads) {
  if (a.B == 0 || a.N == 0) return;
  dispatch_float(dtype, [&](auto tag) { fill_typed<decltype(tag)>(a, nthreads); });
}

}  // namespace dc
