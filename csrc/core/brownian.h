// A seed-stable Brownian source: the virtual Brownian tree (Gaines & Lyons 1997; Li et al. 2020,
// "Scalable gradients for SDEs", §4) over [T0, T1], stateless, so it runs inside the fused step on
// CPU and CUDA alike.
//
// W(T0) = 0 and W(T1) = √(T1 − T0)·N₀. Each tree node k covers an interval [a, b] (root k = 1 is
// [T0, T1], children 2k and 2k + 1) and draws its midpoint from the Brownian bridge,
//   W(m) = ½(W(a) + W(b)) + √((b − a)/4)·N_k,
// with N_k the Philox normal of (seed, sample id, draw = k, element) in the Brownian domain. A query
// descends `depth` levels and interpolates linearly inside the leaf (leaf width (T1 − T0)/2^depth).
// Every query of the same seed sees the same path, so a sampler with 2N steps uses a refinement of
// the noise of the one with N steps, and the samples converge as the step count grows.
//
// A step from ta to tb uses the normalized increment z = (W(ta) − W(tb))/√|ta − tb| ~ N(0, 1); the
// two queries share the walk down to the node where they separate.
#pragma once
#include <cmath>

#include "core/philox.h"

namespace dc {

constexpr int kMaxBrownianDepth = 30;

// LANES = 4: elements 4q..4q+3 share each Philox block; LANES = 1: element `idx` alone (one CUDA thread
// per element). The CPU loops use brownian_blocks below.
template <int LANES>
DC_HD void brownian_normals(NoiseKey k, uint32_t node, uint64_t idx, double out[LANES]) {
  k.draw = node;
  if (LANES == 4) {
    normal4(k, idx, out);
  } else {
    out[0] = normal_at(k, idx);
  }
}

template <int LANES>
DC_HD void brownian_descend(const NoiseKey& k, uint64_t idx, double tau, double a, double b, double wa[LANES],
                            double wb[LANES], uint32_t node, int level, int depth, double w[LANES]) {
  double nz[LANES];
  for (; level < depth && tau != a && tau != b; ++level) {
    const double m = 0.5 * (a + b);
    const double sc = sqrt(0.25 * (b - a));
    brownian_normals<LANES>(k, node, idx, nz);
    const bool right = tau >= m;
    for (int l = 0; l < LANES; ++l) {
      const double wm = 0.5 * (wa[l] + wb[l]) + sc * nz[l];
      if (right) wa[l] = wm; else wb[l] = wm;
    }
    if (right) a = m; else b = m;
    node = 2 * node + (right ? 1u : 0u);
  }
  const double f = b > a ? (tau - a) / (b - a) : 0.0;
  for (int l = 0; l < LANES; ++l) w[l] = wa[l] + f * (wb[l] - wa[l]);
}

// z = (W(ta) − W(tb)) / √|ta − tb| for the LANES elements at idx; requires T0 ≤ ta, tb ≤ T1, ta ≠ tb.
template <int LANES>
DC_HD void brownian_increment(const NoiseKey& key, uint64_t idx, double ta, double tb, double T0, double T1,
                              int depth, double z[LANES]) {
  NoiseKey k = key;
  k.domain = kDomainBrownian;
  double wa[LANES], wb[LANES], nz[LANES];
  brownian_normals<LANES>(k, 0u, idx, nz);
  const double root = sqrt(T1 - T0);
  for (int l = 0; l < LANES; ++l) { wa[l] = 0.0; wb[l] = root * nz[l]; }
  double a = T0, b = T1;
  uint32_t node = 1;
  int level = 0;
  // shared prefix of the two walks
  for (; level < depth; ++level) {
    const double m = 0.5 * (a + b);
    const bool ra = ta >= m, rb = tb >= m;
    if (ra != rb) break;
    const double sc = sqrt(0.25 * (b - a));
    brownian_normals<LANES>(k, node, idx, nz);
    for (int l = 0; l < LANES; ++l) {
      const double wm = 0.5 * (wa[l] + wb[l]) + sc * nz[l];
      if (ra) wa[l] = wm; else wb[l] = wm;
    }
    if (ra) a = m; else b = m;
    node = 2 * node + (ra ? 1u : 0u);
  }
  double a2[LANES], b2[LANES], w1[LANES], w2[LANES];
  for (int l = 0; l < LANES; ++l) { a2[l] = wa[l]; b2[l] = wb[l]; }
  brownian_descend<LANES>(k, idx, ta, a, b, wa, wb, node, level, depth, w1);
  brownian_descend<LANES>(k, idx, tb, a, b, a2, b2, node, level, depth, w2);
  const double inv = 1.0 / sqrt(ta > tb ? ta - tb : tb - ta);
  for (int l = 0; l < LANES; ++l) z[l] = (w1[l] - w2[l]) * inv;
}

// The increments z of elements 4q..4q+3 for q = q0 .. q0 + nb − 1 into out[4·nb], bit-identical to
// brownian_increment at each element: the CPU kernels' version (csrc/cpu/noise_cpu.cpp). The walk down
// the tree depends on (ta, tb) only, not on the element, so each visited node's normals are drawn for
// the whole range with normal_blocks and the bridge arithmetic runs over arrays.
void brownian_blocks(const NoiseKey& key, uint64_t q0, int nb, double ta, double tb, double T0, double T1, int depth,
                     double* out);

}  // namespace dc
