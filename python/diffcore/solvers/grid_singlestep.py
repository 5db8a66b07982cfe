"""Single-step DPM-Solver(++) whose intermediate stages are the given grid's own points, the form of
diffusers' ``DPMSolverSinglestepScheduler`` (Lu et al. 2022, §3.3 "singlestep" with the stage times
taken from a fine grid; Lu et al. 2022b, §4 for the data form).

Every grid point is a model evaluation. The order schedule groups consecutive grid intervals into
single-step updates: a group of k intervals from ``t_j`` is one order-k step from ``t_j`` to
``t_{j+k}`` whose stages are evaluated at ``t_{j+1}, …, t_{j+k−1}``, each stage input being the
order-1, 2, … update from ``t_j`` to that point (the previous update of the step's variant, so that
every stage input is what a single-step update of that order returns there). The schedule is
diffusers' ``get_order_list``: orders 1, 2, 3 repeated; with ``lower_order_final`` the tail is
``[1, 2] + [1]`` (M divisible by 3), ``[1]`` or ``[1, 2]``; for order 2 ``[1, 1]`` or ``[1]``; a step to σ = 0 is
first order, and ``lower_order_final=False`` only applies when M is a multiple of the order and the
grid ends above σ = 0 (otherwise the lowered tail is used, as diffusers does).

=========================  ==============================================  ======  ==========
name                       update (coefficients)                           native  noise
=========================  ==============================================  ======  ==========
``dpm_solver_singlestep``  DPM-Solver-1/2/3 (``csrc/core/plans/exponential.h``)  ε̂     none
``dpmpp_singlestep``       DPM-Solver++ 1/2S/3S                                   x̂     none
``sde_dpmpp_singlestep``   SDE-DPM-Solver++ (``csrc/core/plans/dpm_sde.h``)      x̂     every stage
=========================  ==============================================  ======  ==========
"""
from __future__ import annotations

from typing import List

import torch

from .base import Solver, _check_order
from .exponential import _solver_type
from .sde import _require_decreasing

__all__ = ["GridSinglestep", "SDEGridSinglestep", "order_schedule"]


def order_schedule(M: int, order: int, lower_order_final: bool = True, final_zero: bool = False) -> List[int]:
    """The order of the update ending at each of the M grid intervals (diffusers'
    ``DPMSolverSinglestepScheduler.get_order_list``, including its switch to ``lower_order_final`` when
    M is not a multiple of ``order`` or the grid ends at σ = 0)."""
    if not lower_order_final and (M % order or final_zero):
        lower_order_final = True
    if order == 1:
        out = [1] * M
    elif order == 2:
        if lower_order_final:
            out = [1, 2] * (M // 2 - 1) + [1, 1] if M % 2 == 0 else [1, 2] * (M // 2) + [1]
        else:
            out = [1, 2] * (M // 2)
    elif lower_order_final:
        if M % 3 == 0:
            out = [1, 2, 3] * (M // 3 - 1) + [1, 2] + [1]
        elif M % 3 == 1:
            out = [1, 2, 3] * (M // 3) + [1]
        else:
            out = [1, 2, 3] * (M // 3) + [1, 2]
    else:
        out = [1, 2, 3] * (M // 3)
    if final_zero:
        out[-1] = 1
    return out


class GridSinglestep(Solver):
    """Single-step DPM-Solver (``data=False``: noise form, book §9.4) or DPM-Solver++ (``data=True``:
    data form, book §9.5), optionally its SDE form (``sde=True``, data form only: every stage draws
    fresh noise), with the stages on grid points (see the module docstring).

    Args:
        order: 1, 2 or 3.
        solver_type: ``"midpoint"`` (default; the second-order term ½·D1, third order with the
            endpoint difference only, Lu et al. 2022's variant A) or ``"heun"`` (the Taylor form).
        lower_order_final: the schedule's lowered tail (see :func:`order_schedule`).
    """

    multistep = False

    def __init__(self, order: int = 2, solver_type: str = "midpoint", data: bool = True, sde: bool = False,
                 **common):
        if sde and not data:
            raise ValueError("sde: the single-step SDE solver is the data-prediction form (data=True)")
        self.native = "x0" if data else "eps"
        self.supports_thresholding = data
        self.sde = sde
        self.method = "sde_dpmpp_single" if sde else ("dpmpp_single" if data else "dpm_solver")
        self.name = ("sde_dpmpp" if sde else "dpmpp" if data else "dpm_solver") + "_singlestep"
        super().__init__(**common)
        self.max_order = _check_order(order, (1, 2, 3))
        self.order = 1 if sde else self.max_order
        self.variant = _solver_type(solver_type)
        self.stages = self.max_order
        self.history = self.max_order - 1
        self.second_buffer = self.max_order > 1

    def _core_options(self) -> dict:
        return {"variant": self.variant, "stage_variant": True}

    def _steps(self, schedule, grid_t, grid, final_zero):
        if self.sde:
            _require_decreasing(self, grid_t)
        M = grid_t.shape[1] - 1
        fine = order_schedule(M, self.max_order, self.lower_order_final, final_zero)
        starts = [j for j, o in enumerate(fine) if o == 1]
        ends = starts[1:] + [M]
        orders = [e - j for j, e in zip(starts, ends)]
        outer = grid_t[:, starts + [M]].contiguous()
        stage_t = grid_t[:, starts, None].repeat(1, 1, 2)  # unused stages: any valid time
        for g, (j, p) in enumerate(zip(starts, orders)):
            for k in range(p - 1):
                stage_t[:, g, k] = grid_t[:, j + 1 + k]
        return outer, orders, stage_t.contiguous()

    def _repr_options(self) -> dict:
        return {"order": self.max_order, "solver_type": "midpoint" if self.variant == 0 else "heun",
                "lower_order_final": self.lower_order_final}


class SDEGridSinglestep(GridSinglestep):
    """:class:`GridSinglestep` in the SDE-DPM-Solver++ form (``sde_dpmpp_singlestep``): every stage draws
    fresh noise, ``x = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂ + … + σ_t √(1 − e^{−2h}) z`` from the
    step's start to each stage point (``csrc/core/plans/dpm_sde.h``)."""

    stochastic = True

    def __init__(self, order: int = 2, solver_type: str = "midpoint", **common):
        super().__init__(order=order, solver_type=solver_type, data=True, sde=True, **common)
