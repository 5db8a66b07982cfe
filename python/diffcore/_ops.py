"""The only module that imports ``diffcore._core``.

Every compiled op has two paths (docs/design.md, "Arrays across the boundary"):

* the **fast path**: arguments cross as DLPack capsules (``torch.utils.dlpack.to_dlpack`` for torch,
  ≈0.2 µs, ``__dlpack__`` for NumPy/CuPy/JAX) into one C++/CUDA call; taken only when no gradient
  is needed and nothing is traced;
* the **reference path**: the same arithmetic in eager torch, taken under autograd (an input requires
  grad while grad mode is on), inside ``torch.func`` transforms (``jvp``, ``vmap``, ``grad``) and while
  ``torch.compile`` traces — all three handle it natively, so gradients and JVPs are exact.

Outputs are allocated here by torch (or passed by the caller as ``out=``), never by C++.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Optional

import numpy as np
import torch
from torch.utils.dlpack import to_dlpack as _to_dlpack

from . import _core

__all__ = ["build_info", "set_num_threads", "get_num_threads", "lincomb", "lincomb_reference", "fast_path_ok",
           "sinkhorn", "linear_assignment", "picard_window", "adaptive_control"]

_peek_interpreter = torch._C._functorch.peek_interpreter_stack
_is_compiling = torch.compiler.is_compiling
_num_threads: Optional[int] = None
#: The most dimensions a tensor handed to a compiled kernel may have (csrc/bind/dlpack_view.h).
MAX_DIMS: int = _core.MAX_DIMS
#: The coefficient row's columns and the stage record's fields (csrc/core/row_layout.h; Python reads
#: rows through diffcore._row), the fused step's noise sources and the Philox key domains.
RowLayout = _core.RowLayout
StageRecord = _core.StageRecord
MAX_RING: int = _core.MAX_RING
NoiseKind = _core.NoiseKind
NoiseDomain = _core.NoiseDomain
NodeRecord = _core.NodeRecord
Prediction = _core.Prediction
ScheduleFamily = _core.ScheduleFamily
OTStatus = _core.OTStatus
EpsScaling = _core.EpsScaling
#: The adaptive solvers' step-size controller constants and defaults (csrc/core/adaptive.h).
ADAPTIVE_CONTROL: dict = dict(_core.ADAPTIVE_CONTROL)
_tls = threading.local()


#: The most threads :func:`set_num_threads` accepts: 4 x ``os.cpu_count()`` (at least 64). More
#: threads than that only oversubscribe the cores, and past the system's thread limit OpenMP
#: cannot create the team at all.
MAX_THREADS: int = max(64, 4 * (os.cpu_count() or 1))


def set_num_threads(n: Optional[int]) -> None:
    """Threads for diffcore's CPU kernels; ``None`` follows ``torch.get_num_threads()`` (the default),
    so diffcore never oversubscribes the cores beside torch's own pool."""
    global _num_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS):
        # an unbounded team kills the process at the next kernel call (thread creation fails inside
        # OpenMP: abort at 32768 threads, segfault at 100000), so the bound is checked here
        raise ValueError(f"n: expected a positive int <= {MAX_THREADS} (4 x os.cpu_count(), at least 64) "
                         f"or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    """The thread count diffcore's CPU kernels use now."""
    return _num_threads if _num_threads is not None else torch.get_num_threads()


def build_info() -> dict:
    """Version, compiler, CUDA on/off and architectures, OpenMP and the thread count in use."""
    info = dict(_core.build_info())
    info["num_threads"] = get_num_threads()
    info["cuda_devices"] = _core.cuda_device_count() if info["cuda"] else 0
    return info


def in_transform() -> bool:
    """True inside a ``torch.func`` transform (jvp, vmap, grad), where tensor values cannot be read."""
    return _peek_interpreter() is not None


def untraced() -> bool:
    """No ``torch.func`` transform is active and ``torch.compile`` is not tracing."""
    return _peek_interpreter() is None and not _is_compiling()


def fast_path_ok(*tensors) -> bool:
    """True when the compiled kernel may run: no tensor needs a gradient, no ``torch.func`` transform
    is active and ``torch.compile`` is not tracing. Non-torch arrays always take the fast path."""
    if in_transform() or _is_compiling():
        return False
    if torch.is_grad_enabled():
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                return False
    for t in tensors:
        if isinstance(t, torch.Tensor) and (t.is_meta or t.layout is not torch.strided):
            return False
    return True


def _numpy_in(a: np.ndarray) -> np.ndarray:
    """A NumPy array that is only read, as an array torch and the kernels can import: a contiguous copy
    when it has negative strides (torch aborts the interpreter on them), strides that are not whole
    elements, misaligned data or a non-native byte order; the array itself otherwise."""
    if a.flags.aligned and a.dtype.isnative and all(s >= 0 and s % a.itemsize == 0 for s in a.strides):
        return a
    return np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)


