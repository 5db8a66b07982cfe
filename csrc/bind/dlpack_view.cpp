#include "bind/dlpack_view.h"

#include <algorithm>
#include <climits>
#include <sstream>

#include "core/dlpack_abi.h"

namespace dc {

int64_t View::numel() const { return numel_from(0); }

int64_t View::numel_from(int dim) const {
  int64_t n = 1;
  for (int d = dim; d < ndim; ++d) n *= shape[d];
  return n;
}

bool View::compact_from(int dim) const {
  int64_t expect = 1;
  for (int d = ndim - 1; d >= dim; --d) {
    if (shape[d] != 1 && strides[d] != expect) return false;
    expect *= shape[d];
  }
  return true;
}

std::pair<uintptr_t, uintptr_t> View::extent() const {
  intptr_t lo = 0, hi = 0;
  if (numel() == 0) return {uintptr_t(data), uintptr_t(data)};
  for (int d = 0; d < ndim; ++d) {
    intptr_t span = intptr_t(shape[d] - 1) * intptr_t(strides[d]) * itemsize;
    if (span < 0) lo += span; else hi += span;
  }
  return {uintptr_t(data) + lo, uintptr_t(data) + hi + itemsize};
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::I64: return "int64";
    case DType::Bool: return "bool";
    default: return "an unsupported dtype";
  }
}

std::string device_name(const View& v) {
  switch (v.device_type) {
    case dlpack::kCPU: return "cpu";
    case dlpack::kCUDA: return "cuda:" + std::to_string(v.device_id);
    default: return "device type " + std::to_string(v.device_type);
  }
}

std::string View::describe() const {
  std::ostringstream os;
  os << "(";
  for (int d = 0; d < ndim; ++d) os << (d ? ", " : "") << shape[d];
  if (ndim == 1) os << ",";
  os << ")";
  return os.str();
}

bool is_none(py::handle obj) { return obj.is_none(); }

// A capsule is trusted for nothing that can be checked: its shape, strides and byte offset must
// describe a region that 64-bit addresses can hold (a hand-made or corrupt capsule would otherwise
// make the kernels, or torch when it imports the array, read or write anywhere), and a region with
// elements must have a data pointer.
static void fill_view(View& v, const dlpack::Tensor& t) {
  const std::string name(v.name);
  if (t.ndim < 0 || t.ndim > kMaxDims)
    throw py::value_error(name + ": tensors with more than " + std::to_string(kMaxDims) +
                          " dimensions are not supported");
  if (t.ndim > 0 && t.shape == nullptr) throw py::value_error(name + ": DLPack tensor without a shape array");
  v.ndim = t.ndim;
  v.device_type = t.device.device_type;
  v.device_id = t.device.device_id;
  if (t.dtype.lanes != 1) v.dtype = DType::Other;
  else if (t.dtype.code == dlpack::kFloat && t.dtype.bits == 16) v.dtype = DType::F16;
  else if (t.dtype.code == dlpack::kFloat && t.dtype.bits == 32) v.dtype = DType::F32;
  else if (t.dtype.code == dlpack::kFloat && t.dtype.bits == 64) v.dtype = DType::F64;
  else if (t.dtype.code == dlpack::kBfloat && t.dtype.bits == 16) v.dtype = DType::BF16;
  else if (t.dtype.code == dlpack::kInt && t.dtype.bits == 64) v.dtype = DType::I64;
  else if (t.dtype.code == dlpack::kBool && t.dtype.bits == 8) v.dtype = DType::Bool;
  else v.dtype = DType::Other;
  v.itemsize = (t.dtype.bits / 8) * (t.dtype.lanes ? t.dtype.lanes : 1);
  const auto overflow = [&](const char* what) {
    return py::value_error(name + ": its " + what + " overflow 64-bit addressing (a corrupt or hand-made "
                           "DLPack capsule?)");
  };
  int64_t expect = 1, numel = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    if (t.shape[d] < 0)
      throw py::value_error(name + ": negative extent " + std::to_string(t.shape[d]) + " in dimension " +
                            std::to_string(d));
    v.shape[d] = t.shape[d];
    v.strides[d] = t.strides ? t.strides[d] : expect;
    if (__builtin_mul_overflow(numel, t.shape[d], &numel)) throw overflow("shape");
    if (!t.strides && __builtin_mul_overflow(expect, t.shape[d], &expect)) throw overflow("shape");
  }
  // Lowest and highest byte offset an element occupies, relative to data + byte_offset.
  int64_t lo = 0, hi = 0;
  if (numel != 0) {
    for (int d = 0; d < v.ndim; ++d) {
      int64_t span;
      if (__builtin_mul_overflow(v.shape[d] - 1, v.strides[d], &span) ||
          __builtin_mul_overflow(span, int64_t(v.itemsize), &span) ||
          __builtin_add_overflow(span < 0 ? lo : hi, span, span < 0 ? &lo : &hi))
        throw overflow("strides");
    }
    if (__builtin_add_overflow(hi, int64_t(v.itemsize), &hi)) throw overflow("strides");
    if (t.data == nullptr)
      throw py::value_error(name + ": DLPack tensor with a null data pointer but " + std::to_string(numel) +
                            " elements");
  }
  uintptr_t base;
  if (t.byte_offset > uint64_t(INT64_MAX) || __builtin_add_overflow(uintptr_t(t.data), uintptr_t(t.byte_offset), &base))
    throw overflow("byte offset");
  uintptr_t top;
  if (numel != 0 && (uintptr_t(0) - uintptr_t(lo) > base || __builtin_add_overflow(base, uintptr_t(hi), &top)))
    throw overflow("strides and byte offset");
  if (numel != 0 && v.itemsize > 0 && (v.itemsize & (v.itemsize - 1)) == 0 && base % uintptr_t(v.itemsize) != 0)
    throw py::value_error(name + ": its data (pointer + byte offset) is not aligned to its " +
                          std::to_string(v.itemsize) + "-byte elements; pass an aligned copy");
  v.data = reinterpret_cast<char*>(base);
  if (v.device_type != dlpack::kCPU && v.device_type != dlpack::kCUDA)
    throw py::value_error(name + ": expected a CPU or CUDA tensor, got " + device_name(v));
}

