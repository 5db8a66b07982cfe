"""Consistency Trajectory Models on the ``edm`` schedule (σ = t, α = 1) (Kim et al. 2024; book §11.4,
eq. 11.4.1–11.4.8, Alg. 11; docs/errata.md D9–D10).

    G_θ(x, s, t) = (t/s) x + (1 − t/s) g_θ(x, s, t),   g*(x, s, t) = (s Ψ_{s→t}(x) − t x)/(s − t),
    g*(x, s, s) = x − s v*(x, s) = x*(x, s)  (the denoiser).

Soft consistency (eq. 11.4.4–11.4.5) with ``t ≤ u < s``:
``x_est = G_{sg θ}(G_θ(x_s, s, t), t, 0)`` (outer map frozen, gradient through its input) and
``x_target = G_{θ⁻}(G_{θ⁻}(Solver_{s→u}(x_s), u, t), t, 0)`` (no gradient). The GAN term of book §11.4 is not
implemented here; the DSM term is :func:`ctm_dsm_loss`.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, List, Optional

import torch
from torch import nn

from ._common import StepLoop, col as _col, per_sample as _times
from .. import schedules as _schedules
from ..solvers.onestep import heun_step
from .consistency import distance, ema_update

__all__ = ["CTMModel", "ctm_consistency_loss", "ctm_dsm_loss", "teacher_solver", "gamma_sample", "CTMTrainer"]

_EDM = _schedules.get("edm")




def _jump(x, s, t, g):
    """``(t/s) x + (1 − t/s) g`` with ``G(x, s, s) = x`` exactly (also at s = t = 0)."""
    ratio = torch.where(s > t, t / torch.where(s > 0, s, torch.ones_like(s)), torch.ones_like(s))
    return _col(ratio, x) * x + _col(1 - ratio, x) * g


class CTMModel(nn.Module):
    """``G_θ(x, s, t)`` with an EDM-preconditioned ``g_θ(x, s, t) = c_skip(s) x + c_out(s) net(c_in(s) x, s, t)``
    (``c_skip = σ_d²/(s² + σ_d²)``, ``c_out = sσ_d/√(s² + σ_d²)``, ``c_in = 1/√(s² + σ_d²)``, Kim et al. 2024).

    Args: net: ``net(x, s, t)`` (e.g. :class:`~diffcore.distill.meanflow.TwoTimeMLP` with
    ``time_scale`` ≈ 1/T). sigma_data: σ_d.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data: expected a positive data std, got {sigma_data!r}")
        self.net, self.sigma_data = net, float(sigma_data)

    def g(self, x: torch.Tensor, s, t, **kw) -> torch.Tensor:
        s, t = _times(s, x, "s"), _times(t, x, "t")
        sd2 = self.sigma_data ** 2
        r = torch.sqrt(s * s + sd2)
        return _col(sd2 / (s * s + sd2), x) * x + _col(s * self.sigma_data / r, x) * self.net(x / _col(r, x), s, t, **kw)

    def forward(self, x: torch.Tensor, s, t, **kw) -> torch.Tensor:
        s, t = _times(s, x, "s"), _times(t, x, "t")
        if bool((t > s).any()) or bool((t < 0).any()):
            raise ValueError("s, t: expected 0 <= t <= s (t is the end time, nearer the data)")
        return _jump(x, s, t, self.g(x, s, t, **kw))


def teacher_solver(teacher: Callable, prediction="eps", substeps: int = 4) -> Callable:
    """``Solver_{s→u}(x)``: ``substeps`` Heun steps (:func:`diffcore.solvers.heun_step`, fused kernel) of the
    teacher on each sample's uniform sub-grid from ``s`` to ``u`` (no grad; ``u = s`` returns ``x``)."""
    if not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps: expected a positive int, got {substeps!r}")

    @torch.no_grad()
    def solve(x, s, u):
        for j in range(substeps):
            a = s + (u - s) * (j / substeps)
            b = s + (u - s) * ((j + 1) / substeps)
            x = heun_step(teacher, x, a, b, _EDM, prediction)
        return x

    return solve