def _numpy_to_torch(a: np.ndarray, name: str) -> torch.Tensor:
    a = _numpy_in(a)
    try:
        with warnings.catch_warnings():
            # a read-only array is only read here (written arguments are checked by _capsule / lincomb)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(a)
    except TypeError as e:
        raise TypeError(f"{name}: NumPy dtype {a.dtype} has no torch equivalent") from e


def _dlpack_versioned(a):
    """``a.__dlpack__()``, asking for DLPack 1.0 (which carries the read-only flag) where the producer
    supports it; older producers take no ``max_version``."""
    try:
        return a.__dlpack__(max_version=(1, 0))
    except TypeError:
        return a.__dlpack__()


def _capsule(a, name: str = "argument", written: bool = False):
    """A DLPack capsule of ``a`` for a kernel. ``written``: the kernel writes into ``a``, so NumPy arrays
    are passed as they are (the kernels take any batch stride; read-only ones are refused by name);
    read NumPy arrays are normalized by :func:`_numpy_in`. Other producers' capsules are validated by
    the kernel binding (csrc/bind/dlpack_view.cpp)."""
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return _to_dlpack(a)
    if isinstance(a, np.ndarray):
        if written and not a.flags.writeable:
            raise ValueError(f"{name}: the NumPy array is read-only (writeable=False) but {name} is written; "
                             "pass a writable array")
        if not written:
            a = _numpy_in(a)
        try:
            return _dlpack_versioned(a)
        except BufferError:  # NumPy < 2.1 cannot export read-only arrays: torch can
            return _to_dlpack(_numpy_to_torch(a, name))
    if hasattr(a, "__dlpack__"):
        return _dlpack_versioned(a)
    raise TypeError(f"{name}: expected a torch tensor or an array exposing __dlpack__, got {type(a).__name__}")


def _stream_of(a) -> int:
    """The caller's current CUDA stream handle for the array's device (0 on CPU)."""
    if isinstance(a, torch.Tensor):
        if a.device.type == "cuda":
            return torch.cuda.current_stream(a.device).cuda_stream
        return 0
    dev = getattr(a, "__dlpack_device__", None)
    if dev is not None and dev()[0] == 2:  # kDLCUDA: a CuPy (or JAX) array
        try:
            import cupy  # noqa: PLC0415

            return cupy.cuda.get_current_stream().ptr
        except ImportError:  # pragma: no cover - no CuPy: legacy default stream
            return 0
    return 0


def _as_torch(a, name: str = "argument") -> torch.Tensor:
    """A torch view of any DLPack array (zero copy), used for outputs and for the reference path."""
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return _numpy_to_torch(a, name)
    if not hasattr(a, "__dlpack__"):
        raise TypeError(f"{name}: expected a torch tensor or an array exposing __dlpack__, got {type(a).__name__}")
    # torch trusts a capsule's extents and strides (it aborts the interpreter on negative strides and
    # reads through a null data pointer): the capsule is validated first, on the stream torch would use
    kwargs = {}
    dev = a.__dlpack_device__() if hasattr(a, "__dlpack_device__") else (1, 0)
    if dev[0] == 2:  # kDLCUDA: the producer orders its work before torch's current stream (1: legacy default)
        stream = torch.cuda.current_stream(dev[1]).cuda_stream
        kwargs["stream"] = 1 if stream == 0 else stream
    capsule = a.__dlpack__(**kwargs)
    _core.dlpack_check(capsule, name)
    return torch.utils.dlpack.from_dlpack(capsule)


_HALF_OR_REAL = ("float16", "bfloat16", "float32", "float64")


