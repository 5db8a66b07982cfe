"""Convergence-order measurement against the closed-form Gaussian-mixture oracle: the
reference problem, pinned start points, a plain plan runner and the least-squares order.

Used by the order tests and the error-vs-NFE benchmark; useful to anyone checking a solver.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

from .grids import timesteps as make_timesteps
from .noise import Noise
from .oracles import GaussianMixture, reference_ode
from .param import resolve_prediction
from .schedules import Schedule

__all__ = ["reference_mixture", "pinned_starts", "run_plan", "order_study", "lsq_slope", "gaussian_moments"]


def reference_mixture() -> GaussianMixture:
    """The 1-D reference problem (VP-linear schedule, the exact posterior mean as the model): weights
    (0.3, 0.5, 0.2), means (−1.5, 0.4, 2.0), standard deviations (0.3, 0.2, 0.5)."""
    return GaussianMixture.mixture1d([0.3, 0.5, 0.2], [-1.5, 0.4, 2.0], [0.3, 0.2, 0.5])


def pinned_starts(oracle, schedule: Schedule, t_start: float, t_end: float, n: int = 24,
                  max_derivative: float = 10.0) -> torch.Tensor:
    """Start points ``(B, 1)`` at ``t_start``: normal quantiles times the marginal's scale, without
    those whose reference flow-map derivative ``∂x_end/∂x_start`` exceeds ``max_derivative`` (they end
    near a separatrix and dominate any error metric)."""
    v = schedule.eval(torch.tensor([float(t_start)], dtype=torch.float64))
    scale = float(torch.sqrt(v.alpha ** 2 + v.sigma ** 2)[0])
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    x = (math.sqrt(2.0) * torch.erfinv(2 * q - 1) * scale)[:, None]
    d = 1e-6 * scale
    ends = reference_ode(oracle, torch.cat([x - d, x + d]), t_start, t_end, schedule)
    deriv = (ends[n:] - ends[:n]).abs()[:, 0] / (2 * d)
    return x[deriv <= max_derivative].contiguous()


def run_plan(plan, model, x: torch.Tensor, start_step: int = 0, state=None) -> torch.Tensor:
    """Run ``plan`` on ``model(x, t)`` from ``x`` (or a prepared ``state``) — the bare protocol loop."""
    st = state if state is not None else plan.init_state(x)
    B = st.x.shape[0]
    with torch.no_grad():
        for i in range(start_step, plan.num_steps):
            for s in plan.stages(i):
                t = plan.model_time(i, s)
                plan.step(st, i, s, model(st.model_input(s), t.expand(B) if t.shape[0] != B else t))
    return st.x


def lsq_slope(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of −log(error) against log(steps): the observed global order."""
    lx = torch.log(torch.tensor(steps, dtype=torch.float64))
    ly = -torch.log(torch.tensor(errors, dtype=torch.float64))
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def order_study(solver, schedule: Schedule, oracle: Optional[GaussianMixture] = None,
                steps: Sequence[int] = (128, 256, 512, 1024), t_start: Optional[float] = None,
                t_end: Optional[float] = None, spacing: str = "uniform_lambda", prediction: Optional[str] = None,
                exact_history: bool = False, starts: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Errors and observed order of ``solver`` on ``oracle`` (float64; RMS over pinned starts).

    ``exact_history=True`` measures a multistep solver's steady-state order: the run starts at step
    ``K`` (its history size, where the warm-up is over) from the reference solution, with the history
    ring holding the exact native predictions at the first ``K`` grid points. ``prediction``: the
    oracle's head handed to the solver (``None``: the schedule's own type).
    Returns ``{"steps", "errors", "order", "nfe"}``."""
    oracle = oracle if oracle is not None else reference_mixture()
    prediction = resolve_prediction(prediction, schedule)
    t_start = float(schedule.t_start if t_start is None else t_start)
    t_end = float(schedule.t_end if t_end is None else t_end)
    x0 = starts if starts is not None else pinned_starts(oracle, schedule, t_start, t_end)
    ref = reference_ode(oracle, x0, t_start, t_end, schedule)
    model = lambda x, t: oracle.predict(x, t, schedule, prediction)  # noqa: E731
    errors, nfes = [], []
    for n in steps:
        ts = make_timesteps(schedule, n, spacing=spacing, t_start=t_start, t_end=t_end, dtype=torch.float64)
        if exact_history and getattr(solver, "history", 0) > 0:
            plan = solver.plan(schedule, ts, dtype=torch.float64, prediction=prediction)
            K = solver.history
            st = plan.init_state(x0)
            xs = [x0]
            for j in range(1, K + 1):
                xs.append(reference_ode(oracle, x0, t_start, float(ts[j]), schedule))
            for j in range(K):
                tj = torch.full((x0.shape[0],), float(ts[j]), dtype=torch.float64)
                st.ring[plan.history_slot(j)] = oracle.predict(xs[j], tj, schedule, plan.solver.native)
            if st.y is not None:
                st.y.copy_(xs[K - 1])
            st.x.copy_(xs[K])
            out = run_plan(plan, model, x0, start_step=K, state=st)
        else:
            plan = solver.plan(schedule, ts, dtype=torch.float64, prediction=prediction)
            out = run_plan(plan, model, x0)
        errors.append(float(((out - ref) ** 2).mean().sqrt()))
        nfes.append(plan.nfe)
    return {"steps": list(steps), "errors": errors, "order": lsq_slope(steps, errors), "nfe": nfes}



def gaussian_moments(plan, oracle, mean: float, var: float, trajectory: bool = False):
    """Exact mean and variance of a one-dimensional Gaussian start ``N(mean, var)`` pushed through a
    plan's implemented steps, for one-dimensional Gaussian data (``oracle`` a one-component
    :class:`~diffcore.oracles.GaussianMixture`) or any model affine in x (``oracle`` a callable
    ``(x [B, 1], t [B]) -> plan.prediction``, e.g. the constant x̂ of point-mass data).

    The exact model output of Gaussian data is affine in x, and every step is affine in (x, model
    outputs, noise), so the state is ``c₀ + Σ_k c_k ξ_k`` with independent standard normals ξ (the start
    and one per noise draw). The plan runs on the coefficient vector ``c`` as its features, with the
    affine model applied to it and pre-drawn noise draw d = the unit vector of ξ_d, through the same
    fused kernel as a sampling run; mean = c₀, variance = Σ c_k². The plan must be float64 on the CPU
    and must not have data-dependent rows (the PC corrector). Returns ``(mean, var)`` floats, or lists
    after every step with ``trajectory=True`` (start included).
    """
    if plan._hooks is not None:
        raise ValueError("plan: has data-dependent (non-affine) rows; exact moments do not apply")
    if plan.dtype != torch.float64 or plan.device.type != "cpu":
        raise ValueError("plan: build it with dtype=torch.float64 on the CPU")
    if isinstance(oracle, GaussianMixture):
        if oracle.dim != 1 or oracle.weights.numel() != 1:
            raise ValueError("oracle: expected one-dimensional Gaussian data (one component)")
        predict = lambda x, t: oracle.predict(x, t, plan.schedule, plan.prediction)  # noqa: E731
    elif callable(oracle):
        predict = oracle
    else:
        raise TypeError(f"oracle: expected a Gaussian oracle or an affine model callable, got {type(oracle).__name__}")
    F = 2 + plan.noise_draws
    X = torch.zeros(plan.batch, F, dtype=torch.float64)
    X[:, 0], X[:, 1] = float(mean), math.sqrt(float(var))
    noise = torch.zeros(plan.noise_draws, plan.batch, F, dtype=torch.float64)
    for d in range(plan.noise_draws):
        noise[d, :, 2 + d] = 1.0

    def model(x, t):
        tt = t.to(torch.float64).expand(x.shape[0])
        zero = torch.zeros(x.shape[0], 1, dtype=torch.float64)
        q = predict(zero, tt)
        p = predict(zero + 1.0, tt) - q
        out = p * x
        out[:, 0] += q[:, 0]
        return out

    state = plan.init_state(X, Noise(noise=noise))
    moments = lambda c: (float(c[0, 0]), float((c[0, 1:] ** 2).sum()))  # noqa: E731
    hist = [moments(state.x)]
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            plan.step(state, i, s, model(state.model_input(s), plan.model_time(i, s)))
        hist.append(moments(state.x))
    if trajectory:
        return [h[0] for h in hist], [h[1] for h in hist]
    return hist[-1]
