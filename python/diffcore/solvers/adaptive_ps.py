"""Adaptive DPM-Solver with per-sample step sizes (``"dpm_adaptive_ps"``; the embedded pair of
Lu et al. 2022, App. C, error control below).

The embedded pair is that of :class:`~diffcore.solvers.DPMAdaptive` — DPM-Solver-1/-2 (order 2) or
DPM-Solver-2 (r₁ = ⅓)/-3 (order 3) in λ, sharing model evaluations — but every sample carries its own
λ, step size ``h``, previous error, accept/reject state and NFE count, as torchode does for batches of
independent problems: an easy sample is not dragged through the smallest steps of the hardest one.

Error control (per sample; the shared :class:`~.adaptive_control.StepController`, fused in
``csrc/core/adaptive.h``):
tolerance ``atol + rtol·max(|x|, |x_high|)`` per element and the RMS norm over the sample's elements
(torchdiffeq's semantics), accept iff ``E ≤ 1``; after an accepted step the PI controller
``h ← h·θ·E_n^{−0.7/k}·E_{n−1}^{0.4/k}`` (Gustafsson 1991; Hairer & Wanner II §IV.2), after a
rejection ``h ← h·θ·E^{−1/k}``, factors clipped to ``[fac_min, fac_max]``, ``k`` the higher order.

Each round evaluates the model on the active samples only: once at a fresh anchor (samples whose last
trial was rejected reuse it), then once per stage, all as batched calls with per-sample times; one
fused call then forms every sample's error, accepts or rejects, updates ``h`` and copies the accepted
rows. Selecting the active samples needs their count on the host: one synchronization per round, and
one more reads two flags (a non-finite error, a step rejected ``max_rejections`` times in a row) so that a
model returning NaN or a step that cannot be controlled ends with an error that says so, not a hang.

``per_sample=False`` is the shared-step baseline with the same pair, norm and controller: one ``h`` for
the batch, driven by the largest per-sample error (every sample then pays every round's evaluations).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .. import _ops
from ..schedules import Schedule
from .adaptive_control import (END_TOL, MAX_REJECTIONS, StepController, check_count, check_number, check_order,
                               pi_control, rms_error)
from .protocol import AdaptiveSolver

__all__ = ["DPMAdaptivePS"]


class DPMAdaptivePS(AdaptiveSolver):
    """Adaptive DPM-Solver on noise predictions with per-sample steps (module docstring).

    Args:
        order: 2 (DPM-Solver-12) or 3 (DPM-Solver-23, default).
        rtol, atol: tolerance ``atol + rtol·max(|x|, |x_high|)`` per element (defaults 0.05 and 0.0078,
            the DPM-Solver reference's values for data in [−1, 1]).
        h_init: first trial step in λ (0.05; at most the whole interval is tried).
        theta: safety factor (0.9), ``0 < θ < 1``: a rejected step is retried with ``θ·h·E^{−1/k}``,
            which for ``θ ≥ 1`` can exceed the rejected ``h`` and never be accepted.
        fac_min, fac_max: limits of the step-size factor (0.2, 5).
        per_sample: per-sample steps (default) or one shared step (the baseline).
        max_rounds: raise ``RuntimeError`` after this many rounds.
        max_rejections: raise ``RuntimeError`` when a sample's step is rejected this many times in a row.
    """

    name = "dpm_adaptive_ps"
    native = "eps"

    def __init__(self, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 theta: float = 0.9, fac_min: float = 0.2, fac_max: float = 5.0, per_sample: bool = True,
                 max_rounds: int = 100000, max_rejections: int = MAX_REJECTIONS):
        order = check_order(order)
        h_init = check_number("h_init", h_init, 0.0)
        theta = check_number("theta", theta, 0.0, hi=1.0)
        rtol = check_number("rtol", rtol, 0.0, lo_open=False)
        atol = check_number("atol", atol, 0.0, lo_open=False)
        if not rtol + atol > 0:
            raise ValueError("rtol, atol: at least one must be positive")
        if not (isinstance(fac_min, (int, float)) and isinstance(fac_max, (int, float)) and 0 < fac_min <= 1 <= fac_max):
            raise ValueError(f"fac_min, fac_max: expected 0 < fac_min <= 1 <= fac_max, got {fac_min!r}, {fac_max!r}")
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample: expected a bool, got {per_sample!r}")
        self.order, self.rtol, self.atol = order, float(rtol), float(atol)
        self.h_init, self.theta, self.fac_min, self.fac_max = float(h_init), float(theta), float(fac_min), float(fac_max)
        self.per_sample, self.max_rounds = per_sample, check_count("max_rounds", max_rounds)
        self.max_rejections = check_count("max_rejections", max_rejections)

    @property
    def controller(self) -> StepController:
        """The PI controller of the module docstring with this solver's options."""
        return StepController(self.order, theta=self.theta, fac_min=self.fac_min, fac_max=self.fac_max,
                              max_rejections=self.max_rejections)

    @property
    def per_sample_control(self) -> bool:
        return self.per_sample

    def __repr__(self) -> str:
        return (f"dpm_adaptive_ps(order={self.order}, rtol={self.rtol}, atol={self.atol}, "
                f"per_sample={self.per_sample})")

    def _control(self, ctrl, x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active):
        if self.per_sample:
            return _ops.adaptive_control(x, x_low, x_high, h, err_prev, lam_s, lam_t, lam_end, active,
                                         atol=self.atol, rtol=self.rtol, **ctrl.kernel_options())
        E = rms_error(x, x_low, x_high, self.atol, self.rtol)
        E = E.max().expand_as(E).contiguous()  # the batch shares the largest error
        return pi_control(x, x_high, E, h, err_prev, lam_s, lam_t, lam_end, active, order=ctrl.order,
                          controller=ctrl), E

    @staticmethod
    def _nonfinite(E, idx, ea, d1, d2, ts, t1, t2):
        """Name the cause of a non-finite error estimate: the model's output (the usual one) or x."""
        j = int((~torch.isfinite(E)).nonzero()[0, 0])
        for tm, e in ((ts, ea), (t1, d1), (t2, d2)):
            if e is not None and not bool(torch.isfinite(e[j]).all()):
                raise ValueError(f"model: returned non-finite values (NaN or inf) for sample {int(idx[j])} at "
                                 f"t={float(tm[j]):.6g} inside dpm_adaptive_ps")
        raise ValueError(f"rtol, atol: the error estimate of dpm_adaptive_ps is not finite for sample "
                         f"{int(idx[j])} at t={float(ts[j]):.6g} (tolerances below the arithmetic's range, "
                         f"rtol·|x| + atol = 0, or x overflowed)")

    def solve(self, eps_fn: Callable, x: torch.Tensor, schedule: Schedule, t_start: float, t_end: float,
              callback: Optional[Callable] = None):
        """Integrate every sample from ``t_start`` to ``t_end`` (σ > 0 there) with ``eps_fn(x, t) → ε̂``
        (``t`` a ``[n]`` tensor of per-sample times, called on the active samples only).

        Returns ``(x, info)``; ``info`` holds per-sample ``nfe``, ``steps`` and ``rejected`` (int64
        ``[B]``), the number of ``rounds`` and ``model_calls`` (batched calls)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError("x: expected a floating tensor [B, *shape]")
        v = schedule.eval(torch.tensor([float(t_start), float(t_end)], dtype=torch.float64))
        lam_T, lam_E = float(v.lam[0]), float(v.lam[1])
        if not (math.isfinite(lam_T) and math.isfinite(lam_E)):
            raise ValueError("t_start, t_end: dpm_adaptive_ps needs 0 < σ and 0 < α at both ends (finite λ)")
        if not lam_E > lam_T:
            raise ValueError("t_start, t_end: expected sampling direction (λ increasing from t_start to t_end)")
        B, dev = x.shape[0], x.device
        f64 = dict(dtype=torch.float64, device=dev)
        x = x.detach().clone().contiguous()
        if x.numel() == 0:  # nothing to integrate (an empty batch, or samples without features)
            zero = torch.zeros(B, dtype=torch.int64, device=dev)
            return x, {"nfe": zero, "steps": zero.clone(), "rejected": zero.clone(), "rounds": 0, "model_calls": 0}
        lam_s = torch.full((B,), lam_T, **f64)
        t_s = torch.full((B,), float(t_start), **f64)
        lam_end = torch.full((B,), lam_E, **f64)
        h = torch.full((B,), min(self.h_init, lam_E - lam_T), **f64)
        err_prev = torch.ones(B, **f64)
        active = torch.ones(B, dtype=torch.bool, device=dev)
        fresh = torch.zeros(B, dtype=torch.bool, device=dev)
        eps_s = torch.empty_like(x)
        nfe = torch.zeros(B, dtype=torch.int64, device=dev)
        steps = torch.zeros_like(nfe)
        rejected = torch.zeros_like(nfe)
        streak = torch.zeros_like(nfe)  # consecutive rejections of the current step
        r1, r2 = (0.5, None) if self.order == 2 else (1.0 / 3.0, 2.0 / 3.0)
        rounds = calls = 0
        ctrl = self.controller
        shape1 = (-1,) + (1,) * (x.dim() - 1)

        def at(lam, t=None):
            tt = schedule.t_of_lam(lam) if t is None else t
            vv = schedule.eval(tt)
            return tt, vv.alpha, vv.sigma

        while True:
            idx = active.nonzero().squeeze(1)  # the round's one host synchronization
            n = idx.numel()
            if n == 0:
                break
            if rounds >= self.max_rounds:
                raise RuntimeError(f"max_rounds: dpm_adaptive_ps left {n} samples unfinished after "
                                   f"max_rounds={self.max_rounds} rounds")
            rounds += 1
            stale = idx[~fresh[idx]]
            if stale.numel():
                eps_s[stale] = eps_fn(x[stale], t_s[stale].to(x.dtype)).to(x.dtype)
                nfe[stale] += 1
                fresh[stale] = True
                calls += 1
            xa, ea = x[idx], eps_s[idx]
            ls, hh, le = lam_s[idx], h[idx], lam_end[idx]
            lt = ls + hh
            at_end = lt >= le - END_TOL * (1 + le.abs())
            lt = torch.where(at_end, le, lt)
            ts, a_s, s_s = at(ls, t_s[idx])
            tt, a_t, s_t = at(lt, torch.where(at_end, torch.full_like(lt, float(t_end)), schedule.t_of_lam(lt)))
            bc = lambda q: q.reshape(shape1).to(x.dtype)  # noqa: E731
            rho_s, rho_t = s_s / a_s, s_t / a_t
            em1 = a_t * (rho_s - rho_t)                         # σ_t (e^h − 1)
            base = bc(a_t / a_s) * xa - bc(em1) * ea
            t1, a1, g1 = at(ls + r1 * (lt - ls))
            u1 = bc(a1 / a_s) * xa - bc(a1 * (rho_s - g1 / a1)) * ea
            d1 = eps_fn(u1, t1.to(x.dtype)).to(x.dtype) - ea
            calls += 1
            nfe[idx] += 1
            if self.order == 2:
                x_low, x_high = base, base - bc(em1 / (2 * r1)) * d1
            else:
                x_low = base - bc(em1 / (2 * r1)) * d1
                hl = lt - ls
                t2, a2, g2 = at(ls + r2 * hl)
                hr2 = r2 * hl
                phi22 = torch.expm1(hr2) / hr2 - 1.0
                u2 = bc(a2 / a_s) * xa - bc(a2 * (rho_s - g2 / a2)) * ea - bc(g2 * (r2 / r1) * phi22) * d1
                d2 = eps_fn(u2, t2.to(x.dtype)).to(x.dtype) - ea
                calls += 1
                nfe[idx] += 1
                phi2 = torch.expm1(hl) / hl - 1.0
                x_high = base - bc(s_t * phi2 / r2) * d2
            ha, ep, la, act = h[idx], err_prev[idx], lam_s[idx], active[idx]
            acc, E = self._control(ctrl, xa, x_low.contiguous(), x_high.contiguous(), ha, ep, la, lt, le, act)
            x[idx], h[idx], err_prev[idx], lam_s[idx], active[idx] = xa, ha, ep, la, act
            sk = torch.where(acc, torch.zeros_like(streak[idx]), streak[idx] + 1)
            streak[idx] = sk
            nonfinite, stuck = torch.stack([(~torch.isfinite(E)).any(), (sk >= ctrl.max_rejections).any()]).tolist()
            if nonfinite:
                self._nonfinite(E, idx, ea, d1, d2 if self.order == 3 else None, ts, t1, t2 if self.order == 3 else None)
            if stuck:
                j = int(torch.argmax(sk))
                raise ctrl.rejection_error("dpm_adaptive_ps", f"of sample {int(idx[j])} at "
                                                      f"t={float(ts[j]):.6g}", int(sk[j]), float(hh[j]), float(E[j]),
                                                      self.rtol, self.atol)
            t_s[idx] = torch.where(acc, tt, ts)
            fresh[idx] = fresh[idx] & ~acc
            steps[idx] += acc.to(torch.int64)
            rejected[idx] += (~acc).to(torch.int64)
            if callback is not None:
                callback({"round": rounds, "active": n, "accepted": acc, "error": E, "x": x})
        return x, {"nfe": nfe, "steps": steps, "rejected": rejected, "rounds": rounds, "model_calls": calls}
