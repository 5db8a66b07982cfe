// CPU backend of the fused sampler step: the arithmetic of step_element() with K and the presence of
// the second buffer known at compile time, so each chunk is one vectorizable pass; OpenMP over
// (sample, chunk) pairs above a size threshold.
#include <algorithm>

#include "core/solver_step.h"

#ifdef DIFFCORE_WITH_OPENMP
#include <omp.h>
#endif

namespace dc {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kParallelThreshold = 1 << 16;

template <class T, int KK, bool HY>
void step_chunk(const StepArgs& a, int64_t b, int64_t n0, int64_t len) {
  using C = typename Compute<T>::type;
  const double* c = a.coef + b * a.coef_sb;
  const C cu = C(c[0]), co = C(c[1]);
  const C ax = C(c[2]), ay = C(c[3]), am = C(c[4 + KK]);
  const C bx = C(c[5 + KK]), by = C(c[6 + KK]), bm = C(c[7 + 2 * KK]);
  C ar[KK > 0 ? KK : 1], br[KK > 0 ? KK : 1];
  T* rp[KK > 0 ? KK : 1];
  for (int k = 0; k < KK; ++k) {
    ar[k] = C(c[4 + k]);
    br[k] = C(c[7 + KK + k]);
    rp[k] = static_cast<T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n0;
  }
  T* xp = static_cast<T*>(a.x) + b * a.x_sb + n0;
  T* yp = HY ? static_cast<T*>(a.y) + b * a.y_sb + n0 : nullptr;
  const T* op = static_cast<const T*>(a.o) + b * a.o_sb + n0;
  T* dst = a.slot >= 0 ? static_cast<T*>(a.ring) + a.slot * a.ring_sk + b * a.ring_sb + n0 : nullptr;
  const bool raw = a.raw, from_y = a.input == 1, wx = a.write_x, wy = a.write_y;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const C xv = load_as<C>(xp + i);
    const C yv = HY ? load_as<C>(yp + i) : C(0);
    const C ov = load_as<C>(op + i);
    const C m = raw ? ov : cu * (from_y ? yv : xv) + co * ov;
    C accx = ax * xv + ay * yv;
    C accy = bx * xv + by * yv;
    for (int k = 0; k < KK; ++k) {
      const C v = load_as<C>(rp[k] + i);
      accx += ar[k] * v;
      accy += br[k] * v;
    }
    accx += am * m;
    accy += bm * m;
    if (dst) store_from(dst + i, m);
    if (wx) store_from(xp + i, accx);
    if (HY && wy) store_from(yp + i, accy);
  }
}

template <class T, int KK>
void step_chunk_k(const StepArgs& a, int64_t b, int64_t n0, int64_t len) {
  if (a.y) step_chunk<T, KK, true>(a, b, n0, len);
  else step_chunk<T, KK, false>(a, b, n0, len);
}

template <class T>
void step_typed(const StepArgs& a, int nthreads) {
  using ChunkFn = void (*)(const StepArgs&, int64_t, int64_t, int64_t);
  static constexpr ChunkFn table[kMaxRing + 1] = {step_chunk_k<T, 0>, step_chunk_k<T, 1>, step_chunk_k<T, 2>,
                                                   step_chunk_k<T, 3>, step_chunk_k<T, 4>, step_chunk_k<T, 5>};
  const ChunkFn fn = table[a.K];
  const int64_t per_row = (a.N + kChunk - 1) / kChunk;
  const int64_t total = a.B * per_row;
  auto run = [&](int64_t c) {
    const int64_t b = c / per_row;
    const int64_t n0 = (c % per_row) * kChunk;
    fn(a, b, n0, std::min(kChunk, a.N - n0));
  };
#ifdef DIFFCORE_WITH_OPENMP
  if (nthreads > 1 && a.B * a.N >= kParallelThreshold && total > 1) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t c = 0; c < total; ++c) run(c);
    return;
  }
#else
  (void)nthreads;
#endif
  for (int64_t c = 0; c < total; ++c) run(c);
}

}  // namespace

void solver_step_cpu(const StepArgs& a, DType dtype, int nthreads) {
  if (a.B == 0 || a.N == 0) return;
  switch (dtype) {
    case DType::F16: step_typed<half_t>(a, nthreads); break;
    case DType::BF16: step_typed<bf16_t>(a, nthreads); break;
    case DType::F32: step_typed<float>(a, nthreads); break;
    case DType::F64: step_typed<double>(a, nthreads); break;
    default: break;  // validated by the caller
  }
}

}  // namespace dc
