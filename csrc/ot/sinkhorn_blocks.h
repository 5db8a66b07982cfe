// Sinkhorn for one problem split over several blocks (book Sec. 7.2.2; the algorithm and its
// decisions are those of cpu/ot_cpu.cpp, with the element math of ot/ot_math.h).
//
// A problem too large for one thread block is split into P blocks: block k owns the rows
// [n k/P, n (k+1)/P) and the columns [m k/P, m (k+1)/P). One iteration is three phases separated by a
// barrier over the problem's blocks:
//   1. rows: s_i = K̃_i·β for the owned rows, residual and (tentative) f-update of α_i;
//   2. column partial sums over the owned rows, Σ_{i owned} α_i K̃_ij → tpart[k, j] for every j;
//   3. columns: t_j = Σ_k tpart[k, j] (fixed order) and the g-update of the owned β_j.
// Each phase ends with per-block partial sums (residual, dual gains, repair and absorption counts)
// written to a slot per block; after the barrier every block sums the P slots in the same fixed order,
// so every block holds the same bits and takes the same decisions (stop, relaxation safeguard,
// absorption, ω) without a host round trip. Rare events (log-domain repairs, a rejected relaxed step,
// absorption, a new ε stage) add phases.
//
// The phases are written once, over two policies: `Blk` (the threads of one block: a CUDA block of
// warps, or one serial thread) and `Exec` (which blocks run where: `each` runs a phase on the blocks it
// hosts and then waits at the barrier; `reduce` sums the block slots). The CUDA kernel
// (cuda/ot_cuda.cu) hosts one block per CUDA block; SerialExec below runs every block in turn on the
// CPU, which is how the decomposition is tested without a GPU (tests/test_sinkhorn_blocks.py).
#pragma once
#include <cmath>
#include <cstdint>

#include "ot/ot_math.h"
#include "ot/sinkhorn.h"

#if defined(__CUDACC__)
#define DC_OT_HD __host__ __device__
#else
#define DC_OT_HD
#endif

namespace dc {
namespace ot {

constexpr int kSlot = 8;  // doubles per block slot of partial sums

// float64 scratch of one problem: per row a, f̂, α, α_old, s, δ; the same per column; then, when the
// problem is split over P blocks, a barrier word, two buffers of P slots and the [P, m] column sums.
DC_HD int64_t split_work(int64_t n, int64_t m, int64_t P) {
  return 6 * (n + m) + (P > 0 ? 1 + 2 * P * kSlot + P * m : 0);
}

// The blocks a scratch is sized for when no count is forced: problems of at least kSplitEntries
// kernel entries may be split (the CUDA launcher uses fewer where the GPU cannot hold them all at
// once), at most kMaxSplit blocks and at least kMinSplitRows rows per block.
constexpr int64_t kSplitEntries = int64_t(1) << 20;
constexpr int64_t kMaxSplit = 256;
constexpr int64_t kMinSplitRows = 4;
constexpr int64_t kGroupSumBlocks = 64;  // from this many blocks a column's P partial sums are summed by a group

DC_HD int64_t split_room(int64_t n, int64_t m) {
  if (n * m < kSplitEntries) return 0;
  const int64_t p = n / kMinSplitRows;
  return p < 2 ? 2 : (p > kMaxSplit ? kMaxSplit : p);
}

template <class T>
struct SplitProblem {
  int64_t n = 0, m = 0, P = 1;
  const T* C = nullptr; int64_t ldc = 0;
  const T* a_in = nullptr;
  const T* b_in = nullptr;
  T* K = nullptr;  // plan buffer [n, m]: the kernel K̃ while iterating
  T* f_out = nullptr;
  T* g_out = nullptr;
  double* stats = nullptr;
  int64_t* iters = nullptr;
  double *aw = nullptr, *fh = nullptr, *al = nullptr, *aold = nullptr, *s = nullptr, *dr = nullptr;
  double *bw = nullptr, *gh = nullptr, *be = nullptr, *bold = nullptr, *t = nullptr, *dc = nullptr;
  double* bar = nullptr;    // barrier word (zeroed before the launch; CUDA only)
  double* part = nullptr;   // [2, P, kSlot] block slots, alternating buffers
  double* tpart = nullptr;  // [P, m] per-block column sums
  double absorb = kAbsorb;

