// The generic linear-combination step of docs/design.md ("The one idea"):
//
//   out[b, n] = w_0(b, n) * x[b, n] + sum_{k=1..K} w_k(b, n) * D_k[b, n],
//   w_k(b, n) = coef[b, k] * (feat ? feat[b, k, n] : 1),
//
// where D_k is slot k-1 of a history ring buffer, except that the slot being written this step
// (`slot`) reads the new model output `nw` instead, and `nw` is stored into that slot. Every sampler
// step of the book (DDIM, DPM-Solver(++), DEIS, UniPC, Euler, Heun stages, ...) is one such call with
// coefficients from a plan; parameterization conversions are the K = 1 case.
//
// Semantics are per element: every input element is read before any output element at the same
// (b, n) is written, so `out` may alias `x` or a ring slot exactly (in-place steps).
#pragma once
#include <cstdint>

#include "core/numeric.h"

namespace dc {

struct LincombArgs {
  void* out = nullptr;       int64_t out_sb = 0;   // [B, N], feature-contiguous
  const void* x = nullptr;   int64_t x_sb = 0;     // [B, N]
  void* ring = nullptr;      int64_t ring_sk = 0, ring_sb = 0;  // [K, B, N]
  int K = 0;
  const void* nw = nullptr;  int64_t nw_sb = 0;    // [B, N] new model output, written to ring[slot]
  int slot = -1;
  const void* coef = nullptr; int64_t coef_sb = 0, coef_sk = 0;  // [B|1, 1+K]; sb = 0 broadcasts
  const void* feat = nullptr; int64_t feat_sb = 0, feat_sk = 0;  // [B|1, 1+K, N] or null
  int64_t B = 0, N = 0;
};

// Weight of term k for sample b at feature n (coefficient times optional per-feature factor).
template <class C, class CT>
DC_HD C lc_weight(const LincombArgs& a, int64_t b, int k, int64_t n) {
  C w = C(static_cast<const CT*>(a.coef)[b * a.coef_sb + k * a.coef_sk]);
  if (a.feat) w *= C(static_cast<const CT*>(a.feat)[b * a.feat_sb + k * a.feat_sk + n]);
  return w;
}

// The combination of one element from its values: acc = w_0*x, then acc += w_k*d(k-1) for k = 1..K in
// order (d(k): the value of term k, a callable so that the CPU loop reads in place). Every path (the
// CPU chunks, the CUDA vector and scalar paths) computes through this, so all round identically (no
// contraction: CMakeLists.txt).
template <class C, int KK, class Term>
DC_HD C lincomb_value(const C* w, C x, Term&& d) {
  C acc = w[0] * x;
  for (int k = 0; k < KK; ++k) acc += w[k + 1] * d(k);
  return acc;
}

// One output element with K read at run time and optional per-feature factors (the general path).
// ring[slot] receives the new output's bits unchanged, as the CPU's copy does.
template <class T, class CT>
DC_HD void lincomb_element(const LincombArgs& a, int64_t b, int64_t n) {
  using C = typename Compute<T>::type;
  C acc = lc_weight<C, CT>(a, b, 0, n) * load_as<C>(static_cast<const T*>(a.x) + b * a.x_sb + n);
  const T* nw = a.slot >= 0 ? static_cast<const T*>(a.nw) + b * a.nw_sb + n : nullptr;
  for (int k = 0; k < a.K; ++k) {
    const T* src = (k == a.slot) ? nw : static_cast<const T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n;
    acc += lc_weight<C, CT>(a, b, k + 1, n) * load_as<C>(src);
  }
  if (nw) {
    const T fresh = *nw;  // read before out is written (out may alias new)
    static_cast<T*>(a.ring)[a.slot * a.ring_sk + b * a.ring_sb + n] = fresh;
  }
  store_from(static_cast<T*>(a.out) + b * a.out_sb + n, acc);
}

// Backend entry points (cpu/lincomb_cpu.cpp, cuda/lincomb_cuda.cu).
void lincomb_cpu(const LincombArgs& a, DType dtype, bool coef_f64, int nthreads);
void lincomb_cuda(const LincombArgs& a, DType dtype, bool coef_f64, int device, uintptr_t stream);
// The CUDA launch run on the host, block by block and thread by thread (csrc/cpu/block_emulate.cpp).
void lincomb_emulate(const LincombArgs& a, DType dtype, bool coef_f64);
bool cuda_compiled();
int cuda_device_count();  // 0 without a driver or device; never throws

}  // namespace dc
