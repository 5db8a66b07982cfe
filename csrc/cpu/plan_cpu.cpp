// _core.plan_build: coefficient plans in float64 (docs/design.md, "Coefficient plans").
//
//   layout, nstages, has_prelude = _core.plan_build(method, options, grid, stage, quad, orders, K, S, coefs,
//                                                   mtime, extra, prediction, native, prelude)
//
// grid  [B, M+1, F]  node records (t, α, σ, λ, α', σ'; NodeRecord of csrc/core/row_layout.h) at the grid
//                    times, one row per sample (B = 1: shared grid)
// stage [B, M, NS, F] node records of the intermediate stages of single-step methods (NS >= 2), or None
// quad  [B, M, Q, 2] (τ, weight) Gauss–Legendre nodes in ρ of each step (DEIS), or None
// extra [B, M+1, 2] per-node values of some stochastic methods (csrc/core/plans/stochastic.h), or None
// orders: the order of each step (warm-up and lower_order_final already applied by the caller)
// prediction, native: the model's prediction type and the method's (enum Prediction, csrc/core/prediction.h);
//   every row's cu, co convert the one to the other at the row's model time
// coefs [B, M, S, NC] (NC columns of csrc/core/row_layout.h), mtime [B, M, S] and prelude [B, NC] (a row
// applied before the first model call, written where has_prelude): outputs (float64, zero-filled by the caller).
// Returns the stage records (flattened [M, S, StageRecord::kFields]; noise draws numbered in execution
// order, the prelude's draw being 0) and the number of stages of each step. Rows of a plan that draws
// noise carry their Brownian interval (ta, tb) in unit time u = (t − lo)/(hi − lo) of the sample's own
// grid range [lo, hi] (docs/design.md, "Coefficient plans", says why). All arrays are contiguous
// float64 CPU tensors; samples are independent, so they run in parallel.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "bind/dlpack_view.h"
#include "core/plans/adams.h"
#include "core/plans/dpm_sde.h"
#include "core/plans/exponential.h"
#include "core/plans/runge_kutta.h"
#include "core/plans/stochastic.h"
#include "core/plans/unipc.h"
#include "cpu/pool.h"

namespace py = pybind11;

