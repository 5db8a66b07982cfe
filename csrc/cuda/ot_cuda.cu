// CUDA Sinkhorn solvers: the whole solve (every iteration, every ε stage) runs on the device with no
// host round trip, on the caller's stream. Same algorithm and decisions as the CPU solver
// (cpu/ot_cpu.cpp) over the shared element math of ot/ot_math.h: stabilized scaling form with
// absorption, safeguarded over-relaxation, optional ε-scaling. Two kernels:
//
// * one thread block per problem (sinkhorn_kernel), for batches of small problems (the minibatch
//   sizes of OT-CFM, Tong et al. 2024): a warp per row for K̃β (coalesced along the row), a thread per
//   column for K̃ᵀα (coalesced across the warp), a thread per row/column for the O(n + m) updates;
//   block reductions in a fixed order, so every thread takes the same branches;
// * several blocks per problem (sinkhorn_split_kernel) for problems of at least 2^20 entries when the
//   batch leaves most of the GPU idle: the phases of ot/sinkhorn_blocks.h, with a barrier over the
//   problem's blocks between phases. The launch is cooperative, which guarantees that all blocks are
//   resident at once, so the spinning barrier cannot wait for a block that never starts.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/launch.cuh"
#include "ot/ot_math.h"
#include "ot/sinkhorn.h"
#include "ot/sinkhorn_blocks.h"

namespace dc {
namespace {

using namespace ot;

constexpr int kOtThreads = 256;
constexpr int kWarps = kOtThreads / 32;
constexpr int kMaxRed = 8;

struct Shared {
  double red[kWarps][kMaxRed];
  double out[kMaxRed];
};

__device__ __forceinline__ double warp_sum(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  return __shfl_sync(0xffffffffu, x, 0);
}

__device__ __forceinline__ double warp_min(double x) {
  for (int o = 16; o > 0; o >>= 1) x = fmin(x, __shfl_down_sync(0xffffffffu, x, o));
  return __shfl_sync(0xffffffffu, x, 0);
}

// Sums K values over the block into every thread's v (fixed order: identical on every thread).
template <int K>
__device__ void block_sum(double* v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < K; ++q) {
    const double x = warp_sum(v[q]);
    if (lane == 0) sh.red[warp][q] = x;
  }
  __syncthreads();
  if (threadIdx.x < K) {
    double acc = 0.0;
    for (int w = 0; w < kWarps; ++w) acc += sh.red[w][threadIdx.x];
    sh.out[threadIdx.x] = acc;
  }
  __syncthreads();
#pragma unroll
  for (int q = 0; q < K; ++q) v[q] = sh.out[q];
  __syncthreads();
}

// Minimum of K values over the block into every thread's v.
template <int K>
__device__ void block_min(double* v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int q = 0; q < K; ++q) {
    const double x = warp_min(v[q]);
    if (lane == 0) sh.red[warp][q] = x;
  }
  __syncthreads();
  if (threadIdx.x < K) {
    double acc = sh.red[0][threadIdx.x];
    for (int w = 1; w < kWarps; ++w) acc = fmin(acc, sh.red[w][threadIdx.x]);
    sh.out[threadIdx.x] = acc;
  }
  __syncthreads();
#pragma unroll
  for (int q = 0; q < K; ++q) v[q] = sh.out[q];
  __syncthreads();
}

template <class T>
struct Dev {
  int64_t n, m;
  const T* C; int64_t ldc;
  T* K;
  double *aw, *fh, *al, *aold, *s, *dr;
  double *bw, *gh, *be, *bold, *t, *dc;
  double absorb;

  __device__ const T* crow(int64_t i) const { return C + i * ldc; }
  __device__ T* krow(int64_t i) const { return K + i * m; }