View parse_view(py::handle obj, const char* name) {
  View v;
  v.name = name;
  PyObject* p = obj.ptr();
  if (PyCapsule_IsValid(p, "dltensor")) {
    auto* mt = static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(p, "dltensor"));
    fill_view(v, mt->dl_tensor);
  } else if (PyCapsule_IsValid(p, "dltensor_versioned")) {
    auto* mt = static_cast<dlpack::ManagedTensorVersioned*>(PyCapsule_GetPointer(p, "dltensor_versioned"));
    if (mt->version.major > 1)
      throw py::value_error(std::string(name) + ": unsupported DLPack major version " +
                            std::to_string(mt->version.major));
    fill_view(v, mt->dl_tensor);
    v.readonly = (mt->flags & dlpack::kFlagReadOnly) != 0;
  } else if (PyCapsule_CheckExact(p)) {
    throw py::value_error(std::string(name) + ": DLPack capsule was already consumed or is not a tensor");
  } else {
    throw py::type_error(std::string(name) + ": expected a DLPack capsule (use diffcore's Python API, "
                                             "which converts torch/NumPy/CuPy/JAX arrays)");
  }
  return v;
}

void require_float(const View& v) {
  if (v.dtype != DType::F16 && v.dtype != DType::BF16 && v.dtype != DType::F32 && v.dtype != DType::F64)
    throw py::type_error(std::string(v.name) + ": expected float16, bfloat16, float32 or float64, got " +
                         dtype_name(v.dtype));
}

void require_real(const View& v) {
  if (v.dtype != DType::F32 && v.dtype != DType::F64)
    throw py::type_error(std::string(v.name) + ": expected float32 or float64, got " + dtype_name(v.dtype));
}

void require_same_dtype(const View& v, const View& ref) {
  if (v.dtype != ref.dtype)
    throw py::type_error(std::string(v.name) + ": expected dtype " + dtype_name(ref.dtype) + " (as " +
                         ref.name + "), got " + dtype_name(v.dtype));
}

void require_same_device(const View& v, const View& ref) {
  if (v.device_type != ref.device_type || v.device_id != ref.device_id)
    throw py::value_error(std::string(v.name) + ": expected a tensor on " + device_name(ref) + " (as " +
                          ref.name + "), got " + device_name(v));
}

