// CPU Sinkhorn solver (book Sec. 7.2.2; Schmitzer 2019): stabilized scaling form with absorption,
// safeguarded over-relaxation and optional ε-scaling; the math is in ot/ot_math.h.
//
// Work per iteration is one pass over the kernel K̃ (stored in the plan buffer), in blocks of 8 rows:
// s_i = K̃_i·β (dot products, four rows per sweep of β), the f-update of the block's α_i, then
// t += Σ_i α_i K̃_i (four rows per sweep of t) while the rows are still in L1. The g-update of β from
// t is O(m). The pass is bound by loads/stores, so the four-row sweeps about halve its time. A batch
// runs one problem per thread (on diffcore's pool, cpu/pool.h); a single problem of at least 2^22
// entries splits its rows (and columns, for the O(m) work) over a team, which meets at two barriers
// per iteration inside a single parallel region (more only on repairs, backtracking or absorption);
// smaller ones run on one thread (sinkhorn_typed says why).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "cpu/ot_isa.h"
#include "cpu/pool.h"
#include "ot/ot_math.h"
#include "ot/sinkhorn.h"
#include "ot/sinkhorn_blocks.h"

#ifdef DIFFCORE_WITH_OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace dc {
namespace {

using namespace ot;

// ------------------------------------------------------------------------------------------------
// Row kernels: always-inline bodies, instantiated for the baseline target and for AVX2 + FMA.

template <class T>
DC_OT_INLINE double dot_body(const T* k, const double* x, int64_t m) {
  double acc[16] = {0.0};  // independent accumulators hide the add latency
  int64_t j = 0;
  for (; j + 16 <= m; j += 16) {
#pragma omp simd
    for (int l = 0; l < 16; ++l) acc[l] += double(k[j + l]) * x[j + l];
  }
  double s = 0.0;
  for (; j < m; ++j) s += double(k[j]) * x[j];
  for (int l = 0; l < 16; ++l) s += acc[l];
  return s;
}

// Four rows at once: the shared vector x (or t) is loaded once per four rows (the pass is bound by
// loads and stores, not arithmetic).
template <class T>
DC_OT_INLINE void dot4_body(const T* k, int64_t ld, const double* x, int64_t m, double* out) {
  const T *k0 = k, *k1 = k + ld, *k2 = k + 2 * ld, *k3 = k + 3 * ld;
  double a0[8] = {0.0}, a1[8] = {0.0}, a2[8] = {0.0}, a3[8] = {0.0};
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
#pragma omp simd
    for (int l = 0; l < 8; ++l) {
      const double xv = x[j + l];
      a0[l] += double(k0[j + l]) * xv;
      a1[l] += double(k1[j + l]) * xv;
      a2[l] += double(k2[j + l]) * xv;
      a3[l] += double(k3[j + l]) * xv;
    }
  }
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  for (; j < m; ++j) {
    s0 += double(k0[j]) * x[j]; s1 += double(k1[j]) * x[j];
    s2 += double(k2[j]) * x[j]; s3 += double(k3[j]) * x[j];
  }
  for (int l = 0; l < 8; ++l) { s0 += a0[l]; s1 += a1[l]; s2 += a2[l]; s3 += a3[l]; }
  out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

template <class T>
DC_OT_INLINE void axpy4_body(double* t, const double* s, const T* k, int64_t ld, int64_t m) {
  const T *k0 = k, *k1 = k + ld, *k2 = k + 2 * ld, *k3 = k + 3 * ld;
  const double s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
#pragma omp simd
  for (int64_t j = 0; j < m; ++j)
    t[j] += (s0 * double(k0[j]) + s1 * double(k1[j])) + (s2 * double(k2[j]) + s3 * double(k3[j]));
}

template <class T>
DC_OT_INLINE void axpy_body(double* t, double s, const T* k, int64_t m) {
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) t[j] += s * double(k[j]);
}

// K̃_j = exp((fh + gh_j − c_j)/ε) on columns of positive weight, 0 elsewhere.
template <class T>
DC_OT_INLINE void kernel_body(T* k, const T* c, double fh, const double* gh, const double* bw, double inv_eps,
                              int64_t m) {
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    const double v = exp_fast((fh + gh[j] - double(c[j])) * inv_eps);
    k[j] = T(bw[j] > 0.0 ? v : 0.0);
  }
}

// min over columns of positive weight of c_j − gh_j (row normalization of a cold start).
template <class T>
DC_OT_INLINE double rowmin_body(const T* c, const double* gh, const double* bw, int64_t m) {
  double mn = std::numeric_limits<double>::infinity();
#pragma omp simd reduction(min : mn)
  for (int64_t j = 0; j < m; ++j) {
    const double v = bw[j] > 0.0 ? double(c[j]) - gh[j] : std::numeric_limits<double>::infinity();
    mn = v < mn ? v : mn;
  }
  return mn;
}

