// Stochastic samplers as coefficient plans (book §2.2, §3–4, §9.2.3): every update is
//   x_t = a·x_s + Σ b_k·m_k + c·z
// with z the step's noise (Lin::Z), added inside the fused step kernel. The step goes from s (the
// noisier grid time) to t; h = λ_t − λ_s. A noisy row's Brownian interval is [s, t] in the
// schedule's time.
#pragma once
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/phi.h"
#include "core/plan_row.h"

namespace dc {

// 1 − e^{−2h} without cancellation; 1 at h = ∞.
inline double one_minus_e2h(double h) { return std::isinf(h) ? 1.0 : -std::expm1(-2.0 * h); }
// e^{−ηh} with the convention e^{−0·∞} = 1.
inline double decay(double eta, double h) { return eta == 0.0 ? 1.0 : std::exp(-eta * h); }

// DDIM-η (corrected form of book Eq. (9.2.10), docs/errata.md S1):
//   x_t = α_t x̂ + √(σ_t² − c²) ε̂ + c z,   c = η σ_t √(1 − e^{−2h}),   ε̂ = (x_s − α_s x̂)/σ_s.
// Native x̂. η = 0 is DDIM, η = 1 the DDPM posterior step (β̃ variance).
inline void plan_ddim_eta(const PlanIO& io, double eta) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double h = t.lam - s.lam;
    const double c2 = eta * eta * t.s * t.s * one_minus_e2h(h);
    if (c2 > t.s * t.s * (1.0 + 1e-12))
      throw std::invalid_argument("eta: η = " + std::to_string(eta) + " makes the noise scale c exceed σ_t at step " +
                                  std::to_string(i) + " (needs η²(1 − e^{−2h}) ≤ 1)");
    const double rem = std::sqrt(std::fmax(t.s * t.s - c2, 0.0));  // √(σ_t² − c²)
    const Lin x = (rem / s.s) * Lin::X() + (t.a - rem * s.a / s.s) * Lin::M() + std::sqrt(c2) * Lin::Z();
    io.emit(i, 0, s, 0, -1, &x, nullptr, s.t, t.t);
  }
}

// DDPM ancestral step on any grid (book Eq. (4.4.8), Lemma 4.4.2): the posterior
//   x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂ + σ̃ z
// with σ̃² = σ_t²(1 − e^{−2h}) (β̃, posterior) or σ_{s|t}² = σ_s²(1 − e^{−2h}) (β, the forward
// variance). Native x̂. The last step adds no noise (the reference convention).
inline void plan_ddpm(const PlanIO& io, bool beta_variance) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double h = t.lam - s.lam;
    const double e = one_minus_e2h(h);
    Lin x = ((t.s / s.s) * std::exp(-h)) * Lin::X() + (t.a * e) * Lin::M();
    if (i + 1 < io.M) x = x + std::sqrt((beta_variance ? s.s * s.s : t.s * t.s) * e) * Lin::Z();
    io.emit(i, 0, s, 0, -1, &x, nullptr, s.t, t.t);
  }
}

// Euler ancestral (Std: Karras et al. 2022 / k-diffusion `sample_euler_ancestral`), written in
// y = x/α and ρ = σ/α so it applies to every schedule (for α ≡ 1 it is the reference):
//   ρ_up = min(ρ_t, η √(ρ_t²(ρ_s² − ρ_t²)/ρ_s²)),  ρ_down = √(ρ_t² − ρ_up²),
//   y_t = y_s + (ρ_down − ρ_s) ε̂ + s_noise ρ_up z,   x_t = α_t y_t.   Native ε̂.
inline void plan_euler_ancestral(const PlanIO& io, double eta, double s_noise) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double up = std::fmin(t.rho, eta * std::sqrt(std::fmax(t.rho * t.rho * (s.rho * s.rho - t.rho * t.rho), 0.0)) / s.rho);
    const double down = std::sqrt(std::fmax(t.rho * t.rho - up * up, 0.0));
    const Lin x = (t.a / s.a) * Lin::X() + (t.a * (down - s.rho)) * Lin::M() + (t.a * s_noise * up) * Lin::Z();
    io.emit(i, 0, s, 0, -1, &x, nullptr, s.t, t.t);
  }
}

