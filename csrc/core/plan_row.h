// Building blocks of the coefficient plans (docs/design.md, "Coefficient plans"): grid nodes, linear
// expressions over the step kernel's terms, and the writer that turns one (step, stage) into a row
// of csrc/core/solver_step.h (columns: csrc/core/row_layout.h). Every plan generator (csrc/core/plans/*.h) is written with these, so
// a method reads as its update formula.
#pragma once
#include <cmath>
#include <stdexcept>
#include <string>

#include "core/prediction.h"
#include "core/row_layout.h"
#include "core/solver_step.h"

namespace dc {

// Schedule values at one time (σ = 0 gives λ = +∞ and ρ = 0); da, ds = dα/dt, dσ/dt.
struct Node {
  double t = 0, a = 1, s = 0, lam = 0, rho = 0, da = 0, ds = 0;
};

// A linear expression over the step's inputs: x, y, the K old history slots, the new model
// output m (already converted to the solver's native prediction) and fresh standard normal noise z.
// `noisy` marks an expression that draws noise (even where its weight happens to be 0, so that the
// draw numbering of a plan does not depend on the grid).
struct Lin {
  static constexpr int kX = 0, kY = 1, kR0 = 2, kM = kR0 + kMaxRing, kZ = kM + 1, kTerms = kZ + 1;
  double c[kTerms] = {};
  bool noisy = false;
  static Lin term(int k, double w = 1.0) { Lin l; l.c[k] = w; l.noisy = k == kZ; return l; }
  static Lin X() { return term(kX); }
  static Lin Y() { return term(kY); }
  static Lin M() { return term(kM); }
  static Lin Z() { return term(kZ); }
  static Lin R(int slot) { return term(kR0 + slot); }
  Lin operator+(const Lin& o) const {
    Lin r; for (int k = 0; k < kTerms; ++k) r.c[k] = c[k] + o.c[k];
    r.noisy = noisy || o.noisy; return r;
  }
  Lin operator-(const Lin& o) const { return *this + o * -1.0; }
  Lin operator*(double w) const {
    Lin r; for (int k = 0; k < kTerms; ++k) r.c[k] = c[k] * w;
    r.noisy = noisy; return r;
  }
  Lin operator/(double w) const { return *this * (1.0 / w); }
  friend Lin operator*(double w, const Lin& l) { return l * w; }
};

// One sample's inputs and outputs of a plan generator.
struct PlanIO {
  const double* grid = nullptr;   // [M+1, NodeRecord::kFields] grid nodes (csrc/core/row_layout.h)
  const double* stage = nullptr;  // [M, NS, NodeRecord::kFields] intermediate stage nodes, or null
  int NS = 2;                     // intermediate stage nodes per step
  const double* quad = nullptr;   // [M, Q, 2]: quadrature nodes τ and weights (in ρ), or null
  int Q = 0;
  const double* extra = nullptr;  // [M+1, 2] per-node values of some methods (f and g², step sizes), or null
  const int* orders = nullptr;    // [M] order of each step
  int M = 0, S = 0, K = 0;
  double* coef = nullptr;         // [M, S, RowLayout(K).ncoef()]
  double* mtime = nullptr;        // [M, S]
  int* layout = nullptr;          // [M, S, StageRecord::kFields] or null
  int* nstages = nullptr;         // [M] or null
  // The model-output conversion cu, co of every row: model prediction src -> the method's native dst
  // at the row's model time (-1: rows keep cu = co = 0).
  int src = -1, dst = -1;
  // A row applied once before the first model call (EDM's churn of the start), or null; it draws
  // noise number 0 and the plan's rows count their draws from 1.
  double* prelude = nullptr;      // [RowLayout(K).ncoef()]
  bool* has_prelude = nullptr;

  static Node node(const double* v) {
    using N = NodeRecord;
    Node n; n.t = v[N::kT]; n.a = v[N::kAlpha]; n.s = v[N::kSigma]; n.lam = v[N::kLam];
    n.da = v[N::kDAlpha]; n.ds = v[N::kDSigma];
    n.rho = n.s / n.a;
    return n;
  }
  Node g(int i) const {
    if (i < 0 || i > M) throw std::out_of_range("plan: step order reaches before the first grid point");
    return node(grid + NodeRecord::kFields * i);
  }
  Node st(int i, int j) const {
    if (!stage) throw std::invalid_argument("plan: this method needs intermediate stage times");
    if (j < 0 || j >= NS) throw std::out_of_range("plan: stage node beyond the given intermediate stages");
    return node(stage + (int64_t(NS) * i + j) * NodeRecord::kFields);
  }
  int order(int i) const { return orders[i]; }
  double ex(int i, int k) const {
    if (!extra) throw std::invalid_argument("plan: this method needs per-node values (extra)");
    return extra[2 * i + k];
  }
  // Slot of the history ring holding the model output of step j (multistep methods).
  int slot_of(int j) const { return K > 0 ? ((j % K) + K) % K : -1; }

