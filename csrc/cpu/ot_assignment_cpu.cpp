// Batched exact assignment on the CPU: one Jonker–Volgenant solve (ot/lapjv.h) per problem, OpenMP
// across problems; the solver is compiled for the baseline target and for AVX2 + FMA (cpu/ot_isa.h).
#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "cpu/ot_isa.h"
#include "cpu/pool.h"
#include "ot/assignment.h"
#include "ot/lapjv.h"

namespace dc {
namespace {

double lapjv_base(const double* C, int64_t ldc, int64_t n, int64_t* perm, LapWork& w) {
  return lapjv_body<lap::ScalarOps>(C, ldc, n, perm, w);
}

#if DC_ISA_HAS_AVX2
#define DC_AVX2_INLINE __attribute__((target("avx2,fma"))) static inline

// The scans of lap::ScalarOps with four columns per AVX2 instruction; each lane keeps its own running
// minimum (and first column) and the lanes are merged in column order, so the results, first-occurrence
// ties included, are those of the scalar loops.
struct Avx2Ops {
  DC_AVX2_INLINE __m256d iota() { return _mm256_set_pd(3.0, 2.0, 1.0, 0.0); }

  // Merge lane minima (value, first column) and finish with the scalar tail [j0, n).
  DC_AVX2_INLINE double lanes_argmin(__m256d vm, __m256d vi, int64_t* jmin) {
    alignas(32) double m[4], ix[4];
    _mm256_store_pd(m, vm);
    _mm256_store_pd(ix, vi);
    double mn = m[0], jm = ix[0];
    for (int l = 1; l < 4; ++l)
      if (m[l] < mn || (m[l] == mn && ix[l] < jm)) { mn = m[l]; jm = ix[l]; }
    *jmin = int64_t(jm);
    return mn;
  }

  DC_AVX2_INLINE double min2(const double* c, const double* v, int64_t n, int64_t* j1, double* u2) {
    const __m256d inf = _mm256_set1_pd(lap::kInf), four = _mm256_set1_pd(4.0);
    __m256d m1 = inf, m2 = inf, i1 = _mm256_setzero_pd(), jj = iota();
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const __m256d h = _mm256_sub_pd(_mm256_loadu_pd(c + j), _mm256_loadu_pd(v + j));
      const __m256d lt = _mm256_cmp_pd(h, m1, _CMP_LT_OQ);
      m2 = _mm256_blendv_pd(_mm256_min_pd(h, m2), m1, lt);
      m1 = _mm256_blendv_pd(m1, h, lt);
      i1 = _mm256_blendv_pd(i1, jj, lt);
      jj = _mm256_add_pd(jj, four);
    }
    alignas(32) double a1[4], a2[4], ai[4];
    _mm256_store_pd(a1, m1);
    _mm256_store_pd(a2, m2);
    _mm256_store_pd(ai, i1);
    int64_t best = 0;
    for (int l = 1; l < 4; ++l)
      if (a1[l] < a1[best] || (a1[l] == a1[best] && ai[l] < ai[best])) best = l;
    double U1 = a1[best], U2 = lap::kInf;
    int64_t J1 = int64_t(ai[best]);
    for (int l = 0; l < 4; ++l) {
      U2 = a2[l] < U2 ? a2[l] : U2;
      if (l != best) U2 = a1[l] < U2 ? a1[l] : U2;
    }
    for (; j < n; ++j) {
      const double h = c[j] - v[j];
      if (h < U1) { U2 = U1; U1 = h; J1 = j; }
      else if (h < U2) { U2 = h; }
    }
    *j1 = J1;
    *u2 = U2;
    return U1;
  }

  DC_AVX2_INLINE double init(const double* c, const double* v, double* d, double* pred, double* todo,
                             const double* isfree, int64_t n, double df, int64_t* jmin, double* fmin,
                             int64_t* jfree) {
    const __m256d inf = _mm256_set1_pd(lap::kInf), four = _mm256_set1_pd(4.0), one = _mm256_set1_pd(1.0);
    const __m256d zero = _mm256_setzero_pd(), vdf = _mm256_set1_pd(df);
    __m256d vm = inf, vi = zero, fm = inf, fi = _mm256_set1_pd(-1.0), jj = iota();
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const __m256d h = _mm256_sub_pd(_mm256_loadu_pd(c + j), _mm256_loadu_pd(v + j));
      _mm256_storeu_pd(d + j, h);
      _mm256_storeu_pd(pred + j, vdf);
      _mm256_storeu_pd(todo + j, one);
      const __m256d lt = _mm256_cmp_pd(h, vm, _CMP_LT_OQ);
      vm = _mm256_blendv_pd(vm, h, lt);
      vi = _mm256_blendv_pd(vi, jj, lt);
      const __m256d fr = _mm256_and_pd(_mm256_cmp_pd(_mm256_loadu_pd(isfree + j), zero, _CMP_NEQ_OQ),
                                       _mm256_cmp_pd(h, fm, _CMP_LT_OQ));
      fm = _mm256_blendv_pd(fm, h, fr);
      fi = _mm256_blendv_pd(fi, jj, fr);
      jj = _mm256_add_pd(jj, four);
    }
    double mn = lanes_argmin(vm, vi, jmin);
    double mf = lanes_argmin(fm, fi, jfree);
    for (; j < n; ++j) {
      const double h = c[j] - v[j];
      d[j] = h;
      pred[j] = df;
      todo[j] = 1.0;
      if (h < mn) { mn = h; *jmin = j; }
      if (isfree[j] != 0.0 && h < mf) { mf = h; *jfree = j; }
    }
    *fmin = mf;
    return mn;
  }

