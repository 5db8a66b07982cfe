// Element math shared by the CPU and CUDA Sinkhorn solvers (book Sec. 7.2.2).
//
// Conventions. A problem is (a, b, C, ε) with plan P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε). The
// solvers keep the potentials in two parts, f = f̂ + ε log(α/a) and g = ĝ + ε log(β/b): the absorbed
// part (f̂, ĝ) sits inside the stored kernel K̃_ij = exp((f̂_i + ĝ_j − C_ij)/ε), the scalings (α, β)
// outside it, so that P = diag(α) K̃ diag(β) (the stabilized scaling form of Schmitzer, "Stabilized
// sparse scaling algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 2019).
// A Sinkhorn f-update is then α*_i = a_i / (K̃β)_i and a g-update β*_j = b_j / (K̃ᵀα)_j: two
// mat-vecs per iteration instead of the 2nm exponentials of the log-domain form. When a scaling
// leaves [1/kAbsorb, kAbsorb] (relative to its weight) it is absorbed into f̂, ĝ and K̃ is rebuilt.
//
// Over-relaxation (Thibault et al. 2017, "Overrelaxed Sinkhorn–Knopp algorithm for regularized optimal
// transport"; Lehmann et al. 2021, "A note on overrelaxation in the Sinkhorn algorithm"). A relaxed
// f-update moves f_i by ω·ε·δ_i with δ_i = log(α*_i/α_i) (ω = 1 is Sinkhorn). The dual
//   D(f, g) = ⟨a, f⟩ + ⟨b, g⟩ − ε Σ_ij a_i b_j exp((f_i + g_j − C_ij)/ε)
// is concave and separable in f for fixed g; the step's gain is exactly
//   D(new) − D(old) = ε Σ_i a_i h_ω(δ_i),  h_ω(δ) = φ(−δ) − φ((ω − 1)δ),  φ(x) = eˣ − 1 − x ≥ 0,
// so h_1 = φ(−δ) ≥ 0 is Sinkhorn's gain and h_ω > 0 near δ = 0 for every ω in (0, 2). A relaxed step
// is taken only when it gains at least kGainFraction of the Sinkhorn step, which makes the dual
// increase monotonically with a sufficient decrease: the iteration converges to the same unique
// optimum as plain Sinkhorn. ω itself follows SOR theory: the observed linear rate λ of the residual
// under relaxation ω gives the Gauss–Seidel rate μ² = (λ + ω − 1)²/(λ ω²) and the optimal
// ω* = 2/(1 + √(1 − μ²)); ω only ever increases within one ε stage (capped at kOmegaMax).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/numeric.h"

#if defined(__CUDACC__)
#define DC_OT_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define DC_OT_INLINE inline __attribute__((always_inline))
#else
#define DC_OT_INLINE inline
#endif

