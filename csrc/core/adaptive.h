// Per-sample error control of the adaptive solver (python/diffcore/solvers/adaptive_control.py, whose
// adaptive_control_reference is the torch reference and whose docstring is the spec).
//
// For every sample b, with x the state at the start of its trial step, x_low / x_high the embedded
// pair's lower- and higher-order results and h the trial step (in λ) from lam_s to lam_t:
//
//   tol_n = atol + rtol·max(|x_n|, |x_high,n|),   E_b = sqrt(mean_n ((x_high,n − x_low,n)/tol_n)²)
//
// (torchdiffeq's mixed tolerance and RMS norm per sample, accumulated in float64), accepted iff
// active and E ≤ 1. The step-size factor is the PI controller of Gustafsson (1991) (Hairer & Wanner,
// Solving ODEs II, §IV.2, Eq. (2.43c); Söderlind 2002) on acceptance,
//
//   fac = θ · E_n^{−(k_I + k_P)/k} · E_{n−1}^{k_P/k},   E_{n−1} ← max(E_n, 1e-4),
//
// and the pure I-controller fac = θ · E_n^{−1/k} on rejection; E is floored at 1e-10 inside the
// powers, fac is clipped to [fac_min, fac_max] and h ← min(h·fac, lam_end − lam_s). An accepted step
// copies x_high into x and sets lam_s ← lam_t; one that ends at lam_t ≥ lam_end − 1e-12·(1 + |lam_end|)
// finishes the sample (active ← false, h left as it was). Inactive samples are not touched (E is still
// written for them, as the reference returns it for every sample).
//
// The per-sample control is the reference operation for operation (NaN propagating like torch's
// maximum / minimum / clamp; powers with torch's special exponents ±0.5, −1, 2 done as it does them);
// only the float64 sum of the squared terms differs in order from torch's mean (CPU: tiles of features
// summed sequentially, then the tiles in tile order; CUDA: a fixed-order block tree), so E agrees to
// rounding (~1e-15 relative) and is bitwise independent of the thread count.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/numeric.h"