// out[0] = 0 when every entry is finite, NaN otherwise (x·0 is NaN exactly for NaN and ±inf);
// out[1], out[2] = min and max of the row.
template <class T>
DC_OT_INLINE void range_body(const T* c, int64_t m, double* out) {
  double acc = 0.0, mn = std::numeric_limits<double>::infinity(), mx = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(+ : acc) reduction(min : mn) reduction(max : mx)
  for (int64_t j = 0; j < m; ++j) {
    const double v = double(c[j]);
    acc += v * 0.0;
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  out[0] = acc; out[1] = mn; out[2] = mx;
}

// Plan row P_j = al·K̃_j·be_j written over K̃; out = (Σ_j P_j, Σ_j P_j c_j, Σ_j P_j g_j).
template <class T>
DC_OT_INLINE void plan_body(T* k, const T* c, double al, const double* be, const double* g, int64_t m,
                            double* out) {
  double rs = 0.0, tc = 0.0, gs = 0.0;
#pragma omp simd reduction(+ : rs, tc, gs)
  for (int64_t j = 0; j < m; ++j) {
    const T p = T(al * double(k[j]) * be[j]);
    k[j] = p;
    rs += double(p);
    tc += double(p) * double(c[j]);
    gs += double(p) * g[j];
  }
  out[0] = rs; out[1] = tc; out[2] = gs;
}

// Scaling update over [0, len) (ot_math.h, scaling_plain / scaling_relaxed); old_i keeps the previous
// x_i and d_i the step δ_i; out = (gain ω, gain 1, entries to absorb).
DC_OT_INLINE void update_body(const double* w, const double* s, double* x, double* old, double* d, int64_t len,
                              double omega, bool relax, double absorb, double* out) {
  double gw = 0.0, g1 = 0.0, nabs = 0.0;
  if (!relax) {
#pragma omp simd reduction(+ : nabs)
    for (int64_t i = 0; i < len; ++i) {
      const ScalingStep r = scaling_plain(w[i], s[i], x[i], absorb);
      old[i] = x[i];
      d[i] = 0.0;
      x[i] = r.x;
      nabs += r.moved;
    }
  } else {
#pragma omp simd reduction(+ : gw, g1, nabs)
    for (int64_t i = 0; i < len; ++i) {
      const ScalingStep r = scaling_relaxed(w[i], s[i], x[i], omega, absorb);
      old[i] = x[i];
      d[i] = r.delta;
      x[i] = r.x;
      gw += r.gain_w;
      g1 += r.gain_1;
      nabs += r.moved;
    }
  }
  out[0] = gw; out[1] = g1; out[2] = nabs;
}

// Gains of the backtracking candidates 1 and 2 (ω_t was rejected), summed over [0, len).
DC_OT_INLINE void gains_body(const double* w, const double* d, int64_t len, double omega, double* out) {
  double ga = 0.0, gb = 0.0;
#pragma omp simd reduction(+ : ga, gb)
  for (int64_t i = 0; i < len; ++i) {
    double x1, x2;
    candidate_gains(w[i], d[i], omega, &x1, &x2);
    ga += x1;
    gb += x2;
  }
  out[0] = ga; out[1] = gb;
}

// x_i = old_i e^{ω δ_i} on the entries the update applied to.
DC_OT_INLINE void reapply_body(const double* w, const double* s, double* x, const double* old, const double* d,
                               int64_t len, double omega) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) x[i] = scaling_active(w[i], s[i]) ? old[i] * exp_fast(omega * d[i]) : x[i];
}

template <class T>
struct RowOps {
  double (*dot)(const T*, const double*, int64_t);
  void (*axpy)(double*, double, const T*, int64_t);
  void (*dot4)(const T*, int64_t, const double*, int64_t, double*);
  void (*axpy4)(double*, const double*, const T*, int64_t, int64_t);
  void (*kernel)(T*, const T*, double, const double*, const double*, double, int64_t);
  double (*rowmin)(const T*, const double*, const double*, int64_t);
  void (*range)(const T*, int64_t, double*);
  void (*plan)(T*, const T*, double, const double*, const double*, int64_t, double*);
  void (*update)(const double*, const double*, double*, double*, double*, int64_t, double, bool, double, double*);
  void (*gains)(const double*, const double*, int64_t, double, double*);
  void (*reapply)(const double*, const double*, double*, const double*, const double*, int64_t, double);
};

