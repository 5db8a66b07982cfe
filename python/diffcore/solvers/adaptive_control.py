"""The step-size controller of every adaptive solver (:class:`StepController`: ``dpm_adaptive``,
``dpm_adaptive_ps``, ``dopri5`` and :func:`diffcore.likelihood.log_likelihood`'s integrator), and the
per-sample error control of :mod:`.adaptive_ps`: the torch reference of the fused kernel
``csrc/core/adaptive.h``, whose constants (floors, rejection cap, defaults) this module reads from
the compiled core rather than repeating them.

The controller: a trial step with scaled error ``E`` (RMS, ``E ≤ 1`` accepts) has its size
multiplied by

* after an accepted step, the PI controller (Gustafsson 1991; Hairer & Wanner, *Solving ODEs II*,
  §IV.2, Eq. (2.43c); Söderlind 2002) ``fac = θ · E_n^{−(k_I + k_P)/k} · E_{n−1}^{k_P/k}``, ``k``
  the order of the error estimate; ``k_I = 0.3``, ``k_P = 0.4`` (the recommended PI.3.4 pair: ``−0.7/k``
  on the current error, ``+0.4/k`` on the previous accepted one, ``E_{n−1} ← max(E_n, 1e-4)``);
  ``k_I = 1, k_P = 0`` is the classic I-controller ``θ · E^{−1/k}`` (Hairer, Nørsett & Wanner I,
  §II.4, Eq. (4.13));
* after a rejection, the I-controller ``fac = θ · E_n^{−1/k}`` (no memory of the rejected error);

``E`` floored at ``1e-10`` inside the powers, ``fac`` clipped to ``[fac_min, fac_max]`` and, with
``hold_after_reject``, to at most 1 right after a rejection (Hairer I, §II.4). ``max_rejections``
consecutive rejections of one step end the run with an error naming the tolerances.

Per-sample error control (:func:`adaptive_control_reference`, fused in ``csrc/core/adaptive.h``):
for every sample ``b`` still integrating (``active[b]``), given the state at the start of its trial
step ``x``, the embedded pair's lower- and higher-order results ``x_low, x_high`` and its trial step
``h`` (in λ) from ``lam_s`` to ``lam_t``:

* tolerance per element ``tol = atol + rtol·max(|x|, |x_high|)`` and error
  ``E_b = sqrt(mean_n ((x_high − x_low)/tol)²)`` — torchdiffeq's mixed tolerance and RMS norm, per
  sample (the mean over the sample's features), accumulated in float64;
* accept iff ``E_b ≤ 1``; then ``x_b ← x_high``, ``lam_s ← lam_t`` and the controller above;
* ``h ← min(h·fac, lam_end − lam_s)``;
* a sample whose accepted step ends at ``lam_t ≥ lam_end − 1e-12·(1 + |lam_end|)`` is finished
  (``active ← False``; its ``h`` is left as it was).

Inactive samples are not touched. Returns ``(accepted [B] bool, E [B] float64)``; ``x``, ``h``,
``err_prev``, ``lam_s`` and ``active`` are updated in place.
"""
from __future__ import annotations

import math

import torch

from .. import _ops

__all__ = ["StepController", "adaptive_control_reference", "rms_error", "pi_control", "ERR_FLOOR",
           "ERR_PREV_FLOOR", "END_TOL", "MAX_REJECTIONS"]

_C = _ops.ADAPTIVE_CONTROL
ERR_FLOOR: float = _C["err_floor"]
ERR_PREV_FLOOR: float = _C["err_prev_floor"]
END_TOL: float = _C["end_tol"]
MAX_REJECTIONS: int = _C["max_rejections"]


