// What every CUDA launcher shares: the grid for one thread per element or one block per piece, and running the launch on
// the tensor's device (restoring the caller's) with a clear error. Kernels go on the caller's stream
// and nothing synchronizes.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/numeric.h"

namespace dc {

constexpr int kThreads = 256;

inline unsigned grid_for(int64_t total) {
  return unsigned(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20));
}

// The grid of a block-geometry launch (csrc/core/block_geometry.h): one block per piece. blockIdx.x
// reaches 2^31 - 1 blocks, more than any array of 2^40 elements needs.
inline unsigned block_grid(int64_t blocks) {
  if (blocks > int64_t(0x7fffffff))
    throw std::runtime_error("diffcore: an array this large needs more than 2^31 - 1 blocks");
  return unsigned(blocks);
}

// Calls launch(T{}) for the dtype's element type with `device` current; throws on a launch error.
template <class Launch>
void launch_on(int device, DType dtype, const char* what, Launch&& launch) {
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
  if (prev != device) cudaSetDevice(device);
  dispatch_float(dtype, launch);
  const cudaError_t err = cudaGetLastError();
  if (prev >= 0 && prev != device) cudaSetDevice(prev);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("diffcore ") + what + " CUDA launch failed: " + cudaGetErrorString(err));
}

}  // namespace dc