def ctm_consistency_loss(model: CTMModel, target_model: Callable, x0: torch.Tensor, s, t, u, solver: Callable,
                         noise: Optional[torch.Tensor] = None, metric: str = "l2",
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Soft consistency loss, book eq. (11.4.4)–(11.4.5) ``d(x_est, sg[x_target])``.

    ``model``: the online :class:`CTMModel` (its outer map to 0 is evaluated with frozen, detached
    parameters). ``target_model``: ``G_{θ⁻}`` (EMA). ``solver(x, s, u)``: the teacher map
    (:func:`teacher_solver`, or an exact flow map in tests). ``u = s``: global; ``u = s − Δs``: local
    (``t = 0`` and local is CD, docs/errata.md D10).
    """
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    s, t, u = _times(s, x0, "s"), _times(t, x0, "t"), _times(u, x0, "u")
    if bool((t > u).any() | (u > s).any()):
        raise ValueError("s, t, u: expected t <= u <= s")
    x_s = x0 + _col(s, x0) * eps
    zero = torch.zeros_like(t)
    with torch.no_grad():
        x_u = solver(x_s, s, u)
        x_tgt = target_model(target_model(x_u, u, t), t, zero)
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    inner = model(x_s, s, t)
    x_est = torch.func.functional_call(model, frozen, (inner, t, zero))
    return distance(x_est, x_tgt, metric).mean()


def ctm_dsm_loss(model: CTMModel, x0: torch.Tensor, s, noise: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Auxiliary DSM loss (book eq. 11.4.8): ``‖g_θ(x_s, s, s) − x0‖²`` (x-prediction form on ``edm``;
    ``v_θ = (x − g_θ(x, s, s))/s``), per-sample mean over features."""
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    s = _times(s, x0, "s")
    x_s = x0 + _col(s, x0) * eps
    return ((model.g(x_s, s, s) - x0) ** 2).flatten(1).mean(1).mean()


@torch.no_grad()
def gamma_sample(model: Callable, x: torch.Tensor, times, gamma: float = 0.0,
                 generator: Optional[torch.Generator] = None, noise=None) -> torch.Tensor:
    """γ-sampling (book Alg. 11) on decreasing ``times`` ``T = τ_0 > … > τ_M = 0``:
    ``τ̃ = √(1 − γ²) τ_{n+1}``, ``x ← G(x, τ_n, τ̃)``, ``x ← x + γ τ_{n+1} ε``. ``γ = 0``: deterministic
    flow-map stepping; ``γ = 1``: CM multistep sampling. ``noise``: optional ``[M, B, ...]``."""
    ts = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()) or float(ts[-1]) < 0:
        raise ValueError("times: expected at least two strictly decreasing non-negative times")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: expected 0 <= gamma <= 1, got {gamma!r}")
    B = x.shape[0]
    for n in range(ts.numel() - 1):
        nxt = float(ts[n + 1])
        tt = math.sqrt(1.0 - gamma * gamma) * nxt
        x = model(x, ts[n].expand(B).to(x), torch.full((B,), tt, dtype=x.dtype, device=x.device))
        if gamma > 0 and nxt > 0:
            e = noise[n] if noise is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                               device=x.device)
            x = x + gamma * nxt * e
    return x


