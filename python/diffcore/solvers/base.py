"""The plan / execute engine shared by every deterministic solver (docs/design.md, "Plan / execute protocol").

A :class:`Solver` is immutable: its options and its method structure (stages per step, history size,
native prediction, per-step orders). :meth:`Solver.plan` turns a schedule and a time grid into a
:class:`Plan`: every step's coefficients, computed once in float64 by the compiled core
(``csrc/core/plans/*.h``), stored on the sample's device as a table
``[B or 1, steps, stages, NC]`` (the row of :mod:`diffcore._row`) (one row per sample when the grid is per-sample). A plan holds no
run state either; :meth:`Plan.init_state` makes the per-run :class:`State` (the sample, a second
buffer for stage inputs or the last corrected state, and the history ring), and :meth:`Plan.step`
applies one row in one fused kernel call (``csrc/core/solver_step.h``): it converts the model output
to the solver's native prediction, stores it in the history ring and updates the state, with no host
synchronization. Under autograd, ``torch.func`` transforms or ``torch.compile`` tracing the same row is
applied by an eager-torch reference (:meth:`Plan.step_reference`).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import torch

from torch.utils.dlpack import to_dlpack as _to_dlpack

from .. import _ops, _row
from .._device import as_device
from ..param import _check_v, _is_vp, resolve_prediction
from ..schedules import Schedule
from ..noise import DOMAIN_STEP, Noise, default_seed
from ..thresholding import dynamic_threshold
from .protocol import GridPlan, GridSolver

__all__ = ["Solver", "Plan", "State", "SOLVER_TYPES"]

#: Accepted spellings of the two second-order variants (book §9.4.3 and docs/errata.md S3; §9.5.3):
#: A = midpoint / the reference "dpmsolver" form, B = heun / the reference "taylor" form.
SOLVER_TYPES = {"midpoint": 0, "dpmsolver": 0, "a": 0, "heun": 1, "taylor": 1, "b": 1}

_NK = _ops.NoiseKind
#: The fused step's noise source of each kind of :class:`~diffcore.noise.Noise`.
_NOISE_KIND = {"philox": int(_NK.philox), "tensor": int(_NK.tensor), "generator": int(_NK.tensor),
               "provider": int(_NK.tensor), "brownian": int(_NK.brownian)}

_QUAD_NODES = 16  # Gauss–Legendre nodes per step for DEIS (≥ 16 reach float64 accuracy on these integrands)


def _check_bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected a bool, got {v!r}")
    return v


def _check_order(order, allowed: Sequence[int]) -> int:
    if not isinstance(order, int) or isinstance(order, bool) or order not in allowed:
        raise ValueError(f"order: expected one of {list(allowed)}, got {order!r}")
    return order


class Solver(GridSolver):
    """Base class of the deterministic PF-ODE solvers (book Ch. 9).

    Subclasses set the class attributes and, where needed, override :meth:`_orders`,
    :meth:`_stage_lams` and :meth:`_core_options`.

    Attributes:
        name: registry name.
        order: the global order of a correct implementation with these options.
        native: the prediction the update is written in (``"eps"``, ``"x0"`` or ``"velocity"``).
        method: compiled plan generator (registered by name in ``csrc/bind/plan_bind.cpp``).
        stages: model evaluations per step (single-step methods) — 1 for multistep ones.
        history: ring slots of past native outputs the update reads (K).
        second_buffer: whether the state needs a second buffer (stage input / last corrected state).
        multistep: warm-up and ``lower_order_final`` apply.
        max_order: order of the full-history (or full-stage) update.
    """

    name = "solver"
    order = 1
    native = "eps"
    method = "ddim"
    stages = 1
    history = 0
    second_buffer = False
    multistep = False
    max_order = 1
    supports_thresholding = False

    def __init__(self, *, lower_order_final: bool = True, thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0):
        self.lower_order_final = _check_bool("lower_order_final", lower_order_final)
        self.thresholding = _check_bool("thresholding", thresholding)
        if thresholding and not self.supports_thresholding:
            raise ValueError(f"thresholding: {self.name} works on noise predictions; dynamic thresholding is "
                             "defined for data-prediction solvers (ddim, dpmpp_*, unipc with predict_x0=True)")
        if not (isinstance(dynamic_thresholding_ratio, (int, float)) and 0 < dynamic_thresholding_ratio <= 1):
            raise ValueError(f"dynamic_thresholding_ratio: expected a number in (0, 1], got {dynamic_thresholding_ratio!r}")
        if not (isinstance(sample_max_value, (int, float)) and sample_max_value > 0):
            raise ValueError(f"sample_max_value: expected a positive number, got {sample_max_value!r}")
        self.dynamic_thresholding_ratio = float(dynamic_thresholding_ratio)
        self.sample_max_value = float(sample_max_value)

    # -- method structure --------------------------------------------------------------------------
    def _core_options(self) -> dict:
        return {}

    def _orders(self, M: int, final_zero: bool, first: int = 0) -> List[int]:
        """Order of each step: warm-up (step i of a multistep method has the outputs of steps
        ``first … i``; nodes before ``first`` sit at α = 0, λ = −∞, and carry no derivative
        information), ``lower_order_final`` (the reference's rule, applied below 15 steps) and order 1
        for a final step to σ = 0, where higher-order λ-terms are infinite (book §9.5;
        docs/design.md, "Coefficient plans")."""
        p = self.max_order
        orders = []
        for i in range(M):
            o = p
            if self.multistep:
                o = min(o, max(1, i - first + 1))
                if self.lower_order_final and M < 15:
                    o = min(o, M - i)
            orders.append(o)
        if final_zero:
            orders[-1] = 1
        return orders

    def _steps(self, schedule: Schedule, grid_t: torch.Tensor, grid: torch.Tensor, final_zero: bool):
        """The steps of a plan: ``(grid times [B, M+1], per-step orders, stage times [B, M, 2] or None)``.
        Stage times sit at fractions :meth:`_stage_lams` of each step in λ."""
        M = grid_t.shape[1] - 1
        first = int((grid[:, :-1, _row.NODE_ALPHA] == 0).sum(1).max())  # leading nodes at α = 0
        orders = self._orders(M, final_zero, first)
        if self.stages == 1:
            return grid_t, orders, None
        return grid_t, orders, self._stage_times(schedule, grid_t, grid[..., _row.NODE_LAM], orders)

    def _stage_times(self, schedule: Schedule, grid_t: torch.Tensor, lam: torch.Tensor, orders) -> torch.Tensor:
        """Times of the intermediate stages ``[B, M, 2]`` at the fractions :meth:`_stage_lams` in λ."""
        stage_t = grid_t[:, :-1, None].repeat(1, 1, 2)  # unused stages: any valid time
        for i, p in enumerate(orders):
            for j, r in enumerate(self._stage_lams(p)):
                if r == 1.0:
                    stage_t[:, i, j] = grid_t[:, i + 1]
                else:
                    stage_t[:, i, j] = schedule.t_of_lam(lam[:, i] + r * (lam[:, i + 1] - lam[:, i]))
        return stage_t.contiguous()

    def _stage_lams(self, order: int) -> Sequence[float]:
        """Fractions r of the step in λ at which the intermediate stages of an order-``order`` step sit."""
        return ()

    def _extra(self, schedule: Schedule, grid_t: torch.Tensor, grid: torch.Tensor):
        """Per-node values ``[B, M + 1, 2]`` some plan generators read (``PlanIO::ex``), or None."""
        return None

    def _hooks(self, plan: "Plan"):
        """``{(i, s): fn(plan, state, i, s, out)}`` for rows the Python layer applies itself
        (data-dependent coefficients, e.g. the Langevin corrector's step-size rule), or None."""
        return None

    # -- planning ----------------------------------------------------------------------------------
    def plan(self, schedule: Schedule, timesteps, device=None, dtype=None, prediction=None) -> "Plan":
        """Compute every coefficient of a run once (float64, compiled core).

        Args:
            schedule: the noise schedule (:mod:`diffcore.schedules`).
            timesteps: ``M + 1`` strictly monotone times in the schedule's units (decreasing to sample,
                increasing to invert), or a ``[B, M + 1]`` tensor of per-sample grids.
            device: where the coefficient table lives (the sample's device); default CPU.
            dtype: dtype of the model times handed to the model (default float32).
            prediction: what the model returns (``"eps"``, ``"x0"``, ``"score"``, ``"velocity"``,
                ``"v"`` or an alias); the conversion to this solver's native prediction is fused into
                every step. ``None`` (default): the schedule's own type, ``"velocity"`` on the
                flow-matching schedules and ``"eps"`` on the diffusion ones.
        """
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a diffcore Schedule, got {type(schedule).__name__}")
        return Plan(self, schedule, timesteps, device, dtype, resolve_prediction(prediction, schedule))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._repr_options().items())
        return f"{self.name}({opts})"

    def _repr_options(self) -> dict:
        return {}


def _grid(timesteps) -> torch.Tensor:
    t = timesteps if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps, dtype=torch.float64)
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"timesteps: expected real times, got dtype {t.dtype}")
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[1] < 2:
        raise ValueError(f"timesteps: expected M + 1 >= 2 times, shape (M+1,) or (B, M+1), got {tuple(timesteps.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("timesteps: expected finite times")
    d = t[:, 1:] - t[:, :-1]
    dec, inc = bool((d < 0).all()), bool((d > 0).all())
    if not (dec or inc):
        raise ValueError("timesteps: expected a strictly monotone grid (decreasing to sample, increasing to invert)")
    return t.contiguous()


def _nodes(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """Node records (t, α, σ, λ, α', σ') float64 at times ``t`` (:mod:`diffcore._row`); λ = +∞ where σ = 0."""
    v = schedule.eval(t)
    a, s = v.alpha.to(torch.float64), v.sigma.to(torch.float64)
    lam = torch.where(s > 0, torch.log(a) - torch.log(s), torch.full_like(s, math.inf))
    return _row.node_records(t, a, s, lam, v.dalpha.to(torch.float64), v.dsigma.to(torch.float64))


class Plan(GridPlan):
    """Coefficients of one solver on one schedule and grid (see the module docstring).

    Attributes:
        num_steps: number of steps M.
        nfe: model evaluations of a run.
        timesteps: the float64 grid, ``[B or 1, M + 1]`` on the CPU.
        coefs: float64 table ``[B or 1, M, stages, NC]`` on ``device`` (rows of :mod:`diffcore._row`).
        orders: the order of each step.
    """

    def __init__(self, solver: Solver, schedule: Schedule, timesteps, device, dtype, prediction: str):
        self.solver, self.schedule, self.prediction = solver, schedule, prediction
        self._thresholding = solver.thresholding
        grid_t, grid, final_zero = self._validate(timesteps, device, dtype)
        grid_t, grid, stage, quad, extra = self._nodes(grid_t, grid, final_zero)
        coefs, mtime, prelude = self._build(grid, stage, quad, extra)
        self._place(coefs, mtime, prelude)

    def _validate(self, timesteps, device, dtype):
        """Check the options, the grid and the prediction against the solver; the grid's node records."""
        solver, schedule = self.solver, self.schedule
        self.device = as_device(device)
        self.dtype = dtype if dtype is not None else torch.float32
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
        if "v" in (self.prediction, solver.native):
            _check_v(_is_vp(schedule, None, None), "src" if self.prediction == "v" else "dst", schedule)
        grid_t = _grid(timesteps)
        grid = _nodes(schedule, grid_t)                       # [Bc, M+1, F]
        sig = grid[..., _row.NODE_SIGMA]
        if bool((sig < 0).any()) or not bool(torch.isfinite(grid[..., [_row.NODE_T, _row.NODE_ALPHA, _row.NODE_SIGMA]]).all()):
            raise ValueError(f"timesteps: outside the range of {schedule!r}")
        zero_end = sig[:, -1] == 0
        if bool(zero_end.any()) and not bool(zero_end.all()):
            raise ValueError("timesteps: per-sample grids must all end at σ = 0 or all end above it")
        if bool((sig[:, :-1] == 0).any()):
            raise ValueError("timesteps: only the last time may have σ = 0 (a step from zero noise cannot be "
                             "taken; start inversion at t > 0)")
        alpha0 = grid[:, :-1, _row.NODE_ALPHA] == 0  # α = 0 (λ = −∞): rectified flow / VP-cosine at their noisy end
        if bool(alpha0.any()) and (solver.native == "eps" or (solver.stages > 1 and solver.method != "rk")):
            raise ValueError(
                f"timesteps: {solver.name} cannot start where α = 0 (λ = −∞, e.g. t = 1 of rectified flow): "
                + ("noise-prediction updates need ρ = σ/α" if solver.native == "eps" else
                   "its stages sit at fractions of an infinite λ-step")
                + "; start slightly inside, e.g. t_start=0.999, or use a data-prediction multistep solver")
        return grid_t, grid, bool(zero_end.all())

    def _nodes(self, grid_t, grid, final_zero):
        """Every schedule evaluation the plan builder reads: the (possibly re-chosen) grid, the intermediate
        stage nodes, DEIS's quadrature nodes and the per-node values of some stochastic methods."""
        solver, schedule = self.solver, self.schedule
        given = grid_t
        grid_t, orders, stage_t = solver._steps(schedule, grid_t, grid, final_zero)
        if grid_t is not given:
            grid = _nodes(schedule, grid_t)
        Bc, M = grid_t.shape[0], grid_t.shape[1] - 1
        self.timesteps = grid_t
        self.num_steps = M
        self.orders = orders
        stage = None
        if stage_t is not None:
            stage = _nodes(schedule, stage_t.reshape(Bc, -1)).reshape(Bc, M, -1, grid.shape[-1]).contiguous()
        quad = None
        if solver.method == "deis":
            # Gauss–Legendre in ρ = σ/α over each step; the nodes' times need the schedule's inverse
            xi, wi = np.polynomial.legendre.leggauss(_QUAD_NODES)
            xi, wi = torch.from_numpy(xi), torch.from_numpy(wi)
            rho = grid[..., _row.NODE_SIGMA] / grid[..., _row.NODE_ALPHA]
            r0, r1 = rho[:, :-1, None], rho[:, 1:, None]
            rq = 0.5 * (r0 + r1) + 0.5 * (r1 - r0) * xi
            # the abscissa of the Lagrange basis: t, or log ρ (DEIS's log-ρ polynomial, solvers/adams.py)
            tq = torch.log(rq) if getattr(solver, "basis", "t") == "logrho" else schedule.t_of_lam(-torch.log(rq))
            quad = torch.stack([tq, (0.5 * (r1 - r0) * wi).expand_as(tq)], -1).contiguous()
        extra = solver._extra(schedule, grid_t, grid)
        return grid_t, grid, stage, quad, extra

    def _build(self, grid, stage, quad, extra):
        """The whole table in the compiled core: every row (the model-output conversion included), the
        stage records with their noise-draw numbers, the model times and the prelude row."""
        solver = self.solver
        Bc, M, S, K = grid.shape[0], self.num_steps, solver.stages, solver.history
        coefs = torch.zeros(Bc, M, S, _row.ncoef(K), dtype=torch.float64)
        mtime = torch.zeros(Bc, M, S, dtype=torch.float64)
        prelude = torch.zeros(Bc, _row.ncoef(K), dtype=torch.float64)
        layout, nstages, has_prelude = _ops.plan_build(
            solver.method, solver._core_options(), grid, stage, quad, self.orders, K, S, coefs, mtime, extra,
            _row.PREDICTION[self.prediction], _row.PREDICTION[solver.native], prelude)
        self.layout = layout
        self.nstages = nstages
        flat = _row.draws(layout)
        self.draws = [flat[i * S:(i + 1) * S] for i in range(M)]
        self.noise_draws = sum(d >= 0 for d in flat) + has_prelude
        # every sample's tree spans its own grid, in unit time (docs/design.md, "Coefficient plans")
        self.noise_span = (0.0, 1.0)
        self.nfe = int(sum(nstages))
        return coefs, mtime, (prelude if has_prelude else None)

    def _place(self, coefs, mtime, prelude):
        """Move the table to the sample's device and index it per (step, stage)."""
        S, M = self.solver.stages, self.num_steps
        self.prelude = None if prelude is None else prelude.to(self.device)
        self.coefs = coefs.to(self.device)
        self.model_times = mtime.to(self.device, self.dtype)
        self._rows = [[self.coefs[:, i, s] for s in range(S)] for i in range(M)]
        self._times = [[self.model_times[:, i, s] for s in range(S)] for i in range(M)]
        hooks = self.solver._hooks(self)
        self._hooks = None if not hooks else [[hooks.get((i, s)) for s in range(S)] for i in range(M)]

    # -- protocol ----------------------------------------------------------------------------------
    per_sample_grid = True

    @property
    def supports_picard(self) -> bool:  # a Python hook (pc's corrector) is no fixed linear combination
        return self._hooks is None

    def refusal(self, capability: str) -> str:
        if capability == "supports_picard":
            return (f"solver: {self.solver.name} has data-dependent coefficients (a Python hook per step); the "
                    "Picard sampler needs steps that are fixed linear combinations")
        return super().refusal(capability)

    @property
    def batch(self) -> int:
        """Rows of the plan: 1 for a shared grid, B for per-sample grids."""
        return self.coefs.shape[0]

    def stages(self, i: int) -> range:
        """The stages (model evaluations) of step ``i``."""
        return range(self.nstages[i])

    def model_time(self, i: int, s: int) -> torch.Tensor:
        """Times of the model evaluation of step ``i``, stage ``s``: ``[B or 1]`` in ``dtype`` on ``device``."""
        return self._times[i][s]

    def history_slot(self, j: int) -> int:
        """Ring slot that holds the native output of step ``j`` (multistep methods)."""
        K = self.solver.history
        return j % K if K else -1

    def init_state(self, x: torch.Tensor, noise: Optional[Noise] = None) -> "State":
        """A fresh run state starting from ``x`` (copied; ``x`` is never written). ``noise``: the
        :class:`~diffcore.noise.Noise` source of a stochastic plan (default: Philox under a seed drawn
        from torch's global generator)."""
        return State(self, x, noise)

    def step(self, state: "State", i: int, s: int, out: torch.Tensor) -> None:
        """Apply stage ``s`` of step ``i`` given the model output ``out`` at
        ``state.model_input(s)`` and ``model_time(i, s)``: one fused kernel call."""
        st = state._stepper
        # hot path: a plain tensor of the state's dtype, nothing to differentiate or trace — the C++
        # side validates shape, device and layout, so Python does no more than hand it over
        if (st is not None and type(out) is torch.Tensor and out.dtype is state.x.dtype and not self._thresholding
                and self._hooks is None and not (out.requires_grad and torch.is_grad_enabled())
                and _ops.untraced()):
            if not out.is_contiguous() and not (out.numel() and out[0].is_contiguous()):
                out = out.contiguous()
            z = state._z_capsule(self.draws[i][s]) if state._host_noise else None
            st.step(i, s, _to_dlpack(out), False, _ops.get_num_threads(), state._stream(), z)
            return
        self._step_general(state, i, s, out)

    def _step_general(self, state: "State", i: int, s: int, out) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out: expected a torch tensor, got {type(out).__name__}")
        x = state.x
        if out.shape != x.shape:
            raise ValueError(f"out: expected the model output of shape {tuple(x.shape)}, got {tuple(out.shape)}")
        if out.device != x.device or not out.is_floating_point():
            raise TypeError(f"out: expected a floating tensor on {x.device}, got {out.dtype} on {out.device}")
        if out.dtype != x.dtype:  # e.g. a float64 oracle or a bf16 autocast model on a float32 state
            out = out.to(x.dtype)
        hook = self._hooks[i][s] if self._hooks is not None else None
        if hook is not None:
            return hook(self, state, i, s, out)
        raw = False
        if self._thresholding:
            out = self._threshold(state, i, s, out)
            raw = True
        if state._stepper is None or not _ops.fast_path_ok(out):
            return self.step_reference(state, i, s, out, raw)
        if out.numel() and not out[0].is_contiguous():
            out = out.contiguous()
        z = state._z_capsule(self.draws[i][s]) if state._host_noise else None
        state._stepper.step(i, s, _to_dlpack(out), raw, _ops.get_num_threads(), state._stream(), z)

    def _threshold(self, state: "State", i: int, s: int, out: torch.Tensor) -> torch.Tensor:
        row = self._rows[i][s]
        u = state.model_input(s)
        w = _row.Weights(row, self.solver.history, (row.shape[0],) + (1,) * (u.dim() - 1))
        m = w.cu.to(u.dtype) * u + w.co.to(u.dtype) * out
        return dynamic_threshold(m, self.solver.dynamic_thresholding_ratio, self.solver.sample_max_value)

    def step_reference(self, state: "State", i: int, s: int, out: torch.Tensor, raw: bool = False) -> None:
        """Eager-torch version of :meth:`step` (differentiable; the tests' reference for the kernel)."""
        hook = self._hooks[i][s] if self._hooks is not None else None
        if hook is not None:
            return hook(self, state, i, s, out)
        row = self._rows[i][s]
        rec = _row.stage(self.layout, i * self.solver.stages + s)
        K = self.solver.history
        x, y = state.x, state.y
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        c = row.to(compute)
        w = _row.Weights(c, K, (c.shape[0],) + (1,) * (x.dim() - 1))
        xv = x.to(compute)
        yv = y.to(compute) if y is not None else torch.zeros_like(xv)
        ov = out.to(compute)
        m = ov if raw else w.cu * (yv if rec.input == 1 else xv) + w.co * ov
        ring = [state.ring[k].to(compute) for k in range(K)] if K else []
        accx = w.ax * xv + w.ay * yv
        accy = w.bx * xv + w.by * yv
        for k in range(K):
            accx = accx + w.ar[k] * ring[k]
            accy = accy + w.br[k] * ring[k]
        accx = accx + w.am * m
        accy = accy + w.bm * m
        if rec.draw >= 0:
            z = state.noise_value(rec.draw, row).to(compute)
            accx = accx + w.zx * z
            accy = accy + w.zy * z
        if rec.slot >= 0:
            state._set_ring(rec.slot, m.to(x.dtype))
        if rec.write_x:
            state._set("x", accx.to(x.dtype))
        if rec.write_y:
            state._set("y", accy.to(x.dtype))


class State:
    """Per-run buffers of a plan: ``x`` (the sample), ``y`` (stage input or last corrected state)
    and the history ``ring`` ``[K, B, *S]`` of native model outputs; and, for a stochastic plan, its
    noise source. One state per concurrent run."""

    def __init__(self, plan: Plan, x: torch.Tensor, noise: Optional[Noise] = None):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        if x.dim() < 1:
            raise ValueError("x: expected a batch dimension")
        if as_device(x.device, "x") != plan.device:
            raise ValueError(f"x: the plan lives on {plan.device} but x is on {x.device}; pass device= to plan()")
        top = _ops.MAX_DIMS - (1 if plan.solver.history else 0)  # the ring [K, *x.shape] adds one
        if x.dim() > top:
            raise ValueError(f"x: expected at most {top} dimensions (batch included) for {plan.solver.name}, got "
                             f"{x.dim()}: the compiled step takes tensors of up to {_ops.MAX_DIMS} dimensions"
                             + (" and keeps a history ring [K, *x.shape]" if plan.solver.history else "")
                             + "; flatten the per-sample dimensions and restore them in the model")
        if plan.batch not in (1, x.shape[0]):
            raise ValueError(f"x: the plan has per-sample grids for {plan.batch} samples, x has batch {x.shape[0]}")
        if noise is not None and not isinstance(noise, Noise):
            raise TypeError(f"noise: expected a diffcore.noise.Noise, got {type(noise).__name__}")
        self.plan = plan
        solver = plan.solver
        grad = x.requires_grad and torch.is_grad_enabled()
        self.x = x.clone() if grad else x.detach().clone(memory_format=torch.contiguous_format)
        self.y = torch.zeros_like(self.x) if solver.second_buffer else None
        K = solver.history
        self.ring = torch.zeros((K,) + tuple(x.shape), dtype=x.dtype, device=x.device) if K else None
        self._cuda = self.x.is_cuda
        self._setup_noise(noise)
        self._stepper = None
        if _ops.fast_path_ok(self.x):
            self._stepper = _ops.make_stepper(self.x, self.y, self.ring, plan.coefs, plan.layout,
                                              _NOISE_KIND[self.noise.kind] if plan.noise_draws else 0,
                                              self._seed, self._ids, plan.noise_span, self.noise.depth)
        if plan.prelude is not None:
            self._apply_prelude()

    # -- noise -------------------------------------------------------------------------------------
    def _setup_noise(self, noise: Optional[Noise]) -> None:
        plan, B = self.plan, self.x.shape[0]
        self.noise = noise if noise is not None else Noise()
        self._seed, self._ids, self._host_noise, self._znoise = 0, None, False, None
        if not plan.noise_draws:
            # a deterministic plan draws nothing, but ids that do not match the batch are still a
            # caller's bug (the same call with a stochastic solver would refuse them)
            self.noise.ids(B, "cpu")
            return
        kind = self.noise.kind
        if kind in ("philox", "brownian"):
            self._seed = self.noise.seed if self.noise.seed is not None else default_seed()
            self._ids = self.noise.ids(B, self.x.device)
        elif kind == "tensor":
            z = self.noise.tensor
            want = (plan.noise_draws,) + tuple(self.x.shape)
            if tuple(z.shape) != want:
                raise ValueError(f"noise: expected pre-drawn noise of shape {want} (plan.noise_draws draws of x's "
                                 f"shape), got {tuple(z.shape)}")
            if z.device != self.x.device:
                raise ValueError(f"noise: expected a tensor on {self.x.device}, got {z.device}")
            self._znoise = z.to(self.x.dtype).contiguous()
            self._host_noise = True
        else:  # generator / provider: one tensor per draw, made when the draw is reached
            self._host_noise = True
        self._zbuf = {}

    def noise_value(self, draw: int, row: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The standard normal noise of draw ``draw`` (the same numbers the fused step uses); ``row`` is
        the coefficient row, whose ``(ta, tb)`` columns give a Brownian draw its interval."""
        x = self.x
        if self._znoise is not None:
            return self._znoise[draw]
        if self.noise.kind in ("generator", "provider"):
            z = self._zbuf.get(draw)
            if z is None:
                self._zbuf.clear()  # a draw is used by one (step, stage) only: never made twice
                z = self._host_draw(draw)
                self._zbuf[draw] = z
            return z
        z = torch.empty_like(x, memory_format=torch.contiguous_format)
        if self.noise.kind == "brownian" and row is not None:
            iv = row[:, _row.interval(self.plan.solver.history)].contiguous()
            if bool((iv[:, 0] != iv[:, 1]).all()):
                return _ops.noise_fill(z, self._seed, self._ids, draw, DOMAIN_STEP, iv, self.plan.noise_span,
                                       self.noise.depth)
        return _ops.noise_fill(z, self._seed, self._ids, draw, DOMAIN_STEP)

    def _host_draw(self, draw: int) -> torch.Tensor:
        x = self.x
        if self.noise.kind == "generator":
            g = self.noise.generator
            return torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)
        z = self.noise.provider(draw)
        if z is None:
            return torch.zeros_like(x, memory_format=torch.contiguous_format)
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"noise: the provider's draw {draw} must be a tensor of x's shape {tuple(x.shape)}, got "
                             f"{getattr(z, 'shape', type(z).__name__)}")
        return z.to(device=x.device, dtype=x.dtype).contiguous()

    def _z_capsule(self, draw: int):
        return None if draw < 0 else _to_dlpack(self.noise_value(draw))

    def _apply_prelude(self) -> None:
        pre = self.plan.prelude.to(self.x.dtype if self.x.dtype == torch.float64 else torch.float32)
        w = _row.Weights(pre, self.plan.solver.history, (pre.shape[0],) + (1,) * (self.x.dim() - 1))
        z = self.noise_value(0)  # the prelude's draw is 0
        self._set("x", (w.ax * self.x + w.zx * z).to(self.x.dtype))

    def model_input(self, s: int) -> torch.Tensor:
        """The tensor the model is evaluated on at stage ``s`` (x at stage 0, y at later stages)."""
        return self.x if s == 0 else self.y

    def _stream(self) -> int:
        return _ops._stream_of(self.x) if self._cuda else 0

    # reference-path writers: keep autograd history when the state is differentiable
    def _set(self, name: str, value: torch.Tensor) -> None:
        cur = getattr(self, name)
        if value.requires_grad or cur.requires_grad:
            setattr(self, name, value)
        else:
            cur.copy_(value)
        if getattr(self, "_stepper", None) is not None and value.requires_grad:
            self._stepper = None

    def _set_ring(self, slot: int, value: torch.Tensor) -> None:
        if value.requires_grad or self.ring.requires_grad:
            ring = self.ring.clone()
            ring[slot] = value
            self.ring = ring
            self._stepper = None
        else:
            self.ring[slot].copy_(value)