#define DC_OT_DEFINE_OPS(SUFFIX, ATTR)                                                                          \
  template <class T> ATTR double dot_##SUFFIX(const T* k, const double* x, int64_t m) { return dot_body(k, x, m); } \
  template <class T> ATTR void axpy_##SUFFIX(double* t, double s, const T* k, int64_t m) { axpy_body(t, s, k, m); } \
  template <class T>                                                                                           \
  ATTR void dot4_##SUFFIX(const T* k, int64_t ld, const double* x, int64_t m, double* o) {                       \
    dot4_body(k, ld, x, m, o);                                                                                 \
  }                                                                                                            \
  template <class T>                                                                                           \
  ATTR void axpy4_##SUFFIX(double* t, const double* s, const T* k, int64_t ld, int64_t m) {                      \
    axpy4_body(t, s, k, ld, m);                                                                                \
  }                                                                                                            \
  template <class T>                                                                                           \
  ATTR void kernel_##SUFFIX(T* k, const T* c, double fh, const double* gh, const double* bw, double ie, int64_t m) { \
    kernel_body(k, c, fh, gh, bw, ie, m);                                                                      \
  }                                                                                                            \
  template <class T>                                                                                           \
  ATTR double rowmin_##SUFFIX(const T* c, const double* gh, const double* bw, int64_t m) {                      \
    return rowmin_body(c, gh, bw, m);                                                                          \
  }                                                                                                            \
  template <class T> ATTR void range_##SUFFIX(const T* c, int64_t m, double* o) { range_body(c, m, o); }       \
  template <class T>                                                                                           \
  ATTR void plan_##SUFFIX(T* k, const T* c, double al, const double* be, const double* g, int64_t m, double* o) { \
    plan_body(k, c, al, be, g, m, o);                                                                          \
  }                                                                                                            \
  ATTR void update_##SUFFIX(const double* w, const double* s, double* x, double* old, double* d, int64_t len,     \
                            double omega, bool relax, double absorb, double* out) {                            \
    update_body(w, s, x, old, d, len, omega, relax, absorb, out);                                              \
  }                                                                                                            \
  ATTR void gains_##SUFFIX(const double* w, const double* d, int64_t len, double omega, double* out) {           \
    gains_body(w, d, len, omega, out);                                                                         \
  }                                                                                                            \
  ATTR void reapply_##SUFFIX(const double* w, const double* s, double* x, const double* old, const double* d,    \
                             int64_t len, double omega) {                                                      \
    reapply_body(w, s, x, old, d, len, omega);                                                                 \
  }                                                                                                            \
  template <class T> RowOps<T> ops_##SUFFIX() {                                                                \
    return RowOps<T>{dot_##SUFFIX<T>,    axpy_##SUFFIX<T>, dot4_##SUFFIX<T>, axpy4_##SUFFIX<T>,                \
                     kernel_##SUFFIX<T>, rowmin_##SUFFIX<T>,                                                   \
                     range_##SUFFIX<T>,  plan_##SUFFIX<T>, update_##SUFFIX,    gains_##SUFFIX,                 \
                     reapply_##SUFFIX};                                                                        \
  }

DC_OT_DEFINE_OPS(base, )
#if DC_ISA_HAS_AVX2
DC_OT_DEFINE_OPS(avx2, DC_TARGET_AVX2)
#endif

template <class T>
RowOps<T> row_ops() {
#if DC_ISA_HAS_AVX2
  if (cpu_has_avx2_fma()) return ops_avx2<T>();
#endif
  return ops_base<T>();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// ------------------------------------------------------------------------------------------------
// Log-domain repairs of underflowed sums (rare: cold starts at tiny ε, extreme costs).

// −ε log Σ_k exp(lw_k + (p_k − c_k)/ε) over entries with weight > 0, by max subtraction.
template <class Get>
double neg_eps_lse(int64_t len, double eps, Get get) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t k = 0; k < len; ++k) {
    double z;
    if (get(k, &z)) mx = std::max(mx, z);
  }
  if (!(mx > -std::numeric_limits<double>::infinity())) return std::numeric_limits<double>::infinity();
  double s = 0.0;
  for (int64_t k = 0; k < len; ++k) {
    double z;
    if (get(k, &z)) s += std::exp(z - mx);
  }
  return -eps * (mx + std::log(s));
}

// ------------------------------------------------------------------------------------------------
// One problem, run by every thread of a team (nth = 1: a thread alone, no barriers).

template <class T>
struct Problem {
  int64_t n = 0, m = 0;
  const T* C = nullptr; int64_t ldc = 0;
  const T* a_in = nullptr;
  const T* b_in = nullptr;
  T* K = nullptr;  // plan buffer [n, m]
  T* f_out = nullptr;
  T* g_out = nullptr;
  double* stats = nullptr;
  int64_t* iters = nullptr;
};

struct alignas(64) Slot { double v[8]; };

template <class T>
class Solver {
 public:
  Solver(const Problem<T>& p, const SinkhornArgs& o, int nth, const RowOps<T>& ops)
      : p_(p), o_(o), nth_(nth), ops_(ops), n_(p.n), m_(p.m) {
    rows_.assign(size_t(6 * n_), 0.0);
    cols_.assign(size_t(6 * m_), 0.0);
    tpart_.assign(size_t(nth_ * m_), 0.0);
    part_[0].assign(size_t(nth_), Slot{});
    part_[1].assign(size_t(nth_), Slot{});
    aw_ = rows_.data(); fh_ = aw_ + n_; al_ = fh_ + n_; aold_ = al_ + n_; s_ = aold_ + n_; dr_ = s_ + n_;
    bw_ = cols_.data(); gh_ = bw_ + m_; be_ = gh_ + m_; bold_ = be_ + m_; t_ = bold_ + m_; dc_ = t_ + m_;
    absorb_ = sizeof(T) == 4 ? kAbsorbF32 : kAbsorb;
  }

