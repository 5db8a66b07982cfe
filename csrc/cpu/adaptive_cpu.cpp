// CPU backend of the adaptive solver's per-sample error control (csrc/core/adaptive.h): OpenMP over
// (sample, tile of features) for the squared error terms, each tile summed sequentially in float64,
// then per sample the tiles in tile order, so E does not depend on the thread count; then the
// per-sample control and, in parallel again, the copy x ← x_high of the accepted rows.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/adaptive.h"
#include "cpu/chunked.h"

namespace dc {
namespace {

constexpr int64_t kTile = 4096;                  // features per tile
constexpr int64_t kParallelThreshold = 1 << 17;  // elements (~0.3 ms of one thread): see cpu/chunked.h

template <class T>
void adaptive_typed(const AdaptiveArgs& a, int nthreads) {
  const int64_t tiles = std::max<int64_t>(1, (a.N + kTile - 1) / kTile);
  std::vector<double> part(size_t(a.B * tiles), 0.0);  // [B, tiles]
  const T* x = static_cast<const T*>(a.x);
  const T* lo = static_cast<const T*>(a.x_low);
  const T* hi = static_cast<const T*>(a.x_high);
  if (a.N > 0) {
    for_each_chunk(a.B, a.N, kTile, nthreads, kParallelThreshold, [&](int64_t b, int64_t n0, int64_t len) {
      const T* xr = x + b * a.x_sb + n0;
      const T* lr = lo + b * a.lo_sb + n0;
      const T* hr = hi + b * a.hi_sb + n0;
      double s = 0.0;
      for (int64_t i = 0; i < len; ++i) s += adaptive_term<T>(a, xr + i, lr + i, hr + i);
      part[size_t(b * tiles + n0 / kTile)] = s;
    });
  }
  std::vector<uint8_t> acc(size_t(a.B), 0);
  bool any = false;
  for (int64_t b = 0; b < a.B; ++b) {
    double s = 0.0;
    for (int64_t t = 0; t < tiles; ++t) s += part[size_t(b * tiles + t)];
    acc[size_t(b)] = adaptive_control_sample(a, b, s) ? 1 : 0;
    any = any || acc[size_t(b)];
  }
  if (!any || a.N == 0) return;
  T* xw = static_cast<T*>(a.x);
  for_each_chunk(a.B, a.N, kTile, nthreads, kParallelThreshold, [&](int64_t b, int64_t n0, int64_t len) {
    if (!acc[size_t(b)]) return;
    T* dst = xw + b * a.x_sb + n0;
    const T* src = hi + b * a.hi_sb + n0;
    if (dst != src) std::memcpy(dst, src, size_t(len) * sizeof(T));  // same dtype: a copy
  });
}

}  // namespace

void adaptive_control_cpu(const AdaptiveArgs& a, DType dtype, int nthreads) {
  // float32 / float64 only (the binding rejects the rest).
  if (dtype == DType::F64) adaptive_typed<double>(a, nthreads);
  else if (dtype == DType::F32) adaptive_typed<float>(a, nthreads);
}

}  // namespace dc
