// UniPC (Zhao et al. 2023): multistep predictor UniP-p plus the corrector UniC-p
// that reuses the next model evaluation, data form (predict_x0) or noise form, B(h) = hh ("bh1") or
// e^{hh} − 1 ("bh2").
//
// One row per model call at node i: the new output m_i corrects the previous step,
//   y <- x_i^C = UniC(x_{i−1}^C = y, m_{i−1}, …, m_i)     (or y <- x when no corrector runs)
// and predicts the next one from it,
//   x <- x_{i+1}^P = UniP(x_i^C, m_i, m_{i−1}, …).
// The model output of step j lives in ring slot j mod K (K = order with the corrector, order − 1
// without).
#pragma once
#include <cmath>
#include <vector>

#include "core/phi.h"
#include "core/plans/exponential.h"

namespace dc {

// Solves the n×n system A r = b (n ≤ 4) by Gaussian elimination with partial pivoting.
inline std::vector<double> small_solve(std::vector<double> A, std::vector<double> b) {
  const int n = int(b.size());
  for (int c = 0; c < n; ++c) {
    int piv = c;
    for (int r = c + 1; r < n; ++r)
      if (std::fabs(A[r * n + c]) > std::fabs(A[piv * n + c])) piv = r;
    if (piv != c) {
      for (int k = 0; k < n; ++k) std::swap(A[c * n + k], A[piv * n + k]);
      std::swap(b[c], b[piv]);
    }
    for (int r = c + 1; r < n; ++r) {
      const double f = A[r * n + c] / A[c * n + c];
      for (int k = c; k < n; ++k) A[r * n + k] -= f * A[c * n + k];
      b[r] -= f * b[c];
    }
  }
  for (int c = n - 1; c >= 0; --c) {
    for (int k = c + 1; k < n; ++k) b[c] -= A[c * n + k] * b[k];
    b[c] /= A[c * n + c];
  }
  return b;
}

struct UniPCOptions {
  bool data = true;       // predict_x0
  bool bh2 = true;        // B(h) = e^{hh} − 1 (else hh)
  bool corrector = true;
};

// One UniP/UniC update from node s to node t (h = λ_t − λ_s):
//   x_t = base(x_s, m0) − c_t B(h) Σ_k ρ_k D_k,  D_k = (m_k − m0)/r_k,
// c_t = α_t (data) or σ_t (noise). `nodes`/`outs` hold the older outputs m_1.. and their λ; a corrector
// also passes the new output `mt` (r = 1). ρ solves R ρ = b with R_{jk} = r_k^{j−1},
// b_j = j!·hh·φ_{j+1}(hh)/B(h) (Zhao et al. 2023); the reference's fixed ρ = 1/2 for UniP-2 and UniC-1 is kept.
inline Lin unipc_update(const UniPCOptions& o, const Node& s, const Node& t, const Lin& xs, const Lin& m0,
                        const std::vector<Lin>& outs, const std::vector<double>& lams, const Lin* mt) {
  const Lin base = o.data ? data_taylor(s, t, xs, m0) : noise_taylor(s, t, xs, m0);
  const int n = int(outs.size()) + (mt ? 1 : 0);
  if (n == 0) return base;
  const double h = t.lam - s.lam;
  const double hh = o.data ? -h : h;
  const double Bh = o.bh2 ? std::expm1(hh) : hh;
  std::vector<double> r;
  std::vector<Lin> D;
  for (size_t k = 0; k < outs.size(); ++k) {
    r.push_back((lams[k] - s.lam) / h);
    D.push_back((outs[k] - m0) / r.back());
  }
  if (mt) {
    r.push_back(1.0);
    D.push_back(*mt - m0);
  }
  std::vector<double> rho;
  if (n == 1) {
    rho = {0.5};
  } else {
    std::vector<double> A(n * n), b(n);
    double fact = 1.0;
    for (int j = 1; j <= n; ++j) {
      fact *= j;
      b[j - 1] = fact * hh * phi(j + 1, hh) / Bh;
      for (int k = 0; k < n; ++k) A[(j - 1) * n + k] = std::pow(r[k], j - 1);
    }
    rho = small_solve(A, b);
  }
  Lin corr;
  for (int k = 0; k < n; ++k) corr = corr + rho[k] * D[k];
  return base - ((o.data ? t.a : t.s) * Bh) * corr;
}

inline void plan_unipc(const PlanIO& io, const UniPCOptions& o) {
  for (int i = 0; i < io.M; ++i) {
    const Node s = io.g(i), t = io.g(i + 1);
    // corrector of step i−1 (from node i−1 to node i) with that step's order
    Lin xc = Lin::X();
    if (o.corrector && i >= 1) {
      const int pc = io.order(i - 1);
      std::vector<Lin> outs;
      std::vector<double> lams;
      for (int k = 1; k < pc; ++k) {
        outs.push_back(Lin::R(io.slot_of(i - 1 - k)));
        lams.push_back(io.g(i - 1 - k).lam);
      }
      const Lin mt = Lin::M();
      xc = unipc_update(o, io.g(i - 1), s, Lin::Y(), Lin::R(io.slot_of(i - 1)), outs, lams, &mt);
    }
    const int p = io.order(i);
    std::vector<Lin> outs;
    std::vector<double> lams;
    for (int k = 1; k < p; ++k) {
      outs.push_back(Lin::R(io.slot_of(i - k)));
      lams.push_back(io.g(i - k).lam);
    }
    const Lin xp = p == 1 ? (o.data ? data_taylor(s, t, xc, Lin::M()) : noise_taylor(s, t, xc, Lin::M()))
                          : unipc_update(o, s, t, xc, Lin::M(), outs, lams, nullptr);
    io.emit(i, 0, s, 0, io.slot_of(i), &xp, o.corrector ? &xc : nullptr);
  }
}

}  // namespace dc
