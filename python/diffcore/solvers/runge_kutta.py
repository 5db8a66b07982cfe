"""Euler and Heun in the schedule's natural variable (book §4.2.2, App. A.1.4; Heun as in Karras et al. 2022, Alg. 1).

``variable="t"``: on ``dx/dt = v̂`` in the schedule's own time (native prediction: velocity) — the
usual flow-matching sampler. ``variable="rho"``: on ``dy/dρ = ε̂`` with ``y = x/α``, ``ρ = σ/α`` —
Karras et al.'s Algorithm 1 for σ-schedules (α ≡ 1, ρ = σ). The default, ``None``, picks ``"rho"``
for schedules with α ≡ 1 (VE, EDM) and ``"t"`` otherwise. Heun takes Euler on a final step to σ = 0
(its corrector would evaluate the model at zero noise). Euler in ρ is DDIM; Heun in ρ is
DPM-Solver-2 variant A with r₁ = 1.
"""
from __future__ import annotations

from typing import Optional

from .base import Solver, _check_order

def natural_variable(schedule) -> str:
    """``"rho"`` for schedules with α ≡ 1 (``kind == "ve"``: VE, EDM), ``"t"`` for the others."""
    return "rho" if getattr(schedule, "kind", "general") == "ve" else "t"


class _RK(Solver):
    method = "rk"

    def __init__(self, order: int, variable: Optional[str] = None, **common):
        super().__init__(**common)
        if variable not in (None, "t", "rho"):
            raise ValueError(f"variable: expected None, 't' or 'rho', got {variable!r}")
        self.variable = variable
        self.max_order = self.order = _check_order(order, (1, 2))
        self.stages = order
        self.history = order - 1
        self.second_buffer = order > 1
        self.native = "eps" if variable == "rho" else "velocity"

    def plan(self, schedule, timesteps, device=None, dtype=None, prediction="eps"):
        if self.variable is None:
            resolved = type(self)(variable=natural_variable(schedule), lower_order_final=self.lower_order_final)
            return resolved.plan(schedule, timesteps, device, dtype, prediction)
        return super().plan(schedule, timesteps, device, dtype, prediction)

    def _stage_lams(self, order):
        return (1.0,) if order == 2 else ()

    def _core_options(self) -> dict:
        return {"rho": self.variable == "rho"}

    def _repr_options(self) -> dict:
        return {"variable": self.variable}


class Euler(_RK):
    """Explicit Euler (order 1) in ``variable`` (see the module docstring)."""

    name = "euler"

    def __init__(self, variable: Optional[str] = None, **common):
        super().__init__(1, variable, **common)


class Heun(_RK):
    """Heun's method / explicit trapezoid (order 2, two model calls per step) in ``variable``."""

    name = "heun"

    def __init__(self, variable: Optional[str] = None, **common):
        super().__init__(2, variable, **common)
