"""Explicit Runge–Kutta methods on a fixed grid, each one its Butcher tableau (:mod:`.tableau`), in
the schedule's natural variable (book §4.2.2, App. A.1.4; Heun as in Karras et al. 2022, Alg. 1).

``variable="t"``: on ``dx/dt = v̂`` in the schedule's own time (native prediction: velocity) — the
usual flow-matching sampler. ``variable="rho"``: on ``dy/dρ = ε̂`` with ``y = x/α``, ``ρ = σ/α`` —
Karras et al.'s Algorithm 1 for σ-schedules (α ≡ 1, ρ = σ). The default, ``None``, picks ``"rho"``
for schedules with α ≡ 1 (VE, EDM) and ``"t"`` otherwise. Stages sit at their nodes ``c`` as
fractions of the step in that variable. A final step to σ = 0 is taken with a tableau that has no
stage at c = 1 (which would evaluate the model at zero noise) and one order less — Euler for Heun,
as Karras et al. do — so the global order stays the method's. Euler in ρ is DDIM; Heun in ρ is
DPM-Solver-2 variant A with r₁ = 1.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch

from .base import Solver
from .tableau import EULER, HEUN, MIDPOINT, RALSTON, RALSTON3, ButcherTableau
from .tableau import RK4 as _RK4_TABLEAU


def natural_variable(schedule) -> str:
    """``"rho"`` for schedules with α ≡ 1 (``kind == "ve"``: VE, EDM), ``"t"`` for the others."""
    return "rho" if getattr(schedule, "kind", "general") == "ve" else "t"


def _encode(prefix: str, tab: ButcherTableau) -> dict:
    return {prefix + k[3:]: v for k, v in tab.core_options().items()}


class RungeKutta(Solver):
    """The explicit Runge–Kutta method of ``tableau`` on a fixed grid, in ``variable`` (module docstring).

    Args:
        tableau: the method (a :class:`~.tableau.ButcherTableau`, at most 6 stages).
        low: the tableau of a final step to σ = 0: no stage at c = 1, order ≥ ``tableau.order − 1``
            (default: the method itself when it has no stage at c = 1 beyond the first, else the
            highest-order one of Euler and Ralston's third-order method that qualifies).
        variable: ``None``, ``"t"`` or ``"rho"``.
    """

    name = "rk"
    method = "rk"

    def __init__(self, tableau: ButcherTableau, low: Optional[ButcherTableau] = None, variable: Optional[str] = None,
                 **common):
        super().__init__(**common)
        if not isinstance(tableau, ButcherTableau):
            raise TypeError(f"tableau: expected a diffcore.solvers.tableau.ButcherTableau, got {type(tableau).__name__}")
        if variable not in (None, "t", "rho"):
            raise ValueError(f"variable: expected None, 't' or 'rho', got {variable!r}")
        if low is None:
            if all(c < 1.0 for c in tableau.c):
                low = tableau
            else:
                low = RALSTON3 if tableau.order >= 4 else EULER
        if not isinstance(low, ButcherTableau):
            raise TypeError(f"low: expected a ButcherTableau, got {type(low).__name__}")
        if any(c >= 1.0 for c in low.c) or low.order < tableau.order - 1:
            raise ValueError(f"low: expected a tableau with every node c < 1 and order >= {tableau.order - 1}, got "
                             f"{low!r} with c = {low.c}")
        if max(tableau.stages, low.stages) > 6:
            raise ValueError(f"tableau: expected at most 6 stages (the compiled step's history ring), got "
                             f"{tableau.stages}")
        self.tableau, self.low, self.variable = tableau, low, variable
        self.max_order = self.order = tableau.order
        self.stages = max(tableau.stages, low.stages)
        self.history = self.stages - 1
        self.second_buffer = self.stages > 1
        self.native = "eps" if variable == "rho" else "velocity"

    def plan(self, schedule, timesteps, device=None, dtype=None, prediction=None):
        if self.variable is None:
            resolved = copy.copy(self)
            resolved.variable = natural_variable(schedule)
            resolved.native = "eps" if resolved.variable == "rho" else "velocity"
            return resolved.plan(schedule, timesteps, device, dtype, prediction)
        return super().plan(schedule, timesteps, device, dtype, prediction)

    def _stage_times(self, schedule, grid_t: torch.Tensor, lam: torch.Tensor, orders) -> torch.Tensor:
        """Times ``[B, M, max(2, stages − 1)]`` of stages 1 … S−1 at their nodes c in the variable."""
        B, M = grid_t.shape[0], grid_t.shape[1] - 1
        out = grid_t[:, :-1, None].repeat(1, 1, max(2, self.stages - 1))  # unused slots: any valid time
        if self.variable == "rho":
            rho = torch.exp(-lam)  # λ = +∞ at σ = 0 gives ρ = 0
        for i, p in enumerate(orders):
            tab = self.tableau if p >= self.tableau.order else self.low
            for k in range(1, tab.stages):
                c = tab.c[k]
                if c == 0.0 or c == 1.0:
                    continue  # the generator takes the grid node itself
                if self.variable == "rho":
                    r = rho[:, i] + c * (rho[:, i + 1] - rho[:, i])
                    out[:, i, k - 1] = schedule.t_of_lam(-torch.log(r))
                else:
                    out[:, i, k - 1] = grid_t[:, i] + c * (grid_t[:, i + 1] - grid_t[:, i])
        return out.contiguous()

    def _core_options(self) -> dict:
        opts = {"rho": self.variable == "rho", "rk_order": self.tableau.order}
        opts.update(self.tableau.core_options())
        opts.update(_encode("rk_low_", self.low))
        return opts

    def _repr_options(self) -> dict:
        return {"variable": self.variable}


class Euler(RungeKutta):
    """Explicit Euler (order 1) in ``variable`` (see the module docstring)."""

    name = "euler"

    def __init__(self, variable: Optional[str] = None, **common):
        super().__init__(EULER, EULER, variable, **common)


class Heun(RungeKutta):
    """Heun's method / explicit trapezoid (order 2, two model calls per step) in ``variable``."""

    name = "heun"

    def __init__(self, variable: Optional[str] = None, **common):
        super().__init__(HEUN, EULER, variable, **common)


class Midpoint(RungeKutta):
    """The explicit midpoint method (order 2, two model calls per step) in ``variable``."""

    name = "midpoint"

    def __init__(self, variable: Optional[str] = None, **common):
        super().__init__(MIDPOINT, None, variable, **common)


class Ralston(RungeKutta):
    """Ralston's second-order method (two model calls per step) in ``variable``."""

    name = "ralston"

    def __init__(self, variable: Optional[str] = None, **common):
        super().__init__(RALSTON, None, variable, **common)


class RK4(RungeKutta):
    """The classical fourth-order Runge–Kutta method (four model calls per step) in ``variable``; a final
    step to σ = 0 is taken with Ralston's third-order method (no model call at zero noise)."""

    name = "rk4"

    def __init__(self, variable: Optional[str] = None, **common):
        super().__init__(_RK4_TABLEAU, RALSTON3, variable, **common)

