// The per-block work of the CUDA fused step (csrc/core/solver_step.h; geometry in
// csrc/core/block_geometry.h and docs/design.md, "Launch geometry"). step_block() is what one thread of
// one block does; csrc/cuda/solver_step_cuda.cu calls it with the CUDA indices and
// csrc/cpu/block_emulate.cpp for every (block, thread) on the host.
#pragma once
#include <cstdint>

#include "core/block_geometry.h"
#include "core/solver_step.h"

namespace dc {

// What a call writes, resolved once per launch (as the CPU loop does): a noise draw only matters when
// x or y is written.
struct StepWrites {
  bool ring = false, x = false, y = false, noise = false;
  DC_HD bool any() const { return ring || x || y; }
};

DC_HD StepWrites step_writes(const StepArgs& a) {
  StepWrites w;
  w.ring = a.slot >= 0;
  w.x = a.write_x;
  w.y = a.write_y && a.y;
  w.noise = a.noise != kNoiseNone && (w.x || w.y);
  return w;
}

// The Philox normals of elements n .. n+V-1 of one stream: whole aligned groups of four from one
// Philox block each (normal4), the rest one by one (normal_at); both give the same bits.
template <int V>
DC_HD void philox_lanes(const NoiseKey& k, int64_t n, double* z) {
  int l = 0;
  while (l < V) {
    if (((n + l) & 3) == 0 && l + 4 <= V) {
      normal4(k, uint64_t(n + l) >> 2, z + l);
      l += 4;
    } else {
      z[l] = normal_at(k, uint64_t(n + l));
      ++l;
    }
  }
}

// One element n of sample b with the row already converted (the scalar head and tail of a row block,
// and every element of a packed block). NOISE == w.noise, a template parameter so that a launch
// without noise carries none of the noise code (registers).
template <class T, int KK, bool NOISE>
DC_HD void step_scalar(const StepArgs& a, const StepWrites& w, const StepCoef<typename Compute<T>::type, KK>& r,
                       const double* c, int64_t b, int64_t n) {
  using C = typename Compute<T>::type;
  T* xp = static_cast<T*>(a.x) + b * a.x_sb + n;
  T* yp = a.y ? static_cast<T*>(a.y) + b * a.y_sb + n : xp;
  const T* op = static_cast<const T*>(a.o) + b * a.o_sb + n;
  T* rp = static_cast<T*>(a.ring) + b * a.ring_sb + n;
  C rv[KK > 0 ? KK : 1];
  for (int k = 0; k < KK; ++k) rv[k] = load_as<C>(rp + k * a.ring_sk);
  const C xv = load_as<C>(xp), yv = load_as<C>(yp);
  const C uv = a.input == 1 ? yv : xv;
  const auto ring = [&](int k) { return rv[k]; };
  C m, x1, y1;
  const C zv = NOISE ? C(step_noise_at<T>(a, c, b, n)) : C(0);
  step_value<C, KK, NOISE>(r, xv, yv, uv, load_as<C>(op), ring, zv, &m, &x1, &y1);
  if (w.ring) store_from(rp + a.slot * a.ring_sk, m);
  if (w.x) store_from(xp, x1);
  if (w.y) store_from(yp, y1);
}

// A row-mode block: the sample's row converted once, the piece's elements as 16-byte vectors where
// every array's row shares one alignment (x, y, the model output, the ring slots, a noise tensor), the
// rest scalar.
template <class T, int KK, bool NOISE>
DC_HD void step_row_block(const StepArgs& a, const StepWrites& w, const RowTiling& g, int64_t block, int t,
                          int threads) {
  using C = typename Compute<T>::type;
  constexpr int V = VecWidth<T>::value;
  RowPiece r = row_piece(g, block);
  const int64_t b = r.b, n0 = r.n0;
  const double* c = a.coef + b * a.coef_sb;
  const StepCoef<C, KK> rc(c, a.raw);
  T* xp = static_cast<T*>(a.x) + b * a.x_sb + n0;
  T* yp = a.y ? static_cast<T*>(a.y) + b * a.y_sb + n0 : xp;
  const T* op = static_cast<const T*>(a.o) + b * a.o_sb + n0;
  const T* rp[KK > 0 ? KK : 1];
  const uint32_t mis = mis16(xp);
  bool same = mis16(yp) == mis && mis16(op) == mis;
  for (int k = 0; k < KK; ++k) {
    rp[k] = static_cast<const T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n0;
    same = same && mis16(rp[k]) == mis;
  }
  const bool ztensor = NOISE && a.noise == kNoiseTensor;
  const T* zp = ztensor ? static_cast<const T*>(a.z) + b * a.z_sb + n0 : nullptr;
  if (ztensor) same = same && mis16(zp) == mis;
  split_piece<T>(r, same, mis);

  for_scalar_part(r, t, threads, [&](int64_t i) { step_scalar<T, KK, NOISE>(a, w, rc, c, b, n0 + i); });

  const RowLayout L(KK);
  const bool philox = NOISE && (a.noise == kNoisePhilox || (a.noise == kNoiseBrownian && c[L.ta()] == c[L.tb()]));
  const NoiseKey key = NOISE ? step_noise_key(a, b) : NoiseKey{};
  T* dst = w.ring ? static_cast<T*>(a.ring) + a.slot * a.ring_sk + b * a.ring_sb + n0 : nullptr;
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = t + int64_t(u) * threads;
    if (v >= r.nvec) break;
    const int64_t i = r.head + v * V;
    C xv[V], yv[V], ov[V], rv[KK > 0 ? KK : 1][V], zv[V];
    vload_as<C>(xp + i, xv);
    if (a.y) {
      vload_as<C>(yp + i, yv);
    } else {
      for (int l = 0; l < V; ++l) yv[l] = xv[l];  // y reads x: the same values without a second load
    }
    vload_as<C>(op + i, ov);
    for (int k = 0; k < KK; ++k) vload_as<C>(rp[k] + i, rv[k]);
    if constexpr (NOISE) {
      if (ztensor) {
        vload_as<C>(zp + i, zv);
      } else if (philox) {
        double z[V];
        philox_lanes<V>(key, n0 + i, z);
        for (int l = 0; l < V; ++l) zv[l] = C(z[l]);
      } else {  // Brownian increments, element by element
        for (int l = 0; l < V; ++l) zv[l] = C(step_noise_at<T>(a, c, b, n0 + i + l));
      }
    } else {
      for (int l = 0; l < V; ++l) zv[l] = C(0);
    }
    C m[V], x1[V], y1[V];
    for (int l = 0; l < V; ++l) {
      const auto ring = [&](int k) { return rv[k][l]; };
      const C uv = a.input == 1 ? yv[l] : xv[l];
      step_value<C, KK, NOISE>(rc, xv[l], yv[l], uv, ov[l], ring, zv[l], &m[l], &x1[l], &y1[l]);
    }
    if (w.ring) vstore_from(dst + i, m);
    if (w.x) vstore_from(xp + i, x1);
    if (w.y) vstore_from(yp + i, y1);
  }
}