  void run(int tid);

 private:
  // Team barrier. Not `omp barrier`: libgomp's waiters spin for a long time before sleeping, so when
  // another process holds one of the cores (shared machines) every barrier costs a scheduler time
  // slice (measured: 8 ms per iteration instead of 15 µs). Here a waiter spins briefly (the partner of
  // a balanced split on an idle machine arrives within microseconds), then sleeps on a futex: a
  // sleeping waiter gives its core to the thread it waits for, and is woken as soon as that arrives,
  // where a yielding one keeps competing for the core.
  void sync() {
    if (nth_ == 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == nth_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_seq_cst);
#ifdef __linux__
      if (sleepers_.load(std::memory_order_seq_cst) > 0)
        syscall(SYS_futex, reinterpret_cast<int*>(&gen_), FUTEX_WAKE_PRIVATE, nth_, nullptr, nullptr, 0);
#endif
      return;
    }
    for (int spin = 0; spin < 2000; ++spin) {
      if (gen_.load(std::memory_order_acquire) != gen) return;
      cpu_relax();
    }
#ifdef __linux__
    // seq_cst on both sides: either the last arriver sees this sleeper, or the futex sees the new gen
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (gen_.load(std::memory_order_seq_cst) == gen)
      syscall(SYS_futex, reinterpret_cast<int*>(&gen_), FUTEX_WAIT_PRIVATE, gen, nullptr, nullptr, 0);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
#else
    while (gen_.load(std::memory_order_acquire) == gen) std::this_thread::yield();
#endif
  }
  // Reduce k values over the team with op, the same bits on every thread (fixed order); double-
  // buffered so one barrier suffices.
  template <class Op>
  void allreduce(int tid, int& parity, double* v, int k, Op op) {
    if (nth_ == 1) return;
    parity ^= 1;
    std::vector<Slot>& sl = part_[parity];
    for (int q = 0; q < k; ++q) sl[size_t(tid)].v[q] = v[q];
    sync();
    for (int q = 0; q < k; ++q) {
      double acc = sl[0].v[q];
      for (int p = 1; p < nth_; ++p) acc = op(acc, sl[size_t(p)].v[q]);
      v[q] = acc;
    }
  }
  void allsum(int tid, int& parity, double* v, int k) {
    allreduce(tid, parity, v, k, [](double x, double y) { return x + y; });
  }
  void allmax(int tid, int& parity, double* v, int k) {
    allreduce(tid, parity, v, k, [](double x, double y) { return std::max(x, y); });
  }
  const T* crow(int64_t i) const { return p_.C + i * p_.ldc; }
  T* krow(int64_t i) const { return p_.K + i * m_; }
  // Rows of zero weight hold zeros (the four-row kernels read them, with α = 0).
  void build_kernel_rows(int64_t r0, int64_t r1, double eps) {
    for (int64_t i = r0; i < r1; ++i) {
      if (aw_[i] > 0.0) ops_.kernel(krow(i), crow(i), fh_[i], gh_, bw_, 1.0 / eps, m_);
      else std::fill(krow(i), krow(i) + m_, T(0));
    }
  }
  void repair_row(int64_t i, double eps);
  void repair_col(int64_t j, double eps);
  void absorb_rows(int64_t r0, int64_t r1, double eps) {
    for (int64_t i = r0; i < r1; ++i)
      if (aw_[i] > 0.0) { fh_[i] += eps * std::log(al_[i] / aw_[i]); al_[i] = aw_[i]; }
  }
  void absorb_cols(int64_t c0, int64_t c1, double eps) {
    for (int64_t j = c0; j < c1; ++j)
      if (bw_[j] > 0.0) { gh_[j] += eps * std::log(be_[j] / bw_[j]); be_[j] = bw_[j]; }
  }
  int validate(int tid, int& parity, int64_t r0, int64_t r1);
  void finish(int tid, int& parity, int64_t r0, int64_t r1, int64_t c0, int64_t c1, double eps, int status,
              int64_t iters);

  Problem<T> p_;
  const SinkhornArgs& o_;
  int nth_;
  RowOps<T> ops_;
  int64_t n_, m_;
  std::vector<double> rows_, cols_, tpart_;
  std::vector<Slot> part_[2];
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> gen_{0};
  alignas(64) std::atomic<int> sleepers_{0};  // waiters asleep on gen_
  double *aw_, *fh_, *al_, *aold_, *s_, *dr_;  // rows: weight, absorbed potential, scaling, old, sum, step
  double *bw_, *gh_, *be_, *bold_, *t_, *dc_;  // columns
  double absorb_;
  double range_ = 0.0;  // max C − min C (set by validate)
};

