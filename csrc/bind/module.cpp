// diffcore._core: the compiled module. Python reaches it only through diffcore/_ops.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bind/dlpack_view.h"
#include "core/block_geometry.h"
#include "core/lincomb.h"

#ifdef DIFFCORE_WITH_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace dc {
void register_schedule_ops(py::module_& m);  // bind/schedule_bind.cpp
void register_step_ops(py::module_& m);      // bind/step_bind.cpp
void register_plan_ops(py::module_& m);      // bind/plan_bind.cpp
void register_noise_ops(py::module_& m);     // bind/noise_bind.cpp
void register_ot_ops(py::module_& m);        // bind/ot_bind.cpp
void register_picard_ops(py::module_& m);    // bind/picard_bind.cpp
void register_adaptive_ops(py::module_& m);  // bind/adaptive_bind.cpp
void register_layout_ops(py::module_& m);    // bind/layout_bind.cpp

namespace {

View slot_view(const View& ring, int k, const char* name) {
  View s;
  s.name = name;
  s.data = ring.data + k * ring.strides[0] * ring.itemsize;
  s.device_type = ring.device_type; s.device_id = ring.device_id;
  s.dtype = ring.dtype; s.itemsize = ring.itemsize; s.ndim = ring.ndim - 1;
  for (int d = 1; d < ring.ndim; ++d) { s.shape[d - 1] = ring.shape[d]; s.strides[d - 1] = ring.strides[d]; }
  return s;
}

void lincomb(py::handle out_c, py::handle x_c, py::handle coef_c, py::handle ring_c, py::handle new_c,
             int slot, py::handle feat_c, int nthreads, uintptr_t stream) {
  View out = parse_view(out_c, "out");
  View x = parse_view(x_c, "x");
  View coef = parse_view(coef_c, "coefs");
  require_float(x);
  if (x.ndim < 1) throw py::value_error("x: expected at least one (batch) dimension");
  require_same_dtype(out, x);
  require_same_device(out, x);
  require_trailing_shape(out, 0, x, 0, "equal to x's");
  require_writable(out);
  require_feature_compact(x, 1);
  require_feature_compact(out, 1);

  LincombArgs a;
  a.B = x.shape[0];
  a.N = x.numel_from(1);
  a.x = x.data; a.x_sb = x.strides[0];
  a.out = out.data; a.out_sb = out.strides[0];

  View ring, nw, feat;
  const bool has_ring = !is_none(ring_c);
  if (has_ring) {
    ring = parse_view(ring_c, "ring");
    require_same_dtype(ring, x);
    require_same_device(ring, x);
    if (ring.ndim != x.ndim + 1)
      throw py::value_error("ring: expected shape (K, *x.shape), got " + ring.describe());
    require_trailing_shape(ring, 1, x, 0, "(K, *x.shape)");
    require_feature_compact(ring, 2);
    a.ring = ring.data; a.K = int(ring.shape[0]);
    a.ring_sk = ring.strides[0]; a.ring_sb = ring.strides[1];
  }
  const bool has_new = !is_none(new_c);
  if (has_new != (slot >= 0))
    throw py::value_error("new: a new model output and a ring slot index must be given together");
  if (has_new) {
    if (!has_ring) throw py::value_error("new: writing a history slot needs a ring buffer");
    if (slot >= a.K)
      throw py::value_error("slot: expected 0 <= slot < K = " + std::to_string(a.K) + ", got " + std::to_string(slot));
    nw = parse_view(new_c, "new");
    require_same_dtype(nw, x);
    require_same_device(nw, x);
    require_trailing_shape(nw, 0, x, 0, "equal to x's");
    require_feature_compact(nw, 1);
    require_writable(ring);
    a.nw = nw.data; a.nw_sb = nw.strides[0]; a.slot = slot;
  } else if (slot != -1) {
    throw py::value_error("slot: expected -1 when no new output is written");
  }

  require_real(coef);
  require_same_device(coef, x);
  if (coef.ndim != 2 || (coef.shape[0] != a.B && coef.shape[0] != 1) || coef.shape[1] != 1 + a.K)
    throw py::value_error("coefs: expected shape (" + std::to_string(a.B) + " or 1, " + std::to_string(1 + a.K) +
                          ") = (batch, 1 + K), got " + coef.describe());
  a.coef = coef.data;
  a.coef_sb = coef.shape[0] == 1 ? 0 : coef.strides[0];
  a.coef_sk = coef.strides[1];

  if (!is_none(feat_c)) {
    feat = parse_view(feat_c, "feat");
    require_same_dtype(feat, coef);
    require_same_device(feat, x);
    if (feat.ndim != 3 || (feat.shape[0] != a.B && feat.shape[0] != 1) || feat.shape[1] != 1 + a.K ||
        feat.shape[2] != a.N)
      throw py::value_error("feat: expected shape (" + std::to_string(a.B) + " or 1, " + std::to_string(1 + a.K) +
                            ", " + std::to_string(a.N) + ") = (batch, 1 + K, features), got " + feat.describe());
    if (feat.strides[2] != 1 && feat.shape[2] != 1)
      throw py::value_error("feat: its last dimension must be contiguous");
    a.feat = feat.data;
    a.feat_sb = feat.shape[0] == 1 ? 0 : feat.strides[0];
    a.feat_sk = feat.strides[1];
  }

  // Aliasing: written regions are out and (when writing) ring[slot].
  require_no_partial_overlap(out, x);
  if (has_new) {
    require_no_partial_overlap(out, nw);
    View dst = slot_view(ring, slot, "ring[slot]");
    if (overlaps(out, dst)) throw py::value_error("out: must not overlap the ring slot being written");
    require_no_partial_overlap(dst, x);
    require_no_partial_overlap(dst, nw);
  }
  if (has_ring) {
    for (int k = 0; k < a.K; ++k) {
      if (k == slot) continue;
      require_no_partial_overlap(out, slot_view(ring, k, "ring"));
      if (has_new) {
        View dst = slot_view(ring, slot, "ring[slot]");
        if (overlaps(dst, slot_view(ring, k, "ring"))) throw py::value_error("ring: slots overlap in memory");
      }
    }
  }

  const bool coef_f64 = coef.dtype == DType::F64;
  if (x.is_cuda()) {
    call_backend(true, [&] { lincomb_cuda(a, x.dtype, coef_f64, x.device_id, stream); });
  } else {
    call_backend(a.B * a.N >= (1 << 16), [&] { lincomb_cpu(a, x.dtype, coef_f64, nthreads); });
  }
}

py::dict build_info() {
  py::dict d;
  d["version"] = DIFFCORE_VERSION;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
  d["cuda"] = cuda_compiled();
  d["cuda_archs"] = cuda_compiled() ? std::string(DIFFCORE_CUDA_ARCHS_STR) : std::string();
#ifdef DIFFCORE_WITH_OPENMP
  d["openmp"] = true;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_max_threads"] = 1;
#endif
  return d;
}

}  // namespace
}  // namespace dc

