// Exact linear assignment (book Sec. 7.2.1: the uniform-square OT problem) by the
// Jonker–Volgenant shortest-augmenting-path method (Computing 38, 1987): column reduction, reduction
// transfer, one round of augmenting row reduction (capped at 2n steps: measured faster than JV's two
// uncapped rounds on uniform, Gaussian-cloud and integer costs, n = 64…1024), then one Dijkstra
// search on reduced costs per row still free. Float64, dense, CPU.
//
// Invariant (LP duality): potentials u (rows, implicit) and v (columns) with c_ij − u_i − v_j ≥ 0
// everywhere and = 0 on assigned pairs; a complete assignment with this property is optimal. Each
// phase keeps it; ties and rounding only change which optimal assignment is returned.
//
// The Dijkstra search runs over dense per-column arrays (distance, predecessor row and an unscanned
// flag, all double) instead of JV's permuted column list, so its O(n) scans are mask-and-blend loops:
// lapjv_body<Ops>() takes them from lap::ScalarOps or from the AVX2 twin in cpu/ot_assignment_cpu.cpp.
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

#include "ot/ot_math.h"  // DC_OT_INLINE

namespace dc {

struct LapWork {
  std::vector<double> v, d, pred, todo, isfree;
  std::vector<int64_t> x, y, free_rows, matches, imin;
  void resize(int64_t n) {
    v.assign(size_t(n), 0.0);
    d.assign(size_t(n), 0.0);
    pred.assign(size_t(n), 0.0);
    todo.assign(size_t(n), 0.0);
    isfree.assign(size_t(n), 0.0);
    x.assign(size_t(n), -1);
    y.assign(size_t(n), -1);
    free_rows.assign(size_t(n), 0);
    matches.assign(size_t(n), 0);
    imin.assign(size_t(n), 0);
  }
};

namespace lap {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The O(n) scans of the solver, portable scalar loops; cpu/ot_assignment_cpu.cpp has an AVX2 twin.
struct ScalarOps {
  // Smallest reduced cost u1 = min_j (c_j − v_j) with its first column j1, and the second smallest u2
  // (counted with multiplicity: u2 = u1 on a tie).
  static double min2(const double* c, const double* v, int64_t n, int64_t* j1, double* u2) {
    double m1 = kInf, m2 = kInf;
    int64_t i1 = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double h = c[j] - v[j];
      if (h < m1) {
        m2 = m1;
        m1 = h;
        i1 = j;
      } else if (h < m2) {
        m2 = h;
      }
    }
    *j1 = i1;
    *u2 = m2;
    return m1;
  }
  // Dijkstra start from row c: d_j = c_j − v_j, pred_j = df, every column unscanned. Returns min d with
  // its first column, and in *fmin/*jfree the same over free columns (isfree_j = 1), which end the
  // search when they tie with the minimum (many ties: integer costs).
  static double init(const double* c, const double* v, double* d, double* pred, double* todo, const double* isfree,
                     int64_t n, double df, int64_t* jmin, double* fmin, int64_t* jfree) {
    double mn = kInf, mf = kInf;
    int64_t jm = 0, jf = -1;
    for (int64_t j = 0; j < n; ++j) {
      const double h = c[j] - v[j];
      d[j] = h;
      pred[j] = df;
      todo[j] = 1.0;
      if (h < mn) { mn = h; jm = j; }
      if (isfree[j] != 0.0 && h < mf) { mf = h; jf = j; }
    }
    *jmin = jm;
    *fmin = mf;
    *jfree = jf;
    return mn;
  }
  // Relaxation through row c (reduced-cost offset u1): on unscanned columns d_j ← min(d_j, c_j − v_j −
  // u1), pred_j ← di where it improves. Returns the new minimum of d over unscanned columns with its
  // first column, and the same over free unscanned columns as init().
  static double relax(const double* c, const double* v, double* d, double* pred, const double* todo,
                      const double* isfree, int64_t n, double u1, double di, int64_t* jmin, double* fmin,
                      int64_t* jfree) {
    double mn = kInf, mf = kInf;
    int64_t jm = -1, jf = -1;
    for (int64_t j = 0; j < n; ++j) {
      if (todo[j] == 0.0) continue;
      const double h = c[j] - v[j] - u1;
      if (h < d[j]) {
        d[j] = h;
        pred[j] = di;
      }
      if (d[j] < mn) { mn = d[j]; jm = j; }
      if (isfree[j] != 0.0 && d[j] < mf) { mf = d[j]; jf = j; }
    }
    *jmin = jm;
    *fmin = mf;
    *jfree = jf;
    return mn;
  }
};

// First column j ≠ skip with c_j − v_j == val (the tie case of the row reduction; rare).
inline int64_t first_reduced_eq(const double* c, const double* v, int64_t n, double val, int64_t skip) {
  for (int64_t j = 0; j < n; ++j)
    if (j != skip && c[j] - v[j] == val) return j;
  return skip;
}

}  // namespace lap