namespace dc {

// The step-size controller's constants, declared here once: the binding exports them as
// _core.ADAPTIVE_CONTROL, from which python/diffcore/solvers/adaptive_control.py (the controller of
// every adaptive solver) takes its floors, its rejection cap and its defaults.
constexpr double kAdaptiveErrFloor = 1e-10;     // E is floored here inside the powers
constexpr double kAdaptiveErrPrevFloor = 1e-4;  // the PI term's memory E_{n-1} is floored here
constexpr double kAdaptiveEndTol = 1e-12;       // relative: a step ending this close to lam_end finishes
// Consecutive rejections of one step before a solver gives up. With 0 < θ < 1 every rejection shrinks
// the step by at least θ and an error that behaves like C·h^k is accepted after a few; dozens in a row
// mean the error does not shrink with h (tolerances below the arithmetic's resolution, a model
// discontinuous in t or x), and retrying further would only hang.
constexpr int kAdaptiveMaxRejections = 50;
// Default controller: safety factor θ, factor limits and the PI.3.4 gains (k_I, k_P) of Gustafsson (1991).
constexpr double kAdaptiveTheta = 0.9;
constexpr double kAdaptiveFacMin = 0.2;
constexpr double kAdaptiveFacMax = 5.0;
constexpr double kAdaptiveKI = 0.3;
constexpr double kAdaptiveKP = 0.4;

struct AdaptiveArgs {
  void* x = nullptr;            int64_t x_sb = 0;    // [B, N] (features contiguous), written where accepted
  const void* x_low = nullptr;  int64_t lo_sb = 0;   // [B, N], x's dtype
  const void* x_high = nullptr; int64_t hi_sb = 0;   // [B, N], x's dtype
  double* h = nullptr;          int64_t h_s = 0;     // [B] float64, in/out
  double* err_prev = nullptr;   int64_t ep_s = 0;    // [B] float64, in/out
  double* lam_s = nullptr;      int64_t ls_s = 0;    // [B] float64, in/out
  const double* lam_t = nullptr;   int64_t lt_s = 0; // [B] float64 (any stride)
  const double* lam_end = nullptr; int64_t le_s = 0; // [B] float64 (any stride, 0 for broadcasting)
  uint8_t* active = nullptr;    int64_t act_s = 0;   // [B] bool, in/out
  uint8_t* accepted = nullptr;  int64_t acc_s = 0;   // [B] bool, out
  double* err = nullptr;        int64_t err_s = 0;   // [B] float64, out (E)
  int64_t B = 0, N = 0;
  double atol = 0, rtol = 0, theta = kAdaptiveTheta, fac_min = kAdaptiveFacMin, fac_max = kAdaptiveFacMax;
  double k_i = kAdaptiveKI, k_p = kAdaptiveKP;
  int order = 1;
};

// torch's NaN-propagating maximum / minimum and clamp_min.
DC_HD double nan_max(double a, double b) { return (a != a) ? a : (b != b) ? b : (a < b ? b : a); }
DC_HD double nan_min(double a, double b) { return (a != a) ? a : (b != b) ? b : (b < a ? b : a); }

// Tensor.pow(scalar) in float64 as torch does it (its special exponents, else pow).
DC_HD double torch_pow(double x, double e) {
  if (e == 0.5) return sqrt(x);
  if (e == 2.0) return x * x;
  if (e == -0.5) return 1.0 / sqrt(x);
  if (e == -1.0) return 1.0 / x;
  if (e == -2.0) return 1.0 / (x * x);
  return pow(x, e);
}

// ((hi − lo)/(atol + rtol·max(|x|, |hi|)))² of one element, in float64.
template <class T>
DC_HD double adaptive_term(const AdaptiveArgs& a, const T* x, const T* lo, const T* hi) {
  const double xv = load_as<double>(x), lv = load_as<double>(lo), hv = load_as<double>(hi);
  const double tol = a.atol + a.rtol * nan_max(fabs(xv), fabs(hv));
  const double d = (hv - lv) / tol;
  return d * d;
}

// The control of sample b given its sum of squared terms: writes err, accepted and (for an active
// sample) lam_s, err_prev, h and active. Returns whether the step is accepted (x ← x_high).
DC_HD bool adaptive_control_sample(const AdaptiveArgs& a, int64_t b, double sumsq) {
  const double E = sqrt(sumsq / double(a.N));
  const bool active = a.active[b * a.act_s] != 0;
  const bool acc = active && (E <= 1.0);
  a.err[b * a.err_s] = E;
  a.accepted[b * a.acc_s] = acc ? 1 : 0;
  if (!active) return false;
  const double k = double(a.order);
  const double Ec = (E != E) ? E : (E < kAdaptiveErrFloor ? kAdaptiveErrFloor : E);
  double fac;
  if (acc) {
    fac = a.theta * torch_pow(Ec, -(a.k_i + a.k_p) / k) * torch_pow(a.err_prev[b * a.ep_s], a.k_p / k);
  } else {
    fac = a.theta * torch_pow(Ec, -1.0 / k);
  }
  fac = nan_min(nan_max(fac, a.fac_min), a.fac_max);  // torch.clamp
  const double lam_t = a.lam_t[b * a.lt_s];
  const double lam_end = a.lam_end[b * a.le_s];
  double lam_s = a.lam_s[b * a.ls_s];
  if (acc) {
    lam_s = lam_t;
    a.lam_s[b * a.ls_s] = lam_s;
    a.err_prev[b * a.ep_s] = (E < kAdaptiveErrPrevFloor) ? kAdaptiveErrPrevFloor : E;  // E ≤ 1 here: no NaN
  }
  const bool done = acc && (lam_t >= lam_end - kAdaptiveEndTol * (1.0 + fabs(lam_end)));
  if (!done) {
    double& h = a.h[b * a.h_s];
    h = nan_min(h * fac, lam_end - lam_s);
  }
  a.active[b * a.act_s] = done ? 0 : 1;
  return acc;
}

// Backend entry points (cpu/adaptive_cpu.cpp, cuda/adaptive_cuda.cu).
void adaptive_control_cpu(const AdaptiveArgs& a, DType dtype, int nthreads);
void adaptive_control_cuda(const AdaptiveArgs& a, DType dtype, int device, uintptr_t stream);

}  // namespace dc