namespace dc {
namespace {

View f64_cpu(py::handle obj, const char* name, int ndim) {
  View v = parse_f64_cpu(obj, name);
  if (v.ndim != ndim)
    throw py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-d tensor, got " + v.describe());
  return v;
}

template <class T>
T opt(const py::dict& d, const char* key, T dflt) {
  return d.contains(key) ? d[key].cast<T>() : dflt;
}

// The (ta, tb) columns of every row of a noisy plan in the unit time of each sample's own grid range
// [lo, hi]: u = (t − lo)/(hi − lo) clamped to [0, 1] (0 where the grid has no range).
void brownian_unit_times(double* coef, const double* grid, int64_t B, int M, int S, int K) {
  const RowLayout L(K);
  constexpr int F = NodeRecord::kFields;
  for (int64_t b = 0; b < B; ++b) {
    const double* g = grid + b * (M + 1) * F;
    double lo = g[NodeRecord::kT], hi = lo;
    for (int i = 1; i <= M; ++i) {
      lo = std::min(lo, g[i * F + NodeRecord::kT]);
      hi = std::max(hi, g[i * F + NodeRecord::kT]);
    }
    const double width = hi - lo;
    for (int64_t q = 0; q < int64_t(M) * S; ++q) {
      double* r = coef + (b * M * S + q) * L.ncoef();
      for (int c : {L.ta(), L.tb()}) {
        const double u = width > 0 ? (r[c] - lo) / width : 0.0;
        r[c] = u < 0.0 ? 0.0 : (u > 1.0 ? 1.0 : u);
      }
    }
  }
}

py::tuple plan_build(const std::string& method, const py::dict& options, py::handle grid_c, py::handle stage_c,
                     py::handle quad_c, std::vector<int> orders, int K, int S, py::handle coef_c, py::handle mtime_c,
                     py::handle extra_c, int prediction, int native, py::handle prelude_c) {
  constexpr int F = NodeRecord::kFields;
  View grid = f64_cpu(grid_c, "grid", 3);
  const int64_t B = grid.shape[0];
  const int M = int(grid.shape[1]) - 1;
  if (grid.shape[2] != F || M < 1)
    throw py::value_error("grid: expected shape (B, steps + 1, " + std::to_string(F) + "), got " + grid.describe());
  if (prediction < 0 || prediction >= kNumPredictions || native < 0 || native >= kNumPredictions)
    throw py::value_error("prediction, native: expected Prediction values in [0, " + std::to_string(kNumPredictions) + ")");
  if (int(orders.size()) != M) throw py::value_error("orders: expected one order per step");
  if (K < 0 || K > kMaxRing) throw py::value_error("K: expected 0 <= K <= " + std::to_string(kMaxRing));
  View coef = f64_cpu(coef_c, "coefs", 4), mtime = f64_cpu(mtime_c, "mtime", 3);
  if (coef.shape[0] != B || coef.shape[1] != M || coef.shape[2] != S || coef.shape[3] != RowLayout(K).ncoef())
    throw py::value_error("coefs: wrong shape " + coef.describe());
  if (mtime.shape[0] != B || mtime.shape[1] != M || mtime.shape[2] != S)
    throw py::value_error("mtime: wrong shape " + mtime.describe());
  View stage, quad;
  const bool has_stage = !is_none(stage_c), has_quad = !is_none(quad_c);
  if (has_stage) {
    stage = f64_cpu(stage_c, "stage", 4);
    if (stage.shape[0] != B || stage.shape[1] != M || stage.shape[2] < 2 || stage.shape[3] != F)
      throw py::value_error("stage: wrong shape " + stage.describe());
  }
  int Q = 0;
  if (has_quad) {
    quad = f64_cpu(quad_c, "quad", 4);
    if (quad.shape[0] != B || quad.shape[1] != M || quad.shape[3] != 2) throw py::value_error("quad: wrong shape " + quad.describe());
    Q = int(quad.shape[2]);
  }

  View extra;
  const bool has_extra = !is_none(extra_c);
  if (has_extra) {
    extra = f64_cpu(extra_c, "extra", 3);
    if (extra.shape[0] != B || extra.shape[1] != M + 1 || extra.shape[2] != 2)
      throw py::value_error("extra: wrong shape " + extra.describe());
  }
  View prelude = f64_cpu(prelude_c, "prelude", 2);
  if (prelude.shape[0] != B || prelude.shape[1] != RowLayout(K).ncoef())
    throw py::value_error("prelude: wrong shape " + prelude.describe());

  const int variant = opt<int>(options, "variant", 0);
  const bool stage_variant = opt<bool>(options, "stage_variant", false);
  const double w = opt<double>(options, "w", 1.0);
  UniPCOptions uo;
  uo.data = opt<bool>(options, "predict_x0", true);
  uo.bh2 = opt<bool>(options, "bh2", true);
  uo.corrector = opt<bool>(options, "corrector", true);
  const bool in_rho = opt<bool>(options, "rho", false);
  const double eta = opt<double>(options, "eta", 1.0), s_noise = opt<double>(options, "s_noise", 1.0);
  const int predictor = opt<int>(options, "predictor", 0), n_corr = opt<int>(options, "n_corrector", 1);
  const bool denoise = opt<bool>(options, "denoise", true), churn = opt<bool>(options, "churn", false);
  const bool beta_variance = opt<bool>(options, "beta", false);
  using Vec = std::vector<double>;
  RKTableau rk_high, rk_low;
  int rk_order = 1;
  if (method == "rk") {  // the tableau (python/diffcore/solvers/tableau.py) and the one of lower-order steps
    rk_high = RKTableau(opt<Vec>(options, "rk_c", {}), opt<Vec>(options, "rk_a", {}), opt<Vec>(options, "rk_b", {}));
    rk_low = RKTableau(opt<Vec>(options, "rk_low_c", {}), opt<Vec>(options, "rk_low_a", {}),
                       opt<Vec>(options, "rk_low_b", {}));
    rk_order = opt<int>(options, "rk_order", 1);
    if (std::max(rk_high.S, rk_low.S) > S || std::max(rk_high.S, rk_low.S) - 1 > K)
      throw py::value_error("S, K: a Runge-Kutta plan needs S >= stages and K >= stages - 1");
  }

  std::function<void(const PlanIO&)> gen;
  if (method == "ddim") gen = [](const PlanIO& io) { plan_ddim(io); };
  else if (method == "dpm_solver") gen = [=](const PlanIO& io) { plan_dpm_solver(io, variant, stage_variant); };
  else if (method == "dpmpp_single") gen = [=](const PlanIO& io) { plan_dpmpp_single(io, variant, stage_variant); };
  else if (method == "dpmpp_multi") gen = [=](const PlanIO& io) { plan_dpmpp_multi(io, variant, w); };
  else if (method == "dpm_solver_multi") gen = [=](const PlanIO& io) { plan_dpm_solver_multi(io, variant, w); };
  else if (method == "sde_dpm_solver_multi") gen = [=](const PlanIO& io) { plan_sde_dpm_solver_multi(io, variant); };
  else if (method == "sde_dpmpp_multi") gen = [=](const PlanIO& io) { plan_sde_dpmpp_multi(io, variant); };
  else if (method == "sde_dpmpp_single") gen = [=](const PlanIO& io) { plan_sde_dpmpp_single(io, variant); };
  else if (method == "deis") gen = [](const PlanIO& io) { plan_deis(io); };
  else if (method == "ipndm") gen = [](const PlanIO& io) { plan_ipndm(io); };
  else if (method == "unipc") gen = [=](const PlanIO& io) { plan_unipc(io, uo); };
  else if (method == "rk") gen = [=](const PlanIO& io) { plan_rk(io, in_rho, rk_high, rk_low, rk_order); };
  else if (method == "ddim_eta") gen = [=](const PlanIO& io) { plan_ddim_eta(io, eta); };
  else if (method == "ddpm") gen = [=](const PlanIO& io) { plan_ddpm(io, beta_variance); };
  else if (method == "euler_ancestral") gen = [=](const PlanIO& io) { plan_euler_ancestral(io, eta, s_noise); };
  else if (method == "euler_maruyama") gen = [=](const PlanIO& io) { plan_euler_maruyama(io, eta); };
  else if (method == "pc") gen = [=](const PlanIO& io) { plan_pc(io, predictor, n_corr, denoise); };
  else if (method == "langevin") gen = [](const PlanIO& io) { plan_langevin(io); };
  else if (method == "dpmpp_2m_sde") gen = [=](const PlanIO& io) { plan_dpmpp_2m_sde(io, variant, eta, s_noise); };
  else if (method == "dpmpp_3m_sde") gen = [=](const PlanIO& io) { plan_dpmpp_3m_sde(io, eta, s_noise); };
  else if (method == "edm_churn") gen = [=](const PlanIO& io) { plan_edm_churn(io, churn, s_noise); };
  else throw py::value_error("method: unknown plan generator '" + method + "'");
  if (method == "deis" && !has_quad) throw py::value_error("quad: DEIS needs quadrature nodes");

  using R = StageRecord;
  constexpr int L = R::kFields;
  std::vector<int> layout(size_t(M) * S * L, 0), nstages(M, 0);
  for (size_t q = 0; q < layout.size(); q += L) { layout[q + R::kSlot] = -1; layout[q + R::kDraw] = -1; }
  const int nc = RowLayout(K).ncoef();
  bool has_prelude = false;
  std::string error;
  {
    py::gil_scoped_release nogil;
#ifdef DIFFCORE_WITH_OPENMP
#pragma omp parallel for schedule(static) if (B > 16 && !forked_child())
#endif
    for (int64_t b = 0; b < B; ++b) {
      PlanIO io;
      io.grid = reinterpret_cast<const double*>(grid.data) + b * (M + 1) * F;
      const int NS = has_stage ? int(stage.shape[2]) : 2;
      io.stage = has_stage ? reinterpret_cast<const double*>(stage.data) + b * M * NS * F : nullptr;
      io.NS = NS;
      io.quad = has_quad ? reinterpret_cast<const double*>(quad.data) + b * M * Q * 2 : nullptr;
      io.Q = Q;
      io.extra = has_extra ? reinterpret_cast<const double*>(extra.data) + b * (M + 1) * 2 : nullptr;
      io.orders = orders.data();
      io.M = M; io.S = S; io.K = K;
      io.coef = reinterpret_cast<double*>(coef.data) + b * M * S * nc;
      io.mtime = reinterpret_cast<double*>(mtime.data) + b * M * S;
      io.layout = b == 0 ? layout.data() : nullptr;
      io.nstages = b == 0 ? nstages.data() : nullptr;
      io.src = prediction; io.dst = native;
      io.prelude = reinterpret_cast<double*>(prelude.data) + b * nc;
      bool pre = false;
      io.has_prelude = &pre;
      try {
        gen(io);
        if (b == 0) has_prelude = pre;
      } catch (const std::exception& e) {
#ifdef DIFFCORE_WITH_OPENMP
#pragma omp critical
#endif
        if (error.empty()) error = std::string(e.what()) + (B > 1 ? " (sample " + std::to_string(b) + ")" : "");
      }
    }
  }
  if (!error.empty()) throw py::value_error(error);
  // noise draws are numbered in execution order: the prelude's is draw 0, then draw d is the next noisy
  // (step, stage)
  int draws = has_prelude ? 1 : 0;
  for (size_t q = 0; q < layout.size(); q += L)
    if (layout[q + R::kDraw] >= 0) layout[q + R::kDraw] = draws++;
  if (draws > 0) brownian_unit_times(reinterpret_cast<double*>(coef.data), reinterpret_cast<const double*>(grid.data),
                                     B, M, S, K);
  return py::make_tuple(layout, nstages, has_prelude);
}

}  // namespace

void register_plan_ops(py::module_& m) {
  m.def("plan_build", &plan_build, py::arg("method"), py::arg("options"), py::arg("grid"), py::arg("stage"),
        py::arg("quad"), py::arg("orders"), py::arg("K"), py::arg("S"), py::arg("coefs"), py::arg("mtime"),
        py::arg("extra"), py::arg("prediction"), py::arg("native"), py::arg("prelude"),
        "fill a coefficient plan (csrc/core/plans/*.h)");
}

}  // namespace dc