  // Writes the row of (step i, stage s): the model is evaluated at `at` on buffer `input`
  // (0: x, 1: y), its native output is stored in `slot` (or not, -1), and x / y are replaced by the
  // given expressions (null: left unchanged). A noisy row's Brownian interval is [ta, tb] (the step's
  // start and end times; equal: plain Philox noise).
  void emit(int i, int s, const Node& at, int input, int slot, const Lin* to_x, const Lin* to_y, double ta = 0,
            double tb = 0) const {
    const RowLayout L(K);
    const int nc = L.ncoef();
    double* r = coef + (int64_t(i) * S + s) * nc;
    const bool noisy = write_row(r, i, s, to_x, to_y);
    if (noisy) { r[L.ta()] = ta; r[L.tb()] = tb; }
    for (int k = L.ax(); k < nc; ++k)
      if (!std::isfinite(r[k]))
        throw std::domain_error("plan: non-finite coefficient at step " + std::to_string(i) + ", stage " +
                                std::to_string(s) + " (a step to or from σ = 0 the method cannot take?)");
    if (src >= 0) {
      conversion_coefs(src, dst, at.a, at.s, at.da, at.ds, &r[L.cu()], &r[L.co()]);
      if (!std::isfinite(r[L.cu()]) || !std::isfinite(r[L.co()]))
        throw std::domain_error(std::string("prediction: converting a '") + prediction_name(src) + "' model to '" +
                                prediction_name(dst) +
                                "' is singular on this grid (σ = 0 or α = 0 at a model evaluation)");
    }
    mtime[int64_t(i) * S + s] = at.t;
    if (layout) {
      using R = StageRecord;
      int* l = layout + (int64_t(i) * S + s) * R::kFields;
      l[R::kInput] = input; l[R::kSlot] = slot; l[R::kWriteX] = to_x != nullptr; l[R::kWriteY] = to_y != nullptr;
      l[R::kDraw] = noisy ? 1 : -1;
    }
    if (nstages && nstages[i] < s + 1) nstages[i] = s + 1;
  }

  // Writes the prelude row: x is replaced by `to_x` (no model output: its m weight must be 0).
  void emit_prelude(const Lin& to_x) const {
    if (!prelude) throw std::logic_error("plan: this plan has no prelude row");
    if (to_x.c[Lin::kM] != 0.0) throw std::logic_error("plan: the prelude runs before any model output");
    write_row(prelude, -1, 0, &to_x, nullptr);
    *has_prelude = true;
  }

 private:
  // Zero-fills row r and writes the x' and y' blocks of the given expressions; returns whether the row draws noise.
  bool write_row(double* r, int i, int s, const Lin* to_x, const Lin* to_y) const {
    const RowLayout L(K);
    for (int k = 0; k < L.ncoef(); ++k) r[k] = 0.0;
    auto put = [&](const Lin* e, int j) {  // j: the updated buffer, 0 = x, 1 = y
      if (!e) return;
      for (int k = 0; k < Lin::kTerms; ++k)
        if (!std::isfinite(e->c[k]))
          throw std::domain_error("plan: non-finite coefficient at step " + std::to_string(i) + ", stage " +
                                  std::to_string(s) + " (a step to or from σ = 0 or α = 0 that this method cannot take)");
      for (int k = K; k < kMaxRing; ++k)
        if (e->c[Lin::kR0 + k] != 0.0) throw std::logic_error("plan: expression uses ring slot beyond K");
      r[j ? L.bx() : L.ax()] = e->c[Lin::kX];
      r[j ? L.by() : L.ay()] = e->c[Lin::kY];
      for (int k = 0; k < K; ++k) r[j ? L.br(k) : L.ar(k)] = e->c[Lin::kR0 + k];
      r[j ? L.bm() : L.am()] = e->c[Lin::kM];
      r[j ? L.zy() : L.zx()] = e->c[Lin::kZ];
    };
    put(to_x, 0);
    put(to_y, 1);
    return (to_x && to_x->noisy) || (to_y && to_y->noisy);
  }
};

}  // namespace dc
