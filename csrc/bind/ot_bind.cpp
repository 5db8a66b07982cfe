// Python binding of the optimal-transport solvers (csrc/ot/): batched Sinkhorn and exact assignment.
//
//   _core.sinkhorn(cost, a, b, plan, f, g, stats, iters, work, eps, tol, max_iters, check_every,
//                  eps_scaling, eps0, eps_q, stage_tol, relax, weight_tol, nthreads, stream, blocks=0)
//       eps_scaling 0 off / 1 on / 2 auto; eps0 0 = each problem's cost range.
//       cost [B, n, m] float32/float64 (rows contiguous); a [B, n], b [B, m] or None (uniform);
//       outputs plan [B, n, m], f [B, n], g [B, m] (cost's dtype, contiguous), stats [B, 4] float64
//       (value, transport cost, marginal error, status), iters [B] int64, all on cost's device;
//       work [B, sinkhorn_work_size(n, m, blocks)] float64 scratch on CUDA (None on CPU). Value errors
//       (NaN cost, bad weights) are reported per problem in stats[:, 3] (csrc/ot/ot_math.h, Status), not
//       raised here. blocks: 0 automatic (CUDA splits a large problem over many blocks, the CPU runs
//       its own solver); > 0 forces the split formulation with that many blocks per problem
//       (csrc/ot/sinkhorn_blocks.h; on the CPU run block by block, which is how it is tested).
//   _core.linear_assignment(cost, perm, total, nthreads)
//       cost [B, n, n] float64 CPU (rows contiguous); perm [B, n] int64, total [B] float64.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "bind/dlpack_view.h"
#include "ot/assignment.h"
#include "ot/sinkhorn.h"
#include "ot/sinkhorn_blocks.h"

namespace py = pybind11;

