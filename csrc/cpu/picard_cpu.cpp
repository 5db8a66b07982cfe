// CPU backend of the Picard window update (csrc/core/picard.h; book §9.8): OpenMP over
// (sample, tile of positions), each tile running the scan over the window's J nodes with its running
// corrections in a local buffer; the squared norms are summed per tile in float64 and then over the
// tiles in tile order, so the residuals (and the stride) do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/block_geometry.h"
#include "core/picard.h"
#include "cpu/chunked.h"

namespace dc {
namespace {

constexpr int64_t kTile = 1024;                  // positions per tile (≤ 32 KiB of float64 corrections)
constexpr int64_t kParallelThreshold = 1 << 17;  // positions × nodes (~0.3 ms of one thread): see cpu/chunked.h

template <class T, int NB>
void picard_tile(const PicardArgs& a, int64_t b, int64_t p0, int64_t len, double* part) {
  using C = typename Compute<T>::type;
  C corr[kTile * NB];
  std::fill(corr, corr + len * NB, C(0));
  for (int64_t j = 0; j < a.J; ++j) {
    double s = 0.0;
    for (int64_t i = 0; i < len; ++i) s += picard_node<T, NB>(a, j, b, p0 + i, corr + i * NB);
    part[j] = s;  // row 0 is C_0 = 0
  }
}

template <class T, int NB>
void picard_typed(const PicardArgs& a, int nthreads) {
  using C = typename Compute<T>::type;
  const int64_t tiles = std::max<int64_t>(1, (a.P + kTile - 1) / kTile);
  std::vector<double> part(size_t(a.B * tiles * a.J), 0.0);  // [B, tiles, J]
  if (a.P > 0) {
    for_each_chunk(a.B, a.P, kTile, nthreads, kParallelThreshold / std::max<int64_t>(1, a.J),
                   [&](int64_t b, int64_t p0, int64_t len) {
                     picard_tile<T, NB>(a, b, p0, len, &part[size_t((b * tiles + p0 / kTile) * a.J)]);
                   });
  }
  const C D = C(std::max<int64_t>(1, a.P * a.nb));
  const C tau2 = C(a.tau2);
  int64_t stride = a.J;
  for (int64_t j = 0; j < a.J; ++j) {
    for (int64_t b = 0; b < a.B; ++b) {
      double num = 0.0;
      for (int64_t t = 0; t < tiles; ++t) num += part[size_t((b * tiles + t) * a.J + j)];
      const C s2 = static_cast<const C*>(a.sigma2)[j * a.s_sj + b * a.s_sb];
      const C e = j == 0 ? C(0) : picard_residual(C(num), D, s2);
      static_cast<C*>(a.residual)[j * a.r_sj + b * a.r_sb] = e;
      if (j >= 1 && e > tau2) stride = std::min(stride, j);  // NaN compares false, as in the reference
    }
  }
  *a.stride = stride;
}

template <class T>
void picard_nb(const PicardArgs& a, int nthreads) {
  switch (a.nb) {
    case 1: return picard_typed<T, 1>(a, nthreads);
    case 2: return picard_typed<T, 2>(a, nthreads);
    case 3: return picard_typed<T, 3>(a, nthreads);
    default: return picard_typed<T, 4>(a, nthreads);
  }
}

}  // namespace

void picard_window_cpu(const PicardArgs& a, DType dtype, int nthreads) {
  if (cuda_emulation()) return picard_window_emulate(a, dtype);
  // float32 / float64 only (the binding rejects the rest): the reference computes in the storage type.
  if (dtype == DType::F64) picard_nb<double>(a, nthreads);
  else if (dtype == DType::F32) picard_nb<float>(a, nthreads);
}

}  // namespace dc
