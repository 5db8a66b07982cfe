// Python binding of the noise sources (csrc/core/philox.h, brownian.h, noise_fill.h).
//
//   _core.philox4x32(counter[4], key[2]) -> [4]        the raw bijection (known-answer tests)
//   _core.noise_fill(out, seed, ids, draw, domain, intervals, T0, T1, depth, nthreads, stream)
//       out [B, ...] float tensor; ids [B] int64 or None (id = b); intervals None (Philox normals) or
//       a float64 [B|1, 2] tensor of (ta, tb) on out's device (Brownian-tree increments over [T0, T1]).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>

#include "bind/dlpack_view.h"
#include "bind/noise_args.h"
#include "core/noise_fill.h"

namespace py = pybind11;

namespace dc {
namespace {

std::array<uint32_t, 4> philox_py(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
  philox4x32_10(c, key[0], key[1]);
  return {c[0], c[1], c[2], c[3]};
}

void noise_fill(py::handle out_c, uint64_t seed, py::handle ids_c, int64_t draw, int domain, py::handle iv_c, double T0,
                double T1, int depth, int nthreads, uintptr_t stream) {
  View out = parse_view(out_c, "out");
  require_float(out);
  require_writable(out);
  if (out.ndim < 1) throw py::value_error("out: expected at least one (batch) dimension");
  require_feature_compact(out, 1);
  NoiseFillArgs a;
  a.out = out.data; a.out_sb = out.strides[0];
  a.B = out.shape[0]; a.N = out.numel_from(1);
  a.seed = seed;
  a.draw = checked_draw(draw);
  if (domain < 0 || domain > int(kDomainBrownian)) throw py::value_error("domain: expected 0, 1 or 2");
  a.domain = uint32_t(domain);
  View ids = parse_ids(ids_c, out, a.B);
  a.ids = ids.data ? reinterpret_cast<const int64_t*>(ids.data) : nullptr;
  View iv;
  if (!is_none(iv_c)) {
    iv = parse_view(iv_c, "intervals");
    if (iv.dtype != DType::F64) throw py::type_error("intervals: expected float64");
    require_same_device(iv, out);
    if (iv.ndim != 2 || (iv.shape[0] != 1 && iv.shape[0] != a.B) || iv.shape[1] != 2 || !iv.compact_from(1))
      throw py::value_error("intervals: expected (B or 1, 2), got " + iv.describe());
    check_brownian_span(T0, T1, depth);
    a.brownian = true;
    a.iv = reinterpret_cast<const double*>(iv.data);
    a.iv_sb = iv.shape[0] == 1 ? 0 : iv.strides[0];
    a.T0 = T0; a.T1 = T1; a.depth = depth;
  }
  check_noise_extent(a.N);
  if (out.is_cuda()) {
    py::gil_scoped_release nogil;
    noise_fill_cuda(a, out.dtype, out.device_id, stream);
  } else {
    py::gil_scoped_release nogil;
    noise_fill_cpu(a, out.dtype, nthreads);
  }
}

}  // namespace

void register_noise_ops(py::module_& m) {
  m.def("philox4x32", &philox_py, py::arg("counter"), py::arg("key"), "Philox-4x32-10 of one counter block");
  m.def("noise_fill", &noise_fill, py::arg("out"), py::arg("seed"), py::arg("ids"), py::arg("draw"), py::arg("domain"),
        py::arg("intervals"), py::arg("T0"), py::arg("T1"), py::arg("depth"), py::arg("nthreads"), py::arg("stream"),
        "fill out with Philox normals or Brownian-tree increments (csrc/core/noise_fill.h)");
}

}  // namespace dc
