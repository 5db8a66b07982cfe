// One fused sampler step (docs/design.md, "One fused kernel family"). For sample b, element n:
//
//   m          = cu * u + co * o        model output o -> the solver's native prediction
//                                       (u = model input = x or y; skipped when `raw`: m = o)
//   x'         = ax*x + ay*y + sum_k ar_k*ring_k + am*m + zx*z   (when write_x)
//   y'         = bx*x + by*y + sum_k br_k*ring_k + bm*m + zy*z   (when write_y)
//   ring[slot] <- m                                              (when slot >= 0)
//
// z is standard normal noise, present when the row has a draw (noise != kNoiseNone): Philox normals
// of (seed, sample id, draw, element) (csrc/core/philox.h), a pre-drawn tensor, or the Brownian
// tree's normalized increment over [ta, tb] (csrc/core/brownian.h; rows with ta == tb fall back to
// Philox). The same z enters x' and y'.
//
// ring_k is always the *old* history value: every input of an element is read before any output of
// that element is written, so x' and y' replace x and y in place and the slot being written can
// still be read as the oldest history entry (a multistep method needs K = order - 1 slots).
//
// The row's columns and the stage record are declared in csrc/core/row_layout.h; plans
// (csrc/core/plans/*.h) produce the rows, the step only applies them.
#pragma once
#include <cstdint>

#include "core/brownian.h"
#include "core/numeric.h"
#include "core/philox.h"
#include "core/row_layout.h"

namespace dc {

constexpr int kMaxRing = 5;

enum NoiseKind : int { kNoiseNone = 0, kNoisePhilox = 1, kNoiseTensor = 2, kNoiseBrownian = 3 };

struct StepArgs {
  void* x = nullptr;         int64_t x_sb = 0;
  void* y = nullptr;         int64_t y_sb = 0;             // null when the plan has no second buffer
  void* ring = nullptr;      int64_t ring_sk = 0, ring_sb = 0;
  int K = 0;
  const void* o = nullptr;   int64_t o_sb = 0;
  const double* coef = nullptr; int64_t coef_sb = 0;       // row for sample b at coef + b*coef_sb
  int input = 0;             // 0: model input u = x, 1: u = y
  int slot = -1;
  bool raw = false, write_x = false, write_y = false;
  int64_t B = 0, N = 0;
  // noise of this call (kNoiseNone: the row has no draw)
  int noise = kNoiseNone;
  uint64_t seed = 0;
  const int64_t* ids = nullptr;   // sample ids [B] on the state's device, or null: id = b
  uint32_t draw = 0;
  const void* z = nullptr;   int64_t z_sb = 0;             // kNoiseTensor
  double T0 = 0, T1 = 1;     int depth = 20;               // kNoiseBrownian
};

DC_HD NoiseKey step_noise_key(const StepArgs& a, int64_t b) {
  return NoiseKey::make(a.seed, a.ids ? uint64_t(a.ids[b]) : uint64_t(b), a.draw, kDomainStep);
}

// The noise of element n of sample b (one element at a time: the CUDA kernel).
template <class T>
DC_HD double step_noise_at(const StepArgs& a, const double* c, int64_t b, int64_t n) {
  if (a.noise == kNoiseTensor) return double(load_as<double>(static_cast<const T*>(a.z) + b * a.z_sb + n));
  const NoiseKey k = step_noise_key(a, b);
  const RowLayout L(a.K);
  if (a.noise == kNoiseBrownian && c[L.ta()] != c[L.tb()]) {
    double z;
    brownian_increment<1>(k, uint64_t(n), c[L.ta()], c[L.tb()], a.T0, a.T1, a.depth, &z);
    return z;
  }
  return normal_at(k, uint64_t(n));
}

// A row converted once to the compute type (per chunk on the CPU, per block on CUDA). raw: the model
// output is already the native prediction, m = 0·u + 1·o.
template <class C, int KK>
struct StepCoef {
  C cu, co, ax, ay, am, bx, by, bm, zx, zy;
  C ar[KK > 0 ? KK : 1], br[KK > 0 ? KK : 1];
  DC_HD StepCoef(const double* c, bool raw) {
    constexpr RowLayout L(KK);
    cu = raw ? C(0) : C(c[L.cu()]);
    co = raw ? C(1) : C(c[L.co()]);
    ax = C(c[L.ax()]); ay = C(c[L.ay()]); am = C(c[L.am()]);
    bx = C(c[L.bx()]); by = C(c[L.by()]); bm = C(c[L.bm()]);
    zx = C(c[L.zx()]); zy = C(c[L.zy()]);
    for (int k = 0; k < KK; ++k) {
      ar[k] = C(c[L.ar(k)]);
      br[k] = C(c[L.br(k)]);
    }
  }
};

// The arithmetic of one element from its values (u: the model input, x or y; ring(k): the old value
// of ring slot k; z: the noise when NOISE), in the order every backend uses: the CPU loops and the
// CUDA vector and scalar paths all compute through this, so they round identically (no contraction:
// CMakeLists.txt). Without a second buffer, y reads x (with zero weights). `ring` is a callable so
// that the CPU loop reads the slots in place (an intermediate array stops GCC vectorizing it).
template <class C, int KK, bool NOISE, class Ring>
DC_HD void step_value(const StepCoef<C, KK>& r, C xv, C yv, C uv, C ov, Ring&& ring, C zv, C* m, C* x1, C* y1) {
  const C mm = r.cu * uv + r.co * ov;
  C accx = r.ax * xv + r.ay * yv;
  C accy = r.bx * xv + r.by * yv;
  for (int k = 0; k < KK; ++k) {
    const C v = ring(k);
    accx += r.ar[k] * v;
    accy += r.br[k] * v;
  }
  accx += r.am * mm;
  accy += r.bm * mm;
  if (NOISE) {
    accx += r.zx * zv;
    accy += r.zy * zv;
  }
  *m = mm;
  *x1 = accx;
  *y1 = accy;
}

void solver_step_cpu(const StepArgs& a, DType dtype, int nthreads);
void solver_step_cuda(const StepArgs& a, DType dtype, int device, uintptr_t stream);
// The CUDA launch run on the host, block by block and thread by thread (csrc/cpu/block_emulate.cpp).
void solver_step_emulate(const StepArgs& a, DType dtype);

}  // namespace dc