namespace dc {
namespace ot {

constexpr double kAbsorb = 1e50;         // scaling range before absorbing into the potentials (float64 kernel)
constexpr double kAbsorbF32 = 1e10;      // the same for a float32 kernel (range 1e±38)
constexpr double kTiny = 1e-280;         // a row/column sum below this underflowed: repair in the log domain
constexpr double kGainFraction = 0.05;   // a relaxed step must gain ≥ this share of the Sinkhorn step
constexpr double kOmegaMax = 1.95;
constexpr int kOmegaWindow = 10;         // iterations between ω updates (rate over the last half window)
constexpr int kOmegaStart = 10;          // plain Sinkhorn iterations before the first ω estimate
constexpr int kCandidates = 4;           // ω_t, then 1 + (ω_t − 1)/2, 1 + (ω_t − 1)/4, 1
// Automatic ε-scaling below this ε / (max C − min C): there a cold start barely moves within any
// reasonable budget (bench/RESULTS.md, tests/test_ot.py), while above it scaling only adds iterations.
constexpr double kAutoScaling = 1e-4;

// ε-scaling modes of a solve (exported as _core.EpsScaling).
enum EpsScaling : int { kScalingOff = 0, kScalingOn = 1, kScalingAuto = 2 };

// Status codes written per problem (stats[b, 3]); the Python layer turns them into errors/warnings
// (exported as _core.OTStatus).
enum Status : int {
  kConverged = 0,
  kMaxIters = 1,
  kBadCost = 2,       // NaN or infinite cost entry
  kBadA = 3,          // negative / non-finite entry of a
  kBadB = 4,
  kSumA = 5,          // a does not sum to 1 within the dtype's tolerance
  kSumB = 6,
  kBreakdown = 7,     // a non-finite scaling survived the log-domain repair (should not happen)
};

// exp(x) without libm so the CPU loops vectorize: x = k ln2 + r, |r| ≤ ln2/2 (Cody–Waite), e^r by its
// Taylor series to r¹³ (truncation < 2e-18), 2^k assembled in the exponent field. x < −708 gives 0
// (entries that small never matter here); x is clamped at 709.
DC_OT_INLINE double exp_fast(double x) {
#if defined(__CUDA_ARCH__)
  return exp(x);
#else
  double xc = x > 709.0 ? 709.0 : x;
  xc = xc < -708.0 ? -708.0 : xc;
  const double shift = 6755399441055744.0;  // 1.5·2⁵²: adding it rounds to an integer kept in the low bits
  double kd = xc * 1.4426950408889634 + shift;
  const uint64_t ki = dbl_bits(kd);
  kd -= shift;
  const double r = (xc - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0; p = p * r + 1.0 / 39916800.0; p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;    p = p * r + 1.0 / 40320.0;    p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;       p = p * r + 1.0 / 120.0;      p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;         p = p * r + 0.5;              p = p * r + 1.0;
  p = p * r + 1.0;
  const double scale = bits_dbl((ki + 1023u) << 52);
  const double y = p * scale;
  return x < -708.0 ? 0.0 : y;
#endif
}

// log(x) for positive normal x without libm: x = 2^e m, m in [√½, √2), log m = 2 atanh(s),
// s = (m − 1)/(m + 1), |s| < 0.172, odd series to s²³. The exponent field becomes a double through the
// 2⁵² trick (no integer → double conversion, which AVX2 lacks for 64-bit integers).
DC_OT_INLINE double log_fast(double x) {
#if defined(__CUDA_ARCH__)
  return log(x);
#else
  const uint64_t bx = dbl_bits(x);
  const double two52 = 4503599627370496.0;
  const double ef = bits_dbl((bx >> 52) | 0x4330000000000000ull) - two52;  // biased exponent as a double
  double m = bits_dbl((bx & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  const double half = m > 1.4142135623730951 ? 0.5 : 1.0;
  m *= half;
  const double e = ef - (half == 0.5 ? 1022.0 : 1023.0);
  const double s = (m - 1.0) / (m + 1.0);
  const double z = s * s;
  double p = 1.0 / 23.0;
  p = p * z + 1.0 / 21.0; p = p * z + 1.0 / 19.0; p = p * z + 1.0 / 17.0; p = p * z + 1.0 / 15.0;
  p = p * z + 1.0 / 13.0; p = p * z + 1.0 / 11.0; p = p * z + 1.0 / 9.0;  p = p * z + 1.0 / 7.0;
  p = p * z + 1.0 / 5.0;  p = p * z + 1.0 / 3.0;
  const double logm = 2.0 * s + 2.0 * s * z * p;
  return e * 6.93147180369123816490e-01 + (logm + e * 1.90821492927058770002e-10);
#endif
}

// φ(x) = eˣ − 1 − x without cancellation: Taylor series x²/2! + … + x¹³/13! for |x| < ¼ (truncation
// below 1e-17 relative), the direct form beyond (where φ ≥ 0.03, so no digits are lost).
DC_OT_INLINE double phi_series(double x) {
  double p = 1.0 / 6227020800.0;
  p = p * x + 1.0 / 479001600.0; p = p * x + 1.0 / 39916800.0; p = p * x + 1.0 / 3628800.0;
  p = p * x + 1.0 / 362880.0;    p = p * x + 1.0 / 40320.0;    p = p * x + 1.0 / 5040.0;
  p = p * x + 1.0 / 720.0;       p = p * x + 1.0 / 120.0;      p = p * x + 1.0 / 24.0;
  p = p * x + 1.0 / 6.0;         p = p * x + 0.5;
  return x * x * p;
}

DC_OT_INLINE double phi(double x) {
  const double direct = exp_fast(x) - 1.0 - x;
  return (x < 0.25 && x > -0.25) ? phi_series(x) : direct;
}

// φ(−δ) when e^{−δ} is known as a ratio (no exponential needed): e^{−δ} − 1 + δ.
DC_OT_INLINE double phi_neg(double delta, double exp_neg_delta) {
  return (delta < 0.25 && delta > -0.25) ? phi_series(-delta) : exp_neg_delta - 1.0 + delta;
}

// The relaxation candidates tried in order: ω_t, 1 + (ω_t − 1)/2, 1 + (ω_t − 1)/4, 1.
DC_OT_INLINE double candidate(double omega, int c) {
  return c == 0 ? omega : (c == 1 ? 1.0 + 0.5 * (omega - 1.0) : (c == 2 ? 1.0 + 0.25 * (omega - 1.0) : 1.0));
}

// The first candidate whose gain is at least kGainFraction of the Sinkhorn gain (gains[3] is that
// gain itself, so candidate 3 = plain Sinkhorn is always acceptable).
DC_OT_INLINE int choose_candidate(const double* gains) {
  for (int c = 0; c < kCandidates - 1; ++c)
    if (gains[c] >= kGainFraction * gains[kCandidates - 1] && gains[c] > 0.0) return c;
  return kCandidates - 1;
}

// ω update from the residual ratio over `h` iterations run at relaxation `omega` (SOR theory, see top).
DC_OT_INLINE double omega_update(double omega, double err_now, double err_before, int h) {
  if (!(err_now > 0.0) || !(err_before > 0.0) || !(err_now < err_before)) return omega;
  const double lam = exp(log(err_now / err_before) / double(h));
  double mu2 = (lam + omega - 1.0) * (lam + omega - 1.0) / (lam * omega * omega);
  mu2 = mu2 < 1.0 - 1e-12 ? mu2 : 1.0 - 1e-12;
  double w = 2.0 / (1.0 + sqrt(1.0 - mu2));
  w = w < kOmegaMax ? w : kOmegaMax;
  return w > omega ? w : omega;
}

// One entry of a scaling update (one side of an iteration): x* = w/s where w > 0 and s ≥ kTiny (an
// entry with w = 0 stays 0; one whose sum underflowed keeps x and is repaired in the log domain by the
// caller). Plain: x ← x*. Relaxed: δ = log(x*/x), x ← x* e^{(ω−1)δ} (= x e^{ωδ}), with the dual gains
// of this ω and of ω = 1 (in units of ε). `moved` counts entries that left [w/absorb, w·absorb].
struct ScalingStep {
  double x, delta, gain_w, gain_1, moved;
};

DC_OT_INLINE bool scaling_active(double w, double s) { return w > 0.0 && s >= kTiny; }

DC_OT_INLINE ScalingStep scaling_plain(double w, double s, double xo, double absorb) {
  const bool act = scaling_active(w, s);
  const double xn = act ? w / s : xo;
  return ScalingStep{xn, 0.0, 0.0, 0.0, (act && (xn > w * absorb || xn * absorb < w)) ? 1.0 : 0.0};
}

DC_OT_INLINE ScalingStep scaling_relaxed(double w, double s, double xo, double omega, double absorb) {
  const bool act = scaling_active(w, s);
  const double xs = act ? w / s : xo;
  const double dl = act ? log_fast(xs / xo) : 0.0;
  const double h1 = phi_neg(dl, act ? xo / xs : 1.0);
  const double z = (omega - 1.0) * dl;
  const double pz = phi(z);
  const double xn = act ? xs * (pz + 1.0 + z) : xo;
  return ScalingStep{xn, dl, w * (h1 - pz), w * h1, (act && (xn > w * absorb || xn * absorb < w)) ? 1.0 : 0.0};
}

// Gains w·h_ω(δ) of backtracking candidates 1 and 2 for one entry.
DC_OT_INLINE void candidate_gains(double w, double d, double omega, double* ga, double* gb) {
  const double h1 = phi_neg(d, exp_fast(-d));
  *ga = w * (h1 - phi((candidate(omega, 1) - 1.0) * d));
  *gb = w * (h1 - phi((candidate(omega, 2) - 1.0) * d));
}

// ε₀ of ε-scaling for a problem whose cost spans `range` (mode 0 off, 1 on, 2 auto; eps0 ≤ 0: the range);
// returns ε itself when there is no scaling.
DC_OT_INLINE double scaling_eps0(int mode, double eps, double eps0, double range) {
  const double e0 = eps0 > 0.0 ? eps0 : range;
  const bool on = mode == kScalingOn || (mode == kScalingAuto && eps < kAutoScaling * range);
  return (on && e0 > eps) ? e0 : eps;
}

// ε of stage k of ε-scaling: max(ε, ε₀ qᵏ).
DC_OT_INLINE double stage_eps(double eps, double eps0, double q, int k) {
  double e = eps0;
  for (int i = 0; i < k; ++i) e *= q;
  return e > eps ? e : eps;
}

}  // namespace ot
}  // namespace dc