PYBIND11_MODULE(_core, m) {
  m.doc() = "diffcore compiled core (DLPack in, nothing allocated here). Use the diffcore package instead.";
  m.def("lincomb", &dc::lincomb, py::arg("out"), py::arg("x"), py::arg("coefs"), py::arg("ring"), py::arg("new"),
        py::arg("slot"), py::arg("feat"), py::arg("nthreads"), py::arg("stream"),
        "out = coefs[:,0]*x + sum_k coefs[:,k+1]*ring[k] (ring[slot] <- new first); see csrc/core/lincomb.h");
  m.def("build_info", &dc::build_info);
  m.def(
      "dlpack_check",
      [](py::handle capsule, const std::string& name) {
        dc::require_importable(dc::parse_view(capsule, name.c_str()));
      },
      py::arg("capsule"), py::arg("name"),
      "validate a DLPack capsule (extents, data pointer, strides) before torch imports it; raises naming `name`");
  m.attr("MAX_DIMS") = dc::kMaxDims;  // the most dimensions a tensor handed to a kernel may have
  m.def("cuda_device_count", &dc::cuda_device_count);
  m.def("_emulate_cuda", &dc::set_cuda_emulation, py::arg("on"),
        "test-only: run the CUDA grids of lincomb, the step and the Picard window on the host for CPU tensors "
        "(csrc/core/block_geometry.h); returns the previous setting");
  dc::register_schedule_ops(m);
  dc::register_step_ops(m);
  dc::register_plan_ops(m);
  dc::register_noise_ops(m);
  dc::register_ot_ops(m);
  dc::register_picard_ops(m);
  dc::register_adaptive_ops(m);
  dc::register_layout_ops(m);
}
