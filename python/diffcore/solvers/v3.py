"""DPM-Solver-v3 (book §9.7, Eq. (9.7.1)–(9.7.17); update formulas of the reference code of
Zheng et al. 2023; docs/errata.md S7).

With empirical model statistics ``(ℓ, s, b)`` (:class:`diffcore.EMS`) and, on their λ grid, the
cumulative integrals ``L = ∫ℓ``, ``S = ∫s``, ``B = ∫e^{−S} b``, the transformed model at a node ``n``
relative to the step's anchor ``s`` is

    f_n = (σ_n ε̂_n − ℓ_n ⊙ x_n)/α_n,      g_n = e^{S_s − S_n} f_n − e^{S_s}(B_n − B_s),

and an order-``p`` multistep step ``s → t`` with history nodes ``n_0 = s, n_1, …, n_{p−1}`` is (book §9.7)

    x_t = (α_t/α_s) e^{L_s − L_t} x_s − α_t e^{L_s − L_t} [ E_0 g_s + Σ_{k≥1} E_k ĝ^{(k)} + ∫_s^t e^{Φ} e^{S_s}(B − B_s) ],
    E_k = ∫_s^t e^{Φ(λ)} (λ − λ_s)^k / k! dλ,     Φ(λ) = (L + S)(λ) − (L + S)(λ_s)

(the spec's ``α_t e^{−L_t−S_s}(I_t − I_s)`` is ``α_t e^{L_s−L_t} E_0``; integrating relative to the
anchor keeps every exponential bounded). Derivatives ``ĝ^{(k)}``: ``predictor="full"`` solves the
Vandermonde system through the history nodes (Eq. 9.7.14; formal order ``p``), ``"pseudo"`` uses the
Newton divided difference over the first ``k + 1`` nodes only (cheaper extrapolation, lower formal
order). The optional corrector (UniC-style) recomputes ``x_t`` from ``x_s`` with the nodes
``(s, t, older …)`` once ε̂ at the new point is known — it is needed for the next step anyway, so no
extra model call — with order ``p + 1`` for the pseudo predictor and ``p`` for the full one, and keeps
``N = σ ε̂ − ℓ x`` of the new point fixed (so the stored ``f_t`` stays valid).

Quadrature. All integrals use the EMS grid: the trapezoid rule with the Euler–Maclaurin end
correction ``−h²/12 (F′(b) − F′(a))`` (error ``O(h⁴)``), the integrands' derivatives in closed form
from ``(ℓ, s, b)`` at the nodes and ``ℓ′, s′, b′`` by fourth-order differences. Sampling times are
snapped to the nearest grid point (``round(K(λ − λ_T)/(λ_end − λ_T))``).

Execution. Everything is linear in ``(x_s, f_{n_j})`` plus a constant, so the plan stores per step and
per dimension the weights of the state and of each ring slot and runs a step as the foundation's
fused linear-combination kernel with per-feature factors (:func:`diffcore._ops.lincomb`, ``feat``):
one call converts the model output to ``f`` into the ring, one forms the predictor (one more for the
corrector), plus an add of the constant term when ``b ≠ 0``. No host synchronization.
"""
from __future__ import annotations

import math
from typing import List

import numpy as np
import torch

from .. import _ops
from .._device import as_device
from ..ems import EMS, grid_derivative
from ..param import conversion_coefs, resolve_prediction
from ..schedules import Schedule
from .base import _check_bool, _check_order, _grid
from .protocol import GridPlan, GridSolver

__all__ = ["DPMSolverV3", "V3Plan", "V3State", "deriv_matrix", "step_integrals"]