def _dtype_name(a) -> str:
    d = a.dtype
    return str(d).replace("torch.", "") if isinstance(d, torch.dtype) else str(getattr(d, "name", d))


def _device_name(a) -> str:
    if isinstance(a, torch.Tensor):
        return str(a.device)
    if isinstance(a, np.ndarray) or not hasattr(a, "__dlpack_device__"):
        return "cpu"
    kind, index = a.__dlpack_device__()
    return {1: "cpu", 2: f"cuda:{index}"}.get(int(kind), f"device type {int(kind)}")


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_lincomb_args(x, coefs, ring=None, new=None, slot: int = -1, feat=None, out=None) -> None:
    """The argument rules of :func:`lincomb`, checked on shapes, dtypes and devices only (so also under
    autograd and ``torch.func`` transforms): the compiled kernel and :func:`lincomb_reference` accept
    exactly the same calls. Raises TypeError / ValueError naming the argument (the kernel binding,
    csrc/bind/module.cpp, repeats these checks for direct callers of ``_core``)."""
    args = (("x", x), ("coefs", coefs), ("ring", ring), ("new", new), ("feat", feat), ("out", out))
    for name, a in args:
        if a is not None and not (isinstance(a, torch.Tensor) or hasattr(a, "__dlpack__")):
            raise TypeError(f"{name}: expected a torch tensor or an array exposing __dlpack__, "
                            f"got {type(a).__name__}")
    if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)):
        raise TypeError(f"slot: expected an int, got {slot!r}")
    slot = int(slot)
    xs = tuple(x.shape)
    if _dtype_name(x) not in _HALF_OR_REAL:
        raise TypeError(f"x: expected float16, bfloat16, float32 or float64, got {_dtype_name(x)}")
    if len(xs) < 1:
        raise ValueError("x: expected at least one (batch) dimension")
    B, N = xs[0], int(np.prod(xs[1:], dtype=np.int64))
    dev = _device_name(x)
    for name, a in args[1:]:
        if a is not None and _device_name(a) != dev:
            raise ValueError(f"{name}: expected a tensor on {dev} (as x), got {_device_name(a)}")
    for name, a in (("ring", ring), ("new", new), ("out", out)):
        if a is not None and _dtype_name(a) != _dtype_name(x):
            raise TypeError(f"{name}: expected dtype {_dtype_name(x)} (as x), got {_dtype_name(a)}")
    K = 0
    if ring is not None:
        if tuple(ring.shape)[1:] != xs or len(ring.shape) != len(xs) + 1:
            raise ValueError(f"ring: expected shape (K, *x.shape), got {_shape_str(tuple(ring.shape))} with x of "
                             f"shape {_shape_str(xs)}")
        K = int(ring.shape[0])
    if (new is not None) != (slot >= 0):
        raise ValueError("new: a new model output and a ring slot index must be given together")
    if new is not None:
        if ring is None:
            raise ValueError("new: writing a history slot needs a ring buffer")
        if slot >= K:
            raise ValueError(f"slot: expected 0 <= slot < K = {K}, got {slot}")
        if tuple(new.shape) != xs:
            raise ValueError(f"new: expected shape equal to x's, got {_shape_str(tuple(new.shape))} with x of "
                             f"shape {_shape_str(xs)}")
    elif slot != -1:
        raise ValueError("slot: expected -1 when no new output is written")
    if _dtype_name(coefs) not in ("float32", "float64"):
        raise TypeError(f"coefs: expected float32 or float64, got {_dtype_name(coefs)}")
    cs = tuple(coefs.shape)
    if len(cs) != 2 or cs[0] not in (B, 1) or cs[1] != 1 + K:
        raise ValueError(f"coefs: expected shape ({B} or 1, {1 + K}) = (batch, 1 + K), got {_shape_str(cs)}")
    if feat is not None:
        if _dtype_name(feat) != _dtype_name(coefs):
            raise TypeError(f"feat: expected dtype {_dtype_name(coefs)} (as coefs), got {_dtype_name(feat)}")
        fs = tuple(feat.shape)
        if len(fs) != 3 or fs[0] not in (B, 1) or fs[1] != 1 + K or fs[2] != N:
            raise ValueError(f"feat: expected shape ({B} or 1, {1 + K}, {N}) = (batch, 1 + K, features), "
                             f"got {_shape_str(fs)}")
    if out is not None and tuple(out.shape) != xs:
        raise ValueError(f"out: expected shape equal to x's, got {_shape_str(tuple(out.shape))} with x of shape "
                         f"{_shape_str(xs)}")


