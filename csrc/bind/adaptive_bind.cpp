// Python binding of the adaptive solver's per-sample error control (csrc/core/adaptive.h; reference
// python/diffcore/solvers/adaptive_control.py).
//
//   _core.adaptive_control(x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active, accepted, err,
//                          atol, rtol, order, theta, fac_min, fac_max, k_i, k_p, nthreads, stream)
//       x, x_low, x_high [B, *S] float32/float64 (one dtype; dims from 1 on row-major contiguous), x
//       written where accepted; h, err_prev, lam_s [B] float64 in/out, lam_t, lam_end [B] float64 in
//       (any strides, 0 for broadcasting); active [B] bool in/out; outputs accepted [B] bool and
//       err [B] float64; all on x's device. Nothing is allocated on the device and nothing synchronizes.
#include <pybind11/pybind11.h>

#include <climits>
#include <cmath>
#include <string>

#include "bind/dlpack_view.h"
#include "core/adaptive.h"

namespace py = pybind11;

namespace dc {
namespace {

// A [B] per-sample vector of the given dtype on x's device; written ones may not repeat elements.
void require_per_sample(const View& v, DType dtype, const View& x, int64_t B, bool written) {
  if (v.dtype != dtype)
    throw py::type_error(std::string(v.name) + ": expected " + dtype_name(dtype) + ", got " + dtype_name(v.dtype));
  require_same_device(v, x);
  if (v.ndim != 1 || v.shape[0] != B)
    throw py::value_error(std::string(v.name) + ": expected shape (" + std::to_string(B) + ",) = (batch,), got " +
                          v.describe() + " with x of shape " + x.describe());
  if (written) {
    require_writable(v);
    if (B > 1 && v.strides[0] == 0)
      throw py::value_error(std::string(v.name) + ": is written per sample and must not be broadcast (stride 0)");
  }
}

void adaptive_control(py::handle x_c, py::handle lo_c, py::handle hi_c, py::handle h_c, py::handle ep_c,
                      py::handle ls_c, py::handle lt_c, py::handle le_c, py::handle act_c, py::handle acc_c,
                      py::handle err_c, double atol, double rtol, int order, double theta, double fac_min,
                      double fac_max, double k_i, double k_p, int nthreads, uintptr_t stream) {
  View x = parse_view(x_c, "x");
  View lo = parse_view(lo_c, "x_low");
  View hi = parse_view(hi_c, "x_high");
  View h = parse_view(h_c, "h");
  View ep = parse_view(ep_c, "err_prev");
  View ls = parse_view(ls_c, "lam_s");
  View lt = parse_view(lt_c, "lam_t");
  View le = parse_view(le_c, "lam_end");
  View act = parse_view(act_c, "active");
  View acc = parse_view(acc_c, "accepted");
  View err = parse_view(err_c, "err");

  require_real(x);
  if (x.ndim < 1) throw py::value_error("x: expected shape (B, *S) with a batch dimension, got a 0-d tensor");
  for (View* v : {&lo, &hi}) {
    require_same_dtype(*v, x);
    require_same_device(*v, x);
    require_trailing_shape(*v, 0, x, 0, "equal to x's");
  }
  require_feature_compact(x, 1);
  require_feature_compact(lo, 1);
  require_feature_compact(hi, 1);
  require_writable(x);
  const int64_t B = x.shape[0];
  require_per_sample(h, DType::F64, x, B, true);
  require_per_sample(ep, DType::F64, x, B, true);
  require_per_sample(ls, DType::F64, x, B, true);
  require_per_sample(lt, DType::F64, x, B, false);
  require_per_sample(le, DType::F64, x, B, false);
  require_per_sample(act, DType::Bool, x, B, true);
  require_per_sample(acc, DType::Bool, x, B, true);
  require_per_sample(err, DType::F64, x, B, true);

  // Aliasing: x may be exactly x_low or x_high (in-place), the per-sample outputs overlap nothing.
  require_no_partial_overlap(x, lo);
  require_no_partial_overlap(x, hi);
  require_no_overlap(x, lt);
  require_no_overlap(x, le);
  const View* outs[] = {&h, &ep, &ls, &act, &acc, &err};
  for (int i = 0; i < 6; ++i) {
    for (const View* in : {&x, &lo, &hi, &lt, &le}) require_no_overlap(*outs[i], *in);
    for (int j = i + 1; j < 6; ++j) require_no_overlap(*outs[i], *outs[j]);
  }

  if (!(atol >= 0)) throw py::value_error("atol: expected a number >= 0, got " + std::to_string(atol));
  if (!(rtol >= 0)) throw py::value_error("rtol: expected a number >= 0, got " + std::to_string(rtol));
  if (!(atol + rtol > 0)) throw py::value_error("atol, rtol: expected atol + rtol > 0, got both 0");
  if (order < 1) throw py::value_error("order: expected an integer >= 1, got " + std::to_string(order));
  if (!(theta > 0)) throw py::value_error("theta: expected a number > 0, got " + std::to_string(theta));
  if (!(fac_min >= 0 && fac_min <= 1))  // 0: no lower limit (the plain I-controller of dpm_adaptive)
    throw py::value_error("fac_min: expected 0 <= fac_min <= 1, got " + std::to_string(fac_min));
  if (!(fac_max >= 1)) throw py::value_error("fac_max: expected fac_max >= 1, got " + std::to_string(fac_max));
  if (!std::isfinite(k_i) || !std::isfinite(k_p))
    throw py::value_error("k_i, k_p: expected finite controller gains, got " + std::to_string(k_i) + ", " +
                          std::to_string(k_p));

  AdaptiveArgs a;
  a.B = B;
  a.N = x.numel_from(1);
  a.x = x.data; a.x_sb = x.strides[0];
  a.x_low = lo.data; a.lo_sb = lo.strides[0];
  a.x_high = hi.data; a.hi_sb = hi.strides[0];
  a.h = reinterpret_cast<double*>(h.data); a.h_s = h.strides[0];
  a.err_prev = reinterpret_cast<double*>(ep.data); a.ep_s = ep.strides[0];
  a.lam_s = reinterpret_cast<double*>(ls.data); a.ls_s = ls.strides[0];
  a.lam_t = reinterpret_cast<const double*>(lt.data); a.lt_s = lt.strides[0];
  a.lam_end = reinterpret_cast<const double*>(le.data); a.le_s = le.strides[0];
  a.active = reinterpret_cast<uint8_t*>(act.data); a.act_s = act.strides[0];
  a.accepted = reinterpret_cast<uint8_t*>(acc.data); a.acc_s = acc.strides[0];
  a.err = reinterpret_cast<double*>(err.data); a.err_s = err.strides[0];
  a.atol = atol; a.rtol = rtol; a.order = order; a.theta = theta;
  a.fac_min = fac_min; a.fac_max = fac_max; a.k_i = k_i; a.k_p = k_p;

  if (x.is_cuda()) {
    if (B > INT_MAX) throw py::value_error("x: at most 2^31 - 1 samples on CUDA, got " + std::to_string(B));
    call_backend(true, [&] { adaptive_control_cuda(a, x.dtype, x.device_id, stream); });
  } else {
    call_backend(B * a.N >= (1 << 15), [&] { adaptive_control_cpu(a, x.dtype, nthreads); });
  }
}

}  // namespace

void register_adaptive_ops(py::module_& m) {
  py::dict control;  // the controller's constants (core/adaptive.h), read by solvers/adaptive_control.py
  control["err_floor"] = kAdaptiveErrFloor;
  control["err_prev_floor"] = kAdaptiveErrPrevFloor;
  control["end_tol"] = kAdaptiveEndTol;
  control["max_rejections"] = kAdaptiveMaxRejections;
  control["theta"] = kAdaptiveTheta;
  control["fac_min"] = kAdaptiveFacMin;
  control["fac_max"] = kAdaptiveFacMax;
  control["k_i"] = kAdaptiveKI;
  control["k_p"] = kAdaptiveKP;
  m.attr("ADAPTIVE_CONTROL") = control;
  m.def("adaptive_control", &adaptive_control, py::arg("x"), py::arg("x_low"), py::arg("x_high"), py::arg("h"),
        py::arg("err_prev"), py::arg("lam_s"), py::arg("lam_t"), py::arg("lam_end"), py::arg("active"),
        py::arg("accepted"), py::arg("err"), py::arg("atol"), py::arg("rtol"), py::arg("order"), py::arg("theta"),
        py::arg("fac_min"), py::arg("fac_max"), py::arg("k_i"), py::arg("k_p"), py::arg("nthreads"),
        py::arg("stream"),
        "Per-sample error control of the adaptive solver (RMS error, PI step control, accept/finish); "
        "see csrc/core/adaptive.h");
}

}  // namespace dc
