// Batched entropic OT by Sinkhorn iterations (book Sec. 7.2.2; Cuturi 2013): arguments shared by
// the CPU solver (cpu/ot_cpu.cpp) and the CUDA solver (cuda/ot_cuda.cu). The math both use, and the
// conventions for potentials and scalings, are in ot/ot_math.h.
//
//   minimize ⟨P, C⟩ + ε Σ_ij P_ij log(P_ij / (a_i b_j))  over P ≥ 0, P1 = a, Pᵀ1 = b,
//   P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε) at the optimum.
#pragma once
#include <cstdint>

#include "core/numeric.h"

namespace dc {

struct SinkhornArgs {
  int64_t B = 0, n = 0, m = 0;
  const void* cost = nullptr; int64_t c_sb = 0, c_si = 0;  // [B, n, m], rows contiguous (column stride 1)
  const void* a = nullptr; int64_t a_sb = 0;   // [B, n] (stride 1 along n) or null = uniform
  const void* b = nullptr; int64_t b_sb = 0;   // [B, m] or null
  void* plan = nullptr;                         // [B, n, m] contiguous; also holds the kernel K̃ while iterating
  void* f = nullptr;                            // [B, n] contiguous
  void* g = nullptr;                            // [B, m] contiguous
  double* stats = nullptr;                      // [B, 4] float64: value, transport cost, marginal error, status
  int64_t* iters = nullptr;                     // [B] iterations (over all ε stages)
  double* work = nullptr;                       // [B, work_sb] float64 scratch (CUDA only; sinkhorn_blocks.h, split_work)
  int64_t work_sb = 0;
  double eps = 1.0;                             // target ε > 0
  double tol = 1e-9;                            // stop when ‖P1 − a‖₁ ≤ tol (after a g-update)
  int64_t max_iters = 1000;
  int64_t check_every = 10;
  int eps_scaling = 0;                          // 0 off, 1 on: ε_k = max(ε, ε0 qᵏ), warm-started; 2 auto
                                                // (on when ε < kAutoScaling × the problem's cost range)
  double eps0 = 0.0, eps_q = 0.5;               // ε-scaling start (absolute; 0: the cost range) and factor
  double stage_tol = 1e-3;                      // marginal error that ends an intermediate ε stage
  int relax = 1;                                // 1: safeguarded adaptive over-relaxation; 0: plain Sinkhorn
  double weight_tol = 1e-8;                     // |Σa − 1| and |Σb − 1| allowed (weights are then renormalized)
  int64_t blocks = 0;                           // blocks per problem: 0 automatic; > 0 forces the split
                                                // formulation of ot/sinkhorn_blocks.h (on the CPU run serially)
};

void sinkhorn_cpu(const SinkhornArgs& a, DType dtype, int nthreads);
// The split formulation (ot/sinkhorn_blocks.h) with a.blocks blocks per problem, run block by block.
void sinkhorn_split_cpu(const SinkhornArgs& a, DType dtype);
void sinkhorn_cuda(const SinkhornArgs& a, DType dtype, int device, uintptr_t stream);

}  // namespace dc
