"""``diffcore.sample``: the plan / execute loop (docs/design.md) with model wrapping, guidance, progress
bar, trajectory recording and optional CUDA-graph capture; ``diffcore.prior_sample`` draws its start.

Data flow, top to bottom: schedule → timesteps → model wrapper (prediction type, CFG) → plan (all
coefficients once) → per step: model call → one fused step (history ring included).
"""
from __future__ import annotations

import collections
import threading
import weakref
from typing import Callable, Optional, Union

import torch

from . import _ops
from . import schedules as _schedules
from ._device import as_device
from .grids import regular_range as _regular_range, timesteps as _timesteps
from .guidance import CFG
from .noise import DOMAIN_PRIOR, Noise, philox_normal
from .parallel import ParallelConfig, picard_sample, tile_guidance, tile_model_kwargs
from .param import ModelWrapper, conversion_coefs, convert, resolve_prediction, singular_hint
from .solvers import get as _get_solver
from .solvers.protocol import Kind, kind_of

__all__ = ["sample", "prior_sample"]


def prior_sample(schedule, shape, generator: Optional[torch.Generator] = None, device=None,
                 dtype: torch.dtype = torch.float32, t: Optional[float] = None, seed: Optional[int] = None,
                 sample_ids=None) -> torch.Tensor:
    """Draw the sampler's start ``x ~ N(0, prior_std(t)² I)`` at ``t`` (default ``schedule.t_start``)
    (N(0, I) for VP/sub-VP/FM, N(0, σ_max² I) for VE/EDM).

    With ``seed`` the draw is the library's counter-based Philox noise (prior domain) keyed by
    ``sample_ids`` (default ``arange(shape[0])``): a sample's start then does not depend on the batch
    it is drawn in, on the device or on the dtype (beyond rounding)."""
    schedule = _schedules.get(schedule)
    device = as_device(device, default=None)  # None: torch's default device (or the generator's)
    shape = _prior_shape(shape)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch dtype for Gaussian noise, got {dtype!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    std = schedule.prior_std(t)
    if seed is not None:
        if generator is not None:
            raise ValueError("seed: give seed= or generator=, not both")
        return philox_normal(shape, seed, sample_ids, 0, DOMAIN_PRIOR, device=device, dtype=dtype) * std
    if sample_ids is not None:
        raise ValueError("sample_ids: only meaningful with seed=")
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype) * std


def _prior_shape(shape) -> tuple:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape: expected a sequence of ints such as (B, C, H, W), got {type(shape).__name__}") from None
    try:
        if any(isinstance(d, bool) for d in dims):
            raise TypeError
        dims = tuple(d.__index__() for d in dims)
    except (TypeError, AttributeError):
        raise TypeError(f"shape: expected a sequence of ints, got {dims!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape: expected non-negative sizes, got {dims!r}")
    return dims


