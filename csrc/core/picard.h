// The fused Picard window update (book §9.8, Eq. (9.8.4), Alg. 8 lines 7–12).
//
// For a window of J nodes ℓ … ℓ+J−1 with iterate x [J+1, B, D] and one-node maps phi [J, B, D]
// (phi_j = Φ_{ℓ+j}(X_{ℓ+j})), each element runs the scan of Eq. (9.8.4) in its defect form
//
//   C_0 = 0,   G_j = C_j (or, with a carry table, G_j[k] = C_j[carry[j, k]], 0 for −1),
//   y_j = phi_j + G_j,   C_{j+1} = (phi_j − x_{j+1}) + G_j,
//
// which is algebraically X_ℓ + Σ_{i≤j} Δ_{ℓ+i} but keeps y_0 = phi_0 exactly (book §9.8).
// The residual of node ℓ+j is e_j = ‖C_j‖² / (D·σ̃²_j) (row 0 is 0; 0/0 = 0, r/0 = ∞) and the stride is
// min({j ≥ 1 : max_b e_j > τ²} ∪ {J}) (book §9.8). This is python/diffcore/parallel.py's
// window_update_reference operation for operation, except the squared norms, which are summed in
// float64 per tile and then over the tiles in a fixed order (deterministic on CPU and CUDA for any thread
// count; the reference's float32 sum is pairwise, so float32 residuals agree to rounding, not bitwise).
//
// With a carry table the state of one sample is D = P·nb elements: P positions of nb buffers (the
// trailing axis: the engine's x and y), and buffer k of node j+1 continues buffer carry[j, k] of node j.
#pragma once
#include <cstdint>

#include "core/numeric.h"

namespace dc {

constexpr int kPicardMaxBuffers = 4;  // the engine uses 2 (x, y)

struct PicardArgs {
  const void* x = nullptr;      int64_t x_sj = 0, x_sb = 0;    // [J+1, B, P*nb], features contiguous
  const void* phi = nullptr;    int64_t phi_sj = 0, phi_sb = 0;  // [J, B, P*nb]
  const void* sigma2 = nullptr; int64_t s_sj = 0, s_sb = 0;    // [J, B], x's dtype (strides may be 0)
  const int64_t* carry = nullptr; int64_t c_sj = 0, c_sk = 0;  // [J, nb] or null (one buffer, carry = 0)
  void* y = nullptr;            int64_t y_sj = 0, y_sb = 0;    // [J, B, P*nb]
  void* residual = nullptr;     int64_t r_sj = 0, r_sb = 0;    // [J, B]
  int64_t* stride = nullptr;                                   // 0-d
  double* work = nullptr;  // per-tile squared norms [J, B, tiles] (rows j >= 1 written), CUDA only
  int64_t J = 0, B = 0, P = 0, tiles = 0;
  int nb = 1;
  double tau2 = 0;  // τ², compared in the compute type like the reference's `residual > τ²`
};

// Node j of the scan at one position from its values: returns ‖C_j‖² over the position's buffers (the
// residual's numerator term), writes y_j and advances corr from C_j to C_{j+1}. f = phi_j and
// xn = x_{j+1} at the position. Every path (the CPU tiles, the CUDA vector and scalar paths) computes
// through this.
template <class C, int NB>
DC_HD double picard_value(const PicardArgs& a, int64_t j, C* corr, const C* f, const C* xn, C* y) {
  double sq = 0.0;
  for (int k = 0; k < NB; ++k) sq += double(corr[k]) * double(corr[k]);
  C g[NB];
  if (a.carry) {
    for (int k = 0; k < NB; ++k) {
      // Out-of-range entries read as −1 (recomputed): the CPU binding rejects them, the CUDA path cannot
      // look without a host read.
      const int64_t src = a.carry[j * a.c_sj + k * a.c_sk];
      C v = C(0);
      for (int q = 0; q < NB; ++q) v = (src == q) ? corr[q] : v;
      g[k] = v;
    }
  } else {
    for (int k = 0; k < NB; ++k) g[k] = corr[k];
  }
  for (int k = 0; k < NB; ++k) {
    y[k] = f[k] + g[k];                 // Y_{ℓ+j+1} = Φ_{ℓ+j}(X_{ℓ+j}) + G_j
    corr[k] = (f[k] - xn[k]) + g[k];    // C_{j+1} = (Φ − X_{ℓ+j+1}) + G_j
  }
  return sq;
}

// Node j at position p of sample b, through memory.
template <class T, int NB>
DC_HD double picard_node(const PicardArgs& a, int64_t j, int64_t b, int64_t p,
                         typename Compute<T>::type* corr) {
  using C = typename Compute<T>::type;
  const int64_t off = p * NB;
  const T* ph = static_cast<const T*>(a.phi) + j * a.phi_sj + b * a.phi_sb + off;
  const T* xn = static_cast<const T*>(a.x) + (j + 1) * a.x_sj + b * a.x_sb + off;
  T* y = static_cast<T*>(a.y) + j * a.y_sj + b * a.y_sb + off;
  C f[NB], xv[NB], yv[NB];
  for (int k = 0; k < NB; ++k) {
    f[k] = load_as<C>(ph + k);
    xv[k] = load_as<C>(xn + k);
  }
  const double sq = picard_value<C, NB>(a, j, corr, f, xv, yv);
  for (int k = 0; k < NB; ++k) store_from(y + k, yv[k]);
  return sq;
}

// e_j = num / (D·σ̃²) with 0/0 = 0 (a node that did not move is converged even where σ̃² = 0).
template <class C>
DC_HD C picard_residual(C num, C D, C s2) {
  return num == C(0) ? C(0) : num / (D * s2);
}

// Backend entry points (cpu/picard_cpu.cpp, cuda/picard_cuda.cu).
void picard_window_cpu(const PicardArgs& a, DType dtype, int nthreads);
void picard_window_cuda(const PicardArgs& a, DType dtype, int device, uintptr_t stream);
// The CUDA launch run on the host, block by block and thread by thread (csrc/cpu/block_emulate.cpp).
void picard_window_emulate(const PicardArgs& a, DType dtype);
// A CUDA block covers at least kPicardCudaTile positions (csrc/core/picard_block.h), so the scratch of
// picard_cuda_tiles(P) tiles per (node, sample) always suffices.
constexpr int64_t kPicardCudaTile = 256;
inline int64_t picard_cuda_tiles(int64_t P) { return (P + kPicardCudaTile - 1) / kPicardCudaTile; }

}  // namespace dc
