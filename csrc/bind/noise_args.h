// Validation of the noise arguments shared by the noise fill and the fused step's binding.
#pragma once
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "bind/dlpack_view.h"
#include "core/brownian.h"

namespace dc {

inline uint32_t checked_draw(int64_t draw) {
  if (draw < 0 || draw > int64_t(0xffffffffu))
    throw py::value_error("draw: expected 0 <= draw < 2^32, got " + std::to_string(draw));
  return uint32_t(draw);
}

// Sample ids: an int64 [B] tensor on `ref`'s device, or None (empty view: id = b).
inline View parse_ids(py::handle ids_c, const View& ref, int64_t B) {
  View ids;
  if (is_none(ids_c)) return ids;
  ids = parse_view(ids_c, "sample_ids");
  if (ids.dtype != DType::I64)
    throw py::type_error("sample_ids: expected an int64 tensor");
  require_same_device(ids, ref);
  if (ids.ndim != 1 || ids.shape[0] != B || !ids.compact_from(0))
    throw py::value_error("sample_ids: expected a contiguous (" + std::to_string(B) + ",) tensor, got " + ids.describe());
  return ids;
}

inline void check_brownian_span(double T0, double T1, int depth) {
  if (!(std::isfinite(T0) && std::isfinite(T1) && T0 < T1))
    throw py::value_error("brownian: expected a finite span T0 < T1");
  if (depth < 0 || depth > kMaxBrownianDepth)
    throw py::value_error("brownian depth: expected 0 <= depth <= " + std::to_string(kMaxBrownianDepth));
}

// Element blocks are counted in 32 + 24 bits of the counter.
inline void check_noise_extent(int64_t N) {
  if (N > (int64_t(1) << 54)) throw py::value_error("out: too many elements per sample for the noise counter");
}

}  // namespace dc
