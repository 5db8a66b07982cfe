// CPU backend of the fused sampler step: the arithmetic of step_value() with K and the written
// buffers known at compile time, so each chunk is one vectorizable pass; OpenMP over (sample, chunk)
// pairs above a size threshold.
#include "core/block_geometry.h"
#include "core/solver_step.h"
#include "cpu/chunked.h"

namespace dc {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kParallelThreshold = 1 << 18;  // ~0.3 ms of one thread: see cpu/chunked.h
// A step that draws noise costs ~10-20 ns per element (Philox + Box-Muller), not ~1: threads pay
// off on much smaller arrays (bench/bench_sde.py).
constexpr int64_t kNoisyParallelThreshold = 1 << 14;

// The chunk's noise, a whole Philox block (4 elements) at a time; n0 is a multiple of 4.
template <class T, class C>
void fill_noise(const StepArgs& a, const double* c, int64_t b, int64_t n0, int64_t len, C* zb) {
  if (a.noise == kNoiseTensor) {
    const T* zp = static_cast<const T*>(a.z) + b * a.z_sb + n0;
    for (int64_t i = 0; i < len; ++i) zb[i] = load_as<C>(zp + i);
    return;
  }
  const NoiseKey k = step_noise_key(a, b);
  const RowLayout L(a.K);
  const double ta = c[L.ta()], tb = c[L.tb()];
  const int nb = int((len + 3) / 4);  // zb holds len rounded up to 4
  alignas(64) double v[kChunk + 4];
  if (a.noise == kNoiseBrownian && ta != tb) {
    brownian_blocks(k, uint64_t(n0 >> 2), nb, ta, tb, a.T0, a.T1, a.depth, v);
  } else {
    normal_blocks(k, uint64_t(n0 >> 2), nb, v);
  }
  for (int64_t i = 0; i < 4 * nb; ++i) zb[i] = C(v[i]);
}

// WRITE bit 0: ring[slot] <- m, bit 1: x <- x', bit 2: y <- y', bit 3: add noise. Every branch is
// resolved at compile time so the loop body is straight-line and vectorizes; a missing y reads x with
// zero weights.
template <class T, int KK, int WRITE>
void step_chunk(const StepArgs& a, int64_t b, int64_t n0, int64_t len) {
  using C = typename Compute<T>::type;
  const double* c = a.coef + b * a.coef_sb;
  constexpr bool NOISE = (WRITE & 8) != 0;
  alignas(64) C zb[NOISE ? kChunk + 4 : 1];
  if (NOISE) fill_noise<T, C>(a, c, b, n0, len, zb);
  const StepCoef<C, KK> r(c, a.raw);
  const T* rp[KK > 0 ? KK : 1];
  for (int k = 0; k < KK; ++k) rp[k] = static_cast<const T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n0;
  T* xp = static_cast<T*>(a.x) + b * a.x_sb + n0;
  T* yp = a.y ? static_cast<T*>(a.y) + b * a.y_sb + n0 : xp;
  const T* up = a.input == 1 ? yp : xp;
  const T* op = static_cast<const T*>(a.o) + b * a.o_sb + n0;
  T* dst = (WRITE & 1) ? static_cast<T*>(a.ring) + a.slot * a.ring_sk + b * a.ring_sb + n0 : nullptr;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    C m, accx, accy;
    step_value<C, KK, NOISE>(r, load_as<C>(xp + i), load_as<C>(yp + i), load_as<C>(up + i), load_as<C>(op + i),
                             [&](int k) { return load_as<C>(rp[k] + i); }, NOISE ? zb[i] : C(0), &m, &accx, &accy);
    if (WRITE & 1) store_from(dst + i, m);
    if (WRITE & 2) store_from(xp + i, accx);
    if (WRITE & 4) store_from(yp + i, accy);
  }
}

using ChunkFn = void (*)(const StepArgs&, int64_t, int64_t, int64_t);

template <class T, int KK>
ChunkFn pick_write(int w) {
  static constexpr ChunkFn by_write[16] = {
      nullptr,                step_chunk<T, KK, 1>,  step_chunk<T, KK, 2>,  step_chunk<T, KK, 3>,
      step_chunk<T, KK, 4>,   step_chunk<T, KK, 5>,  step_chunk<T, KK, 6>,  step_chunk<T, KK, 7>,
      nullptr,                step_chunk<T, KK, 9>,  step_chunk<T, KK, 10>, step_chunk<T, KK, 11>,
      step_chunk<T, KK, 12>,  step_chunk<T, KK, 13>, step_chunk<T, KK, 14>, step_chunk<T, KK, 15>};
  return by_write[w];
}

template <class T>
void step_typed(const StepArgs& a, int nthreads) {
  // K and the written buffers are resolved once per call, not per chunk
  int w = (a.slot >= 0 ? 1 : 0) | (a.write_x ? 2 : 0) | (a.write_y && a.y ? 4 : 0);
  if (w == 0) return;
  if (a.noise != kNoiseNone && (w & 6)) w |= 8;
  using Pick = ChunkFn (*)(int);
  static constexpr Pick by_k[kMaxRing + 1] = {pick_write<T, 0>, pick_write<T, 1>, pick_write<T, 2>,
                                              pick_write<T, 3>, pick_write<T, 4>, pick_write<T, 5>};
  const ChunkFn fn = by_k[a.K](w);
  for_each_chunk(a.B, a.N, kChunk, nthreads, (w & 8) ? kNoisyParallelThreshold : kParallelThreshold,
                 [&](int64_t b, int64_t n0, int64_t len) { fn(a, b, n0, len); });
}

}  // namespace

void solver_step_cpu(const StepArgs& a, DType dtype, int nthreads) {
  if (a.B == 0 || a.N == 0) return;
  if (cuda_emulation()) return solver_step_emulate(a, dtype);
  dispatch_float(dtype, [&](auto tag) { step_typed<decltype(tag)>(a, nthreads); });
}

}  // namespace dc
