"""Discrete-time consistency models (Song et al. 2023; book §11.2, eq. 11.2.4–11.2.6, Alg. 9).

* :class:`ConsistencyFunction` — ``f_θ(x, s) = c_skip(s) x + c_out(s) F_θ(c_in(s) x, s)`` with the
  boundary condition ``f_θ(x, t_min) = x`` EXACT (shifted EDM coefficients, docs/errata.md D5).
* :func:`cd_loss` / :func:`ct_loss` — consistency distillation (one no-grad teacher step
  ``s_{i+1} → s_i`` through :func:`diffcore.solvers.ddim_step` / :func:`~diffcore.solvers.heun_step`)
  and consistency training (same ``(x0, ε)`` at both times), with an EMA target network θ⁻.
* :func:`karras_grid`, the CT curricula ``N(k)`` / ``μ(k)`` of CM and improved CT, and the iCT index law.
* :func:`consistency_sample` — one-step and multistep sampling (book Alg. 9 with docs/errata.md D5).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ._common import col as _col, sched as _sched
from ..param import _batch_times
from ..solvers.onestep import ddim_step, heun_step

__all__ = ["ConsistencyFunction", "consistency_coefs", "karras_grid", "pseudo_huber", "distance", "cd_loss", "ct_loss",
           "cm_curriculum", "ict_curriculum", "ict_index_probs", "ema_update", "consistency_sample",
           "ConsistencyTrainer"]




def consistency_coefs(values, values_min, sigma_data: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out, c_in)`` of book §11.2.1 at schedule values ``values`` with boundary ``values_min`` (t_min).

    Written with the EDM noise level ``ρ = σ/α`` (``ρ = s`` for ``edm``, where these are exactly the
    shifted coefficients (docs/errata.md D5): ``c_skip = σ_d²/((ρ − ρ_min)² + σ_d²)``,
    ``c_out = σ_d(ρ − ρ_min)/√(σ_d² + ρ²)``),
    and ``c_in = 1/√(α²σ_d² + σ²)`` (unit-variance input). At ``ρ = ρ_min``: ``c_skip = 1`` and
    ``c_out = 0`` exactly, so the boundary condition holds bitwise; with ``t_min = 0`` (ρ_min = 0) they
    reduce to the book's eq. D.6.4–D.6.5 coefficients in ρ.
    """
    if not sigma_data > 0:
        raise ValueError(f"sigma_data: expected a positive data std, got {sigma_data!r}")
    rho = values.sigma / values.alpha
    rho_min = values_min.sigma / values_min.alpha
    d = rho - rho_min
    sd2 = sigma_data * sigma_data
    c_skip = sd2 / (d * d + sd2)
    c_out = sigma_data * d / torch.sqrt(sd2 + rho * rho)
    c_in = 1.0 / torch.sqrt(values.alpha ** 2 * sd2 + values.sigma ** 2)
    return c_skip, c_out, c_in


