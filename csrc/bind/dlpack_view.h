// Borrowed views of DLPack capsules: parsing and validation with errors that name the argument.
#pragma once
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <string>

#include "core/numeric.h"

namespace dc {

namespace py = pybind11;

constexpr int kMaxDims = 12;

// A borrowed, non-owning view of a tensor received through a DLPack capsule. The capsule keeps the
// producer's tensor alive for the duration of the call (we never rename it, so its destructor frees it).
struct View {
  const char* name = "";
  char* data = nullptr;  // byte_offset already applied
  int device_type = 0;   // dlpack::DeviceType
  int device_id = 0;
  DType dtype = DType::Other;
  int itemsize = 0;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // in elements
  bool readonly = false;

  int64_t numel() const;
  int64_t numel_from(int dim) const;  // product of shape[dim:]
  // True when dims [dim, ndim) are laid out compactly in row-major order.
  bool compact_from(int dim) const;
  bool is_cuda() const { return device_type == 2; }
  // Lowest and one-past-highest byte touched.
  std::pair<uintptr_t, uintptr_t> extent() const;
  std::string describe() const;
};

// Parse a capsule (or None when allow_none) into a View. Raises TypeError for non-capsules.
View parse_view(py::handle obj, const char* name);
bool is_none(py::handle obj);

const char* dtype_name(DType d);
std::string device_name(const View& v);

// Validation helpers; each raises TypeError/ValueError naming the argument.
void require_float(const View& v);                       // f16/bf16/f32/f64
void require_real(const View& v);                        // f32/f64 (coefficient tables)
void require_same_dtype(const View& v, const View& ref);
void require_same_device(const View& v, const View& ref);
// Written: not read-only, and no two elements share memory (stride 0, overlapping rows).
void require_writable(const View& v);
bool self_overlaps(const View& v);
// torch (and most consumers) cannot import negative strides: raise naming the argument instead.
void require_importable(const View& v);
// Dims [first, ndim) of v equal those of ref from ref_first on ("what" describes the expectation).
void require_trailing_shape(const View& v, int first, const View& ref, int ref_first, const char* what);
void require_feature_compact(const View& v, int first);  // dims [first, ndim) row-major contiguous
// A contiguous float64 CPU tensor (coefficient tables, schedule inputs/outputs).
View parse_f64_cpu(py::handle obj, const char* name);
bool overlaps(const View& a, const View& b);
bool same_view(const View& a, const View& b);
// An output must not overlap an input ("<w>: output overlaps input '<in>'").
void require_no_overlap(const View& w, const View& in);
// An output may coincide exactly with an input (in-place) but never partially overlap it.
void require_no_partial_overlap(const View& w, const View& in);

// Run a backend call, without the GIL when `release` (device launches and large CPU work; for small
// CPU calls releasing and re-taking the GIL costs more than the call).
template <class F>
void call_backend(bool release, F&& f) {
  if (release) {
    py::gil_scoped_release nogil;
    f();
  } else {
    f();
  }
}

}  // namespace dc
