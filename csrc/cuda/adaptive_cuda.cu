// CUDA backend of the adaptive solver's per-sample error control (csrc/core/adaptive.h). One launch on
// the caller's stream, no host synchronization, no allocation: one block per sample; each thread sums
// its strided features' squared error terms in float64 (in index order), the block reduces the
// partial sums with a fixed shared-memory tree (deterministic, no float atomics), thread 0 runs the
// per-sample control and publishes `accepted` in shared memory, and the block copies x_high into x
// for an accepted sample.
#include <cuda_runtime.h>

#include <type_traits>

#include "core/adaptive.h"
#include "cuda/launch.cuh"

namespace dc {
namespace {

template <class T>
__global__ void adaptive_control_kernel(AdaptiveArgs a) {
  __shared__ double shm[kThreads];
  __shared__ int acc;
  const int64_t b = blockIdx.x;
  const T* x = static_cast<const T*>(a.x) + b * a.x_sb;
  const T* lo = static_cast<const T*>(a.x_low) + b * a.lo_sb;
  const T* hi = static_cast<const T*>(a.x_high) + b * a.hi_sb;
  double s = 0.0;
  for (int64_t n = threadIdx.x; n < a.N; n += kThreads) s += adaptive_term<T>(a, x + n, lo + n, hi + n);
  shm[threadIdx.x] = s;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) shm[threadIdx.x] += shm[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) acc = adaptive_control_sample(a, b, shm[0]) ? 1 : 0;
  __syncthreads();  // every thread has read its row of x before any is written
  if (acc) {
    T* dst = static_cast<T*>(a.x) + b * a.x_sb;
    if (dst != hi)
      for (int64_t n = threadIdx.x; n < a.N; n += kThreads) dst[n] = hi[n];
  }
}

}  // namespace

void adaptive_control_cuda(const AdaptiveArgs& a, DType dtype, int device, uintptr_t stream_handle) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  launch_on(device, dtype, "adaptive_control", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
      if (a.B > 0) adaptive_control_kernel<T><<<unsigned(a.B), kThreads, 0, stream>>>(a);
    }
  });
}

}  // namespace dc