template <class T>
void Solver<T>::repair_row(int64_t i, double eps) {
  const T* c = crow(i);
  fh_[i] = neg_eps_lse(m_, eps, [&](int64_t j, double* z) {
    if (!(bw_[j] > 0.0) || !(be_[j] > 0.0)) return false;
    *z = std::log(be_[j]) + (gh_[j] - double(c[j])) / eps;
    return true;
  });
  ops_.kernel(krow(i), c, fh_[i], gh_, bw_, 1.0 / eps, m_);
  al_[i] = aw_[i];
}

template <class T>
void Solver<T>::repair_col(int64_t j, double eps) {
  gh_[j] = neg_eps_lse(n_, eps, [&](int64_t i, double* z) {
    if (!(aw_[i] > 0.0) || !(al_[i] > 0.0)) return false;
    *z = std::log(al_[i]) + (fh_[i] - double(crow(i)[j])) / eps;
    return true;
  });
  for (int64_t i = 0; i < n_; ++i)
    if (aw_[i] > 0.0) krow(i)[j] = T(exp_fast((fh_[i] + gh_[j] - double(crow(i)[j])) / eps));
  be_[j] = bw_[j];
}

// Checks the inputs (finite cost, nonnegative weights summing to 1) and fills the normalized weights;
// the result is the same on every thread.
template <class T>
int Solver<T>::validate(int tid, int& parity, int64_t r0, int64_t r1) {
  double v[2] = {0.0, 0.0};
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  for (int64_t i = r0; i < r1; ++i) {
    double out[3];
    ops_.range(crow(i), m_, out);
    v[0] += out[0];
    lo = std::min(lo, out[1]);
    hi = std::max(hi, out[2]);
  }
  if (tid == 0) {  // weights: O(n + m), one thread
    auto load = [](const T* src, int64_t len, double* dst, int bad, int badsum, double wtol) -> int {
      double sum = 0.0;
      for (int64_t k = 0; k < len; ++k) {
        const double x = src ? double(src[k]) : 1.0 / double(len);
        if (!(x >= 0.0) || !std::isfinite(x)) return bad;
        dst[k] = x;
        sum += x;
      }
      if (!(std::fabs(sum - 1.0) <= wtol)) return badsum;
      for (int64_t k = 0; k < len; ++k) dst[k] /= sum;
      return kConverged;
    };
    int st = load(p_.a_in, n_, aw_, kBadA, kSumA, o_.weight_tol);
    if (st == kConverged) st = load(p_.b_in, m_, bw_, kBadB, kSumB, o_.weight_tol);
    v[1] = double(st);
  }
  allsum(tid, parity, v, 2);
  if (v[0] != 0.0) return kBadCost;  // NaN compares unequal
  double ext[2] = {-lo, hi};  // the cost range max C − min C, for automatic ε-scaling
  allmax(tid, parity, ext, 2);
  range_ = ext[0] + ext[1];
  return int(v[1]);
}

