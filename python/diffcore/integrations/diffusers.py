"""A diffusers scheduler backed by diffcore plans: swap one object in a diffusers pipeline and sample
with any fixed-grid diffcore solver (deterministic or stochastic), each step one fused ``plan.step``.

    from diffcore.integrations.diffusers import DiffcoreScheduler
    pipe.scheduler = DiffcoreScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m")
    image = pipe(...).images

Protocol (diffusers' ``SchedulerMixin``/``ConfigMixin``, as ``DDIMScheduler``,
``DPMSolverMultistepScheduler`` and ``FlowMatchEulerDiscreteScheduler`` follow it):
``set_timesteps(num_inference_steps | timesteps | sigmas, device, mu)``, then for each ``t`` in
``timesteps`` the pipeline evaluates the network at ``(sample, t)`` and calls ``step(model_output, t,
sample, generator=...)``, which returns ``prev_sample``. The sample is the VP state
``x = √ᾱ·x0 + √(1 − ᾱ)·ε`` (flow matching: ``x = (1 − σ)x0 + σε``), so ``init_noise_sigma = 1`` and
``scale_model_input`` is the identity, and a pipeline that never scales (``DDPMPipeline``) works.

Configuration. ``from_config`` accepts the configs of ``DDPMScheduler``, ``DDIMScheduler``,
``DPMSolverMultistepScheduler`` and ``FlowMatchEulerDiscreteScheduler`` (and their relatives) and
reproduces their grids exactly (:mod:`.diffusers_grids`): the VP schedule from ``beta_schedule`` /
``trained_betas`` (diffcore :class:`~diffcore.schedules.VPDiscrete`), ``timestep_spacing``,
``steps_offset``, ``set_alpha_to_one`` / ``final_sigmas_type``, the sigma options, flow matching's
``shift``, ``use_dynamic_shifting`` with ``mu``, ``shift_terminal``. The convention (whose
``set_timesteps`` to follow) and the default solver come from the source config's class:

================================  =============  =================================================
source ``_class_name``            convention     default ``solver``
================================  =============  =================================================
DDIMScheduler                     ``ddim``       ``ddim``
DDPMScheduler                     ``ddim``       ``ddpm``
DPMSolverMultistepScheduler       ``dpmsolver``  ``dpmpp_{1,2m,3m}`` (``dpmpp_{2,3}m_sde`` for SDE)
UniPC / DEIS (multistep)          ``dpmsolver``  ``unipc_k`` / ``deis_k``
FlowMatchEulerDiscreteScheduler   ``flow_match`` ``euler`` (``heun`` for FlowMatchHeun)
anything else                     ``ddim``       ``dpmpp_2m``
================================  =============  =================================================

``prediction_type``: ``epsilon``, ``v_prediction``, ``sample`` and ``flow_prediction`` (the
velocity ε − x0 of diffusers' flow-matching models; diffcore's ``"velocity"`` on the rectified-flow
path). ``clip_sample`` / ``thresholding`` act on the data prediction x̂0 of every model evaluation as in
diffusers (clip to ±``clip_sample_range``; ``s = clamp(quantile(|x̂0|, p), 1, sample_max_value)``), and
the solver then uses the clipped x̂0 *and the noise consistent with it* — the semantics of
``DDPMScheduler``, ``DPMSolverMultistepScheduler`` and of ``DDIMScheduler.step(...,
use_clipped_model_output=True)`` (``DDIMScheduler``'s default keeps the unclipped ε̂, which no ODE
solver does; without clipping the two agree).

Multi-stage solvers. Every model evaluation is an entry of ``timesteps`` (as ``HeunDiscreteScheduler``
interleaves its stages), so a plain pipeline loop drives all stages; ``order`` is the solver's stages
per step. The timestep of an intermediate stage is its (fractional) training index ``N·t − 1``
(flow matching ``N·σ``); ``timesteps`` is int64 when every entry is an integer, float32 when every
entry is a float32 number and float64 otherwise (so the network sees the plan's exact times). EDM's
churn (``edm_churn`` with ``s_churn > 0``) perturbs the start before the first model call: its first
entry is an extra evaluation whose output is discarded (the step applies the churn).

State and threads. The scheduler is stateful, like every diffusers scheduler: a step counter (no
timestep search, no host synchronization in :meth:`DiffcoreScheduler.step` on CUDA; the ``timestep``
argument is checked against the expected entry only when it is a Python number or a CPU tensor),
the solver's buffers (sample, stage input, history ring) and the noise source, fixed at the first
step: the ``generator`` given to ``step`` (a list of generators: one per sample), else diffcore's
counter-based Philox noise under a seed drawn from torch's global generator. One scheduler runs one
sampling loop at a time: give each request or thread its own :meth:`DiffcoreScheduler.copy` (same
configuration and grid, shared immutable plan, fresh run state). The thread-safe path without a
scheduler object is the plan API: ``plan = scheduler.make_plan(device, dtype)``, one
``plan.init_state(x)`` per run, or ``diffcore.sample(model, x, scheduler.schedule,
solver=scheduler.solver, steps=scheduler.diffcore_times, prediction=scheduler.prediction)`` with a
model taking diffcore times (:meth:`DiffcoreScheduler.model_timestep` converts).

Not available: the adaptive solvers (``dpm_adaptive``, ``dpm_adaptive_ps``), which choose their steps
as they go while the protocol lists every model time up front (use :func:`diffcore.sample`);
``dpm_solver_v3`` runs when ``solver_options={"statistics": ems}`` gives it its EMS statistics.
Solvers that need λ finite at the start (noise-prediction solvers: ``deis_*``, ``dpm_solver_*``) cannot
start a flow-matching grid at σ = 1 (α = 0) and raise there.
"""
from __future__ import annotations

