// Filling a tensor with the library's noise (the reference paths, prior draws, the Langevin
// corrector and tests): out[b, n] = the Philox normal of (seed, id_b, draw, n) in `domain`, or the
// Brownian tree's normalized increment over the sample's interval [ta, tb]. The fused step computes
// exactly the same numbers inside its kernel (csrc/core/solver_step.h).
#pragma once
#include <cstdint>

#include "core/brownian.h"
#include "core/numeric.h"
#include "core/philox.h"

namespace dc {

struct NoiseFillArgs {
  void* out = nullptr;        int64_t out_sb = 0;
  int64_t B = 0, N = 0;
  uint64_t seed = 0;
  const int64_t* ids = nullptr;   // [B] or null: id = b
  uint32_t draw = 0, domain = kDomainStep;
  bool brownian = false;
  const double* iv = nullptr;     int64_t iv_sb = 0;   // [B|1, 2] intervals (ta, tb) when brownian
  double T0 = 0, T1 = 1;          int depth = 20;

  DC_HD NoiseKey key(int64_t b) const {
    return NoiseKey::make(seed, ids ? uint64_t(ids[b]) : uint64_t(b), draw, domain);
  }
};

// Element n of sample b (one element per CUDA thread; the CPU loop fills whole chunks with normal_blocks
// and brownian_blocks, which give the same bits).
DC_HD double noise_fill_at(const NoiseFillArgs& a, int64_t b, int64_t n) {
  const NoiseKey k = a.key(b);
  if (a.brownian) {
    const double* iv = a.iv + b * a.iv_sb;
    double z;
    brownian_increment<1>(k, uint64_t(n), iv[0], iv[1], a.T0, a.T1, a.depth, &z);
    return z;
  }
  return normal_at(k, uint64_t(n));
}

void noise_fill_cpu(const NoiseFillArgs& a, DType dtype, int nthreads);

// Instruction-set variants of the CPU generator (normal_blocks): 0 baseline x86-64 / portable, 1 AVX2,
// 2 AVX-512. normal_blocks uses the widest the running CPU supports; every variant draws the same bits.
constexpr int kNoiseIsaCount = 3;
const char* noise_isa_name(int isa);
bool noise_isa_supported(int isa);
int noise_isa_active();
void normal_blocks_isa(int isa, const NoiseKey& k, uint64_t q0, int nb, double* out);
void noise_fill_cuda(const NoiseFillArgs& a, DType dtype, int device, uintptr_t stream);

}  // namespace dc
