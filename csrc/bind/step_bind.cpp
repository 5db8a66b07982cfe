// Python binding of the fused sampler step.
//
//   st = _core.Stepper(x, y, ring, coefs, layout, noise, seed, ids, T0, T1, depth)
//                                                   validates and binds a run's buffers once
//   st.step(i, s, o, raw, nthreads, stream, z)      one fused call per model evaluation
//
// x, y (or None), ring (or None) and the model output o are DLPack capsules of the run's state;
// coefs is the plan's float64 table [B|1, steps, stages, NC] on the state's device and layout the
// flattened [steps, stages, StageRecord::kFields] stage records (both in csrc/core/row_layout.h). noise is the source of the rows with a draw (kNoise* of solver_step.h): Philox
// under `seed` and the sample ids (int64 [B] capsule or None), a tensor z given per step, or the
// Brownian tree over [T0, T1] with `depth` levels.
// The Stepper keeps the capsules (and so the tensors) alive; only o is parsed per step, which keeps
// the per-step host cost to about a microsecond. Nothing is allocated and nothing synchronizes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bind/dlpack_view.h"
#include "bind/noise_args.h"
#include "core/solver_step.h"

namespace py = pybind11;

namespace dc {
namespace {

class Stepper {
 public:
  Stepper(py::object x_c, py::object y_c, py::object ring_c, py::object coef_c, std::vector<int32_t> layout,
          int noise, uint64_t seed, py::object ids_c, double T0, double T1, int depth)
      : keep_{x_c, y_c, ring_c, coef_c, ids_c} {
    x_ = parse_view(x_c, "x");
    require_float(x_);
    if (x_.ndim < 1) throw py::value_error("x: expected at least one (batch) dimension");
    require_writable(x_);
    require_feature_compact(x_, 1);
    a_.B = x_.shape[0];
    a_.N = x_.numel_from(1);
    a_.x = x_.data; a_.x_sb = x_.strides[0];
    if (!is_none(y_c)) {
      y_ = parse_view(y_c, "y");
      require_same_dtype(y_, x_); require_same_device(y_, x_); require_trailing_shape(y_, 0, x_, 0, "equal to x's");
      require_writable(y_); require_feature_compact(y_, 1);
      if (overlaps(y_, x_)) throw py::value_error("y: must not overlap x");
      a_.y = y_.data; a_.y_sb = y_.strides[0];
    }
    if (!is_none(ring_c)) {
      ring_ = parse_view(ring_c, "ring");
      require_same_dtype(ring_, x_); require_same_device(ring_, x_);
      require_trailing_shape(ring_, 1, x_, 0, "(K, *x.shape)");
      require_writable(ring_); require_feature_compact(ring_, 2);
      if (overlaps(ring_, x_) || (a_.y && overlaps(ring_, y_)))
        throw py::value_error("ring: must not overlap x or y");
      a_.K = int(ring_.shape[0]);
      if (a_.K > kMaxRing)
        throw py::value_error("ring: at most " + std::to_string(kMaxRing) + " slots, got " + std::to_string(a_.K));
      a_.ring = ring_.data; a_.ring_sk = ring_.strides[0]; a_.ring_sb = ring_.strides[1];
    }
    View coef = parse_view(coef_c, "coefs");
    if (coef.dtype != DType::F64) throw py::type_error(std::string("coefs: expected float64, got ") + dtype_name(coef.dtype));
    require_same_device(coef, x_);
    const int nc = RowLayout(a_.K).ncoef();
    if (coef.ndim != 4 || (coef.shape[0] != 1 && coef.shape[0] != a_.B) || coef.shape[3] != nc || !coef.compact_from(0))
      throw py::value_error("coefs: expected a contiguous table (" + std::to_string(a_.B) + " or 1, steps, stages, " +
                            std::to_string(nc) + "), got " + coef.describe());
    steps_ = int(coef.shape[1]); stages_ = int(coef.shape[2]);
    coef_ = reinterpret_cast<const double*>(coef.data);
    a_.coef_sb = coef.shape[0] == 1 ? 0 : coef.strides[0];
    layout_ = std::move(layout);
    if (int64_t(layout_.size()) != int64_t(steps_) * stages_ * R::kFields)
      throw py::value_error("layout: expected " + std::to_string(steps_) + " x " + std::to_string(stages_) + " x " +
                            std::to_string(R::kFields) + " entries, got " + std::to_string(layout_.size()));
    if (noise < kNoiseNone || noise > kNoiseBrownian) throw py::value_error("noise: expected a source 0..3");
    noise_ = noise;
    a_.seed = seed;
    ids_ = parse_ids(ids_c, x_, a_.B);
    a_.ids = ids_.data ? reinterpret_cast<const int64_t*>(ids_.data) : nullptr;
    if (noise == kNoiseBrownian) {
      check_brownian_span(T0, T1, depth);
      a_.T0 = T0; a_.T1 = T1; a_.depth = depth;
    }
    check_noise_extent(a_.N);
    for (size_t q = 0; q < layout_.size(); q += R::kFields) {
      const int32_t* l = &layout_[q];
      if (l[R::kDraw] >= 0 && noise == kNoiseNone)
        throw py::value_error("noise: the plan draws noise but no noise source was given");
      if ((l[R::kInput] == 1 && !a_.y) || (l[R::kWriteY] && !a_.y))
        throw py::value_error("y: the plan uses a second state buffer but none was given");
      if (l[R::kSlot] >= a_.K || l[R::kSlot] < -1)
        throw py::value_error("ring: the plan writes slot " + std::to_string(l[R::kSlot]) + " but the ring has " +
                              std::to_string(a_.K));
    }
  }

