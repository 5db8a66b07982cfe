"""Sampling time grids (book §9.4.3; Karras et al. 2022, EDM, Eq. (5)).

:func:`timesteps` returns ``n + 1`` strictly decreasing continuous times ``t_0 = t_start > … > t_n``
of a schedule: ``n`` solver steps. Spacings:

* ``"uniform_t"`` (``"time_uniform"``): uniform in t;
* ``"uniform_lambda"`` (``"logSNR"``): uniform in the half log-SNR λ, ``t_i = t(λ_i)``
  (book §9.4.3, the DPM-Solver default for low-resolution data);
* ``"quadratic"`` (``"time_quadratic"``): uniform in √t;
* ``"karras"``: EDM's ρ-spacing of the noise-to-signal ratio σ/α = e^{−λ},
  ``(σ_max^{1/ρ} + i/M (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` (ρ = 7 by default; ρ = 1 is uniform in σ/α,
  ρ → ∞ tends to uniform λ).

With ``final_zero=True`` the first ``n − 1`` steps go from ``t_start`` to ``t_end`` and the last one
lands exactly on zero noise (σ = 0, λ = +∞), as in k-diffusion's Karras grids; solvers take that step
with data-form coefficients. Defaults (spacing, range, final_zero) come from the schedule, so
``timesteps(schedule, n)`` works for every schedule, including those whose λ is infinite at an end.

The flow paths (rectified flow, the OT path) run from α = 0 (λ = −∞) at t = 1 to σ = 0 at t = 0.
Methods written in ε-form or with stages at fractions of a λ-step cannot take a step from λ = −∞
(the exponential-integrator updates of DPM-Solver, Lu et al. 2022, divide by α), and a Langevin or
adaptive λ-stepping method needs σ > 0 at its end. For them :func:`diffcore.sample`'s *default*
grid starts ``REGULAR_DELTA`` inside the noisy end (t = 0.999 on [0, 1]: σ/α ≈ 1000, a start
perturbation of order α ≈ 1e-3 against the N(0, I) prior) and, where needed, ends as far inside the
clean end; :func:`regular_range` gives that range. An explicit grid or ``t_start``/``t_end`` is used as
given.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from ._device import as_device
from .schedules import Schedule, get as _get_schedule

__all__ = ["timesteps", "SPACINGS", "regular_range", "REGULAR_DELTA"]

#: relative distance from an end of the time range at which a default grid starts (or ends) where
#: the schedule has α = 0 (or σ = 0) at that end, for methods that need a finite λ there
REGULAR_DELTA = 1e-3

SPACINGS = {
    "uniform_t": "uniform_t", "time_uniform": "uniform_t", "uniform": "uniform_t", "linear": "uniform_t",
    "uniform_lambda": "uniform_lambda", "logsnr": "uniform_lambda", "uniform_logsnr": "uniform_lambda",
    "quadratic": "quadratic", "time_quadratic": "quadratic",
    "karras": "karras",
}


def _zero_noise_time(schedule: Schedule) -> float:
    t0 = schedule.t_min
    if float(schedule.sigma(torch.tensor([t0], dtype=torch.float64))[0]) != 0.0:
        raise ValueError(f"final_zero: {schedule!r} never reaches zero noise (σ(t_min) > 0); use final_zero=False")
    return t0


def timesteps(
    schedule,
    n: int,
    spacing: Optional[str] = None,
    t_start: Optional[float] = None,
    t_end: Optional[float] = None,
    rho: float = 7.0,
    final_zero: Optional[bool] = None,
    device=None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``n + 1`` decreasing times of ``schedule`` for an ``n``-step sampler.

    Args:
        schedule: a :class:`~diffcore.schedules.Schedule` or its name.
        n: number of steps (≥ 1).
        spacing: see the module docstring; default ``schedule.spacing``.
        t_start, t_end: noisy start and clean end; default the schedule's sampling range.
        rho: Karras ρ (``spacing="karras"`` only).
        final_zero: append a last step to σ = 0; default ``schedule.final_zero``.
        device, dtype: of the returned tensor (computed in float64 on the CPU first).
    """
    schedule = _get_schedule(schedule)
    device = as_device(device, default=None)  # None: torch's default device
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int number of steps, got {n!r}")
    spacing = schedule.spacing if spacing is None else spacing
    key = SPACINGS.get(str(spacing).lower())
    if key is None:
        raise ValueError(f"spacing: unknown {spacing!r}; expected one of {sorted(SPACINGS)}")
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not (0 < rho < math.inf):
        raise ValueError(f"rho: expected a finite positive number (ρ → ∞ is spacing='uniform_lambda'), got {rho!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        # times are real numbers in (0, t_max]: an integer cast rounds them to [1, 0, 0, …]
        raise TypeError(f"dtype: expected a floating torch dtype for the times, got {dtype!r}")
    if final_zero is not None and final_zero not in (True, False):  # bool("no") would be True
        raise TypeError(f"final_zero: expected True, False or None, got {final_zero!r}")
    final_zero = schedule.final_zero if final_zero is None else bool(final_zero)
    t_start = _time_arg(schedule.t_start if t_start is None else t_start, "t_start")
    t_end = _time_arg(schedule.t_end if t_end is None else t_end, "t_end")
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if not (schedule.t_min <= v <= schedule.t_max and math.isfinite(v)):
            raise ValueError(f"{name}: expected a time in [{schedule.t_min}, {schedule.t_max}] for {schedule!r}, got {v}")
    if not t_start > t_end:
        raise ValueError(f"t_start, t_end: expected t_start > t_end, got {t_start} and {t_end}")

    t_zero = _zero_noise_time(schedule) if final_zero else None
    if t_zero is not None and t_end <= t_zero:
        raise ValueError(f"t_end: with final_zero the grid's last interior time must lie above zero noise, got {t_end}")
    m = n - 1 if final_zero else n  # intervals between t_start and t_end
    if m == 0:
        grid = torch.tensor([t_start], dtype=torch.float64)
    else:
        frac = torch.arange(m + 1, dtype=torch.float64) / m
        grid = _spaced(schedule, key, t_start, t_end, frac, float(rho))
        grid[0], grid[-1] = t_start, t_end  # endpoints exact, whatever the round trip through λ did
    if t_zero is not None:
        grid = torch.cat([grid, torch.tensor([t_zero], dtype=torch.float64)])
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(
            f"n: {n} steps of {key} spacing between {t_start} and {t_end} do not give strictly decreasing "
            "times in float64; use fewer steps or another spacing"
            + (f" (or a rho nearer 7 than rho={rho})" if key == "karras" else "")
        )
    out = grid.to(dtype)
    if dtype != torch.float64 and not bool((out[1:] < out[:-1]).all()):
        raise ValueError(
            f"dtype: {n} steps between {t_start} and {t_end} are not strictly decreasing once rounded to "
            f"{dtype}; use fewer steps or a wider dtype"
        )
    return out.to(device=device)


def _time_arg(v, name: str) -> float:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number (a time of the schedule), got {type(v).__name__}")
    return float(v)


def _spaced(schedule: Schedule, key: str, t_start: float, t_end: float, frac: torch.Tensor, rho: float):
    if key == "uniform_t":
        return t_start + frac * (t_end - t_start)
    if key == "quadratic":
        a, b = math.sqrt(t_start), math.sqrt(t_end)
        return (a + frac * (b - a)) ** 2
    ends = schedule.lam(torch.tensor([t_start, t_end], dtype=torch.float64))
    lam0, lam1 = float(ends[0]), float(ends[1])
    if not (math.isfinite(lam0) and math.isfinite(lam1)):
        raise ValueError(
            f"spacing: {key} needs a finite half log-SNR at both ends, but λ(t_start={t_start}) = {lam0} and "
            f"λ(t_end={t_end}) = {lam1} for {schedule!r}; move t_start/t_end inside the range, use "
            "final_zero=True for a last step to σ = 0, or use spacing='uniform_t'"
        )
    if key == "uniform_lambda":
        lam = lam0 + frac * (lam1 - lam0)
    else:  # karras: ρ-spacing of the noise-to-signal ratio e^{−λ}, in log space for large ρ
        # log((1 − f)·e^{−λ0/ρ} + f·e^{−λ1/ρ}) written as −λ0/ρ + log1p(f·expm1((λ0 − λ1)/ρ)): no overflow
        # for small ρ, no loss to the 1 + (tiny) rounding for large ρ
        lam = lam0 - rho * torch.log1p(frac * math.expm1((lam0 - lam1) / rho))
        lam[0], lam[-1] = lam0, lam1
    return schedule.t_of_lam(lam)


def regular_range(schedule, start: bool = True, end: bool = True) -> tuple:
    """``(t_start, t_end)``: the schedule's default sampling range with an end where α = 0
    (``start``) or σ = 0 (``end``) moved ``REGULAR_DELTA·(t_max − t_min)`` inside, so that λ is
    finite at both ends (see the module docstring). Unchanged for schedules whose default range is
    already regular (VP, VE, EDM, trig)."""
    schedule = _get_schedule(schedule)
    ts, te = float(schedule.t_start), float(schedule.t_end)
    width = schedule.t_max - schedule.t_min
    if not math.isfinite(width):
        return ts, te
    v = schedule.eval(torch.tensor([ts, te], dtype=torch.float64))
    if start and float(v.alpha[0]) == 0.0:
        ts = ts - REGULAR_DELTA * width
    if end and float(v.sigma[1]) == 0.0:
        te = te + REGULAR_DELTA * width
    return ts, te
