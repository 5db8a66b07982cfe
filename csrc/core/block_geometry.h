// Launch geometry of the element-wise CUDA kernels (lincomb, the fused step, the Picard window) and the
// 16-byte vector access they share (docs/design.md, "Launch geometry").
//
// The per-block work of each kernel is a DC_HD function of (block, thread, threads) over plain pointers:
// the CUDA kernel calls it with blockIdx.x / threadIdx.x / blockDim.x, and the CPU emulation
// (csrc/cpu/block_emulate.cpp) calls it for every (block, thread) in turn, so the GPU indexing, the
// alignment decisions and the vector/scalar split are exercised on a machine without a GPU. The work
// of one thread never depends on another thread's writes (no shared memory between the phases of a
// block), so the serial emulation computes exactly what the parallel launch computes.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/numeric.h"

namespace dc {

constexpr int kBlockThreads = 256;  // threads of every block of these kernels
constexpr int kVecBytes = 16;       // one 128-bit load or store
constexpr int kUnroll = 4;          // vectors per thread and array in one block: loads in flight

// A compile-time int as a value, to dispatch a run-time size onto template instances.
template <int I>
struct IntC {
  static constexpr int value = I;
};

// Elements of T in one 16-byte vector: 4 float, 8 float16 / bfloat16, 2 double.
template <class T>
struct VecWidth {
  static constexpr int value = kVecBytes / int(sizeof(T));
};

// A portable 16-byte vector of T. On CUDA it moves as one 128-bit access (uint4); on the host through
// memcpy (no aliasing assumptions), which the emulation uses to check the same address arithmetic.
template <class T>
struct alignas(kVecBytes) Vec {
  T v[VecWidth<T>::value];
};

template <class T>
DC_HD Vec<T> vload(const T* p) {
  Vec<T> r;
#if defined(__CUDA_ARCH__)
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  memcpy(&r, &u, sizeof(r));
#else
  std::memcpy(&r, p, sizeof(r));
#endif
  return r;
}

template <class T>
DC_HD void vstore(T* p, const Vec<T>& r) {
#if defined(__CUDA_ARCH__)
  uint4 u;
  memcpy(&u, &r, sizeof(u));
  *reinterpret_cast<uint4*>(p) = u;
#else
  std::memcpy(p, &r, sizeof(r));
#endif
}

// One vector of T converted to the compute type C, and back (the per-lane conversions of numeric.h).
template <class C, class T>
DC_HD void vload_as(const T* p, C* out) {
  const Vec<T> r = vload(p);
  for (int i = 0; i < VecWidth<T>::value; ++i) out[i] = load_as<C>(&r.v[i]);
}

template <class T, class C>
DC_HD void vstore_from(T* p, const C* in) {
  Vec<T> r;
  for (int i = 0; i < VecWidth<T>::value; ++i) store_from(&r.v[i], in[i]);
  vstore(p, r);
}

// Host switch of the emulation (csrc/cpu/block_emulate.cpp): while on, the CPU entry points of these
// kernels run the CUDA grid on the host instead of their own loops. Test-only.
bool cuda_emulation();
bool set_cuda_emulation(bool on);  // returns the previous setting

DC_HD uint32_t mis16(const void* p) { return uint32_t(reinterpret_cast<uintptr_t>(p) & uintptr_t(kVecBytes - 1)); }

// How a [B, N] launch is cut into blocks.
//   Row mode (N at least half a block's chunk): block = (sample b, chunk c of `chunk` elements), one
//   64-bit division per block; the block loads the sample's coefficients once.
//   Packed mode (small N: 1-D and 2-D data, tiny images): block = `chunk` consecutive elements of the
//   flattened [B, N] index space, covering whole samples; each element finds its sample with one
//   32-bit division relative to the block's first sample.
struct RowTiling {
  int64_t B = 0, N = 0;
  int64_t chunk = 0;    // elements per block
  int64_t per_row = 0;  // blocks per sample (row mode); 0 in packed mode
  int64_t blocks = 0;
  DC_HD bool packed() const { return per_row == 0; }
};

template <class T>
inline RowTiling row_tiling(int64_t B, int64_t N) {
  RowTiling g;
  g.B = B;
  g.N = N;
  const int64_t row_chunk = int64_t(kBlockThreads) * kUnroll * VecWidth<T>::value;
  if (2 * N >= row_chunk) {
    g.chunk = row_chunk;
    g.per_row = (N + row_chunk - 1) / row_chunk;
    g.blocks = B * g.per_row;
  } else {
    g.chunk = int64_t(kBlockThreads) * kUnroll;  // scalar: one element per thread and unroll step
    g.per_row = 0;
    g.blocks = (B * N + g.chunk - 1) / g.chunk;
  }
  return g;
}

// The piece of one sample a row-mode block covers, and its split into a scalar head (up to the first
// 16-byte boundary), whole vectors and a scalar tail. `vec` is false when the rows of the arrays the
// block touches do not share one alignment, and then every element goes the scalar way.
struct RowPiece {
  int64_t b = 0, n0 = 0, len = 0;
  int head = 0;       // scalar elements before the first vector
  int64_t nvec = 0;   // whole vectors after the head
  int64_t tail0 = 0;  // first element of the scalar tail (relative to n0)
};

DC_HD RowPiece row_piece(const RowTiling& g, int64_t block) {
  RowPiece r;
  r.b = block / g.per_row;
  r.n0 = (block - r.b * g.per_row) * g.chunk;
  r.len = g.N - r.n0 < g.chunk ? g.N - r.n0 : g.chunk;
  return r;
}

// Splits the piece for arrays whose rows start at addresses with misalignment `mis` (all equal) or
// not (`same` false).
template <class T>
DC_HD void split_piece(RowPiece& r, bool same, uint32_t mis) {
  constexpr int V = VecWidth<T>::value;
  if (!same || mis % sizeof(T) != 0) {
    r.head = 0; r.nvec = 0; r.tail0 = 0;
    return;
  }
  int64_t h = mis == 0 ? 0 : int64_t((kVecBytes - mis) / sizeof(T));
  if (h > r.len) h = r.len;
  r.head = int(h);
  r.nvec = (r.len - h) / V;
  r.tail0 = h + r.nvec * V;
}

// The scalar elements of a piece that thread t handles: the head and the tail (or all of it when the
// piece is not vectorized), as relative indices i = first + t, first + t + threads, ...
template <class Fn>
DC_HD void for_scalar_part(const RowPiece& r, int t, int threads, Fn&& fn) {
  for (int64_t i = t; i < r.head; i += threads) fn(i);
  for (int64_t i = r.tail0 + t; i < r.len; i += threads) fn(i);
}

// A packed-mode block: the flattened elements [f0, f0 + len) starting in sample b0 at element r0.
struct PackedPiece {
  int64_t b0 = 0, r0 = 0, len = 0;
};

DC_HD PackedPiece packed_piece(const RowTiling& g, int64_t block) {
  PackedPiece p;
  const int64_t f0 = block * g.chunk;
  p.b0 = f0 / g.N;
  p.r0 = f0 - p.b0 * g.N;
  const int64_t total = g.B * g.N;
  p.len = total - f0 < g.chunk ? total - f0 : g.chunk;
  return p;
}

// Element e (< len) of a packed piece as (sample, element): 32-bit arithmetic, since r0 < N and
// e < chunk, both far below 2^31.
DC_HD void packed_index(const PackedPiece& p, int64_t N, int64_t e, int64_t* b, int64_t* n) {
  const uint32_t local = uint32_t(p.r0 + e);
  const uint32_t q = local / uint32_t(N);
  *b = p.b0 + q;
  *n = int64_t(local - q * uint32_t(N));
}

}  // namespace dc
