// CUDA backend of the Picard window update (csrc/core/picard.h; book §9.8). Two launches on the
// caller's stream, no host synchronization (the stride stays on the device; the sampler's one host
// read per round is its own):
//   1. scan: one block per (sample, tile of positions) over the per-block work of
//      csrc/core/picard_block.h (16-byte vectors where the rows are aligned); for each node j the block
//      sums ‖C_j‖² in float64 with a fixed tree in shared memory and writes the tile's partial sum;
//   2. finish: one block sums the tiles of every (j, b) in tile order (deterministic, no atomics on
//      floats), writes the residuals and the first unconverged node (an integer atomicMin in shared memory).
#include <cuda_runtime.h>

#include <type_traits>

#include "core/picard_block.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

// block_tree_sum() of every thread's value, in shared memory: the same additions in the same order.
__device__ __forceinline__ double block_sum(double v, double* shm) {
  shm[threadIdx.x] = v;
  __syncthreads();
  for (int o = kBlockThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) shm[threadIdx.x] += shm[threadIdx.x + o];
    __syncthreads();
  }
  const double s = shm[0];
  __syncthreads();  // shm is reused by the next node's reduction
  return s;
}

template <class T, int NB>
__global__ void __launch_bounds__(kBlockThreads) picard_scan_kernel(PicardArgs a, PicardTiling g) {
  using C = typename Compute<T>::type;
  __shared__ double shm[kBlockThreads];
  const int64_t block = blockIdx.x;
  const int64_t b = block / g.tiles;
  const int64_t tile = block - b * g.tiles;
  C corr[PicardCorr<T>::size];
  for (int k = 0; k < PicardCorr<T>::size; ++k) corr[k] = C(0);
  for (int64_t j = 0; j < a.J; ++j) {
    const double sq = picard_thread_node<T, NB>(a, g, block, int(threadIdx.x), int(blockDim.x), j, corr);
    if (j == 0) continue;  // C_0 = 0: row 0 is not reduced (uniform across the block)
    const double s = block_sum(sq, shm);
    if (threadIdx.x == 0) a.work[(j * a.B + b) * a.tiles + tile] = s;
  }
}

template <class C>
__global__ void picard_finish_kernel(PicardArgs a) {
  __shared__ unsigned long long first;
  if (threadIdx.x == 0) first = (unsigned long long)a.J;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < a.J * a.B; i += blockDim.x)
    if (picard_finish_entry<C>(a, i)) atomicMin(&first, (unsigned long long)(i / a.B));
  __syncthreads();
  if (threadIdx.x == 0) *a.stride = int64_t(first);
}

}  // namespace

void picard_window_cuda(const PicardArgs& a_in, DType dtype, int device, uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  launch_on(device, dtype, "picard_window", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
      const PicardTiling g = picard_tiling<T>(a_in.B, a_in.P, a_in.nb);
      PicardArgs a = a_in;
      a.tiles = g.tiles;
      if (g.blocks > 0) {
        dispatch_buffers(a.nb, [&](auto nb) {
          picard_scan_kernel<T, decltype(nb)::value><<<block_grid(g.blocks), kBlockThreads, 0, stream>>>(a, g);
        });
      }
      picard_finish_kernel<T><<<1, kThreads, 0, stream>>>(a);
    }
  });
}

}  // namespace dc
