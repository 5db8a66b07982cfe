"""The noise schedules and timestep grids of diffusers' schedulers (diffusers 0.42), reproduced number
for number so that :class:`~diffcore.integrations.diffusers.DiffcoreScheduler` runs a diffcore solver on
exactly the grid the scheduler it replaces would use.

A grid is ``n`` model timesteps (what the pipeline hands to the network) and ``n + 1`` diffcore times
(the noise levels the solver steps between; the last one is the final level). Three conventions
("timestep conventions"), each a transcription of one ``set_timesteps``:

* ``"ddim"`` — ``DDIMScheduler`` / ``DDPMScheduler``: ``linspace`` ``round(linspace(0, N−1, n))``,
  ``leading`` ``arange(n)·(N // n) + steps_offset``, ``trailing`` ``round(arange(N, 0, −N/n)) − 1``;
  the final level is ᾱ = 1 (σ = 0) with ``set_alpha_to_one`` and ᾱ_0 otherwise.
* ``"dpmsolver"`` — ``DPMSolverMultistepScheduler`` (also UniPC, DEIS, DPM-Solver single-step):
  ``n + 1`` points of which the last is dropped, ``lambda_min_clipped``; the final level is
  ``final_sigmas_type`` (``"zero"`` or ``"sigma_min"`` = ᾱ_0); ``use_flow_sigmas`` / ``flow_shift``
  give its flow-matching grid.
* ``"flow_match"`` — ``FlowMatchEulerDiscreteScheduler``: σ from ``linspace(σ_max, σ_min, n)`` with the
  SD3 shift ``sσ/(1 + (s − 1)σ)`` or the Flux dynamic shift ``e^μ/(e^μ + (1/σ − 1))`` (``mu``,
  ``time_shift_type``), ``shift_terminal``, a final σ = 0; model timesteps ``σ·N``.

The sigma options (``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``,
``use_lu_lambdas``) replace the levels as diffusers does (VP: noise-to-signal ratios σ/α of the
training schedule, Karras ρ = 7). The solver steps between the exact levels. The network sees, under
the ``"dpmsolver"`` convention, ``DPMSolverMultistepScheduler``'s timestep of each level (its
``_sigma_to_t``, a linear interpolation of log σ between training indices, rounded for Karras and
λ-uniform except with ``squaredcos_cap_v2``, stored as int64); under the ``"ddim"`` convention (DDIM
has no sigma options) the exact fractional training index of the level, ``N·t − 1``.

Diffcore time of a VP level: the training index ``k`` sits at ``t = (k + 1)/N`` of
:class:`~diffcore.schedules.VPDiscrete` (ᾱ = 1 at t = 0); a level σ/α between indices is
``t(λ = −log(σ/α))``. Flow matching: diffcore's rectified flow with t = σ (α = 1 − σ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..schedules import RectifiedFlow, VPDiscrete

__all__ = ["Grid", "vp_alphas_cumprod", "vp_grid", "flow_match_grid", "dpm_flow_grid", "CONVENTIONS",
           "SIGMA_OPTIONS"]

CONVENTIONS = ("ddim", "dpmsolver", "flow_match")
SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


@dataclass
class Grid:
    """``model_ts`` [n]: timesteps handed to the network at the n levels; ``times`` [n + 1]: their
    diffcore times plus the final one (float64, decreasing; the last may equal the one before it, a
    zero-length final step); ``integral``: the model timesteps are integer training indices."""

    model_ts: np.ndarray
    times: np.ndarray
    integral: bool


def vp_alphas_cumprod(cfg) -> torch.Tensor:
    """ᾱ of the training schedule in float32, as ``DDIMScheduler.__init__`` computes it (``trained_betas``,
    ``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2, ``rescale_betas_zero_snr`` with
    ᾱ_{N−1} = 2⁻²⁴ as in ``DPMSolverMultistepScheduler``, since ᾱ = 0 has no finite log-SNR)."""
    from diffusers.schedulers.scheduling_ddim import betas_for_alpha_bar, rescale_zero_terminal_snr  # noqa: PLC0415

    N = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        betas = torch.tensor(cfg.trained_betas, dtype=torch.float32)
    elif cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, N, dtype=torch.float32)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, N, dtype=torch.float32) ** 2
    elif cfg.beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(N)
    else:
        raise ValueError(f"beta_schedule: expected 'linear', 'scaled_linear' or 'squaredcos_cap_v2' (or trained_betas), "
                         f"got {cfg.beta_schedule!r}")
    if cfg.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    acp = torch.cumprod(1.0 - betas, dim=0)
    if cfg.rescale_betas_zero_snr:
        acp[-1] = 2 ** -24
    return acp


def _check_n(n, N: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"num_inference_steps: expected a positive int, got {n!r}")
    if n > N:
        raise ValueError(f"num_inference_steps: {n} is more than num_train_timesteps = {N}")
    return int(n)


def _ddim_timesteps(N: int, n: int, spacing: str, offset: int) -> np.ndarray:
    if spacing == "linspace":
        return np.linspace(0, N - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = N // n
        return (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + offset
    if spacing == "trailing":
        return np.round(np.arange(N, 0, -N / n)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing: expected 'linspace', 'leading' or 'trailing', got {spacing!r}")


def _dpm_timesteps(N: int, n: int, spacing: str, offset: int, last: int) -> np.ndarray:
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + offset
    if spacing == "trailing":
        return np.arange(last, 0, -N / n).round().copy().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing: expected 'linspace', 'leading' or 'trailing', got {spacing!r}")


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """diffusers' ``_sigma_to_t``: the fractional training index of a level, by linear interpolation of
    log σ between neighbouring indices (clipped to the training range)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def _sigma_levels(option: str, smin: float, smax: float, n: int) -> np.ndarray:
    """``n`` decreasing levels between ``smax`` and ``smin`` (diffusers' ``_convert_to_*``)."""
    if option == "use_karras_sigmas":
        rho = 7.0
        ramp = np.linspace(0, 1, n)
        lo, hi = smin ** (1 / rho), smax ** (1 / rho)
        return (hi + ramp * (lo - hi)) ** rho
    if option in ("use_exponential_sigmas", "use_lu_lambdas"):
        # λ-uniform (Lu et al.) is uniform in log σ: diffusers' _convert_to_lu with ρ = 1 on log σ
        return np.exp(np.linspace(math.log(smax), math.log(smin), n))
    if option == "use_beta_sigmas":
        import scipy.stats  # noqa: PLC0415  (as diffusers: beta sigmas need scipy)

        ppf = [scipy.stats.beta.ppf(u, 0.6, 0.6) for u in 1 - np.linspace(0, 1, n)]
        return np.array([smin + p * (smax - smin) for p in ppf])
    raise ValueError(f"sigma option: unknown {option!r}")


