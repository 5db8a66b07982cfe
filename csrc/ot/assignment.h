// Batched exact linear assignment (uniform square OT, book Sec. 7.2.1): arguments of the CPU
// solver (cpu/ot_assignment_cpu.cpp over ot/lapjv.h).
#pragma once
#include <cstdint>

namespace dc {

struct AssignmentArgs {
  int64_t B = 0, n = 0;
  const double* cost = nullptr; int64_t c_sb = 0, c_si = 0;  // [B, n, n] float64, rows contiguous
  int64_t* perm = nullptr;                                    // [B, n] out: perm[b, i] = column of row i
  double* total = nullptr;                                    // [B] out: Σ_i cost[b, i, perm[b, i]]
};

// Returns 0, or 1 when a cost entry is NaN or infinite (nothing is written then).
int assignment_cpu(const AssignmentArgs& a, int nthreads);

}  // namespace dc
