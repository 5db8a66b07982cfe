"""Exponential integrators in log-SNR time λ = log(α/σ) (book §9.2–9.5; ``[B …]`` below cites the book).

=====================  ==================================================  ========  ===============
name                   method                                              native    order
=====================  ==================================================  ========  ===============
``ddim``               DDIM, η = 0: x_t = α_t x̂ + σ_t ε̂  [B Eq. (9.2.2)]  x̂         1
``dpm_solver_1..3``    DPM-Solver, single-step  [B Eq. (9.4.8)–(9.4.11)]    ε̂         1, 2, 3
``dpm_solver_fast``    DPM-Solver orders 3/2/1 mixed for an NFE budget      ε̂         3 (mixed)
``dpmpp_1``            DPM-Solver++(1) = DDIM, data form                    x̂         1
``dpmpp_2s``           DPM-Solver++(2S)  [B Alg. 6]                         x̂         2
``dpmpp_2m``           DPM-Solver++(2M)  [B Alg. 7]                         x̂         2
``dpmpp_3m``           DPM-Solver++(3M), weight ``w`` (default 1)          x̂         3 if w = 2, else 2
``dpm_solver_2m``      multistep DPM-Solver(2M)  [Lu et al. 2022b, App. B]  ε̂         2
``dpm_solver_3m``      multistep DPM-Solver(3M), weight ``w`` (default 1)  ε̂         3 if w = 2, else 2
=====================  ==================================================  ========  ===============

The coefficient formulas live in ``csrc/core/plans/exponential.h``.
"""
from __future__ import annotations

from typing import List, Sequence

from .. import _row
from .base import SOLVER_TYPES, Solver, _check_order


def _solver_type(v) -> int:
    key = v.lower() if isinstance(v, str) else None
    if key not in SOLVER_TYPES:
        raise ValueError(f"solver_type: expected 'midpoint' (variant A, = 'dpmsolver') or 'heun' (variant B, "
                         f"= 'taylor'), got {v!r}")
    return SOLVER_TYPES[key]


def _fraction(name: str, v) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
        raise ValueError(f"{name}: expected a number in (0, 1], got {v!r}")
    return float(v)


class DDIM(Solver):
    """DDIM with η = 0 (book Prop. 9.2.1, Eq. (9.2.2)): ``x_t = α_t x̂_s + σ_t ε̂_s``,
    first order, one model call per step; = DPM-Solver-1 = DPM-Solver++(1) = DEIS with one output.
    Supports dynamic thresholding of x̂ (:mod:`diffcore.thresholding`)."""

    name = "ddim"
    native = "x0"
    method = "ddim"
    supports_thresholding = True


class DPMSolver(Solver):
    """Single-step DPM-Solver of order 1, 2 or 3 on noise predictions (book §9.4,
    Eq. (9.4.8)–(9.4.11), Alg. 5).

    Args:
        order: 1, 2 or 3 (model calls per step).
        solver_type: ``"midpoint"`` (variant A, the reference "dpmsolver" form; book Alg. 5 for
            r₁ = ½) or ``"heun"`` (variant B, the Taylor form of book Eq. (9.4.11)).
        r1: stage position (fraction of the step in λ) of DPM-Solver-2; default ½. With r₁ = 1,
            variant A is exactly Heun's method in (ρ = σ/α, x/α) (EDM's deterministic sampler).
        r1_3, r2_3: stage positions of DPM-Solver-3; default ⅓, ⅔.
    """

    native = "eps"
    method = "dpm_solver"

    def __init__(self, order: int = 2, solver_type: str = "midpoint", r1: float = 0.5, r1_3: float = 1 / 3,
                 r2_3: float = 2 / 3, **common):
        super().__init__(**common)
        self.max_order = self.order = _check_order(order, (1, 2, 3))
        self.name = f"{self._prefix}_{order}"
        self.variant = _solver_type(solver_type)
        self.r1, self.r1_3, self.r2_3 = _fraction("r1", r1), _fraction("r1_3", r1_3), _fraction("r2_3", r2_3)
        if not self.r1_3 < self.r2_3:
            raise ValueError(f"r1_3, r2_3: expected r1_3 < r2_3, got {r1_3} and {r2_3}")
        self.stages = order
        self.history = order - 1
        self.second_buffer = order > 1

    _prefix = "dpm_solver"

    def _core_options(self) -> dict:
        return {"variant": self.variant}

    def _stage_lams(self, order: int) -> Sequence[float]:
        return {1: (), 2: (self.r1,), 3: (self.r1_3, self.r2_3)}[order]

    def _repr_options(self) -> dict:
        return {"solver_type": "midpoint" if self.variant == 0 else "heun"}


class DPMSolverPPSingle(DPMSolver):
    """Single-step DPM-Solver++ (2S, and 3S as ``order=3``) on data predictions (book §9.5.3,
    Alg. 6; 3S from Lu et al. 2022b). Supports dynamic thresholding (:mod:`diffcore.thresholding`). Options as
    :class:`DPMSolver`."""

    native = "x0"
    method = "dpmpp_single"
    supports_thresholding = True
    _prefix = "dpmpp"

    def __init__(self, order: int = 2, **kw):
        super().__init__(order=order, **kw)
        self.name = {1: "dpmpp_1s", 2: "dpmpp_2s", 3: "dpmpp_3s"}[order]