// Euler–Maruyama on the reverse SDE family (book Eq. (4.2.4)):
//   x_t = x_s − [f(s) x_s − ((1 + η²)/2) g²(s) ŝ] Δt + η g(s) √Δt z,   Δt = s − t > 0.
// η = 1 is the reverse SDE (4.1.6), η = 0 Euler on the PF-ODE. Native score; f(s), g²(s) are io.ex(i, 0), io.ex(i, 1).
inline void plan_euler_maruyama(const PlanIO& io, double eta) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double dt = s.t - t.t, f = io.ex(i, 0), g2 = io.ex(i, 1);
    const Lin x = (1.0 - f * dt) * Lin::X() + (0.5 * (1.0 + eta * eta) * g2 * dt) * Lin::M() +
                  (eta * std::sqrt(std::fmax(g2, 0.0) * dt)) * Lin::Z();
    io.emit(i, 0, s, 0, -1, &x, nullptr, s.t, t.t);
  }
}

// Reverse-diffusion predictor (Song et al. 2021, Alg. 2–3) on the discretized forward
// chain between the grid times, x_s = α_{s|t} x_t + σ_{s|t} ε:
//   x_t = (2 − α_{s|t}) x_s + σ_{s|t}² ŝ + σ_{s|t} z,   α_{s|t} = α_s/α_t,  σ_{s|t}² = σ_s²(1 − e^{−2h}).
// (VE: x + (σ_s² − σ_t²) ŝ + √(σ_s² − σ_t²) z; VP: (2 − √(1 − b)) x + b ŝ + √b z.) Native score.
inline Lin reverse_diffusion(const Node& s, const Node& t, bool noise) {
  const double var = s.s * s.s * one_minus_e2h(t.lam - s.lam);
  Lin x = (2.0 - s.a / t.a) * Lin::X() + var * Lin::M();
  if (noise) x = x + std::sqrt(var) * Lin::Z();
  return x;
}

// Predictor–corrector (Song et al. 2021, Alg. 2–5) in the reference order: at every grid time t_i, `nc`
// Langevin corrector steps, then the predictor to t_{i+1}. Corrector rows carry only the score
// conversion and a draw: their step size follows the signal-to-noise rule, which with
// snr_norm="sample" / "batch" depends on the norms of the score and the noise, so the Python layer
// applies it (diffcore/solvers/sde.py; the default "expected" rule is 2a(snr σ_t)², see
// docs/predictor_corrector.md).
// Both buffers carry the state (x' = y'), so every stage's model input is current.
// predictor: 0 reverse diffusion, 1 Euler–Maruyama. `denoise`: the last predictor adds no noise.
inline void plan_pc(const PlanIO& io, int predictor, int nc, bool denoise) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    for (int k = 0; k < nc; ++k) {
      const Lin x = Lin::X() + 0.0 * Lin::Z();  // placeholder weights; the corrector is data-dependent
      io.emit(i, k, s, 0, -1, &x, &x);
    }
    const bool noise = !(denoise && i + 1 == io.M);
    Lin x;
    if (predictor == 0) {
      x = reverse_diffusion(s, t, noise);
    } else {
      const double dt = s.t - t.t, f = io.ex(i, 0), g2 = io.ex(i, 1);
      x = (1.0 - f * dt) * Lin::X() + (g2 * dt) * Lin::M();
      if (noise) x = x + std::sqrt(std::fmax(g2, 0.0) * dt) * Lin::Z();
    }
    io.emit(i, nc, s, nc > 0 ? 1 : 0, -1, &x, &x, s.t, t.t);
  }
}

