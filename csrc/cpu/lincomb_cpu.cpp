// CPU backend of the linear-combination step: chunked, vectorizable loops with OpenMP over
// (sample, chunk) pairs. Arithmetic matches lincomb_element() term by term.
#include <algorithm>
#include <cstring>

#include "core/block_geometry.h"
#include "core/lincomb.h"
#include "cpu/chunked.h"

namespace dc {
namespace {

constexpr int64_t kChunk = 2048;
constexpr int64_t kParallelThreshold = 1 << 18;  // elements (~0.3 ms of one thread): see cpu/chunked.h

// Single pass for the common case (no per-feature factors, K <= 4 known at compile time): each
// element is read once from every term and written once, with the operation order of
// lincomb_element(): acc = w0*x, acc += wk*Dk for k = 1..K, then ring[slot] <- new, then out <- acc
// (per element, so exact aliases of out/ring[slot] with any input are safe).
template <class T, class CT, int KK, bool WRITE>
void lincomb_chunk_fixed(const LincombArgs& a, int64_t b, int64_t n0, int64_t len) {
  using C = typename Compute<T>::type;
  const CT* cf = static_cast<const CT*>(a.coef) + b * a.coef_sb;
  const T* x = static_cast<const T*>(a.x) + b * a.x_sb + n0;
  const T* src[KK > 0 ? KK : 1];
  C w[KK + 1];
  w[0] = C(cf[0]);
  for (int k = 0; k < KK; ++k) {
    src[k] = (k == a.slot) ? static_cast<const T*>(a.nw) + b * a.nw_sb + n0
                           : static_cast<const T*>(a.ring) + k * a.ring_sk + b * a.ring_sb + n0;
    w[k + 1] = C(cf[(k + 1) * a.coef_sk]);
  }
  T* out = static_cast<T*>(a.out) + b * a.out_sb + n0;
  T* dst = WRITE ? static_cast<T*>(a.ring) + a.slot * a.ring_sk + b * a.ring_sb + n0 : nullptr;
  const T* nw = WRITE ? static_cast<const T*>(a.nw) + b * a.nw_sb + n0 : nullptr;
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const C acc = lincomb_value<C, KK>(w, load_as<C>(x + i), [&](int k) { return load_as<C>(src[k] + i); });
    if (WRITE) dst[i] = nw[i];
    store_from(out + i, acc);
  }
}

template <class T, class CT, int KK>
void lincomb_chunk_k(const LincombArgs& a, int64_t b, int64_t n0, int64_t len) {
  if (a.slot >= 0) lincomb_chunk_fixed<T, CT, KK, true>(a, b, n0, len);
  else lincomb_chunk_fixed<T, CT, KK, false>(a, b, n0, len);
}

template <class T, class CT>
void lincomb_chunk(const LincombArgs& a, int64_t b, int64_t n0, int64_t len) {
  using C = typename Compute<T>::type;
  if (!a.feat) {
    switch (a.K) {
      case 0: return lincomb_chunk_k<T, CT, 0>(a, b, n0, len);
      case 1: return lincomb_chunk_k<T, CT, 1>(a, b, n0, len);
      case 2: return lincomb_chunk_k<T, CT, 2>(a, b, n0, len);
      case 3: return lincomb_chunk_k<T, CT, 3>(a, b, n0, len);
      case 4: return lincomb_chunk_k<T, CT, 4>(a, b, n0, len);
      default: break;
    }
  }
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
  for_each_chunk(a.B, a.N, kChunk, nthreads, kParallelThreshold,
                 [&](int64_t b, int64_t n0, int64_t len) { lincomb_chunk<T, CT>(a, b, n0, len); });
}

template <class T>
void lincomb_coef(const LincombArgs& a, bool coef_f64, int nthreads) {
  if (coef_f64) lincomb_typed<T, double>(a, nthreads);
  else lincomb_typed<T, float>(a, nthreads);
}

}  // namespace

void lincomb_cpu(const LincombArgs& a, DType dtype, bool coef_f64, int nthreads) {
  if (a.B == 0 || a.N == 0) return;
  if (cuda_emulation()) return lincomb_emulate(a, dtype, coef_f64);
  dispatch_float(dtype, [&](auto tag) { lincomb_coef<decltype(tag)>(a, coef_f64, nthreads); });
}

}  // namespace dc
