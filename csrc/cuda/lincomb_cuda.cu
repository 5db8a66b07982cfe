// CUDA backend of the linear-combination step: one thread per output element over the shared
// lincomb_element() body; launched on the caller's stream, never synchronizes the host.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "core/lincomb.h"

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

template <class T>
void launch(const LincombArgs& a, bool coef_f64, cudaStream_t stream) {
  const int threads = 256;
  const int64_t total = a.B * a.N;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t(1) << 20);
  if (coef_f64) lincomb_kernel<T, double><<<unsigned(blocks), threads, 0, stream>>>(a);
  else lincomb_kernel<T, float><<<unsigned(blocks), threads, 0, stream>>>(a);
}

struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int dev) {
    if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
    if (prev != dev) cudaSetDevice(dev);
  }
  ~DeviceGuard() { if (prev >= 0) cudaSetDevice(prev); }
};

}  // namespace

void lincomb_cuda(const LincombArgs& a, DType dtype, bool coef_f64, int device, uintptr_t stream_handle) {
  if (a.B == 0 || a.N == 0) return;
  DeviceGuard guard(device);
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  switch (dtype) {
    case DType::F16: launch<half_t>(a, coef_f64, stream); break;
    case DType::BF16: launch<bf16_t>(a, coef_f64, stream); break;
    case DType::F32: launch<float>(a, coef_f64, stream); break;
    case DType::F64: launch<double>(a, coef_f64, stream); break;
    default: return;
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("diffcore lincomb CUDA launch failed: ") + cudaGetErrorString(err));
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