// Langevin dynamics (book Eq. (3.1.5), §3.4.3 Alg. 1): x ← x + η ŝ + √(2η) z at the level of
// grid point i, with per-step sizes io.ex(i, 0) = η. Native score. The annealed sampler (NCSN,
// book Alg. 1) is the same row with its levels and step sizes laid out by the Python layer; a last
// step with ex(i, 1) = 1 is Tweedie's denoising x ← (x + σ² ŝ)/α (book Lemma 3.3.2).
inline void plan_langevin(const PlanIO& io) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i);
    const double eta = io.ex(i, 0);
    Lin x;
    if (io.ex(i, 1) != 0.0) x = (1.0 / s.a) * Lin::X() + (s.s * s.s / s.a) * Lin::M();
    else x = Lin::X() + eta * Lin::M() + std::sqrt(2.0 * eta) * Lin::Z();
    io.emit(i, 0, s, 0, -1, &x, nullptr);
  }
}

// DPM-Solver++(2M) SDE (Lu et al. 2022b, k-diffusion `sample_dpmpp_2m_sde`):
//   x_t = (σ_t/σ_s) e^{−ηh} x_s + α_t (1 − e^{−(1+η)h}) x̂_s + α_t C (x̂_s − x̂_{s'})/r + σ_t √(1 − e^{−2ηh}) s_noise z,
// C = ½(1 − e^{−(1+η)h}) (midpoint) or 1 − (1 − e^{−(1+η)h})/((1+η)h) = (1+η)h φ₂(−(1+η)h) (heun),
// r = h'/h. First step and a step to σ = 0 drop the C term. Native x̂; ring slot 0 holds x̂_{s'}.
inline void plan_dpmpp_2m_sde(const PlanIO& io, int variant, double eta, double s_noise) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double h = t.lam - s.lam, he = (1.0 + eta) * h;
    const double first = std::isinf(he) ? 1.0 : -std::expm1(-he);
    Lin x = ((t.s / s.s) * decay(eta, h)) * Lin::X() + (t.a * first) * Lin::M();
    if (io.order(i) >= 2) {
      const Node p = io.g(i - 1);
      const double r = (s.lam - p.lam) / h;
      const double C = variant == 0 ? 0.5 * first : hphi(2, he, -he);
      x = x + ((t.a * C) / r) * (Lin::M() - Lin::R(0));
    }
    x = x + (t.s * std::sqrt(eta == 0.0 ? 0.0 : one_minus_e2h(eta * h)) * s_noise) * Lin::Z();
    io.emit(i, 0, s, 0, io.K > 0 ? 0 : -1, &x, nullptr, s.t, t.t);
  }
}

// DPM-Solver++(3M) SDE (Std: k-diffusion `sample_dpmpp_3m_sde`, the multistep 3rd-order data-form
// update of Lu et al. 2022b with the SDE factors): with h_e = (1+η)h, r0 = h₁/h, r1 = h₂/h (h₁, h₂ the
// previous two steps), D1_0 = (x̂_s − x̂₁)/r0, D1_1 = (x̂₁ − x̂₂)/r1,
//   D1 = D1_0 + (D1_0 − D1_1) r0/(r0 + r1),   D2 = (D1_0 − D1_1)/(r0 + r1),
//   φ₂ = 1 − (1 − e^{−h_e})/h_e = h_e φ₂(−h_e),  φ₃ = φ₂/h_e − ½ = −h_e φ₃(−h_e),
//   x_t = (σ_t/σ_s) e^{−ηh} x_s + α_t[(1 − e^{−h_e}) x̂_s + φ₂ D1 − φ₃ D2] + σ_t √(1 − e^{−2ηh}) s_noise z,
// falling back to the 2-point (φ₂ D1_0) and 1-point updates during warm-up; a step to σ = 0 is x = α_t x̂.
// Native x̂; ring slots hold x̂ of the previous steps (slot_of).
inline void plan_dpmpp_3m_sde(const PlanIO& io, double eta, double s_noise) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    const double h = t.lam - s.lam, he = (1.0 + eta) * h;
    const double first = std::isinf(he) ? 1.0 : -std::expm1(-he);
    Lin x = ((t.s / s.s) * decay(eta, h)) * Lin::X() + (t.a * first) * Lin::M();
    const int p = io.order(i);
    if (p >= 2) {
      const Node n1 = io.g(i - 1);
      const Lin X1 = Lin::R(io.slot_of(i - 1));
      const double r0 = (s.lam - n1.lam) / h;
      const Lin d10 = (Lin::M() - X1) / r0;
      const double ph2 = hphi(2, he, -he);
      if (p == 2) {
        x = x + (t.a * ph2) * d10;
      } else {
        const Node n2 = io.g(i - 2);
        const Lin X2 = Lin::R(io.slot_of(i - 2));
        const double r1 = (n1.lam - n2.lam) / h;
        const Lin d11 = (X1 - X2) / r1;
        const Lin d1 = d10 + (d10 - d11) * (r0 / (r0 + r1));
        const Lin d2 = (d10 - d11) / (r0 + r1);
        const double ph3 = -hphi(3, he, -he);
        x = x + (t.a * ph2) * d1 - (t.a * ph3) * d2;
      }
    }
    x = x + (t.s * std::sqrt(eta == 0.0 ? 0.0 : one_minus_e2h(eta * h)) * s_noise) * Lin::Z();
    io.emit(i, 0, s, 0, io.slot_of(i), &x, nullptr, s.t, t.t);
  }
}

