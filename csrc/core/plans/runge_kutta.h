// Plain Euler and Heun (book §4.2.2, App. A.1.4; Karras et al. 2022, Alg. 1) in one of two variables:
//   "t"   : dx/dt = v̂ (native velocity), the schedule's own time (flow matching's usual sampler);
//   "rho" : dy/dρ = ε̂ with y = x/α, ρ = σ/α (native noise) — EDM Algorithm 1 for σ-schedules, where
//           α ≡ 1 and ρ = σ; Euler here is DDIM, Heun is DPM-Solver-2 variant A with r₁ = 1.
// A step to σ = 0 is taken with Euler (the corrector would need the model at σ = 0).
#pragma once
#include "core/plan_row.h"

namespace dc {

inline void plan_rk(const PlanIO& io, bool in_rho) {
  auto euler = [&](const Node& s, const Node& t, const Lin& x, const Lin& d) {
    return in_rho ? (t.a / s.a) * x + (t.a * (t.rho - s.rho)) * d : x + (t.t - s.t) * d;
  };
  const Lin X = Lin::X(), M = Lin::M(), R0 = Lin::R(0);
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    if (io.order(i) == 1) {
      const Lin x = euler(s, t, X, M);
      io.emit(i, 0, s, 0, -1, &x, nullptr);
    } else {
      const Lin pred = euler(s, t, X, M);
      io.emit(i, 0, s, 0, 0, nullptr, &pred);
      const Lin x = euler(s, t, X, 0.5 * (R0 + M));
      io.emit(i, 1, t, 1, -1, &x, nullptr);
    }
  }
}

}  // namespace dc
