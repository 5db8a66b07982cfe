"""One-step primitives for trainers and distillation: a single DDIM or Heun step from per-sample
times ``t`` to ``s`` (either direction: ``s < t`` denoises, ``s > t`` inverts data → noise).

Both call ``model(x, t, **model_kwargs)`` with a ``[B]`` tensor of times, convert its output with the
exact affine maps of book Prop. 6.3.1 and are differentiable (eager torch under autograd; the fused
kernel otherwise).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..param import _affine, _batch_times, conversion_coefs, resolve_prediction, singular_hint
from ..schedules import Schedule
from .runge_kutta import natural_variable


def _prep(x, t, s, schedule):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise TypeError("x: expected a torch tensor with a batch dimension")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a diffcore Schedule, got {type(schedule).__name__}")
    B = x.shape[0]
    tb = _batch_times(t, B, "t").to(x.device)
    sb = _batch_times(s, B, "s").to(x.device)
    vt = schedule.eval(tb.to(torch.float64))
    vs = schedule.eval(sb.to(torch.float64))
    if bool((vt.sigma <= 0).any()):
        raise ValueError("t: the step must start at σ > 0 (the model output cannot be converted at zero noise)")
    return tb, sb, vt, vs


def _out(model, x, tb, model_kwargs):
    out = model(x, tb, **(model_kwargs or {}))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"model: expected an output of shape {tuple(x.shape)}, got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    return out


def ddim_step(model: Callable, x: torch.Tensor, t, s, schedule: Schedule, prediction=None,
              model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """One DDIM (η = 0) step ``x_s = α_s x̂(x_t, t) + σ_s ε̂(x_t, t)`` (book
    Eq. (9.2.2)). ``t``, ``s``: scalars or ``[B]`` per-sample times; ``s > t`` is DDIM inversion.
    ``prediction=None``: the schedule's own type (``"velocity"`` on the flow-matching schedules)."""
    tb, _, vt, vs = _prep(x, t, s, schedule)
    pred = resolve_prediction(prediction, schedule)
    if pred in ("eps", "score") and bool((vt.alpha <= 0).any()):
        raise ValueError(f"t: a {pred} model's x̂ = (x − σε̂)/α is undefined where α = 0 (e.g. t = 1 of "
                         "rectified flow); start the step slightly inside, or use an x0/velocity model"
                         + singular_hint(pred, schedule))
    out = _out(model, x, tb.to(x.dtype), model_kwargs)
    cx0, cm0 = conversion_coefs(pred, "x0", vt, schedule)
    cxe, cme = conversion_coefs(pred, "eps", vt, schedule)
    c_x = vs.alpha * cx0 + vs.sigma * cxe
    c_m = vs.alpha * cm0 + vs.sigma * cme
    return _affine(x, out, c_x, c_m)


def heun_step(model: Callable, x: torch.Tensor, t, s, schedule: Schedule, prediction=None,
              model_kwargs: Optional[dict] = None, variable: Optional[str] = None) -> torch.Tensor:
    """One Heun step from ``t`` to ``s`` (Karras et al. 2022, Alg. 1): two model calls, second order.

    ``variable``: ``"rho"`` (dy/dρ = ε̂, y = x/α; EDM's Algorithm 1), ``"t"`` (dx/dt = v̂) or
    ``None`` (the schedule's natural variable, :func:`~diffcore.solvers.natural_variable`). Samples
    whose target has σ = 0 take the Euler step (the corrector would need the model at zero noise).
    ``prediction=None``: the schedule's own type (``"velocity"`` on the flow-matching schedules).
    """
    variable = variable or natural_variable(schedule)
    if variable not in ("t", "rho"):
        raise ValueError(f"variable: expected None, 't' or 'rho', got {variable!r}")
    tb, sb, vt, vs = _prep(x, t, s, schedule)
    pred = resolve_prediction(prediction, schedule)
    native = "eps" if variable == "rho" else "velocity"

    def deriv(xx, tt, vals):
        cx, cm = conversion_coefs(pred, native, vals, schedule)
        return _affine(xx, _out(model, xx, tt.to(x.dtype), model_kwargs), cx, cm)

    # both stages are x_s = a_w·x + d_w·(derivative)
    if variable == "rho":
        a_w = vs.alpha / vt.alpha
        d_w = vs.alpha * (vs.sigma / vs.alpha - vt.sigma / vt.alpha)
    else:
        a_w = torch.ones_like(vt.alpha)
        d_w = sb.to(torch.float64) - tb.to(torch.float64)
    d0 = deriv(x, tb, vt)
    x_pred = _affine(x, d0, a_w, d_w)
    final = vs.sigma <= 0
    if bool(final.all()):
        return x_pred
    vs_safe = schedule.eval(torch.where(final, tb.to(torch.float64), sb.to(torch.float64)))
    d1 = deriv(x_pred, sb, vs_safe)
    bshape = (x.shape[0],) + (1,) * (x.dim() - 1)
    d1 = torch.where(final.reshape(bshape).to(x.device), d0, d1)
    return _affine(x, 0.5 * (d0 + d1), a_w, d_w)
