"""Deterministic PF-ODE solvers (book Ch. 9) and stochastic samplers (:mod:`.sde`) behind one
plan / execute engine (:mod:`.base`).

``diffcore.solvers.get(name, **options)`` returns an immutable solver; ``available()`` lists the
names. Each solver's order, native prediction and equation reference are in its docstring.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from .adams import DEIS, IPNDM
from .adaptive import DPMAdaptive
from .adaptive_ps import DPMAdaptivePS
from .dopri5 import Dopri5
from .base import Plan, Solver, State
from .protocol import AdaptiveSolver, GridPlan, GridSolver, Kind, Sampler, Student
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
    "AnnealedLangevin", "EDMChurn", "DPMSolverV3", "DPMSolverPP2MSDE", "DPMSolverPP3MSDE", "STOCHASTIC", "ADAPTIVE",
    "Sampler", "Kind", "GridSolver", "GridPlan", "AdaptiveSolver", "Student",
    "DPMSolverMulti", "SDEDPMSolver", "SDEDPMSolverPP", "GridSinglestep", "SDEGridSinglestep",
]

# name → (class, fixed options): the class declares the solver's kind and capabilities (.protocol)
_REGISTRY: Dict[str, Tuple[type, dict]] = {
    "euler": (Euler, {}),
    "heun": (Heun, {}),
    "midpoint": (Midpoint, {}),
    "ralston": (Ralston, {}),
    "rk4": (RK4, {}),
    "ddim": (DDIM, {}),
    "dpm_solver_1": (DPMSolver, {"order": 1}),
    "dpm_solver_2": (DPMSolver, {"order": 2}),
    "dpm_solver_3": (DPMSolver, {"order": 3}),
    "dpm_solver_fast": (DPMSolverFast, {}),
    "dpmpp_1": (DPMSolverPPMulti, {"order": 1}),
    "dpmpp_2s": (DPMSolverPPSingle, {"order": 2}),
    "dpmpp_2m": (DPMSolverPPMulti, {"order": 2}),
    "dpmpp_3m": (DPMSolverPPMulti, {"order": 3}),
    "dpm_solver_2m": (DPMSolverMulti, {"order": 2}),
    "dpm_solver_3m": (DPMSolverMulti, {"order": 3}),
    "dpm_solver_singlestep": (GridSinglestep, {"data": False}),
    "dpmpp_singlestep": (GridSinglestep, {"data": True}),
    "sde_dpmpp_singlestep": (SDEGridSinglestep, {}),
    "sde_dpm_solver": (SDEDPMSolver, {}),
    "sde_dpmpp": (SDEDPMSolverPP, {}),
    "deis_1": (DEIS, {"order": 1}),
    "deis_2": (DEIS, {"order": 2}),
    "deis_3": (DEIS, {"order": 3}),
    "unipc_1": (UniPC, {"order": 1}),
    "unipc_2": (UniPC, {"order": 2}),
    "unipc_3": (UniPC, {"order": 3}),
    "ipndm": (IPNDM, {}),
    "dpm_adaptive": (DPMAdaptive, {}),
    "dpm_adaptive_ps": (DPMAdaptivePS, {}),
    "dopri5": (Dopri5, {}),
    "dpm_solver_v3": (DPMSolverV3, {}),
    "ddpm": (DDPM, {}),
    "ddim_eta": (DDIMEta, {}),
    "euler_ancestral": (EulerAncestral, {}),
    "euler_maruyama": (EulerMaruyama, {}),
    "pc": (PC, {}),
    "langevin": (Langevin, {}),
    "annealed_langevin": (AnnealedLangevin, {}),
    "edm_churn": (EDMChurn, {}),
    "dpmpp_2m_sde": (DPMSolverPP2MSDE, {}),
    "dpmpp_3m_sde": (DPMSolverPP3MSDE, {}),
}

#: Names of the stochastic samplers (their plans draw noise): the solvers whose class declares it.
STOCHASTIC = tuple(n for n, (cls, _) in _REGISTRY.items() if cls.stochastic)
#: Names of the adaptive solvers (they choose their steps while they run).
ADAPTIVE = tuple(n for n, (cls, _) in _REGISTRY.items() if cls.kind is Kind.ADAPTIVE)


def available() -> List[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name, **options):
    """The solver called ``name`` with ``options`` (a :class:`Solver` instance passes through when no
    options are given). Raises ``ValueError`` for unknown names, ``TypeError`` for unknown options."""
    if isinstance(name, (GridSolver, AdaptiveSolver)):
        if options:
            raise ValueError("options: cannot be given with a solver instance")
        return name
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"solver: unknown solver {name!r}; available: {available()}")
    cls, fixed = _REGISTRY[name.lower()]
    if fixed.keys() & options.keys():  # as a call with a repeated keyword would say
        raise TypeError(f"{name}: got multiple values for argument {sorted(fixed.keys() & options.keys())[0]!r}")
    return cls(**fixed, **options)
