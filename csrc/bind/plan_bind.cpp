// _core.plan_build: coefficient plans in float64 (docs/design.md, "Coefficient plans"). Each plan generator
// (csrc/core/plans/*.h) is registered by name below with a typed struct of the options it reads.
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
#include <map>
#include <set>
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


// Reads the fields of an options struct from a Python dict: `reader("key", field)` per field.
class OptionReader {
 public:
  OptionReader(const py::dict& d, const std::string& method) : d_(d), method_(method) {}
  template <class T>
  void operator()(const char* key, T& field) {
    if (!d_.contains(key)) return;
    try {
      field = d_[key].cast<T>();
    } catch (const py::cast_error&) {
      throw py::type_error("options: '" + std::string(key) + "' of plan generator '" + method_ + "' got " +
                           std::string(py::str(py::type::of(d_[key]).attr("__name__"))));
    }
    used_.insert(key);
  }
  // Refuses the keys no field read.
  void finish() const {
    for (auto item : d_) {
      const std::string key = py::str(item.first);
      if (!used_.count(key))
        throw py::value_error("options: plan generator '" + method_ + "' has no option '" + key + "'");
    }
  }

 private:
  const py::dict& d_;
  std::string method_;
  std::set<std::string> used_;
};

using PlanFn = std::function<void(const PlanIO&)>;

// A registered generator: parses its options (and checks them against the plan's stages S and ring
// size K) into the function that fills one sample's rows.
struct PlanGenerator {
  std::function<PlanFn(const py::dict& options, const std::string& method, int S, int K)> make;
  bool needs_quad = false;
};

// The generator `run(io, opts)` with options struct Opts (fields(reader) lists its keys; an optional
// check(S, K) validates them against the plan's shape).
template <class Opts, class Run>
PlanGenerator plan_generator(Run run, bool needs_quad = false) {
  PlanGenerator g;
  g.needs_quad = needs_quad;
  g.make = [run](const py::dict& d, const std::string& method, int S, int K) -> PlanFn {
    Opts o;
    OptionReader r(d, method);
    o.fields(r);
    r.finish();
    o.check(S, K);
    return [run, o](const PlanIO& io) { run(io, o); };
  };
  return g;
}

// Options of a generator without any.
struct NoOptions {
  template <class R> void fields(R&) {}
  void check(int, int) const {}
};

// Options of the generators (the keys each reads from the solver's _core_options()).
struct SingleStepOptions {  // dpm_solver, dpmpp_single
  int variant = 0;          // 0: midpoint / "dpmsolver", 1: heun / "taylor"
  bool stage_variant = false;
  template <class R> void fields(R& r) { r("variant", variant); r("stage_variant", stage_variant); }
  void check(int, int) const {}
};
struct MultistepOptions {  // dpmpp_multi, dpm_solver_multi
  int variant = 0;
  double w = 1.0;           // weight of 3M's second divided difference
  template <class R> void fields(R& r) { r("variant", variant); r("w", w); }
  void check(int, int) const {}
};
struct VariantOptions {  // the SDE-DPM-Solver(++) family
  int variant = 0;
  template <class R> void fields(R& r) { r("variant", variant); }
  void check(int, int) const {}
};
struct SDESingleStepOptions {  // sde_dpmpp_single: its stage inputs are always the variant's own update
  int variant = 0;
  bool stage_variant = true;
  template <class R> void fields(R& r) { r("variant", variant); r("stage_variant", stage_variant); }
  void check(int, int) const {
    if (!stage_variant) throw py::value_error("options: sde_dpmpp_single takes only stage_variant = True");
  }
};
struct DEISOptions {
  bool log_rho = false;     // Lagrange basis in log ρ instead of t
  template <class R> void fields(R& r) { r("log_rho", log_rho); }
  void check(int, int) const {}
};
struct UniPCBindOptions {
  UniPCOptions o;
  template <class R> void fields(R& r) { r("predict_x0", o.data); r("bh2", o.bh2); r("corrector", o.corrector); }
  void check(int, int) const {}
};
struct RKOptions {  // the tableau (python/diffcore/solvers/tableau.py) and the one of lower-order steps
  bool rho = false;
  std::vector<double> c, a, b, low_c, low_a, low_b;
  int order = 1;
  RKTableau high, low;
  template <class R> void fields(R& r) {
    r("rho", rho); r("rk_c", c); r("rk_a", a); r("rk_b", b); r("rk_low_c", low_c); r("rk_low_a", low_a);
    r("rk_low_b", low_b); r("rk_order", order);
  }
  void check(int S, int K) {
    high = RKTableau(c, a, b);
    low = RKTableau(low_c, low_a, low_b);
    if (std::max(high.S, low.S) > S || std::max(high.S, low.S) - 1 > K)
      throw py::value_error("S, K: a Runge-Kutta plan needs S >= stages and K >= stages - 1");
  }
};
struct EtaOptions {  // ddim_eta, euler_maruyama
  double eta = 1.0;
  template <class R> void fields(R& r) { r("eta", eta); }
  void check(int, int) const {}
};
struct DDPMOptions {
  bool beta = false;        // forward-step variance instead of the posterior's
  template <class R> void fields(R& r) { r("beta", beta); }
  void check(int, int) const {}
};
struct AncestralOptions {  // euler_ancestral, dpmpp_3m_sde
  double eta = 1.0, s_noise = 1.0;
  template <class R> void fields(R& r) { r("eta", eta); r("s_noise", s_noise); }
  void check(int, int) const {}
};
struct PCOptions {
  int predictor = 0, n_corrector = 1;  // predictor 0: reverse diffusion, 1: Euler–Maruyama
  bool denoise = true;
  template <class R> void fields(R& r) { r("predictor", predictor); r("n_corrector", n_corrector); r("denoise", denoise); }
  void check(int, int) const {}
};
struct DpmppSDEOptions {  // dpmpp_2m_sde
  int variant = 0;
  double eta = 1.0, s_noise = 1.0;
  template <class R> void fields(R& r) { r("variant", variant); r("eta", eta); r("s_noise", s_noise); }
  void check(int, int) const {}
};
struct ChurnOptions {  // edm_churn
  bool churn = false;
  double s_noise = 1.0;
  template <class R> void fields(R& r) { r("churn", churn); r("s_noise", s_noise); }
  void check(int, int) const {}
};

