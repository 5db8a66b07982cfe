"""Continuous-time consistency models on the TrigFlow path (sCM / sCT / sCD; Lu & Song 2025)
(book §11.3.3, Alg. 10, with the tangent fix of docs/errata.md D6 and the time-proposal fix D7).

TrigFlow time ``s ∈ [0, π/2]``: ``x_s = cos(s) x0 + sin(s) z``, ``z ~ N(0, σ_d² I)`` — the library's
``schedules.get("trig", sigma_data=σ_d)`` under ``s = πt/2`` (:meth:`~diffcore.schedules.Trig.to_trigflow_time`).

    f_θ(x, s) = cos(s) x − sin(s) σ_d F_θ(x/σ_d, s)                       (exact boundary f(x, 0) = x)
    g = −cos²s (σ_d F_{θ⁻} − dx/ds) − r cos s sin s (x_s + σ_d dF_{θ⁻}/ds),  g ← g/(‖g‖ + c)
    L = E[e^{w_φ(s)}/D ‖F_θ(x_s/σ_d, s) − F_{θ⁻}(x_s/σ_d, s) − g‖² − w_φ(s)],   θ⁻ = sg[θ]

``dF_{θ⁻}/ds`` is ONE JVP of ``F`` along ``(dx/ds / σ_d, 1)`` (:func:`diffcore.distill.jvp.jvp`).
The loss is a pseudo-objective: its value is not meaningful, its gradient is ``−(2/D) e^{w} ∂F_θᵀ g``.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from ._common import StepLoop, col as _col, per_sample
from .consistency import ema_update
from .jvp import jvp

__all__ = ["TrigConsistency", "scm_times", "scm_tangent", "scm_loss", "scm_sample", "SCMTrainer"]




class TrigConsistency(nn.Module):
    """``f_θ(x, s) = cos(s) x − sin(s) σ_d F_θ(x/σ_d, s)`` (TrigFlow form, book §11.3.3),
    ``c_noise(s) = s``.

    Args:
        net: ``F_θ(u, s, **kw)`` (e.g. :class:`diffcore.models.MLP` with a low ``max_freq``: bounded
            time-embedding derivatives, stabiliser C). sigma_data: σ_d.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data: expected a positive data std, got {sigma_data!r}")
        self.net, self.sigma_data = net, float(sigma_data)

    def raw(self, u: torch.Tensor, s, **kw) -> torch.Tensor:
        """``F_θ(u, s)``."""
        return self.net(u, per_sample(s, u, "s"), **kw)

    def forward(self, x: torch.Tensor, s, **kw) -> torch.Tensor:
        s = per_sample(s, x, "s")
        sd = self.sigma_data
        return _col(torch.cos(s), x) * x - _col(torch.sin(s), x) * sd * self.net(x / sd, s, **kw)


def scm_times(B: int, p_mean: float = -1.0, p_std: float = 1.4, sigma_data: float = 0.5,
              generator: Optional[torch.Generator] = None, dtype=torch.float32) -> torch.Tensor:
    """``s = arctan(e^τ/σ_d)``, ``τ ~ N(P_mean, P_std²)`` (docs/errata.md D7: ``log(σ_d tan s) ~ N``)."""
    if not p_std > 0 or not sigma_data > 0:
        raise ValueError(f"p_std, sigma_data: expected positive numbers, got {p_std!r}, {sigma_data!r}")
    dev = generator.device if generator is not None else "cpu"
    tau = p_mean + p_std * torch.randn(B, generator=generator, device=dev, dtype=torch.float64)
    return torch.atan(torch.exp(tau) / sigma_data).to(dtype)