namespace dc {
namespace {

void require_shape(const View& v, std::initializer_list<int64_t> shape, const char* what) {
  bool ok = v.ndim == int(shape.size());
  int d = 0;
  for (int64_t s : shape) {
    if (!ok) break;
    ok = v.shape[d++] == s;
  }
  if (!ok) throw py::value_error(std::string(v.name) + ": expected shape " + what + ", got " + v.describe());
}

// float64 scratch entries per problem of the CUDA solver: room for the split the launcher may choose
// (blocks = 0) or for a forced number of blocks.
int64_t work_size(int64_t n, int64_t m, int64_t blocks) {
  if (n < 1 || m < 1) throw py::value_error("n, m: expected n >= 1 and m >= 1");
  if (blocks < 0 || blocks > ot::kMaxSplit)
    throw py::value_error("blocks: expected 0 (automatic) or 1 <= blocks <= " + std::to_string(ot::kMaxSplit));
  return ot::split_work(n, m, blocks > 0 ? blocks : ot::split_room(n, m));
}

void require_contiguous(const View& v) {
  if (v.numel() != 0 && !v.compact_from(0))
    throw py::value_error(std::string(v.name) + ": expected a contiguous (row-major) tensor");
}

void sinkhorn(py::handle cost_c, py::handle a_c, py::handle b_c, py::handle plan_c, py::handle f_c, py::handle g_c,
              py::handle stats_c, py::handle iters_c, py::handle work_c, double eps, double tol, int64_t max_iters,
              int64_t check_every, int eps_scaling, double eps0, double eps_q, double stage_tol, bool relax,
              double weight_tol, int nthreads, uintptr_t stream, int64_t blocks) {
  View cost = parse_view(cost_c, "cost");
  require_real(cost);
  if (cost.ndim != 3) throw py::value_error("cost: expected shape (B, n, m), got " + cost.describe());
  const int64_t B = cost.shape[0], n = cost.shape[1], m = cost.shape[2];
  if (n < 1 || m < 1) throw py::value_error("cost: expected n >= 1 and m >= 1, got " + cost.describe());
  if (cost.strides[2] != 1 && m != 1)
    throw py::value_error("cost: its last dimension must be contiguous; call .contiguous() first");
  if (!(eps > 0.0) || !std::isfinite(eps)) throw py::value_error("eps: expected a positive finite number");
  if (!(tol >= 0.0)) throw py::value_error("tol: expected tol >= 0");
  if (max_iters < 0) throw py::value_error("max_iters: expected max_iters >= 0");
  if (check_every < 1) throw py::value_error("check_every: expected check_every >= 1");
  if (eps_scaling < ot::kScalingOff || eps_scaling > ot::kScalingAuto) throw py::value_error("eps_scaling: expected 0 (off), 1 (on) or 2 (auto)");
  if (!(eps0 >= 0.0) || !std::isfinite(eps0))
    throw py::value_error("eps0: expected a positive finite number (0: the cost range)");
  if (!(eps_q > 0.0 && eps_q < 1.0)) throw py::value_error("eps_q: expected 0 < eps_q < 1");
  if (blocks < 0 || blocks > ot::kMaxSplit)
    throw py::value_error("blocks: expected 0 (automatic) or 1 <= blocks <= " + std::to_string(ot::kMaxSplit) +
                          ", got " + std::to_string(blocks));

  SinkhornArgs s;
  s.B = B; s.n = n; s.m = m;
  s.cost = cost.data; s.c_sb = cost.strides[0]; s.c_si = cost.strides[1];
  View a, b;
  if (!is_none(a_c)) {
    a = parse_view(a_c, "a");
    require_same_dtype(a, cost);
    require_same_device(a, cost);
    require_shape(a, {B, n}, "(B, n) matching cost");
    if (a.strides[1] != 1 && n != 1) throw py::value_error("a: its last dimension must be contiguous");
    s.a = a.data; s.a_sb = a.strides[0];
  }
  if (!is_none(b_c)) {
    b = parse_view(b_c, "b");
    require_same_dtype(b, cost);
    require_same_device(b, cost);
    require_shape(b, {B, m}, "(B, m) matching cost");
    if (b.strides[1] != 1 && m != 1) throw py::value_error("b: its last dimension must be contiguous");
    s.b = b.data; s.b_sb = b.strides[0];
  }
  View plan = parse_view(plan_c, "plan"), f = parse_view(f_c, "f"), g = parse_view(g_c, "g");
  for (View* o : {&plan, &f, &g}) {
    require_same_dtype(*o, cost);
    require_same_device(*o, cost);
    require_writable(*o);
    require_contiguous(*o);
    require_no_overlap(*o, cost);
    if (a.data) require_no_overlap(*o, a);
    if (b.data) require_no_overlap(*o, b);
  }
  require_shape(plan, {B, n, m}, "(B, n, m) matching cost");
  require_shape(f, {B, n}, "(B, n)");
  require_shape(g, {B, m}, "(B, m)");
  View stats = parse_view(stats_c, "stats"), iters = parse_view(iters_c, "iters");
  if (stats.dtype != DType::F64) throw py::type_error("stats: expected float64");
  if (iters.dtype != DType::I64) throw py::type_error("iters: expected int64");
  require_same_device(stats, cost);
  require_same_device(iters, cost);
  require_shape(stats, {B, 4}, "(B, 4)");
  require_shape(iters, {B}, "(B,)");
  require_contiguous(stats);
  require_contiguous(iters);
  s.plan = plan.data; s.f = f.data; s.g = g.data;
  s.stats = reinterpret_cast<double*>(stats.data);
  s.iters = reinterpret_cast<int64_t*>(iters.data);
  s.eps = eps; s.tol = tol; s.max_iters = max_iters; s.check_every = check_every;
  s.eps_scaling = eps_scaling; s.eps0 = eps0; s.eps_q = eps_q; s.stage_tol = stage_tol;
  s.relax = relax ? 1 : 0; s.weight_tol = weight_tol;
  s.blocks = blocks;

  if (cost.is_cuda()) {
    if (is_none(work_c)) throw py::value_error("work: a float64 scratch tensor is required for CUDA inputs");
    View work = parse_view(work_c, "work");
    if (work.dtype != DType::F64) throw py::type_error("work: expected float64");
    require_same_device(work, cost);
    const int64_t W = work_size(n, m, blocks);
    require_shape(work, {B, W}, "(B, sinkhorn_work_size(n, m, blocks))");
    require_contiguous(work);
    s.work = reinterpret_cast<double*>(work.data);
    s.work_sb = W;
    py::gil_scoped_release nogil;
    sinkhorn_cuda(s, cost.dtype, cost.device_id, stream);
  } else {
    py::gil_scoped_release nogil;
    if (blocks > 0) sinkhorn_split_cpu(s, cost.dtype);
    else sinkhorn_cpu(s, cost.dtype, nthreads);
  }
}

void linear_assignment(py::handle cost_c, py::handle perm_c, py::handle total_c, int nthreads) {
  View cost = parse_view(cost_c, "cost");
  if (cost.dtype != DType::F64) throw py::type_error("cost: expected float64");
  if (cost.is_cuda()) throw py::value_error("cost: expected a CPU tensor (copy CUDA costs to the host first)");
  if (cost.ndim != 3 || cost.shape[1] != cost.shape[2])
    throw py::value_error("cost: expected a square (B, n, n) array, got " + cost.describe());
  const int64_t B = cost.shape[0], n = cost.shape[1];
  if (cost.strides[2] != 1 && n != 1) throw py::value_error("cost: its last dimension must be contiguous");
  View perm = parse_view(perm_c, "perm"), total = parse_view(total_c, "total");
  if (perm.dtype != DType::I64) throw py::type_error("perm: expected int64");
  if (total.dtype != DType::F64) throw py::type_error("total: expected float64");
  for (View* o : {&perm, &total}) {
    if (o->is_cuda()) throw py::value_error(std::string(o->name) + ": expected a CPU tensor");
    require_writable(*o);
    require_contiguous(*o);
    require_no_overlap(*o, cost);
  }
  require_shape(perm, {B, n}, "(B, n)");
  require_shape(total, {B}, "(B,)");
  AssignmentArgs a;
  a.B = B; a.n = n;
  a.cost = reinterpret_cast<const double*>(cost.data); a.c_sb = cost.strides[0]; a.c_si = cost.strides[1];
  a.perm = reinterpret_cast<int64_t*>(perm.data);
  a.total = reinterpret_cast<double*>(total.data);
  int rc;
  {
    py::gil_scoped_release nogil;
    rc = assignment_cpu(a, nthreads);
  }
  if (rc == 1) throw py::value_error("cost: contains NaN or infinite entries");
}

}  // namespace

void register_ot_ops(py::module_& m) {
  m.def("sinkhorn", &sinkhorn, py::arg("cost"), py::arg("a"), py::arg("b"), py::arg("plan"), py::arg("f"), py::arg("g"),
        py::arg("stats"), py::arg("iters"), py::arg("work"), py::arg("eps"), py::arg("tol"), py::arg("max_iters"),
        py::arg("check_every"), py::arg("eps_scaling"), py::arg("eps0"), py::arg("eps_q"), py::arg("stage_tol"),
        py::arg("relax"), py::arg("weight_tol"), py::arg("nthreads"), py::arg("stream"), py::arg("blocks") = 0,
        "batched Sinkhorn (csrc/ot/sinkhorn.h); status per problem in stats[:, 3]");
  m.def("sinkhorn_work_size", &work_size, py::arg("n"), py::arg("m"), py::arg("blocks") = 0,
        "float64 scratch entries per problem the CUDA Sinkhorn needs (blocks: as for sinkhorn)");
  m.def("linear_assignment", &linear_assignment, py::arg("cost"), py::arg("perm"), py::arg("total"),
        py::arg("nthreads"), "batched exact assignment, Jonker-Volgenant (csrc/ot/lapjv.h)");
}

}  // namespace dc