def _check_steps(steps):
    """``steps`` validated and in the one form that keys the plan cache: a positive int or a float64
    CPU tensor of times. It runs before the cache lookup because ``2.0 == 2`` and ``True == 1`` as
    dictionary keys, so a value the plan would refuse could otherwise hit a plan built for another."""
    if isinstance(steps, (list, tuple)) or type(steps).__module__ == "numpy":
        if type(steps).__module__ == "numpy" and getattr(steps, "ndim", 1) == 0:  # a numpy integer: a count
            steps = steps.item()
        else:
            try:  # a sequence of times means what a tensor of them means
                steps = torch.as_tensor(steps, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError("steps: expected a positive int or a sequence of times (one flat list of numbers, "
                                f"or one per sample of equal length), got the {type(steps).__name__} {steps!r}"[:300]) \
                    from None
    if isinstance(steps, torch.Tensor):
        if steps.dtype == torch.bool or steps.is_complex() or not (steps.is_floating_point() or steps.dtype in (
                torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)):
            raise TypeError(f"steps: expected a tensor of real times, got dtype {steps.dtype}")
        if steps.dim() not in (1, 2) or steps.shape[-1] < 2:
            raise ValueError("steps: expected times of shape [M + 1] or per-sample [B, M + 1] with M >= 1, got shape "
                             f"{tuple(steps.shape)}")
        return steps.detach().to("cpu", torch.float64)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected a positive int, or the times as a tensor or list, got {steps!r}")
    return steps


def _grid(schedule, steps, spacing, t_start, t_end):
    if isinstance(steps, torch.Tensor):
        if spacing is not None or t_start is not None or t_end is not None:
            raise ValueError("steps: with an explicit tensor of times, spacing/t_start/t_end must not be given")
        return steps
    if t_start is not None and t_end is not None and float(t_start) < float(t_end):
        # inversion (data -> noise): the sampling grid between the same end points, reversed
        return _timesteps(schedule, steps, spacing=spacing, t_start=t_end, t_end=t_start, final_zero=False).flip(0)
    return _timesteps(schedule, steps, spacing=spacing, t_start=t_start, t_end=t_end)


def _model_fn(model, prediction, model_kwargs, guidance, schedule):
    if isinstance(model, ModelWrapper):
        # the wrapper already handles time convention and preconditioning; ask it for x̂
        inner, prediction = (lambda x, t, **kw: model(x, t, target="x0", **kw)), "x0"
    elif callable(model):
        inner, prediction = model, resolve_prediction(prediction, schedule)
    else:
        raise TypeError(f"model: expected a callable model(x, t, **model_kwargs), got {type(model).__name__}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs: expected a dict, got {type(model_kwargs).__name__}")
    if guidance is None:
        kw = dict(model_kwargs or {})
        fn = (lambda x, t: inner(x, t, **kw)) if kw else inner
    elif isinstance(guidance, CFG):
        fn = guidance.wrap(inner, model_kwargs)
    else:
        raise TypeError(f"guidance: expected a diffcore.CFG or None, got {type(guidance).__name__}")
    return fn, prediction


def _checked(fn, x):
    def call(inp, t):
        out = fn(inp, t)
        if out.__class__ is not torch.Tensor and not isinstance(out, torch.Tensor) or out.shape != inp.shape:
            raise ValueError(f"model: expected an output of shape {tuple(inp.shape)}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out
    return call


def _loop(plan, fn, state, times, callback, trajectory, progress):
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=plan.num_steps, desc=plan.solver.name)
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            plan.step(state, i, s, fn(state.model_input(s), times[i][s]))
        if trajectory is not None:
            trajectory.append(state.x.clone())
        if callback is not None:
            callback({"i": i, "t": plan.timesteps[:, i + 1], "x": state.x})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return state.x


_PLANS: "collections.OrderedDict" = collections.OrderedDict()
_PLAN_CACHE_SIZE = 32
#: batch sizes whose expanded model times one plan keeps (a server sees a few sizes again and again;
#: a sweep over thousands of sizes must not grow without bound)
_BATCH_TIMES_SIZE = 8
_CACHE_LOCK = threading.Lock()  # sample() runs from several threads; LRU reordering is not atomic


def _primitive(v) -> bool:
    return isinstance(v, (int, float, str, bool, type(None)))


def _cached_plan(solver_arg, solver_options, schedule, steps, spacing, t_start, t_end, prediction, device, dtype):
    """Plans are immutable, so repeated ``sample`` calls with the same solver, schedule, grid and model
    type share one (building a plan costs a few hundred µs; a step costs a few)."""
    if isinstance(solver_arg, str):
        # option values that are objects (DPM-Solver-v3's statistics) are keyed by identity
        skey = ("name", solver_arg.lower(), tuple(sorted(
            (k, repr(v) if _primitive(v) else ("id", id(v)))
            for k, v in solver_options.items())))
    else:
        skey = ("obj", id(solver_arg))
    steps = _check_steps(steps)
    if isinstance(steps, torch.Tensor):
        gkey = ("times", tuple(steps.shape), tuple(steps.flatten().tolist()))
    else:
        gkey = ("n", steps, spacing, t_start, t_end)
    key = (skey, id(schedule), gkey, prediction, str(device), dtype)
    with _CACHE_LOCK:
        hit = _PLANS.get(key)
        if (hit is not None and hit[0] is schedule and (skey[0] == "name" or hit[1] is solver_arg)
                and all(hit[3].get(k) is v for k, v in solver_options.items() if not _primitive(v))):
            _PLANS.move_to_end(key)  # least recently used goes first, so a hot plan survives a sweep
            return hit[2]
    solver = _get_solver(solver_arg, **solver_options)
    if solver.kind is Kind.ADAPTIVE:  # it chooses its steps as it runs: there is no plan to build
        return solver
    grid = _grid(schedule, steps, spacing, t_start, t_end)
    try:
        try:
            plan = solver.plan(schedule, grid, device=device, dtype=dtype, prediction=prediction)
        except ValueError:
            plan = _regular_plan(solver, schedule, steps, spacing, t_start, t_end, device, dtype, prediction)
            if plan is None:
                raise
    except ValueError as e:  # the plan names its own argument; here the user's is `steps`
        msg = str(e)
        if isinstance(steps, torch.Tensor) and msg.startswith("timesteps:"):
            raise ValueError("steps:" + msg[len("timesteps:"):]) from None
        if msg.startswith("prediction:") and "singular" in msg:
            hint = singular_hint(prediction, schedule)
            if hint:
                raise ValueError(msg + hint) from None
        raise
    with _CACHE_LOCK:
        _PLANS[key] = (schedule, solver_arg, plan, dict(solver_options))  # the references keep the key's ids valid
        _PLANS.move_to_end(key)
        while len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


def _regular_plan(solver, schedule, steps, spacing, t_start, t_end, device, dtype, prediction):
    """The default grid moved inside the ends where λ is infinite (:func:`diffcore.grids.regular_range`)
    for a method that cannot step from α = 0 or sample at σ = 0; ``None`` where the user chose the
    grid or the range is already regular (the first error then stands)."""
    if isinstance(steps, torch.Tensor) or prediction is None:
        return None
    native = solver.native
    if native != prediction:
        # a model type that is singular at the schedule's own start (an ε-model on a flow path) is more
        # likely the wrong type than a wish to start inside: keep the error and its hint
        vals = schedule.eval(torch.tensor([float(schedule.t_start)], dtype=torch.float64))
        c_x, c_m = conversion_coefs(prediction, native, vals, schedule)
        if not bool(torch.isfinite(c_x + c_m).all()):
            return None
    attempts = []
    if t_start is None:
        ts, _ = _regular_range(schedule, end=False)
        if ts != schedule.t_start:
            attempts.append(dict(t_start=ts, t_end=t_end, final_zero=None))
    if t_end is None and (t_start is None or attempts == []):
        ts, te = _regular_range(schedule, start=t_start is None)
        ts = ts if t_start is None else t_start
        if te != schedule.t_end or schedule.final_zero:  # and no final step to σ = 0
            attempts.append(dict(t_start=ts, t_end=te, final_zero=False))
    for kw in attempts:
        try:
            grid = _timesteps(schedule, steps, spacing=spacing, **kw)
            return solver.plan(schedule, grid, device=device, dtype=dtype, prediction=prediction)
        except ValueError:
            continue
    return None


def _batch_times(plan, B):
    """The model times of every (step, stage), expanded to the batch once per plan and batch size
    (the last few sizes are kept, least recently used dropped first)."""
    with _CACHE_LOCK:
        cache = plan.__dict__.get("_expanded")
        if cache is None:
            cache = plan.__dict__["_expanded"] = collections.OrderedDict()
        times = cache.get(B)
        if times is not None:
            cache.move_to_end(B)
            return times
    times = [[plan.model_time(i, s).expand(B) for s in plan.stages(i)] for i in range(plan.num_steps)]
    with _CACHE_LOCK:
        cache[B] = times
        cache.move_to_end(B)
        while len(cache) > _BATCH_TIMES_SIZE:
            cache.popitem(last=False)
    return times


_GRAPHS: "collections.OrderedDict" = collections.OrderedDict()
_GRAPH_CACHE_SIZE = 8


def _graph_sample(key, model, plan, fn, x, times, noise):
    """Capture the whole loop (model included) once per key, then replay it: no host work per step.
    The key holds the ids of the model and of the (cached, immutable) plan; the entry keeps the plan
    and a reference to the model so that a reused id cannot hit a stale graph."""
    entry = _GRAPHS.get(key)
    if entry is not None and entry[0]() is model and entry[1] is plan:
        _, _, graph, static_x, state = entry
        _GRAPHS.move_to_end(key)
    else:
        static_x = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up run outside capture (lazy init, cuBLAS handles, ...)
            _loop(plan, fn, plan.init_state(static_x, noise), times, None, None, False)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            state = plan.init_state(static_x, noise)
            _loop(plan, fn, state, times, None, None, False)
        _GRAPHS[key] = (weakref.ref(model) if _weakrefable(model) else (lambda m=model: m), plan, graph, static_x,
                        state)
        while len(_GRAPHS) > _GRAPH_CACHE_SIZE:
            _GRAPHS.popitem(last=False)
    static_x.copy_(x)
    graph.replay()
    return state.x.clone()


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def _require(sampler, missing: bool, capability: str) -> None:
    """Refuse a call that needs a capability the sampler does not declare (docs/design.md, "One
    sampler protocol"); the message names the argument to change."""
    if missing:
        raise ValueError(sampler.refusal(capability))


def _adaptive(solver, fn, x, schedule, prediction, t_start, t_end, callback):
    """Run an adaptive solver (``Kind.ADAPTIVE``) on the model ``fn`` of ``prediction``.

    A λ-stepper cannot start from α = 0 nor end at σ = 0: on the default range of a flow schedule it
    runs over :func:`diffcore.grids.regular_range` and, where the default end is σ = 0, takes the
    exact last step of a data-prediction solver there, x ← x̂0 (one more model call)."""
    reg_ts, reg_te = _regular_range(schedule, start=t_start is None, end=t_end is None)
    if solver.native == "velocity":  # dopri5 steps in t: any end of the range will do
        reg_ts, reg_te = schedule.t_start, schedule.t_end
    ts = float(reg_ts if t_start is None else t_start)
    te = float(reg_te if t_end is None else t_end)

    def native_fn(xx, t):  # the solver's native prediction: "eps" (dpm_adaptive) or "velocity" (dopri5)
        return convert(fn(xx, t), xx, t, schedule, prediction, solver.native)

    with torch.no_grad():
        out, _ = solver.solve(native_fn, x, schedule, ts, te, callback)
        if t_end is None and te != float(schedule.t_end):
            tt = torch.full((out.shape[0],), te, dtype=out.dtype, device=out.device)
            out = convert(fn(out, tt), out, tt, schedule, prediction, "x0")
    return out


def sample(model: Callable, x: torch.Tensor, schedule: Union[str, "_schedules.Schedule", None] = None,
           solver="dpmpp_2m", steps: Union[int, torch.Tensor] = 10, prediction: Optional[str] = None,
           spacing: Optional[str] = None,
           t_start: Optional[float] = None, t_end: Optional[float] = None, model_kwargs: Optional[dict] = None,
           guidance: Optional[CFG] = None, callback: Optional[Callable] = None, return_trajectory: bool = False,
           progress: bool = False, cuda_graph: bool = False, seed: Optional[int] = None, sample_ids=None,
           generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
           brownian: bool = False, parallel: Optional[ParallelConfig] = None, **solver_options):
    """Solve the probability-flow ODE of ``model`` from ``x`` at ``t_start`` to ``t_end``, or sample
    its reverse process with a stochastic sampler (``diffcore.solvers.STOCHASTIC``).

    Args:
        model: ``model(x, t, **model_kwargs)`` with ``t`` a ``[B]`` tensor of the schedule's continuous
            times (one per sample), returning a ``prediction``; or a :class:`~diffcore.ModelWrapper`
            (which handles time conventions and EDM preconditioning).
        x: the state at ``t_start`` in the schedule's units (:func:`prior_sample` draws it).
        schedule: a :class:`~diffcore.schedules.Schedule` or its name; default: ``model.schedule`` (a
            :class:`~diffcore.ModelWrapper` or :func:`diffcore.load` result carries it).
        solver: a name from ``diffcore.solvers.available()`` or a solver object; ``**solver_options``
            go to :func:`diffcore.solvers.get`.
        steps: number of steps, or explicit times ``[M + 1]`` / per-sample ``[B, M + 1]`` as a tensor,
            a list or a NumPy array (then ``spacing``, ``t_start`` and ``t_end`` must be left out).
        prediction: ``"eps"``, ``"x0"``, ``"score"``, ``"velocity"``, ``"v"`` or an alias; default
            ``None``: the schedule's own (``schedule.prediction``: ``"velocity"`` on ``rectified_flow``,
            ``ot_sigma_min`` and ``trig``, ``"eps"`` on the diffusion schedules). Ignored for a
            :class:`~diffcore.ModelWrapper`, which carries its own.
        spacing, t_start, t_end: grid options of :func:`diffcore.timesteps` (default: the schedule's).
            ``t_start < t_end`` inverts (data → noise). On the flow paths (α = 0 at t = 1, σ = 0 at
            t = 0) a method that cannot step from λ = −∞ (ε-form and single-step exponential
            integrators, ancestral and SDE samplers) or sample at σ = 0 (Langevin, the adaptive
            solvers) gets the default grid over :func:`diffcore.grids.regular_range`, 1e-3 inside
            those ends (the adaptive solvers then take a last x̂0 step to σ = 0), and Langevin on a
            schedule whose default grid ends with a step to σ = 0 (EDM, trig) samples at its last
            level above it; given ends and explicit grids are used as they are.
        guidance: ``diffcore.CFG(omega, uncond=...)``.
        callback: called after every step with ``{"i", "t", "x"}``.
        return_trajectory: also return the list of states after each step.
        progress: tqdm progress bar.
        cuda_graph: on CUDA, capture the whole loop (model included) as one CUDA graph, cached per
            (model, solver, schedule, grid, shape), and replay it. The model must be capturable and
            ``model_kwargs`` tensors are captured by reference. Ignored on the CPU. A stochastic
            sampler needs ``seed=`` here (the seed is part of the captured graph).
        seed: noise of a stochastic sampler: the counter-based Philox normal of (seed, sample id, draw,
            element), computed inside the fused step (:mod:`diffcore.noise`). Default: a seed drawn
            from torch's global generator (so ``torch.manual_seed`` reproduces runs).
        sample_ids: ``[B]`` integer ids keying each sample's noise (default ``arange(B)``): a sample
            with the same id, start and seed is the same in any batch and on any device.
        generator: draw each step's noise with ``torch.randn(generator=...)`` instead.
        noise: pre-drawn noise ``[plan.noise_draws, B, ...]`` instead.
        brownian: replace each step's noise by the normalized increment of a seed-stable Brownian
            tree over the step's time interval, so that runs with more steps refine the same path.
        parallel: a :class:`~diffcore.ParallelConfig` to run the same plan by Picard iteration over a
            sliding window of ``window`` model evaluations per batched call (ParaDiGMS, Shih et al. 2023,
            :mod:`diffcore.parallel`); stochastic samplers use the same noise, fixed up front, so the
            converged result is the sequential sample. ``callback`` is then called once per round
            with ``{"round", "start", "stride", "residual"}``; not with ``cuda_graph``, ``progress``
            or the adaptive solvers (``dpm_adaptive``, ``dpm_adaptive_ps``, ``dopri5``).

    Returns ``x`` at ``t_end`` (and the trajectory when asked).

    Which engine runs is declared by the sampler protocol (:mod:`diffcore.solvers.protocol`,
    docs/design.md "One sampler protocol"): a fixed-grid plan, an adaptive solver, or — for a
    distilled student (a :class:`~diffcore.solvers.protocol.Student`, :mod:`diffcore.distill.students`)
    passed as ``model`` — its own few-step sampler: ``model.few_step_sample(x, schedule, steps,
    model_kwargs=..., generator=...)``; the solver options do not apply to it. An option the engine
    does not declare (``parallel``, ``cuda_graph``, ``return_trajectory``) raises ``ValueError``.
    """
    if kind_of(model) is Kind.STUDENT:
        return model.few_step_sample(x, schedule, steps, model_kwargs=model_kwargs, generator=generator)
    if schedule is None:  # a ModelWrapper / diffcore.load result knows the schedule it was trained on
        schedule = getattr(model, "schedule", None)
    if schedule is None:
        raise TypeError("schedule: required (a diffcore Schedule or its name, e.g. 'vp_linear', 'edm', 'rf'), "
                        "unless the model carries one (a ModelWrapper or diffcore.load(...))")
    schedule = _schedules.get(schedule)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point torch tensor with a batch dimension")
    if parallel is not None and not isinstance(parallel, ParallelConfig):
        raise TypeError(f"parallel: expected a diffcore.ParallelConfig or None, got {type(parallel).__name__}")
    given_prediction = prediction
    fn, prediction = _model_fn(model, prediction, model_kwargs, guidance, schedule)
    fn = _checked(fn, x)
    plan = _cached_plan(solver, solver_options, schedule, steps, spacing, t_start, t_end, prediction, x.device,
                        x.dtype)
    _require(plan, parallel is not None and not plan.supports_picard, "supports_picard")
    _require(plan, cuda_graph and not plan.supports_cuda_graph, "supports_cuda_graph")
    _require(plan, return_trajectory and not plan.supports_trajectory, "supports_trajectory")
    if plan.kind is Kind.ADAPTIVE:
        return _adaptive(plan, fn, x, schedule, prediction, t_start, t_end, callback)
    if plan.batch not in (1, x.shape[0]):
        raise ValueError(f"steps: per-sample times for {plan.batch} samples, but x has batch {x.shape[0]}; expected "
                         "a grid [M + 1] shared by the batch or one row per sample [x.shape[0], M + 1]")
    if parallel is not None and x.dim() >= _ops.MAX_DIMS:
        raise ValueError(f"x: expected at most {_ops.MAX_DIMS - 1} dimensions (batch included) with parallel=, got "
                         f"{x.dim()}: the Picard window stacks x-shaped states into one {_ops.MAX_DIMS}-dimensional "
                         "kernel argument at most; flatten the per-sample dimensions and restore them in the model")
    if parallel is not None:
        if cuda_graph or progress:
            raise ValueError("parallel: cuda_graph and progress are not available with the Picard sampler")
        B = x.shape[0]

        def make_fn(reps):
            if reps == 1:
                return fn
            return _model_fn(model, given_prediction, tile_model_kwargs(model_kwargs, B, reps),
                             tile_guidance(guidance, B, reps), schedule)[0]

        nz = Noise(seed=seed, sample_ids=sample_ids, generator=generator, noise=noise, brownian=brownian)
        with torch.no_grad():
            res = picard_sample(plan, make_fn, x, parallel, nz, return_trajectory, callback)
        return (res.x, res.trajectory) if return_trajectory else res.x
    times = _batch_times(plan, x.shape[0])
    nz = Noise(seed=seed, sample_ids=sample_ids, generator=generator, noise=noise, brownian=brownian)
    with torch.no_grad():
        if cuda_graph and x.is_cuda:
            if callback is not None or return_trajectory or progress:
                raise ValueError("cuda_graph: callback, return_trajectory and progress need host work per step")
            nkey = None
            if plan.stochastic:
                if seed is None or generator is not None or noise is not None:
                    raise ValueError("cuda_graph: a stochastic sampler needs seed= (it is captured with the graph)")
                ids = None if sample_ids is None else tuple(torch.as_tensor(sample_ids).tolist())
                nkey = (seed, ids, brownian)
            kw_key = tuple(sorted((k, id(v)) for k, v in (model_kwargs or {}).items()))
            key = (id(model), id(plan), tuple(x.shape), kw_key, repr(guidance), nkey)
            return _graph_sample(key, model, plan, fn, x, times, nz)
        state = plan.init_state(x, nz)
        trajectory = [state.x.clone()] if return_trajectory else None
        out = _loop(plan, fn, state, times, callback, trajectory, progress)
    return (out, trajectory) if return_trajectory else out