def _foreign(a) -> bool:
    """An array that is neither a torch tensor nor a NumPy array but exposes ``__dlpack__``."""
    return a is not None and not isinstance(a, (torch.Tensor, np.ndarray)) and hasattr(a, "__dlpack__")


def _np_features_compact(a: np.ndarray) -> bool:
    """Dimensions from 1 on row-major contiguous (any stride on the batch axis), as the kernels write."""
    expect = a.itemsize
    for size, st in zip(reversed(a.shape[1:]), reversed(a.strides[1:])):
        if size != 1 and st != expect:
            return False
        expect *= size
    return True


def _write_out(out, res: torch.Tensor):
    """Copy the reference result into a caller's ``out`` (a torch tensor or a writable NumPy array)."""
    if isinstance(out, torch.Tensor):
        return out.copy_(res)
    if isinstance(out, np.ndarray):
        if not out.flags.writeable:
            raise ValueError("out: the NumPy array is read-only (writeable=False) but out is written; "
                             "pass a writable array")
        np.copyto(out, res.detach().cpu().numpy())
        return out
    _as_torch(out, "out").copy_(res)
    return out


def lincomb_reference(x, coefs, ring=None, new=None, slot=-1, feat=None, out=None):
    """Eager-torch reference of :func:`lincomb` (differentiable; used under autograd / transforms)."""
    _check_lincomb_args(x, coefs, ring, new, slot, feat, out)
    x = _as_torch(x, "x")
    B = x.shape[0]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    c = _as_torch(coefs, "coefs").to(compute)
    f = None if feat is None else _as_torch(feat, "feat").to(compute).reshape(feat.shape[0], feat.shape[1],
                                                                             *x.shape[1:])
    bshape = (c.shape[0],) + (1,) * (x.dim() - 1)

    def weight(k):
        w = c[:, k].reshape(bshape)
        return w if f is None else w * f[:, k]

    acc = weight(0) * x.to(compute)
    terms = []
    if ring is not None:
        ring_np = ring if isinstance(ring, np.ndarray) else None
        ring = _as_torch(ring, "ring")
        for k in range(ring.shape[0]):
            terms.append(_as_torch(new, "new") if k == slot else ring[k])
    for k, term in enumerate(terms):
        acc = acc + weight(k + 1) * term.to(compute)
    if slot >= 0:
        with torch.no_grad():
            if ring_np is not None:  # the torch view may be a copy (e.g. of negative strides)
                _write_out(ring_np[slot], _as_torch(new, "new").detach())
            else:
                ring[slot].copy_(_as_torch(new, "new").detach())
    res = acc.to(x.dtype)
    if out is not None:
        return _write_out(out, res)
    return res if res.shape[0] == B else res.expand_as(x)


