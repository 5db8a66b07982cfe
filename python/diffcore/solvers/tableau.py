"""Explicit Runge–Kutta methods as data: a Butcher tableau (Butcher 1964; Hairer, Nørsett & Wanner,
*Solving ODEs I*, §II.1; the encoding of diffrax's ``ButcherTableau``).

A method with ``S`` stages advancing ``dy/dτ = f(τ, y)`` by ``h`` from ``(τ₀, y₀)`` is

    k_i = f(τ₀ + c_i h, y₀ + h Σ_{j<i} a_ij k_j),   i = 0 … S−1
    y₁  = y₀ + h Σ_i b_i k_i

so a tableau is ``c`` (S nodes, ``c_0 = 0``), ``a`` (the strictly lower triangle, row ``i`` holds
``a_i0 … a_i,i−1``; row 0 is empty), ``b`` (S weights) and, for an embedded pair, ``b_err``: the
weights of the error estimate ``h Σ b_err,i k_i`` (the difference of the two solutions, summing to 0).
Validated at construction: ``Σ_j a_ij = c_i`` (each stage is a consistent approximation at its own
node; Hairer I, Eq. (1.9)) and ``Σ b = 1`` (consistency, order ≥ 1). The higher order conditions are
properties of a particular method and are checked in the tests (rooted trees, Hairer I, §II.2).

The fixed-grid plans (:mod:`.runge_kutta`) hand a tableau to the one compiled generator
``csrc/core/plans/runge_kutta.h``; the adaptive :class:`~.dopri5.Dopri5` reads ``DOPRI5``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

__all__ = ["ButcherTableau", "EULER", "HEUN", "MIDPOINT", "RALSTON", "RALSTON3", "RK4", "DOPRI5", "TABLEAUS"]

_TOL = 1e-12  # the tableaus below are ratios of small integers: their sums are exact to a few ulps


def _row(v, name: str, n: int) -> Tuple[float, ...]:
    try:
        r = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a sequence of {n} numbers, got {v!r}") from None
    if len(r) != n:
        raise ValueError(f"{name}: expected {n} entries, got {len(r)}")
    if not all(math.isfinite(x) for x in r):
        raise ValueError(f"{name}: expected finite entries, got {r}")
    return r


class ButcherTableau:
    """An explicit Runge–Kutta method (module docstring).

    Args:
        c: the S stage nodes, ``c[0] == 0``, each in ``[0, 1]`` (a stage outside the step would call
            the model outside the grid's interval).
        a: S rows, row ``i`` with the ``i`` weights ``a_i0 … a_i,i−1`` (row 0 empty).
        b: the S solution weights, summing to 1.
        order: the method's order (checked against the order conditions in the tests).
        b_err: optional S weights of the embedded error estimate (summing to 0).
        name: for ``repr`` and messages.
    """

    def __init__(self, c: Sequence[float], a: Sequence[Sequence[float]], b: Sequence[float], order: int,
                 b_err: Optional[Sequence[float]] = None, name: str = "tableau"):
        if not isinstance(c, (list, tuple)) or not c:
            raise ValueError(f"c: expected a non-empty sequence of stage nodes, got {c!r}")
        S = len(c)
        self.c = _row(c, "c", S)
        if self.c[0] != 0.0:
            raise ValueError(f"c: expected c[0] = 0 (the first stage is at the step's start), got {self.c[0]}")
        if not all(0.0 <= x <= 1.0 for x in self.c):
            raise ValueError(f"c: expected nodes in [0, 1], got {self.c}")
        if not isinstance(a, (list, tuple)) or len(a) != S:
            raise ValueError(f"a: expected {S} rows (one per stage, row i with i entries), got {a!r}")
        self.a = tuple(_row(a[i], f"a[{i}]", i) for i in range(S))
        for i in range(1, S):
            if abs(sum(self.a[i]) - self.c[i]) > _TOL:
                raise ValueError(f"a: expected row sums equal to c (a stage consistent at its node); row {i} sums to "
                                 f"{sum(self.a[i])!r}, c[{i}] = {self.c[i]!r}")
        self.b = _row(b, "b", S)
        if abs(sum(self.b) - 1.0) > _TOL:
            raise ValueError(f"b: expected weights summing to 1 (consistency), got sum {sum(self.b)!r}")
        self.b_err = None if b_err is None else _row(b_err, "b_err", S)
        if self.b_err is not None and abs(sum(self.b_err)) > _TOL:
            raise ValueError(f"b_err: expected error weights summing to 0 (a difference of two consistent "
                             f"solutions), got sum {sum(self.b_err)!r}")
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= S:
            raise ValueError(f"order: expected an int in [1, {S}] (an explicit method has order <= stages), got "
                             f"{order!r}")
        self.order = order
        self.name = str(name)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is evaluated at the new solution (its ``a`` row is ``b``)."""
        S = self.stages
        return S > 1 and self.c[-1] == 1.0 and self.a[-1] == self.b[:-1] and self.b[-1] == 0.0

    def core_options(self) -> dict:
        """The encoding the compiled generator reads: ``rk_c``, ``rk_a`` (the S×S lower triangle row
        by row, zeros above it) and ``rk_b``."""
        S = self.stages
        a = [0.0] * (S * S)
        for i, row in enumerate(self.a):
            a[i * S:i * S + len(row)] = row
        return {"rk_c": list(self.c), "rk_a": a, "rk_b": list(self.b)}

    def __repr__(self) -> str:
        return f"ButcherTableau({self.name}, stages={self.stages}, order={self.order})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, ButcherTableau) and (self.c, self.a, self.b, self.b_err, self.order)
                == (other.c, other.a, other.b, other.b_err, other.order))

    def __hash__(self) -> int:
        return hash((self.c, self.a, self.b, self.b_err, self.order))


EULER = ButcherTableau([0.0], [[]], [1.0], 1, name="euler")
#: Heun's method / explicit trapezoid (Karras et al. 2022, Alg. 1 without churn).
HEUN = ButcherTableau([0.0, 1.0], [[], [1.0]], [0.5, 0.5], 2, name="heun")
MIDPOINT = ButcherTableau([0.0, 0.5], [[], [0.5]], [0.0, 1.0], 2, name="midpoint")
#: Ralston's second-order method (minimum error bound among two-stage order-2 methods; Ralston 1962).
RALSTON = ButcherTableau([0.0, 2 / 3], [[], [2 / 3]], [0.25, 0.75], 2, name="ralston")
#: Ralston's third-order method: no stage at c = 1, so a step to σ = 0 never calls the model there.
RALSTON3 = ButcherTableau([0.0, 0.5, 0.75], [[], [0.5], [0.0, 0.75]], [2 / 9, 1 / 3, 4 / 9], 3, name="ralston3")
#: The classical fourth-order method (Kutta 1901; Hairer I, Table 1.2).
RK4 = ButcherTableau([0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
                     [1 / 6, 1 / 3, 1 / 3, 1 / 6], 4, name="rk4")
#: Dormand & Prince 1980, the 5(4) pair with local extrapolation (Hairer I, Table 5.2; FSAL). ``b_err``
#: is b₅ − b₄ with b₄ = (5179/57600, 0, 7571/16695, 393/640, −92097/339200, 187/2100, 1/40).
DOPRI5 = ButcherTableau(
    [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0],
    [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
     [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
     [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
     [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0], 5,
    b_err=[71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40], name="dopri5")

TABLEAUS = {t.name: t for t in (EULER, HEUN, MIDPOINT, RALSTON, RALSTON3, RK4, DOPRI5)}
