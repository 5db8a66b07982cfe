// Noise-schedule scalar functions in float64, shared by the CPU loop (bind/schedule_bind.cpp) and
// usable from CUDA kernels (everything is DC_HD, plain double math, no containers).
//
// Each family evaluates the eight quantities (α, σ, α', σ', λ, λ', f, g²) at a time t, and the
// closed-form inverse t(λ), with EXACTLY the formulas — and the same operation order — as the torch
// reference `_eval_ref` / `_inv_ref` in python/diffcore/schedules.py (λ = log(α/σ) is the half
// log-SNR). tests/test_schedules.py holds the two equal to 1e-13 relative, including the ±inf values
// at the ends (λ = +inf where σ = 0, −inf where α = 0).
//
// Family ids (`cid`) and parameters (`p`):
//   0 VPLinear(beta_min, beta_max)      1 VPCosine(s)
//   2 VPDiscrete(N), table = log α at the knots t_j = j/N, j = 0..N (ntable = N + 1, table[0] = 0)
//   3 SubVP(beta_min, beta_max)         4 VE(sigma_min, sigma_max, exact ∈ {0, 1})
//   5 EDM()                             6 RectifiedFlow(shift)
//   7 Trig(sigma_data)
#pragma once
#include <cmath>
#include <cstdint>

#include "core/numeric.h"

