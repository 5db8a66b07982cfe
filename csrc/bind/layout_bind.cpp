// The declarations Python reads by name instead of mirroring them: the coefficient row's column
// offsets and the stage and node records' fields (csrc/core/row_layout.h), the prediction types
// (csrc/core/prediction.h), the step's noise sources (csrc/core/solver_step.h) and noise domains
// (csrc/core/philox.h), the schedule family ids (csrc/core/schedule_math.h) and the optimal-transport
// solver's status codes and ε-scaling modes (csrc/ot/ot_math.h).
//
//   _core.RowLayout(K)          .cu .co .ax .ay .am .bx .by .bm .zx .zy .ta .tb .ncoef, .ar(k) .br(k)
//   _core.StageRecord           .INPUT .SLOT .WRITE_X .WRITE_Y .DRAW .FIELDS
//   _core.NodeRecord            .T .ALPHA .SIGMA .LAM .DALPHA .DSIGMA .FIELDS
//   _core.Prediction, _core.NoiseKind, _core.NoiseDomain, _core.ScheduleFamily, _core.OTStatus,
//   _core.EpsScaling   enumerations
#include <pybind11/pybind11.h>

#include <string>

#include "core/philox.h"
#include "core/prediction.h"
#include "core/row_layout.h"
#include "core/schedule_math.h"
#include "ot/ot_math.h"
#include "core/solver_step.h"

namespace py = pybind11;

namespace dc {
namespace {

RowLayout make_layout(int K) {
  if (K < 0 || K > kMaxRing)
    throw py::value_error("K: expected 0 <= K <= " + std::to_string(kMaxRing) + " history slots, got " +
                          std::to_string(K));
  return RowLayout(K);
}

int ring_column(const RowLayout& L, int k, bool y) {
  if (k < 0 || k >= L.K)
    throw py::index_error("k: expected a ring slot in [0, " + std::to_string(L.K) + "), got " + std::to_string(k));
  return y ? L.br(k) : L.ar(k);
}

}  // namespace

void register_layout_ops(py::module_& m) {
  py::class_<RowLayout>(m, "RowLayout", "column offsets of a coefficient row with K history slots")
      .def(py::init(&make_layout), py::arg("K"))
      .def_readonly("K", &RowLayout::K)
      .def_property_readonly("cu", &RowLayout::cu)
      .def_property_readonly("co", &RowLayout::co)
      .def_property_readonly("ax", &RowLayout::ax)
      .def_property_readonly("ay", &RowLayout::ay)
      .def_property_readonly("am", &RowLayout::am)
      .def_property_readonly("bx", &RowLayout::bx)
      .def_property_readonly("by", &RowLayout::by)
      .def_property_readonly("bm", &RowLayout::bm)
      .def_property_readonly("zx", &RowLayout::zx)
      .def_property_readonly("zy", &RowLayout::zy)
      .def_property_readonly("ta", &RowLayout::ta)
      .def_property_readonly("tb", &RowLayout::tb)
      .def_property_readonly("ncoef", &RowLayout::ncoef)
      .def("ar", [](const RowLayout& L, int k) { return ring_column(L, k, false); }, py::arg("k"))
      .def("br", [](const RowLayout& L, int k) { return ring_column(L, k, true); }, py::arg("k"));

  py::class_<StageRecord> rec(m, "StageRecord", "fields of the int32 record of one (step, stage)");
  rec.attr("INPUT") = int(StageRecord::kInput);
  rec.attr("SLOT") = int(StageRecord::kSlot);
  rec.attr("WRITE_X") = int(StageRecord::kWriteX);
  rec.attr("WRITE_Y") = int(StageRecord::kWriteY);
  rec.attr("DRAW") = int(StageRecord::kDraw);
  rec.attr("FIELDS") = int(StageRecord::kFields);
  py::class_<NodeRecord> node(m, "NodeRecord", "fields of the float64 schedule record of one plan time");
  node.attr("T") = int(NodeRecord::kT);
  node.attr("ALPHA") = int(NodeRecord::kAlpha);
  node.attr("SIGMA") = int(NodeRecord::kSigma);
  node.attr("LAM") = int(NodeRecord::kLam);
  node.attr("DALPHA") = int(NodeRecord::kDAlpha);
  node.attr("DSIGMA") = int(NodeRecord::kDSigma);
  node.attr("FIELDS") = int(NodeRecord::kFields);
  m.attr("MAX_RING") = kMaxRing;

  py::enum_<Prediction> pred(m, "Prediction", "what a model output is (csrc/core/prediction.h)");
  for (int p = 0; p < kNumPredictions; ++p) pred.value(prediction_name(p), Prediction(p));

  py::enum_<NoiseKind>(m, "NoiseKind", "source of a row's noise draw in the fused step")
      .value("none", kNoiseNone)
      .value("philox", kNoisePhilox)
      .value("tensor", kNoiseTensor)
      .value("brownian", kNoiseBrownian);
  py::enum_<NoiseDomain>(m, "NoiseDomain", "Philox key domain: which stream of a (seed, sample) a draw comes from")
      .value("step", kDomainStep)
      .value("prior", kDomainPrior)
      .value("brownian", kDomainBrownian);
  py::enum_<ScheduleFamily>(m, "ScheduleFamily", "compiled-core schedule family ids (csrc/core/schedule_math.h)")
      .value("vp_linear", kVPLinear)
      .value("vp_cosine", kVPCosine)
      .value("vp_discrete", kVPDiscrete)
      .value("subvp", kSubVP)
      .value("ve", kVE)
      .value("edm", kEDM)
      .value("rectified_flow", kRectifiedFlow)
      .value("trig", kTrig);
  py::enum_<ot::Status>(m, "OTStatus", "per-problem status of the Sinkhorn solver (csrc/ot/ot_math.h)")
      .value("converged", ot::kConverged)
      .value("max_iters", ot::kMaxIters)
      .value("bad_cost", ot::kBadCost)
      .value("bad_a", ot::kBadA)
      .value("bad_b", ot::kBadB)
      .value("sum_a", ot::kSumA)
      .value("sum_b", ot::kSumB)
      .value("breakdown", ot::kBreakdown);
  py::enum_<ot::EpsScaling>(m, "EpsScaling", "ε-scaling mode of a Sinkhorn solve (csrc/ot/ot_math.h)")
      .value("off", ot::kScalingOff)
      .value("on", ot::kScalingOn)
      .value("auto", ot::kScalingAuto);
}

}  // namespace dc
