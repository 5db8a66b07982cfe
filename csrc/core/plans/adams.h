// Exponential Adams–Bashforth plans on noise prediction (book §9.3; Zhang & Chen 2023, DEIS):
//   DEIS tAB-n: Lagrange extrapolation of ε̂ in t (or in log ρ, diffusers' "logrho" DEIS) through the last
//               n+1 outputs, integrated against dρ
//   iPNDM:      fixed Adams–Bashforth weights on ε̂ in (ρ, x/α) (order 2 on non-uniform grids)
// The model output of step j lives in ring slot j mod K (K = max order − 1).
#pragma once
#include "core/plan_row.h"

namespace dc {

// tAB-DEIS (book §9.3): x_t = (α_t/α_s) x_s + Σ_j C_j ε̂_{i−j},  C_j = α_t ∫_{ρ_s}^{ρ_t} ℓ_j(τ(ρ)) dρ,
// ℓ_j the Lagrange basis in t on the nodes t_i, t_{i−1}, …. The integral is a Gauss–Legendre sum in ρ
// (smooth even where dρ/dt is not, e.g. VP near t = 0) with nodes τ_q and weights from io.quad.
// log_rho: the basis is in u = log ρ on the nodes log ρ_i, … (the quadrature nodes τ_q are then log ρ_q):
// the polynomial of Zhang & Chen 2023 §4 that diffusers' DEISMultistepScheduler integrates in closed form.
inline void plan_deis(const PlanIO& io, bool log_rho = false) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const int p = io.order(i);
    double tn[4];
    for (int j = 0; j < p; ++j) tn[j] = log_rho ? std::log(io.g(i - j).rho) : io.g(i - j).t;
    Lin x = (t.a / s.a) * Lin::X();
    const double* q = io.quad + int64_t(i) * io.Q * 2;
    for (int j = 0; j < p; ++j) {
      double c = 0.0;
      for (int k = 0; k < io.Q; ++k) {
        const double tau = q[2 * k], wq = q[2 * k + 1];
        double l = 1.0;
        for (int m = 0; m < p; ++m)
          if (m != j) l *= (tau - tn[m]) / (tn[j] - tn[m]);
        c += wq * l;
      }
      x = x + (t.a * c) * (j == 0 ? Lin::M() : Lin::R(io.slot_of(i - j)));
    }
    io.emit(i, 0, s, 0, io.slot_of(i), &x, nullptr);
  }
}

// iPNDM (k-diffusion's "ipndm", in (ρ, y = x/α)): y_t = y_s + (ρ_t − ρ_s) Σ_j w_j ε̂_{i−j} with the
// uniform-step Adams–Bashforth weights of order p = min(4, steps so far).
inline void plan_ipndm(const PlanIO& io) {
  static const double W[4][4] = {{1.0, 0, 0, 0},
                                 {1.5, -0.5, 0, 0},
                                 {23.0 / 12, -16.0 / 12, 5.0 / 12, 0},
                                 {55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24}};
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const int p = io.order(i);
    const double c = t.a * (t.rho - s.rho);
    Lin x = (t.a / s.a) * Lin::X();
    for (int j = 0; j < p; ++j) x = x + (c * W[p - 1][j]) * (j == 0 ? Lin::M() : Lin::R(io.slot_of(i - j)));
    io.emit(i, 0, s, 0, io.slot_of(i), &x, nullptr);
  }
}

}  // namespace dc