  // K̃ = exp((f̂ + ĝ − C)/ε); zero on rows and columns of zero weight (the column sums read every row).
  __device__ void build_kernel(double eps) {
    const double ie = 1.0 / eps;
    for (int64_t e = threadIdx.x; e < n * m; e += blockDim.x) {
      const int64_t i = e / m, j = e - i * m;
      krow(i)[j] = T((aw[i] > 0.0 && bw[j] > 0.0) ? exp((fh[i] + gh[j] - double(crow(i)[j])) * ie) : 0.0);
    }
  }
  // −ε log Σ exp(log w_k + (p_k − c_k)/ε) for a row (over columns) by max subtraction; then the row
  // of K̃ at the new f̂_i and α_i = a_i (exact plain f-update of that row).
  __device__ void repair_row(int64_t i, double eps) {
    const T* c = crow(i);
    double mx = -INFINITY;
    for (int64_t j = 0; j < m; ++j)
      if (bw[j] > 0.0 && be[j] > 0.0) mx = fmax(mx, log(be[j]) + (gh[j] - double(c[j])) / eps);
    double sum = 0.0;
    for (int64_t j = 0; j < m; ++j)
      if (bw[j] > 0.0 && be[j] > 0.0) sum += exp(log(be[j]) + (gh[j] - double(c[j])) / eps - mx);
    fh[i] = -eps * (mx + log(sum));
    for (int64_t j = 0; j < m; ++j) krow(i)[j] = T(bw[j] > 0.0 ? exp((fh[i] + gh[j] - double(c[j])) / eps) : 0.0);
    al[i] = aw[i];
  }
  __device__ void repair_col(int64_t j, double eps) {
    double mx = -INFINITY;
    for (int64_t i = 0; i < n; ++i)
      if (aw[i] > 0.0 && al[i] > 0.0) mx = fmax(mx, log(al[i]) + (fh[i] - double(crow(i)[j])) / eps);
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i)
      if (aw[i] > 0.0 && al[i] > 0.0) sum += exp(log(al[i]) + (fh[i] - double(crow(i)[j])) / eps - mx);
    gh[j] = -eps * (mx + log(sum));
    for (int64_t i = 0; i < n; ++i)
      if (aw[i] > 0.0) krow(i)[j] = T(exp((fh[i] + gh[j] - double(crow(i)[j])) / eps));
    be[j] = bw[j];
  }
  __device__ void absorb_all(double eps) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      if (aw[i] > 0.0) { fh[i] += eps * log(al[i] / aw[i]); al[i] = aw[i]; }
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x)
      if (bw[j] > 0.0) { gh[j] += eps * log(be[j] / bw[j]); be[j] = bw[j]; }
  }
};

// Weights into w (normalized), returning a status; inputs checked as on the CPU.
template <class T>
__device__ int load_weights(const T* src, int64_t len, double* w, double wtol, int bad, int badsum, Shared& sh) {
  double v[2] = {0.0, 0.0};  // sum, bad entries
  for (int64_t k = threadIdx.x; k < len; k += blockDim.x) {
    const double x = src ? double(src[k]) : 1.0 / double(len);
    if (!(x >= 0.0) || !isfinite(x)) v[1] += 1.0;
    w[k] = x;
    v[0] += x;
  }
  block_sum<2>(v, sh);
  if (v[1] > 0.0) return bad;
  if (!(fabs(v[0] - 1.0) <= wtol)) return badsum;
  for (int64_t k = threadIdx.x; k < len; k += blockDim.x) w[k] /= v[0];
  return kConverged;
}