  DC_HD const T* crow(int64_t i) const { return C + i * ldc; }
  DC_HD T* krow(int64_t i) const { return K + i * m; }
  DC_HD int64_t row0(int64_t k) const { return n * k / P; }
  DC_HD int64_t col0(int64_t k) const { return m * k / P; }
};

// Problem `b` of a batch, its scratch at `wk` (split_work(n, m, P) doubles).
template <class T>
DC_HD SplitProblem<T> split_problem(const SinkhornArgs& a, int64_t b, int64_t P, double* wk) {
  SplitProblem<T> p;
  p.n = a.n; p.m = a.m; p.P = P;
  p.C = static_cast<const T*>(a.cost) + b * a.c_sb; p.ldc = a.c_si;
  p.a_in = a.a ? static_cast<const T*>(a.a) + b * a.a_sb : nullptr;
  p.b_in = a.b ? static_cast<const T*>(a.b) + b * a.b_sb : nullptr;
  p.K = static_cast<T*>(a.plan) + b * a.n * a.m;
  p.f_out = static_cast<T*>(a.f) + b * a.n;
  p.g_out = static_cast<T*>(a.g) + b * a.m;
  p.stats = a.stats + 4 * b;
  p.iters = a.iters + b;
  const int64_t n = a.n, m = a.m;
  p.aw = wk; p.fh = wk + n; p.al = wk + 2 * n; p.aold = wk + 3 * n; p.s = wk + 4 * n; p.dr = wk + 5 * n;
  double* wc = wk + 6 * n;
  p.bw = wc; p.gh = wc + m; p.be = wc + 2 * m; p.bold = wc + 3 * m; p.t = wc + 4 * m; p.dc = wc + 5 * m;
  p.bar = wk + 6 * (n + m);
  p.part = p.bar + 1;
  p.tpart = p.part + 2 * P * kSlot;
  p.absorb = sizeof(T) == 4 ? kAbsorbF32 : kAbsorb;
  return p;
}

// −ε log Σ_k exp(z_k) over the entries get(k, &z) accepts (max subtraction; +inf when none).
template <class Get>
DC_OT_HD double split_neg_eps_lse(int64_t len, double eps, Get get) {
  double mx = -INFINITY;
  for (int64_t k = 0; k < len; ++k) {
    double z;
    if (get(k, &z)) mx = z > mx ? z : mx;
  }
  if (!(mx > -INFINITY)) return INFINITY;
  double s = 0.0;
  for (int64_t k = 0; k < len; ++k) {
    double z;
    if (get(k, &z)) s += exp(z - mx);
  }
  return -eps * (mx + log(s));
}

template <class T, class Exec>
class SplitSolver {
 public:
  using Blk = typename Exec::Blk;
  DC_OT_HD SplitSolver(const SplitProblem<T>& p, const SinkhornArgs& o, Exec& ex) : p_(p), o_(o), ex_(ex) {}