import inspect
from typing import List, Optional, Union

import numpy as np
import torch

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .. import solvers as _solvers
from .._device import as_device
from ..noise import Noise
from ..param import conversion_coefs
from ..schedules import VPDiscrete
from . import diffusers_grids as _grids

__all__ = ["DiffcoreScheduler", "FAMILIES"]

#: diffusers prediction_type → diffcore prediction name
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}

#: source scheduler class → (timestep convention, default-solver rule); see the module docstring
FAMILIES = {
    "DDIMScheduler": ("ddim", "ddim"), "DDPMScheduler": ("ddim", "ddpm"), "PNDMScheduler": ("ddim", None),
    "DPMSolverMultistepScheduler": ("dpmsolver", "dpmsolver"), "DPMSolverSinglestepScheduler": ("dpmsolver", None),
    "UniPCMultistepScheduler": ("dpmsolver", "unipc"), "DEISMultistepScheduler": ("dpmsolver", "deis"),
    "FlowMatchEulerDiscreteScheduler": ("flow_match", "euler"), "FlowMatchHeunDiscreteScheduler": ("flow_match", "heun"),
}
_ADAPTIVE = ("dpm_adaptive", "dpm_adaptive_ps")


def _default_solver(rule: Optional[str], cfg: dict) -> str:
    order = int(cfg.get("solver_order", 2) or 2)
    if rule == "dpmsolver":
        algo = cfg.get("algorithm_type", "dpmsolver++")
        if algo == "sde-dpmsolver++" and order in (2, 3):
            return f"dpmpp_{order}m_sde"
        return {1: "dpmpp_1", 2: "dpmpp_2m", 3: "dpmpp_3m"}.get(order, "dpmpp_2m")
    if rule in ("unipc", "deis"):
        return f"{rule}_{min(max(order, 1), 3)}"
    return rule or "dpmpp_2m"


def _source_class(config: dict) -> Optional[str]:
    """The scheduler class of FAMILIES whose ``__init__`` takes exactly the config's keys (configs of
    schedulers built in code carry no ``_class_name``; loaded ones do)."""
    import diffusers  # noqa: PLC0415

    keys = {k for k in config if not k.startswith("_")}
    for name in FAMILIES:
        cls = getattr(diffusers, name, None)
        if cls is not None and keys == set(inspect.signature(cls.__init__).parameters) - {"self"}:
            return name
    return None