template <class T>
__global__ void __launch_bounds__(kOtThreads) sinkhorn_kernel(SinkhornArgs o) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int64_t n = o.n, m = o.m;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double* wk = o.work + b * o.work_sb;
  Dev<T> p;
  p.n = n; p.m = m;
  p.C = static_cast<const T*>(o.cost) + b * o.c_sb; p.ldc = o.c_si;
  p.K = static_cast<T*>(o.plan) + b * n * m;
  p.aw = wk; p.fh = wk + n; p.al = wk + 2 * n; p.aold = wk + 3 * n; p.s = wk + 4 * n; p.dr = wk + 5 * n;
  double* wc = wk + 6 * n;
  p.bw = wc; p.gh = wc + m; p.be = wc + 2 * m; p.bold = wc + 3 * m; p.t = wc + 4 * m; p.dc = wc + 5 * m;
  p.absorb = sizeof(T) == 4 ? kAbsorbF32 : kAbsorb;
  double* stats = o.stats + 4 * b;
  T* f_out = static_cast<T*>(o.f) + b * n;
  T* g_out = static_cast<T*>(o.g) + b * m;

  // ---- validation (and the cost range for automatic ε-scaling) ----
  double range = 0.0;
  {
    double v[1] = {0.0}, ext[2] = {INFINITY, INFINITY};  // (min, −max)
    for (int64_t e = threadIdx.x; e < n * m; e += blockDim.x) {
      const double c = double(p.crow(e / m)[e % m]);
      v[0] += c * 0.0;
      ext[0] = fmin(ext[0], c);
      ext[1] = fmin(ext[1], -c);
    }
    block_sum<1>(v, sh);
    block_min<2>(ext, sh);
    range = -ext[1] - ext[0];
    int st = v[0] != 0.0 ? int(kBadCost) : int(kConverged);
    if (st == kConverged)
      st = load_weights(o.a ? static_cast<const T*>(o.a) + b * o.a_sb : static_cast<const T*>(nullptr), n, p.aw,
                        o.weight_tol, kBadA, kSumA, sh);
    if (st == kConverged)
      st = load_weights(o.b ? static_cast<const T*>(o.b) + b * o.b_sb : static_cast<const T*>(nullptr), m, p.bw,
                        o.weight_tol, kBadB, kSumB, sh);
    if (st != kConverged) {
      if (threadIdx.x == 0) {
        stats[0] = stats[1] = stats[2] = NAN;
        stats[3] = double(st);
        o.iters[b] = 0;
      }
      return;
    }
  }

  // ---- cold start: ĝ = 0, f̂_i = min_j C_ij (each kernel row peaks at 1) ----
  const double eps0 = scaling_eps0(o.eps_scaling, o.eps, o.eps0, range);  // = ε without scaling
  double eps = eps0;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) { p.gh[j] = 0.0; p.be[j] = p.bw[j]; }
  __syncthreads();
  for (int64_t i = warp; i < n; i += kWarps) {
    double mn = INFINITY;
    for (int64_t j = lane; j < m; j += 32)
      if (p.bw[j] > 0.0) mn = fmin(mn, double(p.crow(i)[j]));
    mn = warp_min(mn);
    if (lane == 0) { p.fh[i] = p.aw[i] > 0.0 ? mn : 0.0; p.al[i] = p.aw[i]; }
  }
  __syncthreads();
  p.build_kernel(eps);
  __syncthreads();

  int64_t it = 0;
  int status = kMaxIters;
  constexpr int half = kOmegaWindow / 2;
  double hist[half + 1];
  for (int q = 0; q <= half; ++q) hist[q] = 0.0;
  for (int stage = 0;; ++stage) {
    const bool last = !(eps > o.eps);
    const double stop_tol = last ? o.tol : fmax(o.tol, o.stage_tol);
    double omega = 1.0;
    int64_t it_stage = 0;
    for (;;) {
      // ---- s = K̃β (warp per row), residual, tentative f-update ----
      for (int64_t i = warp; i < n; i += kWarps) {
        double acc = 0.0;
        if (p.aw[i] > 0.0) {
          const T* k = p.krow(i);
          for (int64_t j = lane; j < m; j += 32) acc += double(k[j]) * p.be[j];
        }
        acc = warp_sum(acc);
        if (lane == 0) p.s[i] = p.aw[i] > 0.0 ? acc : 0.0;
      }
      __syncthreads();
      const bool relax_f = o.relax && omega > 1.0;
      double red[5] = {0.0, 0.0, 0.0, 0.0, 0.0};  // err, gain ω, gain 1, repairs, absorb
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        red[0] += fabs(p.al[i] * p.s[i] - p.aw[i]);
        const ScalingStep r = relax_f ? scaling_relaxed(p.aw[i], p.s[i], p.al[i], omega, p.absorb)
                                      : scaling_plain(p.aw[i], p.s[i], p.al[i], p.absorb);
        p.aold[i] = p.al[i];
        p.dr[i] = r.delta;
        p.al[i] = r.x;
        red[1] += r.gain_w; red[2] += r.gain_1; red[4] += r.moved;
        if (p.aw[i] > 0.0 && p.s[i] < kTiny) red[3] += 1.0;
      }
      block_sum<5>(red, sh);
      const double err = red[0];
      hist[it_stage % (half + 1)] = err;
      if (!isfinite(err)) { status = kBreakdown; break; }
      const bool at_check = it_stage > 0 && (it % o.check_every == 0 || it == o.max_iters);
      bool stop = false;
      if (last) {
        if (at_check && err <= stop_tol) { status = kConverged; stop = true; }
        else if (it >= o.max_iters) { status = kMaxIters; stop = true; }
      } else if (it_stage > 0 && (err <= stop_tol || it_stage >= 100 || 2 * it >= o.max_iters)) {
        stop = true;
      }
      if (stop) {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) p.al[i] = p.aold[i];
        __syncthreads();
        break;
      }
      if (red[3] > 0.0) {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
          if (p.aw[i] > 0.0 && p.s[i] < kTiny) p.repair_row(i, eps);
      }
      if (relax_f && !(red[1] >= kGainFraction * red[2] && red[1] > 0.0)) {
        double g2[2] = {0.0, 0.0};
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
          double x1, x2;
          candidate_gains(p.aw[i], p.dr[i], omega, &x1, &x2);
          g2[0] += x1; g2[1] += x2;
        }
        block_sum<2>(g2, sh);
        const double gains[kCandidates] = {red[1], g2[0], g2[1], red[2]};
        const double w = candidate(omega, choose_candidate(gains));
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
          if (scaling_active(p.aw[i], p.s[i])) p.al[i] = p.aold[i] * exp(w * p.dr[i]);
      }
      __syncthreads();
      // ---- t = K̃ᵀα (thread per column), g-update ----
      const bool plain_g = last && ((it + 1) % o.check_every == 0 || it + 1 >= o.max_iters);
      const bool relax_g = o.relax && omega > 1.0 && !plain_g;
      double gr[4] = {0.0, 0.0, 0.0, 0.0};  // gain ω, gain 1, absorb, repairs
      for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
        double acc = 0.0;
        if (p.bw[j] > 0.0)
          for (int64_t i = 0; i < n; ++i) acc += p.al[i] * double(p.krow(i)[j]);
        p.t[j] = acc;
        const ScalingStep r = relax_g ? scaling_relaxed(p.bw[j], acc, p.be[j], omega, p.absorb)
                                      : scaling_plain(p.bw[j], acc, p.be[j], p.absorb);
        p.bold[j] = p.be[j];
        p.dc[j] = r.delta;
        p.be[j] = r.x;
        gr[0] += r.gain_w; gr[1] += r.gain_1; gr[2] += r.moved;
        if (p.bw[j] > 0.0 && acc < kTiny) { p.repair_col(j, eps); gr[3] += 1.0; }
      }
      block_sum<4>(gr, sh);
      if (relax_g && !(gr[0] >= kGainFraction * gr[1] && gr[0] > 0.0)) {
        double g2[2] = {0.0, 0.0};
        for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
          double x1, x2;
          candidate_gains(p.bw[j], p.dc[j], omega, &x1, &x2);
          g2[0] += x1; g2[1] += x2;
        }
        block_sum<2>(g2, sh);
        const double gains[kCandidates] = {gr[0], g2[0], g2[1], gr[1]};
        const double w = candidate(omega, choose_candidate(gains));
        for (int64_t j = threadIdx.x; j < m; j += blockDim.x)
          if (scaling_active(p.bw[j], p.t[j])) p.be[j] = p.bold[j] * exp(w * p.dc[j]);
      }
      ++it;
      ++it_stage;
      __syncthreads();
      if (red[4] > 0.0 || gr[2] > 0.0 || gr[3] > 0.0) {
        p.absorb_all(eps);
        __syncthreads();
        p.build_kernel(eps);
        __syncthreads();
      }
      if (o.relax && it_stage >= kOmegaStart && it_stage % kOmegaWindow == 0)
        omega = omega_update(omega, hist[(it_stage - 1) % (half + 1)], hist[(it_stage - 1 - half) % (half + 1)], half);
    }
    if (status == kBreakdown || last || it >= o.max_iters) break;
    p.absorb_all(eps);
    eps = stage_eps(o.eps, eps0, o.eps_q, stage + 1);
    __syncthreads();
    p.build_kernel(eps);
    __syncthreads();
  }

  // ---- potentials, zero-weight c-transforms, plan, statistics ----
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    p.s[i] = p.aw[i] > 0.0 ? p.fh[i] + eps * log(p.al[i] / p.aw[i]) : 0.0;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x)
    p.t[j] = p.bw[j] > 0.0 ? p.gh[j] + eps * log(p.be[j] / p.bw[j]) : 0.0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (p.aw[i] > 0.0) continue;
    double mx = -INFINITY, sum = 0.0;
    for (int64_t j = 0; j < m; ++j)
      if (p.bw[j] > 0.0) mx = fmax(mx, log(p.bw[j]) + (p.t[j] - double(p.crow(i)[j])) / eps);
    for (int64_t j = 0; j < m; ++j)
      if (p.bw[j] > 0.0) sum += exp(log(p.bw[j]) + (p.t[j] - double(p.crow(i)[j])) / eps - mx);
    p.s[i] = -eps * (mx + log(sum));
  }
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    if (p.bw[j] > 0.0) continue;
    double mx = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < n; ++i)
      if (p.aw[i] > 0.0) mx = fmax(mx, log(p.aw[i]) + (p.s[i] - double(p.crow(i)[j])) / eps);
    for (int64_t i = 0; i < n; ++i)
      if (p.aw[i] > 0.0) sum += exp(log(p.aw[i]) + (p.s[i] - double(p.crow(i)[j])) / eps - mx);
    p.t[j] = -eps * (mx + log(sum));
  }
  __syncthreads();
  double acc[3] = {0.0, 0.0, 0.0};  // value, transport cost, row error
  for (int64_t i = warp; i < n; i += kWarps) {
    T* k = p.krow(i);
    const T* c = p.crow(i);
    const double al = p.al[i];
    double rs = 0.0, tc = 0.0, gs = 0.0;
    for (int64_t j = lane; j < m; j += 32) {
      const T pij = al > 0.0 ? T(al * double(k[j]) * p.be[j]) : T(0);
      k[j] = pij;
      rs += double(pij);
      tc += double(pij) * double(c[j]);
      gs += double(pij) * p.t[j];
    }
    rs = warp_sum(rs); tc = warp_sum(tc); gs = warp_sum(gs);
    if (lane == 0) {
      acc[0] += p.s[i] * rs + gs;
      acc[1] += tc;
      acc[2] += fabs(rs - p.aw[i]);
    }
  }
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f_out[i] = T(p.s[i]);
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) g_out[j] = T(p.t[j]);
  block_sum<3>(acc, sh);
  if (threadIdx.x == 0) {
    stats[0] = acc[0];
    stats[1] = acc[1];
    stats[2] = acc[2];
    stats[3] = double(status);
    o.iters[b] = it;
  }
}