def lincomb(x, coefs, ring=None, new=None, slot: int = -1, feat=None, out=None):
    """Fused linear combination ``out = c₀·x + Σ_k c_k·ring[k]`` (docs/design.md, "The one idea").

    Args:
        x: ``[B, *S]`` state (float16/bfloat16/float32/float64; half types compute in float32).
        coefs: ``[B, 1+K]`` (or ``[1, 1+K]``, broadcast) per-sample coefficients, float32/float64:
            column 0 multiplies ``x``, column ``k+1`` multiplies ring slot ``k``.
        ring: optional history ring buffer ``[K, B, *S]`` of past model outputs.
        new: optional new model output ``[B, *S]``; it is written into ``ring[slot]`` and used as that
            slot's term in the same pass (the step's history update).
        slot: ring slot to write (``-1``: none).
        feat: optional per-feature factors ``[B or 1, 1+K, prod(S)]`` multiplying the coefficients
            (DPM-Solver-v3's per-dimension coefficients), same dtype as ``coefs``.
        out: optional output ``[B, *S]``; may be ``x`` itself or a ring slot other than ``slot``.

    Returns ``out`` (a new torch tensor when not given). Under autograd, ``torch.func`` transforms or
    ``torch.compile`` tracing this runs :func:`lincomb_reference` instead of the compiled kernel.
    """
    if any(_foreign(a) for a in (x, coefs, ring, new, feat, out)):
        # other producers (CuPy, JAX, hand-made capsules): validated zero-copy torch views
        xa, ca, ra, na, fa, oa = (_as_torch(a, name) if _foreign(a) else a for name, a in
                                  (("x", x), ("coefs", coefs), ("ring", ring), ("new", new), ("feat", feat),
                                   ("out", out)))
        res = lincomb(xa, ca, ra, na, slot, fa, oa)
        return res if out is None else out
    if not fast_path_ok(x, coefs, ring, new, feat, out):
        return lincomb_reference(x, coefs, ring, new, slot, feat, out)
    _check_lincomb_args(x, coefs, ring, new, slot, feat, out)
    if isinstance(out, np.ndarray) and not _np_features_compact(out):
        # a NumPy out the kernel cannot write in place (e.g. reversed feature axes): compute, then copy
        return _write_out(out, lincomb(x, coefs, ring, new, slot, feat))
    if out is None:
        xt = _as_torch(x, "x")
        out = torch.empty(xt.shape, dtype=xt.dtype, device=xt.device)
    _core.lincomb(
        _capsule(out, "out", written=True), _capsule(x, "x"), _capsule(coefs, "coefs"),
        _capsule(ring, "ring", written=slot >= 0), _capsule(new, "new"), slot, _capsule(feat, "feat"),
        get_num_threads(), _stream_of(x),
    )
    return out


def schedule_eval(cid: int, params, table, t: torch.Tensor):
    """All eight schedule quantities (α, σ, α', σ', λ, λ', f, g²) at CPU times ``t`` in the float64
    core (csrc/core/schedule_math.h). Returns a tuple of tensors shaped and typed like ``t``."""
    tt = t.detach().to(torch.float64).contiguous()
    out = torch.empty((8,) + tuple(tt.shape), dtype=torch.float64)
    _core.schedule_eval(int(cid), [float(p) for p in params], _capsule(table), _capsule(tt), _capsule(out))
    if t.dtype != torch.float64:
        out = out.to(t.dtype)
    return tuple(out.unbind(0))


def schedule_inverse(cid: int, params, table, lam: torch.Tensor) -> torch.Tensor:
    """t(λ) at CPU half log-SNR values in the float64 core; shaped and typed like ``lam``."""
    ll = lam.detach().to(torch.float64).contiguous()
    out = torch.empty(tuple(ll.shape), dtype=torch.float64)
    _core.schedule_inverse(int(cid), [float(p) for p in params], _capsule(table), _capsule(ll), _capsule(out))
    return out if lam.dtype == torch.float64 else out.to(lam.dtype)


def philox4x32(counter, key):
    """Philox-4x32-10 of one counter block (four uint32 words) under a two-word key."""
    return tuple(_core.philox4x32([int(c) for c in counter], [int(k) for k in key]))


def noise_fill(out: torch.Tensor, seed: int, ids=None, draw: int = 0, domain: int = 0, intervals=None,
               span=(0.0, 1.0), depth: int = 20) -> torch.Tensor:
    """Fill ``out`` [B, ...] in place with the compiled noise (csrc/core/noise_fill.h)."""
    _core.noise_fill(_to_dlpack(out), int(seed), _capsule(ids, "sample_ids"), int(draw), int(domain),
                     _capsule(intervals, "intervals"), float(span[0]), float(span[1]), int(depth), get_num_threads(),
                     _stream_of(out))
    return out


def make_stepper(x, y, ring, coefs, layout, noise=0, seed=0, ids=None, span=(0.0, 1.0), depth=20):
    """Bind a run's buffers (x, y or None, ring or None) and a plan's coefficient table to the fused
    step kernel (csrc/bind/step_bind.cpp); validation happens once here, not per step."""
    return _core.Stepper(_capsule(x, "x"), _capsule(y, "y"), _capsule(ring, "ring"), _capsule(coefs, "coefs"),
                         list(layout), int(noise), int(seed), _capsule(ids, "sample_ids"), float(span[0]),
                         float(span[1]), int(depth))