def scm_tangent(model: TrigConsistency, x_s: torch.Tensor, s, dxds: torch.Tensor, r: float = 1.0,
                c: Optional[float] = 0.1, method: str = "autograd", h: Optional[float] = None,
                model_kwargs: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(F_{θ⁻}(x_s/σ_d, s), g)`` of book §11.3.3 without gradient: ``g = cos(s)·df_{θ⁻}/ds`` (with the warm-up
    factor ``r`` on the ``sin s`` part) normalised per sample by ``‖g‖ + c`` (``c=None``: unnormalised)."""
    s = per_sample(s, x_s, "s")
    if dxds.shape != x_s.shape:
        raise ValueError(f"dxds: expected shape {tuple(x_s.shape)}, got {tuple(dxds.shape)}")
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"r: expected a warm-up factor in [0, 1], got {r!r}")
    sd = model.sigma_data
    kw = model_kwargs or {}
    net = model.net
    if method == "autograd" and isinstance(net, nn.parallel.DistributedDataParallel) and net.broadcast_buffers \
            and any(True for _ in net.buffers()):
        # DDP copies buffers in place at the start of forward; torch.func.jvp forbids mutating captured tensors
        raise ValueError("model: wrap its net as DistributedDataParallel(..., broadcast_buffers=False) for the "
                         "sCM JVP (its buffers are constants); gradients are still all-reduced in backward")
    with torch.no_grad():
        Fm, dF = jvp(lambda u, ss: model.raw(u, ss, **kw), (x_s / sd, s), (dxds / sd, torch.ones_like(s)),
                     method=method, h=h)
        cs, sn = _col(torch.cos(s), x_s), _col(torch.sin(s), x_s)
        g = -cs * cs * (sd * Fm - dxds) - r * cs * sn * (x_s + sd * dF)
        if c is not None:
            if not c > 0:
                raise ValueError(f"c: expected a positive normalisation constant, got {c!r}")
            g = g / _col(g.flatten(1).norm(dim=1) + c, g)
    return Fm, g


def scm_loss(model: TrigConsistency, x0: torch.Tensor, s=None, z=None, teacher: Optional[Callable] = None,
             weight_net: Optional[Callable] = None, r: float = 1.0, c: Optional[float] = 0.1,
             p_mean: float = -1.0, p_std: float = 1.4, generator: Optional[torch.Generator] = None,
             method: str = "autograd", model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """sCT (``teacher=None``: ``dx/ds = cos(s) z − sin(s) x0``) or sCD (``dx/ds = σ_d F_pre(x_s/σ_d, s)``,
    ``teacher`` = a pretrained TrigFlow ``F_pre(u, s)``, no gradient) loss of book §11.3.3, Alg. 10.

    Args:
        weight_net: ``w_φ(s) -> [B]`` log-weights trained jointly (adaptive weighting, eq. 11.3.11), or
            ``None`` (``w = 0``). s, z: optional TrigFlow times ``[B]`` and noise (``z ~ N(0, σ_d² I)``).
    """
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2 or not x0.is_floating_point():
        raise TypeError("x0: expected a floating data tensor [B, ...]")
    sd = model.sigma_data
    B, D = x0.shape[0], x0[0].numel()
    s = scm_times(B, p_mean, p_std, sd, generator, x0.dtype).to(x0.device) if s is None else per_sample(s, x0, "s")
    if z is None:
        z = sd * torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    if z.shape != x0.shape:
        raise ValueError(f"z: expected shape {tuple(x0.shape)}, got {tuple(z.shape)}")
    cs, sn = _col(torch.cos(s), x0), _col(torch.sin(s), x0)
    x_s = cs * x0 + sn * z
    kw = model_kwargs or {}
    if teacher is None:
        dxds = cs * z - sn * x0
    else:
        with torch.no_grad():
            dxds = sd * teacher(x_s / sd, s, **kw)
    Fm, g = scm_tangent(model, x_s, s, dxds, r, c, method, model_kwargs=kw)
    w = torch.zeros(B, dtype=x0.dtype, device=x0.device) if weight_net is None else weight_net(s).reshape(B)
    err = ((model.raw(x_s / sd, s, **kw) - Fm - g) ** 2).flatten(1).sum(1)
    return (torch.exp(w) / D * err - w).mean()


@torch.no_grad()
def scm_sample(model: TrigConsistency, x: torch.Tensor, times, generator: Optional[torch.Generator] = None,
               noise=None, model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """One-/multistep sampling (book §11.2.2, Alg. 9 with TrigFlow noising): ``x ← f(x, s_0)``; for later ``s_m``:
    ``x ← f(cos(s_m) x + sin(s_m) z, s_m)``, ``z ~ N(0, σ_d² I)``. ``x`` starts as ``σ_d ε`` (``s_0 = π/2``)."""
    ts = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if ts.numel() < 1 or not bool((ts[1:] < ts[:-1]).all()) or not bool((ts > 0).all()) or \
            float(ts[0]) > math.pi / 2 + 1e-12:
        raise ValueError("times: expected decreasing TrigFlow times in (0, π/2]")
    kw = model_kwargs or {}
    x = model(x, float(ts[0]), **kw)
    for m in range(1, ts.numel()):
        z = noise[m - 1] if noise is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                               device=x.device)
        sm = float(ts[m])
        x = model(math.cos(sm) * x + math.sin(sm) * model.sigma_data * z, sm, **kw)
    return x


class SCMTrainer(StepLoop):
    """sCT / sCD training loop (book §11.3.3, Alg. 10): Adam on ``θ`` (and ``φ`` of ``weight_net``),
    :func:`scm_loss` with times from :func:`scm_times`, and an evaluation EMA of ``f_θ`` (the
    sCM target is ``θ⁻ = sg[θ]``, no target EMA) used by :meth:`student`.

    Args:
        model: the online :class:`TrigConsistency`.
        data: ``data(batch_size, generator) -> x0`` (a data batch in the model's dtype).
        teacher: ``F_pre(u, s)`` for sCD (see :func:`scm_loss`), ``None`` for sCT.
        lr: Adam learning rate. ema_decay: decay of the evaluation EMA (:func:`~diffcore.distill.consistency.ema_update`).
        weight_net, c, p_mean, p_std, method: as :func:`scm_loss`.
        warmup: tangent warm-up iterations: ``r = min(1, (k + 1)/warmup)`` at iteration ``k`` (0: ``r = 1``).
        seed: seed of the trainer's own generator (data, times and noise draws, in that order).
    """

    def __init__(self, model: TrigConsistency, data: Callable, teacher: Optional[Callable] = None, *,
                 lr: float = 1e-3, ema_decay: float = 0.99, weight_net: Optional[nn.Module] = None,
                 c: Optional[float] = 0.1, p_mean: float = -1.0, p_std: float = 1.4, method: str = "autograd",
                 warmup: int = 0, seed: int = 0):
        if not isinstance(model, TrigConsistency):
            raise TypeError("model: expected a TrigConsistency")
        if not callable(data):
            raise TypeError("data: expected a callable data(batch_size, generator) -> tensor")
        if teacher is not None and not callable(teacher):
            raise TypeError("teacher: expected None (sCT) or a callable F_pre(u, s) (sCD)")
        if not (isinstance(ema_decay, float) and 0.0 <= ema_decay <= 1.0):
            raise ValueError(f"ema_decay: expected a float in [0, 1], got {ema_decay!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup: expected a non-negative int, got {warmup!r}")
        self.model, self.data, self.teacher, self.weight_net = model, data, teacher, weight_net
        self.ema = copy.deepcopy(model).requires_grad_(False)
        params = list(model.parameters()) + (list(weight_net.parameters()) if weight_net is not None else [])
        self.opt = torch.optim.Adam(params, lr=lr)
        self.ema_decay, self.c, self.p_mean, self.p_std = ema_decay, c, p_mean, p_std
        self.method, self.warmup = method, warmup
        self.rng = torch.Generator().manual_seed(int(seed))
        self.iteration = 0
        self.history: List[float] = []

    def step(self, batch_size: int) -> float:
        """One update on a fresh batch; returns the (pseudo-)loss value."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        r = 1.0 if self.warmup == 0 else min(1.0, (self.iteration + 1) / self.warmup)
        x0 = self.data(batch_size, self.rng)
        loss = scm_loss(self.model, x0, teacher=self.teacher, weight_net=self.weight_net, r=r, c=self.c,
                        p_mean=self.p_mean, p_std=self.p_std, generator=self.rng, method=self.method)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        ema_update(self.ema, self.model, self.ema_decay)
        self.iteration += 1
        self.history.append(float(loss.detach()))
        return self.history[-1]

    def student(self, mid_times=(1.1,)):
        """The evaluation EMA as a :class:`~diffcore.distill.students.SCMStudent` (``diffcore.sample``-able)."""
        from .students import SCMStudent  # students imports this module
        return SCMStudent(self.ema, mid_times)