template <class T>
void Solver<T>::run(int tid) {
  int parity = 0;
  const int64_t rchunk = (n_ + nth_ - 1) / nth_, cchunk = (m_ + nth_ - 1) / nth_;
  const int64_t r0 = std::min(n_, tid * rchunk), r1 = std::min(n_, r0 + rchunk);
  const int64_t c0 = std::min(m_, tid * cchunk), c1 = std::min(m_, c0 + cchunk);
  double* tp = tpart_.data() + size_t(tid) * size_t(m_);

  // Every thread returns through the same branches: the decisions below depend only on allsum results.
  const int bad = validate(tid, parity, r0, r1);
  if (bad != kConverged) {
    if (tid == 0) {
      p_.stats[0] = p_.stats[1] = p_.stats[2] = std::numeric_limits<double>::quiet_NaN();
      p_.stats[3] = double(bad);
      *p_.iters = 0;
    }
    return;
  }

  // Cold start: ĝ = 0, f̂_i = min_j C_ij so each kernel row peaks at exactly 1 (no underflow at any ε).
  const double eps0 = scaling_eps0(o_.eps_scaling, o_.eps, o_.eps0, range_);  // = ε without scaling
  double eps = eps0;
  for (int64_t j = c0; j < c1; ++j) { gh_[j] = 0.0; be_[j] = bw_[j]; }
  sync();
  for (int64_t i = r0; i < r1; ++i) {
    al_[i] = aw_[i];
    fh_[i] = aw_[i] > 0.0 ? ops_.rowmin(crow(i), gh_, bw_, m_) : 0.0;
  }
  build_kernel_rows(r0, r1, eps);
  sync();

  int64_t it = 0;  // completed iterations over all stages
  int status = kMaxIters;
  const int64_t half = kOmegaWindow / 2;
  std::vector<double> hist(size_t(half + 1), 0.0);  // residuals of the last half window (ring)
  for (int stage = 0;; ++stage) {
    const bool last = !(eps > o_.eps);
    const double stop_tol = last ? o_.tol : std::max(o_.tol, o_.stage_tol);
    double omega = 1.0;
    int64_t it_stage = 0;
    for (;;) {
      // ---- fused pass: residual of the current state, tentative f-update, t = K̃ᵀα ----
      const bool relax_f = o_.relax && omega > 1.0;
      double red[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};  // err, gain ω, gain 1, repairs, absorb, (unused)
      std::fill(tp, tp + m_, 0.0);
      constexpr int64_t kBlock = 8;  // rows per block: their kernel rows stay in L1 from dot to axpy
      for (int64_t i0 = r0; i0 < r1; i0 += kBlock) {
        const int64_t i1 = std::min(r1, i0 + kBlock);
        int64_t i = i0;
        for (; i + 4 <= i1; i += 4) ops_.dot4(krow(i), m_, be_, m_, s_ + i);
        for (; i < i1; ++i) s_[i] = ops_.dot(krow(i), be_, m_);
        for (i = i0; i < i1; ++i) {
          s_[i] = aw_[i] > 0.0 ? s_[i] : 0.0;
          red[0] += std::fabs(al_[i] * s_[i] - aw_[i]);
        }
        double out[3];
        ops_.update(aw_ + i0, s_ + i0, al_ + i0, aold_ + i0, dr_ + i0, i1 - i0, omega, relax_f, absorb_, out);
        red[1] += out[0]; red[2] += out[1]; red[4] += out[2];
        double w[kBlock];  // α of rows whose update applied; underflowed rows are repaired (and added) later
        for (i = i0; i < i1; ++i) {
          const bool repair = aw_[i] > 0.0 && s_[i] < kTiny;
          red[3] += repair ? 1.0 : 0.0;
          w[i - i0] = repair ? 0.0 : al_[i];
        }
        for (i = i0; i + 4 <= i1; i += 4) ops_.axpy4(tp, w + (i - i0), krow(i), m_, m_);
        for (; i < i1; ++i)
          if (w[i - i0] > 0.0) ops_.axpy(tp, w[i - i0], krow(i), m_);
      }
      allsum(tid, parity, red, 5);
      const double err = red[0];
      hist[size_t(it_stage % (half + 1))] = err;
      if (!std::isfinite(err)) { status = kBreakdown; break; }
      const bool at_check = it_stage > 0 && (it % o_.check_every == 0 || it == o_.max_iters);
      bool stop = false;
      if (last) {
        if (at_check && err <= stop_tol) { status = kConverged; stop = true; }
        else if (it >= o_.max_iters) { status = kMaxIters; stop = true; }
      } else if (it_stage > 0 && (err <= stop_tol || it_stage >= 100 || 2 * it >= o_.max_iters)) {
        stop = true;  // leave the intermediate stage (its state is the warm start of the next)
      }
      if (stop) {
        for (int64_t i = r0; i < r1; ++i) al_[i] = aold_[i];
        break;
      }
      // ---- finish the f-update: repairs, safeguard ----
      // (the barrier of allsum above already made α and the partial sums visible; a second one is
      // needed only when they change again here)
      bool changed = false;
      if (red[3] > 0.0) {
        changed = true;
        for (int64_t i = r0; i < r1; ++i)
          if (aw_[i] > 0.0 && s_[i] < kTiny) {
            repair_row(i, eps);
            ops_.axpy(tp, al_[i], krow(i), m_);
          }
      }
      bool col_pass = false;
      if (relax_f) {
        double gains[kCandidates] = {red[1], 0.0, 0.0, red[2]};
        if (!(gains[0] >= kGainFraction * gains[3] && gains[0] > 0.0)) {
          double g2[2] = {0.0, 0.0};
          ops_.gains(aw_ + r0, dr_ + r0, r1 - r0, omega, g2);
          allsum(tid, parity, g2, 2);
          gains[1] = g2[0]; gains[2] = g2[1];
          const int c = choose_candidate(gains);
          ops_.reapply(aw_ + r0, s_ + r0, al_ + r0, aold_ + r0, dr_ + r0, r1 - r0, candidate(omega, c));
          col_pass = changed = true;
        }
      }
      if (changed) sync();
      // ---- g-update on the owned columns ----
      if (col_pass) {
        for (int64_t j = c0; j < c1; ++j) t_[j] = 0.0;
        for (int64_t i = 0; i < n_; ++i)
          if (al_[i] > 0.0) ops_.axpy(t_ + c0, al_[i], krow(i) + c0, c1 - c0);
      } else {
        for (int64_t j = c0; j < c1; ++j) {
          double acc = 0.0;
          for (int p = 0; p < nth_; ++p) acc += tpart_[size_t(p) * size_t(m_) + size_t(j)];
          t_[j] = acc;
        }
      }
      const bool plain_g = last && ((it + 1) % o_.check_every == 0 || it + 1 >= o_.max_iters);
      const bool relax_g = o_.relax && omega > 1.0 && !plain_g;
      double gr[4];
      ops_.update(bw_ + c0, t_ + c0, be_ + c0, bold_ + c0, dc_ + c0, c1 - c0, omega, relax_g, absorb_, gr);
      gr[3] = 0.0;
      for (int64_t j = c0; j < c1; ++j)
        if (bw_[j] > 0.0 && t_[j] < kTiny) { repair_col(j, eps); gr[3] += 1.0; }
      allsum(tid, parity, gr, 4);  // its barrier also publishes β for the next pass
      bool g_changed = false;
      if (relax_g && !(gr[0] >= kGainFraction * gr[1] && gr[0] > 0.0)) {
        g_changed = true;
        double g2[2] = {0.0, 0.0};
        ops_.gains(bw_ + c0, dc_ + c0, c1 - c0, omega, g2);
        allsum(tid, parity, g2, 2);
        const double gains[kCandidates] = {gr[0], g2[0], g2[1], gr[1]};
        const int c = choose_candidate(gains);
        ops_.reapply(bw_ + c0, t_ + c0, be_ + c0, bold_ + c0, dc_ + c0, c1 - c0, candidate(omega, c));
      }
      ++it;
      ++it_stage;
      // ---- absorb large scalings into the potentials (each thread its rows and columns) ----
      if (red[4] > 0.0 || gr[2] > 0.0 || gr[3] > 0.0) {
        absorb_rows(r0, r1, eps);
        absorb_cols(c0, c1, eps);
        sync();  // the rows read every ĝ and β
        build_kernel_rows(r0, r1, eps);
        g_changed = false;
      }
      // ω from the residual ratio over the last half window (residuals are those measured at the
      // start of each pass, i.e. of the states after it_stage − half … it_stage − 1 iterations)
      if (o_.relax && it_stage >= kOmegaStart && it_stage % kOmegaWindow == 0) {
        const double e_now = hist[size_t((it_stage - 1) % (half + 1))];
        const double e_then = hist[size_t((it_stage - 1 - half) % (half + 1))];
        omega = omega_update(omega, e_now, e_then, int(half));
      }
      if (g_changed) sync();
    }
    if (status == kBreakdown || last || it >= o_.max_iters) break;
    // ---- next ε stage: absorb everything at the current ε, rebuild the kernel at the next ----
    absorb_rows(r0, r1, eps);
    absorb_cols(c0, c1, eps);
    eps = stage_eps(o_.eps, eps0, o_.eps_q, stage + 1);
    sync();
    build_kernel_rows(r0, r1, eps);
    sync();
  }
  finish(tid, parity, r0, r1, c0, c1, eps, status, it);
}

