"""Forward-mode Jacobian–vector products that MeanFlow (book §11.5) and
continuous-time consistency models (book §11.3) need: ``∂fn[tangent]`` along a direction, in one pass.

``jvp(fn, primals, tangents)`` returns ``(fn(*primals), J_fn(primals)·tangents)``:

* ``method="autograd"``: :func:`torch.func.jvp` (exact). The compiled ops of diffcore detect
  ``torch.func`` transforms and run their eager torch references, so networks built from
  :mod:`diffcore.models` are differentiable in forward mode. The primal output keeps its autograd
  graph to the parameters, so it can serve as the prediction of a loss whose target is the (detached)
  tangent (book §11.5; checked by tests/test_distill_trajectory.py).
* ``method="fd"``: the central difference ``(fn(p + h·v) − fn(p − h·v)) / 2h`` (bias ``O(h²)``), the
  fallback for ops without a forward-mode rule. The primal output is a separate ``fn(p)``
  call with the ordinary graph. Run it in float32 or float64: with half precision the cancellation
  error ``ε_mach/h`` dominates. Default ``h = ε_mach^{1/3}`` of the primals' dtype (balances the
  ``h²`` truncation against the ``ε_mach/h`` rounding error): ≈ 6e-6 in float64, ≈ 5e-3 in float32.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch

__all__ = ["jvp", "default_fd_step"]

_METHODS = ("autograd", "fd")


def default_fd_step(dtype: torch.dtype) -> float:
    """``ε_mach^{1/3}`` of ``dtype``: the step minimising truncation + rounding of a central difference."""
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)


def _as_tuple(v, name: str) -> Tuple[torch.Tensor, ...]:
    if isinstance(v, torch.Tensor):
        v = (v,)
    if not isinstance(v, (tuple, list)) or not v or not all(isinstance(a, torch.Tensor) for a in v):
        raise TypeError(f"{name}: expected a tensor or a non-empty tuple of tensors")
    return tuple(v)


def jvp(fn: Callable, primals: Sequence[torch.Tensor], tangents: Sequence[torch.Tensor],
        method: str = "autograd", h: Optional[float] = None):
    """``(fn(*primals), ∂fn(primals)[tangents])`` (forward mode).

    Args:
        fn: a function of the primals returning one tensor.
        primals, tangents: tensors (or tuples of them) of matching shapes and floating dtypes.
        method: ``"autograd"`` (``torch.func.jvp``, exact) or ``"fd"`` (central finite difference).
        h: finite-difference step (``"fd"`` only; default :func:`default_fd_step` of the primals' dtype).
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if not callable(fn):
        raise TypeError("fn: expected a callable")
    p = _as_tuple(primals, "primals")
    v = _as_tuple(tangents, "tangents")
    if len(p) != len(v):
        raise ValueError(f"tangents: expected {len(p)} tangents (one per primal), got {len(v)}")
    for i, (a, b) in enumerate(zip(p, v)):
        if a.shape != b.shape:
            raise ValueError(f"tangents: tangent {i} has shape {tuple(b.shape)}, primal {tuple(a.shape)}")
        if not a.is_floating_point() or not b.is_floating_point():
            raise TypeError(f"primals, tangents: entry {i} must be floating point")
    if method == "autograd":
        if h is not None:
            raise ValueError("h: only used with method='fd'")
        return torch.func.jvp(fn, p, v)
    if h is None:
        h = default_fd_step(p[0].dtype)
    if not isinstance(h, (int, float)) or isinstance(h, bool) or not h > 0:
        raise ValueError(f"h: expected a positive step, got {h!r}")
    out = fn(*p)
    plus = fn(*(a + h * b.to(a.dtype) for a, b in zip(p, v)))
    minus = fn(*(a - h * b.to(a.dtype) for a, b in zip(p, v)))
    return out, (plus - minus) / (2.0 * h)
