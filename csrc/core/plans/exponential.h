// Exponential-integrator plans in λ = log(α/σ) (book §9.2–9.5):
// DDIM, DPM-Solver-1/2/3 (single-step, noise prediction), DPM-Solver++ 1/2S/3S (single-step, data
// prediction), DPM-Solver++ 2M/3M (multistep, data prediction) and multistep DPM-Solver 2M/3M (noise
// prediction). The stochastic members of the family are in csrc/core/plans/dpm_sde.h.
#pragma once
#include "core/phi.h"
#include "core/plan_row.h"

namespace dc {

// Noise-form Taylor update (book §9.4):
//   x_t = (α_t/α_s) x_s − σ_t [h φ_1(h) d0 + h φ_2(h) d1 + h φ_3(h) d2],  h = λ_t − λ_s,
// with σ_t h φ_1(h) = σ_t (e^h − 1) written as α_t (ρ_s − ρ_t) so a step to σ = 0 is exact.
// d1 ≈ h ε̂', d2 ≈ h² ε̂''.
inline Lin noise_taylor(const Node& s, const Node& t, const Lin& xs, const Lin& d0, const Lin* d1 = nullptr,
                        const Lin* d2 = nullptr) {
  const double h = t.lam - s.lam;
  Lin r = (t.a / s.a) * xs + (t.a * (t.rho - s.rho)) * d0;
  if (d1) r = r - (t.s * hphi(2, h, h)) * *d1;
  if (d2) r = r - (t.s * hphi(3, h, h)) * *d2;
  return r;
}

// Data-form Taylor update (book §9.5, corrected moments of docs/errata.md S2):
//   x_t = (σ_t/σ_s) x_s + α_t [h φ_1(−h) d0 + h φ_2(−h) d1 + h φ_3(−h) d2],
// h φ_1(−h) = 1 − e^{−h}, exact at σ_t = 0 (h = ∞). d1 ≈ h x̂', d2 ≈ h² x̂''.
inline Lin data_taylor(const Node& s, const Node& t, const Lin& xs, const Lin& d0, const Lin* d1 = nullptr,
                       const Lin* d2 = nullptr) {
  const double h = t.lam - s.lam;
  Lin r = (t.s / s.s) * xs + (t.a * hphi(1, h, -h)) * d0;
  if (d1) r = r + (t.a * hphi(2, h, -h)) * *d1;
  if (d2) r = r + (t.a * hphi(3, h, -h)) * *d2;
  return r;
}

// DDIM as in book Eq. (9.2.2): x_t = α_t x̂_s + σ_t ε̂_s with ε̂_s = (x_s − α_s x̂_s)/σ_s, native x̂.
// (Same method as DPM-Solver++(1); evaluated through different arithmetic, which the equivalence
// tests rely on.)
inline void plan_ddim(const PlanIO& io) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const Lin x = (t.s / s.s) * Lin::X() + (t.a - t.s * (s.a / s.s)) * Lin::M();
    io.emit(i, 0, s, 0, -1, &x, nullptr);
  }
}

