"""Exponential Adams–Bashforth solvers on noise predictions (book §9.3; Zhang & Chen 2023, DEIS).

* ``deis_1..3`` — DEIS tAB with k model outputs: ε̂ is extrapolated by the Lagrange polynomial
  (degree k − 1) in t (``basis="logrho"``: in log ρ) through the last k outputs and integrated exactly
  against dρ; the integrals
  ``C_j = α_t ∫ ℓ_j dρ`` are 16-node Gauss–Legendre sums in ρ computed in the float64 core
  (``csrc/core/plans/adams.h``). Order k.
* ``ipndm`` — improved PNDM: fixed Adams–Bashforth weights (up to 4 outputs) on ε̂ in (ρ, x/α);
  order 2 on non-uniform grids (the fixed weights are only exact for uniform steps).
"""
from __future__ import annotations

from .base import Solver, _check_order


class DEIS(Solver):
    """tAB-DEIS with ``order`` model outputs (polynomial degree order − 1), global order ``order``.
    ``order=1`` is DDIM. Options: ``basis`` — the variable of the Lagrange polynomial through the past
    ε̂: ``"t"`` (time, Zhang & Chen 2023's tAB) or ``"logrho"`` (log ρ, ρ = σ/α: the "logrho" DEIS of
    diffusers' ``DEISMultistepScheduler``, §4 of the paper); ``lower_order_final`` as for the other
    multistep solvers."""

    native = "eps"
    method = "deis"
    multistep = True

    def __init__(self, order: int = 3, basis: str = "t", **common):
        super().__init__(**common)
        self.max_order = self.order = _check_order(order, (1, 2, 3, 4))
        if basis not in ("t", "logrho"):
            raise ValueError(f"basis: expected 't' or 'logrho', got {basis!r}")
        self.basis = basis
        self.history = order - 1
        self.name = f"deis_{order}"

    def _core_options(self) -> dict:
        return {"log_rho": self.basis == "logrho"}

    def _repr_options(self) -> dict:
        return {"basis": self.basis} if self.basis != "t" else {}


class IPNDM(Solver):
    """iPNDM (k-diffusion's ``sample_ipndm``, Zhang & Chen 2023): Adams–Bashforth weights of order
    min(4, outputs so far) applied to ε̂ in (ρ = σ/α, x/α). Global order 2 on non-uniform grids."""

    name = "ipndm"
    native = "eps"
    method = "ipndm"
    multistep = True
    order = 2

    def __init__(self, max_order: int = 4, **common):
        super().__init__(**common)
        self.max_order = _check_order(max_order, (1, 2, 3, 4))
        self.history = self.max_order - 1
        self.order = min(2, self.max_order)