// ------------------------------------------------------------------------------------------------
// Several blocks per problem: the policies of ot/sinkhorn_blocks.h for a CUDA block (a warp per row
// group) and for the blocks of one problem (blockIdx.x of gridDim.x; blockIdx.y is the problem).

constexpr int kSplitThreads = 256;
constexpr int kSplitWarps = kSplitThreads / 32;

struct SplitShared {
  double red[kSplitWarps][kSlot];
  double out[kSlot];
};

struct GridBlock {
  SplitShared* sh;
  __device__ int tid() const { return int(threadIdx.x); }
  __device__ int nthr() const { return kSplitThreads; }
  __device__ int grp() const { return int(threadIdx.x >> 5); }
  __device__ int ngrp() const { return kSplitWarps; }
  __device__ int glane() const { return int(threadIdx.x & 31); }
  __device__ int gsize() const { return 32; }
  __device__ void sync() const { __syncthreads(); }
  __device__ double gsum(double x) const { return warp_sum(x); }
  __device__ double gmin(double x) const { return warp_min(x); }
  // Sum (or minimum) of K values over the block into every thread's v, in a fixed order.
  template <int K, bool kMin>
  __device__ void reduce(double* v) const {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int q = 0; q < K; ++q) {
      const double x = kMin ? warp_min(v[q]) : warp_sum(v[q]);
      if (lane == 0) sh->red[warp][q] = x;
    }
    __syncthreads();
    if (threadIdx.x < K) {
      double acc = sh->red[0][threadIdx.x];
      for (int w = 1; w < kSplitWarps; ++w) acc = kMin ? fmin(acc, sh->red[w][threadIdx.x]) : acc + sh->red[w][threadIdx.x];
      sh->out[threadIdx.x] = acc;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < K; ++q) v[q] = sh->out[q];
    __syncthreads();
  }
  template <int K>
  __device__ void sum(double* v) const { reduce<K, false>(v); }
  template <int K>
  __device__ void vmin(double* v) const { reduce<K, true>(v); }
};