  void step(int i, int s, py::handle o_c, bool raw, int nthreads, uintptr_t stream, py::handle z_c) {
    if (i < 0 || i >= steps_) throw py::index_error("i: step " + std::to_string(i) + " out of range [0, " + std::to_string(steps_) + ")");
    if (s < 0 || s >= stages_) throw py::index_error("s: stage " + std::to_string(s) + " out of range [0, " + std::to_string(stages_) + ")");
    View o = parse_view(o_c, "out");
    require_same_dtype(o, x_);
    require_same_device(o, x_);
    require_trailing_shape(o, 0, x_, 0, "equal to x's");
    require_feature_compact(o, 1);
    // The model may return one of the state buffers itself (an identity model): exact aliases are
    // safe because every element is read before it is written; partial overlaps are not.
    if ((overlaps(o, x_) && !same_view(o, x_)) || (a_.y && overlaps(o, y_) && !same_view(o, y_)) ||
        (a_.ring && overlaps(o, ring_)))
      throw py::value_error("out: the model output partially overlaps the sampler state; return a new tensor");
    StepArgs a = a_;
    const int32_t* l = &layout_[(int64_t(i) * stages_ + s) * R::kFields];
    a.input = l[R::kInput]; a.slot = l[R::kSlot]; a.write_x = l[R::kWriteX] != 0; a.write_y = l[R::kWriteY] != 0;
    View z;
    if (l[R::kDraw] >= 0) {
      a.noise = noise_;
      a.draw = uint32_t(l[R::kDraw]);
      if (noise_ == kNoiseTensor) {
        if (is_none(z_c)) throw py::value_error("z: this step draws noise; pass its pre-drawn tensor");
        z = parse_view(z_c, "z");
        require_same_dtype(z, x_); require_same_device(z, x_);
        require_trailing_shape(z, 0, x_, 0, "equal to x's");
        require_feature_compact(z, 1);
        if (overlaps(z, x_) || (a_.y && overlaps(z, y_)) || (a_.ring && overlaps(z, ring_)))
          throw py::value_error("z: must not overlap the sampler state");
        a.z = z.data; a.z_sb = z.strides[0];
      }
    }
    a.o = o.data; a.o_sb = o.strides[0];
    a.raw = raw;
    a.coef = coef_ + (int64_t(i) * stages_ + s) * RowLayout(a.K).ncoef();
    if (x_.is_cuda()) {
      call_backend(true, [&] { solver_step_cuda(a, x_.dtype, x_.device_id, stream); });
    } else {
      call_backend(a.B * a.N >= (a.noise != kNoiseNone ? (1 << 11) : (1 << 15)),
                   [&] { solver_step_cpu(a, x_.dtype, nthreads); });
    }
  }

 private:
  using R = StageRecord;
  std::vector<py::object> keep_;
  View x_, y_, ring_, ids_;
  int noise_ = kNoiseNone;
  StepArgs a_;
  const double* coef_ = nullptr;
  int steps_ = 0, stages_ = 0;
  std::vector<int32_t> layout_;
};

}  // namespace

void register_step_ops(py::module_& m) {
  py::class_<Stepper>(m, "Stepper")
      .def(py::init<py::object, py::object, py::object, py::object, std::vector<int32_t>, int, uint64_t, py::object,
                    double, double, int>(),
           py::arg("x"), py::arg("y"), py::arg("ring"), py::arg("coefs"), py::arg("layout"), py::arg("noise") = 0,
           py::arg("seed") = 0, py::arg("ids") = py::none(), py::arg("T0") = 0.0, py::arg("T1") = 1.0,
           py::arg("depth") = 20)
      .def("step", &Stepper::step, py::arg("i"), py::arg("s"), py::arg("out"), py::arg("raw"), py::arg("nthreads"),
           py::arg("stream"), py::arg("z") = py::none(), "one fused step (csrc/core/solver_step.h)");
}

}  // namespace dc