def plan_build(method, options, grid, stage, quad, orders, K, S, coefs, mtime, extra, prediction, native, prelude):
    """Fill a coefficient plan in the float64 core (csrc/bind/plan_bind.cpp); returns (layout, nstages, has_prelude)."""
    layout, nstages, pre = _core.plan_build(method, dict(options), _capsule(grid), _capsule(stage), _capsule(quad),
                                            [int(o) for o in orders], int(K), int(S), _capsule(coefs), _capsule(mtime),
                                            _capsule(extra), int(prediction), int(native), _capsule(prelude))
    return list(layout), list(nstages), bool(pre)


def sinkhorn(cost, a, b, eps: float, tol: float, max_iters: int, check_every: int, eps_scaling: int, eps0: float,
             eps_q: float, stage_tol: float, relax: bool, weight_tol: float):
    """Batched Sinkhorn in the compiled core (csrc/ot/sinkhorn.h) on ``cost [B, n, m]`` (last dim
    contiguous), weights ``a [B, n]``, ``b [B, m]`` or None. Returns ``(plan, f, g, stats, iters)`` with
    ``stats [B, 4]`` float64 = (value, transport cost, marginal error, status code) on cost's device.
    ``eps_scaling``: 0 off, 1 on, 2 automatic; ``eps0`` 0: each problem's cost range."""
    B, n, m = cost.shape
    plan = torch.empty((B, n, m), dtype=cost.dtype, device=cost.device)
    f = torch.empty((B, n), dtype=cost.dtype, device=cost.device)
    g = torch.empty((B, m), dtype=cost.dtype, device=cost.device)
    stats = torch.empty((B, 4), dtype=torch.float64, device=cost.device)
    iters = torch.empty((B,), dtype=torch.int64, device=cost.device)
    work = None
    if cost.device.type == "cuda":
        work = torch.empty((B, _core.sinkhorn_work_size(n, m)), dtype=torch.float64, device=cost.device)
    _core.sinkhorn(_to_dlpack(cost), _capsule(a, "a"), _capsule(b, "b"), _to_dlpack(plan), _to_dlpack(f),
                   _to_dlpack(g), _to_dlpack(stats), _to_dlpack(iters), _capsule(work, "work"), float(eps),
                   float(tol), int(max_iters), int(check_every), int(eps_scaling), float(eps0), float(eps_q),
                   float(stage_tol), bool(relax), float(weight_tol), get_num_threads(), _stream_of(cost))
    return plan, f, g, stats, iters