class CTMTrainer(StepLoop):
    """CTM training loop (book §11.4, eq. 11.4.4–11.4.8; GAN term omitted): Adam on ``θ``, an EMA target
    ``G_{θ⁻}`` (decay ``ema_decay``; also the sampling network, :meth:`student`), and per sample
    indices on the increasing ``grid`` ``0 = τ_0 < τ_1 < … < τ_{n−1} = T``:
    ``s = τ_i``, ``u = τ_{i−1}`` (``local``, ``i ≥ 2`` so ``u > 0``) or ``u = s`` (global, ``i ≥ 1``),
    ``t = τ_j`` with ``j`` uniform in ``{0, …, i − 1}`` (``t ≤ u``, ``t = 0`` included). The loss is
    :func:`ctm_consistency_loss` ``+ dsm_weight ·`` :func:`ctm_dsm_loss` at EDM log-normal
    ``σ = exp(P_mean + P_std n)``.

    Args:
        model: the online :class:`CTMModel`. data: ``data(batch_size, generator) -> x0``.
        solver: the teacher map ``solver(x, s, u)`` (:func:`teacher_solver`).
        grid: increasing times starting at 0 (e.g. ``[0] + karras_grid(N, t_min, T)``).
        lr: Adam learning rate. ema_decay: target EMA decay μ. metric: of the consistency distance.
        dsm_weight, dsm_p_mean, dsm_p_std: DSM term (``dsm_weight = 0`` drops it and its draws).
        seed: seed of the trainer's generator (draw order: data, i, j, σ, consistency noise, DSM noise).
    """

    def __init__(self, model: CTMModel, data: Callable, solver: Callable, grid, *, lr: float = 2e-3,
                 ema_decay: float = 0.95, local: bool = True, metric: str = "l2", dsm_weight: float = 1.0,
                 dsm_p_mean: float = -1.2, dsm_p_std: float = 1.2, seed: int = 0):
        if not isinstance(model, CTMModel):
            raise TypeError("model: expected a CTMModel")
        if not callable(data) or not callable(solver):
            raise TypeError("data, solver: expected callables data(batch_size, generator), solver(x, s, u)")
        p = next(model.parameters())
        g = torch.as_tensor(grid).to(dtype=p.dtype, device=p.device).reshape(-1)
        if g.numel() < 3 or float(g[0]) != 0.0 or not bool((g[1:] > g[:-1]).all()):
            raise ValueError("grid: expected at least three strictly increasing times starting at 0")
        if not (isinstance(ema_decay, float) and 0.0 <= ema_decay <= 1.0):
            raise ValueError(f"ema_decay: expected a float in [0, 1], got {ema_decay!r}")
        if not dsm_weight >= 0 or not dsm_p_std > 0:
            raise ValueError(f"dsm_weight, dsm_p_std: expected >= 0 and > 0, got {dsm_weight!r}, {dsm_p_std!r}")
        self.model, self.data, self.solver, self.grid = model, data, solver, g
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.ema_decay, self.local, self.metric = ema_decay, bool(local), metric
        self.dsm_weight, self.dsm_p_mean, self.dsm_p_std = dsm_weight, dsm_p_mean, dsm_p_std
        self.rng = torch.Generator().manual_seed(int(seed))
        self.history: List[float] = []

    def step(self, batch_size: int) -> float:
        """One update on a fresh batch; returns the loss value."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        B, n, grid = batch_size, self.grid.numel(), self.grid
        x0 = self.data(B, self.rng)
        i = torch.randint(2 if self.local else 1, n, (B,), generator=self.rng).to(grid.device)
        j = (torch.rand(B, generator=self.rng).to(grid.device) * i).long()
        s, t = grid[i], grid[j]
        u = grid[i - 1] if self.local else s
        if self.dsm_weight > 0:
            sig = torch.exp(self.dsm_p_mean + self.dsm_p_std * torch.randn(B, generator=self.rng)).to(x0)
        loss = ctm_consistency_loss(self.model, self.target, x0, s, t, u, self.solver, metric=self.metric,
                                    generator=self.rng)
        if self.dsm_weight > 0:
            loss = loss + self.dsm_weight * ctm_dsm_loss(self.model, x0, sig, generator=self.rng)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        ema_update(self.target, self.model, self.ema_decay)
        self.history.append(float(loss.detach()))
        return self.history[-1]

    def student(self, gamma: float = 0.0, rho: float = 7.0):
        """The target ``G_{θ⁻}`` as a :class:`~diffcore.distill.students.CTMStudent` from ``T = grid[-1]``."""
        from .students import CTMStudent  # students imports this module
        return CTMStudent(self.target, T=float(self.grid[-1]), gamma=gamma, rho=rho)
