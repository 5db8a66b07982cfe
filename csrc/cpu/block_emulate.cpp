// The CUDA launches of the element-wise kernels run on the host: every (block, thread) of the grid the
// CUDA launcher would use, in order, through the same per-block functions (csrc/core/*_block.h). Tests
// switch it on (diffcore._core._emulate_cuda) to check the GPU indexing, the alignment split and the
// vector paths against the CPU loops bit for bit on a machine without a GPU.
#include <atomic>

#include "core/block_geometry.h"
#include "core/lincomb_block.h"
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
  dispatch_ring(a.K, [&](auto kk) {
    for (int64_t blk = 0; blk < g.blocks; ++blk)
      for (int t = 0; t < kBlockThreads; ++t) step_block<T, decltype(kk)::value>(a, g, blk, t, kBlockThreads);
  });
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