// EDM stochastic sampler (Karras et al. 2022, Alg. 2) in y = x/α, ρ = σ/α (the
// general-schedule form of EDM Alg. 1 with s(t) = α, σ(t) = ρ). Stage node st(i, 0) is the churned
// time t̂_i with ρ̂_i = (1 + γ_i) ρ_i; st(i, 1) is t_{i+1}. The churn of step i + 1,
//   x̂_{i+1} = (α̂_{i+1}/α_{i+1}) x_{i+1} + α̂_{i+1} √(ρ̂²_{i+1} − ρ²_{i+1}) S_noise z,
// is fused into the last stage of step i (the churn of step 0 is the plan's prelude); the Heun step is
// Euler to t_{i+1} (stage 0, into y) and the trapezoid (stage 1). A step to σ = 0 is Euler alone.
// Native ε̂ (dy/dρ = ε̂). `churn` = S_churn > 0 (structural: rows draw noise even where γ = 0).
inline void plan_edm_churn(const PlanIO& io, bool churn, double s_noise) {
  const Lin X = Lin::X(), M = Lin::M(), R0 = Lin::R(0);
  if (churn) {  // the start's churn: x̂_0 = (α̂/α_0) x_0 + α̂ √(ρ̂_0² − ρ_0²) S_noise z
    const Node g0 = io.g(0), h0 = io.st(0, 0);
    io.emit_prelude((h0.a / g0.a) * X +
                    (h0.a * std::sqrt(std::fmax(h0.rho * h0.rho - g0.rho * g0.rho, 0.0)) * s_noise) * Lin::Z());
  }
  for (int i = 0; i < io.M; ++i) {
    const Node hat = io.st(i, 0), t = io.g(i + 1);
    const bool next = churn && i + 1 < io.M;
    Node nh = t;  // the churned next state (t itself when there is no churn)
    if (next) nh = io.st(i + 1, 0);
    const double cz = next ? nh.a * std::sqrt(std::fmax(nh.rho * nh.rho - t.rho * t.rho, 0.0)) * s_noise : 0.0;
    if (io.order(i) == 1) {
      Lin x = (nh.a / hat.a) * X + (nh.a * (t.rho - hat.rho)) * M;
      if (next) x = x + cz * Lin::Z();
      io.emit(i, 0, hat, 0, -1, &x, nullptr);
    } else {
      const Lin pred = (t.a / hat.a) * X + (t.a * (t.rho - hat.rho)) * M;
      io.emit(i, 0, hat, 0, 0, nullptr, &pred);
      Lin x = (nh.a / hat.a) * X + (nh.a * (t.rho - hat.rho) * 0.5) * (R0 + M);
      if (next) x = x + cz * Lin::Z();
      io.emit(i, 1, t, 1, -1, &x, nullptr);
    }
  }
}

}  // namespace dc
