"""The loop behind every :mod:`diffcore.k` sampler: k-diffusion's calling conventions on top of a
diffcore plan (:mod:`diffcore.solvers.base`).

k-diffusion's conventions (``k_diffusion/sampling.py``): the model is a *denoiser*
``model(x, sigma * s_in, **extra_args) → x̂₀`` with ``x = x₀ + σ ε`` — diffcore's EDM schedule
(α = 1, σ = t) with ``prediction="x0"`` —, ``sigmas`` is a decreasing 1-D tensor (usually ending
in 0) and each step calls ``callback({'x', 'i', 'sigma', 'sigma_hat', 'denoised'})`` after its
first model evaluation. The loop is ``_loop`` of :mod:`diffcore.sample` (stage by stage,
``plan.step`` applies the fused update) plus that callback; the coefficients are the plan's.

Noise: k-diffusion's stochastic samplers call ``noise_sampler(sigma, sigma_next)`` once per step
for a standard normal tensor shaped like ``x``. :class:`_SamplerState` routes every noise draw of a
diffcore plan to such a callable, at the step it belongs to and in k-diffusion's order relative to
the model calls, so a shared (even stateful, e.g. ``torch.randn_like``) noise sampler gives the
same numbers in both libraries.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

from ..noise import Noise
from ..schedules import EDM
from ..solvers.protocol import Kind, kind_of

__all__ = ["check_inputs", "run"]

#: k-diffusion's σ-parametrization: α = 1, σ = t; its range only sets defaults no plan reads.
_SCHEDULE = EDM()


def check_inputs(model, x, sigmas, extra_args, callback) -> torch.Tensor:
    """Validate the common arguments; return the grid as float64 on the CPU (one host copy)."""
    if not callable(model):
        raise TypeError(f"model: expected a callable denoiser model(x, sigma, **extra_args), got "
                        f"{type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point torch tensor with a batch dimension")
    if not isinstance(sigmas, torch.Tensor):
        raise TypeError(f"sigmas: expected a 1-D torch tensor of noise levels, got {type(sigmas).__name__}")
    if sigmas.dim() != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas: expected a 1-D tensor of at least 2 noise levels, got shape {tuple(sigmas.shape)}")
    if not sigmas.is_floating_point():
        raise TypeError(f"sigmas: expected a floating-point tensor, got {sigmas.dtype}")
    if sigmas.device != x.device and sigmas.device.type != "cpu":
        raise ValueError(f"sigmas: expected a tensor on x's device ({x.device}) or on the CPU, got {sigmas.device}")
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args: expected a dict of model keyword arguments, got {type(extra_args).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
    grid = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(grid).all()) or bool((grid < 0).any()):
        raise ValueError("sigmas: expected finite noise levels >= 0")
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"sigmas: expected strictly decreasing noise levels (noisy to clean), got "
                         f"{grid.tolist() if grid.numel() <= 12 else 'a non-decreasing grid'}")
    return grid


def _progress(n: int, disable):
    from tqdm.auto import trange  # noqa: PLC0415 — as k-diffusion: a bar unless disable

    return trange(n, disable=disable)


def run(solver, model, x: torch.Tensor, sigmas: torch.Tensor, grid: torch.Tensor, extra_args: Optional[dict],
        callback: Optional[Callable], disable, noise=None, noise_step: Callable[[int, int], int] = None,
        sigma_hat: Optional[Callable[[int], torch.Tensor]] = None, pbar=None) -> torch.Tensor:
    """Sample with ``solver`` (a fixed-grid diffcore solver, ``Kind.GRID`` of
    :mod:`diffcore.solvers.protocol`) on the σ grid ``grid``.

    Args:
        noise: None (deterministic solver), a :class:`diffcore.noise.Noise` (in-kernel Philox or
            Brownian noise), or ``provider(j) → tensor | None``: the standard normal noise of step
            ``j`` (None: the step's noise coefficient is 0 and k-diffusion draws nothing there).
        noise_step: ``(i, s) → j``: the step whose noise plan draw ``(i, s)`` is (default ``i``);
            the prelude draw of EDM's churn is step 0.
        sigma_hat: ``i → σ̂_i`` for the callback (default ``sigmas[i]``).
        pbar: an open tqdm bar to advance once per step (default: a bar of the plan's steps), for a
            caller that finishes the run with steps of its own.
    """
    kw = extra_args or {}
    if kind_of(solver) is not Kind.GRID:  # k-diffusion's loop lists its σ grid up front
        raise TypeError(f"solver: expected a fixed-grid diffcore solver, got {type(solver).__name__}")
    plan = solver.plan(_SCHEDULE, grid, device=x.device, dtype=x.dtype, prediction="x0")
    if noise is None or isinstance(noise, Noise):
        state = plan.init_state(x, noise)
    elif not plan.stochastic:  # no draw to route (k-diffusion draws nothing there either)
        state = plan.init_state(x)
    else:
        step_of: Dict[int, int] = {}
        if plan.prelude is not None:
            step_of[0] = 0
        for i in range(plan.num_steps):
            for s, d in enumerate(plan.draws[i]):
                if d >= 0:
                    step_of[d] = noise_step(i, s) if noise_step is not None else i
        def provider(d):
            z = noise(step_of[d])
            if z is not None and (not isinstance(z, torch.Tensor) or tuple(z.shape) != tuple(x.shape)):
                raise ValueError(f"noise_sampler: expected a tensor of x's shape {tuple(x.shape)}, got "
                                 f"{getattr(z, 'shape', type(z).__name__)}")
            return z

        state = plan.init_state(x, Noise(provider=provider))
    s_in = x.new_ones([x.shape[0]])
    for i in (_progress(plan.num_steps, disable) if pbar is None else range(plan.num_steps)):
        for s in plan.stages(i):
            inp = state.model_input(s)
            den = model(inp, plan.model_time(i, s) * s_in, **kw)
            if not isinstance(den, torch.Tensor) or den.shape != inp.shape:
                raise ValueError(f"model: expected the denoised sample, a tensor of shape {tuple(inp.shape)}, got "
                                 f"{getattr(den, 'shape', type(den).__name__)}")
            if s == 0 and callback is not None:
                # x is copied: the state is updated in place, k-diffusion hands out a tensor it never writes
                callback({"x": inp.clone(), "i": i, "sigma": sigmas[i],
                          "sigma_hat": sigmas[i] if sigma_hat is None else sigma_hat(i), "denoised": den})
            plan.step(state, i, s, den)
        if pbar is not None:
            pbar.update(1)
    return state.x


def churn_gammas(grid: torch.Tensor, s_churn: float, s_tmin: float, s_tmax: float):
    """k-diffusion's γ_i = min(s_churn / M, √2 − 1) where s_tmin ≤ σ_i ≤ s_tmax, else 0."""
    M = grid.shape[0] - 1
    g = min(s_churn / M, math.sqrt(2.0) - 1.0)
    return [g if s_tmin <= float(grid[i]) <= s_tmax else 0.0 for i in range(M)]
