"""Adaptive DPM-Solver-12 / -23 (Lu et al. 2022, App. C).

An embedded pair in λ: the lower-order update (DPM-Solver-1, resp. DPM-Solver-2 with r₁ = ⅓) and the
higher-order one (DPM-Solver-2 with r₁ = ½, resp. DPM-Solver-3 with r = ⅓, ⅔) share model
evaluations; the step is accepted when the scaled RMS difference ``E`` is at most 1 for every sample,
and ``h ← min(θ h E^{−1/order}, λ_end − λ_s)`` (the I-controller of the shared
:class:`~.adaptive_control.StepController`, unclipped as in the reference). One step size is shared by the whole batch, so each
step reads ``E`` back to the host: this solver is **not** sync-free and cannot be captured in a CUDA
graph (per-sample adaptive stepping is a different solver).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..schedules import Schedule
from .adaptive_control import MAX_REJECTIONS, StepController, check_count, check_number, check_order
from .protocol import AdaptiveSolver


def _scalar_vals(schedule: Schedule, t: float):
    v = schedule.eval(torch.tensor([t], dtype=torch.float64))
    a, s = float(v.alpha[0]), float(v.sigma[0])
    # α = 0 or σ = 0 (the ends of a flow path) give λ = ∓∞, which the callers refuse by name
    return a, s, (math.log(a) if a > 0 else -math.inf) - (math.log(s) if s > 0 else -math.inf)


class DPMAdaptive(AdaptiveSolver):
    """Adaptive DPM-Solver on noise predictions.

    Args:
        order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23, the default).
        rtol, atol: tolerances of ``δ = max(atol, rtol·max(|x_low|, |x_prev|))`` (defaults 0.05 and
            0.0078, the reference's values for data in [−1, 1]); finite and positive.
        h_init: first trial step in λ (0.05; at most the whole interval is tried).
        theta: safety factor (0.9), ``0 < θ < 1``: a rejected step is retried with ``θ·h·E^{−1/k}``,
            which for ``θ ≥ 1`` can exceed the rejected ``h`` and never be accepted.
        t_err: stop when |t − t_end| < t_err.
        max_steps: raise ``RuntimeError`` after this many trial steps.
        max_rejections: raise ``RuntimeError`` after this many consecutive rejections of one step.
    """

    name = "dpm_adaptive"
    native = "eps"

    def __init__(self, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 theta: float = 0.9, t_err: float = 1e-5, max_steps: int = 100000,
                 max_rejections: int = MAX_REJECTIONS):
        self.order = check_order(order)
        self.rtol, self.atol = check_number("rtol", rtol, 0.0), check_number("atol", atol, 0.0)
        self.h_init = check_number("h_init", h_init, 0.0)
        self.theta = check_number("theta", theta, 0.0, hi=1.0)
        self.t_err = check_number("t_err", t_err, 0.0)
        self.max_steps = check_count("max_steps", max_steps)
        self.max_rejections = check_count("max_rejections", max_rejections)

    @property
    def controller(self) -> StepController:
        """The reference's law: θ·E^{−1/k} after acceptance and rejection alike, no factor limits."""
        return StepController.integral(self.order, theta=self.theta, fac_min=0.0, fac_max=math.inf,
                                       max_rejections=self.max_rejections)

    def __repr__(self) -> str:
        return f"dpm_adaptive(order={self.order}, rtol={self.rtol}, atol={self.atol})"

    def solve(self, eps_fn: Callable, x: torch.Tensor, schedule: Schedule, t_start: float, t_end: float,
              callback: Optional[Callable] = None):
        """Integrate from ``t_start`` to ``t_end`` (> 0, σ > 0) with ``eps_fn(x, t_batch) → ε̂``.

        Returns ``(x, info)`` with ``info = {"nfe", "steps", "rejected"}``."""
        t_start, t_end = float(t_start), float(t_end)
        a_T, s_T, lam_T = _scalar_vals(schedule, t_start)
        a_0, s_0, lam_end = _scalar_vals(schedule, t_end)
        if not (a_T > 0 and s_T > 0 and math.isfinite(lam_T)):
            raise ValueError(f"t_start: dpm_adaptive steps in λ and needs α > 0 and σ > 0 at the start (finite λ), "
                             f"got α = {a_T:g}, σ = {s_T:g} at t = {t_start:g}; start slightly inside, e.g. "
                             "t_start=0.999 on rectified flow (diffcore.sample's default range does)")
        if not (s_0 > 0 and math.isfinite(lam_end)):
            raise ValueError("t_end: dpm_adaptive needs a final time with σ > 0 (denoise to zero afterwards)")
        if 0 < abs(t_start - t_end) <= self.t_err:  # the loop would not run: x returned unchanged
            raise ValueError(f"t_err: expected less than |t_start − t_end| = {abs(t_start - t_end):g}, got {self.t_err:g}")
        B = x.shape[0]
        if x.numel() == 0:  # nothing to integrate (as the fixed-grid samplers return an empty batch)
            return x.clone(), {"nfe": 0, "steps": 0, "rejected": 0}
        r1, r2 = (0.5, None) if self.order == 2 else (1 / 3, 2 / 3)
        time = lambda t: torch.full((B,), t, dtype=x.dtype, device=x.device)  # noqa: E731
        t_of = lambda lam: float(schedule.t_of_lam(torch.tensor([lam], dtype=torch.float64))[0])  # noqa: E731
        s, lam_s, (a_s, sg_s) = t_start, lam_T, (a_T, s_T)
        h = math.copysign(min(self.h_init, abs(lam_end - lam_T)), lam_end - lam_T)
        x_prev = x
        eps_s = None
        ctrl = self.controller
        nfe = steps = rejected = streak = 0

        def ddim(xs, eps, a_s_, a_t, s_t, r_s, r_t):  # x_t = (α_t/α_s)x_s − α_t(ρ_s − ρ_t) ε, exact at any h
            return (a_t / a_s_) * xs - (a_t * (r_s - r_t)) * eps

        while abs(s - t_end) > self.t_err:
            if steps + rejected >= self.max_steps:
                raise RuntimeError(f"max_steps: dpm_adaptive did not reach t_end={t_end:g} within "
                                   f"max_steps={self.max_steps} trial steps (at t={s:.6g})")
            if eps_s is None:
                eps_s = eps_fn(x, time(s))
                nfe += 1
            lam_t = lam_s + h
            t = t_end if abs(lam_t - lam_end) < 1e-12 else t_of(lam_t)
            a_t, s_t, _ = _scalar_vals(schedule, t)
            rho_s, rho_t = sg_s / a_s, s_t / a_t
            em1 = a_t * (rho_s - rho_t)  # σ_t (e^h − 1)
            t1 = t_of(lam_s + r1 * h)
            a1, g1, _ = _scalar_vals(schedule, t1)
            u1 = ddim(x, eps_s, a_s, a1, g1, rho_s, g1 / a1)
            eps1 = eps_fn(u1, time(t1))
            base = (a_t / a_s) * x - em1 * eps_s
            if self.order == 2:
                x_low = base
                x_high = base - (em1 / (2 * r1)) * (eps1 - eps_s)
                nfe += 1
            else:
                x_low = base - (em1 / (2 * r1)) * (eps1 - eps_s)
                t2 = t_of(lam_s + r2 * h)
                a2, g2, _ = _scalar_vals(schedule, t2)
                hr2 = r2 * h
                phi22 = math.expm1(hr2) / hr2 - 1.0
                u2 = ddim(x, eps_s, a_s, a2, g2, rho_s, g2 / a2) - (g2 * (r2 / r1) * phi22) * (eps1 - eps_s)
                eps2 = eps_fn(u2, time(t2))
                phi2 = math.expm1(h) / h - 1.0
                x_high = base - (s_t * phi2 / r2) * (eps2 - eps_s)
                nfe += 2
            delta = torch.maximum(torch.full_like(x_low, self.atol), self.rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            err = ((x_high - x_low) / delta).reshape(B, -1).pow(2).mean(1).sqrt().max()
            E = float(err)  # host sync: one step size for the batch
            if not math.isfinite(E):
                evals = [(s, eps_s), (t1, eps1)] + ([(t2, eps2)] if self.order == 3 else [])
                for tm, e in evals:
                    if not bool(torch.isfinite(e).all()):
                        raise ValueError(f"model: returned non-finite values (NaN or inf) at t={tm:.6g} inside "
                                         f"dpm_adaptive (step from t={s:.6g})")
                raise ValueError(f"rtol, atol: the error estimate of dpm_adaptive is not finite at t={s:.6g} "
                                 f"with rtol={self.rtol:g}, atol={self.atol:g} (tolerances below the "
                                 f"arithmetic's range, or x overflowed)")
            if E <= 1.0:
                x, x_prev = x_high, x_low
                s, lam_s, a_s, sg_s = t, lam_t, a_t, s_t
                eps_s = None
                steps += 1
                streak = 0
                if callback is not None:
                    callback({"i": steps, "t": s, "x": x})
            else:
                rejected += 1
                streak += 1
                if streak >= ctrl.max_rejections:
                    raise ctrl.rejection_error("dpm_adaptive", f"at t={s:.6g}", streak, h, E, self.rtol,
                                                          self.atol)
            h_new = abs(h) * ctrl.scalar_factor(E)
            h = math.copysign(min(h_new, abs(lam_end - lam_s)), lam_end - lam_s) if lam_end != lam_s else 0.0
            if h == 0.0:
                break
        return x, {"nfe": nfe, "steps": steps, "rejected": rejected}