class ConsistencyFunction(nn.Module):
    """``f_θ(x, s) = c_skip(s) x + c_out(s) F_θ(c_in(s) x, s)`` (book §11.2.1).

    Args:
        net: the raw network ``F_θ(x, t, **kw)`` (e.g. :class:`diffcore.models.MLP`; it receives the
            schedule time itself as ``c_noise``, its own time embedding playing the role of
            ``250 log s`` of the reference code — use ``time_transform="log"`` for ``edm``).
        schedule: the schedule. t_min: the boundary time (default ``schedule.t_end`` if σ > 0 there,
            else 0.002 for ``edm``). sigma_data: σ_d of the coefficients (0.5, as in Song et al. 2023).
    """

    def __init__(self, net: nn.Module, schedule, t_min: Optional[float] = None, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.schedule = _sched(schedule)
        if t_min is None:
            t_min = float(self.schedule.t_end)
        t_min = float(t_min)
        v = self.schedule.eval(torch.tensor([t_min], dtype=torch.float64))
        if not float(v.sigma) > 0:
            raise ValueError(f"t_min: expected a time with σ > 0 (practical CMs stop at t_min > 0), got {t_min}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data: expected a positive data std, got {sigma_data!r}")
        self.t_min, self.sigma_data, self._vmin = t_min, float(sigma_data), v

    def coefs(self, t: torch.Tensor):
        v = self.schedule.eval(t.to(torch.float64))
        return consistency_coefs(v, self._vmin, self.sigma_data)

    def forward(self, x: torch.Tensor, t, **model_kwargs) -> torch.Tensor:
        B = x.shape[0]
        tb = _batch_times(t, B, "t").to(x.device)
        if bool((tb.to(torch.float64) < self.t_min).any()):
            raise ValueError(f"t: expected times >= t_min = {self.t_min}")
        c_skip, c_out, c_in = self.coefs(tb)
        F = self.net(_col(c_in, x) * x, tb.to(x.dtype), **model_kwargs)
        return _col(c_skip, x) * x + _col(c_out, x) * F


# ---- grids, distances, curricula -------------------------------------------------------------------
def karras_grid(N: int, t_min: float = 0.002, T: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """``s_i = (t_min^{1/ρ} + (i−1)/(N−1)(T^{1/ρ} − t_min^{1/ρ}))^ρ``, ``i = 1..N`` (book §11.2, increasing,
    float64; ``s_1 = t_min``, ``s_N = T`` exactly)."""
    if isinstance(N, bool) or not isinstance(N, int) or N < 2:
        raise ValueError(f"N: expected an int >= 2, got {N!r}")
    if not 0 <= t_min < T:
        raise ValueError(f"t_min, T: expected 0 <= t_min < T, got {t_min}, {T}")
    if not rho > 0:
        raise ValueError(f"rho: expected rho > 0, got {rho}")
    i = torch.arange(N, dtype=torch.float64) / (N - 1)
    g = (t_min ** (1 / rho) + i * (T ** (1 / rho) - t_min ** (1 / rho))) ** rho
    g[0], g[-1] = t_min, T
    return g


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """``√(‖x − y‖² + c²) − c`` per sample (Song & Dhariwal 2024); → ``‖x − y‖²/(2c)`` as ``c → ∞``,
    → ``‖x − y‖`` as c → 0."""
    if not c > 0:
        raise ValueError(f"c: expected a positive pseudo-Huber constant, got {c!r}")
    d2 = ((x - y) ** 2).flatten(1).sum(1)
    # (d² + c² − c²)/(√(d² + c²) + c): no cancellation for small d²/c²
    return d2 / (torch.sqrt(d2 + c * c) + c)


def distance(x: torch.Tensor, y: torch.Tensor, metric: str = "l2", c: Optional[float] = None) -> torch.Tensor:
    """Per-sample ``d(x, y)`` of book §11.2: ``"l2"`` (‖·‖²), ``"l1"`` (‖·‖₁) or ``"pseudo_huber"``
    (default ``c = 0.00054 √D``, Song & Dhariwal 2024)."""
    if metric == "l2":
        return ((x - y) ** 2).flatten(1).sum(1)
    if metric == "l1":
        return (x - y).abs().flatten(1).sum(1)
    if metric == "pseudo_huber":
        return pseudo_huber(x, y, 0.00054 * math.sqrt(x[0].numel()) if c is None else c)
    raise ValueError(f"metric: expected 'l2', 'l1' or 'pseudo_huber', got {metric!r}")


def cm_curriculum(k: int, K: int, s0: int = 2, s1: int = 150, mu0: float = 0.9, mu_exponent_offset: int = 0):
    """CM's CT discretisation curriculum (Song et al. 2023): ``N(k) = ⌈√(k/K((s₁+1)² − s₀²) + s₀²) − 1⌉ + 1``
    and ``μ(k) = exp(s₀ log μ₀ / (N(k) − offset))`` (offset 1 reproduces the reference code). Returns
    ``(N, μ)``."""
    if not (isinstance(K, int) and K >= 1 and isinstance(k, int) and 0 <= k <= K):
        raise ValueError(f"k, K: expected ints with 0 <= k <= K, K >= 1, got {k!r}, {K!r}")
    N = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1
    return N, math.exp(s0 * math.log(mu0) / (N - mu_exponent_offset))


def ict_curriculum(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """Improved CT's ``N(k) = min(s₀ 2^{⌊k/K'⌋}, s₁) + 1``, ``K' = ⌊K/(log₂⌊s₁/s₀⌋ + 1)⌋`` (Song & Dhariwal 2024)."""
    if not (isinstance(K, int) and K >= 1 and isinstance(k, int) and 0 <= k <= K):
        raise ValueError(f"k, K: expected ints with 0 <= k <= K, K >= 1, got {k!r}, {K!r}")
    Kp = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
    if Kp < 1:
        raise ValueError(f"K: too small for the doubling curriculum (K' = {Kp})")
    return min(s0 * 2 ** (k // Kp), s1) + 1


def ict_index_probs(grid: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """iCT's law of the interval index ``i`` (``[N − 1]``, Song & Dhariwal 2024):
    ``∝ erf((log s_{i+1} − P_mean)/(√2 P_std)) − erf((log s_i − P_mean)/(√2 P_std))``."""
    g = torch.as_tensor(grid, dtype=torch.float64)
    e = torch.erf((torch.log(g) - p_mean) / (math.sqrt(2.0) * p_std))
    p = e[1:] - e[:-1]
    return p / p.sum()


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, mu: float) -> None:
    """``θ⁻ ← μ θ⁻ + (1 − μ) θ`` (the target EMA, distinct from an evaluation EMA)."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu: expected a decay in [0, 1], got {mu!r}")
    for pt, po in zip(target.parameters(), online.parameters()):
        pt.mul_(mu).add_(po.detach(), alpha=1.0 - mu)
    for bt, bo in zip(target.buffers(), online.buffers()):
        bt.copy_(bo)


# ---- losses ----------------------------------------------------------------------------------------
def _pairs(grid, B, i, generator, probs):
    g = torch.as_tensor(grid, dtype=torch.float64)
    if g.dim() != 1 or g.numel() < 2 or not bool((g[1:] > g[:-1]).all()):
        raise ValueError("grid: expected an increasing 1-D tensor t_min = s_1 < … < s_N (karras_grid)")
    n = g.numel() - 1
    if i is None:
        if probs is None:
            i = torch.randint(0, n, (B,), generator=generator)
        else:
            i = torch.multinomial(torch.as_tensor(probs, dtype=torch.float64), B, replacement=True, generator=generator)
    i = torch.as_tensor(i).to("cpu", torch.long)
    if i.shape != (B,) or bool((i < 0).any() | (i >= n).any()):
        raise ValueError(f"i: expected [B] = [{B}] interval indices in 0..{n - 1}")
    return g[i], g[i + 1]


def _weight(s_lo, s_hi, weighting):
    if weighting == "uniform":
        return torch.ones_like(s_lo)
    if weighting == "inv_dt":
        return 1.0 / (s_hi - s_lo)
    raise ValueError(f"weighting: expected 'uniform' or 'inv_dt', got {weighting!r}")


def _consistency_loss(model, target_model, x_hi, s_hi, s_lo, x_lo, metric, c, weighting, model_kwargs):
    kw = model_kwargs or {}
    with torch.no_grad():
        target = target_model(x_lo, s_lo.to(x_lo), **kw)
    pred = model(x_hi, s_hi.to(x_hi), **kw)
    w = _weight(s_lo, s_hi, weighting).to(pred)
    return (w * distance(pred, target, metric, c)).mean()


def _noisy(x0, eps, t, sched):
    v = sched.eval(t)
    return _col(v.alpha, x0) * x0 + _col(v.sigma, x0) * eps


def cd_loss(model: Callable, target_model: Callable, teacher: Callable, x0: torch.Tensor, grid, schedule,
            teacher_prediction="eps", solver="heun", metric: str = "l2", c: Optional[float] = None,
            weighting: str = "uniform", i=None, noise=None, generator: Optional[torch.Generator] = None,
            index_probs=None, model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Consistency distillation, book eq. (11.2.4): ``E[ω d(f_θ(x_{s_{i+1}}, s_{i+1}), f_{θ⁻}(x̃_{s_i}, s_i))]``.

    Args:
        model, target_model: consistency functions ``f(x, s)`` (online θ and target θ⁻).
        teacher: ``teacher(x, t)`` with head ``teacher_prediction``.
        grid: increasing times ``s_1 < … < s_N`` (:func:`karras_grid`).
        solver: ``"heun"`` (the reference code of Song et al. 2023), ``"ddim"`` (the book's DDIM/Euler step) or a callable
            ``solver(x, s_hi, s_lo) -> x̃`` (e.g. an exact flow map); always run without gradient.
        metric, c: the distance (:func:`distance`). weighting: ``"uniform"`` or ``"inv_dt"``.
        i: optional ``[B]`` indices (interval ``[s_{i+1}, s_{i+2}]`` in 1-based spec numbering is
            ``grid[i], grid[i+1]`` here); default uniform or ``index_probs``.
    """
    sched = _sched(schedule)
    s_lo, s_hi = _pairs(grid, x0.shape[0], i, generator, index_probs)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    x_hi = _noisy(x0, eps, s_hi, sched)
    with torch.no_grad():
        if callable(solver):
            x_lo = solver(x_hi, s_hi, s_lo)
        elif solver == "heun":
            x_lo = heun_step(teacher, x_hi, s_hi, s_lo, sched, teacher_prediction, model_kwargs)
        elif solver == "ddim":
            x_lo = ddim_step(teacher, x_hi, s_hi, s_lo, sched, teacher_prediction, model_kwargs)
        else:
            raise ValueError(f"solver: expected 'heun', 'ddim' or a callable, got {solver!r}")
    return _consistency_loss(model, target_model, x_hi, s_hi, s_lo, x_lo, metric, c, weighting, model_kwargs)


def ct_loss(model: Callable, target_model: Callable, x0: torch.Tensor, grid, schedule, metric: str = "l2",
            c: Optional[float] = None, weighting: str = "uniform", i=None, noise=None,
            generator: Optional[torch.Generator] = None, index_probs=None,
            model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Consistency training, book eq. (11.2.6): as :func:`cd_loss` with ``x_{s_i} = α x0 + σ ε`` from the
    SAME ``(x0, ε)`` (the DDIM step with the one-point score ``−ε/σ``, eq. 11.2.5). No teacher."""
    sched = _sched(schedule)
    s_lo, s_hi = _pairs(grid, x0.shape[0], i, generator, index_probs)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    x_hi, x_lo = _noisy(x0, eps, s_hi, sched), _noisy(x0, eps, s_lo, sched)
    return _consistency_loss(model, target_model, x_hi, s_hi, s_lo, x_lo, metric, c, weighting, model_kwargs)


# ---- sampling --------------------------------------------------------------------------------------
@torch.no_grad()
def consistency_sample(model: Callable, x: torch.Tensor, times, schedule, t_min: float,
                       generator: Optional[torch.Generator] = None, noise=None,
                       model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Multistep consistency sampling (book Alg. 9 with docs/errata.md D5).

    ``x ← f(x, τ_0)``; for each later ``τ_m``: re-noise the ``t_min`` state exactly onto ``p_{τ_m}``,
    ``x_τ = (α_τ/α_min) x + √(σ_τ² − (α_τ σ_min/α_min)²) ε`` (``x + √(τ² − t_min²) ε`` for ``edm``), then
    ``x ← f(x_τ, τ_m)``. ``times``: decreasing ``τ_0 = T > τ_1 > … > τ_{M−1} > t_min`` (a trailing
    ``t_min``/0 entry would be a no-op and is rejected). ``noise``: optional ``[M − 1, B, ...]``.
    """
    sched = _sched(schedule)
    ts = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if ts.numel() < 1 or not bool((ts[1:] < ts[:-1]).all()) or not bool((ts > t_min).all()):
        raise ValueError(f"times: expected decreasing times, all > t_min = {t_min}")
    if noise is not None and tuple(noise.shape) != (ts.numel() - 1,) + tuple(x.shape):
        raise ValueError(f"noise: expected shape {(ts.numel() - 1,) + tuple(x.shape)}, got {tuple(noise.shape)}")
    kw = model_kwargs or {}
    B = x.shape[0]
    vmin = sched.eval(torch.tensor([float(t_min)], dtype=torch.float64))
    x = model(x, ts[0].expand(B).to(x), **kw)
    for m in range(1, ts.numel()):
        v = sched.eval(ts[m].reshape(1))
        a = v.alpha / vmin.alpha
        sd = torch.sqrt(torch.clamp(v.sigma ** 2 - (a * vmin.sigma) ** 2, min=0.0))
        eps = noise[m - 1] if noise is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                                 device=x.device)
        x = model(float(a) * x + float(sd) * eps, ts[m].expand(B).to(x), **kw)
    return x


# ---- trainer ---------------------------------------------------------------------------------------
class ConsistencyTrainer:
    """CD (``teacher`` given) or CT (``teacher=None``) training loop of book §11.2 with an EMA target θ⁻.

    Args:
        model: a :class:`ConsistencyFunction`. schedule: the schedule.
        N: fixed grid size (CD) — or ``curriculum="cm"`` / ``"ict"`` for CT's ``N(k)``.
        mu: target EMA decay (CD default 0.95, Song et al. 2023; ``curriculum="cm"`` overrides it with ``μ(k)``;
            ``"ict"`` uses μ = 0, θ⁻ = sg[θ]).
        T: largest time of the grid (default ``schedule.t_start``); rho: Karras ρ.
        curriculum_kwargs: overrides of the curriculum constants — for ``"ict"``: ``s0``, ``s1``
            (:func:`ict_curriculum`) and ``p_mean``, ``p_std`` (:func:`ict_index_probs`); for ``"cm"``:
            those of :func:`cm_curriculum`. Short runs need a smaller ``s1`` than iCT's 1280 (the
            doubling clock ``K'`` then spends more iterations at each ``N``).
        ema_decay: decay of a separate evaluation EMA :attr:`ema`, distinct from the target EMA (
            ``None`` keeps none). With iCT's θ⁻ = sg[θ] the online iterate keeps moving at the final
            ``N``, and the evaluation EMA is what the reference code samples from.
        betas: Adam's ``(β₁, β₂)``.
    """

    def __init__(self, model: ConsistencyFunction, schedule, teacher: Optional[Callable] = None,
                 teacher_prediction="eps", N: int = 18, curriculum: Optional[str] = None, mu: float = 0.95,
                 solver="heun", metric: str = "l2", c: Optional[float] = None, weighting: str = "uniform",
                 lr: float = 1e-3, T: Optional[float] = None, rho: float = 7.0,
                 curriculum_kwargs: Optional[dict] = None, ema_decay: Optional[float] = None,
                 betas: Tuple[float, float] = (0.9, 0.999)):
        if not isinstance(model, ConsistencyFunction):
            raise TypeError("model: expected a ConsistencyFunction")
        if curriculum not in (None, "cm", "ict"):
            raise ValueError(f"curriculum: expected None, 'cm' or 'ict', got {curriculum!r}")
        self.model, self.schedule, self.teacher = model, _sched(schedule), teacher
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.teacher_prediction, self.N, self.curriculum, self.mu = teacher_prediction, N, curriculum, mu
        self.solver, self.metric, self.c, self.weighting = solver, metric, c, weighting
        self.T = float(self.schedule.t_start if T is None else T)
        self.rho = rho
        ck = dict(curriculum_kwargs or {})
        allowed = {"cm": {"s0", "s1", "mu0", "mu_exponent_offset"}, "ict": {"s0", "s1", "p_mean", "p_std"},
                   None: set()}[curriculum]
        if set(ck) - allowed:
            raise ValueError(f"curriculum_kwargs: unknown keys {sorted(set(ck) - allowed)} for curriculum "
                             f"{curriculum!r}; expected a subset of {sorted(allowed)}")
        self.curriculum_kwargs = ck
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected None or a decay in [0, 1), got {ema_decay!r}")
        self.ema_decay = ema_decay
        self.ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
        self.losses = []

    def step(self, x0: torch.Tensor, k: int = 0, K: int = 1, generator: Optional[torch.Generator] = None) -> float:
        """One optimizer step at iteration ``k`` of ``K`` (the curriculum's clock)."""
        N, mu, probs = self.N, self.mu, None
        ck = self.curriculum_kwargs
        if self.curriculum == "cm":
            N, mu = cm_curriculum(k, K, **ck)
        elif self.curriculum == "ict":
            N, mu = ict_curriculum(k, K, **{n: ck[n] for n in ("s0", "s1") if n in ck}), 0.0
        grid = karras_grid(N, self.model.t_min, self.T, self.rho)
        if self.curriculum == "ict":
            probs = ict_index_probs(grid, **{n: ck[n] for n in ("p_mean", "p_std") if n in ck})
        if self.teacher is None:
            loss = ct_loss(self.model, self.target, x0, grid, self.schedule, self.metric, self.c, self.weighting,
                           generator=generator, index_probs=probs)
        else:
            loss = cd_loss(self.model, self.target, self.teacher, x0, grid, self.schedule, self.teacher_prediction,
                           self.solver, self.metric, self.c, self.weighting, generator=generator, index_probs=probs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        ema_update(self.target, self.model, mu)
        if self.ema is not None:
            ema_update(self.ema, self.model, self.ema_decay)
        self.losses.append(loss.item())
        return self.losses[-1]
