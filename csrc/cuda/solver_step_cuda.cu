// CUDA backend of the fused sampler step: one block per (sample, chunk), or per run of whole small
// samples, over the per-block work of csrc/core/step_block.h (geometry: docs/design.md, "Launch
// geometry"), with the history size K and the presence of noise template parameters. Launched on the caller's stream; it never
// synchronizes, so a sampling loop can be captured as a CUDA graph.
#include <cuda_runtime.h>

#include "core/step_block.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

template <class T, int KK, bool NOISE>
__global__ void __launch_bounds__(kBlockThreads) solver_step_kernel(StepArgs a, RowTiling g) {
  step_block<T, KK, NOISE>(a, g, int64_t(blockIdx.x), int(threadIdx.x), int(blockDim.x));
}

}  // namespace

void solver_step_cuda(const StepArgs& a, DType dtype, int device, uintptr_t stream_handle) {
  if (a.B == 0 || a.N == 0 || !step_writes(a).any()) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  launch_on(device, dtype, "solver_step", [&](auto tag) {
    using T = decltype(tag);
    const RowTiling g = row_tiling<T>(a.B, a.N);
    dispatch_step(a.K, step_writes(a).noise, [&](auto kk, auto noise) {
      solver_step_kernel<T, decltype(kk)::value, decltype(noise)::value != 0>
          <<<block_grid(g.blocks), kBlockThreads, 0, stream>>>(a, g);
    });
  });
}

}  // namespace dc