def active_sigma_option(cfg) -> Optional[str]:
    on = [k for k in SIGMA_OPTIONS if getattr(cfg, k, False)]
    if len(on) > 1:
        raise ValueError(f"{', '.join(on)}: at most one sigma option may be set")
    return on[0] if on else None


def vp_grid(cfg, acp: torch.Tensor, schedule: VPDiscrete, n: Optional[int], timesteps, sigmas,
            convention: str) -> Grid:
    """The grid of a VP (DDPM-family) configuration under the ``"ddim"`` or ``"dpmsolver"`` convention."""
    N = cfg.num_train_timesteps
    option = active_sigma_option(cfg)
    given = [k for k, v in (("num_inference_steps", n), ("timesteps", timesteps), ("sigmas", sigmas)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"num_inference_steps, timesteps, sigmas: give exactly one, got {given or 'none'}")
    if option is not None and n is None:
        raise ValueError(f"timesteps, sigmas: cannot be given with {option}=True (it chooses the levels)")
    sig_train = (((1 - acp) / acp) ** 0.5).numpy()  # float32, as diffusers
    log_sigmas = np.log(sig_train)
    model_ts = levels = None
    if timesteps is not None:
        model_ts = np.asarray(torch.as_tensor(timesteps).cpu().numpy(), dtype=np.float64).reshape(-1)
        if model_ts.size < 1 or not np.all(model_ts == np.round(model_ts)) or model_ts.min() < 0 or model_ts.max() > N - 1:
            raise ValueError(f"timesteps: expected integer training indices in [0, {N - 1}], got {model_ts.tolist()}")
    elif sigmas is not None:
        levels = np.asarray(torch.as_tensor(sigmas).cpu().numpy(), dtype=np.float64).reshape(-1)
        if levels.size < 1 or not np.all(np.isfinite(levels)) or levels.min() <= 0:
            raise ValueError("sigmas: expected positive noise-to-signal ratios σ/α (one per model evaluation)")
    else:
        n = _check_n(n, N)
        if option is not None:
            smin, smax = float(sig_train[0]), float(sig_train[-1])
            if option == "use_lu_lambdas":
                levels = np.exp(np.linspace(float(log_sigmas[-1]), float(log_sigmas[0]), n))
            else:
                levels = _sigma_levels(option, smin, smax, n)
            levels = levels.astype(np.float32).astype(np.float64)  # diffusers stores its sigmas in float32
            if convention == "dpmsolver":  # the network sees DPMSolverMultistepScheduler's timesteps
                model_ts = _sigma_to_t(levels, log_sigmas)
                if option in ("use_karras_sigmas", "use_lu_lambdas") and cfg.beta_schedule != "squaredcos_cap_v2":
                    model_ts = model_ts.round()
                model_ts = model_ts.astype(np.int64).astype(np.float64)  # stored as int64 there (truncating)
        elif convention == "ddim":
            model_ts = _ddim_timesteps(N, n, cfg.timestep_spacing, cfg.steps_offset).astype(np.float64)
        else:
            lam = torch.log(torch.sqrt(acp)) - torch.log(torch.sqrt(1 - acp))
            clipped = int(torch.searchsorted(torch.flip(lam, [0]), cfg.lambda_min_clipped))
            model_ts = _dpm_timesteps(N, n, cfg.timestep_spacing, cfg.steps_offset, N - clipped).astype(np.float64)
        if model_ts is not None and (model_ts.min() < 0 or model_ts.max() > N - 1):
            raise ValueError(f"timestep_spacing, steps_offset: the grid {model_ts.tolist()} leaves the training range "
                             f"[0, {N - 1}]")
    if levels is None:
        times = schedule.index_to_t(torch.from_numpy(model_ts)).numpy()
    else:
        lo, hi = schedule.lam_range()  # float32 levels may fall a rounding error outside the training range
        times = schedule.t_of_lam(torch.from_numpy(np.clip(-np.log(levels), lo, hi))).numpy()
        if model_ts is None:  # the exact (fractional) training index of each level
            model_ts = schedule.t_to_index(torch.from_numpy(times)).numpy()
    zero_final = cfg.set_alpha_to_one if convention == "ddim" else cfg.final_sigmas_type == "zero"
    if convention == "dpmsolver" and cfg.final_sigmas_type not in ("zero", "sigma_min"):
        raise ValueError(f"final_sigmas_type: expected 'zero' or 'sigma_min', got {cfg.final_sigmas_type!r}")
    final = 0.0 if zero_final else float(schedule.index_to_t(0.0))
    integral = bool(np.all(model_ts == np.round(model_ts)))
    return Grid(model_ts, np.concatenate([times, [final]]), integral)


def flow_match_grid(cfg, n: Optional[int], timesteps, sigmas, mu: Optional[float], shift: float) -> Grid:
    """``FlowMatchEulerDiscreteScheduler.set_timesteps`` (σ in float32 as there, final σ = 0)."""
    N = cfg.num_train_timesteps
    if cfg.invert_sigmas:
        raise ValueError("invert_sigmas: inverted flow-matching grids (σ rising to 1) are not supported by the drop-in")
    if cfg.use_dynamic_shifting and mu is None:
        raise ValueError("mu: required when use_dynamic_shifting=True (Flux-style resolution-dependent shift)")
    if cfg.time_shift_type not in ("exponential", "linear"):
        raise ValueError(f"time_shift_type: expected 'exponential' or 'linear', got {cfg.time_shift_type!r}")
    option = active_sigma_option(cfg)
    if option == "use_lu_lambdas":
        raise ValueError("use_lu_lambdas: defined for VP schedules only (DPMSolverMultistepScheduler)")
    # __init__: σ_max, σ_min of the (statically shifted) training grid
    tr = torch.from_numpy(np.linspace(1, N, N, dtype=np.float32)[::-1].copy()) / N
    if not cfg.use_dynamic_shifting:
        tr = shift * tr / (1 + (shift - 1) * tr)
    smin, smax = tr[-1].item(), tr[0].item()
    if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
        raise ValueError("sigmas, timesteps: expected the same length")
    if n is not None:
        if (sigmas is not None and len(sigmas) != n) or (timesteps is not None and len(timesteps) != n):
            raise ValueError("sigmas, timesteps: expected num_inference_steps entries")
    elif sigmas is not None or timesteps is not None:
        n = len(sigmas) if sigmas is not None else len(timesteps)
    else:
        raise ValueError("num_inference_steps, timesteps, sigmas: give at least one")
    n = _check_n(n, 10 ** 9)
    ts_given = None if timesteps is None else np.array(timesteps).astype(np.float32)
    if sigmas is None:
        ts = ts_given if ts_given is not None else np.linspace(smax * N, smin * N, n)
        sig = ts / N
    else:
        sig = np.array(sigmas).astype(np.float32)
    if cfg.use_dynamic_shifting:
        if cfg.time_shift_type == "exponential":
            sig = math.exp(mu) / (math.exp(mu) + (1 / sig - 1) ** 1.0)
        else:
            sig = mu / (mu + (1 / sig - 1) ** 1.0)
    else:
        sig = shift * sig / (1 + (shift - 1) * sig)
    if cfg.shift_terminal:
        one_minus = 1 - sig
        sig = 1 - one_minus / (one_minus[-1] / (1 - cfg.shift_terminal))
    if option is not None:
        sig = _sigma_levels(option, float(np.asarray(sig)[-1]), float(np.asarray(sig)[0]), n)
    sig32 = torch.from_numpy(np.asarray(sig)).to(torch.float32)
    model = torch.from_numpy(ts_given) if ts_given is not None else sig32 * N
    levels = sig32.double().numpy()
    if not (np.all(np.isfinite(levels)) and levels.min() > 0 and levels.max() <= 1):
        raise ValueError(f"sigmas: expected flow-matching levels in (0, 1], got {levels.tolist()}")
    return Grid(model.double().numpy(), np.concatenate([levels, [0.0]]), False)


def dpm_flow_grid(cfg, n: Optional[int], timesteps, sigmas, mu: Optional[float]) -> Grid:
    """``DPMSolverMultistepScheduler`` with ``use_flow_sigmas``: σ = shifted ``1 − linspace(1, 1/N, n + 1)``
    without its last point, model timesteps σ·N, ``flow_shift`` (``e^μ`` with ``use_dynamic_shifting``)."""
    N = cfg.num_train_timesteps
    if timesteps is not None or sigmas is not None:
        raise ValueError("timesteps, sigmas: not available with use_flow_sigmas (as in DPMSolverMultistepScheduler)")
    if cfg.final_sigmas_type != "zero":
        raise ValueError("final_sigmas_type: flow sigmas end at σ = 0; expected 'zero'")
    n = _check_n(n, N)
    shift = math.exp(mu) if mu is not None else cfg.flow_shift
    if mu is not None and not cfg.use_dynamic_shifting:
        raise ValueError("mu: only with use_dynamic_shifting=True")
    alphas = np.linspace(1, 1 / N, n + 1)
    s = 1.0 - alphas
    s = np.flip(shift * s / (1 + (shift - 1) * s))[:-1].copy()
    levels = s.astype(np.float32).astype(np.float64)
    return Grid(s * N, np.concatenate([levels, [0.0]]), False)


def flow_schedule() -> RectifiedFlow:
    """Diffusers' flow-matching path x = (1 − σ)x0 + σε: diffcore's rectified flow with t = σ."""
    return RectifiedFlow(shift=1.0)


def model_index(schedule, t: Sequence[float], N: int) -> np.ndarray:
    """Training index of diffcore times: ``N·t − 1`` (VP) or ``N·t`` (flow matching)."""
    t = np.asarray(t, dtype=np.float64)
    return t * N - 1 if isinstance(schedule, VPDiscrete) else t * N