// The generators by name: each reads its options through a typed struct whose fields() lists every key,
// so a solver's options dict is read in one place, type-checked, and an unknown key is refused.
const std::map<std::string, PlanGenerator>& plan_generators() {
  using IO = const PlanIO&;
  static const std::map<std::string, PlanGenerator> gens = {
      {"ddim", plan_generator<NoOptions>([](IO io, const NoOptions&) { plan_ddim(io); })},
      {"dpm_solver", plan_generator<SingleStepOptions>(
                         [](IO io, const SingleStepOptions& o) { plan_dpm_solver(io, o.variant, o.stage_variant); })},
      {"dpmpp_single", plan_generator<SingleStepOptions>([](IO io, const SingleStepOptions& o) {
         plan_dpmpp_single(io, o.variant, o.stage_variant);
       })},
      {"dpmpp_multi",
       plan_generator<MultistepOptions>([](IO io, const MultistepOptions& o) { plan_dpmpp_multi(io, o.variant, o.w); })},
      {"dpm_solver_multi", plan_generator<MultistepOptions>(
                               [](IO io, const MultistepOptions& o) { plan_dpm_solver_multi(io, o.variant, o.w); })},
      {"sde_dpm_solver_multi", plan_generator<VariantOptions>(
                                   [](IO io, const VariantOptions& o) { plan_sde_dpm_solver_multi(io, o.variant); })},
      {"sde_dpmpp_multi",
       plan_generator<VariantOptions>([](IO io, const VariantOptions& o) { plan_sde_dpmpp_multi(io, o.variant); })},
      {"sde_dpmpp_single", plan_generator<SDESingleStepOptions>(
                               [](IO io, const SDESingleStepOptions& o) { plan_sde_dpmpp_single(io, o.variant); })},
      {"deis", plan_generator<DEISOptions>([](IO io, const DEISOptions& o) { plan_deis(io, o.log_rho); }, true)},
      {"ipndm", plan_generator<NoOptions>([](IO io, const NoOptions&) { plan_ipndm(io); })},
      {"unipc", plan_generator<UniPCBindOptions>([](IO io, const UniPCBindOptions& o) { plan_unipc(io, o.o); })},
      {"rk", plan_generator<RKOptions>([](IO io, const RKOptions& o) { plan_rk(io, o.rho, o.high, o.low, o.order); })},
      {"ddim_eta", plan_generator<EtaOptions>([](IO io, const EtaOptions& o) { plan_ddim_eta(io, o.eta); })},
      {"ddpm", plan_generator<DDPMOptions>([](IO io, const DDPMOptions& o) { plan_ddpm(io, o.beta); })},
      {"euler_ancestral", plan_generator<AncestralOptions>(
                              [](IO io, const AncestralOptions& o) { plan_euler_ancestral(io, o.eta, o.s_noise); })},
      {"euler_maruyama", plan_generator<EtaOptions>([](IO io, const EtaOptions& o) { plan_euler_maruyama(io, o.eta); })},
      {"pc", plan_generator<PCOptions>(
                 [](IO io, const PCOptions& o) { plan_pc(io, o.predictor, o.n_corrector, o.denoise); })},
      {"langevin", plan_generator<NoOptions>([](IO io, const NoOptions&) { plan_langevin(io); })},
      {"dpmpp_2m_sde", plan_generator<DpmppSDEOptions>([](IO io, const DpmppSDEOptions& o) {
         plan_dpmpp_2m_sde(io, o.variant, o.eta, o.s_noise);
       })},
      {"dpmpp_3m_sde", plan_generator<AncestralOptions>(
                           [](IO io, const AncestralOptions& o) { plan_dpmpp_3m_sde(io, o.eta, o.s_noise); })},
      {"edm_churn",
       plan_generator<ChurnOptions>([](IO io, const ChurnOptions& o) { plan_edm_churn(io, o.churn, o.s_noise); })},
  };
  return gens;
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

  const auto& gens = plan_generators();
  const auto found = gens.find(method);
  if (found == gens.end()) {
    std::string names;
    for (const auto& kv : gens) names += (names.empty() ? "" : ", ") + kv.first;
    throw py::value_error("method: unknown plan generator '" + method + "'; registered: " + names);
  }
  if (found->second.needs_quad && !has_quad) throw py::value_error("quad: " + method + " needs quadrature nodes");
  const PlanFn gen = found->second.make(options, method, S, K);

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
