// CUDA kernel of the noise fill (csrc/core/noise_fill.h): one thread per element, on the caller's
// stream, no synchronization.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/noise_fill.h"

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

template <class T>
void launch(const NoiseFillArgs& a, cudaStream_t stream) {
  const int threads = 256;
  const int64_t total = a.B * a.N;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t(1) << 20);
  noise_fill_kernel<T><<<unsigned(blocks), threads, 0, stream>>>(a);
}

}  // namespace

void noise_fill_cuda(const NoiseFillArgs& a, DType dtype, int device, uintptr_t stream_handle) {
  if (a.B == 0 || a.N == 0) return;
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  if (prev != device) cudaSetDevice(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (dtype) {
    case DType::F16: launch<half_t>(a, stream); break;
    case DType::BF16: launch<bf16_t>(a, stream); break;
    case DType::F32: launch<float>(a, stream); break;
    case DType::F64: launch<double>(a, stream); break;
    default: break;
  }
  cudaError_t err = cudaGetLastError();
  if (prev >= 0 && prev != device) cudaSetDevice(prev);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("diffcore noise_fill CUDA launch failed: ") + cudaGetErrorString(err));
}

}  // namespace dc
