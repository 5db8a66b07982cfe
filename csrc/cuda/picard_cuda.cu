// CUDA backend of the Picard window update (csrc/core/picard.h; book §9.8). Two launches on the
// caller's stream, no host synchronization (the stride stays on the device; the sampler's one host
// read per round is its own):
//   1. scan: one thread per position (all nb buffers), one block per (sample, tile of 256 positions);
//      for each node j the block reduces ‖C_j‖² in float64 and writes the tile's partial sum;
//   2. finish: one block sums the tiles of every (j, b) in tile order (deterministic, no atomics on
//      floats), writes the residuals and the first unconverged node (an integer atomicMin in shared memory).
#include <cuda_runtime.h>

#include <type_traits>

#include "core/picard.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

static_assert(kPicardCudaTile == kThreads, "one thread per position of a tile");

__device__ __forceinline__ double block_sum(double v, double* shm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  double s = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) s += shm[w];
  __syncthreads();  // shm is reused by the next node's reduction
  return s;
}

template <class T, int NB>
__global__ void picard_scan_kernel(PicardArgs a) {
  using C = typename Compute<T>::type;
  __shared__ double shm[kThreads / 32];
  const int64_t b = int64_t(blockIdx.x) / a.tiles;
  const int64_t tile = int64_t(blockIdx.x) - b * a.tiles;
  const int64_t p = tile * kPicardCudaTile + threadIdx.x;
  const bool live = p < a.P;  // idle threads still take part in every reduction
  C corr[NB];
  for (int k = 0; k < NB; ++k) corr[k] = C(0);
  for (int64_t j = 0; j < a.J; ++j) {
    const double sq = live ? picard_node<T, NB>(a, j, b, p, corr) : 0.0;
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
  const C D = C(a.P * a.nb > 0 ? a.P * a.nb : 1);
  const C tau2 = C(a.tau2);
  for (int64_t i = threadIdx.x; i < a.J * a.B; i += blockDim.x) {
    const int64_t j = i / a.B, b = i - j * a.B;
    C e = C(0);
    if (j > 0) {
      double num = 0.0;
      const double* w = a.work + (j * a.B + b) * a.tiles;
      for (int64_t t = 0; t < a.tiles; ++t) num += w[t];
      e = picard_residual(C(num), D, static_cast<const C*>(a.sigma2)[j * a.s_sj + b * a.s_sb]);
      if (e > tau2) atomicMin(&first, (unsigned long long)j);  // NaN compares false, as in the reference
    }
    static_cast<C*>(a.residual)[j * a.r_sj + b * a.r_sb] = e;
  }
  __syncthreads();
  if (threadIdx.x == 0) *a.stride = int64_t(first);
}

template <class T, int NB>
void launch_scan(const PicardArgs& a, cudaStream_t stream) {
  if (a.B > 0 && a.P > 0) picard_scan_kernel<T, NB><<<unsigned(a.B * a.tiles), kThreads, 0, stream>>>(a);
}

}  // namespace

void picard_window_cuda(const PicardArgs& a_in, DType dtype, int device, uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  PicardArgs a = a_in;
  a.tiles = picard_cuda_tiles(a.P);
  launch_on(device, dtype, "picard_window", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
      switch (a.nb) {
        case 1: launch_scan<T, 1>(a, stream); break;
        case 2: launch_scan<T, 2>(a, stream); break;
        case 3: launch_scan<T, 3>(a, stream); break;
        default: launch_scan<T, 4>(a, stream); break;
      }
      picard_finish_kernel<T><<<1, kThreads, 0, stream>>>(a);
    }
  });
}

}  // namespace dc