def fast_orders(nfe: int, order: int = 3) -> List[int]:
    """DPM-Solver-fast's order allocation for an NFE budget (Lu et al. 2022 §3.4)."""
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"steps: expected a positive NFE budget, got {nfe!r}")
    if order == 3:
        m = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (m - 2) + [2, 1]
        if nfe % 3 == 1:
            return [3] * (m - 1) + [1]
        return [3] * (m - 1) + [2]
    if order == 2:
        return [2] * (nfe // 2) + ([1] if nfe % 2 else [])
    return [1] * nfe


class DPMSolverFast(DPMSolver):
    """DPM-Solver-fast (Lu et al. 2022, §3.4): single-step DPM-Solver with orders 3, 2
    and 1 mixed so that a grid of ``M`` steps costs exactly ``M`` model calls (orders from
    :func:`fast_orders`; a final step to σ = 0 takes one stage). The outer steps are the given grid's
    points at cumulative-order indices.

    The stages sit at the standard λ-fractions ⅓, ⅔ (order 3) and ½ (order 2) of each outer step. The
    reference code instead reads them off the fine grid; on a λ-uniform grid that is the same thing,
    but on other grids it puts the second stage away from ⅔, where variant A's third-order update is
    inconsistent (second order; we measured errors ×10–1000 on rectified flow near α = 0), so the
    mathematics wins here."""

    name = "dpm_solver_fast"

    def __init__(self, order: int = 3, solver_type: str = "midpoint", **common):
        super().__init__(order=order, solver_type=solver_type, **common)
        self.name = "dpm_solver_fast"

    def _steps(self, schedule, grid_t, grid, final_zero):
        nfe = grid_t.shape[1] - 1
        orders = fast_orders(nfe, self.max_order)
        if final_zero and orders[-1] != 1:
            orders = orders[:-1] + [orders[-1] - 1, 1]  # a step to σ = 0 takes one stage
        idx = [0]
        for p in orders:
            idx.append(idx[-1] + p)
        outer = grid_t[:, idx].contiguous()
        return outer, orders, self._stage_times(schedule, outer, grid[:, idx, _row.NODE_LAM], orders)


class DPMSolverPPMulti(Solver):
    """Multistep DPM-Solver++ 2M / 3M on data predictions (book §9.5.4, Alg. 7).

    Args:
        order: 1 (= DDIM), 2 (2M) or 3 (3M).
        solver_type: ``"midpoint"`` (variant A, the default; book's D^sim) or ``"heun"`` (variant B).
        w: weight of 3M's second divided difference. ``w = 2`` is the consistent third-order weighting
            (exact for x̂ quadratic in λ; global order 3). ``w = 1`` (the default) reproduces the
            DPM-Solver reference code and diffusers bit for bit and is only second order (docs/errata.md S17),
            but in ``bench/bench_error_nfe.py`` it had the lower error in 13 of 16 (schedule family,
            NFE ∈ {5, 10, 15, 20}) cells — every family at NFE 10 and 15 (e.g. VP-linear NFE 10:
            0.154 vs 0.183 RMS; EDM NFE 15: 0.091 vs 0.170) — the range 3M is used in; w = 2 wins at
            NFE 50 on three of four families and asymptotically. Use ``w=2`` for many steps and
            accuracy studies.
        lower_order_final: lower the order of the last steps when there are fewer than 15 (the
            reference rule); a final step to σ = 0 always uses order 1.
        thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding of x̂
            (:mod:`diffcore.thresholding`).
    """

    native = "x0"
    method = "dpmpp_multi"
    multistep = True
    supports_thresholding = True

    def __init__(self, order: int = 2, solver_type: str = "midpoint", w: float = 1.0, **common):
        super().__init__(**common)
        self.max_order = _check_order(order, (1, 2, 3))
        self.variant = _solver_type(solver_type)
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise TypeError(f"w: expected a number, got {w!r}")
        self.w = float(w)
        self.order = 2 if (order == 3 and self.w != 2.0) else order
        self.history = order - 1
        self.name = {1: "dpmpp_1", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order]

    def _core_options(self) -> dict:
        return {"variant": self.variant, "w": self.w}

    def _repr_options(self) -> dict:
        d = {"solver_type": "midpoint" if self.variant == 0 else "heun"}
        if self.max_order == 3:
            d["w"] = self.w
        return d


class DPMSolverMulti(DPMSolverPPMulti):
    """Multistep DPM-Solver 2M / 3M on noise predictions (Lu et al. 2022b, "DPM-Solver++", §4 and App. B,
    the multistep form of the noise-prediction DPM-Solver of Lu et al. 2022; book §9.4 for the one-step
    Taylor update it extends): the noise-form update of book Eq. (9.4.8)–(9.4.11),

        x_t = (α_t/α_s) x_s − σ_t (e^h − 1) ε̂_s − σ_t h φ₂(h) D1 − σ_t h φ₃(h) w·D2,

    with the divided differences D1 ≈ h ε̂', D2 ≈ h² ε̂''/2 of the last two or three outputs (as
    :class:`DPMSolverPPMulti` on ε̂); ``solver_type="midpoint"`` writes the second-order term as
    ``−σ_t (e^h − 1) D1/2``. Options as :class:`DPMSolverPPMulti` (``w = 1`` is diffusers'
    ``algorithm_type="dpmsolver"`` and second order; ``w = 2`` is third order). No thresholding (the
    update reads ε̂; threshold x̂ before converting it)."""

    native = "eps"
    method = "dpm_solver_multi"
    supports_thresholding = False

    def __init__(self, order: int = 2, **kw):
        super().__init__(order=order, **kw)
        self.name = {1: "dpm_solver_1", 2: "dpm_solver_2m", 3: "dpm_solver_3m"}[order]