bool self_overlaps(const View& v) {
  // Dimensions by increasing |stride|: each must step past everything the inner ones reach. Sufficient
  // for distinct elements (a few exotic interleaved layouts are refused too, with a clear message).
  std::array<std::pair<int64_t, int64_t>, kMaxDims> dims{};  // (|stride|, extent)
  int k = 0;
  for (int d = 0; d < v.ndim; ++d) {
    if (v.shape[d] == 0) return false;
    if (v.shape[d] > 1) dims[k++] = {v.strides[d] < 0 ? -v.strides[d] : v.strides[d], v.shape[d]};
  }
  std::sort(dims.begin(), dims.begin() + k);
  int64_t reach = 1;  // elements spanned by the inner dimensions
  for (int q = 0; q < k; ++q) {
    if (dims[q].first < reach) return true;
    reach = dims[q].first * (dims[q].second - 1) + reach;
  }
  return false;
}

void require_writable(const View& v) {
  if (v.readonly)
    throw py::value_error(std::string(v.name) + ": the array is read-only (e.g. a JAX array or a NumPy array "
                          "with writeable=False) and cannot be written; pass a writable array");
  if (self_overlaps(v))
    throw py::value_error(std::string(v.name) + ": is written but its elements overlap in memory (e.g. rows "
                          "aliased by a broadcast / expanded tensor with stride 0); pass a separate buffer, "
                          "e.g. .contiguous()");
}

void require_importable(const View& v) {
  for (int d = 0; d < v.ndim; ++d)
    if (v.strides[d] < 0 && v.shape[d] > 1)
      throw py::value_error(std::string(v.name) + ": arrays with negative strides (reversed views) cannot be "
                            "imported; pass a contiguous copy");
}

void require_trailing_shape(const View& v, int first, const View& ref, int ref_first, const char* what) {
  bool ok = (v.ndim - first) == (ref.ndim - ref_first);
  for (int d = 0; ok && d < v.ndim - first; ++d) ok = v.shape[first + d] == ref.shape[ref_first + d];
  if (!ok)
    throw py::value_error(std::string(v.name) + ": expected shape " + what + ", got " + v.describe() +
                          " with " + ref.name + " of shape " + ref.describe());
}

void require_feature_compact(const View& v, int first) {
  if (!v.compact_from(first))
    throw py::value_error(std::string(v.name) + ": its feature dimensions must be contiguous (row-major); "
                          "call .contiguous() first");
}

View parse_f64_cpu(py::handle obj, const char* name) {
  View v = parse_view(obj, name);
  if (v.dtype != DType::F64)
    throw py::type_error(std::string(v.name) + ": expected float64, got " + dtype_name(v.dtype));
  if (v.device_type != dlpack::kCPU)
    throw py::value_error(std::string(v.name) + ": expected a CPU tensor, got " + device_name(v));
  if (v.numel() != 0 && !v.compact_from(0))  // empty tensors: any strides
    throw py::value_error(std::string(v.name) + ": expected a contiguous (row-major) tensor; call .contiguous() first");
  return v;
}

bool overlaps(const View& a, const View& b) {
  auto ea = a.extent(), eb = b.extent();
  if (ea.first == ea.second || eb.first == eb.second) return false;
  return ea.first < eb.second && eb.first < ea.second;
}

void require_no_overlap(const View& w, const View& in) {
  if (overlaps(w, in))
    throw py::value_error(std::string(w.name) + ": output overlaps input '" + in.name + "'; use a separate buffer");
}

void require_no_partial_overlap(const View& w, const View& in) {
  if (overlaps(w, in) && !same_view(w, in))
    throw py::value_error(std::string(w.name) + ": output partially overlaps input '" + in.name +
                          "'; use a separate buffer or exactly the same tensor");
}

bool same_view(const View& a, const View& b) {
  if (a.data != b.data || a.ndim != b.ndim || a.itemsize != b.itemsize) return false;
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] != b.shape[d] || (a.shape[d] != 1 && a.strides[d] != b.strides[d])) return false;
  return true;
}

}  // namespace dc
