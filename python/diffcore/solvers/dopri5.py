"""Dormand–Prince 5(4) with per-sample step-size control (Dormand & Prince 1980; Hairer, Nørsett &
Wanner I, §II.4–II.5): the adaptive integrator of ``sample(..., solver="dopri5")`` and of
:func:`diffcore.likelihood.log_likelihood`.

The method is the tableau :data:`~.tableau.DOPRI5` (FSAL, local extrapolation: the step advances with
the 5th-order solution, the embedded 4th-order one only measures the error). Every sample has its own
step size and its own accept / reject decisions, and samples that finished drop out of the model
calls, so a sample's result does not depend on the batch it is in (torchdiffeq's ``dopri5`` shares one
step size across the batch instead, which makes each result depend on the others).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .adaptive_control import MAX_REJECTIONS, StepController, check_count, check_number
from .protocol import AdaptiveSolver
from .tableau import DOPRI5, ButcherTableau

__all__ = ["Dopri5", "integrate"]

_F64 = torch.float64


def _rms(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.mean(a * a, dim=1))


def integrate(rhs: Callable, y0: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, rtol: float, atol: float,
              max_steps: int = 10000, batch_control: bool = False, safety: float = 0.9, fac_min: float = 0.2,
              fac_max: float = 10.0, tableau: ButcherTableau = DOPRI5, max_rejections: int = MAX_REJECTIONS):
    """Integrate ``dy/dt = rhs(t, y, idx)`` from ``t0`` to ``t1`` (per sample, either direction) with an
    embedded FSAL pair (default Dormand–Prince 5(4)).

    Args:
        rhs: ``rhs(t [b], y [b, N], idx [b] | None) → [b, N]``; ``idx`` are the rows of the full batch
            being evaluated (``None``: all of them, in order). Must be deterministic.
        y0: ``[B, N]`` initial state (its dtype is the arithmetic's); ``t0, t1``: ``[B]`` float64 end
            points, ``t1 ≠ t0``, one direction per sample.
        rtol, atol: per-component tolerances; a step is accepted when the scaled RMS error
            ``‖err_j/(atol + rtol·max(|y_j|, |y_new,j|))‖_rms ≤ 1`` (Hairer's norm).
        batch_control: ``False`` (default): every sample has its own step size and its own accept /
            reject decisions, and finished samples drop out of the model calls, so each sample's result
            is what it would be alone in the batch. ``True``: one step size for the whole batch, accepted
            when the largest per-sample error norm is ≤ 1 (cheaper bookkeeping, batch-dependent result).
        max_steps: raise ``RuntimeError`` after this many trial steps of one sample.
        tableau: an FSAL tableau with ``b_err`` (its last stage at the new solution).
        max_rejections: raise ``RuntimeError`` when a sample's step is rejected this many times in a row.

    The first step size follows Hairer's starting-step algorithm (one extra evaluation; Hairer I,
    §II.4); then ``h ← h·min(fac_max, max(fac_min, safety·err^{−1/(q+1)}))`` with q the embedded
    order, with no increase right after a rejection (Hairer I, §II.4, Eq. (4.13)): the I-controller
    of the shared :class:`~.adaptive_control.StepController`.

    Returns ``(y1 [B, N], stats)`` with ``stats = {"nfe": model calls, "nfe_per_sample", "steps",
    "rejected"}`` (the last three ``[B]`` int64).
    """
    if not (tableau.fsal and tableau.b_err is not None):
        raise ValueError(f"tableau: expected an FSAL tableau with an error estimate (b_err), got {tableau!r}")
    C, A, E = tableau.c, tableau.a, tableau.b_err
    S = tableau.stages
    # the error estimate is O(h^order): that of the embedded (order − 1) method
    ctrl = StepController.integral(tableau.order, theta=safety, fac_min=fac_min, fac_max=fac_max,
                                   max_rejections=max_rejections, hold_after_reject=True)
    B, N = y0.shape
    dev = y0.device
    y, t = y0.clone(), t0.clone()
    direction = torch.where(t1 >= t0, 1.0, -1.0).to(_F64)
    span = (t1 - t0) * direction
    nfe_s = torch.zeros(B, dtype=torch.long, device=dev)
    n_acc = torch.zeros(B, dtype=torch.long, device=dev)
    n_rej = torch.zeros(B, dtype=torch.long, device=dev)
    streak = torch.zeros(B, dtype=torch.long, device=dev)  # consecutive rejections of each sample's step
    calls = 0
    stats = {"nfe": 0, "nfe_per_sample": nfe_s, "steps": n_acc, "rejected": n_rej}
    if B == 0:
        return y, stats
    col = lambda v: v.to(y.dtype)[:, None]  # noqa: E731  a [b] float64 factor as a column of y's dtype

    def ev(tt, yy, idx):
        nonlocal calls
        calls += 1
        out = rhs(tt, yy, idx)
        if idx is None:
            nfe_s.add_(1)
        else:
            nfe_s.index_add_(0, idx, torch.ones_like(idx))
        return out

    # Hairer's initial step (per sample; the batch minimum with batch_control)
    f = ev(t, y, None)
    bad = ~torch.isfinite(f).all(1)
    if bool(bad.any()):  # no step size helps: the start itself is NaN (it would retry until max_steps)
        raise ValueError(f"model: its output (the ODE right-hand side) is NaN or inf at the start t = "
                         f"{float(t[bad][0])} for {int(bad.sum())} of {B} samples")
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y / scale).to(_F64), _rms(f / scale).to(_F64)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / torch.clamp(d1, min=1e-300))
    h0 = torch.minimum(h0, span)
    f1 = ev(t + direction * h0, y + col(direction * h0) * f, None)
    d2 = _rms((f1 - f) / scale).to(_F64) / h0
    dm = torch.maximum(d1, d2)
    h1 = torch.where(dm <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / torch.clamp(dm, min=1e-300)) ** 0.2)
    h = torch.minimum(torch.minimum(100 * h0, h1), span)
    if batch_control:
        h = h.min().expand(B).clone()

    done = torch.zeros(B, dtype=torch.bool, device=dev)
    after_reject = torch.zeros(B, dtype=torch.bool, device=dev)
    last_err = torch.zeros(B, dtype=_F64, device=dev)
    while True:
        act = torch.nonzero(~done).squeeze(1)
        na = act.numel()
        if na == 0:
            break
        full = na == B
        idx = None if full else act
        ya, ta, fa, t1a, da = (y, t, f, t1, direction) if full else (y[act], t[act], f[act], t1[act], direction[act])
        trials, stuck = torch.stack([(n_acc + n_rej).max(), streak.max()]).tolist()  # one host read
        if trials >= max_steps:
            raise RuntimeError(f"max_steps: the adaptive solver took more than max_steps={max_steps} trial steps "
                               f"(rtol, atol too tight for this model, or a non-smooth/non-finite model output)")
        if stuck >= ctrl.max_rejections:
            j = int(torch.argmax(streak))
            raise ctrl.rejection_error("the adaptive solver", f"of sample {j} at t={float(t[j]):.6g}", stuck,
                                       float(h[j]), float(last_err[j]), rtol, atol, unit="in t")
        rem = (t1a - ta) * da  # > 0: t reaches t1 only through an accepted last step
        ulp = torch.finfo(_F64).eps * torch.maximum(ta.abs(), t1a.abs())
        hp = h if full else h[act]
        last = hp >= rem - 16 * ulp  # take the end exactly rather than leave a sliver of a few ulps
        ha = torch.where(last, rem, hp)
        tiny = ~last & ((ha <= 64 * ulp) | torch.isnan(ha))
        if bool(tiny.any()):
            raise RuntimeError(f"rtol, atol: step size underflow at t = {float(ta[tiny][0])} (the model output is "
                               f"probably not finite or not smooth there)")
        hc = col(ha * da)  # the signed step
        k = [fa]
        for s in range(1, S):
            ys = ya + hc * sum(a * kj for a, kj in zip(A[s], k) if a != 0.0)
            ts = torch.where(last, t1a, ta + ha * da) if C[s] == 1.0 else ta + (C[s] * ha) * da
            if s == S - 1:
                y5 = ys
            k.append(ev(ts, ys, idx))
        err = hc * sum(e * kj for e, kj in zip(E, k) if e != 0.0)
        en = _rms(err / (atol + rtol * torch.maximum(ya.abs(), y5.abs()))).to(_F64)
        en = torch.where(torch.isfinite(en), en, torch.full_like(en, math.inf))
        if batch_control:
            en = en.max().expand(na)
        acc = en <= 1.0
        fac = ctrl.factor(en, acc, after_reject=after_reject if full else after_reject[act])
        t_new = torch.where(acc, torch.where(last, t1a, ta + ha * da), ta)
        y_new = torch.where(acc[:, None], y5, ya)
        f_new = torch.where(acc[:, None], k[S - 1], fa)
        if full:
            y, t, f = y_new, t_new, f_new
            h = ha * fac
            done = acc & last
            after_reject = ~acc
            n_acc += acc.long()
            n_rej += (~acc).long()
            streak = torch.where(acc, 0, streak + 1)
            last_err.copy_(en)
        else:
            y[act], t[act], f[act] = y_new, t_new, f_new
            h[act] = ha * fac
            done[act] = acc & last
            after_reject[act] = ~acc
            n_acc.index_add_(0, act, acc.long())
            n_rej.index_add_(0, act, (~acc).long())
            streak[act] = torch.where(acc, 0, streak[act] + 1)
            last_err[act] = en
    stats["nfe"] = calls
    return y, stats


class Dopri5(AdaptiveSolver):
    """Adaptive Dormand–Prince 5(4) on ``dx/dt = v̂(x, t)`` in the schedule's own time (native
    prediction: velocity), with per-sample step control (module docstring).

    Args:
        rtol, atol: tolerances of the scaled RMS error (finite, positive; defaults 1e-5 each). The
            global error is a small multiple of them on smooth problems.
        max_steps: raise ``RuntimeError`` after this many trial steps of one sample (default 10000).
        batch_control: one step size for the whole batch (cheaper bookkeeping, torchdiffeq's behaviour;
            the result then depends on the batch). Default ``False``.
    """

    name = "dopri5"
    native = "velocity"
    order = 5

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 10000, batch_control: bool = False,
                 max_rejections: int = MAX_REJECTIONS):
        self.rtol, self.atol = check_number("rtol", rtol, 0.0), check_number("atol", atol, 0.0)
        self.max_steps = check_count("max_steps", max_steps)
        self.max_rejections = check_count("max_rejections", max_rejections)
        if not isinstance(batch_control, bool):
            raise TypeError(f"batch_control: expected a bool, got {batch_control!r}")
        self.batch_control = batch_control

    @property
    def per_sample_control(self) -> bool:
        return not self.batch_control

    def __repr__(self) -> str:
        return f"dopri5(rtol={self.rtol}, atol={self.atol})"

    def solve(self, velocity_fn: Callable, x: torch.Tensor, schedule, t_start: float, t_end: float,
              callback: Optional[Callable] = None):
        """Integrate from ``t_start`` to ``t_end`` with ``velocity_fn(x, t_batch) → v̂`` (always called
        on the whole batch; rows of samples that have finished or that are being retried are ignored).

        ``callback`` (if given) is called once at the end with ``{"i": trial steps of the slowest
        sample, "t": t_end, "x": x}``: samples do not share steps. Returns ``(x, info)`` with
        ``info = {"nfe", "steps", "rejected", "nfe_per_sample"}`` (``steps``, ``rejected`` per sample)."""
        t_start, t_end = float(t_start), float(t_end)
        if not (math.isfinite(t_start) and math.isfinite(t_end)) or t_start == t_end:
            raise ValueError(f"t_start, t_end: expected two different finite times, got {t_start!r} and {t_end!r}")
        B = x.shape[0]
        if x.numel() == 0:
            return x.clone(), {"nfe": 0, "steps": 0, "rejected": 0}
        shape = x.shape
        dtype = x.dtype
        y0 = x.detach().reshape(B, -1)
        t_fill = torch.full((B,), t_start, dtype=_F64, device=x.device)

        def rhs(tt, yy, idx):
            if idx is not None:  # the model sees the whole batch (model_kwargs, guidance are per batch row)
                T, Y = t_fill.clone(), y0.clone()
                T[idx], Y[idx] = tt, yy
            else:
                T, Y = tt, yy
            v = velocity_fn(Y.reshape(shape), T.to(dtype))
            v = v.reshape(B, -1).to(dtype)
            return v if idx is None else v[idx]

        ta = torch.full((B,), t_start, dtype=_F64, device=x.device)
        tb = torch.full((B,), t_end, dtype=_F64, device=x.device)
        y, st = integrate(rhs, y0, ta, tb, self.rtol, self.atol, max_steps=self.max_steps,
                          batch_control=self.batch_control, max_rejections=self.max_rejections)
        out = y.reshape(shape)
        if callback is not None:
            callback({"i": int((st["steps"] + st["rejected"]).max()), "t": t_end, "x": out})
        return out, {"nfe": st["nfe"], "steps": st["steps"], "rejected": st["rejected"],
                     "nfe_per_sample": st["nfe_per_sample"]}