  DC_AVX2_INLINE double relax(const double* c, const double* v, double* d, double* pred, const double* todo,
                              const double* isfree, int64_t n, double u1, double di, int64_t* jmin, double* fmin,
                              int64_t* jfree) {
    const __m256d inf = _mm256_set1_pd(lap::kInf), four = _mm256_set1_pd(4.0), zero = _mm256_setzero_pd();
    const __m256d vu = _mm256_set1_pd(u1), vdi = _mm256_set1_pd(di), none = _mm256_set1_pd(-1.0);
    __m256d vm = inf, vi = none, fm = inf, fi = none, jj = iota();
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      const __m256d t = _mm256_cmp_pd(_mm256_loadu_pd(todo + j), zero, _CMP_NEQ_OQ);
      const __m256d h = _mm256_sub_pd(_mm256_sub_pd(_mm256_loadu_pd(c + j), _mm256_loadu_pd(v + j)), vu);
      __m256d dj = _mm256_loadu_pd(d + j);
      const __m256d better = _mm256_and_pd(t, _mm256_cmp_pd(h, dj, _CMP_LT_OQ));
      dj = _mm256_blendv_pd(dj, h, better);
      _mm256_storeu_pd(d + j, dj);
      _mm256_storeu_pd(pred + j, _mm256_blendv_pd(_mm256_loadu_pd(pred + j), vdi, better));
      const __m256d val = _mm256_blendv_pd(inf, dj, t);
      const __m256d lt = _mm256_cmp_pd(val, vm, _CMP_LT_OQ);
      vm = _mm256_blendv_pd(vm, val, lt);
      vi = _mm256_blendv_pd(vi, jj, lt);
      const __m256d fr = _mm256_and_pd(_mm256_cmp_pd(_mm256_loadu_pd(isfree + j), zero, _CMP_NEQ_OQ),
                                       _mm256_cmp_pd(val, fm, _CMP_LT_OQ));
      fm = _mm256_blendv_pd(fm, val, fr);
      fi = _mm256_blendv_pd(fi, jj, fr);
      jj = _mm256_add_pd(jj, four);
    }
    double mn = lanes_argmin(vm, vi, jmin);
    double mf = lanes_argmin(fm, fi, jfree);
    for (; j < n; ++j) {
      if (todo[j] == 0.0) continue;
      const double h = c[j] - v[j] - u1;
      if (h < d[j]) { d[j] = h; pred[j] = di; }
      if (d[j] < mn) { mn = d[j]; *jmin = j; }
      if (isfree[j] != 0.0 && d[j] < mf) { mf = d[j]; *jfree = j; }
    }
    *fmin = mf;
    return mn;
  }
};

DC_TARGET_AVX2 double lapjv_avx2(const double* C, int64_t ldc, int64_t n, int64_t* perm, LapWork& w) {
  return lapjv_body<Avx2Ops>(C, ldc, n, perm, w);
}
#endif

}  // namespace

int assignment_cpu(const AssignmentArgs& a, int nthreads) {
  // finite costs only: an infinite entry may make the problem infeasible, NaN has no order
  int64_t bad = -1;
  for (int64_t b = 0; b < a.B && bad < 0; ++b) {
    const double* C = a.cost + b * a.c_sb;
    for (int64_t i = 0; i < a.n && bad < 0; ++i) {
      const double* c = C + i * a.c_si;
      double acc = 0.0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < a.n; ++j) acc += c[j] * 0.0;
      if (acc != 0.0) bad = b;
    }
  }
  if (bad >= 0) return 1;
  auto solve = &lapjv_base;
#if DC_ISA_HAS_AVX2
  if (cpu_has_avx2_fma()) solve = &lapjv_avx2;
#endif
  // one problem per thread on diffcore's pool (cpu/pool.h) when the batch is worth waking a helper:
  // from 2^17 cost entries
  const bool parallel = nthreads > 1 && a.B > 1 && a.B * a.n * a.n >= (int64_t(1) << 17);
  parallel_pieces(a.B, parallel ? int(std::min<int64_t>(nthreads, a.B)) : 1, 1, [&](int64_t lo, int64_t hi) {
    LapWork w;
    for (int64_t b = lo; b < hi; ++b) a.total[b] = solve(a.cost + b * a.c_sb, a.c_si, a.n, a.perm + b * a.n, w);
  });
  return 0;
}

}  // namespace dc