// Single-step DPM-Solver (noise form, book §9.4) and DPM-Solver++ (data form, book §9.5) of order 1–3 per step.
// Stage nodes s1 (and s2) sit at λ_s + r1 h (and λ_s + r2 h). variant 0 = A ("dpmsolver"/midpoint,
// the reference default), 1 = B ("taylor"/heun). Ring slot 0 keeps the stage-0 output, slot 1 the
// stage-1 output. The second stage input of a third-order step is the Taylor form (Lu et al. 2022,
// Alg. "DPM-Solver-3"); `stage_variant` makes it the variant's own second-order update from s to s2
// instead (the midpoint weight ½ for variant A), as diffusers' DPMSolverSinglestepScheduler returns it.
template <class Update>
void plan_singlestep(const PlanIO& io, int variant, Update update, bool stage_variant = false) {
  const Lin X = Lin::X(), M = Lin::M(), R0 = Lin::R(0), R1 = Lin::R(1);
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double h = t.lam - s.lam;
    const int p = io.order(i);
    if (p == 1) {
      const Lin x = update(s, t, X, M, nullptr, nullptr);
      io.emit(i, 0, s, 0, -1, &x, nullptr);
    } else if (p == 2) {
      const Node s1 = io.st(i, 0);
      const double r = (s1.lam - s.lam) / h;
      const Lin u = update(s, s1, X, M, nullptr, nullptr);
      io.emit(i, 0, s, 0, 0, nullptr, &u);
      const Lin D = M - R0;
      Lin x;
      if (variant == 0) {
        // A: x̂/ε̂ at s + D/(2r), the midpoint-rule weight (= ε̂_1 itself for r = 1/2)
        const Lin mid = R0 + D / (2.0 * r);
        x = update(s, t, X, mid, nullptr, nullptr);
      } else {
        const Lin d1 = D / r;
        x = update(s, t, X, R0, &d1, nullptr);
      }
      io.emit(i, 1, s1, 1, -1, &x, nullptr);
    } else {
      const Node s1 = io.st(i, 0), s2 = io.st(i, 1);
      const double r1 = (s1.lam - s.lam) / h, r2 = (s2.lam - s.lam) / h;
      const Lin u1 = update(s, s1, X, M, nullptr, nullptr);
      io.emit(i, 0, s, 0, 0, nullptr, &u1);
      const Lin d1u = (r2 / r1) * (M - R0);
      const Lin u2 = (stage_variant && variant == 0) ? update(s, s2, X, R0 + 0.5 * d1u, nullptr, nullptr)
                                                     : update(s, s2, X, R0, &d1u, nullptr);
      io.emit(i, 1, s1, 1, 1, nullptr, &u2);
      const Lin D1 = R1 - R0, D2 = M - R0;
      Lin x;
      if (variant == 0) {
        const Lin d1 = D2 / r2;
        x = update(s, t, X, R0, &d1, nullptr);
      } else {
        const Lin d1 = (r2 / r1 * D1 - r1 / r2 * D2) / (r2 - r1);  // ≈ h·m'
        const Lin d2 = 2.0 * (D2 / r2 - D1 / r1) / (r2 - r1);      // ≈ h²·m''
        x = update(s, t, X, R0, &d1, &d2);
      }
      io.emit(i, 2, s2, 1, -1, &x, nullptr);
    }
  }
}

inline void plan_dpm_solver(const PlanIO& io, int variant, bool stage_variant = false) {
  plan_singlestep(io, variant, noise_taylor, stage_variant);
}
inline void plan_dpmpp_single(const PlanIO& io, int variant, bool stage_variant = false) {
  plan_singlestep(io, variant, data_taylor, stage_variant);
}

// Multistep DPM-Solver(++) 2M/3M (book §9.5 for the data form; Lu et al. 2022b, "DPM-Solver++", §4 and
// App. B for both forms): the model output of step j lives in ring slot j mod K (K = max order − 1);
// `update` is data_taylor (DPM-Solver++) or noise_taylor (DPM-Solver), or an SDE form
// (csrc/core/plans/dpm_sde.h). `w` weights the second divided difference of 3M: 2 is the consistent
// third-order weight, 1 the reference code's (observed order 2).
template <class Update>
void plan_multistep(const PlanIO& io, int variant, double w, Update update) {
  const Lin X = Lin::X(), M = Lin::M();
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double h = t.lam - s.lam;
    const int p = io.order(i);
    Lin x;
    if (p == 1) {
      x = update(s, t, X, M, nullptr, nullptr);
    } else {
      const Lin m1 = Lin::R(io.slot_of(i - 1));
      const double r0 = (s.lam - io.g(i - 1).lam) / h;
      const Lin D10 = (M - m1) / r0;
      if (p == 2) {
        if (variant == 0) {
          x = update(s, t, X, M + 0.5 * D10, nullptr, nullptr);
        } else {
          x = update(s, t, X, M, &D10, nullptr);
        }
      } else {
        const Lin m2 = Lin::R(io.slot_of(i - 2));
        const double r1 = (io.g(i - 1).lam - io.g(i - 2).lam) / h;
        const Lin D11 = (m1 - m2) / r1;
        const Lin D1 = D10 + (r0 / (r0 + r1)) * (D10 - D11);  // ≈ h m'
        const Lin D2 = (D10 - D11) / (r0 + r1);                // ≈ h² m''/2
        const Lin d2 = w * D2;
        x = update(s, t, X, M, &D1, &d2);
      }
    }
    io.emit(i, 0, s, 0, io.slot_of(i), &x, nullptr, s.t, t.t);
  }
}

inline void plan_dpmpp_multi(const PlanIO& io, int variant, double w) { plan_multistep(io, variant, w, data_taylor); }
inline void plan_dpm_solver_multi(const PlanIO& io, int variant, double w) {
  plan_multistep(io, variant, w, noise_taylor);
}

}  // namespace dc
