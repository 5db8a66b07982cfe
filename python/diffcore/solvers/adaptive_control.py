"""Per-sample error control of the adaptive solver (:mod:`.adaptive_ps`): the torch reference of the
fused kernel ``csrc/core/adaptive.h``.

For every sample ``b`` still integrating (``active[b]``), given the state at the start of its trial
step ``x``, the embedded pair's lower- and higher-order results ``x_low, x_high`` and its trial step
``h`` (in λ) from ``lam_s`` to ``lam_t``:

* tolerance per element ``tol = atol + rtol·max(|x|, |x_high|)`` and error
  ``E_b = sqrt(mean_n ((x_high − x_low)/tol)²)`` — torchdiffeq's mixed tolerance and RMS norm, per
  sample (the mean over the sample's features), accumulated in float64;
* accept iff ``E_b ≤ 1``; then ``x_b ← x_high``, ``lam_s ← lam_t`` and the PI controller
  (Gustafsson 1991; Hairer & Wanner, *Solving ODEs II*, §IV.2, Eq. (2.43c); Söderlind 2002)
  ``fac = θ · E_n^{−(k_I + k_P)/k} · E_{n−1}^{k_P/k}`` with ``k_I = 0.3``, ``k_P = 0.4`` (the recommended
  PI.3.4 pair: ``−0.7/k`` on the current error, ``+0.4/k`` on the previous accepted one), ``k`` the
  higher order; ``E_{n−1} ← max(E_n, 1e-4)``;
* on rejection the pure I-controller ``fac = θ · E_n^{−1/k}`` (no memory of the rejected error);
* ``fac`` clipped to ``[fac_min, fac_max]``, ``E`` floored at ``1e-10``,
  ``h ← min(h·fac, lam_end − lam_s)``;
* a sample whose accepted step ends at ``lam_t ≥ lam_end − 1e-12·(1 + |lam_end|)`` is finished
  (``active ← False``; its ``h`` is left as it was).

Inactive samples are not touched. Returns ``(accepted [B] bool, E [B] float64)``; ``x``, ``h``,
``err_prev``, ``lam_s`` and ``active`` are updated in place.
"""
from __future__ import annotations

import math

import torch

__all__ = ["adaptive_control_reference", "rms_error", "pi_control", "ERR_FLOOR", "ERR_PREV_FLOOR", "END_TOL",
           "MAX_REJECTIONS"]

ERR_FLOOR = 1e-10
ERR_PREV_FLOOR = 1e-4
END_TOL = 1e-12
# Consecutive rejections of one step before giving up. With 0 < θ < 1 every rejection shrinks the step
# by at least θ and an error that behaves like C·h^k is accepted after a few; dozens in a row mean the
# error does not shrink with h (tolerances below the arithmetic's resolution, a model discontinuous
# in t or x), and retrying further would only hang.
MAX_REJECTIONS = 50


def check_number(name: str, v, lo: float, lo_open: bool = True, hi: float = math.inf, hi_open: bool = True) -> float:
    """A finite real in the interval, else ``ValueError`` naming the argument and the interval."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        v = float(v)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lo_s = f"{lo} <" if lo_open else f"{lo} <="
        hi_s = "" if hi == math.inf else (f" < {hi}" if hi_open else f" <= {hi}")
        raise ValueError(f"{name}: expected a finite number with {lo_s} {name}{hi_s}, got {v!r}")
    return v


def check_count(name: str, v) -> int:
    """A positive int (not a bool), else ``ValueError`` naming the argument."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


def check_order(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v not in (2, 3):
        raise ValueError(f"order: expected 2 or 3 (an int), got {v!r}")
    return v


def rms_error(x, x_low, x_high, atol: float, rtol: float) -> torch.Tensor:
    """``E_b = sqrt(mean_n ((x_high − x_low)/(atol + rtol·max(|x|, |x_high|)))²)`` in float64, ``[B]``."""
    B = x.shape[0]
    xf, lo, hi = (q.reshape(B, -1).double() for q in (x, x_low, x_high))
    tol = atol + rtol * torch.maximum(xf.abs(), hi.abs())
    return ((hi - lo) / tol).pow(2).mean(1).sqrt()


def pi_control(x, x_high, E, h, err_prev, lam_s, lam_t, lam_end, active, *, order: int, theta: float = 0.9,
               fac_min: float = 0.2, fac_max: float = 5.0, k_i: float = 0.3, k_p: float = 0.4):
    """Accept/reject and the step-size update for given errors ``E [B]`` (module docstring)."""
    B = x.shape[0]
    acc = active & (E <= 1.0)
    Ec = E.clamp_min(ERR_FLOOR)
    fac_acc = theta * Ec.pow(-(k_i + k_p) / order) * err_prev.pow(k_p / order)
    fac_rej = theta * Ec.pow(-1.0 / order)
    fac = torch.where(acc, fac_acc, fac_rej).clamp(fac_min, fac_max)
    x.reshape(B, -1)[acc] = x_high.reshape(B, -1)[acc].to(x.dtype)
    lam_s.copy_(torch.where(acc, lam_t, lam_s))
    err_prev.copy_(torch.where(acc, E.clamp_min(ERR_PREV_FLOOR), err_prev))
    done = acc & (lam_t >= lam_end - END_TOL * (1 + lam_end.abs()))
    still = active & ~done
    h.copy_(torch.where(still, torch.minimum(h * fac, lam_end - lam_s), h))
    active.copy_(still)
    return acc


def adaptive_control_reference(x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active, *, atol: float,
                               rtol: float, order: int, theta: float = 0.9, fac_min: float = 0.2,
                               fac_max: float = 5.0, k_i: float = 0.3, k_p: float = 0.4):
    E = rms_error(x, x_low, x_high, atol, rtol)
    acc = pi_control(x, x_high, E, h, err_prev, lam_s, lam_t, lam_end, active, order=order, theta=theta,
                     fac_min=fac_min, fac_max=fac_max, k_i=k_i, k_p=k_p)
    return acc, E
