// The coefficient row and the stage record of a plan, declared once (docs/design.md, "Coefficient plans").
// Kernels (csrc/core/solver_step.h, csrc/cpu, csrc/cuda), plan generators (csrc/core/plan_row.h) and
// bindings index only through these; the binding exports them (csrc/bind/layout_bind.cpp) and Python
// reads and writes rows through diffcore._row, built from the exported offsets.
//
// Coefficient row of one (step, stage), float64, one per sample or broadcast, NC = 12 + 2K columns
// for a history ring of K slots:
//
//   [cu, co | ax, ay, ar_0 .. ar_{K-1}, am | bx, by, br_0 .. br_{K-1}, bm | zx, zy | ta, tb]
//    conversion  x' block (K + 3 weights)     y' block (K + 3 weights)      noise    Brownian interval
//
//   m  = cu*u + co*o                                   native prediction from the model output o at input u
//   x' = ax*x + ay*y + sum_k ar_k*ring_k + am*m + zx*z
//   y' = bx*x + by*y + sum_k br_k*ring_k + bm*m + zy*z
//   z over [ta, tb] when the noise source is the Brownian tree (ta == tb: plain Philox normals)
//
// Stage record of one (step, stage), int32, kFields entries:
//   [model input (0: x, 1: y), ring slot written (-1: none), write x (0/1), write y (0/1),
//    noise draw number (-1: the row draws none)]
//
// Node record, float64, the schedule at one time of a plan (a grid point, an intermediate stage):
//   [t, α, σ, λ, α', σ']   (λ = +∞ where σ = 0; α', σ' = d/dt, for the model-output conversion)
#pragma once

#include "core/numeric.h"

namespace dc {

// Column offsets of a row with K history slots. Both update blocks (x' and y') share one shape,
// [w_x, w_y, w_ring_0 .. w_ring_{K-1}, w_m], starting at block(0) and block(1).
struct RowLayout {
  int K = 0;
  DC_HD constexpr explicit RowLayout(int k) : K(k) {}
  DC_HD constexpr int cu() const { return 0; }
  DC_HD constexpr int co() const { return 1; }
  DC_HD constexpr int block(int j) const { return 2 + j * (K + 3); }
  DC_HD constexpr int ax() const { return block(0); }
  DC_HD constexpr int ay() const { return block(0) + 1; }
  DC_HD constexpr int ar(int k) const { return block(0) + 2 + k; }
  DC_HD constexpr int am() const { return block(0) + 2 + K; }
  DC_HD constexpr int bx() const { return block(1); }
  DC_HD constexpr int by() const { return block(1) + 1; }
  DC_HD constexpr int br(int k) const { return block(1) + 2 + k; }
  DC_HD constexpr int bm() const { return block(1) + 2 + K; }
  DC_HD constexpr int zx() const { return block(2); }
  DC_HD constexpr int zy() const { return block(2) + 1; }
  DC_HD constexpr int ta() const { return block(2) + 2; }
  DC_HD constexpr int tb() const { return block(2) + 3; }
  DC_HD constexpr int ncoef() const { return block(2) + 4; }
};

// Entries of the stage record of one (step, stage).
struct StageRecord {
  static constexpr int kInput = 0, kSlot = 1, kWriteX = 2, kWriteY = 3, kDraw = 4, kFields = 5;
};

// Entries of a node record.
struct NodeRecord {
  static constexpr int kT = 0, kAlpha = 1, kSigma = 2, kLam = 3, kDAlpha = 4, kDSigma = 5, kFields = 6;
};

}  // namespace dc