  DC_OT_HD void run() {
    const double range = validate();
    if (range < 0.0) return;
    const double eps0 = scaling_eps0(o_.eps_scaling, o_.eps, o_.eps0, range);  // = ε without scaling
    double eps = eps0;
    cold_start(eps);
    int64_t it = 0;  // completed iterations over all stages
    int status = kMaxIters;
    constexpr int half = kOmegaWindow / 2;
    double hist[half + 1];  // residuals of the last half window (ring)
    for (int q = 0; q <= half; ++q) hist[q] = 0.0;
    for (int stage = 0;; ++stage) {
      const bool last = !(eps > o_.eps);
      const double stop_tol = last ? o_.tol : (o_.tol > o_.stage_tol ? o_.tol : o_.stage_tol);
      double omega = 1.0;
      int64_t it_stage = 0;
      for (;;) {
        const bool relax_f = o_.relax && omega > 1.0;
        double red[5];  // err, gain ω, gain 1, repairs, absorb
        row_pass(relax_f, omega, red);
        const double err = red[0];
        hist[it_stage % (half + 1)] = err;
        if (!(err * 0.0 == 0.0)) { status = kBreakdown; break; }
        const bool at_check = it_stage > 0 && (it % o_.check_every == 0 || it == o_.max_iters);
        bool stop = false;
        if (last) {
          if (at_check && err <= stop_tol) { status = kConverged; stop = true; }
          else if (it >= o_.max_iters) { status = kMaxIters; stop = true; }
        } else if (it_stage > 0 && (err <= stop_tol || it_stage >= 100 || 2 * it >= o_.max_iters)) {
          stop = true;  // leave the intermediate stage (its state is the warm start of the next)
        }
        if (stop) {
          rows_each([&](int64_t i) { p_.al[i] = p_.aold[i]; });
          break;
        }
        if (red[3] > 0.0) rows_each([&](int64_t i) { if (p_.aw[i] > 0.0 && p_.s[i] < kTiny) repair_row(i, eps); });
        if (relax_f && !(red[1] >= kGainFraction * red[2] && red[1] > 0.0))
          safeguard(true, omega, red[1], red[2]);
        column_sums();
        const bool plain_g = last && ((it + 1) % o_.check_every == 0 || it + 1 >= o_.max_iters);
        const bool relax_g = o_.relax && omega > 1.0 && !plain_g;
        double gr[4];  // gain ω, gain 1, absorb, repairs
        column_pass(relax_g, omega, eps, gr);
        if (relax_g && !(gr[0] >= kGainFraction * gr[1] && gr[0] > 0.0)) safeguard(false, omega, gr[0], gr[1]);
        ++it;
        ++it_stage;
        if (red[4] > 0.0 || gr[2] > 0.0 || gr[3] > 0.0) {
          absorb_all(eps);
          build(eps);
        }
        if (o_.relax && it_stage >= kOmegaStart && it_stage % kOmegaWindow == 0)
          omega = omega_update(omega, hist[(it_stage - 1) % (half + 1)], hist[(it_stage - 1 - half) % (half + 1)],
                               half);
      }
      if (status == kBreakdown || last || it >= o_.max_iters) break;
      absorb_all(eps);  // next ε stage: absorb at the current ε, rebuild the kernel at the next
      eps = stage_eps(o_.eps, eps0, o_.eps_q, stage + 1);
      build(eps);
    }
    finish(eps, status, it);
  }

 private:
  // The block slots of the next reduction: a block writes its partials there; after the barrier
  // reduce() reads them (and switches buffers, so a fast block never overwrites unread slots).
  DC_OT_HD double* slots() const { return p_.part + parity_ * p_.P * kSlot; }
  template <int K>
  DC_OT_HD void put(const Blk& b, int64_t k, const double* v) const {
    if (b.tid() == 0)
      for (int q = 0; q < K; ++q) slots()[k * kSlot + q] = v[q];
  }
  template <int K, int KSUM>
  DC_OT_HD void get(double* out) {
    ex_.template reduce<K, KSUM>(slots(), out);
    parity_ ^= 1;
  }
  // f(i) for each owned row (a thread per row), then the barrier; cols_each likewise.
  template <class F>
  DC_OT_HD void rows_each(F f) {
    ex_.each([&](int64_t k, const Blk& b) {
      for (int64_t i = p_.row0(k) + b.tid(); i < p_.row0(k + 1); i += b.nthr()) f(i);
    });
  }
  template <class F>
  DC_OT_HD void cols_each(F f) {
    ex_.each([&](int64_t k, const Blk& b) {
      for (int64_t j = p_.col0(k) + b.tid(); j < p_.col0(k + 1); j += b.nthr()) f(j);
    });
  }

