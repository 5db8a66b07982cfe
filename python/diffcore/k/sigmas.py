"""k-diffusion's noise-level grids (``k_diffusion.sampling.get_sigmas_*``, same signatures and
formulas): a decreasing 1-D tensor of σ with a final 0 appended, for the samplers of
:mod:`diffcore.k`.

Values are computed in float64 (k-diffusion computes them in the default dtype, usually float32;
the two agree to float32 rounding) and returned in ``dtype`` (default: torch's default dtype, as
k-diffusion). Karras and exponential grids are :func:`diffcore.timesteps` on the EDM schedule
(α = 1, σ = t) with ``spacing="karras"`` / ``"uniform_lambda"`` and ``final_zero=True``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..grids import timesteps
from .._device import as_device
from ..schedules import EDM, VPLinear

__all__ = ["get_sigmas_karras", "get_sigmas_exponential", "get_sigmas_polyexponential", "get_sigmas_vp",
           "append_zero"]


def _count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int number of noise levels, got {n!r}")
    return n


def _range(sigma_min, sigma_max):
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(v, torch.Tensor):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}: expected a finite positive number, got {v!r}")
    smin, smax = float(sigma_min), float(sigma_max)
    if not smin < smax:
        raise ValueError(f"sigma_min, sigma_max: expected sigma_min < sigma_max, got {smin} and {smax}")
    return smin, smax


def _out(grid: torch.Tensor, device, dtype) -> torch.Tensor:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch dtype for noise levels, got {dtype!r}")
    return grid.to(device=as_device(device), dtype=torch.get_default_dtype() if dtype is None else dtype)


def append_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` with a 0 appended (k-diffusion's ``append_zero``)."""
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n: int, sigma_min, sigma_max, rho: float = 7.0, device="cpu",
                      dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Karras et al. (2022) Eq. (5): ``σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ``,
    ``i = 0 … n−1``, then 0 (``n + 1`` values, ``n`` sampler steps)."""
    smin, smax = _range(sigma_min, sigma_max)
    grid = timesteps(EDM(smin, smax), _count(n), spacing="karras", rho=rho, final_zero=True)
    return _out(grid, device, dtype)


def get_sigmas_exponential(n: int, sigma_min, sigma_max, device="cpu",
                           dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``n`` levels uniform in log σ from σ_max to σ_min (uniform in λ = −log σ), then 0."""
    smin, smax = _range(sigma_min, sigma_max)
    grid = timesteps(EDM(smin, smax), _count(n), spacing="uniform_lambda", final_zero=True)
    return _out(grid, device, dtype)


def get_sigmas_polyexponential(n: int, sigma_min, sigma_max, rho: float = 1.0, device="cpu",
                               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``log σ_i = r_i^ρ (log σ_max − log σ_min) + log σ_min`` with ``r`` from 1 to 0 in ``n`` equal
    steps, then 0 (ρ = 1 is :func:`get_sigmas_exponential`)."""
    smin, smax = _range(sigma_min, sigma_max)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < math.inf:
        raise ValueError(f"rho: expected a finite positive number, got {rho!r}")
    n = _count(n)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** float(rho)
    grid = torch.exp(ramp * (math.log(smax) - math.log(smin)) + math.log(smin))
    return _out(append_zero(grid), device, dtype)


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3, device="cpu",
                  dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The noise-to-signal ratios ``σ/α = √(e^{B(t)} − 1)`` of the continuous VP-linear schedule
    (β(t) = β_min + β_d t, :class:`diffcore.schedules.VPLinear`) at ``n`` times uniform from 1 to
    ``eps_s``, then 0."""
    if isinstance(eps_s, bool) or not isinstance(eps_s, (int, float)) or not 0 < eps_s < 1:
        raise ValueError(f"eps_s: expected a number in (0, 1), got {eps_s!r}")
    sched = VPLinear(beta_min=beta_min, beta_max=beta_min + beta_d)
    v = sched.eval(torch.linspace(1, eps_s, _count(n), dtype=torch.float64))
    return _out(append_zero(v.sigma.to(torch.float64) / v.alpha.to(torch.float64)), device, dtype)
