// Python binding of the noise sources (csrc/core/philox.h, brownian.h, noise_fill.h).
//
//   _core.philox4x32(counter[4], key[2]) -> [4]        the raw bijection (known-answer tests)
//   _core.philox_normal_at(seed, id, draw, domain, elements) -> [float]
//       the scalar transform of each element (normal_at, the CUDA kernels' function)
//   _core.philox_normal_block(seed, id, draw, domain, q0, count, isa="") -> [float]
//       normals of elements 4·q0 .. 4·(q0 + count) − 1 from the CPU's vector generator (normal_blocks), or
//       from the named instruction-set variant of it; these two probe vector against scalar
//   _core.noise_isas() -> ([names supported by this CPU], active name)
//   _core.noise_fill(out, seed, ids, draw, domain, intervals, T0, T1, depth, nthreads, stream)
//       out [B, ...] float tensor; ids [B] int64 or None (id = b); intervals None (Philox normals) or
//       a float64 [B|1, 2] tensor of (ta, tb) on out's device (Brownian-tree increments over [T0, T1]).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

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

// Probe limits: element indices below 2^62 (block counters below 2^60), 4096 blocks per call.
constexpr uint64_t kProbeElements = uint64_t(1) << 62;
constexpr int64_t kProbeBlocks = 4096;

NoiseKey probe_key(uint64_t seed, int64_t id, int64_t draw, int domain) {
  if (id < 0 || id > int64_t(0xffffffff)) throw py::value_error("id: expected an int in [0, 2**32)");
  if (domain < 0 || domain > int(kDomainBrownian)) throw py::value_error("domain: expected 0, 1 or 2");
  return NoiseKey::make(seed, uint64_t(id), checked_draw(draw), uint32_t(domain));
}

std::vector<double> philox_normal_at_py(uint64_t seed, int64_t id, int64_t draw, int domain,
                                        const std::vector<uint64_t>& elements) {
  const NoiseKey k = probe_key(seed, id, draw, domain);
  std::vector<double> out;
  out.reserve(elements.size());
  for (uint64_t n : elements) {
    if (n >= kProbeElements)
      throw py::value_error("elements: expected indices in [0, 2**62), got " + std::to_string(n));
    out.push_back(normal_at(k, n));
  }
  return out;
}

std::vector<double> philox_normal_block_py(uint64_t seed, int64_t id, int64_t draw, int domain, int64_t q0,
                                           int64_t count, const std::string& isa) {
  const NoiseKey k = probe_key(seed, id, draw, domain);
  if (count < 0 || count > kProbeBlocks)
    throw py::value_error("count: expected a number of blocks in [0, " + std::to_string(kProbeBlocks) + "], got " +
                          std::to_string(count));
  if (q0 < 0 || uint64_t(q0) + uint64_t(count) > (kProbeElements >> 2))
    throw py::value_error("q0: expected q0 >= 0 and q0 + count <= 2**60, got q0 = " + std::to_string(q0));
  int which = -1;
  for (int i = 0; i < kNoiseIsaCount; ++i)
    if (isa == noise_isa_name(i)) which = i;
  if (!isa.empty() && which < 0)
    throw py::value_error("isa: expected '', 'baseline', 'avx2' or 'avx512', got '" + isa + "'");
  if (which >= 0 && !noise_isa_supported(which))
    throw py::value_error("isa: '" + isa + "' is not supported by this CPU");
  std::vector<double> out(size_t(4 * count));
  if (count == 0) return out;
  if (which < 0) normal_blocks(k, uint64_t(q0), int(count), out.data());
  else normal_blocks_isa(which, k, uint64_t(q0), int(count), out.data());
  return out;
}

py::tuple noise_isas_py() {
  py::list names;
  for (int i = 0; i < kNoiseIsaCount; ++i)
    if (noise_isa_supported(i)) names.append(noise_isa_name(i));
  return py::make_tuple(names, noise_isa_name(noise_isa_active()));
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
  m.def("philox_normal_at", &philox_normal_at_py, py::arg("seed"), py::arg("id"), py::arg("draw"), py::arg("domain"),
        py::arg("elements"), "the scalar normal of each element (csrc/core/philox.h, normal_at)");
  m.def("philox_normal_block", &philox_normal_block_py, py::arg("seed"), py::arg("id"), py::arg("draw"),
        py::arg("domain"), py::arg("q0"), py::arg("count"), py::arg("isa") = "",
        "normals of blocks q0 .. q0 + count - 1 from the CPU vector generator (normal_blocks)");
  m.def("noise_isas", &noise_isas_py, "(instruction-set variants of the CPU generator this CPU runs, the active one)");
  m.def("noise_fill", &noise_fill, py::arg("out"), py::arg("seed"), py::arg("ids"), py::arg("draw"), py::arg("domain"),
        py::arg("intervals"), py::arg("T0"), py::arg("T1"), py::arg("depth"), py::arg("nthreads"), py::arg("stream"),
        "fill out with Philox normals or Brownian-tree increments (csrc/core/noise_fill.h)");
}

}  // namespace dc