struct GridExec {
  using Blk = GridBlock;
  GridBlock blk;
  unsigned int* bar;  // arrival word of this problem, zero at launch
  int64_t P;

  // The problem's blocks meet (the scheme of cooperative groups' grid barrier, per problem): block 0
  // adds 2^31 − (P − 1), the others 1, so the top bit flips exactly when all P have arrived and the
  // low bits return to 0. The fences order each block's writes before its arrival and the others'
  // reads after the flip.
  __device__ void barrier() const {
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned int inc = blockIdx.x == 0 ? 0x80000000u - unsigned(P - 1) : 1u;
      __threadfence();
      const unsigned int old = atomicAdd(bar, inc);
      volatile unsigned int* v = bar;
      while (((old ^ *v) & 0x80000000u) == 0) __nanosleep(32);
      __threadfence();
    }
    __syncthreads();
  }
  template <class F>
  __device__ void each(F&& f) {
    f(int64_t(blockIdx.x), blk);
    barrier();
  }
  // Sum (slots q < KSUM) or minimum (the others) over the P block slots: warp q reduces slot q, the
  // same way in every block, so every block holds the same bits.
  template <int K, int KSUM>
  __device__ void reduce(const double* part, double* out) const {
    static_assert(K <= kSplitWarps && K <= kSlot, "one warp per slot");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warp < K) {
      const bool mn = warp >= KSUM;
      double acc = mn ? INFINITY : 0.0;
      for (int64_t k = lane; k < P; k += 32) {
        const double x = part[k * kSlot + warp];
        acc = mn ? fmin(acc, x) : acc + x;
      }
      acc = mn ? warp_min(acc) : warp_sum(acc);
      if (lane == 0) blk.sh->out[warp] = acc;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < K; ++q) out[q] = blk.sh->out[q];
    __syncthreads();
  }
  __device__ bool leader() const { return blockIdx.x == 0 && threadIdx.x == 0; }
};