class StepController:
    """The PI/I step-size controller with safety factor (module docstring), shared by the adaptive
    solvers; immutable.

    Args:
        order: ``k``, the order of the error estimate (``E = O(h^k)``): the higher order of an
            embedded pair, 5 for Dormand–Prince 5(4).
        theta: safety factor ``θ > 0`` (the solvers require ``θ < 1``: a rejected step must shrink).
        fac_min, fac_max: limits of the factor, ``0 ≤ fac_min ≤ 1 ≤ fac_max`` (``0`` and ``inf``: none).
        k_i, k_p: the gains; ``k_i = 1, k_p = 0`` is the I-controller (:meth:`integral`).
        max_rejections: consecutive rejections of one step before :meth:`rejection_error`.
        hold_after_reject: no increase on the step accepted right after a rejection.
    """

    __slots__ = ("order", "theta", "fac_min", "fac_max", "k_i", "k_p", "max_rejections", "hold_after_reject")

    def __init__(self, order: int, *, theta: float = _C["theta"], fac_min: float = _C["fac_min"],
                 fac_max: float = _C["fac_max"], k_i: float = _C["k_i"], k_p: float = _C["k_p"],
                 max_rejections: int = MAX_REJECTIONS, hold_after_reject: bool = False):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order: expected a positive int (the order of the error estimate), got {order!r}")
        theta = check_number("theta", theta, 0.0)  # the solvers ask for θ < 1 (a rejection must shrink h)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (fac_min, fac_max))
        if not (ok and 0 <= fac_min <= 1 <= fac_max):
            raise ValueError(f"fac_min, fac_max: expected 0 <= fac_min <= 1 <= fac_max, got {fac_min!r}, {fac_max!r}")
        k_i = check_number("k_i", k_i, -math.inf)
        k_p = check_number("k_p", k_p, -math.inf)
        if not isinstance(hold_after_reject, bool):
            raise TypeError(f"hold_after_reject: expected a bool, got {hold_after_reject!r}")
        for k, v in (("order", order), ("theta", theta), ("fac_min", float(fac_min)), ("fac_max", float(fac_max)),
                     ("k_i", k_i), ("k_p", k_p), ("max_rejections", check_count("max_rejections", max_rejections)),
                     ("hold_after_reject", hold_after_reject)):
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        raise AttributeError("StepController is immutable")

    @classmethod
    def integral(cls, order: int, **options) -> "StepController":
        """The I-controller ``fac = θ · E^{−1/k}`` (``k_i = 1, k_p = 0``) with ``options``."""
        return cls(order, k_i=1.0, k_p=0.0, **options)

    def __repr__(self) -> str:
        return (f"StepController(order={self.order}, theta={self.theta}, fac_min={self.fac_min}, "
                f"fac_max={self.fac_max}, k_i={self.k_i}, k_p={self.k_p}, max_rejections={self.max_rejections}, "
                f"hold_after_reject={self.hold_after_reject})")

    def kernel_options(self) -> dict:
        """The keyword arguments of the fused per-sample control (:func:`diffcore._ops.adaptive_control`)."""
        if self.hold_after_reject:
            raise ValueError("hold_after_reject: the fused control has no memory of the last rejection")
        return dict(order=self.order, theta=self.theta, fac_min=self.fac_min, fac_max=self.fac_max, k_i=self.k_i,
                    k_p=self.k_p)

    def factor(self, E: torch.Tensor, accepted: torch.Tensor, err_prev=None, after_reject=None) -> torch.Tensor:
        """The step-size factor ``[B]`` for errors ``E`` (float64; NaN propagates), the accept
        decisions, the previous accepted errors (needed when ``k_p ≠ 0``) and, with
        ``hold_after_reject``, which samples' last trial was rejected."""
        Ec = E.clamp_min(ERR_FLOOR)
        fac_acc = self.theta * Ec.pow(-(self.k_i + self.k_p) / self.order)
        if self.k_p != 0:
            fac_acc = fac_acc * err_prev.pow(self.k_p / self.order)
        if self.k_i == 1.0 and self.k_p == 0:
            fac = fac_acc  # the I-controller: the same law after a rejection
        else:
            fac = torch.where(accepted, fac_acc, self.theta * Ec.pow(-1.0 / self.order))
        fac = fac.clamp(self.fac_min, self.fac_max)
        if self.hold_after_reject and after_reject is not None:
            fac = torch.where(accepted & after_reject, torch.clamp(fac, max=1.0), fac)
        return fac

    def next_err_prev(self, E: torch.Tensor, accepted: torch.Tensor, err_prev: torch.Tensor) -> torch.Tensor:
        """The PI term's memory after this trial: ``max(E, 1e-4)`` where accepted, else unchanged."""
        return torch.where(accepted, E.clamp_min(ERR_PREV_FLOOR), err_prev)

    def scalar_factor(self, E: float, after_reject: bool = False, err_prev: float = 1.0) -> float:
        """:meth:`factor` of one shared step, in host floats (a batch-wide controller has read ``E``
        back already; a tensor round trip would cost more than the arithmetic). Same operations."""
        accepted = E <= 1.0
        Ec = E if E != E else max(E, ERR_FLOOR)
        if accepted or (self.k_i == 1.0 and self.k_p == 0):
            fac = self.theta * Ec ** (-(self.k_i + self.k_p) / self.order)
            if accepted and self.k_p != 0:
                fac = fac * err_prev ** (self.k_p / self.order)
        else:
            fac = self.theta * Ec ** (-1.0 / self.order)
        fac = fac if fac != fac else min(max(fac, self.fac_min), self.fac_max)
        if self.hold_after_reject and accepted and after_reject:
            fac = min(fac, 1.0)
        return fac

    def rejection_error(self, who: str, where: str, streak: int, h: float, E: float, rtol: float, atol: float,
                        unit: str = "in λ") -> RuntimeError:
        """The error of a step rejected ``max_rejections`` times in a row (it names the tolerances)."""
        return RuntimeError(
            f"rtol, atol: {who} could not control the step size {where}: {streak} consecutive rejected steps "
            f"(max_rejections={self.max_rejections}; last h={abs(h):.3g} {unit}, error E={E:.3g} with "
            f"rtol={rtol:g}, atol={atol:g}). Loosen the tolerances or check that the model is smooth in x and t")


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


