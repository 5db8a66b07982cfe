"""Deterministic PF-ODE solvers (solvers.md §6) behind one plan / execute engine (:mod:`.base`).

``diffcore.solvers.get(name, **options)`` returns an immutable solver; ``available()`` lists the
names. Each solver's order, native prediction and equation reference are in its docstring.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from .adams import DEIS, IPNDM
from .adaptive import DPMAdaptive
from .base import Plan, Solver, State
from .exponential import DDIM, DPMSolver, DPMSolverFast, DPMSolverPPMulti, DPMSolverPPSingle, fast_orders
from .onestep import ddim_step, heun_step
from .runge_kutta import Euler, Heun, natural_variable
from .unipc import UniPC

__all__ = [
    "get", "available", "Solver", "Plan", "State", "ddim_step", "heun_step", "fast_orders", "natural_variable",
    "DDIM", "DPMSolver", "DPMSolverFast", "DPMSolverPPSingle", "DPMSolverPPMulti", "DEIS", "IPNDM", "UniPC",
    "Euler", "Heun", "DPMAdaptive",
]

_REGISTRY: Dict[str, Callable[..., object]] = {
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "dpm_solver_1": lambda **kw: DPMSolver(order=1, **kw),
    "dpm_solver_2": lambda **kw: DPMSolver(order=2, **kw),
    "dpm_solver_3": lambda **kw: DPMSolver(order=3, **kw),
    "dpm_solver_fast": DPMSolverFast,
    "dpmpp_1": lambda **kw: DPMSolverPPMulti(order=1, **kw),
    "dpmpp_2s": lambda **kw: DPMSolverPPSingle(order=2, **kw),
    "dpmpp_2m": lambda **kw: DPMSolverPPMulti(order=2, **kw),
    "dpmpp_3m": lambda **kw: DPMSolverPPMulti(order=3, **kw),
    "deis_1": lambda **kw: DEIS(order=1, **kw),
    "deis_2": lambda **kw: DEIS(order=2, **kw),
    "deis_3": lambda **kw: DEIS(order=3, **kw),
    "unipc_1": lambda **kw: UniPC(order=1, **kw),
    "unipc_2": lambda **kw: UniPC(order=2, **kw),
    "unipc_3": lambda **kw: UniPC(order=3, **kw),
    "ipndm": IPNDM,
    "dpm_adaptive": DPMAdaptive,
}


def available() -> List[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name, **options):
    """The solver called ``name`` with ``options`` (a :class:`Solver` instance passes through when no
    options are given). Raises ``ValueError`` for unknown names, ``TypeError`` for unknown options."""
    if isinstance(name, (Solver, DPMAdaptive)):
        if options:
            raise ValueError("options: cannot be given with a solver instance")
        return name
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"solver: unknown solver {name!r}; available: {available()}")
    return _REGISTRY[name.lower()](**options)
