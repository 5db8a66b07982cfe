// The per-block work of the CUDA Picard window update (csrc/core/picard.h; book §9.8; geometry in
// csrc/core/block_geometry.h and docs/design.md, "Launch geometry").
//
// A block covers one sample's tile of positions and runs the whole scan over the window's J nodes; each
// thread keeps the running corrections C_j of the positions it owns in registers. A thread owns units
// of positions: one 16-byte vector of elements when the buffers per position divide the vector width
// (nb = 1, 2, 4 for float; 1, 2 for double), else one position. For each node the block sums its
// threads' ‖C_j‖² terms with a fixed tree (block_tree_sum), which the CUDA kernel runs in shared memory
// and the host emulation (csrc/cpu/block_emulate.cpp) on an array, in the same order.
#pragma once
#include <cstdint>

#include "core/block_geometry.h"
#include "core/picard.h"

namespace dc {

struct PicardTiling {
  int64_t B = 0, P = 0;
  int ppu = 1;          // positions per unit
  int64_t ppb = 0;      // positions per block (a tile)
  int64_t tiles = 0;    // tiles per sample
  int64_t blocks = 0;
};

template <class T>
inline PicardTiling picard_tiling(int64_t B, int64_t P, int nb) {
  constexpr int V = VecWidth<T>::value;
  PicardTiling g;
  g.B = B;
  g.P = P;
  g.ppu = V % nb == 0 ? V / nb : 1;
  g.ppb = int64_t(kBlockThreads) * kUnroll * g.ppu;
  g.tiles = (P + g.ppb - 1) / g.ppb;
  g.blocks = B * g.tiles;
  return g;
}
static_assert(kBlockThreads * kUnroll >= kPicardCudaTile, "a tile covers at least kPicardCudaTile positions");

// Compute-type elements one thread keeps corrections for.
template <class T>
struct PicardCorr {
  static constexpr int size = kUnroll * (VecWidth<T>::value > kPicardMaxBuffers ? VecWidth<T>::value : kPicardMaxBuffers);
};

// The sum of v[0 .. n) (n a power of two) as the tree v[t] += v[t + o] for o = n/2, n/4, ..., 1; it
// overwrites v. The CUDA kernel performs the same additions in shared memory.
DC_HD double block_tree_sum(double* v, int n) {
  for (int o = n / 2; o > 0; o >>= 1)
    for (int t = 0; t < o; ++t) v[t] += v[t + o];
  return v[0];
}

// Node j for thread t of `block`: updates the thread's corrections and returns its ‖C_j‖² terms summed
// in its units' order. corr holds PicardCorr<T>::size values, zero before node 0.
template <class T, int NB>
DC_HD double picard_thread_node(const PicardArgs& a, const PicardTiling& g, int64_t block, int t, int threads,
                                int64_t j, typename Compute<T>::type* corr) {
  using C = typename Compute<T>::type;
  constexpr int V = VecWidth<T>::value;
  const int64_t b = block / g.tiles;
  const int64_t p0 = (block - b * g.tiles) * g.ppb;
  const T* ph = static_cast<const T*>(a.phi) + j * a.phi_sj + b * a.phi_sb;
  const T* xn = static_cast<const T*>(a.x) + (j + 1) * a.x_sj + b * a.x_sb;
  T* y = static_cast<T*>(a.y) + j * a.y_sj + b * a.y_sb;
  // Vectors when a unit is one whole vector and every row of the window starts on a 16-byte boundary
  // (bases and node strides); the decision is the same for every node of the block.
  const bool vec = g.ppu * NB == V && mis16(ph) == 0 && mis16(xn) == 0 && mis16(y) == 0 &&
                   (a.phi_sj * int64_t(sizeof(T))) % kVecBytes == 0 && (a.x_sj * int64_t(sizeof(T))) % kVecBytes == 0 &&
                   (a.y_sj * int64_t(sizeof(T))) % kVecBytes == 0;
  double sq = 0.0;
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t p = p0 + (t + int64_t(u) * threads) * g.ppu;  // first position of the unit
    C* cu = corr + u * g.ppu * NB;
    if (p >= g.P) break;
    if (vec && p + g.ppu <= g.P) {
      C f[V], xv[V], yv[V];
      vload_as<C>(ph + p * NB, f);
      vload_as<C>(xn + p * NB, xv);
      for (int q = 0; q < V / NB; ++q) sq += picard_value<C, NB>(a, j, cu + q * NB, f + q * NB, xv + q * NB, yv + q * NB);
      vstore_from(y + p * NB, yv);
    } else {
      for (int q = 0; q < g.ppu && p + q < g.P; ++q) sq += picard_node<T, NB>(a, j, b, p + q, cu + q * NB);
    }
  }
  return sq;
}

// Entry i = j·B + b of the finish: writes residual[j, b] from the tiles' sums in tile order and returns
// whether it exceeds τ² (NaN compares false, as in the reference). Row 0 is C_0 = 0.
template <class C>
DC_HD bool picard_finish_entry(const PicardArgs& a, int64_t i) {
  const int64_t j = i / a.B, b = i - j * a.B;
  C e = C(0);
  bool over = false;
  if (j > 0) {
    double num = 0.0;
    const double* w = a.work + (j * a.B + b) * a.tiles;
    for (int64_t t = 0; t < a.tiles; ++t) num += w[t];
    const C D = C(a.P * a.nb > 0 ? a.P * a.nb : 1);
    e = picard_residual(C(num), D, static_cast<const C*>(a.sigma2)[j * a.s_sj + b * a.s_sb]);
    over = e > C(a.tau2);
  }
  static_cast<C*>(a.residual)[j * a.r_sj + b * a.r_sb] = e;
  return over;
}

// Calls fn(IntC<nb>{}) for the launch's buffers per position.
template <class Fn>
inline void dispatch_buffers(int nb, Fn&& fn) {
  switch (nb) {
    case 1: fn(IntC<1>{}); break;
    case 2: fn(IntC<2>{}); break;
    case 3: fn(IntC<3>{}); break;
    default: fn(IntC<kPicardMaxBuffers>{}); break;
  }
}
static_assert(kPicardMaxBuffers == 4, "dispatch_buffers covers nb = 1 .. kPicardMaxBuffers");

}  // namespace dc
