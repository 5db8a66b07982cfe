// CUDA backend of the linear-combination step: one thread per output element over the shared
// lincomb_element() body; launched on the caller's stream, never synchronizes the host.
#include <cuda_runtime.h>

#include "core/lincomb.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

template <class T, class CT>
__global__ void lincomb_kernel(LincombArgs a) {
  const int64_t total = a.B * a.N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / a.N;
    lincomb_element<T, CT>(a, b, i - b * a.N);
  }
}

}  // namespace

void lincomb_cuda(const LincombArgs& a, DType dtype, bool coef_f64, int device, uintptr_t stream_handle) {
  if (a.B == 0 || a.N == 0) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  launch_on(device, dtype, "lincomb", [&](auto tag) {
    using T = decltype(tag);
    if (coef_f64) lincomb_kernel<T, double><<<grid_for(a.B * a.N), kThreads, 0, stream>>>(a);
    else lincomb_kernel<T, float><<<grid_for(a.B * a.N), kThreads, 0, stream>>>(a);
  });
}

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace dc
