"""Stochastic samplers (book §2.2, §3.1–3.4, §4.2, §9.2.3) on the plan / execute
engine of :mod:`.base`: every update is ``x_t = a·x_s + Σ b_k·m_k + c·z`` and the noise ``z`` is
drawn inside the fused step kernel (Philox, a pre-drawn tensor or the Brownian tree, see
:mod:`diffcore.noise`). The coefficient formulas live in ``csrc/core/plans/stochastic.h``.

=====================  ====================================================  ========  ==========
name                   method                                                native    noise/step
=====================  ====================================================  ========  ==========
``ddpm``               ancestral DDPM, posterior (β̃) or forward (β) variance  x̂         1
``ddim_eta``           DDIM with stochasticity η (corrected Eq. (9.2.10))     x̂         1
``euler_ancestral``    Euler ancestral (k-diffusion), any schedule via ρ      ε̂         1
``euler_maruyama``     Euler–Maruyama on the reverse SDE η-family             score     1
``pc``                 predictor–corrector (reverse diffusion / EM + SNR      score     1 + n_c
                       Langevin corrector)
``langevin``           Langevin dynamics at one noise level                   score     1
``annealed_langevin``  annealed Langevin dynamics (NCSN, book Alg. 1)         score     1
``edm_churn``          EDM stochastic Heun sampler (Karras et al. Alg. 2)     ε̂         ≤ 1
``dpmpp_2m_sde``       DPM-Solver++(2M) SDE, midpoint / heun                 x̂         1
``dpmpp_3m_sde``       DPM-Solver++(3M) SDE                                   x̂         1
=====================  ====================================================  ========  ==========
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _row
from ..schedules import Schedule
from .base import Solver
from .exponential import _solver_type

__all__ = ["DDPM", "DDIMEta", "EulerAncestral", "EulerMaruyama", "PC", "Langevin", "AnnealedLangevin", "EDMChurn",
           "DPMSolverPP2MSDE", "DPMSolverPP3MSDE"]


def _number(name: str, v, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise TypeError(f"{name}: expected a number, got {v!r}")
    v = float(v)
    if v < lo or (lo_open and v == lo) or v > hi:
        lo_s = "(" if lo_open else "["
        raise ValueError(f"{name}: expected a value in {lo_s}{lo}, {hi}], got {v}")
    return v


def _count(name: str, v, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return v


def _require_decreasing(solver: Solver, grid_t: torch.Tensor) -> None:
    if not bool((grid_t[:, 1:] < grid_t[:, :-1]).all()):
        raise ValueError(f"timesteps: {solver.name} integrates the reverse process; timesteps must decrease")


class _Stochastic(Solver):
    """A sampler of the reverse process: its timesteps must decrease."""

    stochastic = True

    def _steps(self, schedule, grid_t, grid, final_zero):
        _require_decreasing(self, grid_t)
        return super()._steps(schedule, grid_t, grid, final_zero)


class DDPM(_Stochastic):
    """Ancestral DDPM sampling (book §2.2.6 Eq. (2.2.14), general grids Eq. (4.4.8)):
    each step draws from the Gaussian posterior ``q(x_t | x_s, x̂)``,

        x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂ + σ̃ z,

    with ``variance="posterior"`` σ̃² = β̃ = σ_t²(1 − e^{−2h}) (the book's choice) or ``"beta"``
    σ̃² = σ_s²(1 − e^{−2h}) (the forward step's variance b_i; Ho et al.). The last step adds no
    noise. On the full training grid of a discrete VP schedule this is exactly Ho et al.'s sampler;
    on a sub-grid it is the skipped-step posterior. Supports dynamic thresholding of x̂."""

    name = "ddpm"
    native = "x0"
    method = "ddpm"
    supports_thresholding = True

    def __init__(self, variance: str = "posterior", **common):
        super().__init__(**common)
        if variance not in ("posterior", "beta"):
            raise ValueError(f"variance: expected 'posterior' (β̃) or 'beta' (β), got {variance!r}")
        self.variance = variance

    def _core_options(self):
        return {"beta": self.variance == "beta"}

    def _repr_options(self):
        return {"variance": self.variance}


class DDIMEta(_Stochastic):
    """DDIM with stochasticity η (book Lemma 9.2.2, Eq. (9.2.6)–(9.2.10) with the
    corrected noise scale of docs/errata.md S1):

        x_t = α_t x̂ + √(σ_t² − c²) ε̂ + c z,   c = η σ_t √(1 − e^{−2h}).

    η = 0 is DDIM (book §9.2), η = 1 the DDPM posterior step. ``ValueError`` where η makes c exceed σ_t
    (η > 1 on long steps). Supports dynamic thresholding of x̂."""

    name = "ddim_eta"
    native = "x0"
    method = "ddim_eta"
    supports_thresholding = True

    def __init__(self, eta: float = 1.0, **common):
        super().__init__(**common)
        self.eta = _number("eta", eta)

    def _core_options(self):
        return {"eta": self.eta}

    def _repr_options(self):
        return {"eta": self.eta}


class EulerAncestral(_Stochastic):
    """Euler ancestral sampling (Std: k-diffusion ``sample_euler_ancestral``, after Karras et al. 2022;
    diffusers' EulerAncestralDiscreteScheduler). In ``y = x/α`` and ``ρ = σ/α`` (for α ≡ 1 exactly the
    reference; for VP it is the reference applied to the scaled variable, as diffusers does):

        ρ_up = min(ρ_t, η √(ρ_t² (ρ_s² − ρ_t²) / ρ_s²)),   ρ_down = √(ρ_t² − ρ_up²),
        y_t = y_s + (ρ_down − ρ_s) ε̂ + s_noise · ρ_up · z.

    A deterministic Euler step to ρ_down followed by fresh noise back up to ρ_t; η = 0 is DDIM."""

    name = "euler_ancestral"
    native = "eps"
    method = "euler_ancestral"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, **common):
        super().__init__(**common)
        self.eta = _number("eta", eta)
        self.s_noise = _number("s_noise", s_noise)

    def _core_options(self):
        return {"eta": self.eta, "s_noise": self.s_noise}

    def _repr_options(self):
        return {"eta": self.eta, "s_noise": self.s_noise}


def _drift_extra(schedule: Schedule, grid_t: torch.Tensor) -> torch.Tensor:
    """(f, g²) of the forward SDE at the grid times (book Lemma 4.4.1), ``[B, M + 1, 2]``."""
    v = schedule.eval(grid_t.reshape(-1))
    return torch.stack([v.f.to(torch.float64), v.g2.to(torch.float64)], -1).reshape(grid_t.shape + (2,)).contiguous()


class EulerMaruyama(_Stochastic):
    """Euler–Maruyama on the reverse-time SDE family (book Eq. (4.1.6), (4.2.4)):

        x_t = x_s − [f(s) x_s − ((1 + η²)/2) g²(s) ŝ(x_s, s)] Δt + η g(s) √Δt z,   Δt = s − t.

    η = 1 (default) is the reverse SDE, η = 0 Euler on the probability-flow ODE; every η ≥ 0 has the
    model's marginals. Strong order ½, weak order 1."""

    name = "euler_maruyama"
    native = "score"
    method = "euler_maruyama"

    def __init__(self, eta: float = 1.0, **common):
        super().__init__(**common)
        self.eta = _number("eta", eta)

    def _core_options(self):
        return {"eta": self.eta}

    def _extra(self, schedule, grid_t, grid):
        return _drift_extra(schedule, grid_t)

    def _repr_options(self):
        return {"eta": self.eta}


class PC(_Stochastic):
    """Predictor–corrector sampling (Song et al. 2021, Alg. 2–5), in the
    reference code's order: at every grid time ``n_corrector`` Langevin corrector steps, then one
    predictor step to the next grid time. NFE = steps · (1 + n_corrector).

    Predictors: ``"reverse_diffusion"`` (default) on the discretized forward chain between grid times,
    ``x_t = (2 − α_s/α_t) x_s + σ²_{s|t} ŝ + σ_{s|t} z`` (VE: ``x + (σ_s² − σ_t²)ŝ + √(σ_s² − σ_t²) z``;
    VP: ``(2 − √(1 − b))x + b ŝ + √b z``), or ``"euler_maruyama"`` (book §4.2.2, η = 1).

    Corrector (``"langevin"`` or ``"none"``): ``x ← x + ε ŝ + √(2ε) z`` with the signal-to-noise step
    ``ε = 2 a (snr ‖z‖ / ‖ŝ‖)²``, ``a = (α_{t_i}/α_{t_{i+1}})²`` (the chain's ``1 − b_i`` on VP, 1 on
    VE). ``snr_norm`` says which norms:

    * ``"expected"`` (default): their expectations, ``‖z‖² → D`` and ``‖ŝ‖² → D/σ_t²`` (the Fisher
      information of the perturbed data is ``E‖E[ε | x_t]‖²/σ_t² ≤ D/σ_t²``, tight for data
      concentrated below the noise scale), so ``ε = 2 a (snr σ_t)²``: right on any dimension and, like
      every other sampler, a sample's result does not depend on the rest of its batch. The derivation
      is in ``docs/predictor_corrector.md``.
    * ``"sample"``: each sample's norms, the paper's rule. On low-dimensional data (D = 1, 2) the
      ratio ‖z‖/‖ŝ‖ of single draws is unbounded where the score is small, and the sampler diverges;
      use it only for high-dimensional data, where the norms concentrate.
    * ``"batch"``: their batch means (the reference code). Stable, but a sample's step then depends
      on the other samples of its batch (sharded or split batches give different results).

    The corrector is applied by torch, not the fused kernel; its noise is the plan's draw like any other.
    ``denoise`` (default True): the last predictor step adds no noise (the reference's noise-free
    final mean)."""

    name = "pc"
    native = "score"
    method = "pc"
    second_buffer = True

    @property
    def supports_picard(self) -> bool:  # the corrector's step size is data-dependent (a Python hook)
        return not self.n_corrector

    def __init__(self, predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
                 n_corrector: int = 1, snr_norm: str = "expected", denoise: bool = True, **common):
        super().__init__(**common)
        if predictor not in ("reverse_diffusion", "euler_maruyama"):
            raise ValueError(f"predictor: expected 'reverse_diffusion' or 'euler_maruyama', got {predictor!r}")
        if corrector not in ("langevin", "none"):
            raise ValueError(f"corrector: expected 'langevin' or 'none', got {corrector!r}")
        if snr_norm not in ("expected", "sample", "batch"):
            raise ValueError(f"snr_norm: expected 'expected', 'sample' or 'batch', got {snr_norm!r}")
        if not isinstance(denoise, bool):
            raise TypeError(f"denoise: expected a bool, got {denoise!r}")
        self.predictor, self.corrector, self.snr_norm, self.denoise = predictor, corrector, snr_norm, denoise
        self.snr = _number("snr", snr)
        self.n_corrector = _count("n_corrector", n_corrector) if corrector == "langevin" else 0
        self.stages = self.n_corrector + 1

    def _core_options(self):
        return {"predictor": 0 if self.predictor == "reverse_diffusion" else 1, "n_corrector": self.n_corrector,
                "denoise": self.denoise}

    def _extra(self, schedule, grid_t, grid):
        return _drift_extra(schedule, grid_t)

    def _hooks(self, plan):
        if not self.n_corrector:
            return None
        v = plan.schedule.eval(plan.timesteps.reshape(-1))
        alpha = v.alpha.to(torch.float64).reshape(plan.timesteps.shape)
        sigma = v.sigma.to(torch.float64).reshape(plan.timesteps.shape)
        a = (alpha[:, :-1] / alpha[:, 1:]) ** 2  # [B, M]
        # "expected": ε = 2a (snr ‖z‖/‖ŝ‖)² with ‖z‖² → D, ‖ŝ‖² → D/σ² (docs/predictor_corrector.md)
        step = 2 * a * (self.snr * sigma[:, :-1]) ** 2 if self.snr_norm == "expected" else None
        hooks = {}
        for i in range(plan.num_steps):
            ai = a[:, i].to(plan.device)
            ei = None if step is None else step[:, i].to(plan.device)
            for k in range(self.n_corrector):
                hooks[(i, k)] = lambda p, st, i_, s_, out, ai=ai, ei=ei: self._correct(p, st, i_, s_, out, ai, ei)
        return hooks

    def _correct(self, plan, state, i, s, out, a, step=None):
        """One Langevin corrector step with the signal-to-noise step-size rule (Song et al. 2021, Alg. 4)."""
        x = state.x
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        row = plan._rows[i][s].to(compute)
        w = _row.Weights(row, self.history, (row.shape[0],) + (1,) * (x.dim() - 1))
        u = state.model_input(s).to(compute)
        score = w.cu * u + w.co * out.to(compute)
        z = state.noise_value(plan.draws[i][s]).to(compute)
        B = x.shape[0]
        if step is not None:
            eps = step.to(compute)
        else:
            gn = score.reshape(B, -1).norm(dim=1)
            zn = z.reshape(B, -1).norm(dim=1)
            if self.snr_norm == "batch":
                gn, zn = gn.mean().expand(B), zn.mean().expand(B)
            eps = 2 * a.to(compute) * (self.snr * zn / gn.clamp_min(torch.finfo(compute).tiny)) ** 2
        eps = eps.reshape((-1,) + (1,) * (x.dim() - 1))  # [B] or [1] (a shared grid's expected step)
        new = (x.to(compute) + eps * score + torch.sqrt(2 * eps) * z).to(x.dtype)
        state._set("x", new)
        state._set("y", new)

    def _repr_options(self):
        return {"predictor": self.predictor, "corrector": self.corrector, "snr": self.snr,
                "n_corrector": self.n_corrector, "snr_norm": self.snr_norm}


class Langevin(Solver):
    """Unadjusted Langevin dynamics at one noise level (book Eq. (3.1.5), (3.2.3)):

        x ← x + η ŝ(x, t) + √(2η) z,

    ``M`` steps (the grid's step count) at the grid's last time ``t`` (``t_end``): it samples
    ``p_t`` as η → 0 and M → ∞; for fixed η its stationary law is biased by O(η) (for Gaussian
    ``p_t = N(μ, v)``: ``N(μ, v/(1 − η/(2v)))``). ``step_size`` η; default ``0.2 σ_t²`` (NCSN's
    ``δ σ²/σ₁²`` with δ = 2e-5, σ₁ = 0.01)."""

    name = "langevin"
    native = "score"
    stochastic = True
    method = "langevin"

    def __init__(self, step_size: Optional[float] = None, **common):
        super().__init__(**common)
        self.step_size = None if step_size is None else _number("step_size", step_size, lo_open=True)

    def _steps(self, schedule, grid_t, grid, final_zero):
        if bool((grid[:, -1, _row.NODE_SIGMA] == 0).any()):
            raise ValueError("timesteps: Langevin needs a noise level with σ > 0 at the last time")
        M = grid_t.shape[1] - 1
        return grid_t[:, -1:].repeat(1, M + 1).contiguous(), [1] * M, None

    def _extra(self, schedule, grid_t, grid):
        sig = grid[..., _row.NODE_SIGMA]
        eta = torch.full_like(sig, self.step_size) if self.step_size is not None else 0.2 * sig ** 2
        return torch.stack([eta, torch.zeros_like(eta)], -1).contiguous()

    def _repr_options(self):
        return {"step_size": self.step_size}


class AnnealedLangevin(Solver):
    """Annealed Langevin dynamics (NCSN; book §3.4.3 Alg. 1, docs/errata.md S9): ``n_steps_each``
    Langevin steps at every noise level of the grid (the grid's times with σ > 0, noisiest first), with

        η_ℓ = δ σ_ℓ² / σ₁²     (σ₁ the smallest level),

    each level starting from the previous one's output. ``include_smallest`` (default True, the
    original NCSN) also runs the steps at σ₁; False follows the book's Algorithm 1 (levels L…2).
    ``denoise``: a final Tweedie step ``x ← (x + σ₁² ŝ(x, σ₁))/α₁`` (book Lemma 3.3.2), one more
    model call. Defaults δ = 0.2·σ₁² (NCSN's 2e-5 for its σ₁ = 0.01; a fixed δ with a much smaller σ₁
    makes the noisy levels' steps exceed 2σ_ℓ² and diverge), 100 steps per level. The start is the
    caller's ``x`` (the book draws N(0, I); with a large σ_L, N(0, σ_L² I) is the consistent choice:
    :func:`diffcore.prior_sample`)."""

    name = "annealed_langevin"
    native = "score"
    method = "langevin"
    stochastic = True

    def __init__(self, n_steps_each: int = 100, delta: Optional[float] = None, include_smallest: bool = True,
                 denoise: bool = False, **common):
        super().__init__(**common)
        self.n_steps_each = _count("n_steps_each", n_steps_each, 1)
        self.delta = None if delta is None else _number("delta", delta, lo_open=True)
        for name, v in (("include_smallest", include_smallest), ("denoise", denoise)):
            if not isinstance(v, bool):
                raise TypeError(f"{name}: expected a bool, got {v!r}")
        self.include_smallest, self.denoise = include_smallest, denoise

    def _levels(self, grid_t, grid):
        keep = grid[0, :, _row.NODE_SIGMA] > 0
        return grid_t[:, keep], grid[:, keep, _row.NODE_SIGMA]

    def _steps(self, schedule, grid_t, grid, final_zero):
        _require_decreasing(self, grid_t)
        lv, _ = self._levels(grid_t, grid)
        run = lv if self.include_smallest else lv[:, :-1]
        cols = run.repeat_interleave(self.n_steps_each, dim=1)
        if self.denoise:
            cols = torch.cat([cols, lv[:, -1:]], 1)
        if cols.shape[1] == 0:
            raise ValueError("timesteps: no annealing step (a single level with include_smallest=False)")
        grid_new = torch.cat([cols, lv[:, -1:]], 1).contiguous()
        return grid_new, [1] * cols.shape[1], None

    def _extra(self, schedule, grid_t, grid):
        sig = grid[..., _row.NODE_SIGMA]
        s1 = sig[:, -1:]  # the last node is the smallest level
        # default δ = 0.2·σ₁² (NCSN's 2e-5 at σ₁ = 0.01): η_ℓ = 0.2·σ_ℓ², a stable step at every level;
        # NCSN's fixed 2e-5 with a smaller σ₁ (EDM's 0.002) gives η_ℓ/σ_ℓ² = 5 > 2 and diverges at the
        # noisy levels, where p_σ ≈ N(·, σ²)
        delta = 0.2 * s1 ** 2 if self.delta is None else self.delta
        eta = delta * sig ** 2 / s1 ** 2
        flag = torch.zeros_like(eta)
        if self.denoise:
            flag[:, -2] = 1.0
        return torch.stack([eta, flag], -1).contiguous()

    def _repr_options(self):
        return {"n_steps_each": self.n_steps_each, "delta": self.delta, "include_smallest": self.include_smallest,
                "denoise": self.denoise}


class EDMChurn(Solver):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2), for any schedule in
    ``y = x/α``, ``ρ = σ/α`` (EDM Alg. 1's general form with s(t) = α, σ(t) = ρ). At step i:

        γ_i = min(S_churn/M, √2 − 1) if S_tmin ≤ ρ_i ≤ S_tmax else 0,   ρ̂_i = (1 + γ_i) ρ_i,
        ŷ_i = y_i + √(ρ̂_i² − ρ_i²) · S_noise · z,
        then Heun (trapezoid) in ρ from ρ̂_i to ρ_{i+1}; Euler on a step to σ = 0.

    NFE = 2M − 1 on a grid to σ = 0. S_churn = 0 is the deterministic EDM Heun sampler (``heun``
    with ``variable="rho"``). The churn noise of step i + 1 is fused into step i's last stage, so the
    state after step i (what ``callback`` sees) is the churned ``x̂_{i+1}``; the churn of the start is
    applied when the run begins. Defaults S_churn = 0, S_tmin = 0, S_tmax = ∞, S_noise = 1."""

    name = "edm_churn"
    native = "eps"
    method = "edm_churn"
    stochastic = True
    stages = 2
    history = 1
    second_buffer = True
    max_order = 2
    order = 2

    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
                 **common):
        super().__init__(**common)
        self.s_churn = _number("s_churn", s_churn)
        self.s_tmin = _number("s_tmin", s_tmin)
        self.s_tmax = _number("s_tmax", s_tmax)
        self.s_noise = _number("s_noise", s_noise)

    def _gammas(self, grid, M):
        rho = grid[:, :-1, _row.NODE_SIGMA] / grid[:, :-1, _row.NODE_ALPHA]
        g = min(self.s_churn / M, math.sqrt(2.0) - 1.0)
        inside = (rho >= self.s_tmin) & (rho <= self.s_tmax)
        return torch.where(inside, torch.full_like(rho, g), torch.zeros_like(rho)), rho

    def _steps(self, schedule, grid_t, grid, final_zero):
        _require_decreasing(self, grid_t)
        M = grid_t.shape[1] - 1
        orders = self._orders(M, final_zero)
        gam, rho = self._gammas(grid, M)
        that = grid_t[:, :-1].clone()
        churned = gam > 0
        if bool(churned.any()):
            lam_hat = -torch.log(rho * (1 + gam))
            th = schedule.t_of_lam(lam_hat.reshape(-1)).reshape(lam_hat.shape).to(torch.float64)
            if not bool(torch.isfinite(th[churned]).all()):
                raise ValueError("s_churn: a churned noise level ρ̂ = (1 + γ)ρ lies outside the schedule's range")
            that = torch.where(churned, th, that)
        stage_t = torch.stack([that, grid_t[:, 1:]], -1).contiguous()
        return grid_t, orders, stage_t

    def _core_options(self):
        return {"churn": self.s_churn > 0, "s_noise": self.s_noise}

    def _repr_options(self):
        return {"s_churn": self.s_churn, "s_tmin": self.s_tmin, "s_tmax": self.s_tmax, "s_noise": self.s_noise}


class DPMSolverPP2MSDE(_Stochastic):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b; k-diffusion ``sample_dpmpp_2m_sde``):

        x_t = (σ_t/σ_s) e^{−ηh} x_s + α_t (1 − e^{−(1+η)h}) x̂_s + α_t C (x̂_s − x̂_{s'})/r
              + σ_t √(1 − e^{−2ηh}) s_noise z,

    ``C = ½(1 − e^{−(1+η)h})`` (``solver_type="midpoint"``, the default) or
    ``1 − (1 − e^{−(1+η)h})/((1+η)h)`` (``"heun"``), r = h'/h. η = 0 is DPM-Solver++(2M) (same
    variant); η = 1 (default) the SDE solver. First step, ``lower_order_final`` steps and a step to
    σ = 0 drop the C term. Supports dynamic thresholding."""

    name = "dpmpp_2m_sde"
    native = "x0"
    method = "dpmpp_2m_sde"
    multistep = True
    history = 1
    max_order = 2
    order = 1  # strong order of the stochastic scheme; the η = 0 part is second order
    supports_thresholding = True

    def __init__(self, solver_type: str = "midpoint", eta: float = 1.0, s_noise: float = 1.0, **common):
        super().__init__(**common)
        self.variant = _solver_type(solver_type)
        self.eta = _number("eta", eta)
        self.s_noise = _number("s_noise", s_noise)

    def _core_options(self):
        return {"variant": self.variant, "eta": self.eta, "s_noise": self.s_noise}

    def _repr_options(self):
        return {"solver_type": "midpoint" if self.variant == 0 else "heun", "eta": self.eta, "s_noise": self.s_noise}


class DPMSolverPP3MSDE(DPMSolverPP2MSDE):
    """DPM-Solver++(3M) SDE (Std: k-diffusion ``sample_dpmpp_3m_sde``; the formula is in
    ``csrc/core/plans/stochastic.h``): the third-order multistep data-form update over the last three
    x̂ with the SDE factors ``e^{−ηh}`` and ``σ_t √(1 − e^{−2ηh}) s_noise z``; warm-up with the 1- and
    2-point updates. Options ``eta`` (default 1), ``s_noise``."""

    name = "dpmpp_3m_sde"
    method = "dpmpp_3m_sde"
    history = 2
    max_order = 3

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, **common):
        super().__init__(solver_type="midpoint", eta=eta, s_noise=s_noise, **common)

    def _core_options(self):
        return {"eta": self.eta, "s_noise": self.s_noise}

    def _repr_options(self):
        return {"eta": self.eta, "s_noise": self.s_noise}
