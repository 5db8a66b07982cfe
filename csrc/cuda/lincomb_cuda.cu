// CUDA backend of the linear-combination step: one block per (sample, chunk) or per run of whole small
// samples, over the per-block work of csrc/core/lincomb_block.h (geometry: docs/design.md, "Launch
// geometry"); launched on the caller's stream, never synchronizes the host.
#include <cuda_runtime.h>

#include "core/lincomb_block.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

template <class T, class CT, int KK>
__global__ void __launch_bounds__(kBlockThreads) lincomb_kernel(LincombArgs a, RowTiling g) {
  lincomb_block<T, CT, KK>(a, g, int64_t(blockIdx.x), int(threadIdx.x), int(blockDim.x));
}

template <class T, class CT>
void launch(const LincombArgs& a, cudaStream_t stream) {
  const RowTiling g = row_tiling<T>(a.B, a.N);
  dispatch_lincomb(lincomb_variant(a, g), [&](auto kk) {
    lincomb_kernel<T, CT, decltype(kk)::value><<<block_grid(g.blocks), kBlockThreads, 0, stream>>>(a, g);
  });
}

}  // namespace

void lincomb_cuda(const LincombArgs& a, DType dtype, bool coef_f64, int device, uintptr_t stream_handle) {
  if (a.B == 0 || a.N == 0) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  launch_on(device, dtype, "lincomb", [&](auto tag) {
    using T = decltype(tag);
    if (coef_f64) launch<T, double>(a, stream);
    else launch<T, float>(a, stream);
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
