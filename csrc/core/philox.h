// Counter-based noise (docs/design.md, "One fused kernel family"): Philox-4x32-10 (Salmon et al., SC'11,
// "Parallel random numbers: as easy as 1, 2, 3"; checked against the Random123 known-answer vectors)
// and Box–Muller normals.
//
// A normal is a pure function of (seed, sample id, draw, element): no state, so CPU and CUDA, any
// batch split and any chunking give the same numbers. The counter of element n is
//   (n / 4, sample id, draw, domain),  key = (seed low 32 bits, seed high 32 bits),
// and the four words of a block give the normals of elements 4q..4q+3 (Box–Muller on word pairs).
//
// Bit-identical CPU / CUDA normals: the transform uses only +, −, ×, / and sqrt (correctly rounded
// in IEEE double on both) through our own log and sin/cos polynomials below, never libm or CUDA's
// intrinsics, and the build disables floating-point contraction (CMakeLists: -ffp-contract=off,
// nvcc --fmad=false), so every operation rounds the same way on both. The same holds lane by lane for
// the CPU's vector generator (normal_blocks): the transform has no data-dependent branch and no
// conditional floating-point operation (selects are on integers), so GCC vectorizes it as written.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/numeric.h"

namespace dc {

// Domains keep the streams of different uses apart under one seed.
enum NoiseDomain : uint32_t { kDomainStep = 0, kDomainPrior = 1, kDomainBrownian = 2 };

DC_HD void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c[2];
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0; c[1] = uint32_t(p1); c[2] = n2; c[3] = uint32_t(p0);
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
}

// A 32-bit word as a uniform in the open interval (0, 1): (w + ½)·2⁻³², exact in double.
DC_HD double open_uniform(uint32_t w) { return (double(w) + 0.5) * 2.3283064365386963e-10; }

// log(u) for u in (0, 1], normal numbers only: u = 2^e·m with m in [√½, √2), and
// log m = 2·atanh(f), f = (m − 1)/(m + 1), |f| < 0.172, by its odd series to f²¹ (error < 1e-17).
DC_HD double log_unit(double u) {
  const uint64_t b = dbl_bits(u);
  const uint64_t mant = b & 0x000fffffffffffffull;
  // m = 1.mant > √2 compares as its mantissa bits do (0x3FF6A09E667F3BCD is the double 1.4142135623730951);
  // halving it is exact (the exponent field drops by one). Integer selects, no conditional floating-point
  // operation, so the CPU loops vectorize without -fno-trapping-math.
  const bool big = mant > 0x6a09e667f3bcdull;
  const int e = int((b >> 52) & 0x7ff) - 1023 + (big ? 1 : 0);
  const double m = bits_dbl(mant | (big ? 0x3fe0000000000000ull : 0x3ff0000000000000ull));
  const double f = (m - 1.0) / (m + 1.0);
  const double s = f * f;
  double p = 1.0 / 21.0;
  p = p * s + 1.0 / 19.0; p = p * s + 1.0 / 17.0; p = p * s + 1.0 / 15.0; p = p * s + 1.0 / 13.0;
  p = p * s + 1.0 / 11.0; p = p * s + 1.0 / 9.0;  p = p * s + 1.0 / 7.0;  p = p * s + 1.0 / 5.0;
  p = p * s + 1.0 / 3.0;  p = p * s + 1.0;
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  return double(e) * ln2_hi + (2.0 * f * p + double(e) * ln2_lo);
}