// Potentials (c-transforms on zero-weight entries), the plan over the kernel, value and statistics.
template <class T>
void Solver<T>::finish(int tid, int& parity, int64_t r0, int64_t r1, int64_t c0, int64_t c1, double eps, int status,
                       int64_t iters) {
  sync();
  // f and g of the positive-weight entries, kept in s_/t_ (double) until the plan pass
  for (int64_t i = r0; i < r1; ++i) s_[i] = aw_[i] > 0.0 ? fh_[i] + eps * std::log(al_[i] / aw_[i]) : 0.0;
  for (int64_t j = c0; j < c1; ++j) t_[j] = bw_[j] > 0.0 ? gh_[j] + eps * std::log(be_[j] / bw_[j]) : 0.0;
  sync();
  // zero-weight rows/columns: the value a Sinkhorn update would give them (c-transform)
  for (int64_t i = r0; i < r1; ++i)
    if (!(aw_[i] > 0.0)) {
      const T* c = crow(i);
      s_[i] = neg_eps_lse(m_, eps, [&](int64_t j, double* z) {
        if (!(bw_[j] > 0.0)) return false;
        *z = std::log(bw_[j]) + (t_[j] - double(c[j])) / eps;
        return true;
      });
    }
  for (int64_t j = c0; j < c1; ++j)
    if (!(bw_[j] > 0.0)) {
      t_[j] = neg_eps_lse(n_, eps, [&](int64_t i, double* z) {
        if (!(aw_[i] > 0.0)) return false;
        *z = std::log(aw_[i]) + (s_[i] - double(crow(i)[j])) / eps;
        return true;
      });
    }
  sync();
  double acc[3] = {0.0, 0.0, 0.0};  // value, transport cost, row error
  for (int64_t i = r0; i < r1; ++i) {
    double out[3] = {0.0, 0.0, 0.0};
    if (al_[i] > 0.0) ops_.plan(krow(i), crow(i), al_[i], be_, t_, m_, out);
    else std::fill(krow(i), krow(i) + m_, T(0));
    acc[0] += s_[i] * out[0] + out[2];
    acc[1] += out[1];
    acc[2] += std::fabs(out[0] - aw_[i]);
    p_.f_out[i] = T(s_[i]);
  }
  for (int64_t j = c0; j < c1; ++j) p_.g_out[j] = T(t_[j]);
  allsum(tid, parity, acc, 3);
  if (tid == 0) {
    p_.stats[0] = acc[0];
    p_.stats[1] = acc[1];
    p_.stats[2] = acc[2];
    p_.stats[3] = double(status);
    *p_.iters = iters;
  }
}

