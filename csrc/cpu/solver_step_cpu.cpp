// CPU backend of the fused sampler step: the arithmetic of step_element() with K and the written
// buffers known at compile time, so each chunk is one vectorizable pass; OpenMP over (sample, chunk)
// pairs above a size threshold.
#include "core/solver_step.h"
#include "cpu/chunked.h"

namespace dc {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kParallelThreshold = 1 << 16;

// WRITE bit 0: ring[slot] <- m, bit 1: x <- x', bit 2: y <- y'. Every branch is resolved at compile
// time so the loop body is straight-line and vectorizes; a missing y reads x with zero weights.
template <class T, int KK, int WRITE>
void step_chunk(const StepArgs& a, int64_t b, int64_t n0, int64_t len) {
  using C = typename Compute<T>::type;
  const double* c = a.coef + b * a.coef_sb;
  // raw: the output is already native, m = 0·u + 1·o
  const C cu = a.raw ? C(0) : C(c[0]), co = a.raw ? C(1) : C(c[1]);
  const C ax = C(c[2]), ay = C(c[3]), am = C(c[4 + KK]);
  const C bx = C(c[5 + KK]), by = C(c[6 + KK]), bm = C(c[7 + 2 * KK]);
  C ar[KK > 0 ? KK : 1], br[KK > 0 ? KK : 1];
  const T* rp[KK > 0 ? KK : 1];
  for (int k = 0; k < KK; ++k) {
    ar[k] = C(c[4 + k]);
    br[k] = C(c[7 + KK + k]);
    rp[k] = static_cast<const T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n0;
  }
  T* xp = static_cast<T*>(a.x) + b * a.x_sb + n0;
  T* yp = a.y ? static_cast<T*>(a.y) + b * a.y_sb + n0 : xp;
  const T* up = a.input == 1 ? yp : xp;
  const T* op = static_cast<const T*>(a.o) + b * a.o_sb + n0;
  T* dst = (WRITE & 1) ? static_cast<T*>(a.ring) + a.slot * a.ring_sk + b * a.ring_sb + n0 : nullptr;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const C xv = load_as<C>(xp + i);
    const C yv = load_as<C>(yp + i);
    const C m = cu * load_as<C>(up + i) + co * load_as<C>(op + i);
    C accx = ax * xv + ay * yv;
    C accy = bx * xv + by * yv;
    for (int k = 0; k < KK; ++k) {
      const C v = load_as<C>(rp[k] + i);
      accx += ar[k] * v;
      accy += br[k] * v;
    }
    accx += am * m;
    accy += bm * m;
    if (WRITE & 1) store_from(dst + i, m);
    if (WRITE & 2) store_from(xp + i, accx);
    if (WRITE & 4) store_from(yp + i, accy);
  }
}

using ChunkFn = void (*)(const StepArgs&, int64_t, int64_t, int64_t);

template <class T, int KK>
ChunkFn pick_write(int w) {
  static constexpr ChunkFn by_write[8] = {nullptr, step_chunk<T, KK, 1>, step_chunk<T, KK, 2>,
                                          step_chunk<T, KK, 3>, step_chunk<T, KK, 4>, step_chunk<T, KK, 5>,
                                          step_chunk<T, KK, 6>, step_chunk<T, KK, 7>};
  return by_write[w];
}

template <class T>
void step_typed(const StepArgs& a, int nthreads) {
  // K and the written buffers are resolved once per call, not per chunk
  const int w = (a.slot >= 0 ? 1 : 0) | (a.write_x ? 2 : 0) | (a.write_y && a.y ? 4 : 0);
  if (w == 0) return;
  using Pick = ChunkFn (*)(int);
  static constexpr Pick by_k[kMaxRing + 1] = {pick_write<T, 0>, pick_write<T, 1>, pick_write<T, 2>,
                                              pick_write<T, 3>, pick_write<T, 4>, pick_write<T, 5>};
  const ChunkFn fn = by_k[a.K](w);
  for_each_chunk(a.B, a.N, kChunk, nthreads, kParallelThreshold,
                 [&](int64_t b, int64_t n0, int64_t len) { fn(a, b, n0, len); });
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
