// The per-block work of the CUDA lincomb kernel (csrc/core/lincomb.h; geometry in
// csrc/core/block_geometry.h and docs/design.md, "Launch geometry"). lincomb_block() is what one thread
// of one block does; csrc/cuda/lincomb_cuda.cu calls it with the CUDA indices and
// csrc/cpu/block_emulate.cpp for every (block, thread) on the host.
#pragma once
#include <cstdint>

#include "core/block_geometry.h"
#include "core/lincomb.h"

namespace dc {

constexpr int kLincombMaxK = 5;  // history sizes with a compiled kernel; larger K takes the general path

// A row-mode block with K = KK known at compile time and no per-feature factors: the sample's weights
// are read and converted once, the elements move as 16-byte vectors where every row involved shares
// one alignment, and the scalar head/tail computes the same lincomb_value().
template <class T, class CT, int KK>
DC_HD void lincomb_row_block(const LincombArgs& a, const RowTiling& g, int64_t block, int t, int threads) {
  using C = typename Compute<T>::type;
  constexpr int V = VecWidth<T>::value;
  RowPiece r = row_piece(g, block);
  const int64_t b = r.b, n0 = r.n0;
  const CT* cf = static_cast<const CT*>(a.coef) + b * a.coef_sb;
  C w[KK + 1];
  w[0] = C(cf[0]);
  for (int k = 0; k < KK; ++k) w[k + 1] = C(cf[(k + 1) * a.coef_sk]);
  const T* x = static_cast<const T*>(a.x) + b * a.x_sb + n0;
  T* out = static_cast<T*>(a.out) + b * a.out_sb + n0;
  const bool write = a.slot >= 0;
  const T* nw = write ? static_cast<const T*>(a.nw) + b * a.nw_sb + n0 : nullptr;
  T* dst = write ? static_cast<T*>(a.ring) + a.slot * a.ring_sk + b * a.ring_sb + n0 : nullptr;
  const T* src[KK > 0 ? KK : 1];
  const uint32_t mis = mis16(x);
  bool same = mis16(out) == mis;
  for (int k = 0; k < KK; ++k) {
    src[k] = (k == a.slot) ? nw : static_cast<const T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n0;
    same = same && mis16(src[k]) == mis;
  }
  if (write) same = same && mis16(nw) == mis && mis16(dst) == mis;
  split_piece<T>(r, same, mis);

  for_scalar_part(r, t, threads, [&](int64_t i) {
    C d[KK > 0 ? KK : 1];
    for (int k = 0; k < KK; ++k) d[k] = load_as<C>(src[k] + i);
    const C acc = lincomb_value<C, KK>(w, load_as<C>(x + i), [&](int k) { return d[k]; });
    if (write) dst[i] = nw[i];
    store_from(out + i, acc);
  });
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = t + int64_t(u) * threads;
    if (v >= r.nvec) break;
    const int64_t i = r.head + v * V;
    C xv[V], d[KK > 0 ? KK : 1][V], acc[V];
    vload_as<C>(x + i, xv);
    for (int k = 0; k < KK; ++k) vload_as<C>(src[k] + i, d[k]);
    Vec<T> fresh;
    if (write) fresh = vload(nw + i);
    for (int l = 0; l < V; ++l) acc[l] = lincomb_value<C, KK>(w, xv[l], [&](int k) { return d[k][l]; });
    if (write) vstore(dst + i, fresh);
    vstore_from(out + i, acc);
  }
}

// The general block (per-feature factors, K > kLincombMaxK, or packed mode): element by element
// through lincomb_element().
template <class T, class CT>
DC_HD void lincomb_general_block(const LincombArgs& a, const RowTiling& g, int64_t block, int t, int threads) {
  if (g.packed()) {
    const PackedPiece p = packed_piece(g, block);
    for (int64_t e = t; e < p.len; e += threads) {
      int64_t b, n;
      packed_index(p, g.N, e, &b, &n);
      lincomb_element<T, CT>(a, b, n);
    }
    return;
  }
  const RowPiece r = row_piece(g, block);
  for (int64_t i = t; i < r.len; i += threads) lincomb_element<T, CT>(a, r.b, r.n0 + i);
}

// Which block function a launch uses: KK >= 0 the row-mode vector block with that K, -1 the general one.
inline int lincomb_variant(const LincombArgs& a, const RowTiling& g) {
  return (!a.feat && !g.packed() && a.K <= kLincombMaxK) ? a.K : -1;
}

// Calls fn(std::integral_constant<int, KK>) for the launch's variant (host code: launchers, emulation).
template <class Fn>
inline void dispatch_lincomb(int variant, Fn&& fn) {
  switch (variant) {
    case 0: fn(IntC<0>{}); break;
    case 1: fn(IntC<1>{}); break;
    case 2: fn(IntC<2>{}); break;
    case 3: fn(IntC<3>{}); break;
    case 4: fn(IntC<4>{}); break;
    case 5: fn(IntC<5>{}); break;
    default: fn(IntC<-1>{}); break;
  }
}

template <class T, class CT, int KK>
DC_HD void lincomb_block(const LincombArgs& a, const RowTiling& g, int64_t block, int t, int threads) {
  if constexpr (KK >= 0) lincomb_row_block<T, CT, KK>(a, g, block, t, threads);
  else lincomb_general_block<T, CT>(a, g, block, t, threads);
}

}  // namespace dc