template <class T>
Problem<T> problem_of(const SinkhornArgs& a, int64_t b) {
  Problem<T> p;
  p.n = a.n; p.m = a.m;
  p.C = static_cast<const T*>(a.cost) + b * a.c_sb;
  p.ldc = a.c_si;
  p.a_in = a.a ? static_cast<const T*>(a.a) + b * a.a_sb : nullptr;
  p.b_in = a.b ? static_cast<const T*>(a.b) + b * a.b_sb : nullptr;
  p.K = static_cast<T*>(a.plan) + b * a.n * a.m;
  p.f_out = static_cast<T*>(a.f) + b * a.n;
  p.g_out = static_cast<T*>(a.g) + b * a.m;
  p.stats = a.stats + 4 * b;
  p.iters = a.iters + b;
  return p;
}

// Threads only for enough work. A team splitting one problem meets at barriers every iteration (~10 µs
// of work at 256 x 256), and on a machine whose cores other processes hold each barrier can wait a
// scheduler time slice for a descheduled member (measured 33 ms against 0.7 ms for one thread at
// n = 256 with a busy loop per core, bench/bench_threads.py). So a batch runs one problem per thread on
// diffcore's pool (cpu/pool.h: no barrier, and no waiting for a helper that has not started) from 2^19
// kernel entries (~10 ms of one thread), and a team splits one problem only from 2^22 entries, where
// one iteration is milliseconds of work. Below both, one thread. The batch path and the single thread
// give the same bits (each problem is solved alone either way).
constexpr int64_t kTeamEntries = 1 << 22;
constexpr int64_t kBatchEntries = 1 << 19;
static_assert(sizeof(std::atomic<int>) == sizeof(int), "the team barrier sleeps on an atomic<int> as a futex word");

template <class T>
void sinkhorn_typed(const SinkhornArgs& a, int nthreads) {
  const RowOps<T> ops = row_ops<T>();
  int nt = std::max(1, nthreads);
#ifndef DIFFCORE_WITH_OPENMP
  nt = 1;
#endif
  if (nthreads > 1 && a.B > 1 && a.B * a.n * a.m >= kBatchEntries && (a.B >= nt || a.n * a.m < kTeamEntries)) {
    parallel_pieces(a.B, int(std::min<int64_t>(nthreads, a.B)), 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        Solver<T> s(problem_of<T>(a, b), a, 1, ops);
        s.run(0);
      }
    });
    return;
  }
  const int team = (a.n * a.m >= kTeamEntries && !forked_child())
                       ? int(std::min<int64_t>(nt, std::max<int64_t>(a.n, a.m))) : 1;
  for (int64_t b = 0; b < a.B; ++b) {
    if (team == 1) {
      Solver<T> s(problem_of<T>(a, b), a, 1, ops);
      s.run(0);
      continue;
    }
#ifdef DIFFCORE_WITH_OPENMP
    std::unique_ptr<Solver<T>> s;
#pragma omp parallel num_threads(team)
    {
#pragma omp single
      s.reset(new Solver<T>(problem_of<T>(a, b), a, omp_get_num_threads(), ops));  // the team OpenMP gave us
      s->run(omp_get_thread_num());
    }
#endif
  }
}

}  // namespace

namespace {

template <class T>
void sinkhorn_split_typed(const SinkhornArgs& a) {
  const int64_t P = std::max<int64_t>(1, a.blocks);
  std::vector<double> work(size_t(ot::split_work(a.n, a.m, P)), 0.0);
  for (int64_t b = 0; b < a.B; ++b) {
    ot::SerialExec ex;
    ex.P = P;
    ot::SplitSolver<T, ot::SerialExec> s(ot::split_problem<T>(a, b, P, work.data()), a, ex);
    s.run();
  }
}

}  // namespace

void sinkhorn_split_cpu(const SinkhornArgs& a, DType dtype) {
  if (a.B == 0) return;
  if (dtype == DType::F64) sinkhorn_split_typed<double>(a);
  else sinkhorn_split_typed<float>(a);
}

void sinkhorn_cpu(const SinkhornArgs& a, DType dtype, int nthreads) {
  if (a.B == 0) return;
  if (dtype == DType::F64) sinkhorn_typed<double>(a, nthreads);
  else sinkhorn_typed<float>(a, nthreads);
}

}  // namespace dc
