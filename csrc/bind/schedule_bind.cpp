// Python entry points of the noise-schedule core (csrc/core/schedule_math.h), CPU loops:
//
//   _core.schedule_eval(cid, params, table, t, out)     out[q, ...] = quantity q at t[...], q = 0..7
//                                                       (α, σ, α', σ', λ, λ', f, g²)
//   _core.schedule_inverse(cid, params, table, lam, out) out[...] = t(lam[...])
//
// t / lam / out / table are DLPack capsules of contiguous float64 CPU tensors (table: the 1-D log-α
// knots of the discrete schedule, None for the other families). Nothing is allocated here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bind/dlpack_view.h"
#include "core/dlpack_abi.h"
#include "core/schedule_math.h"

namespace py = pybind11;

namespace dc {
namespace {

// Validates the family id, its parameters and (for the discrete family) the knot table.
SchedParams make_params(int cid, const std::vector<double>& params, py::handle table_c) {
  const int np = schedule_num_params(cid);
  if (np < 0)
    throw py::value_error("cid: expected a schedule family id in [0, " + std::to_string(kNumScheduleFamilies - 1) +
                          "], got " + std::to_string(cid));
  if (int(params.size()) != np)
    throw py::value_error("params: schedule family " + std::to_string(cid) + " expects " + std::to_string(np) +
                          " parameter(s), got " + std::to_string(params.size()));
  SchedParams sp;
  sp.cid = cid;
  for (int i = 0; i < np; ++i) sp.p[i] = params[i];
  if (cid == kVPDiscrete) {
    const double n = sp.p[0];
    if (!(n >= 1.0 && n <= 1e15 && n == double(int64_t(n))))
      throw py::value_error("params: expected the number of training timesteps N (an integer >= 1), got " +
                            std::to_string(n));
    if (is_none(table_c))
      throw py::value_error("table: the discrete schedule (cid 2) needs its log-alpha knot table, got None");
    View tab = parse_f64_cpu(table_c, "table");
    const int64_t N = int64_t(n);
    if (tab.ndim != 1 || tab.shape[0] != N + 1)
      throw py::value_error("table: expected shape (" + std::to_string(N + 1) + ",) = (N + 1,), got " +
                            tab.describe());
    sp.table = reinterpret_cast<const double*>(tab.data);
    sp.ntable = tab.shape[0];
  } else if (!is_none(table_c)) {
    parse_f64_cpu(table_c, "table");  // unused by the continuous families; still a check on what was passed
  }
  return sp;
}

void require_out_shape(const View& out, const View& in, int lead, const char* what) {
  bool ok = out.ndim == in.ndim + (lead >= 0 ? 1 : 0);
  int off = 0;
  if (ok && lead >= 0) { ok = out.shape[0] == lead; off = 1; }
  for (int d = 0; ok && d < in.ndim; ++d) ok = out.shape[off + d] == in.shape[d];
  if (!ok)
    throw py::value_error(std::string(out.name) + ": expected shape " + what + ", got " + out.describe() +
                          " with " + in.name + " of shape " + in.describe());
}

void schedule_eval(int cid, const std::vector<double>& params, py::handle table_c, py::handle t_c,
                   py::handle out_c) {
  const SchedParams sp = make_params(cid, params, table_c);
  View t = parse_f64_cpu(t_c, "t");
  View out = parse_f64_cpu(out_c, "out");
  require_writable(out);
  require_out_shape(out, t, 8, "(8, *t.shape)");
  if (overlaps(out, t)) throw py::value_error("out: must not overlap t");
  const int64_t n = t.numel();
  const double* tp = reinterpret_cast<const double*>(t.data);
  double* op = reinterpret_cast<double*>(out.data);
  py::gil_scoped_release nogil;
  for (int64_t i = 0; i < n; ++i) {
    double v[8];
    schedule_eval_one(sp, tp[i], v);
    for (int q = 0; q < 8; ++q) op[q * n + i] = v[q];
  }
}

void schedule_inverse(int cid, const std::vector<double>& params, py::handle table_c, py::handle lam_c,
                      py::handle out_c) {
  const SchedParams sp = make_params(cid, params, table_c);
  View lam = parse_f64_cpu(lam_c, "lam");
  View out = parse_f64_cpu(out_c, "out");
  require_writable(out);
  require_out_shape(out, lam, -1, "equal to lam's");
  // out may be lam itself (each element is read before it is written), but not partially overlap it.
  if (overlaps(out, lam) && !same_view(out, lam)) throw py::value_error("out: partially overlaps lam");
  const int64_t n = lam.numel();
  const double* lp = reinterpret_cast<const double*>(lam.data);
  double* op = reinterpret_cast<double*>(out.data);
  py::gil_scoped_release nogil;
  for (int64_t i = 0; i < n; ++i) op[i] = schedule_inverse_one(sp, lp[i]);
}

}  // namespace

void register_schedule_ops(py::module_& m) {
  m.def("schedule_eval", &schedule_eval, py::arg("cid"), py::arg("params"), py::arg("table"), py::arg("t"),
        py::arg("out"),
        "out[q] = schedule quantity q (alpha, sigma, dalpha, dsigma, lam, dlam, f, g2) at t; float64 CPU, "
        "out of shape (8, *t.shape); see csrc/core/schedule_math.h");
  m.def("schedule_inverse", &schedule_inverse, py::arg("cid"), py::arg("params"), py::arg("table"), py::arg("lam"),
        py::arg("out"), "out = t(lam), the inverse of the half log-SNR; float64 CPU, out shaped like lam");
}

}  // namespace dc
