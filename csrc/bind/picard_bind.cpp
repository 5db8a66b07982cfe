// Python binding of the fused Picard window update (csrc/core/picard.h; book §9.8).
//
//   _core.picard_window(x, phi, sigma2, carry, y, residual, stride, work, tau2, nthreads, stream)
//       x [J+1, B, *S], phi [J, B, *S] float32/float64 (dims from 2 on row-major contiguous);
//       sigma2 [J, B] in x's dtype (any strides, 0 for broadcasting); carry [J, nb] int64 or None,
//       nb = S[-1] ≤ 4 (on CPU its entries are checked to lie in [−1, nb); on CUDA an entry outside
//       reads as −1, since looking would need a host read); outputs y [J, B, *S], residual [J, B] in
//       x's dtype and stride (0-d int64), all on x's device; work: float64 scratch of at least
//       picard_work_size(J, B, P) elements on CUDA (P = positions per sample), None on CPU;
//       tau2 = τ². Nothing is allocated on the device and nothing synchronizes.
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#include "bind/dlpack_view.h"
#include "core/picard.h"

namespace py = pybind11;

namespace dc {
namespace {

int64_t picard_work_size(int64_t J, int64_t B, int64_t P) {
  if (J < 0 || B < 0 || P < 0) throw py::value_error("picard_work_size: expected non-negative sizes");
  return J * B * picard_cuda_tiles(P);
}

void picard_window(py::handle x_c, py::handle phi_c, py::handle s_c, py::handle carry_c, py::handle y_c,
                   py::handle r_c, py::handle stride_c, py::handle work_c, double tau2, int nthreads,
                   uintptr_t stream) {
  View x = parse_view(x_c, "x");
  View phi = parse_view(phi_c, "phi");
  View s2 = parse_view(s_c, "sigma2");
  View y = parse_view(y_c, "y");
  View r = parse_view(r_c, "residual");
  View st = parse_view(stride_c, "stride");
  require_real(x);
  if (x.ndim < 2) throw py::value_error("x: expected shape (J + 1, B, *S), got " + x.describe());
  require_same_dtype(phi, x);
  require_same_device(phi, x);
  if (phi.ndim != x.ndim || phi.shape[0] != x.shape[0] - 1)
    throw py::value_error("phi: expected shape (J, B, *S) with x of shape (J + 1, B, *S), got " + phi.describe() +
                          " with x of shape " + x.describe());
  require_trailing_shape(phi, 1, x, 1, "(J, B, *S) as x's (J + 1, B, *S)");
  const int64_t J = phi.shape[0], B = x.shape[1];
  if (J < 1) throw py::value_error("phi: expected a window of at least one node");
  require_feature_compact(x, 2);
  require_feature_compact(phi, 2);
  require_same_dtype(s2, x);
  require_same_device(s2, x);
  if (s2.ndim != 2 || s2.shape[0] != J || s2.shape[1] != B)
    throw py::value_error("sigma2: expected shape (" + std::to_string(J) + ", " + std::to_string(B) + "), got " +
                          s2.describe());
  require_same_dtype(y, x);
  require_same_device(y, x);
  require_trailing_shape(y, 0, phi, 0, "equal to phi's");
  require_feature_compact(y, 2);
  require_writable(y);
  require_same_dtype(r, x);
  require_same_device(r, x);
  if (r.ndim != 2 || r.shape[0] != J || r.shape[1] != B)
    throw py::value_error("residual: expected shape (" + std::to_string(J) + ", " + std::to_string(B) + "), got " +
                          r.describe());
  require_writable(r);
  if (st.dtype != DType::I64) throw py::type_error(std::string("stride: expected int64, got ") + dtype_name(st.dtype));
  require_same_device(st, x);
  if (st.ndim != 0) throw py::value_error("stride: expected a 0-d tensor, got shape " + st.describe());
  require_writable(st);
  for (const View* w : {&y, &r, &st})
    for (const View* in : {&x, &phi, &s2}) require_no_overlap(*w, *in);
  require_no_overlap(r, y);
  require_no_overlap(st, y);
  require_no_overlap(st, r);
  if (!(tau2 >= 0)) throw py::value_error("tau2: expected a number >= 0, got " + std::to_string(tau2));

  PicardArgs a;
  a.J = J; a.B = B;
  const int64_t D = x.numel_from(2);
  a.x = x.data; a.x_sj = x.strides[0]; a.x_sb = x.strides[1];
  a.phi = phi.data; a.phi_sj = phi.strides[0]; a.phi_sb = phi.strides[1];
  a.sigma2 = s2.data; a.s_sj = s2.strides[0]; a.s_sb = s2.strides[1];
  a.y = y.data; a.y_sj = y.strides[0]; a.y_sb = y.strides[1];
  a.residual = r.data; a.r_sj = r.strides[0]; a.r_sb = r.strides[1];
  a.stride = reinterpret_cast<int64_t*>(st.data);
  a.tau2 = tau2;
  a.nb = 1;
  a.P = D;
  View carry;
  if (!is_none(carry_c)) {
    carry = parse_view(carry_c, "carry");
    if (carry.dtype != DType::I64)
      throw py::type_error(std::string("carry: expected int64, got ") + dtype_name(carry.dtype));
    require_same_device(carry, x);
    if (x.ndim < 3) throw py::value_error("carry: needs a trailing buffer axis, x has shape " + x.describe());
    const int64_t nb = x.shape[x.ndim - 1];
    if (carry.ndim != 2 || carry.shape[0] != J || carry.shape[1] != nb)
      throw py::value_error("carry: expected shape (" + std::to_string(J) + ", " + std::to_string(nb) + "), got " +
                            carry.describe());
    if (nb < 1 || nb > kPicardMaxBuffers)
      throw py::value_error("carry: at most " + std::to_string(kPicardMaxBuffers) + " buffers, got " +
                            std::to_string(nb));
    a.carry = reinterpret_cast<const int64_t*>(carry.data);
    a.c_sj = carry.strides[0]; a.c_sk = carry.strides[1];
    a.nb = int(nb);
    a.P = D / nb;
    if (!carry.is_cuda()) {
      for (int64_t j = 0; j < J; ++j)
        for (int64_t k = 0; k < nb; ++k) {
          const int64_t v = a.carry[j * a.c_sj + k * a.c_sk];
          if (v < -1 || v >= nb)
            throw py::value_error("carry: entries must lie in [-1, " + std::to_string(nb) + "), got " +
                                  std::to_string(v) + " at (" + std::to_string(j) + ", " + std::to_string(k) + ")");
        }
    }
  }

  if (x.is_cuda()) {
    if (is_none(work_c)) throw py::value_error("work: a CUDA window update needs its float64 scratch tensor");
    View w = parse_view(work_c, "work");
    if (w.dtype != DType::F64) throw py::type_error(std::string("work: expected float64, got ") + dtype_name(w.dtype));
    require_same_device(w, x);
    require_writable(w);
    const int64_t need = picard_work_size(J, B, a.P);
    if (w.numel() < need || !w.compact_from(0))
      throw py::value_error("work: expected a contiguous float64 tensor of at least " + std::to_string(need) +
                            " elements, got shape " + w.describe());
    for (const View* o : {&x, &phi, &s2, &y, &r, &st}) require_no_overlap(w, *o);
    a.work = reinterpret_cast<double*>(w.data);
    call_backend(true, [&] { picard_window_cuda(a, x.dtype, x.device_id, stream); });
  } else {
    call_backend(J * B * D >= (1 << 15), [&] { picard_window_cpu(a, x.dtype, nthreads); });
  }
}

}  // namespace

void register_picard_ops(py::module_& m) {
  m.def("picard_window", &picard_window, py::arg("x"), py::arg("phi"), py::arg("sigma2"), py::arg("carry"),
        py::arg("y"), py::arg("residual"), py::arg("stride"), py::arg("work"), py::arg("tau2"), py::arg("nthreads"),
        py::arg("stream"), "Picard window update (scan, normalized residuals, stride); see csrc/core/picard.h");
  m.def("picard_work_size", &picard_work_size, py::arg("J"), py::arg("B"), py::arg("P"),
        "float64 scratch elements of a CUDA picard_window call with P positions per sample");
}

}  // namespace dc
