"""Few-step samplers of distilled students behind one API.

Every student is a :class:`~diffcore.solvers.protocol.Student` (the sampler protocol's third kind) and
exposes ``few_step_sample(x, schedule, steps, model_kwargs=None, generator=None)``;
:func:`diffcore.sample` dispatches to it, so
``diffcore.sample(student, x, schedule, steps=k)`` runs the student's own sampler:

* :class:`PDStudent` — DDIM with the student on its own grid (book §10.3, book §10.3.2);
* :class:`ConsistencyStudent` — one-step / multistep consistency sampling (book §11.2.2, Alg. 9, Alg. 9);
* :class:`MeanFlowStudent` — ``x ← x − (τ_k − τ_{k+1}) h(x, τ_k, τ_{k+1})`` (book §11.5.2);
* :class:`CTMStudent` — γ-sampling of a consistency trajectory model (book §11.4, book Alg. 11);
* :class:`SCMStudent` — one-/multistep sampling of a TrigFlow consistency model (sCM, Lu & Song 2025).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from .. import schedules as _schedules
from ..param import canonical_prediction
from ..solvers.onestep import ddim_step
from ..solvers.protocol import Student
from .consistency import ConsistencyFunction, consistency_sample, karras_grid
from .ctm import gamma_sample
from .meanflow import meanflow_sample
from .scm import TrigConsistency, scm_sample

__all__ = ["PDStudent", "ConsistencyStudent", "MeanFlowStudent", "CTMStudent", "SCMStudent"]


def _same_schedule(own, given):
    if given is None:
        return own
    g = _schedules.get(given)
    if type(g) is not type(own) or repr(g) != repr(own):
        raise ValueError(f"schedule: this student was trained with {own!r}, got {g!r}")
    return own


def _steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int number of student steps, got {steps!r}")
    return steps


class PDStudent(Student):
    """A progressive-distillation student: DDIM on its own ``grid`` (decreasing, ``N + 1`` times).

    ``steps`` must be ``N`` or a divisor of it (then every ``N/steps``-th grid point is used, as the
    student of a later halving round would)."""

    name = "pd_student"

    def __init__(self, net: Callable, schedule, grid, prediction="x0"):
        self.net, self.schedule = net, _schedules.get(schedule)
        self.grid = torch.as_tensor(grid, dtype=torch.float64)
        if self.grid.dim() != 1 or self.grid.numel() < 2 or not bool((self.grid[1:] < self.grid[:-1]).all()):
            raise ValueError("grid: expected at least two strictly decreasing times")
        self.prediction = canonical_prediction(prediction)

    @property
    def steps(self) -> int:
        return self.grid.numel() - 1

    def __call__(self, x, t, **model_kwargs):
        return self.net(x, t, **model_kwargs)

    @torch.no_grad()
    def few_step_sample(self, x: torch.Tensor, schedule=None, steps: Optional[int] = None,
                        model_kwargs: Optional[dict] = None, generator=None) -> torch.Tensor:
        sched = _same_schedule(self.schedule, schedule)
        n = self.steps if steps is None else _steps(steps)
        if self.steps % n:
            raise ValueError(f"steps: this student runs on {self.steps} steps; expected a divisor of it, got {n}")
        g = self.grid[:: self.steps // n]
        for k in range(n):
            x = ddim_step(self.net, x, g[k], g[k + 1], sched, self.prediction, model_kwargs)
        return x


class ConsistencyStudent(Student):
    """A consistency model ``f_θ`` (:class:`~diffcore.distill.consistency.ConsistencyFunction`).
    ``steps = M``: times ``T`` then ``M − 1`` points of the Karras grid ``karras_grid(M + 1, t_min, T)``
    (descending, without ``t_min``). ``T`` defaults to the schedule's ``t_start``."""

    name = "consistency_student"
    stochastic = True  # multistep sampling re-noises between steps

    def __init__(self, model: ConsistencyFunction, T: Optional[float] = None, rho: float = 7.0):
        if not isinstance(model, ConsistencyFunction):
            raise TypeError("model: expected a ConsistencyFunction")
        self.model, self.schedule = model, model.schedule
        self.T = float(model.schedule.t_start if T is None else T)
        self.rho = rho

    def __call__(self, x, t, **model_kwargs):
        return self.model(x, t, **model_kwargs)

    def times(self, steps: int) -> torch.Tensor:
        return karras_grid(_steps(steps) + 1, self.model.t_min, self.T, self.rho).flip(0)[:-1]

    def few_step_sample(self, x: torch.Tensor, schedule=None, steps: int = 1, model_kwargs: Optional[dict] = None,
                        generator: Optional[torch.Generator] = None, noise=None) -> torch.Tensor:
        _same_schedule(self.schedule, schedule)
        return consistency_sample(self.model, x, self.times(steps), self.schedule, self.model.t_min, generator,
                                  noise, model_kwargs)


