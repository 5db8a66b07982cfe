// CPU backend of the linear-combination step: chunked, vectorizable loops with OpenMP over
// (sample, chunk) pairs. Arithmetic matches lincomb_element() term by term.
#include <algorithm>
#include <cstring>

#include "core/lincomb.h"

#ifdef DIFFCORE_WITH_OPENMP
#include <omp.h>
#endif

namespace dc {
namespace {

constexpr int64_t kChunk = 1024;
constexpr int64_t kParallelThreshold = 1 << 16;  // elements; below this threads cost more than they save

template <class T, class CT>
void lincomb_chunk(const LincombArgs& a, int64_t b, int64_t n0, int64_t len) {
  using C = typename Compute<T>::type;
  C buf[kChunk];
  const CT* cf = static_cast<const CT*>(a.coef) + b * a.coef_sb;
  const CT* ft = a.feat ? static_cast<const CT*>(a.feat) + b * a.feat_sb + n0 : nullptr;
  const T* x = static_cast<const T*>(a.x) + b * a.x_sb + n0;
  {
    const C w = C(cf[0]);
    if (ft) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) buf[i] = (w * C(ft[i])) * load_as<C>(x + i);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) buf[i] = w * load_as<C>(x + i);
    }
  }
  for (int k = 0; k < a.K; ++k) {
    const T* src = (k == a.slot) ? static_cast<const T*>(a.nw) + b * a.nw_sb + n0
                                 : static_cast<const T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n0;
    const C w = C(cf[(k + 1) * a.coef_sk]);
    if (ft) {
      const CT* fk = ft + (k + 1) * a.feat_sk;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) buf[i] += (w * C(fk[i])) * load_as<C>(src + i);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) buf[i] += w * load_as<C>(src + i);
    }
  }
  if (a.slot >= 0) {
    T* dst = static_cast<T*>(a.ring) + a.slot * a.ring_sk + b * a.ring_sb + n0;
    const T* src = static_cast<const T*>(a.nw) + b * a.nw_sb + n0;
    if (dst != src) std::memmove(dst, src, size_t(len) * sizeof(T));
  }
  T* out = static_cast<T*>(a.out) + b * a.out_sb + n0;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) store_from(out + i, buf[i]);
}

template <class T, class CT>
void lincomb_typed(const LincombArgs& a, int nthreads) {
  const int64_t chunks_per_row = (a.N + kChunk - 1) / kChunk;
  const int64_t total_chunks = a.B * chunks_per_row;
  auto run = [&](int64_t c) {
    const int64_t b = c / chunks_per_row;
    const int64_t n0 = (c % chunks_per_row) * kChunk;
    lincomb_chunk<T, CT>(a, b, n0, std::min(kChunk, a.N - n0));
  };
#ifdef DIFFCORE_WITH_OPENMP
  if (nthreads > 1 && a.B * a.N >= kParallelThreshold && total_chunks > 1) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t c = 0; c < total_chunks; ++c) run(c);
    return;
  }
#else
  (void)nthreads;
#endif
  for (int64_t c = 0; c < total_chunks; ++c) run(c);
}

template <class T>
void lincomb_coef(const LincombArgs& a, bool coef_f64, int nthreads) {
  if (coef_f64) lincomb_typed<T, double>(a, nthreads);
  else lincomb_typed<T, float>(a, nthreads);
}

}  // namespace

void lincomb_cpu(const LincombArgs& a, DType dtype, bool coef_f64, int nthreads) {
  if (a.B == 0 || a.N == 0) return;
  switch (dtype) {
    case DType::F16: lincomb_coef<half_t>(a, coef_f64, nthreads); break;
    case DType::BF16: lincomb_coef<bf16_t>(a, coef_f64, nthreads); break;
    case DType::F32: lincomb_coef<float>(a, coef_f64, nthreads); break;
    case DType::F64: lincomb_coef<double>(a, coef_f64, nthreads); break;
    default: break;  // validated by the caller
  }
}

}  // namespace dc