class DiffcoreScheduler(SchedulerMixin, ConfigMixin):
    """diffusers scheduler running a diffcore solver (see the module docstring for the protocol, the
    accepted configurations, the conventions and the threading rules).

    Args (diffcore's own; the others are diffusers' scheduler config keys, same meaning):
        solver: a name of ``diffcore.solvers.available()`` (default: from the source config's class).
        solver_options: keyword options of ``diffcore.solvers.get`` (e.g. ``{"solver_type": "heun"}``,
            ``{"eta": 0.5}``); override the ones derived from the config (``solver_type``,
            ``lower_order_final``, UniPC's ``predict_x0``).
        timestep_convention: ``"ddim"``, ``"dpmsolver"`` or ``"flow_match"`` (default: from the source
            class; ``"flow_match"`` for ``prediction_type="flow_prediction"``, else ``"ddim"``).
    """

    _compatibles: List[str] = []
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        final_sigmas_type: str = "zero",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        rescale_betas_zero_snr: bool = False,
        variance_type: Optional[str] = None,
        lambda_min_clipped: float = -float("inf"),
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        solver_order: int = 2,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        predict_x0: bool = True,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: Optional[float] = 0.5,
        max_shift: Optional[float] = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: Optional[float] = None,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
        solver: Optional[str] = None,
        solver_options: Optional[dict] = None,
        timestep_convention: Optional[str] = None,
    ):
        if prediction_type not in _PREDICTIONS:
            raise ValueError(f"prediction_type: expected one of {sorted(_PREDICTIONS)}, got {prediction_type!r}")
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps: expected a positive int, got {num_train_timesteps!r}")
        conv = timestep_convention
        if conv is None:
            conv = "dpmsolver" if use_flow_sigmas else ("flow_match" if prediction_type == "flow_prediction" else "ddim")
        if conv not in _grids.CONVENTIONS:
            raise ValueError(f"timestep_convention: expected one of {_grids.CONVENTIONS}, got {conv!r}")
        self._convention = conv
        self._flow = conv == "flow_match" or (conv == "dpmsolver" and use_flow_sigmas)
        if prediction_type == "flow_prediction" and not self._flow:
            raise ValueError("prediction_type: 'flow_prediction' needs a flow-matching grid (timestep_convention="
                             "'flow_match', or 'dpmsolver' with use_flow_sigmas=True)")
        if prediction_type == "v_prediction" and self._flow:
            raise ValueError("prediction_type: 'v_prediction' is defined for VP schedules, not flow matching")
        if variance_type not in (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log",
                                 "learned", "learned_range"):
            raise ValueError(f"variance_type: unknown {variance_type!r}")
        if euler_at_final and final_sigmas_type != "zero":
            raise ValueError("euler_at_final: only with final_sigmas_type='zero' (where diffcore's final step is "
                             "first order anyway)")
        _grids.active_sigma_option(self.config)
        if self._flow:
            self.schedule = _grids.flow_schedule()
            self.alphas_cumprod = None
        else:
            self.alphas_cumprod = _grids.vp_alphas_cumprod(self.config)
            self.schedule = VPDiscrete(alphas_cumprod=self.alphas_cumprod.double())
        if solver is None:
            if stochastic_sampling:
                raise ValueError("stochastic_sampling: choose a stochastic diffcore solver explicitly (solver=, "
                                 f"one of {list(_solvers.STOCHASTIC)})")
            solver = "euler" if self._flow and conv == "flow_match" else "dpmpp_2m"
        self.solver = self._make_solver(solver, solver_options)
        self.prediction = _PREDICTIONS[prediction_type]
        self.order = int(getattr(self.solver, "stages", 1) or 1)
        self.init_noise_sigma = 1.0
        self._shift = shift
        self._reset_grid()

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config`` that first completes ``config`` with what its source class implies:
        the source's own values for keys it left at their defaults (diffusers drops those, and
        ``DDIMScheduler``'s defaults are not ``DPMSolverMultistepScheduler``'s), the timestep
        convention, flow matching's prediction type and the default solver (module docstring)."""
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k != "_use_default_values"}
            src = config.get("_class_name") or _source_class(config)
            if src != cls.__name__ and src in FAMILIES:
                conv, rule = FAMILIES[src]
                config.setdefault("timestep_convention", conv)
                if conv == "flow_match":
                    config.setdefault("prediction_type", "flow_prediction")
                if "solver" not in kwargs and config.get("solver") is None:
                    config["solver"] = _default_solver(rule, config)
            elif src != cls.__name__ and config.get("use_flow_sigmas"):
                config.setdefault("timestep_convention", "dpmsolver")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _make_solver(self, name, options):
        if not isinstance(name, str):
            raise TypeError(f"solver: expected a solver name (one of {_solvers.available()}), got {type(name).__name__}")
        key = name.lower()
        if key not in _solvers.available():
            raise ValueError(f"solver: unknown solver {name!r}; available: {_solvers.available()}")
        if key in _ADAPTIVE:
            raise ValueError(f"solver: {name} chooses its step sizes while it runs, but a diffusers scheduler lists every "
                             "model time in `timesteps` before the loop; use diffcore.sample(..., solver="
                             f"{name!r}) or a fixed-grid solver")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"solver_options: expected a dict, got {type(options).__name__}")
        cfg = self.config
        derived = {}
        if not cfg.lower_order_final:
            derived["lower_order_final"] = False
        if key.startswith(("dpmpp_1", "dpmpp_2m", "dpmpp_3m", "dpm_solver")) and cfg.solver_type in ("heun", "taylor"):
            derived["solver_type"] = cfg.solver_type  # diffusers maps UniPC/DEIS' bh1/bh2/logrho to midpoint
        if key.startswith("unipc"):
            if cfg.solver_type in ("bh1", "bh2"):
                derived["variant"] = cfg.solver_type
            if not cfg.predict_x0:
                derived["predict_x0"] = False
        derived.update(options or {})
        try:
            return _solvers.get(key, **derived)
        except TypeError as e:
            raise TypeError(f"solver_options: {e} (options given to {key}: {sorted(derived)})") from e

    # -- grid -----------------------------------------------------------------------------------------
    def _reset_grid(self) -> None:
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self.diffcore_times = None
        self._plans = {}
        self._entries = None
        self._begin_index = None
        self._restart()

    def _restart(self) -> None:
        self._k = 0
        self._state = None
        self._plan = None
        self._started = False

    @property
    def shift(self) -> float:
        """Flow matching's static shift (``FlowMatchEulerDiscreteScheduler.shift``)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = float(shift)

    @property
    def step_index(self) -> Optional[int]:
        """Entries of ``timesteps`` consumed by :meth:`step` (None before the first step)."""
        return self._k if self._started else None

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      timesteps: Optional[List] = None, sigmas: Optional[List[float]] = None,
                      mu: Optional[float] = None) -> None:
        """Build the grid (the source scheduler's, :mod:`.diffusers_grids`), the diffcore plan on it and
        the list of model timesteps; reset the run state.

        Args:
            num_inference_steps: solver steps (model evaluations of a one-stage solver).
            device: where ``timesteps`` (and the first plan) live.
            timesteps: custom model timesteps (VP: integer training indices; flow matching: σ·N).
            sigmas: custom levels (VP: noise-to-signal ratios σ/α; flow matching: σ), one per step.
            mu: the dynamic shift of ``use_dynamic_shifting`` (flow matching ``e^μ``-shift).
        """
        cfg = self.config
        if mu is not None and not cfg.use_dynamic_shifting:
            raise ValueError("mu: only used with use_dynamic_shifting=True")
        if self._convention == "flow_match":
            grid = _grids.flow_match_grid(cfg, num_inference_steps, timesteps, sigmas, mu, self._shift)
        elif self._flow:
            grid = _grids.dpm_flow_grid(cfg, num_inference_steps, timesteps, sigmas, mu)
        else:
            if mu is not None:
                raise ValueError("mu: dynamic shifting applies to flow-matching grids only")
            grid = _grids.vp_grid(cfg, self.alphas_cumprod, self.schedule, num_inference_steps, timesteps, sigmas,
                                  self._convention)
        times = grid.times
        n = len(grid.model_ts)
        # a zero-length final step (DDIM's ᾱ_0 → ᾱ_0 after index 0) is the identity: it is left out, and
        # so is its network call
        tail = bool(times[-1] == times[-2])
        solve = times[:-1] if tail else times
        if tail and len(solve) < 2:
            raise ValueError("num_inference_steps: the grid has no step of nonzero length")
        if not np.all(np.diff(solve) < 0):
            raise ValueError(f"timesteps: expected strictly decreasing noise levels, got the grid {times.tolist()} "
                             "(diffcore times)")
        self.diffcore_times = torch.from_numpy(solve.copy())
        self.num_inference_steps = n
        self._plans = {}
        host = self._build_plan(torch.device("cpu"), torch.float64)
        self._entries, model_t = self._list_entries(host, grid)
        ts = np.asarray(model_t, dtype=np.float64)
        dev = as_device(device)
        if grid.integral and np.all(ts == np.round(ts)):
            self.timesteps = torch.from_numpy(ts.astype(np.int64)).to(dev)
        elif np.all(ts.astype(np.float32).astype(np.float64) == ts) or dev.type == "mps":
            self.timesteps = torch.from_numpy(ts.astype(np.float32)).to(dev)
        else:
            self.timesteps = torch.from_numpy(ts).to(dev)
        self._ts_host = ts.tolist()
        levels = self._levels(np.asarray([e[4] for e in self._entries] + [times[-1]]))
        self.sigmas = torch.from_numpy(levels.astype(np.float32))
        self._begin_index = None
        self._restart()
        if dev.type != "cpu":
            self._build_plan(dev, torch.float32)

    def _levels(self, t: np.ndarray) -> np.ndarray:
        """diffusers' ``sigmas`` of diffcore times: σ (flow matching) or σ/α (VP)."""
        if self._flow:
            return t
        v = self.schedule.eval(torch.from_numpy(np.asarray(t, dtype=np.float64)))
        return (v.sigma / v.alpha).numpy()

    def _build_plan(self, device: torch.device, dtype: torch.dtype, times: Optional[torch.Tensor] = None):
        key = (str(device), dtype, None if times is None else tuple(times.tolist()))
        plan = self._plans.get(key)
        if plan is None:
            pred = "x0" if (self.config.clip_sample or self.config.thresholding) else self.prediction
            try:
                plan = self.solver.plan(self.schedule, self.diffcore_times if times is None else times, device=device,
                                        dtype=dtype, prediction=pred)
            except (ValueError, TypeError) as e:
                raise type(e)(f"solver: {self.solver.name} cannot run this grid ({e})") from e
            self._plans[key] = plan
        return plan

    def _list_entries(self, plan, grid):
        """One entry per model evaluation: (kind, step, stage, model timestep, diffcore time, cx, cm) with
        (cx, cm) the weights of x̂0 = cx·input + cm·output (for clipping)."""
        nodes = grid.times
        entries, model_t = [], []
        N = self.config.num_train_timesteps
        if getattr(plan, "prelude", None) is not None:
            entries.append(("prelude", 0, 0, grid.model_ts[0], float(nodes[0]), 0.0, 0.0))
        for i in range(plan.num_steps):
            for s in plan.stages(i):
                t = float(plan.model_time(i, s).reshape(-1)[0])
                j = np.flatnonzero(np.abs(nodes[:-1] - t) <= 1e-12 * max(1.0, abs(t)))
                ts = float(grid.model_ts[j[0]]) if j.size else float(_grids.model_index(self.schedule, [t], N)[0])
                entries.append(("step", i, s, ts, t, 0.0, 0.0))
        if self.config.clip_sample or self.config.thresholding:
            src = self.prediction
            tt = torch.tensor([e[4] for e in entries], dtype=torch.float64)
            cx, cm = conversion_coefs(src, "x0", self.schedule.eval(tt), self.schedule)
            entries = [e[:5] + (float(a), float(b)) for e, a, b in zip(entries, cx.tolist(), cm.tolist())]
        model_t = [e[3] for e in entries]
        return entries, model_t

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at entry ``begin_index`` of ``timesteps`` (img2img pipelines): the solver starts
        afresh at that level (a multistep method warms up again). It must be the first stage of a step."""
        if self._entries is None:
            raise RuntimeError("set_begin_index: call set_timesteps first")
        if isinstance(begin_index, bool) or not isinstance(begin_index, int) or not 0 <= begin_index < len(self._entries):
            raise ValueError(f"begin_index: expected an int in [0, {len(self._entries)}), got {begin_index!r}")
        kind, i, s = self._entries[begin_index][:3]
        if kind != "step" or s != 0:
            raise ValueError(f"begin_index: entry {begin_index} is stage {s} of step {i}; expected the first stage of a step")
        if i > 0:
            sub = self._build_plan(torch.device("cpu"), torch.float64, self.diffcore_times[i:])
            tail = [e[1] - i for e in self._entries[begin_index:]]
            if getattr(sub, "prelude", None) is not None or tail != [j for j in range(sub.num_steps) for _ in sub.stages(j)]:
                raise ValueError(f"begin_index: {self.solver.name} started at step {i} has other stages than the "
                                 "rest of the full run (or a churn of its start); use set_timesteps on the shorter grid")
        self._begin_index = begin_index
        self._restart()

    # -- protocol -------------------------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the sample is already the network's input (VP / flow-matching state)."""
        return sample

    def model_timestep(self, t):
        """The network timestep of diffcore times ``t`` (VP: ``N·t − 1``; flow matching: ``N·t``)."""
        N = self.config.num_train_timesteps
        return t * N - 1 if not self._flow else t * N

    def make_plan(self, device=None, dtype: torch.dtype = torch.float32):
        """The immutable diffcore plan of the current grid on ``device``/``dtype`` (the thread-safe path:
        one ``plan.init_state(x, noise)`` per run, the loop of ``diffcore.sample``). Its model times are
        diffcore times; :meth:`model_timestep` converts them for the network."""
        if self.diffcore_times is None:
            raise RuntimeError("make_plan: call set_timesteps first")
        return self._build_plan(as_device(device), dtype)

    def copy(self) -> "DiffcoreScheduler":
        """A scheduler with this configuration and grid (sharing the immutable plans) and a fresh run
        state: one per request or thread, since :meth:`step` mutates its scheduler."""
        other = self.__class__.from_config(self.config)
        other._shift = self._shift
        if self._entries is not None:
            for name in ("num_inference_steps", "timesteps", "sigmas", "diffcore_times", "_entries",
                         "_ts_host"):
                setattr(other, name, getattr(self, name))
            other._plans = self._plans  # plans are immutable; new keys added by either are valid for both
        return other

    def _check_timestep(self, timestep, k: int) -> None:
        if isinstance(timestep, torch.Tensor):
            if timestep.device.type != "cpu" or timestep.numel() == 0:
                return  # reading a device tensor would synchronize
            vals = timestep.detach().reshape(-1).double()
            got_lo, got_hi = float(vals.min()), float(vals.max())
        elif isinstance(timestep, (int, float, np.integer, np.floating)) and not isinstance(timestep, bool):
            got_lo = got_hi = float(timestep)
        else:
            raise TypeError(f"timestep: expected an entry of scheduler.timesteps (number or tensor), got "
                            f"{type(timestep).__name__}")
        want = self._ts_host[k]
        want = int(want) if want == int(want) else want
        tol = 1e-4 * max(1.0, abs(want))
        if abs(got_lo - want) > tol or abs(got_hi - want) > tol:
            raise ValueError(f"timestep: expected {want} (entry {k} of scheduler.timesteps; step() follows the "
                             f"timesteps in order), got {got_lo if got_lo == got_hi else (got_lo, got_hi)}")

    def _start(self, sample: torch.Tensor, generator) -> None:
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        times = None
        if self._begin_index:
            i0 = self._entries[self._begin_index][1]
            times = self.diffcore_times[i0:]
            if times.numel() < 2:
                raise ValueError("begin_index: no solver step left after it")
        plan = self._build_plan(sample.device, dtype, times)
        x = sample.detach().to(dtype)
        if plan.__class__.__name__ == "V3Plan":
            noise = None
        elif not getattr(plan, "noise_draws", 0):
            noise = None
        elif isinstance(generator, (list, tuple)):
            if len(generator) != sample.shape[0]:
                raise ValueError(f"generator: expected one generator per sample ({sample.shape[0]}), got {len(generator)}")
            draws = [torch.cat([torch.randn((1,) + tuple(sample.shape[1:]), generator=g, device=g.device, dtype=dtype)
                                for g in generator]) for _ in range(plan.noise_draws)]
            noise = Noise(noise=torch.stack(draws).to(sample.device))
        elif generator is not None:
            noise = Noise(generator=generator)
        else:
            noise = Noise()
        self._plan = plan
        self._state = plan.init_state(x, noise) if noise is not None else plan.init_state(x)
        self._k0 = self._begin_index or 0
        self._started = True

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, **kwargs) -> Union[SchedulerOutput, tuple]:
        """Apply the solver to the model output at the current entry of ``timesteps``; returns the
        network input of the next entry (the next stage's input within a multi-stage step), after the
        last entry the sample. Extra keyword arguments of other schedulers' ``step`` (``eta``,
        ``s_churn``, ...) are rejected: their effect is a diffcore solver option (``solver_options``)."""
        if kwargs:
            raise TypeError(f"step: unexpected keyword arguments {sorted(kwargs)}; sampler options such as eta or s_churn "
                            "are diffcore solver options (DiffcoreScheduler.from_config(..., solver_options={...}))")
        if self._entries is None:
            raise RuntimeError("step: call set_timesteps before step (the scheduler has no grid yet)")
        if not isinstance(sample, torch.Tensor) or not sample.is_floating_point():
            raise TypeError("sample: expected a floating-point torch tensor")
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"model_output: expected a torch tensor, got {type(model_output).__name__}")
        if not self._started:
            self._start(sample, generator)
        k = self._k0 + self._k
        if k >= len(self._entries):
            raise RuntimeError(f"step: all {len(self._entries)} entries of timesteps have been stepped; call "
                               "set_timesteps to start a new sampling loop")
        self._check_timestep(timestep, k)
        if self.config.variance_type in ("learned", "learned_range") and model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, :sample.shape[1]]  # the network's variance channels are not used
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: expected the shape of sample {tuple(sample.shape)}, got "
                             f"{tuple(model_output.shape)}")
        st = self._state
        if st.x.shape != sample.shape:
            raise ValueError(f"sample: the loop started with shape {tuple(st.x.shape)}, got {tuple(sample.shape)}")
        kind, i, s, _, _, cx, cm = self._entries[k]
        if self._begin_index:
            i -= self._entries[self._begin_index][1]
        if kind == "prelude":  # the churn of the start was applied by init_state; this output is not used
            out = st.x
        else:
            if generator is not None and not isinstance(generator, (list, tuple)) and st.noise.kind == "generator" \
                    and generator is not st.noise.generator:
                st.noise = Noise(generator=generator)
            buf = st.model_input(s)
            if sample.data_ptr() != buf.data_ptr():  # the pipeline may have edited the sample (inpainting)
                buf.copy_(sample)
            m = model_output
            if self.config.clip_sample or self.config.thresholding:
                m = self._clip(cx * buf + cm * m.to(buf.dtype))
            self._plan.step(st, i, s, m)
            nxt = self._entries[k + 1] if k + 1 < len(self._entries) else None
            out = st.model_input(s + 1) if (nxt is not None and nxt[0] == "step" and nxt[1] == self._entries[k][1]
                                            and nxt[2] == s + 1) else st.x
        self._k += 1
        prev = out.to(dtype=sample.dtype, copy=True)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.thresholding:  # diffusers' _threshold_sample
            B = x0.shape[0]
            flat = x0.reshape(B, -1)
            s = torch.quantile(flat.abs(), cfg.dynamic_thresholding_ratio, dim=1)
            s = torch.clamp(s, min=1, max=cfg.sample_max_value).reshape((B,) + (1,) * (x0.dim() - 1))
            return torch.clamp(x0, -s, s) / s
        return x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)

    # -- forward process ----------------------------------------------------------------------------
    def _times_of(self, timesteps) -> torch.Tensor:
        ts = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).reshape(-1)
        if self._entries is not None:  # a listed entry means its level (Karras grids round the listed index)
            listed = {float(e[3]): e[4] for e in reversed(self._entries)}
            t = [listed.get(float(v)) for v in ts.tolist()]
        else:
            t = [None] * ts.numel()
        N = self.config.num_train_timesteps
        out = []
        for v, tv in zip(ts.tolist(), t):
            if tv is None:
                if not (0 <= v <= (N if self._flow else N - 1)):
                    raise ValueError(f"timesteps: expected training timesteps in [0, {N - 1}], got {v}")
                tv = v / N if self._flow else (v + 1) / N
            out.append(tv)
        return torch.tensor(out, dtype=torch.float64)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The forward process ``α(t)·x0 + σ(t)·noise`` at training timesteps (an entry of ``timesteps``
        maps to its grid level). Reads ``timesteps`` on the host: call it outside the sampling loop."""
        t = self._times_of(timesteps)
        v = self.schedule.eval(t)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        a = v.alpha.to(original_samples.device, original_samples.dtype).reshape(shape)
        s = v.sigma.to(original_samples.device, original_samples.dtype).reshape(shape)
        return a * original_samples + s * noise

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """Flow matching's name of :meth:`add_noise` (``FlowMatchEulerDiscreteScheduler.scale_noise``)."""
        return self.add_noise(sample, noise, timestep)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