// A packed-mode block: element by element, each converting its own sample's row.
template <class T, int KK, bool NOISE>
DC_HD void step_packed_block(const StepArgs& a, const StepWrites& w, const RowTiling& g, int64_t block, int t,
                             int threads) {
  using C = typename Compute<T>::type;
  const PackedPiece p = packed_piece(g, block);
  for (int64_t e = t; e < p.len; e += threads) {
    int64_t b, n;
    packed_index(p, g.N, e, &b, &n);
    const double* c = a.coef + b * a.coef_sb;
    step_scalar<T, KK, NOISE>(a, w, StepCoef<C, KK>(c, a.raw), c, b, n);
  }
}

// NOISE must equal step_writes(a).noise (the launchers dispatch on it).
template <class T, int KK, bool NOISE>
DC_HD void step_block(const StepArgs& a, const RowTiling& g, int64_t block, int t, int threads) {
  const StepWrites w = step_writes(a);
  if (!w.any()) return;
  if (g.packed()) step_packed_block<T, KK, NOISE>(a, w, g, block, t, threads);
  else step_row_block<T, KK, NOISE>(a, w, g, block, t, threads);
}

// Calls fn(IntC<K>{}, IntC<noise>{}) for the launch's history size and whether it draws noise (host
// code: launchers, emulation).
template <class Fn>
inline void dispatch_step(int K, bool noise, Fn&& fn) {
  auto with_noise = [&](auto kk) {
    if (noise) fn(kk, IntC<1>{});
    else fn(kk, IntC<0>{});
  };
  switch (K) {
    case 0: with_noise(IntC<0>{}); break;
    case 1: with_noise(IntC<1>{}); break;
    case 2: with_noise(IntC<2>{}); break;
    case 3: with_noise(IntC<3>{}); break;
    case 4: with_noise(IntC<4>{}); break;
    default: with_noise(IntC<kMaxRing>{}); break;
  }
}
static_assert(kMaxRing == 5, "dispatch_step covers K = 0 .. kMaxRing");

}  // namespace dc