def pi_control(x, x_high, E, h, err_prev, lam_s, lam_t, lam_end, active, *, order: int,
               theta: float = _C["theta"], fac_min: float = _C["fac_min"], fac_max: float = _C["fac_max"],
               k_i: float = _C["k_i"], k_p: float = _C["k_p"], controller: "StepController" = None):
    """Accept/reject and the step-size update for given errors ``E [B]`` (module docstring), with
    ``controller`` (default: the one of ``order``, ``theta``, ``fac_min``, ``fac_max``, ``k_i``, ``k_p``)."""
    ctrl = controller if controller is not None else StepController(
        order, theta=theta, fac_min=fac_min, fac_max=fac_max, k_i=k_i, k_p=k_p)
    B = x.shape[0]
    acc = active & (E <= 1.0)
    fac = ctrl.factor(E, acc, err_prev)
    x.reshape(B, -1)[acc] = x_high.reshape(B, -1)[acc].to(x.dtype)
    lam_s.copy_(torch.where(acc, lam_t, lam_s))
    err_prev.copy_(ctrl.next_err_prev(E, acc, err_prev))
    done = acc & (lam_t >= lam_end - END_TOL * (1 + lam_end.abs()))
    still = active & ~done
    h.copy_(torch.where(still, torch.minimum(h * fac, lam_end - lam_s), h))
    active.copy_(still)
    return acc


def adaptive_control_reference(x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active, *, atol: float,
                               rtol: float, order: int, theta: float = _C["theta"], fac_min: float = _C["fac_min"],
                               fac_max: float = _C["fac_max"], k_i: float = _C["k_i"], k_p: float = _C["k_p"]):
    E = rms_error(x, x_low, x_high, atol, rtol)
    acc = pi_control(x, x_high, E, h, err_prev, lam_s, lam_t, lam_end, active, order=order, theta=theta,
                     fac_min=fac_min, fac_max=fac_max, k_i=k_i, k_p=k_p)
    return acc, E