namespace dc {

// The family ids (`cid`); the binding exports them as _core.ScheduleFamily.
enum ScheduleFamily : int {
  kVPLinear = 0, kVPCosine = 1, kVPDiscrete = 2, kSubVP = 3, kVE = 4, kEDM = 5, kRectifiedFlow = 6, kTrig = 7,
  kNumScheduleFamilies = 8
};
constexpr double kSchedPi = 3.141592653589793;  // == Python's math.pi

struct SchedParams {
  int cid = -1;
  double p[4] = {0.0, 0.0, 0.0, 0.0};
  const double* table = nullptr;  // cid 2 only
  int64_t ntable = 0;
};

// Number of parameters each family expects (-1: unknown family).
DC_HD int schedule_num_params(int cid) {
  switch (cid) {
    case kVPLinear: return 2;
    case kVPCosine: return 1;
    case kVPDiscrete: return 1;
    case kSubVP: return 2;
    case kVE: return 3;
    case kEDM: return 0;
    case kRectifiedFlow: return 1;
    case kTrig: return 1;
    default: return -1;
  }
}

namespace sched_detail {

// log(1 + e^x) as the torch reference writes it: max(x, 0) + log1p(exp(−|x|)).
DC_HD double softplus(double x) { return (x > 0.0 ? x : 0.0) + log1p(exp(-fabs(x))); }

// torch.sigmoid: 1 / (1 + exp(−x)).
DC_HD double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

DC_HD void set8(double out[8], double a, double s, double da, double ds, double l, double dl, double f,
                double g2) {
  out[0] = a; out[1] = s; out[2] = da; out[3] = ds; out[4] = l; out[5] = dl; out[6] = f; out[7] = g2;
}

// VPLinear / SubVP share β(t) and B(t) = ∫₀ᵗβ.
DC_HD void linear_beta(double bmin, double bmax, double t, double& beta, double& B) {
  const double db = bmax - bmin;
  beta = bmin + db * t;
  B = bmin * t + (0.5 * db) * t * t;
}

DC_HD double linear_beta_inverse(double bmin, double bmax, double Bl) {
  const double db = bmax - bmin;
  return 2.0 * Bl / (bmin + sqrt(bmin * bmin + (2.0 * db) * Bl));
}

// Discrete schedule: segment of t (clamp(floor(t·N), 0, N − 1)).
DC_HD int64_t discrete_segment(double t, int64_t N) {
  const double fj = floor(t * double(N));
  if (!(fj >= 0.0)) return 0;  // also NaN
  if (fj > double(N - 1)) return N - 1;
  return int64_t(fj);
}

}  // namespace sched_detail

DC_HD void schedule_eval_one(const SchedParams& sp, double t, double out[8]) {
  using namespace sched_detail;
  switch (sp.cid) {
    case kVPLinear: {  // VPLinear
      double beta, B;
      linear_beta(sp.p[0], sp.p[1], t, beta, B);
      const double alpha = exp(-0.5 * B);
      const double sig2 = -expm1(-B);
      const double sigma = sqrt(sig2);
      set8(out, alpha, sigma, (-0.5 * beta) * alpha, ((0.5 * beta) * alpha) * alpha / sigma,
           -0.5 * log(expm1(B)), -beta / (2.0 * sig2), -0.5 * beta, beta);
      return;
    }
    case kVPCosine: {  // VPCosine
      const double s = sp.p[0];
      const double k = kSchedPi / (2.0 * (1.0 + s));
      const double c0 = cos(k * s);
      const double cos_th = sin(k * (1.0 - t));  // exactly 0 at t = 1
      const double sin_th = sin(k * (t + s));
      const double alpha = cos_th / c0;
      const double one_minus = (2.0 * sin((0.5 * k) * (t + 2.0 * s))) * sin((0.5 * k) * t) / c0;  // 1 − α
      const double sig2 = one_minus * (1.0 + alpha);
      const double sigma = sqrt(sig2);
      const double dalpha = (-k) * sin_th / c0;
      const double f = (-k) * sin_th / cos_th;
      set8(out, alpha, sigma, dalpha, (-alpha) * dalpha / sigma, log(alpha) - 0.5 * log(sig2), f / sig2, f,
           -2.0 * f);
      return;
    }
    case kVPDiscrete: {  // VPDiscrete: log α piecewise linear between the knots
      const int64_t N = int64_t(sp.p[0]);
      const int64_t j = discrete_segment(t, N);
      const double la0 = sp.table[j];
      const double d = sp.table[j + 1] - la0;
      const double la = la0 + (t * double(N) - double(j)) * d;
      const double dla = double(N) * d;
      const double alpha = exp(la);
      const double sig2 = 0.0 - expm1(2.0 * la);  // +0 at t = 0
      const double sigma = sqrt(sig2);
      const double dalpha = alpha * dla;
      set8(out, alpha, sigma, dalpha, (-alpha) * dalpha / sigma, la - 0.5 * log(sig2), dla / sig2, dla,
           -2.0 * dla);
      return;
    }
    case kSubVP: {  // SubVP
      double beta, B;
      linear_beta(sp.p[0], sp.p[1], t, beta, B);
      const double alpha = exp(-0.5 * B);
      const double sigma = -expm1(-B);
      const double dsigma = beta * alpha * alpha;
      set8(out, alpha, sigma, (-0.5 * beta) * alpha, dsigma, -0.5 * B - log(sigma), -0.5 * beta - dsigma / sigma,
           -0.5 * beta, beta * -expm1(-2.0 * B));
      return;
    }
    case kVE: {  // VE (geometric σ); exact: kernel std √(σ(t)² − σ_min²)
      const double smin = sp.p[0], smax = sp.p[1];
      const double L = log(smax / smin);
      const double st = smin * exp(t * L);
      if (sp.p[2] == 0.0) {
        set8(out, 1.0, st, 0.0, st * L, -log(smin) - t * L, 0.0 - L, 0.0, (2.0 * st) * st * L);
        return;
      }
      const double sigma = smin * sqrt(expm1((2.0 * t) * L));
      const double dsigma = (st * st) * L / sigma;
      set8(out, 1.0, sigma, 0.0, dsigma, -log(sigma), -dsigma / sigma, 0.0, (2.0 * st) * st * L);
      return;
    }
    case kEDM:  // EDM: α = 1, σ = t
      set8(out, 1.0, t, 0.0, 1.0, -log(t), -1.0 / t, 0.0, 2.0 * t);
      return;
    case kRectifiedFlow: {  // RectifiedFlow with time shift
      const double s = sp.p[0];
      const double den = 1.0 + (s - 1.0) * t;
      const double u = s * t / den;
      const double du = s / (den * den);
      const double omt = 1.0 - t;
      set8(out, omt / den, u, -du, du, log1p(-t) - log(s * t), -1.0 / (t * omt), -s / (omt * den),
           ((2.0 * s) * s) * t / ((den * den) * omt));
      return;
    }
    case kTrig: {  // Trig
      const double h = kSchedPi / 2.0;
      const double sd = sp.p[0];
      const double c = sin(h * (1.0 - t));  // cos(πt/2), exactly 0 at t = 1
      const double s = sin(h * t);
      set8(out, c, sd * s, (-h) * s, (sd * h) * c, log(c) - log(sd * s), (-h) / (s * c), (-h) * s / c,
           ((kSchedPi * sd) * sd) * s / c);
      return;
    }
    default: {
      const double nan = NAN;
      set8(out, nan, nan, nan, nan, nan, nan, nan, nan);
      return;
    }
  }
}

DC_HD double schedule_inverse_one(const SchedParams& sp, double lam) {
  using namespace sched_detail;
  switch (sp.cid) {
    case kVPLinear:  // VPLinear: B = softplus(−2λ)
      return linear_beta_inverse(sp.p[0], sp.p[1], softplus(-2.0 * lam));
    case kVPCosine: {  // VPCosine
      const double s = sp.p[0];
      const double k = kSchedPi / (2.0 * (1.0 + s));
      const double s0 = sin(k * s), c0 = cos(k * s);
      const double alpha = sqrt(sigmoid(2.0 * lam));
      const double sig2 = sigmoid(-2.0 * lam);
      // cos θ = c0·α, sin θ = R; θ − θ0 from its sine c0·σ²/(R + s0·α) (no cancellation near t = 0)
      // and its cosine c0²·α + s0·R
      const double R = sqrt(s0 * s0 + (c0 * c0) * sig2);
      return atan2(c0 * sig2 / (R + s0 * alpha), (c0 * c0) * alpha + s0 * R) / k;
    }
    case kVPDiscrete: {  // VPDiscrete: binary search for the segment, then linear in log α
      const int64_t N = int64_t(sp.p[0]);
      const double la = -0.5 * softplus(-2.0 * lam);
      const double v = -la;
      // searchsorted(neg, v, right=True) on neg = −table (increasing): count of knots with neg <= v
      int64_t lo = 0, hi = sp.ntable;
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (-sp.table[mid] <= v) lo = mid + 1; else hi = mid;
      }
      int64_t j = lo - 1;
      if (j < 0) j = 0;
      if (j > N - 1) j = N - 1;
      const double nj = -sp.table[j], nj1 = -sp.table[j + 1];
      const double frac = (nj - v) / (nj - nj1);
      return (double(j) + frac) / double(N);
    }
    case kSubVP: {  // SubVP: α solves e^λ α² + α − e^λ = 0; B = −2 log α without cancellation
      const double u = exp(-lam);
      const double Bl = 2.0 * log1p(0.5 * (u + u * u / (sqrt(u * u + 4.0) + 2.0)));
      return linear_beta_inverse(sp.p[0], sp.p[1], Bl);
    }
    case kVE: {  // VE
      const double smin = sp.p[0], smax = sp.p[1];
      const double L = log(smax / smin);
      if (sp.p[2] == 0.0) return (-lam - log(smin)) / L;
      return 0.5 * log1p(exp(-2.0 * lam) / (smin * smin)) / L;
    }
    case kEDM:  // EDM
      return exp(-lam);
    case kRectifiedFlow:  // RectifiedFlow
      return sigmoid(-lam - log(sp.p[0]));
    case kTrig:  // Trig
      return (2.0 / kSchedPi) * atan2(1.0, sp.p[0] * exp(lam));
    default:
      return NAN;
  }
}

}  // namespace dc
