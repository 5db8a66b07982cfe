// Stand-ins used when the module is built without CUDA: CUDA tensors are refused with a clear error.
#include <pybind11/pybind11.h>

#include "core/adaptive.h"
#include "core/lincomb.h"
#include "core/noise_fill.h"
#include "core/picard.h"
#include "core/solver_step.h"
#include "ot/sinkhorn.h"

namespace dc {

void lincomb_cuda(const LincombArgs&, DType, bool, int, uintptr_t) {
  throw pybind11::value_error("diffcore was built without CUDA support; rebuild with nvcc on PATH or DIFFCORE_CUDA=ON");
}
void solver_step_cuda(const StepArgs&, DType, int, uintptr_t) {
  throw pybind11::value_error("diffcore was built without CUDA support; rebuild with nvcc on PATH or DIFFCORE_CUDA=ON");
}
void noise_fill_cuda(const NoiseFillArgs&, DType, int, uintptr_t) {
  throw pybind11::value_error("diffcore was built without CUDA support; rebuild with nvcc on PATH or DIFFCORE_CUDA=ON");
}
void sinkhorn_cuda(const SinkhornArgs&, DType, int, uintptr_t) {
  throw pybind11::value_error("diffcore was built without CUDA support; rebuild with nvcc on PATH or DIFFCORE_CUDA=ON");
}
void picard_window_cuda(const PicardArgs&, DType, int, uintptr_t) {
  throw pybind11::value_error("diffcore was built without CUDA support; rebuild with nvcc on PATH or DIFFCORE_CUDA=ON");
}
void adaptive_control_cuda(const AdaptiveArgs&, DType, int, uintptr_t) {
  throw pybind11::value_error("diffcore was built without CUDA support; rebuild with nvcc on PATH or DIFFCORE_CUDA=ON");
}
bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }

}  // namespace dc
