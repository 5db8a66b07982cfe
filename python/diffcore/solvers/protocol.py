"""What :func:`diffcore.sample` can run: one abstract base, :class:`Sampler`, whose subclasses declare
their **kind** and their **capabilities** as class attributes (after diffrax's ``AbstractSolver``;
Kidger 2022, "On Neural Differential Equations", arXiv:2202.02435: one interface, capabilities
declared by each solver rather than probed).

Kinds (:class:`Kind`), each with the abstract methods ``sample`` calls:

* ``Kind.GRID`` — a fixed-grid coefficient plan. :class:`GridSolver` (``plan(schedule, timesteps,
  device, dtype, prediction)``) builds a :class:`GridPlan` (``num_steps``, ``stages(i)``,
  ``model_time(i, s)``, ``init_state(x, noise)``, ``step(state, i, s, out)``): every coefficient is
  known before the first model call (``Plan`` of :mod:`.base`, ``V3Plan`` of :mod:`.v3`).
* ``Kind.ADAPTIVE`` — an :class:`AdaptiveSolver` chooses its steps while it runs:
  ``solve(fn, x, schedule, t_start, t_end, callback) → (x, info)`` on model outputs of its ``native``
  prediction, its step sizes from one :class:`~.adaptive_control.StepController`.
* ``Kind.STUDENT`` — a distilled model's own few-step sampler, a :class:`Student`:
  ``few_step_sample(x, schedule, steps, model_kwargs=None, generator=None)``; ``sample`` passes
  the model itself.

Capabilities (booleans; a class sets the ones that differ from :class:`Sampler`'s defaults, and an
instance whose options decide one overrides it with a property): see :data:`CAPABILITIES`.
docs/design.md, "One sampler protocol", explains how ``sample`` dispatches on them and how to add a
sampler.
"""
from __future__ import annotations

import abc
import enum
from typing import Callable, Optional

__all__ = ["Kind", "Sampler", "GridSolver", "GridPlan", "AdaptiveSolver", "Student", "CAPABILITIES", "kind_of",
           "capabilities"]


class Kind(str, enum.Enum):
    """The three engines behind :func:`diffcore.sample`."""

    GRID = "grid"
    ADAPTIVE = "adaptive"
    STUDENT = "student"


#: Capability flags, with what each promises to :func:`diffcore.sample`.
CAPABILITIES = {
    "stochastic": "draws noise: seed=, sample_ids=, generator=, noise= and brownian= apply",
    "needs_grid": "runs on a grid: steps=, spacing=, t_start= and t_end= make one before the run",
    "per_sample_grid": "accepts per-sample times steps=[B, M + 1]",
    "supports_picard": "sample(parallel=ParallelConfig(...)) can run it by Picard iteration",
    "supports_cuda_graph": "nothing in its loop reads back to the host: sample(cuda_graph=True) captures it",
    "supports_trajectory": "sample(return_trajectory=True) and the per-step callback see every step",
    "per_sample_control": "each sample of the batch takes its own step sizes (adaptive solvers)",
}


class Sampler(abc.ABC):
    """The base of everything :func:`diffcore.sample` runs (module docstring).

    Attributes:
        kind: the engine (:class:`Kind`).
        name: the registry name (:func:`diffcore.solvers.available`) or a descriptive one.
        stochastic, needs_grid, per_sample_grid, supports_picard, supports_cuda_graph,
        supports_trajectory, per_sample_control: the capabilities of :data:`CAPABILITIES`.
    """

    kind: Kind
    name = "sampler"
    stochastic = False
    needs_grid = True
    per_sample_grid = False
    supports_picard = False
    supports_cuda_graph = False
    supports_trajectory = True
    per_sample_control = False

    def refusal(self, capability: str) -> str:
        """The message of the ``ValueError`` that :func:`diffcore.sample` raises when a call needs
        ``capability`` and this sampler lacks it (it starts with the argument to change)."""
        arg = {"supports_picard": "parallel", "supports_cuda_graph": "cuda_graph",
               "supports_trajectory": "return_trajectory", "per_sample_grid": "steps"}.get(capability, "solver")
        return f"{arg}: {self.name} does not declare {capability} (the capability: {CAPABILITIES[capability]})"


