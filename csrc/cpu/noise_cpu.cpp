// CPU loop of the noise fill (csrc/core/noise_fill.h): whole Philox blocks, OpenMP over chunks.
#include "core/noise_fill.h"
#include "cpu/chunked.h"

namespace dc {
namespace {

constexpr int64_t kChunk = 4096;  // a multiple of 4: chunks start on a Philox block

template <class T>
void fill_typed(const NoiseFillArgs& a, int nthreads) {
  for_each_chunk(a.B, a.N, kChunk, nthreads, 1 << 14, [&](int64_t b, int64_t n0, int64_t len) {
    T* out = static_cast<T*>(a.out) + b * a.out_sb + n0;
    alignas(64) double v[kChunk + 4];
    const int nb = int((len + 3) / 4);
    if (a.brownian) {
      for (int j = 0; j < nb; ++j) noise_fill_block(a, b, uint64_t(n0 >> 2) + j, v + 4 * j);
    } else {
      normal_blocks(a.key(b), uint64_t(n0 >> 2), nb, v);
    }
    for (int64_t i = 0; i < len; ++i) store_from(out + i, v[i]);
  });
}

}  // namespace

void noise_fill_cpu(const NoiseFillArgs& a, DType dtype, int nthreads) {
  if (a.B == 0 || a.N == 0) return;
  dispatch_float(dtype, [&](auto tag) { fill_typed<decltype(tag)>(a, nthreads); });
}

}  // namespace dc
