// The CUDA launches of the element-wise kernels run on the host: every (block, thread) of the grid the
// CUDA launcher would use, in order, through the same per-block functions (csrc/core/*_block.h). Tests
// switch it on (diffcore._core._emulate_cuda) to check the GPU indexing, the alignment split and the
// vector paths against the CPU loops bit for bit on a machine without a GPU.
#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "core/block_geometry.h"
#include "core/lincomb_block.h"
#include "core/picard_block.h"
#include "core/step_block.h"

namespace dc {
namespace {

std::atomic<bool> g_emulate{false};

template <class T, class CT>
void lincomb_grid(const LincombArgs& a) {
  const RowTiling g = row_tiling<T>(a.B, a.N);
  dispatch_lincomb(lincomb_variant(a, g), [&](auto kk) {
    for (int64_t blk = 0; blk < g.blocks; ++blk)
      for (int t = 0; t < kBlockThreads; ++t) lincomb_block<T, CT, decltype(kk)::value>(a, g, blk, t, kBlockThreads);
  });
}

template <class T>
void step_grid(const StepArgs& a) {
  const RowTiling g = row_tiling<T>(a.B, a.N);
  dispatch_step(a.K, step_writes(a).noise, [&](auto kk, auto noise) {
    for (int64_t blk = 0; blk < g.blocks; ++blk)
      for (int t = 0; t < kBlockThreads; ++t)
        step_block<T, decltype(kk)::value, decltype(noise)::value != 0>(a, g, blk, t, kBlockThreads);
  });
}

// The scan launch then the finish launch, with the scratch the binding would pass on CUDA.
template <class T, int NB>
void picard_grid(const PicardArgs& a_in) {
  using C = typename Compute<T>::type;
  const PicardTiling g = picard_tiling<T>(a_in.B, a_in.P, a_in.nb);
  PicardArgs a = a_in;
  a.tiles = g.tiles;
  std::vector<double> work(size_t(std::max<int64_t>(1, a.J * a.B * g.tiles)), 0.0);
  a.work = work.data();
  std::vector<C> corr(size_t(kBlockThreads) * PicardCorr<T>::size);
  double sq[kBlockThreads];
  for (int64_t blk = 0; blk < g.blocks; ++blk) {
    const int64_t b = blk / g.tiles, tile = blk - b * g.tiles;
    std::fill(corr.begin(), corr.end(), C(0));
    for (int64_t j = 0; j < a.J; ++j) {
      for (int t = 0; t < kBlockThreads; ++t)
        sq[t] = picard_thread_node<T, NB>(a, g, blk, t, kBlockThreads, j, &corr[size_t(t) * PicardCorr<T>::size]);
      if (j > 0) a.work[(j * a.B + b) * a.tiles + tile] = block_tree_sum(sq, kBlockThreads);
    }
  }
  int64_t first = a.J;
  for (int64_t i = 0; i < a.J * a.B; ++i)
    if (picard_finish_entry<C>(a, i)) first = std::min(first, i / a.B);
  *a.stride = first;
}

}  // namespace

bool cuda_emulation() { return g_emulate.load(std::memory_order_relaxed); }
bool set_cuda_emulation(bool on) { return g_emulate.exchange(on); }

void lincomb_emulate(const LincombArgs& a, DType dtype, bool coef_f64) {
  if (a.B == 0 || a.N == 0) return;
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (coef_f64) lincomb_grid<T, double>(a);
    else lincomb_grid<T, float>(a);
  });
}

}  // namespace dc

namespace dc {

void solver_step_emulate(const StepArgs& a, DType dtype) {
  if (a.B == 0 || a.N == 0) return;
  dispatch_float(dtype, [&](auto tag) { step_grid<decltype(tag)>(a); });
}

}  // namespace dc

namespace dc {

void picard_window_emulate(const PicardArgs& a, DType dtype) {
  dispatch_float(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value)
      dispatch_buffers(a.nb, [&](auto nb) { picard_grid<T, decltype(nb)::value>(a); });
  });
}

}  // namespace dc