  // Input checks (finite cost, nonnegative weights summing to 1) and the normalized weights; returns
  // the cost range max C − min C, or −1 after writing the failure status.
  DC_OT_HD double validate() {
    ex_.each([&](int64_t k, const Blk& b) {
      const int64_t r0 = p_.row0(k), r1 = p_.row0(k + 1), c0 = p_.col0(k), c1 = p_.col0(k + 1);
      double v[7] = {0.0, 0.0, 0.0, 0.0, 0.0, INFINITY, INFINITY};  // C·0, Σa, bad a, Σb, bad b | min C, −max C
      for (int64_t i = r0 + b.grp(); i < r1; i += b.ngrp()) {
        const T* c = p_.crow(i);
        for (int64_t j = b.glane(); j < p_.m; j += b.gsize()) {
          const double x = double(c[j]);
          v[0] += x * 0.0;  // NaN exactly for NaN and ±inf
          v[5] = x < v[5] ? x : v[5];
          v[6] = -x < v[6] ? -x : v[6];
        }
      }
      for (int64_t i = r0 + b.tid(); i < r1; i += b.nthr()) {
        const double x = p_.a_in ? double(p_.a_in[i]) : 1.0 / double(p_.n);
        if (!(x >= 0.0) || !(x * 0.0 == 0.0)) v[2] += 1.0;
        p_.aw[i] = x;
        v[1] += x;
      }
      for (int64_t j = c0 + b.tid(); j < c1; j += b.nthr()) {
        const double x = p_.b_in ? double(p_.b_in[j]) : 1.0 / double(p_.m);
        if (!(x >= 0.0) || !(x * 0.0 == 0.0)) v[4] += 1.0;
        p_.bw[j] = x;
        v[3] += x;
      }
      b.template sum<5>(v);
      b.template vmin<2>(v + 5);
      put<7>(b, k, v);
    });
    double v[7];
    get<7, 5>(v);
    int st = kConverged;
    if (v[0] != 0.0) st = kBadCost;
    else if (v[2] > 0.0) st = kBadA;
    else if (!(fabs(v[1] - 1.0) <= o_.weight_tol)) st = kSumA;
    else if (v[4] > 0.0) st = kBadB;
    else if (!(fabs(v[3] - 1.0) <= o_.weight_tol)) st = kSumB;
    if (st != kConverged) {
      if (ex_.leader()) {
        p_.stats[0] = p_.stats[1] = p_.stats[2] = NAN;
        p_.stats[3] = double(st);
        *p_.iters = 0;
      }
      return -1.0;
    }
    const double sa = v[1], sb = v[3];
    ex_.each([&](int64_t k, const Blk& b) {
      for (int64_t i = p_.row0(k) + b.tid(); i < p_.row0(k + 1); i += b.nthr()) p_.aw[i] /= sa;
      for (int64_t j = p_.col0(k) + b.tid(); j < p_.col0(k + 1); j += b.nthr()) {
        p_.bw[j] /= sb;
        p_.gh[j] = 0.0;
        p_.be[j] = p_.bw[j];
      }
    });
    return -v[6] - v[5];
  }

  // Cold start: ĝ = 0, f̂_i = min_j C_ij over positive-weight columns, so each kernel row peaks at 1.
  DC_OT_HD void cold_start(double eps) {
    ex_.each([&](int64_t k, const Blk& b) {
      const int64_t r0 = p_.row0(k), r1 = p_.row0(k + 1);
      for (int64_t i = r0 + b.grp(); i < r1; i += b.ngrp()) {
        const T* c = p_.crow(i);
        double mn = INFINITY;
        for (int64_t j = b.glane(); j < p_.m; j += b.gsize()) {
          const double x = p_.bw[j] > 0.0 ? double(c[j]) - p_.gh[j] : INFINITY;
          mn = x < mn ? x : mn;
        }
        mn = b.gmin(mn);
        if (b.glane() == 0) {
          p_.fh[i] = p_.aw[i] > 0.0 ? mn : 0.0;
          p_.al[i] = p_.aw[i];
        }
      }
      b.sync();
      build_rows(b, r0, r1, eps);
    });
  }

  // K̃_ij = exp((f̂_i + ĝ_j − C_ij)/ε) on the owned rows; zero on rows and columns of zero weight.
  DC_OT_HD void build_rows(const Blk& b, int64_t r0, int64_t r1, double eps) const {
    const double ie = 1.0 / eps;
    for (int64_t i = r0 + b.grp(); i < r1; i += b.ngrp()) {
      T* kr = p_.krow(i);
      const T* c = p_.crow(i);
      const double fh = p_.fh[i];
      const bool row = p_.aw[i] > 0.0;
      for (int64_t j = b.glane(); j < p_.m; j += b.gsize()) {
        const double v = exp_fast((fh + p_.gh[j] - double(c[j])) * ie);
        kr[j] = T(row && p_.bw[j] > 0.0 ? v : 0.0);
      }
    }
  }
  DC_OT_HD void build(double eps) {
    ex_.each([&](int64_t k, const Blk& b) { build_rows(b, p_.row0(k), p_.row0(k + 1), eps); });
  }
  DC_OT_HD void absorb_all(double eps) {
    ex_.each([&](int64_t k, const Blk& b) {
      for (int64_t i = p_.row0(k) + b.tid(); i < p_.row0(k + 1); i += b.nthr())
        if (p_.aw[i] > 0.0) { p_.fh[i] += eps * log(p_.al[i] / p_.aw[i]); p_.al[i] = p_.aw[i]; }
      for (int64_t j = p_.col0(k) + b.tid(); j < p_.col0(k + 1); j += b.nthr())
        if (p_.bw[j] > 0.0) { p_.gh[j] += eps * log(p_.be[j] / p_.bw[j]); p_.be[j] = p_.bw[j]; }
    });
  }

