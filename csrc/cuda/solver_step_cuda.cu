// CUDA backend of the fused sampler step: one thread per element over step_element(), launched on
// the caller's stream; it never synchronizes, so a sampling loop can be captured as a CUDA graph.
#include <cuda_runtime.h>

#include "core/solver_step.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

template <class T>
__global__ void solver_step_kernel(StepArgs a) {
  const int64_t total = a.B * a.N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / a.N;
    step_element<T>(a, b, i - b * a.N);
  }
}

}  // namespace

void solver_step_cuda(const StepArgs& a, DType dtype, int device, uintptr_t stream_handle) {
  if (a.B == 0 || a.N == 0) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  launch_on(device, dtype, "solver_step", [&](auto tag) {
    solver_step_kernel<decltype(tag)><<<grid_for(a.B * a.N), kThreads, 0, stream>>>(a);
  });
}

}  // namespace dc