template <class T>
__global__ void __launch_bounds__(kSplitThreads, 2) sinkhorn_split_kernel(SinkhornArgs o, int64_t P) {
  __shared__ SplitShared sh;
  const int64_t b = blockIdx.y;
  double* wk = o.work + b * o.work_sb;
  const SplitProblem<T> p = split_problem<T>(o, b, P, wk);
  GridExec ex{GridBlock{&sh}, reinterpret_cast<unsigned int*>(p.bar), P};
  SplitSolver<T, GridExec> solver(p, o, ex);
  solver.run();
}

// Blocks per problem: a forced count, or for problems of at least kSplitEntries entries as many as the
// GPU holds at once divided among the batch (at most the scratch's room); 1 keeps one block per problem.
template <class T>
int64_t split_blocks(const SinkhornArgs& a, int device) {
  int sms = 0, per_sm = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sinkhorn_split_kernel<T>, kSplitThreads, 0) != cudaSuccess)
    throw std::runtime_error("diffcore sinkhorn: cannot query the device's multiprocessors");
  const int64_t resident = int64_t(sms) * int64_t(per_sm);
  if (a.blocks > 0) {
    if (a.blocks > 1 && a.blocks * a.B > resident)
      throw std::invalid_argument("blocks: " + std::to_string(a.blocks) + " blocks for each of " +
                                  std::to_string(a.B) + " problems exceed the " + std::to_string(resident) +
                                  " blocks this GPU holds at once");
    return a.blocks;
  }
  const int64_t room = split_room(a.n, a.m);
  const int64_t share = resident / a.B;
  const int64_t P = std::min(room, share);
  return P >= 2 ? P : 1;
}

}  // namespace

void sinkhorn_cuda(const SinkhornArgs& a, DType dtype, int device, uintptr_t stream_handle) {
  if (a.B == 0) return;
  auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  cudaError_t launched = cudaSuccess;
  launch_on(device, dtype, "sinkhorn", [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
      const int64_t P = split_blocks<T>(a, device);
      if (P == 1) {
        sinkhorn_kernel<T><<<unsigned(a.B), kOtThreads, 0, stream>>>(a);
        return;
      }
      // the barrier words start at zero (one per problem, at the same offset of each scratch row)
      if (cudaMemset2DAsync(a.work + 6 * (a.n + a.m), size_t(a.work_sb) * sizeof(double), 0, sizeof(double),
                            size_t(a.B), stream) != cudaSuccess)
        return;  // launch_on reports the error
      SinkhornArgs args = a;
      int64_t blocks = P;
      void* params[] = {&args, &blocks};
      launched = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(sinkhorn_split_kernel<T>),
                                             dim3(unsigned(P), unsigned(a.B)), dim3(kSplitThreads), params, 0, stream);
    }
  });
  if (launched != cudaSuccess)
    throw std::runtime_error(std::string("diffcore sinkhorn CUDA launch failed: ") + cudaGetErrorString(launched));
}

}  // namespace dc