class GridSolver(Sampler):
    """A solver that builds fixed-grid plans; immutable, no run state (docs/design.md, "Plan / execute
    protocol"). ``native``: the prediction its update is written in."""

    kind = Kind.GRID
    native = "eps"
    supports_cuda_graph = True
    supports_picard = True

    @abc.abstractmethod
    def plan(self, schedule, timesteps, device=None, dtype=None, prediction=None) -> "GridPlan":
        """Every coefficient of a run on ``timesteps``, computed once."""


class GridPlan(Sampler):
    """The coefficients of one fixed-grid run (docs/design.md, "Plan / execute protocol").

    Attributes:
        solver: the :class:`GridSolver` that built it.
        num_steps: the steps ``M``; ``timesteps``: the grid ``[batch, M + 1]`` (float64, CPU).
        batch: 1 for a grid shared by the batch, ``B`` for per-sample grids.
        noise_draws: the noise draws of a run (``stochastic`` is ``noise_draws > 0``).
    """

    kind = Kind.GRID
    supports_cuda_graph = True
    supports_picard = True
    noise_draws = 0
    batch = 1

    @property
    def name(self) -> str:
        return self.solver.name

    @property
    def stochastic(self) -> bool:
        return self.noise_draws > 0

    @abc.abstractmethod
    def stages(self, i: int) -> range:
        """The stages (model evaluations) of step ``i``."""

    @abc.abstractmethod
    def model_time(self, i: int, s: int):
        """The model times of step ``i``, stage ``s``."""

    @abc.abstractmethod
    def init_state(self, x, noise=None):
        """A fresh run state starting from ``x`` (``x`` is never written)."""

    @abc.abstractmethod
    def step(self, state, i: int, s: int, out) -> None:
        """Apply stage ``s`` of step ``i`` given the model output ``out``."""


class AdaptiveSolver(Sampler):
    """A solver that chooses its step sizes while it runs (every step reads its error back to the
    host: no CUDA graph, no Picard iteration, no per-step trajectory). ``native``: the prediction
    ``solve``'s ``fn`` returns; ``controller``: its :class:`~.adaptive_control.StepController`."""

    kind = Kind.ADAPTIVE
    native = "eps"
    needs_grid = False
    supports_trajectory = False

    def refusal(self, capability: str) -> str:
        if capability == "supports_picard":
            return f"parallel: {self.name} chooses its steps as it goes; Picard needs a fixed grid"
        if capability in ("supports_cuda_graph", "supports_trajectory"):
            return (f"solver: {self.name} syncs with the host every step; cuda_graph and return_trajectory are not "
                    "available for it")
        return super().refusal(capability)

    @abc.abstractmethod
    def solve(self, fn: Callable, x, schedule, t_start: float, t_end: float, callback: Optional[Callable] = None):
        """Integrate from ``t_start`` to ``t_end`` with ``fn(x, t_batch)`` returning the ``native``
        prediction; returns ``(x, info)``."""


class Student(Sampler):
    """A distilled model with its own few-step sampler (:mod:`diffcore.distill.students`):
    ``diffcore.sample(student, x, schedule, steps=k)`` calls ``few_step_sample``; the solver options
    do not apply to it."""

    kind = Kind.STUDENT
    needs_grid = False
    supports_trajectory = False

    @abc.abstractmethod
    def few_step_sample(self, x, schedule=None, steps=1, model_kwargs: Optional[dict] = None, generator=None):
        """``x`` at the schedule's noisy end → a sample after ``steps`` student steps."""


def kind_of(obj) -> Optional[Kind]:
    """The :class:`Kind` of ``obj``, or ``None`` for an object that does not declare the protocol."""
    return obj.kind if isinstance(obj, Sampler) else None


def capabilities(obj) -> dict:
    """``{flag: bool}`` of :data:`CAPABILITIES` for a :class:`Sampler` (``TypeError`` otherwise)."""
    if not isinstance(obj, Sampler):
        raise TypeError(f"obj: expected a diffcore sampler (diffcore.solvers.protocol.Sampler), got "
                        f"{type(obj).__name__}")
    return {k: bool(getattr(obj, k)) for k in CAPABILITIES}
