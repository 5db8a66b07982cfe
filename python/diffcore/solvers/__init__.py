"""Deterministic PF-ODE solvers (book Ch. 9) and stochastic samplers (:mod:`.sde`) behind one
plan / execute engine (:mod:`.base`).

``diffcore.solvers.get(name, **options)`` returns an immutable solver; ``available()`` lists the
names. Each solver's order, native prediction and equation reference are in its docstring.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from .adams import DEIS, IPNDM
from .adaptive import DPMAdaptive
from .adaptive_ps import DPMAdaptivePS
from .dopri5 import Dopri5
from .base import Plan, Solver, State
from .exponential import DDIM, DPMSolver, DPMSolverFast, DPMSolverMulti, DPMSolverPPMulti, DPMSolverPPSingle, fast_orders
from .grid_singlestep import GridSinglestep, SDEGridSinglestep
from .onestep import ddim_step, heun_step
from .runge_kutta import RK4, Euler, Heun, Midpoint, Ralston, RungeKutta, natural_variable
from .tableau import ButcherTableau
from .sde import (DDPM, PC, AnnealedLangevin, DDIMEta, DPMSolverPP2MSDE, DPMSolverPP3MSDE, EDMChurn, EulerAncestral,
                  EulerMaruyama, Langevin)
from .sde_dpm import SDEDPMSolver, SDEDPMSolverPP
from .unipc import UniPC
from .v3 import DPMSolverV3

__all__ = [
    "get", "available", "Solver", "Plan", "State", "ddim_step", "heun_step", "fast_orders", "natural_variable",
    "DDIM", "DPMSolver", "DPMSolverFast", "DPMSolverPPSingle", "DPMSolverPPMulti", "DEIS", "IPNDM", "UniPC",
    "Euler", "Heun", "Midpoint", "Ralston", "RK4", "RungeKutta", "ButcherTableau", "DPMAdaptive", "DPMAdaptivePS",
    "Dopri5", "DDPM", "DDIMEta", "EulerAncestral", "EulerMaruyama", "PC", "Langevin",
    "AnnealedLangevin", "EDMChurn", "DPMSolverV3", "DPMSolverPP2MSDE", "DPMSolverPP3MSDE", "STOCHASTIC",
    "DPMSolverMulti", "SDEDPMSolver", "SDEDPMSolverPP", "GridSinglestep", "SDEGridSinglestep",
]

_REGISTRY: Dict[str, Callable[..., object]] = {
    "euler": Euler,
    "heun": Heun,
    "midpoint": Midpoint,
    "ralston": Ralston,
    "rk4": RK4,
    "ddim": DDIM,
    "dpm_solver_1": lambda **kw: DPMSolver(order=1, **kw),
    "dpm_solver_2": lambda **kw: DPMSolver(order=2, **kw),
    "dpm_solver_3": lambda **kw: DPMSolver(order=3, **kw),
    "dpm_solver_fast": DPMSolverFast,
    "dpmpp_1": lambda **kw: DPMSolverPPMulti(order=1, **kw),
    "dpmpp_2s": lambda **kw: DPMSolverPPSingle(order=2, **kw),
    "dpmpp_2m": lambda **kw: DPMSolverPPMulti(order=2, **kw),
    "dpmpp_3m": lambda **kw: DPMSolverPPMulti(order=3, **kw),
    "dpm_solver_2m": lambda **kw: DPMSolverMulti(order=2, **kw),
    "dpm_solver_3m": lambda **kw: DPMSolverMulti(order=3, **kw),
    "dpm_solver_singlestep": lambda **kw: GridSinglestep(data=False, **kw),
    "dpmpp_singlestep": lambda **kw: GridSinglestep(data=True, **kw),
    "sde_dpmpp_singlestep": SDEGridSinglestep,
    "sde_dpm_solver": SDEDPMSolver,
    "sde_dpmpp": SDEDPMSolverPP,
    "deis_1": lambda **kw: DEIS(order=1, **kw),
    "deis_2": lambda **kw: DEIS(order=2, **kw),
    "deis_3": lambda **kw: DEIS(order=3, **kw),
    "unipc_1": lambda **kw: UniPC(order=1, **kw),
    "unipc_2": lambda **kw: UniPC(order=2, **kw),
    "unipc_3": lambda **kw: UniPC(order=3, **kw),
    "ipndm": IPNDM,
    "dpm_adaptive": DPMAdaptive,
    "dpm_adaptive_ps": DPMAdaptivePS,
    "dopri5": Dopri5,
    "dpm_solver_v3": DPMSolverV3,
    "ddpm": DDPM,
    "ddim_eta": DDIMEta,
    "euler_ancestral": EulerAncestral,
    "euler_maruyama": EulerMaruyama,
    "pc": PC,
    "langevin": Langevin,
    "annealed_langevin": AnnealedLangevin,
    "edm_churn": EDMChurn,
    "dpmpp_2m_sde": DPMSolverPP2MSDE,
    "dpmpp_3m_sde": DPMSolverPP3MSDE,
}

#: Names of the stochastic samplers (their plans draw noise).
STOCHASTIC = ("ddpm", "ddim_eta", "euler_ancestral", "euler_maruyama", "pc", "langevin", "annealed_langevin",
              "edm_churn", "dpmpp_2m_sde", "dpmpp_3m_sde", "sde_dpm_solver", "sde_dpmpp", "sde_dpmpp_singlestep")


def available() -> List[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name, **options):
    """The solver called ``name`` with ``options`` (a :class:`Solver` instance passes through when no
    options are given). Raises ``ValueError`` for unknown names, ``TypeError`` for unknown options."""
    if isinstance(name, (Solver, DPMAdaptive, DPMAdaptivePS, DPMSolverV3, Dopri5)):
        if options:
            raise ValueError("options: cannot be given with a solver instance")
        return name
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"solver: unknown solver {name!r}; available: {available()}")
    return _REGISTRY[name.lower()](**options)
