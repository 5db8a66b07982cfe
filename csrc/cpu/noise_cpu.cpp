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
    double v[4];
    for (int64_t i = 0; i < len; i += 4) {
      noise_fill_block(a, b, uint64_t(n0 + i) >> 2, v);
      const int64_t m = len - i < 4 ? len - i : 4;
      for (int64_t l = 0; l < m; ++l) store_from(out + i + l, v[l]);
    }
  });
}

}  // namespace

void noise_fill_cpu(const NoiseFillArgs& a, DType dtype, int nthreads) {
  if (a.B == 0 || a.N == 0) return;
  switch (dtype) {
    case DType::F16: fill_typed<half_t>(a, nthreads); break;
    case DType::BF16: fill_typed<bf16_t>(a, nthreads); break;
    case DType::F32: fill_typed<float>(a, nthreads); break;
    case DType::F64: fill_typed<double>(a, nthreads); break;
    default: break;
  }
}

}  // namespace dc