class MeanFlowStudent(Student):
    """A MeanFlow average-velocity network ``h(x, s, t)``; ``steps = M``: uniform times ``T → 0``."""

    name = "meanflow_student"

    def __init__(self, net: Callable, schedule="rf", T: float = 1.0):
        self.net, self.schedule, self.T = net, _schedules.get(schedule), float(T)

    def __call__(self, x, s, t, **model_kwargs):
        return self.net(x, s, t, **model_kwargs)

    def times(self, steps: int) -> torch.Tensor:
        return torch.linspace(self.T, 0.0, _steps(steps) + 1, dtype=torch.float64)

    def few_step_sample(self, x: torch.Tensor, schedule=None, steps: int = 1, model_kwargs: Optional[dict] = None,
                        generator=None) -> torch.Tensor:
        _same_schedule(self.schedule, schedule)
        return meanflow_sample(self.net, x, self.times(steps), model_kwargs)


class CTMStudent(Student):
    """A CTM ``G_θ(x, s, t)`` on ``edm`` (:class:`~diffcore.distill.ctm.CTMModel`); ``steps = M``: the
    Karras grid ``T → 0`` (``karras_grid(M + 1, 0, T)``, ρ = 7) with γ-sampling at ``gamma``."""

    name = "ctm_student"

    def __init__(self, model: Callable, T: float = 80.0, gamma: float = 0.0, rho: float = 7.0):
        self.model, self.schedule, self.T, self.gamma, self.rho = model, _schedules.get("edm"), float(T), gamma, rho

    @property
    def stochastic(self) -> bool:  # γ > 0 re-noises between steps
        return self.gamma > 0

    def __call__(self, x, s, t, **model_kwargs):
        return self.model(x, s, t, **model_kwargs)

    def times(self, steps: int) -> torch.Tensor:
        return karras_grid(_steps(steps) + 1, 0.0, self.T, self.rho).flip(0)

    def few_step_sample(self, x: torch.Tensor, schedule=None, steps: int = 1, model_kwargs: Optional[dict] = None,
                        generator: Optional[torch.Generator] = None, noise=None) -> torch.Tensor:
        _same_schedule(self.schedule, schedule)
        if model_kwargs:
            raise ValueError("model_kwargs: not supported by the CTM sampler")
        return gamma_sample(self.model, x, self.times(steps), self.gamma, generator, noise)


class SCMStudent(Student):
    """A TrigFlow consistency model ``f_θ`` (:class:`~diffcore.distill.scm.TrigConsistency`) on
    ``schedules.get("trig", sigma_data=σ_d)``, sampled by :func:`~diffcore.distill.scm.scm_sample`
    (Lu & Song 2025; ``x`` starts as ``σ_d ε``, the trig prior at ``s = π/2``). ``steps = M``: TrigFlow times
    ``π/2`` then the first ``M − 1`` entries of ``mid_times`` (decreasing, in ``(0, π/2)``); the default
    ``(1.1,)`` is the sCM paper's two-step intermediate time (Lu & Song 2025).
    """

    name = "scm_student"
    stochastic = True  # multistep sampling re-noises between steps

    def __init__(self, model: TrigConsistency, mid_times: Sequence[float] = (1.1,)):
        if not isinstance(model, TrigConsistency):
            raise TypeError("model: expected a TrigConsistency")
        mid = [float(v) for v in mid_times]
        if any(not 0.0 < v < math.pi / 2 for v in mid) or any(b >= a for a, b in zip(mid, mid[1:])):
            raise ValueError(f"mid_times: expected decreasing TrigFlow times in (0, π/2), got {tuple(mid_times)!r}")
        self.model, self.mid_times = model, tuple(mid)
        self.schedule = _schedules.get("trig", sigma_data=model.sigma_data)

    def __call__(self, x, s, **model_kwargs):
        return self.model(x, s, **model_kwargs)

    def times(self, steps: int) -> torch.Tensor:
        n = _steps(steps)
        if n - 1 > len(self.mid_times):
            raise ValueError(f"steps: this student has {len(self.mid_times)} intermediate times (mid_times); "
                             f"expected at most {len(self.mid_times) + 1} steps, got {n}")
        return torch.tensor((math.pi / 2,) + self.mid_times[: n - 1], dtype=torch.float64)

    def few_step_sample(self, x: torch.Tensor, schedule=None, steps: int = 1, model_kwargs: Optional[dict] = None,
                        generator: Optional[torch.Generator] = None, noise=None) -> torch.Tensor:
        _same_schedule(self.schedule, schedule)
        return scm_sample(self.model, x, self.times(steps), generator, noise, model_kwargs)
