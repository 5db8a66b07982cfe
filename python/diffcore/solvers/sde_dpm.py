"""SDE-DPM-Solver and SDE-DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++", App. C): first-order and
multistep solvers of the reverse SDE written in log-SNR λ, the stochastic members of the DPM-Solver
family. The coefficient formulas are in ``csrc/core/plans/dpm_sde.h``.

=====================  ===============================================================  ======  ==========
name                   method                                                           native  noise/step
=====================  ===============================================================  ======  ==========
``sde_dpm_solver``     SDE-DPM-Solver-1 / 2M (noise form), ``order`` 1 or 2             ε̂       1
``sde_dpmpp``          SDE-DPM-Solver++-1 / 2M / 3M (data form), ``order`` 1, 2 or 3    x̂       1
=====================  ===============================================================  ======  ==========

``sde_dpmpp`` of order 2 is :class:`~diffcore.solvers.DPMSolverPP2MSDE` with η = 1 (same update); of
order 1 it is the DDPM posterior step (book Eq. (4.4.8)), drawing noise at every step including one
that ends above σ = 0. Its third-order update weights the second divided difference as diffusers'
``DPMSolverMultistepScheduler`` does (``algorithm_type="sde-dpmsolver++"``, ``solver_order=3``); that
weight does not vanish as h → 0, so the update is first order in the step (docs/diffusers.md,
"sde-dpmsolver++ of order 3").
"""
from __future__ import annotations

from .base import _check_order
from .exponential import _solver_type
from .sde import _Stochastic

__all__ = ["SDEDPMSolver", "SDEDPMSolverPP"]


class SDEDPMSolver(_Stochastic):
    """SDE-DPM-Solver (Lu et al. 2022b, App. C, noise form): per step from s to t, h = λ_t − λ_s,

        x_t = (α_t/α_s) x_s − 2σ_t (e^h − 1) ε̂_s − 2σ_t h φ₂(h) D1 + σ_t √(e^{2h} − 1) z,

    with D1 = (ε̂_s − ε̂_{s'})/r, r = h'/h, the previous step's output (order 2, from the second step on);
    ``solver_type="midpoint"`` writes the D1 term as ``−σ_t (e^h − 1) D1``. A step to σ = 0 would need
    ρ → 0 of a noise-form update: the last σ must be positive (diffusers requires
    ``final_sigmas_type="sigma_min"``).

    Args:
        order: 1 or 2 (``lower_order_final`` lowers the last steps below 15 steps, as the multistep
            solvers do).
        solver_type: ``"midpoint"`` (default) or ``"heun"``.
    """

    native = "eps"
    method = "sde_dpm_solver_multi"
    multistep = True
    order = 1  # strong order of the stochastic scheme
    _allowed = (1, 2)
    _base = "sde_dpm_solver"

    def __init__(self, order: int = 2, solver_type: str = "midpoint", **common):
        self.name = self._base
        super().__init__(**common)
        self.max_order = _check_order(order, self._allowed)
        self.history = self.max_order - 1
        self.variant = _solver_type(solver_type)

    def _core_options(self) -> dict:
        return {"variant": self.variant}

    def _repr_options(self) -> dict:
        return {"order": self.max_order, "solver_type": "midpoint" if self.variant == 0 else "heun"}


class SDEDPMSolverPP(SDEDPMSolver):
    """SDE-DPM-Solver++ (Lu et al. 2022b, App. C, data form): per step

        x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂_s + α_t H φ₂(−H) D1 + α_t (H φ₃(−H) − 1) D2
              + σ_t √(1 − e^{−2h}) z,    H = 2h,

    with D1 (≈ h x̂'), D2 (≈ h² x̂''/2) the divided differences of the multistep DPM-Solver++
    (:class:`~diffcore.solvers.DPMSolverPPMulti`, weight 1); ``solver_type="midpoint"`` writes the
    second-order term as ``α_t (1 − e^{−2h}) D1/2``. The D2 weight is diffusers' (see the module
    docstring). Supports dynamic thresholding of x̂.

    Args:
        order: 1, 2 or 3.
        solver_type: ``"midpoint"`` (default) or ``"heun"``.
    """

    native = "x0"
    method = "sde_dpmpp_multi"
    supports_thresholding = True
    _allowed = (1, 2, 3)
    _base = "sde_dpmpp"
