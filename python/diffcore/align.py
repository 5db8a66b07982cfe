"""Preference alignment of diffusion models: Diffusion-DPO (book §8.5.4; Wallace et al. 2024; docs/errata.md D2).

Derivation summary (Wallace et al. 2024; book §8.5.4): the path-level implicit reward of DPO, bounded by
Jensen and factorised over the reverse Markov chain, gives a one-timestep estimator in which each Gaussian reverse-kernel
log-ratio becomes an ε-MSE difference. With winner/loser ``x^w_0, x^l_0`` noised with the **same**
``t`` and ``ε`` (variance reduction),

    ΔMSE(x_t) = ‖ε_θ(x_t, t, c) − ε‖² − ‖ε_ref(x_t, t, c) − ε‖²
    L_DDPO(θ) = E softplus(βT · w(t) · [ΔMSE(x^w_t) − ΔMSE(x^l_t)])          (bounded form, default)

(``= −log σ(−βT w(t)[…])``). The reference branch runs under ``no_grad`` (frozen ``ε_ref``); ``βT`` is a
single hyperparameter ``beta``. The book's last display drops the ``−log σ`` and is the *linear*,
unbounded surrogate ``E βT w(t)[ΔMSE(x^w_t) − ΔMSE(x^l_t)]`` (same gradient direction at θ = ref);
it is offered only as ``linear=True`` (docs/errata.md D2). MSEs are the per-sample mean over features, the
same reduction for all four terms.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from . import schedules as _schedules
from .distill._common import per_sample_weight
from .param import convert, resolve_prediction

__all__ = ["diffusion_dpo_loss"]

Weight = Union[None, float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def diffusion_dpo_loss(model: Callable, ref_model: Callable, x_w: torch.Tensor, x_l: torch.Tensor, schedule,
                       beta: float, *, t=None, eps: Optional[torch.Tensor] = None, labels=None,
                       weight: Weight = None, prediction: Optional[str] = None, linear: bool = False,
                       reduction: str = "mean", generator: Optional[torch.Generator] = None,
                       t_range=None) -> torch.Tensor:
    """Diffusion-DPO loss (book §8.5.4 with the bounded softplus form, docs/errata.md D2).

    Args:
        model: trainable policy ``model(x, t, labels=...)`` (called without ``labels`` when None),
            predicting ``prediction`` (converted to ε; ``None``: the schedule's own type,
            ``"velocity"`` on the flow-matching schedules, ``"eps"`` on the diffusion ones).
        ref_model: frozen reference with the same signature; evaluated under ``torch.no_grad``.
        x_w, x_l: winner / loser clean samples, same shape ``(B, D...)``.
        schedule: the diffusion schedule (``x_t = α_t x_0 + σ_t ε``).
        beta: ``βT`` (> 0), the single temperature of the bound.
        t: per-sample times ``(B,)`` or a scalar; default ``U[t_end, t_start]`` of the schedule
            (or of ``t_range = (lo, hi)``) drawn with ``generator``.
        eps: the shared noise (default ``randn`` with ``generator``); the SAME ``t`` and ``ε`` noise
            winner and loser.
        labels: optional condition ``c`` passed as ``labels=`` to both networks.
        weight: ``w(t)`` (None → 1; a scalar, ``(B,)`` tensor or callable of ``t``), e.g. ``λ``-proportional.
        linear: the book's linear surrogate ``βT w(t) d`` instead of ``softplus(βT w(t) d)``.
        reduction: ``"mean"`` or ``"none"`` (per-sample losses).

    Returns the loss; at ``model == ref_model`` it is exactly ``log 2`` (softplus(0)) and its gradient is
    ``½ βT w(t) ∇_θ[MSE_θ(x^w_t) − MSE_θ(x^l_t)]``.
    """
    for name, x in (("x_w", x_w), ("x_l", x_l)):
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating tensor (B, D...), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x_w.shape != x_l.shape:
        raise ValueError(f"x_w, x_l: expected the same shape, got {tuple(x_w.shape)} and {tuple(x_l.shape)}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (beta > 0 and math.isfinite(beta)):
        raise ValueError(f"beta: expected a positive finite βT, got {beta!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    for name, m in (("model", model), ("ref_model", ref_model)):
        if not callable(m):
            raise TypeError(f"{name}: expected a callable model(x, t), got {type(m).__name__}")
    sched = _schedules.get(schedule) if isinstance(schedule, (str, _schedules.Schedule)) else None
    if sched is None:
        raise TypeError(f"schedule: expected a diffcore Schedule or a schedule name, got {type(schedule).__name__}")
    pred = resolve_prediction(prediction, sched)
    B, dt, dev = x_w.shape[0], x_w.dtype, x_w.device

    if t is None:
        lo, hi = (float(sched.t_end), float(sched.t_start)) if t_range is None else (float(v) for v in t_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"t_range: expected a finite interval lo < hi, got {(lo, hi)}")
        t = lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(B)
    if t.shape != (B,):
        raise ValueError(f"t: expected a scalar or shape ({B},), got {tuple(t.shape)}")
    t = t.to(device=dev, dtype=dt)
    if eps is None:
        eps = torch.randn(x_w.shape, generator=generator, dtype=dt).to(dev)
    elif not isinstance(eps, torch.Tensor) or eps.shape != x_w.shape:
        raise ValueError(f"eps: expected a tensor of shape {tuple(x_w.shape)}, got "
                         f"{tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__}")
    eps = eps.detach().to(dt)

    v = sched.eval(t.detach().to(torch.float64))
    shape = (-1,) + (1,) * (x_w.dim() - 1)
    a, s = v.alpha.to(dt).reshape(shape), v.sigma.to(dt).reshape(shape)
    # one batched call per network: rows [0, B) are winners, [B, 2B) losers, sharing t and ε
    xt = torch.cat([a * x_w + s * eps, a * x_l + s * eps], 0)
    tt = torch.cat([t, t], 0)
    kw = {} if labels is None else {"labels": torch.cat([labels, labels], 0) if isinstance(labels, torch.Tensor)
                                    else labels}
    e2 = torch.cat([eps, eps], 0)

    def mse(net):
        out = net(xt, tt, **kw)
        if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
            raise ValueError(f"model output: expected shape {tuple(xt.shape)}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        out = out.to(dt)
        if pred != "eps":
            out = convert(out, xt, tt, sched, pred, "eps")
        return ((out - e2) ** 2).flatten(1).mean(1)

    with torch.no_grad():
        ref = mse(ref_model)
    cur = mse(model)
    d = (cur[:B] - ref[:B]) - (cur[B:] - ref[B:])
    z = float(beta) * per_sample_weight(weight, t, d) * d
    per = z if linear else F.softplus(z)
    return per.mean() if reduction == "mean" else per
