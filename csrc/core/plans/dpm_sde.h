// SDE-DPM-Solver and SDE-DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++", App. C: the first-order and
// multistep second-order solvers of the reverse SDE in λ), multistep and single-step, in the form of
// diffusers' DPMSolverMultistepScheduler / DPMSolverSinglestepScheduler (algorithm_type "sde-dpmsolver"
// and "sde-dpmsolver++"). The step goes from s to t, h = λ_t − λ_s; z is the step's fresh noise.
//
// Noise form (ε̂; Lu et al. 2022b eq. (C.2) and its multistep extension):
//   x_t = (α_t/α_s) x_s − 2σ_t (e^h − 1) d0 − 2σ_t h φ₂(h) d1 + σ_t √(e^{2h} − 1) z,
// data form (x̂):
//   x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) d0 + α_t H φ₂(−H) d1 + α_t c₃ d2 + σ_t √(1 − e^{−2h}) z,
// with H = 2h, d1 ≈ h m' and d0, d1, d2 the derivative estimates of csrc/core/plans/exponential.h.
// c₃ = (1 − e^{−H} − H)/H² − ½ = H φ₃(−H) − 1 is diffusers' weight of the second divided difference
// (third-order sde-dpmsolver++). It tends to −1, not 0, as h → 0: the third-order update is only first
// order (docs/diffusers.md, "sde-dpmsolver++ of order 3"); it is kept so that the plan is that method.
#pragma once
#include <cmath>

#include "core/phi.h"
#include "core/plan_row.h"
#include "core/plans/exponential.h"

namespace dc {

inline Lin noise_sde(const Node& s, const Node& t, const Lin& xs, const Lin& d0, const Lin* d1 = nullptr,
                     const Lin* d2 = nullptr) {
  if (d2) throw std::invalid_argument("plan: the noise-form SDE-DPM-Solver has no third-order update");
  const double h = t.lam - s.lam;
  // σ_t (e^h − 1) = α_t (ρ_s − ρ_t): finite and exact at σ_t = 0
  Lin r = (t.a / s.a) * xs + (2.0 * t.a * (t.rho - s.rho)) * d0;
  if (d1) r = r - (2.0 * t.s * hphi(2, h, h)) * *d1;
  const double cz = t.s > 0 ? t.s * std::sqrt(std::expm1(2.0 * h)) : t.a * s.rho;
  return r + cz * Lin::Z();
}

inline Lin data_sde(const Node& s, const Node& t, const Lin& xs, const Lin& d0, const Lin* d1 = nullptr,
                    const Lin* d2 = nullptr) {
  const double h = t.lam - s.lam, H = 2.0 * h;
  const double e2 = std::isinf(h) ? 1.0 : -std::expm1(-H);  // 1 − e^{−2h}
  Lin r = ((t.s / s.s) * std::exp(-h)) * xs + (t.a * e2) * d0;
  if (d1) r = r + (t.a * hphi(2, H, -H)) * *d1;
  if (d2) r = r + (t.a * (hphi(3, H, -H) - 1.0)) * *d2;
  return r + (t.s * std::sqrt(e2)) * Lin::Z();
}

// Multistep: orders 1–2 (noise form), 1–3 (data form); `variant` 0 = midpoint, 1 = heun.
inline void plan_sde_dpm_solver_multi(const PlanIO& io, int variant) { plan_multistep(io, variant, 1.0, noise_sde); }
inline void plan_sde_dpmpp_multi(const PlanIO& io, int variant) { plan_multistep(io, variant, 1.0, data_sde); }
// Single-step on given stage nodes, every stage drawing its own noise (diffusers' singlestep sde-dpmsolver++).
inline void plan_sde_dpmpp_single(const PlanIO& io, int variant) { plan_singlestep(io, variant, data_sde, true); }

}  // namespace dc
