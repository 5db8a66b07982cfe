// Prediction types of a model output and the affine conversion between them (book Prop. 6.3.1,
// Eq. (6.3.1)/(6.3.6), Table 6.1 with docs/errata.md B11): each type is target = a·x0 + b·ε with
//   eps (0, 1), x0 (1, 0), score (0, −1/σ), velocity (α', σ'), v (−σ, α),
// so that with det = a_src σ − b_src α a model output o of type src at state x gives
//   dst = c_x·x + c_m·o,  c_m = (a_dst σ − b_dst α)/det,  c_x = (b_dst a_src − a_dst b_src)/det.
// The Python layer's conversion_coefs (python/diffcore/param.py) is the same arithmetic in torch.
#pragma once
#include "core/numeric.h"

namespace dc {

enum Prediction : int { kPredEps = 0, kPredX0 = 1, kPredScore = 2, kPredVelocity = 3, kPredV = 4, kNumPredictions = 5 };

inline const char* prediction_name(int p) {
  static const char* names[kNumPredictions] = {"eps", "x0", "score", "velocity", "v"};
  return p >= 0 && p < kNumPredictions ? names[p] : "?";
}

DC_HD void prediction_ab(int p, double alpha, double sigma, double dalpha, double dsigma, double* a, double* b) {
  switch (p) {
    case kPredEps: *a = 0.0; *b = 1.0; return;
    case kPredX0: *a = 1.0; *b = 0.0; return;
    case kPredScore: *a = 0.0; *b = -1.0 / sigma; return;
    case kPredVelocity: *a = dalpha; *b = dsigma; return;
    default: *a = -sigma; *b = alpha; return;  // v
  }
}

// (c_x, c_m) of the conversion src -> dst at one time; src == dst is the identity (0, 1).
DC_HD void conversion_coefs(int src, int dst, double alpha, double sigma, double dalpha, double dsigma, double* cx,
                            double* cm) {
  if (src == dst) { *cx = 0.0; *cm = 1.0; return; }
  double ap, bp, aq, bq;
  prediction_ab(src, alpha, sigma, dalpha, dsigma, &ap, &bp);
  prediction_ab(dst, alpha, sigma, dalpha, dsigma, &aq, &bq);
  const double det = ap * sigma - bp * alpha;
  // + 0.0 as the reference's broadcast to full tensors does (it turns a −0 into +0)
  *cm = (aq * sigma - bq * alpha) / det + 0.0;
  *cx = (bq * ap - aq * bp) / det + 0.0;
}

}  // namespace dc