def _cumint(y: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    """Cumulative ∫ from the first node: trapezoid with the Euler–Maclaurin end correction."""
    c = np.zeros_like(y)
    c[1:] = np.cumsum(0.5 * h * (y[1:] + y[:-1]), axis=0)
    return c - (h * h / 12.0) * (dy - dy[:1])


def _segint(F: np.ndarray, dF: np.ndarray, h: float) -> np.ndarray:
    """∫ over a segment of nodes (first axis): corrected trapezoid."""
    return h * (F.sum(0) - 0.5 * (F[0] + F[-1])) - (h * h / 12.0) * (dF[-1] - dF[0])


def deriv_matrix(delta: List[float], predictor: str) -> np.ndarray:
    """``M[k, j]``: the derivative estimates ``ĝ^{(k)} = Σ_j M[k, j] g_{n_j}`` from the node offsets
    ``δ_j = λ_{n_j} − λ_s`` (``δ_0 = 0``); row 0 is ``g_s`` itself. ``"full"``: Vandermonde solve
    ``Σ_k δ_j^k ĝ^{(k)}/k! = g_{n_j} − g_s`` (Eq. 9.7.14); ``"pseudo"``: ``k!·g[λ_{n_0},…,λ_{n_k}]``."""
    q = len(delta)
    M = np.zeros((q, q))
    M[0, 0] = 1.0
    if q == 1:
        return M
    d = np.asarray(delta, dtype=np.float64)
    if predictor == "full":
        V = np.array([[d[j] ** k / math.factorial(k) for k in range(1, q)] for j in range(1, q)])
        Vi = np.linalg.inv(V)
        M[1:, 1:] = Vi
        M[1:, 0] = -Vi.sum(1)
    else:
        for k in range(1, q):
            for j in range(k + 1):
                M[k, j] = math.factorial(k) / np.prod([d[j] - d[m] for m in range(k + 1) if m != j])
    return M


class _Tables:
    """Global cumulative integrals of the statistics (float64 numpy, ``[K + 1, N]``)."""

    def __init__(self, ems: EMS):
        h = ems.dlam
        K1 = ems.K + 1
        self.h = h
        self.lam = ems.lam.numpy()
        self.l = ems.l.reshape(K1, -1).numpy()
        self.s = ems.s.reshape(K1, -1).numpy()
        self.b = ems.b.reshape(K1, -1).numpy()
        grad = lambda y: grid_derivative(y, h)  # noqa: E731
        self.L = _cumint(self.l, grad(self.l), h)
        self.S = _cumint(self.s, grad(self.s), h)
        eb = np.exp(-self.S) * self.b
        self.has_b = bool(np.any(self.b != 0))
        self.B = _cumint(eb, np.exp(-self.S) * (grad(self.b) - self.s * self.b), h) if self.has_b else None

    def beta(self, a: int, j) -> np.ndarray:
        """``e^{S_a}(B_j − B_a)``."""
        return np.exp(self.S[a]) * (self.B[j] - self.B[a])


def step_integrals(tab: _Tables, a: int, b: int, kmax: int):
    """``(E_0 … E_{kmax}, ∫ e^Φ e^{S_a}(B − B_a))`` over the grid segment ``[a, b]`` (``a < b``)."""
    seg = slice(a, b + 1)
    phi = (tab.L[seg] + tab.S[seg]) - (tab.L[a] + tab.S[a])
    ephi = np.exp(phi)
    dphi = tab.l[seg] + tab.s[seg]
    dl = (tab.lam[seg] - tab.lam[a])[:, None]
    E = []
    for k in range(kmax + 1):
        pk = dl ** k / math.factorial(k)
        dpk = dl ** (k - 1) / math.factorial(k - 1) if k > 0 else 0.0
        E.append(_segint(ephi * pk, ephi * (dphi * pk + dpk), tab.h))
    Eb = None
    if tab.has_b:
        beta = tab.beta(a, seg)
        dbeta = np.exp(tab.S[a] - tab.S[seg]) * tab.b[seg]
        Eb = _segint(ephi * beta, ephi * (dphi * beta + dbeta), tab.h)
    return E, Eb


class DPMSolverV3(GridSolver):
    """DPM-Solver-v3, multistep, one model call per step (module docstring; Zheng et al. 2023).

    Args:
        statistics: the :class:`~diffcore.EMS` of the model and schedule (required).
        order: predictor order ``p`` ∈ {1, 2, 3, 4} (the spec recommends 3 unconditional, 2 guided).
        predictor: ``"full"`` (Vandermonde derivatives, formal order ``p``) or ``"pseudo"``.
        corrector: apply the UniC-style corrector (off is better for many steps).
        lower_order_final: lower the order of the last steps when there are fewer than 15.

    The sampling grid must lie inside the statistics' λ range; its times are snapped to the grid, and
    two times snapping to the same grid point raise ``ValueError`` (use a finer grid, larger ``K``).
    """

    name = "dpm_solver_v3"
    native = "eps"
    multistep = True
    stages = 1
    supports_thresholding = False
    supports_picard = False  # per-dimension steps: no row of the plan / execute engine
    per_sample_grid = False  # the statistics are shared by the batch

    def __init__(self, statistics: EMS = None, order: int = 3, predictor: str = "full", corrector: bool = True,
                 lower_order_final: bool = True):
        if not isinstance(statistics, EMS):
            raise TypeError("statistics: DPM-Solver-v3 needs a diffcore.EMS (EMS.estimate, EMS.from_oracle, "
                            f"EMS.load or EMS.constant), got {type(statistics).__name__}")
        self.statistics = statistics
        self.max_order = self.order = _check_order(order, (1, 2, 3, 4))
        if predictor not in ("full", "pseudo"):
            raise ValueError(f"predictor: expected 'full' or 'pseudo', got {predictor!r}")
        self.predictor = predictor
        self.corrector = _check_bool("corrector", corrector)
        self.lower_order_final = _check_bool("lower_order_final", lower_order_final)
        self.history = order + (1 if corrector else 0)

    def __repr__(self) -> str:
        return (f"dpm_solver_v3(order={self.order}, predictor={self.predictor!r}, corrector={self.corrector}, "
                f"statistics={self.statistics!r})")

    def _orders(self, M: int) -> List[int]:
        out = []
        for i in range(M):
            o = min(self.order, i + 1)
            if self.lower_order_final and M < 15:
                o = min(o, M - i)
            out.append(o)
        return out

    def plan(self, schedule: Schedule, timesteps, device=None, dtype=None, prediction=None) -> "V3Plan":
        """Snap the grid to the statistics and compute every per-dimension weight (float64).
        ``prediction``: as :meth:`Solver.plan` (``None``: the schedule's own type)."""
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a diffcore Schedule, got {type(schedule).__name__}")
        return V3Plan(self, schedule, timesteps, device, dtype, resolve_prediction(prediction, schedule))


class V3Plan(GridPlan):
    """The weights of one DPM-Solver-v3 run (the plan protocol of :class:`diffcore.solvers.Plan`)."""

    noise_draws = 0
    supports_picard = False
    per_sample_grid = False

    def refusal(self, capability: str) -> str:
        if capability == "supports_picard":
            return ("parallel: dpm_solver_v3's per-dimension steps are not available to the Picard sampler; use a "
                    "multistep solver of diffcore.solvers (e.g. dpmpp_3m, unipc_3)")
        return super().refusal(capability)

    def __init__(self, solver: DPMSolverV3, schedule: Schedule, timesteps, device, dtype, prediction: str):
        ems = solver.statistics
        ems.check_schedule(schedule)
        self.solver, self.schedule, self.prediction = solver, schedule, prediction
        self.device = as_device(device)
        self.dtype = dtype if dtype is not None else torch.float32
        given = _grid(timesteps)
        if given.shape[0] != 1:
            raise ValueError("timesteps: DPM-Solver-v3 shares its statistics across the batch; per-sample grids "
                             "are not supported")
        lam = schedule.lam(given[0])
        h = ems.dlam
        lo, hi = float(ems.lam[0]) - 0.5 * h, float(ems.lam[-1]) + 0.5 * h
        if not bool(torch.isfinite(lam).all()) or float(lam.min()) < lo or float(lam.max()) > hi:
            raise ValueError(f"timesteps: λ from {float(lam[0]):.6g} to {float(lam[-1]):.6g} leaves the statistics' "
                             f"range [{float(ems.lam[0]):.6g}, {float(ems.lam[-1]):.6g}] (σ = 0 ends are not "
                             "available to DPM-Solver-v3)")
        idx = ems.index(lam)
        if not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError(f"timesteps: consecutive times snap to the same statistics grid point (K = {ems.K}); "
                             "use fewer steps, or statistics on a finer grid, and λ increasing (sampling)")
        self.index = idx
        lam_g = ems.lam[idx]
        t = schedule.t_of_lam(lam_g)
        if int(idx[0]) == 0:
            t[0] = float(given[0, 0]) if abs(float(lam[0] - lam_g[0])) < 1e-9 else t[0]
        self.timesteps = t[None].contiguous()
        M = idx.numel() - 1
        self.num_steps = self.nfe = M
        self.orders = solver._orders(M)
        self._mtime = t.to(self.dtype)
        self._build(ems, schedule, idx.tolist(), prediction)

    # -- coefficient tables --------------------------------------------------------------------------
    def _build(self, ems: EMS, schedule: Schedule, idx: List[int], prediction: str) -> None:
        solver = self.solver
        tab = _Tables(ems)
        R = max(1, solver.history)
        N = tab.l.shape[1]
        M = len(idx) - 1
        v = schedule.eval(self.timesteps[0])
        alpha, sigma = v.alpha.numpy(), v.sigma.numpy()
        cx, cm = conversion_coefs(prediction, "eps", v, schedule)
        cx, cm = cx.numpy(), cm.numpy()
        conv = np.zeros((M + 1, 2, N))
        for i in range(M + 1):  # f = (σ ε̂ − ℓ x)/α with ε̂ = c_x x + c_m m
            conv[i, 0] = (sigma[i] * cx[i] - tab.l[idx[i]]) / alpha[i]
            conv[i, 1] = sigma[i] * cm[i] / alpha[i]
        pred = np.zeros((M, 1 + R, N))
        corr = np.zeros((M, 1 + R, N))
        pconst = np.zeros((M, N)) if tab.has_b else None
        cconst = np.zeros((M, N)) if tab.has_b else None
        self.corrected = [False] * M
        for i in range(M):
            p = self.orders[i]
            nodes = [i - j for j in range(p)]                    # anchors i, i−1, …
            self._row(tab, idx, alpha, i, i + 1, nodes, R, pred[i], None if pconst is None else pconst[i])
            if solver.corrector and i < M - 1:
                pc = p + 1 if solver.predictor == "pseudo" else p
                pc = min(pc, i + 2)
                if pc > 1:
                    cnodes = [i, i + 1] + [i - j for j in range(1, pc - 1)]
                    self._row(tab, idx, alpha, i, i + 1, cnodes, R, corr[i], None if cconst is None else cconst[i])
                    self.corrected[i] = True
        fdt = torch.float64 if self.dtype == torch.float64 else torch.float32
        put = lambda a: None if a is None else torch.from_numpy(a).to(self.device, fdt).contiguous()  # noqa: E731
        self._conv, self._pred, self._corr = put(conv), put(pred), put(corr)
        self._pconst, self._cconst = put(pconst), put(cconst)
        self._ones2 = torch.ones(1, 2, dtype=fdt, device=self.device)
        self._ones = torch.ones(1, 1 + R, dtype=fdt, device=self.device)
        self._R = R

    def _row(self, tab: _Tables, idx, alpha, i, it, nodes, R, out, const) -> None:
        """Weights of ``x_{it} = A x_i + Σ_j w_j f_{nodes[j]} (+ const)`` into ``out`` [1 + R, N]."""
        a, b = idx[i], idx[it]
        q = len(nodes)
        E, Eb = step_integrals(tab, a, b, q - 1)
        pref = -alpha[it] * np.exp(tab.L[a] - tab.L[b])
        out[0] = alpha[it] / alpha[i] * np.exp(tab.L[a] - tab.L[b])
        delta = [float(tab.lam[idx[n]] - tab.lam[a]) for n in nodes]
        Mx = deriv_matrix(delta, self.solver.predictor)
        for j, n in enumerate(nodes):
            omega = pref * sum(Mx[k, j] * E[k] for k in range(q))
            gn = idx[n]
            out[1 + n % R] += omega * np.exp(tab.S[a] - tab.S[gn])
            if const is not None and gn != a:
                const -= omega * tab.beta(a, gn)
        if const is not None:
            const += pref * Eb

    # -- the plan protocol ---------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return 1

    def stages(self, i: int) -> range:
        return range(1)

    def model_time(self, i: int, s: int = 0) -> torch.Tensor:
        """Model time of step ``i`` (``[1]``, the plan's dtype, on its device)."""
        return self._mtime[i:i + 1].to(self.device)

    def init_state(self, x: torch.Tensor, noise=None) -> "V3State":
        return V3State(self, x)  # deterministic: ``noise`` is accepted for the protocol and unused

    def step(self, state: "V3State", i: int, s: int, out: torch.Tensor) -> None:
        """Consume the model output at step ``i``'s anchor: store ``f_i``, correct the previous step,
        predict the next state."""
        if s != 0 or not 0 <= i < self.num_steps:
            raise IndexError(f"step: (i, s) = ({i}, {s}) outside the plan's {self.num_steps} one-stage steps")
        B = state.x.shape[0]
        flat = lambda a: a.reshape(B, -1)  # noqa: E731
        m = out.to(state.x.dtype)
        if not m.is_contiguous():
            m = m.contiguous()
        slot = i % self._R
        _ops.lincomb(flat(state.x), self._ones2, flat(m)[None], feat=self._conv[i][None],
                     out=flat(state.ring[slot]))
        if i > 0 and self.corrected[i - 1]:
            _ops.lincomb(flat(state.y), self._ones, state.ring.reshape(self._R, B, -1),
                         feat=self._corr[i - 1][None], out=flat(state.x))
            if self._cconst is not None:
                flat(state.x).add_(self._cconst[i - 1])
        target = state.y if self.solver.corrector else state.x
        _ops.lincomb(flat(state.x), self._ones, state.ring.reshape(self._R, B, -1), feat=self._pred[i][None],
                     out=flat(target))
        if self._pconst is not None:
            flat(target).add_(self._pconst[i])
        if target is state.y:
            state.x, state.y = state.y, state.x


class V3State:
    """Run state of a :class:`V3Plan`: the sample, the previous anchor (for the corrector) and the ring
    of transformed model values ``f``."""

    def __init__(self, plan: V3Plan, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise TypeError("x: expected a floating tensor [B, *shape]")
        if tuple(x.shape[1:]) != plan.solver.statistics.shape:
            raise ValueError(f"x: per-sample shape {tuple(x.shape[1:])} does not match the statistics' "
                             f"{plan.solver.statistics.shape}")
        if as_device(x.device, "x") != plan.device:
            raise ValueError(f"x: on {x.device}, the plan's weights are on {plan.device} (plan(..., device=))")
        self.x = x.detach().clone().contiguous()
        self.y = torch.empty_like(self.x)
        self.ring = torch.zeros((plan._R,) + tuple(x.shape), dtype=x.dtype, device=x.device)

    def model_input(self, s: int = 0) -> torch.Tensor:
        return self.x