  // Phase 1: s = K̃β on the owned rows (a group of threads per row), the residual ‖diag(α)K̃β − a‖₁
  // of the current state and the tentative f-update; red = (err, gain ω, gain 1, repairs, absorb).
  DC_OT_HD void row_pass(bool relax, double omega, double* red) {
    ex_.each([&](int64_t k, const Blk& b) {
      const int64_t r0 = p_.row0(k), r1 = p_.row0(k + 1), m = p_.m;
      const double* be = p_.be;
      for (int64_t i = r0 + b.grp(); i < r1; i += b.ngrp()) {
        double acc = 0.0;
        if (p_.aw[i] > 0.0) {
          const T* kr = p_.krow(i);
          double a1 = 0.0, a2 = 0.0, a3 = 0.0;  // four chains keep four loads in flight per thread
          const int64_t g = b.gsize();
          int64_t j = b.glane();
          for (; j + 3 * g < m; j += 4 * g) {
            acc += double(kr[j]) * be[j];
            a1 += double(kr[j + g]) * be[j + g];
            a2 += double(kr[j + 2 * g]) * be[j + 2 * g];
            a3 += double(kr[j + 3 * g]) * be[j + 3 * g];
          }
          for (; j < m; j += g) acc += double(kr[j]) * be[j];
          acc = (acc + a1) + (a2 + a3);
        }
        acc = b.gsum(acc);
        if (b.glane() == 0) p_.s[i] = p_.aw[i] > 0.0 ? acc : 0.0;
      }
      b.sync();
      double v[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
      for (int64_t i = r0 + b.tid(); i < r1; i += b.nthr()) {
        const double aw = p_.aw[i], s = p_.s[i], al = p_.al[i];
        v[0] += fabs(al * s - aw);
        const ScalingStep r = relax ? scaling_relaxed(aw, s, al, omega, p_.absorb) : scaling_plain(aw, s, al, p_.absorb);
        p_.aold[i] = al;
        p_.dr[i] = r.delta;
        p_.al[i] = r.x;
        v[1] += r.gain_w; v[2] += r.gain_1; v[4] += r.moved;
        if (aw > 0.0 && s < kTiny) v[3] += 1.0;
      }
      b.template sum<5>(v);
      put<5>(b, k, v);
    });
    get<5, 5>(red);
  }

  // Phase 2: Σ_{i owned} α_i K̃_ij for every column j (a thread per column: coalesced rows).
  DC_OT_HD void column_sums() {
    ex_.each([&](int64_t k, const Blk& b) {
      const int64_t r0 = p_.row0(k), r1 = p_.row0(k + 1), m = p_.m;
      double* tp = p_.tpart + k * m;
      for (int64_t j = b.tid(); j < m; j += b.nthr()) {
        double acc = 0.0;
        if (p_.bw[j] > 0.0)
          for (int64_t i = r0; i < r1; ++i) acc += p_.al[i] * double(p_.krow(i)[j]);
        tp[j] = acc;
      }
    });
  }

  // Phase 3: t_j = Σ_k tpart[k, j] on the owned columns and the g-update; gr = (gain ω, gain 1,
  // absorb, repairs).
  DC_OT_HD void column_pass(bool relax, double omega, double eps, double* gr) {
    ex_.each([&](int64_t k, const Blk& b) {
      const int64_t c0 = p_.col0(k), c1 = p_.col0(k + 1), P = p_.P, m = p_.m;
      // t_j over the P block rows: a group per column when P is large (P loads would be a long serial
      // chain for one thread), else a thread per column
      if (P >= kGroupSumBlocks) {
        for (int64_t j = c0 + b.grp(); j < c1; j += b.ngrp()) {
          double acc = 0.0;
          for (int64_t q = b.glane(); q < P; q += b.gsize()) acc += p_.tpart[q * m + j];
          acc = b.gsum(acc);
          if (b.glane() == 0) p_.t[j] = acc;
        }
      } else {
        for (int64_t j = c0 + b.tid(); j < c1; j += b.nthr()) {
          double acc = 0.0;
          for (int64_t q = 0; q < P; ++q) acc += p_.tpart[q * m + j];
          p_.t[j] = acc;
        }
      }
      b.sync();
      double v[4] = {0.0, 0.0, 0.0, 0.0};
      for (int64_t j = c0 + b.tid(); j < c1; j += b.nthr()) {
        const double acc = p_.t[j];
        const double bw = p_.bw[j], be = p_.be[j];
        const ScalingStep r = relax ? scaling_relaxed(bw, acc, be, omega, p_.absorb) : scaling_plain(bw, acc, be, p_.absorb);
        p_.bold[j] = be;
        p_.dc[j] = r.delta;
        p_.be[j] = r.x;
        v[0] += r.gain_w; v[1] += r.gain_1; v[2] += r.moved;
        if (bw > 0.0 && acc < kTiny) { repair_col(j, eps); v[3] += 1.0; }
      }
      b.template sum<4>(v);
      put<4>(b, k, v);
    });
    get<4, 4>(gr);
  }

  // A relaxed update gained less than kGainFraction of the plain one: back off to the first candidate
  // that does (ot_math.h, choose_candidate) and redo the update from the old scalings.
  DC_OT_HD void safeguard(bool rows, double omega, double gain_w, double gain_1) {
    ex_.each([&](int64_t k, const Blk& b) {
      const int64_t lo = rows ? p_.row0(k) : p_.col0(k), hi = rows ? p_.row0(k + 1) : p_.col0(k + 1);
      const double* w = rows ? p_.aw : p_.bw;
      const double* d = rows ? p_.dr : p_.dc;
      double v[2] = {0.0, 0.0};
      for (int64_t i = lo + b.tid(); i < hi; i += b.nthr()) {
        double x1, x2;
        candidate_gains(w[i], d[i], omega, &x1, &x2);
        v[0] += x1; v[1] += x2;
      }
      b.template sum<2>(v);
      put<2>(b, k, v);
    });
    double g2[2];
    get<2, 2>(g2);
    const double gains[kCandidates] = {gain_w, g2[0], g2[1], gain_1};
    const double w = candidate(omega, choose_candidate(gains));
    if (rows) {
      rows_each([&](int64_t i) {
        if (scaling_active(p_.aw[i], p_.s[i])) p_.al[i] = p_.aold[i] * exp_fast(w * p_.dr[i]);
      });
    } else {
      cols_each([&](int64_t j) {
        if (scaling_active(p_.bw[j], p_.t[j])) p_.be[j] = p_.bold[j] * exp_fast(w * p_.dc[j]);
      });
    }
  }

  // Exact log-domain updates of a row / column whose sum underflowed (then its kernel entries at the
  // new potential and scaling = weight).
  DC_OT_HD void repair_row(int64_t i, double eps) const {
    const T* c = p_.crow(i);
    const double fh = split_neg_eps_lse(p_.m, eps, [&](int64_t j, double* z) {
      if (!(p_.bw[j] > 0.0) || !(p_.be[j] > 0.0)) return false;
      *z = log(p_.be[j]) + (p_.gh[j] - double(c[j])) / eps;
      return true;
    });
    p_.fh[i] = fh;
    T* kr = p_.krow(i);
    for (int64_t j = 0; j < p_.m; ++j)
      kr[j] = T(p_.bw[j] > 0.0 ? exp_fast((fh + p_.gh[j] - double(c[j])) * (1.0 / eps)) : 0.0);
    p_.al[i] = p_.aw[i];
  }
  DC_OT_HD void repair_col(int64_t j, double eps) const {
    const double gh = split_neg_eps_lse(p_.n, eps, [&](int64_t i, double* z) {
      if (!(p_.aw[i] > 0.0) || !(p_.al[i] > 0.0)) return false;
      *z = log(p_.al[i]) + (p_.fh[i] - double(p_.crow(i)[j])) / eps;
      return true;
    });
    p_.gh[j] = gh;
    for (int64_t i = 0; i < p_.n; ++i)
      if (p_.aw[i] > 0.0) p_.krow(i)[j] = T(exp_fast((p_.fh[i] + gh - double(p_.crow(i)[j])) / eps));
    p_.be[j] = p_.bw[j];
  }

  // Potentials (c-transforms on zero-weight entries), the plan over the kernel, value and statistics.
  DC_OT_HD void finish(double eps, int status, int64_t iters) {
    rows_each([&](int64_t i) { p_.s[i] = p_.aw[i] > 0.0 ? p_.fh[i] + eps * log(p_.al[i] / p_.aw[i]) : 0.0; });
    cols_each([&](int64_t j) { p_.t[j] = p_.bw[j] > 0.0 ? p_.gh[j] + eps * log(p_.be[j] / p_.bw[j]) : 0.0; });
    ex_.each([&](int64_t k, const Blk& b) {
      for (int64_t i = p_.row0(k) + b.tid(); i < p_.row0(k + 1); i += b.nthr()) {
        if (p_.aw[i] > 0.0) continue;
        const T* c = p_.crow(i);
        p_.s[i] = split_neg_eps_lse(p_.m, eps, [&](int64_t j, double* z) {
          if (!(p_.bw[j] > 0.0)) return false;
          *z = log(p_.bw[j]) + (p_.t[j] - double(c[j])) / eps;
          return true;
        });
      }
      for (int64_t j = p_.col0(k) + b.tid(); j < p_.col0(k + 1); j += b.nthr()) {
        if (p_.bw[j] > 0.0) continue;
        p_.t[j] = split_neg_eps_lse(p_.n, eps, [&](int64_t i, double* z) {
          if (!(p_.aw[i] > 0.0)) return false;
          *z = log(p_.aw[i]) + (p_.s[i] - double(p_.crow(i)[j])) / eps;
          return true;
        });
      }
    });
    ex_.each([&](int64_t k, const Blk& b) {
      const int64_t r0 = p_.row0(k), r1 = p_.row0(k + 1);
      double v[3] = {0.0, 0.0, 0.0};  // value, transport cost, row error
      for (int64_t i = r0 + b.grp(); i < r1; i += b.ngrp()) {
        T* kr = p_.krow(i);
        const T* c = p_.crow(i);
        const double al = p_.al[i];
        double rs = 0.0, tc = 0.0, gs = 0.0;
        for (int64_t j = b.glane(); j < p_.m; j += b.gsize()) {
          const T pij = al > 0.0 ? T(al * double(kr[j]) * p_.be[j]) : T(0);
          kr[j] = pij;
          rs += double(pij);
          tc += double(pij) * double(c[j]);
          gs += double(pij) * p_.t[j];
        }
        rs = b.gsum(rs); tc = b.gsum(tc); gs = b.gsum(gs);
        if (b.glane() == 0) {
          v[0] += p_.s[i] * rs + gs;
          v[1] += tc;
          v[2] += fabs(rs - p_.aw[i]);
        }
      }
      for (int64_t i = r0 + b.tid(); i < r1; i += b.nthr()) p_.f_out[i] = T(p_.s[i]);
      for (int64_t j = p_.col0(k) + b.tid(); j < p_.col0(k + 1); j += b.nthr()) p_.g_out[j] = T(p_.t[j]);
      b.template sum<3>(v);
      put<3>(b, k, v);
    });
    double v[3];
    get<3, 3>(v);
    if (ex_.leader()) {
      p_.stats[0] = v[0];
      p_.stats[1] = v[1];
      p_.stats[2] = v[2];
      p_.stats[3] = double(status);
      *p_.iters = iters;
    }
  }

  SplitProblem<T> p_;
  const SinkhornArgs& o_;
  Exec& ex_;
  int parity_ = 0;
};

// The CPU host of the decomposition: every block in turn, each as one thread (the barrier after a
// phase is implicit), slots summed in block order.
struct SerialBlock {
  int tid() const { return 0; }
  int nthr() const { return 1; }
  int grp() const { return 0; }
  int ngrp() const { return 1; }
  int glane() const { return 0; }
  int gsize() const { return 1; }
  void sync() const {}
  template <int K> void sum(double*) const {}
  template <int K> void vmin(double*) const {}
  double gsum(double x) const { return x; }
  double gmin(double x) const { return x; }
};

struct SerialExec {
  using Blk = SerialBlock;
  int64_t P = 1;
  template <class F>
  void each(F&& f) {
    const SerialBlock b;
    for (int64_t k = 0; k < P; ++k) f(k, b);
  }
  template <int K, int KSUM>
  void reduce(const double* part, double* out) const {
    for (int q = 0; q < K; ++q) {
      double acc = part[q];
      for (int64_t k = 1; k < P; ++k) {
        const double x = part[k * kSlot + q];
        acc = q < KSUM ? acc + x : (x < acc ? x : acc);
      }
      out[q] = acc;
    }
  }
  bool leader() const { return true; }
};

}  // namespace ot
}  // namespace dc