def _rows_compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its dimensions from 2 on are row-major contiguous (any strides on the window
    and batch axes, e.g. a slice of the trajectory buffer), else a contiguous copy."""
    expect = 1
    for size, st in zip(reversed(t.shape[2:]), reversed(t.stride()[2:])):
        if size != 1 and st != expect:
            return t.contiguous()
        expect *= size
    return t


def picard_window(x: torch.Tensor, phi: torch.Tensor, sigma2: torch.Tensor, tolerance: float, carry=None):
    """The fused Picard window update (csrc/core/picard.h; book §9.8, Eq. (9.8.4), Alg. 8) on
    float32/float64 torch tensors on the CPU or one CUDA device: returns ``(y, residual, stride)`` as
    :func:`diffcore.parallel.window_update_reference` does. ``sigma2`` is broadcast to ``[J, B]`` in
    ``x``'s dtype on its device; a ``carry`` table on another device is moved there (the Picard sampler
    keeps its table on the device, so nothing is copied per round). Outputs and the CUDA scratch are
    allocated here by torch; the call does not synchronize (``stride`` is a 0-d device tensor)."""
    J, B = phi.shape[0], phi.shape[1]
    dev = x.device
    x, phi = _rows_compact(x), _rows_compact(phi)
    s2 = torch.as_tensor(sigma2, dtype=x.dtype, device=dev).expand(J, B)
    if carry is not None and carry.device != dev:
        carry = carry.to(dev, non_blocking=True)
    y = torch.empty(phi.shape, dtype=x.dtype, device=dev)
    residual = torch.empty((J, B), dtype=x.dtype, device=dev)
    stride = torch.empty((), dtype=torch.int64, device=dev)
    work = None
    if dev.type == "cuda":
        nb = phi.shape[-1] if carry is not None else 1
        P = phi[0, 0].numel() // nb if nb else 0
        work = torch.empty((_core.picard_work_size(J, B, P),), dtype=torch.float64, device=dev)
    _core.picard_window(_to_dlpack(x), _to_dlpack(phi), _to_dlpack(s2), _capsule(carry, "carry"), _to_dlpack(y),
                        _to_dlpack(residual), _to_dlpack(stride), _capsule(work, "work"), float(tolerance) ** 2,
                        get_num_threads(), _stream_of(x))
    return y, residual, stride


def linear_assignment(cost):
    """Batched exact assignment (csrc/ot/lapjv.h) of a float64 CPU ``cost [B, n, n]`` (last dim
    contiguous). Returns ``(perm [B, n] int64, total [B] float64)``."""
    B, n, _ = cost.shape
    perm = torch.empty((B, n), dtype=torch.int64)
    total = torch.empty((B,), dtype=torch.float64)
    _core.linear_assignment(_to_dlpack(cost), _to_dlpack(perm), _to_dlpack(total), get_num_threads())
    return perm, total


def adaptive_control(x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active, *, atol: float, rtol: float,
                     order: int, theta: float = ADAPTIVE_CONTROL["theta"], fac_min: float = ADAPTIVE_CONTROL["fac_min"],
                     fac_max: float = ADAPTIVE_CONTROL["fac_max"], k_i: float = ADAPTIVE_CONTROL["k_i"],
                     k_p: float = ADAPTIVE_CONTROL["k_p"]):
    """The adaptive solver's fused per-sample error control (csrc/core/adaptive.h): the same call and
    result as :func:`diffcore.solvers.adaptive_control.adaptive_control_reference` — returns
    ``(accepted [B] bool, E [B] float64)`` and updates ``x`` (where accepted), ``h``, ``err_prev``,
    ``lam_s`` and ``active`` in place. ``x, x_low, x_high`` are float32/float64 ``[B, *S]`` of one dtype
    with ``x``'s features row-major contiguous (``x_low``/``x_high`` are made so if they are not);
    ``h, err_prev, lam_s`` float64 ``[B]`` and ``active`` bool ``[B]`` on ``x``'s device; ``lam_t`` and
    ``lam_end`` are broadcast to float64 ``[B]`` there (a number or an expanded tensor is not copied).
    Outputs are allocated here by torch; the call does not synchronize. Under autograd or a
    ``torch.func`` transform, or while ``torch.compile`` traces, the reference runs instead."""
    if not fast_path_ok(x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active):
        from .solvers.adaptive_control import adaptive_control_reference  # noqa: PLC0415 (import cycle)

        return adaptive_control_reference(x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active, atol=atol,
                                          rtol=rtol, order=order, theta=theta, fac_min=fac_min, fac_max=fac_max,
                                          k_i=k_i, k_p=k_p)
    B = x.shape[0]
    dev = x.device
    x_low = x_low.contiguous() if not _features_compact(x_low) else x_low
    x_high = x_high.contiguous() if not _features_compact(x_high) else x_high
    lam_t = torch.as_tensor(lam_t, dtype=torch.float64, device=dev).expand(B)
    lam_end = torch.as_tensor(lam_end, dtype=torch.float64, device=dev).expand(B)
    accepted = torch.empty((B,), dtype=torch.bool, device=dev)
    err = torch.empty((B,), dtype=torch.float64, device=dev)
    _core.adaptive_control(_to_dlpack(x), _to_dlpack(x_low), _to_dlpack(x_high), _to_dlpack(h), _to_dlpack(err_prev),
                           _to_dlpack(lam_s), _to_dlpack(lam_t), _to_dlpack(lam_end), _to_dlpack(active),
                           _to_dlpack(accepted), _to_dlpack(err), float(atol), float(rtol), int(order), float(theta),
                           float(fac_min), float(fac_max), float(k_i), float(k_p), get_num_threads(), _stream_of(x))
    return accepted, err


def _features_compact(t: torch.Tensor) -> bool:
    """Dimensions from 1 on row-major contiguous (any stride on the batch axis)."""
    expect = 1
    for size, st in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and st != expect:
            return False
        expect *= size
    return True
