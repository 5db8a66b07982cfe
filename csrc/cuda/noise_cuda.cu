// CUDA kernel of the noise fill (csrc/core/noise_fill.h): one thread per element, on the caller's
// stream, no synchronization.
#include <cuda_runtime.h>

#include "core/noise_fill.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

template <class T>
__global__ void noise_fill_kernel(NoiseFillArgs a) {
  const int64_t total = a.B * a.N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / a.N, n = i - b * a.N;
    store_from(static_cast<T*>(a.out) + b * a.out_sb + n, noise_fill_at(a, b, n));
  }
}

}  // namespace

void noise_fill_cuda(const NoiseFillArgs& a, DType dtype, int device, uintptr_t stream_handle) {
  if (a.B == 0 || a.N == 0) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  launch_on(device, dtype, "noise_fill", [&](auto tag) {
    noise_fill_kernel<decltype(tag)><<<grid_for(a.B * a.N), kThreads, 0, stream>>>(a);
  });
}

}  // namespace dc
