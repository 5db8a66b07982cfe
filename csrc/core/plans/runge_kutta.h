// Explicit Runge–Kutta plans from a Butcher tableau (Hairer, Nørsett & Wanner I, §II.1; the tableau
// and its encoding: python/diffcore/solvers/tableau.py) in one of two variables:
//   "t"   : dx/dt = v̂ (native velocity), the schedule's own time (flow matching's usual sampler);
//   "rho" : dy/dρ = ε̂ with y = x/α, ρ = σ/α (native noise) — EDM Algorithm 1 for σ-schedules, where
//           α ≡ 1 and ρ = σ; Euler here is DDIM, Heun is DPM-Solver-2 variant A with r₁ = 1.
// Stage k sits at c_k of the step in that variable (the caller computes its time: PlanIO::st(i, k − 1);
// c_k = 1 is the grid's next node itself). Stage k < S − 1 stores its output in ring slot k and writes
// the next stage's input y; the last stage writes x. A step of order below the method's (the final
// step to σ = 0, where a stage at c = 1 would evaluate the model at zero noise) uses `low`, a tableau
// without such a stage whose order is at least the method's minus one, so the global order is kept.
#pragma once
#include <stdexcept>
#include <vector>

#include "core/plan_row.h"

namespace dc {

struct RKTableau {
  int S = 0;
  std::vector<double> c, a, b;  // a: S×S row-major, strictly lower triangle used
  RKTableau() = default;
  RKTableau(std::vector<double> c_, std::vector<double> a_, std::vector<double> b_)
      : S(int(c_.size())), c(std::move(c_)), a(std::move(a_)), b(std::move(b_)) {
    if (S < 1 || S > kMaxRing + 1 || int(b.size()) != S || int(a.size()) != S * S)
      throw std::invalid_argument("rk tableau: expected 1 <= S <= " + std::to_string(kMaxRing + 1) +
                                  " stages with S nodes, S*S stage weights and S solution weights");
  }
};

inline void plan_rk(const PlanIO& io, bool in_rho, const RKTableau& high, const RKTableau& low, int high_order) {
  const Lin X = Lin::X(), M = Lin::M();
  for (int i = 0; i < io.M; ++i) {
    const RKTableau& tb = io.order(i) >= high_order ? high : low;
    const int S = tb.S;
    const Node s = io.g(i), t = io.g(i + 1);
    const double h = in_rho ? t.rho - s.rho : t.t - s.t;
    auto node = [&](int k) { return k == 0 || tb.c[k] == 0.0 ? s : tb.c[k] == 1.0 ? t : io.st(i, k - 1); };
    // the state at node n after h·(Σ_j w_j k_j), with k_j in ring slot j (j < k) and k_k = m
    auto advance = [&](const Node& n, const double* w, int k) {
      Lin d = w[k] * M;
      for (int j = 0; j < k; ++j) d = d + w[j] * Lin::R(j);
      return in_rho ? (n.a / s.a) * X + (n.a * h) * d : X + h * d;
    };
    for (int k = 0; k < S; ++k) {
      const Node at = node(k);
      if (k < S - 1) {
        const Lin y = advance(node(k + 1), &tb.a[(k + 1) * S], k);
        io.emit(i, k, at, k == 0 ? 0 : 1, k, nullptr, &y);
      } else {
        const Lin x = advance(t, tb.b.data(), k);
        io.emit(i, k, at, k == 0 ? 0 : 1, -1, &x, nullptr);
      }
    }
  }
}

}  // namespace dc