// Solves min Σ_i C[i, x_i] over permutations x; C is n×n with row stride ldc. Writes perm[i] = x_i and
// returns the total cost (summed in the order of rows).
template <class Ops>
DC_OT_INLINE double lapjv_body(const double* C, int64_t ldc, int64_t n, int64_t* perm, LapWork& w) {
  if (n == 0) return 0.0;
  if (n == 1) {
    perm[0] = 0;
    return C[0];
  }
  w.resize(n);
  double* v = w.v.data();
  double* d = w.d.data();
  double* pred = w.pred.data();
  double* todo = w.todo.data();
  double* isfree = w.isfree.data();
  int64_t* x = w.x.data();
  int64_t* y = w.y.data();
  int64_t* fr = w.free_rows.data();
  int64_t* matches = w.matches.data();
  int64_t* imin = w.imin.data();

  // 1. Column reduction: v_j = min_i c_ij (a row sweep, so the matrix is read in memory order), then
  //    each column offers itself to its minimizing row; a row keeps the column with the smaller v.
  for (int64_t j = 0; j < n; ++j) {
    v[j] = C[j];
    imin[j] = 0;
  }
  for (int64_t i = 1; i < n; ++i) {
    const double* c = C + i * ldc;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const bool lt = c[j] < v[j];
      v[j] = lt ? c[j] : v[j];
      imin[j] = lt ? i : imin[j];
    }
  }
  for (int64_t j = n - 1; j >= 0; --j) {
    const int64_t i = imin[j];
    if (++matches[i] == 1) {
      x[i] = j;
      y[j] = i;
    } else if (v[j] < v[x[i]]) {
      y[x[i]] = -1;
      x[i] = j;
      y[j] = i;
    } else {
      y[j] = -1;
    }
  }

  // 2. Reduction transfer: a row assigned once lowers its column's v by its slack to the next best
  //    column (u_i rises to that slack), which can only shorten later searches.
  int64_t nfree = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (matches[i] == 0) {
      fr[nfree++] = i;
    } else if (matches[i] == 1) {
      // c_i,x_i − v_x_i = 0 is a smallest reduced cost of the row, so the slack is the second smallest
      int64_t j1;
      double u2;
      Ops::min2(C + i * ldc, v, n, &j1, &u2);
      v[x[i]] -= u2;
    }
  }

  // 3. Augmenting row reduction: a free row takes its best column j1, lowering v_j1 so that its
  //    slack to the second best is used up; the evicted row (if any) is processed next when v moved,
  //    queued otherwise. Capped (long eviction chains cost more than the searches they save, and with
  //    ties and rounding the chain may cycle); what is left goes to the exact augmentation below.
  for (int pass = 0; pass < 1 && nfree > 0; ++pass) {
    const int64_t prev = nfree;
    int64_t k = 0;
    nfree = 0;
    int64_t steps = 0;
    const int64_t cap = 2 * n;
    while (k < prev) {
      const int64_t i = fr[k++];
      if (++steps > cap) {
        fr[nfree++] = i;
        continue;
      }
      const double* c = C + i * ldc;
      int64_t j1;
      double u2;
      const double u1 = Ops::min2(c, v, n, &j1, &u2);
      int64_t i0 = y[j1];
      if (u1 < u2) {
        v[j1] -= u2 - u1;
      } else if (i0 >= 0) {  // a tie: take the second best column instead, v unchanged
        j1 = lap::first_reduced_eq(c, v, n, u2, j1);
        i0 = y[j1];
      }
      if (i0 >= 0) x[i0] = -1;
      x[i] = j1;
      y[j1] = i;
      if (i0 >= 0) {
        if (u1 < u2) fr[--k] = i0;  // slot k-1 was consumed: process the evicted row right away
        else fr[nfree++] = i0;
      }
    }
  }

  // 4. Augmentation: Dijkstra on reduced costs from each free row to the nearest unassigned column,
  //    then shift v on the scanned columns and flip the path.
  for (int64_t j = 0; j < n; ++j) isfree[j] = y[j] < 0 ? 1.0 : 0.0;
  for (int64_t q = 0; q < nfree; ++q) {
    const int64_t f = fr[q];
    int64_t j1, jf;
    double mf;
    double mn = Ops::init(C + f * ldc, v, d, pred, todo, isfree, n, double(f), &j1, &mf, &jf);
    if (mf == mn) j1 = jf;  // a free column at the minimum distance ends the search at once
    while (y[j1] >= 0) {    // j1: an unscanned column at the minimum distance mn
      todo[j1] = 0.0;       // scanned: its distance is final
      const int64_t i = y[j1];
      const double* ci = C + i * ldc;
      mn = Ops::relax(ci, v, d, pred, todo, isfree, n, ci[j1] - v[j1] - mn, double(i), &j1, &mf, &jf);
      if (mf == mn) j1 = jf;
    }
    for (int64_t j = 0; j < n; ++j) v[j] += todo[j] == 0.0 ? d[j] - mn : 0.0;
    isfree[j1] = 0.0;
    for (int64_t j = j1;;) {  // flip the path back to f
      const int64_t i = int64_t(pred[j]);
      y[j] = i;
      const int64_t nxt = x[i];
      x[i] = j;
      j = nxt;
      if (i == f) break;
    }
  }

  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    perm[i] = x[i];
    total += C[i * ldc + x[i]];
  }
  return total;
}

}  // namespace dc