// cos(2πu), sin(2πu) for u in [0, 1]: u = k/4 + a with |a| ≤ 1/8 (exact for u = (w + ½)·2⁻³²),
// θ = 2πa in [−π/4, π/4], Taylor polynomials to θ¹⁸ / θ¹⁹ (error < 1e-17), then the quadrant.
DC_HD void sincos_2pi(double u, double* c_out, double* s_out) {
  const int k = int(u * 4.0 + 0.5);
  const double a = u - double(k) * 0.25;
  const double t = a * 6.283185307179586;
  const double t2 = t * t;
  double s = -1.0 / 121645100408832000.0;          // −1/19!
  s = s * t2 + 1.0 / 355687428096000.0;            // 1/17!
  s = s * t2 - 1.0 / 1307674368000.0;              // −1/15!
  s = s * t2 + 1.0 / 6227020800.0;                 // 1/13!
  s = s * t2 - 1.0 / 39916800.0;                   // −1/11!
  s = s * t2 + 1.0 / 362880.0;
  s = s * t2 - 1.0 / 5040.0;
  s = s * t2 + 1.0 / 120.0;
  s = s * t2 - 1.0 / 6.0;
  s = (s * t2) * t + t;
  double c = -1.0 / 6402373705728000.0;            // −1/18!
  c = c * t2 + 1.0 / 20922789888000.0;             // 1/16!
  c = c * t2 - 1.0 / 87178291200.0;                // −1/14!
  c = c * t2 + 1.0 / 479001600.0;                  // 1/12!
  c = c * t2 - 1.0 / 3628800.0;
  c = c * t2 + 1.0 / 40320.0;
  c = c * t2 - 1.0 / 720.0;
  c = c * t2 + 1.0 / 24.0;
  c = c * t2 - 0.5;
  c = c * t2 + 1.0;
  // quadrant k: rotate by kπ/2, i.e. (cos, sin) = (c, s), (−s, c), (−c, −s), (s, −c) for k mod 4 = 0..3.
  // Integer selects and sign-bit flips (exact, as a product with ±1 is for these finite values): GCC
  // moves a product by a selected ±1 into branches, which stops the CPU loops from vectorizing.
  const uint64_t cb = dbl_bits(c), sb = dbl_bits(s);
  const bool swap = (k & 1) != 0;
  const uint64_t neg_c = uint64_t(((k + 1) >> 1) & 1) << 63;
  const uint64_t neg_s = uint64_t((k >> 1) & 1) << 63;
  *c_out = bits_dbl((swap ? sb : cb) ^ neg_c);
  *s_out = bits_dbl((swap ? cb : sb) ^ neg_s);
}

// Box–Muller on two words: (√(−2 log u₀) cos 2πu₁, √(−2 log u₀) sin 2πu₁).
DC_HD void box_muller(uint32_t w0, uint32_t w1, double* n0, double* n1) {
  const double r = sqrt(-2.0 * log_unit(open_uniform(w0)));
  double c, s;
  sincos_2pi(open_uniform(w1), &c, &s);
  *n0 = r * c;
  *n1 = r * s;
}

// The counter key of one stream: seed, sample id, draw, domain.
struct NoiseKey {
  uint32_t k0 = 0, k1 = 0, id = 0, draw = 0, domain = kDomainStep;
  DC_HD static NoiseKey make(uint64_t seed, uint64_t id, uint32_t draw, uint32_t domain) {
    NoiseKey k;
    k.k0 = uint32_t(seed); k.k1 = uint32_t(seed >> 32);
    k.id = uint32_t(id); k.draw = draw; k.domain = domain;
    return k;
  }
};

// The four normals of elements 4q..4q+3 of one stream.
DC_HD void normal4(const NoiseKey& k, uint64_t q, double out[4]) {
  uint32_t c[4] = {uint32_t(q), k.id, k.draw, k.domain ^ (uint32_t(q >> 32) << 8)};
  philox4x32_10(c, k.k0, k.k1);
  box_muller(c[0], c[1], &out[0], &out[1]);
  box_muller(c[2], c[3], &out[2], &out[3]);
}

// The normals of elements 4q..4q+3 for q = q0 .. q0 + nb − 1 into out[4·nb], bit-identical to nb calls of
// normal4: the CPU kernels' generator (csrc/cpu/noise_cpu.cpp), many counters per iteration in vector
// lanes, compiled for the instruction sets the running CPU has.
void normal_blocks(const NoiseKey& k, uint64_t q0, int nb, double* out);

// The normal of element n alone (the CUDA kernels; the CPU fills whole blocks with normal_blocks).
DC_HD double normal_at(const NoiseKey& k, uint64_t n) {
  uint32_t c[4] = {uint32_t(n >> 2), k.id, k.draw, k.domain ^ (uint32_t(n >> 34) << 8)};
  philox4x32_10(c, k.k0, k.k1);
  const int lane = int(n & 3);
  const double r = sqrt(-2.0 * log_unit(open_uniform(lane < 2 ? c[0] : c[2])));
  double co, si;
  sincos_2pi(open_uniform(lane < 2 ? c[1] : c[3]), &co, &si);
  return r * ((lane & 1) ? si : co);
}

}  // namespace dc
