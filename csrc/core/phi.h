// φ-functions of exponential integrators (Hochbruck & Ostermann 2010, Acta Numerica; book §9.4–9.5):
//   φ_1(z) = (e^z − 1)/z,  φ_{k+1}(z) = (φ_k(z) − 1/k!)/z,  φ_k(0) = 1/k!.
// The recursion cancels catastrophically for small |z|, so below a threshold the Taylor series
// φ_k(z) = Σ_n z^n/(n+k)! is summed instead. The step coefficients use the products h·φ_k(±h), which
// stay finite as h → ∞ in the direction a solver needs (data form: h·φ_1(−h) = 1 − e^{−h} → 1).
#pragma once
#include <cmath>

namespace dc {

inline double phi_series(int k, double z) {
  // Σ_{n=0}^{17} z^n/(n+k)!: for |z| < 0.1 the truncation error is below 1e-20 relative.
  double fact = 1.0;
  for (int j = 2; j <= k; ++j) fact *= j;
  double term = 1.0 / fact, sum = 0.0;
  for (int n = 0; n < 18; ++n) {
    sum += term;
    term *= z / double(n + k + 1);
  }
  return sum;
}

inline double phi(int k, double z) {
  if (std::fabs(z) < 0.1) return phi_series(k, z);
  if (std::isinf(z)) return z > 0 ? INFINITY : 0.0;  // φ_k(−∞) = 0 for every k ≥ 1
  double p = std::expm1(z) / z;
  double fact = 1.0;
  for (int j = 1; j < k; ++j) {
    p = (p - 1.0 / fact) / z;
    fact *= double(j + 1);
  }
  return p;
}

// h·φ_k(z) for z = ±h: the weight of the (k−1)-th λ-derivative term in the Taylor-expanded update
// (book §9.4, §9.5). For the data form with h = +∞ (a step to σ = 0), only k = 1 is finite.
inline double hphi(int k, double h, double z) {
  if (std::isinf(h)) return k == 1 ? 1.0 : INFINITY;
  return h * phi(k, z);
}

}  // namespace dc
