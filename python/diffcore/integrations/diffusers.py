"""A diffusers scheduler backed by diffcore plans: swap one object in a diffusers pipeline and sample
with any fixed-grid diffcore solver (deterministic or stochastic), each step one fused ``plan.step``.

    from diffcore.integrations.diffusers import DiffcoreScheduler
    pipe.scheduler = DiffcoreScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m")
    image = pipe(...).images

Protocol (diffusers' ``SchedulerMixin``/``ConfigMixin``): ``set_timesteps(num_inference_steps |
timesteps | sigmas, device, mu)``, then for each ``t`` in ``timesteps`` the pipeline evaluates the
network at ``(scale_model_input(sample, t), t)`` and calls ``step(model_output, t, sample, eta=0.0,
use_clipped_model_output=None, generator=None)``, which returns ``prev_sample``.

The source scheduler. ``from_config`` reads the class a config comes from (its ``_class_name``; extra
keys are tolerated, so the usual chain ``PNDMScheduler`` hub config → ``DPMSolverMultistepScheduler.
from_config`` → ours keeps DPM-Solver's grid), builds that diffusers scheduler from the config and
records its full config as ``_source_config`` (a DiffcoreScheduler re-created from its own config keeps
it). ``set_timesteps`` runs the source's own ``set_timesteps`` and reads what it computes —
``timesteps`` (handed to the network unchanged), ``sigmas`` and ``alphas_cumprod`` — so every grid
option (``timestep_spacing``, ``steps_offset``, the Karras / exponential / beta / λ sigmas,
``final_sigmas_type``, flow shifts, ``rescale_betas_zero_snr``, ...) and every diffusers upgrade carries
over. Without ``solver=``, the solver is the source's own method, so each ``step()`` output equals
the source's given the same model outputs (float32 rounding; stochastic methods draw their noise from
the passed ``generator`` as diffusers does):

=====================================  ===================================================================
source class                           diffcore solver
=====================================  ===================================================================
DDIMScheduler                          ``ddim``; ``step(eta > 0)``: ``ddim_eta`` (with clipping, the
                                       unclipped ε̂ unless ``use_clipped_model_output``)
DDPMScheduler                          ``ddpm`` (``fixed_small``, ``fixed_small_log``; ``fixed_large``:
                                       ``variance="beta"``, plus diffusers' β-noise at a last step
                                       from t > 0, drawn from the passed ``generator``)
DPMSolverMultistepScheduler            ``dpmpp_{1,2m,3m}``; ``dpmsolver``: ``dpmpp_1`` (both DDIM),
                                       ``dpm_solver_{2m,3m}``; ``sde-dpmsolver``: ``sde_dpm_solver``
                                       (order 1-2); ``sde-dpmsolver++``: ``sde_dpmpp`` (order 1, 3),
                                       ``dpmpp_2m_sde`` (order 2) (docs/diffusers.md)
DPMSolverSinglestepScheduler           ``dpmpp_singlestep``, ``dpm_solver_singlestep``,
                                       ``sde_dpmpp_singlestep``: its order list, the stages of an order-k
                                       step on the k − 1 listed levels inside it
DDIMInverseScheduler                   ``dpm_solver_1`` (DDIM, noise form) on the increasing grid; its
                                       first step from ᾱ = 1 in diffusers' arithmetic
DPMSolverMultistepInverseScheduler     as DPMSolverMultistepScheduler, on the increasing grid
UniPCMultistepScheduler                ``unipc_{1,2,3}`` (bh1/bh2, ``predict_x0``)
EulerDiscreteScheduler                 ``euler`` in σ/α (Karras et al. 2022, Alg. 2; ``step(s_churn > 0)``
                                       with its noise from the passed ``generator``) †
HeunDiscreteScheduler                  ``heun`` in σ/α †
EulerAncestralDiscreteScheduler        ``euler_ancestral`` †
EDMEulerScheduler                      ``euler`` on diffcore's EDM schedule (σ_max from the config), the
                                       network preconditioned as diffusers (c_in, c_skip, c_out, c_noise) †
LMSDiscreteScheduler                   linear multistep in σ, Lagrange-integrated weights (orders 1-4) ‡
KDPM2DiscreteScheduler                 DPM-Solver-2 in σ with the log-σ midpoint, interleaved stages ‡
KDPM2AncestralDiscreteScheduler        the same to σ_down, plus σ_up noise from the ``generator`` ‡
DEISMultistepScheduler                 DEIS with the log-ρ polynomial, orders 1-3 ‡ (as a float64 plan:
                                       ``deis_k`` with ``solver_options={"basis": "logrho"}``)
PNDMScheduler                          PLMS with its Runge–Kutta warm-up (``skip_prk_steps`` False) or
                                       its two-evaluation first step (True), repeated timesteps listed ‡
EDMDPMSolverMultistepScheduler         as DPMSolverMultistepScheduler, on the EDM schedule
FlowMatchEulerDiscreteScheduler        ``euler`` (``prediction_type="flow_prediction"``);
                                       ``stochastic_sampling``: x̂0 re-noised to each level ‡
FlowMatchHeunDiscreteScheduler         ``heun``
=====================================  ===================================================================

† and ‡: the step runs in diffusers' own arithmetic (float32, its order of operations), one function per
method in :mod:`diffcore.integrations.diffusers_sigma`, indexing the levels the source's
``set_timesteps`` computed: at 1-3 steps from σ = 14.6 (SD), 80 (EDM) or 4096 (zero SNR) diffusers'
float32 cancellation puts its output up to 9e-4 off a float64 plan, and the drop-in returns diffusers'
numbers. † keeps its diffcore plan for :meth:`DiffcoreScheduler.make_plan` and ``diffcore.sample``;
‡ has no plan (``make_plan`` raises; a thread takes its own :meth:`DiffcoreScheduler.copy`). Their noise
comes from the ``generator`` passed to each ``step`` (without one, torch's global generator, as in
diffusers), not from diffcore's Philox streams. ``add_noise``
looks the timestep up in the source's schedule as diffusers does; a timestep not listed there raises
naming ``timesteps``.

Everything else raises ``ValueError`` naming the class or the config attribute: ``solver_order=3``
with ``"sde-dpmsolver"`` (and EDM's ``"sde-dpmsolver++"``), whose third-order step fails in diffusers,
the inverse schedulers' stochastic ``algorithm_type``, DDIMInverse's ``trailing`` spacing with a step count
not dividing ``num_train_timesteps``, KDPM2 ancestral grids listing NaN timesteps, UniPC's
``solver_p`` / ``disable_corrector``, DDIM with ``timestep_spacing="linspace"`` (it steps t → t − N//n,
not to the next listed timestep), DDIM/DDPM with ``rescale_betas_zero_snr`` (ᾱ = 0), a multistep
source whose last listed level equals the final one (``final_sigmas_type="sigma_min"`` with Karras
sigmas), DDPM's ``fixed_large`` with clipping, UniPC with ``predict_x0=False`` and ``thresholding`` (diffusers ignores the
thresholding). ``solver=`` runs another diffcore method on the source's grid (a deliberate difference);
for PNDM, DEIS, LMS and KDPM2 configs on the grid of the class sharing their grid code (DDIM,
DPMSolverMultistep ending at σ_min as DEIS does, Euler).

The sample is the source's: the VP state ``x = √ᾱ·x0 + √(1 − ᾱ)·ε`` (flow matching ``(1 − σ)x0 + σε``)
with ``init_noise_sigma = 1`` and an identity ``scale_model_input``, except for the σ-space sources
(Euler, Heun, Euler ancestral) whose sample is ``x/α`` (``init_noise_sigma`` = σ_max-ish,
``scale_model_input`` multiplies by α), converted at each step. ``prediction_type``: ``epsilon``,
``v_prediction``, ``sample`` and ``flow_prediction`` (diffcore's ``"velocity"`` on the rectified-flow
path). ``clip_sample`` / ``thresholding`` act on x̂0 as in diffusers.

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

Not available: the adaptive solvers (``dpm_adaptive``, ``dpm_adaptive_ps``, ``dopri5``), which choose
their steps as they go while the protocol lists every model time up front (use :func:`diffcore.sample`);
``dpm_solver_v3`` runs when ``solver_options={"statistics": ems}`` gives it its EMS statistics.
Solvers that need λ finite at the start (noise-prediction solvers: ``deis_*``, ``dpm_solver_*``) cannot
start a flow-matching grid at σ = 1 (α = 0) and raise there.
"""
from __future__ import annotations

import copy
import inspect
import math
import threading
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np
import torch

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils.torch_utils import randn_tensor
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .. import solvers as _solvers
from . import diffusers_sigma as _sigma
from .._device import as_device
from ..noise import Noise
from ..param import conversion_coefs
from ..schedules import EDM, RectifiedFlow, VPDiscrete
from ..solvers.protocol import Kind

__all__ = ["DiffcoreScheduler", "FAMILIES"]

#: diffusers prediction_type → diffcore prediction name
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}

#: the diffusers scheduler classes whose method the drop-in reproduces → the kind of grid they build
#: ("ddim": DDIM's own steps t → t − N//n; "ddpm": consecutive listed timesteps; "sigmas": the levels
#: of ``scheduler.sigmas``; "sigmas_ve": the same, with diffusers' sample x/α (Karras et al. 2022's
#: σ-space; ``init_noise_sigma`` > 1, ``scale_model_input`` multiplies by α); "flow_match": flow-matching σ)
FAMILIES = {
    "DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "DDIMInverseScheduler": "ddim_inverse",
    "DPMSolverSinglestepScheduler": "sigmas", "DPMSolverMultistepInverseScheduler": "sigmas",
    "DPMSolverMultistepScheduler": "sigmas", "UniPCMultistepScheduler": "sigmas",
    "EulerDiscreteScheduler": "sigmas_ve", "HeunDiscreteScheduler": "sigmas_ve",
    "EulerAncestralDiscreteScheduler": "sigmas_ve",
    "EDMEulerScheduler": "edm", "EDMDPMSolverMultistepScheduler": "edm",
    "FlowMatchEulerDiscreteScheduler": "flow_match", "FlowMatchHeunDiscreteScheduler": "flow_match",
    "LMSDiscreteScheduler": "stepped", "KDPM2DiscreteScheduler": "stepped", "KDPM2AncestralDiscreteScheduler": "stepped",
    "DEISMultistepScheduler": "stepped", "PNDMScheduler": "stepped",
}
#: the source class whose grid a direct construction (no ``_source_config``) follows, per timestep convention
_CONVENTION_SOURCE = {"ddim": "DDIMScheduler", "dpmsolver": "DPMSolverMultistepScheduler",
                      "flow_match": "FlowMatchEulerDiscreteScheduler"}
#: classes diffusers ships that the drop-in does not reproduce, with why (the error names them)
_UNSUPPORTED = {
}
#: options that act through the source scheduler's grid or method: given for a source class without them,
#: they would be silently ignored, so they raise
_SOURCE_ONLY = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "timestep_spacing",
                "steps_offset", "final_sigmas_type", "rescale_betas_zero_snr", "lambda_min_clipped",
                "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "solver_order",
                "algorithm_type", "solver_type", "euler_at_final", "predict_x0", "use_flow_sigmas", "flow_shift",
                "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len",
                "invert_sigmas", "shift_terminal", "time_shift_type", "stochastic_sampling")
#: classes not reproduced whose grid code another (reproduced) class shares: with an explicit ``solver=``
#: (a deliberate diffcore method), that class's grid
_GRID_FALLBACK = {"PNDMScheduler": "DDIMScheduler", "DEISMultistepScheduler": "DPMSolverMultistepScheduler",
                  "LMSDiscreteScheduler": "EulerDiscreteScheduler", "KDPM2DiscreteScheduler": "EulerDiscreteScheduler",
                  "KDPM2AncestralDiscreteScheduler": "EulerDiscreteScheduler"}
_ADAPTIVE = ("dpm_adaptive", "dpm_adaptive_ps")
#: the source scheduler from_config built, handed to the __init__ it calls (per thread)
_PREBUILT = threading.local()
_PRIVATE = ("_class_name", "_diffusers_version", "_use_default_values")


@dataclass
class _Grid:
    """``model_ts`` [n]: the source's timesteps (what the network sees); ``times`` [n + 1]: the diffcore
    times of their levels plus the final one (the last may equal the one before: a zero-length step);
    ``integral``: the source lists integer timesteps."""

    model_ts: np.ndarray
    times: np.ndarray
    integral: bool


def _diffusers_class(name: str):
    import diffusers  # noqa: PLC0415

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(f"_class_name: {name!r} is not a diffusers scheduler class")
    return cls


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError, RuntimeError):  # arrays: compare as lists
        return np.asarray(a).tolist() == np.asarray(b).tolist()


def _init_params(cls) -> set:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


def _default_solver(src: str, cfg: dict) -> str:
    """The diffcore method that IS the source class's method (raises naming the config attribute
    that selects a method diffcore does not have)."""
    order = int(cfg.get("solver_order", 2) or 2)
    if src == "DDIMScheduler":
        return "ddim"
    if src == "DDPMScheduler":
        vt = cfg.get("variance_type", "fixed_small")
        if vt not in ("fixed_small", "fixed_small_log", "fixed_large"):
            raise ValueError(f"variance_type: DDPMScheduler's {vt!r} variance has no diffcore method (the ddpm solver "
                             "draws the posterior variance β̃, 'fixed_small', or β, 'fixed_large'); pass solver= to "
                             "choose one explicitly")
        if vt == "fixed_large" and (cfg.get("clip_sample") or cfg.get("thresholding")):
            # measured 0.1 relative off diffusers' step: diffcore's σ² = β step keeps its marginals through the
            # ε form, which a clipped x̂0 no longer matches; refuse rather than differ silently
            raise ValueError("variance_type: DDPMScheduler's 'fixed_large' with clip_sample or thresholding has no "
                             "matching diffcore method; use variance_type='fixed_small' or turn clipping off")
        return "ddpm"
    if src in ("DPMSolverMultistepScheduler", "DPMSolverMultistepInverseScheduler"):
        algo = cfg.get("algorithm_type", "dpmsolver++")
        if order not in (1, 2, 3):
            raise ValueError(f"solver_order: expected 1, 2 or 3, got {order}")
        if algo == "dpmsolver++":
            return {1: "dpmpp_1", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order]
        if algo == "dpmsolver":  # first-order DPM-Solver and DPM-Solver++ are both DDIM (Lu et al. 2022b, §3)
            return {1: "dpmpp_1", 2: "dpm_solver_2m", 3: "dpm_solver_3m"}[order]
        if src == "DPMSolverMultistepInverseScheduler":
            raise ValueError(f"algorithm_type: DPMSolverMultistepInverseScheduler's {algo!r} adds noise while it "
                             "integrates from data to noise; diffcore's stochastic samplers integrate the reverse "
                             "process only (use 'dpmsolver++' or 'dpmsolver' to invert)")
        if algo == "sde-dpmsolver" and order == 3:
            # diffusers' third-order update has no sde-dpmsolver branch: its step fails (UnboundLocalError) at
            # the first third-order step
            raise ValueError("solver_order: DPMSolverMultistepScheduler has no third-order sde-dpmsolver update "
                             "(diffusers' step fails there); use solver_order=1 or 2, or 'sde-dpmsolver++'")
        if algo == "sde-dpmsolver":
            return "sde_dpm_solver"
        if algo == "sde-dpmsolver++":
            return "dpmpp_2m_sde" if order == 2 else "sde_dpmpp"
        raise ValueError(f"algorithm_type: DPMSolverMultistepScheduler's {algo!r} has no matching diffcore method")
    if src == "DPMSolverSinglestepScheduler":
        algo = cfg.get("algorithm_type", "dpmsolver++")
        if order not in (1, 2, 3):
            raise ValueError(f"solver_order: expected 1, 2 or 3, got {order}")
        names = {"dpmsolver++": "dpmpp_singlestep", "dpmsolver": "dpm_solver_singlestep",
                 "sde-dpmsolver++": "sde_dpmpp_singlestep"}
        if algo not in names:
            raise ValueError(f"algorithm_type: DPMSolverSinglestepScheduler's {algo!r} has no matching diffcore method")
        if algo == "dpmsolver" and cfg.get("thresholding"):
            # its noise-form thresholding reads α, σ at an undefined timestep (all 1000 of them): diffusers' step fails
            raise ValueError("thresholding: DPMSolverSinglestepScheduler's 'dpmsolver' thresholding fails in diffusers "
                             "(a shape error in convert_model_output); use algorithm_type='dpmsolver++'")
        return names[algo]
    if src == "DDIMInverseScheduler":
        # DDIM in its noise form (DPM-Solver-1): from nearly clean levels the data form's (σ_t/σ_s)·x and x̂0 terms
        # cancel in float32 (σ_t/σ_s ≈ 100 at the first steps), the noise form's (α_t/α_s)·x and ε̂ terms do not
        return "dpm_solver_1"
    if src == "UniPCMultistepScheduler":
        if cfg.get("solver_p") is not None:
            raise ValueError("solver_p: UniPC with another predictor has no diffcore method")
        if cfg.get("disable_corrector"):
            raise ValueError("disable_corrector: UniPC without its corrector at some steps has no diffcore method")
        if not cfg.get("predict_x0", True) and cfg.get("thresholding"):
            # diffusers thresholds only the data prediction: with predict_x0=False its UniPC ignores
            # thresholding, while diffcore's clipping acts on x̂0 of every solver
            raise ValueError("thresholding: UniPCMultistepScheduler with predict_x0=False ignores thresholding in "
                             "diffusers; diffcore has no such combination (drop thresholding or use predict_x0=True)")
        return f"unipc_{min(max(order, 1), 3)}"
    if src == "DEISMultistepScheduler":
        return f"deis_{min(max(order, 1), 3)}"
    if src == "FlowMatchEulerDiscreteScheduler":
        if cfg.get("stochastic_sampling"):
            raise ValueError("stochastic_sampling: FlowMatchEulerDiscreteScheduler's stochastic sampling (re-noising "
                             "x̂0 at each level) has no diffcore method; pass solver= to choose a stochastic diffcore "
                             "solver explicitly")
        return "euler"
    if src == "FlowMatchHeunDiscreteScheduler":
        return "heun"
    if src in ("EulerDiscreteScheduler", "HeunDiscreteScheduler"):
        if cfg.get("timestep_type", "discrete") != "discrete" and cfg.get("prediction_type") != "v_prediction":
            pass  # the network's timesteps are the source's; the method is unchanged
        return "euler" if src == "EulerDiscreteScheduler" else "heun"
    if src == "EulerAncestralDiscreteScheduler":
        return "euler_ancestral"
    if src == "EDMEulerScheduler":
        return "euler"
    if src == "EDMDPMSolverMultistepScheduler":
        if cfg.get("algorithm_type") == "sde-dpmsolver++" and order == 3:
            # its third-order update has only the dpmsolver++ branch: diffusers' step fails (UnboundLocalError)
            raise ValueError("solver_order: EDMDPMSolverMultistepScheduler has no third-order sde-dpmsolver++ update "
                             "(diffusers' step fails there); use solver_order=1 or 2")
        return _default_solver("DPMSolverMultistepScheduler", cfg)
    raise ValueError(f"_class_name: {src} has no diffcore method")


def _lower_every_final(solver) -> None:
    """UniPCMultistepScheduler lowers the order of its last steps (order ≤ steps left) at any step count,
    where diffcore follows DPM-Solver's rule (below 15 steps only): this solver instance takes UniPC's."""
    base = solver._orders

    def orders(M, final_zero, first=0):
        return [min(o, M - i) for i, o in enumerate(base(M, final_zero, first))]

    solver._orders = orders


def _monotone_alphas_cumprod(acp: torch.Tensor):
    """ᾱ for diffcore's VP schedule (strictly decreasing in (0, 1)) and the indices changed to get it.
    ``rescale_betas_zero_snr`` ends at ᾱ = 0, which ``DPMSolverMultistepScheduler`` clamps to 2⁻²⁴ —
    above the ᾱ of the indices just before it (linear betas): those are replaced by a geometric ramp
    down to the clamped value; a grid that lands on one of them raises (rescale_betas_zero_snr)."""
    a = acp.detach().double().cpu().clone()
    last = float(a[-1])
    bad = np.flatnonzero(a[:-1].numpy() <= last)
    if bad.size:
        j = int(bad[0])
        if j == 0:
            raise ValueError("rescale_betas_zero_snr: every ᾱ is at or below the clamped last one")
        a[j:-1] = torch.from_numpy(np.geomspace(float(a[j - 1]), last, a.numel() - j + 1)[1:-1].copy())
        return a, np.arange(j, a.numel() - 1)
    return a, np.zeros(0, dtype=np.int64)


def _source_class(config: dict) -> Optional[str]:
    """The scheduler class a config comes from: its ``_class_name`` (configs loaded from the hub or made
    by ``from_config`` carry it), else (a config dict built in code) a class of FAMILIES whose
    ``__init__`` takes every one of its keys."""
    name = config.get("_class_name")
    if name:
        return name
    keys = {k for k in config if not k.startswith("_")}
    for name in FAMILIES:
        if keys <= _init_params(_diffusers_class(name)):
            return name
    return None


class DiffcoreScheduler(SchedulerMixin, ConfigMixin):
    """diffusers scheduler running a diffcore solver (see the module docstring for the protocol, the
    accepted configurations, the conventions and the threading rules).

    Args (diffcore's own; the others are diffusers' scheduler config keys, same meaning):
        solver: a name of ``diffcore.solvers.available()`` (default: the source class's own method; built
            directly without ``_source_config``: ``dpmpp_2m``, flow matching ``euler``).
        solver_options: keyword options of ``diffcore.solvers.get`` (e.g. ``{"solver_type": "heun"}``,
            ``{"eta": 0.5}``); override the ones derived from the config (``solver_type``,
            ``lower_order_final``, UniPC's ``predict_x0``).
        timestep_convention: without ``_source_config``, whose grid to follow: ``"ddim"``
            (DDIMScheduler), ``"dpmsolver"`` (DPMSolverMultistepScheduler) or ``"flow_match"``
            (FlowMatchEulerDiscreteScheduler); default ``"flow_match"`` for ``prediction_type=
            "flow_prediction"``, ``"dpmsolver"`` with ``use_flow_sigmas``, else ``"ddim"``.
        _source_config (a private config key, given by ``from_config``): the config of the diffusers
            scheduler replaced, with its ``_class_name``; its grid and method are reproduced.
    """

    _compatibles: List[str] = list(FAMILIES)
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
        # the replaced scheduler's config: a private config key, so that a diffusers class built from
        # this config (DDIMPipeline converts its scheduler) drops it without an "ignored attributes" warning
        source_config = self.config.get("_source_config")
        direct = source_config is None
        if direct:  # built in code: follow the grid of the convention's diffusers class
            conv = timestep_convention
            if conv is None:
                conv = "dpmsolver" if use_flow_sigmas else ("flow_match" if prediction_type == "flow_prediction" else "ddim")
            if conv not in _CONVENTION_SOURCE:
                raise ValueError(f"timestep_convention: expected one of {tuple(_CONVENTION_SOURCE)}, got {conv!r}")
            name = _CONVENTION_SOURCE[conv]
            own = dict(self.config)
            source_config = {k: own[k] for k in _init_params(_diffusers_class(name)) if k in own}
            source_config["_class_name"] = name
        elif not isinstance(source_config, dict) or not source_config.get("_class_name"):
            raise ValueError("_source_config: expected the config dict of a diffusers scheduler, with its _class_name")
        name = source_config["_class_name"]
        if name not in FAMILIES:
            raise ValueError(f"_class_name: {name} is not reproduced by DiffcoreScheduler "
                             f"({_UNSUPPORTED.get(name, 'no matching diffcore method')})")
        src_cls = _diffusers_class(name)
        src_cfg = {k: v for k, v in source_config.items() if k in _init_params(src_cls)}
        if "rescale_betas_zero_snr" in src_cfg and src_cfg["rescale_betas_zero_snr"] and name in (
                "DDIMScheduler", "DDPMScheduler", "DDIMInverseScheduler"):
            raise ValueError(f"rescale_betas_zero_snr: {name} puts ᾱ = 0 (infinite noise) at the last training index, "
                             "where no VP solver can start; DPMSolverMultistepScheduler and UniPCMultistepScheduler "
                             "clamp it to 2⁻²⁴ and are reproduced")
        bs = src_cfg.get("beta_schedule")
        if bs is not None and src_cfg.get("trained_betas") is None and bs not in ("linear", "scaled_linear",
                                                                                "squaredcos_cap_v2"):
            raise ValueError(f"beta_schedule: expected 'linear', 'scaled_linear' or 'squaredcos_cap_v2' (or "
                             f"trained_betas), got {bs!r}")
        try:
            pre = getattr(_PREBUILT, "source", None)
            _PREBUILT.source = None
            if pre is not None and pre[0] == name and all(_same(pre[1].get(k), v) for k, v in src_cfg.items()):
                self._src = pre[2]
            else:
                self._src = src_cls(**src_cfg)
        except (NotImplementedError, ValueError, TypeError) as e:
            raise ValueError(f"_source_config: {name} refused this configuration ({e})") from e
        self._src_name = name
        self._kind = FAMILIES[name]
        self._convention = {"ddim": "ddim", "ddpm": "ddim", "sigmas": "dpmsolver", "sigmas_ve": "dpmsolver",
                            "flow_match": "flow_match", "edm": "edm", "stepped": "dpmsolver",
                            "ddim_inverse": "ddim"}[self._kind]
        self._edm = self._kind == "edm"  # EDM's σ-space (α = 1) and its preconditioned network (Karras et al. 2022)
        self._ve = self._kind == "sigmas_ve"
        self._inverse = name in ("DDIMInverseScheduler", "DPMSolverMultistepInverseScheduler")  # data → noise
        self._flow = self._kind == "flow_match" or bool(getattr(self._src.config, "use_flow_sigmas", False))
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
        if self._edm:
            sc = self._src.config
            self.schedule = EDM(sigma_min=float(sc.sigma_min), sigma_max=float(sc.sigma_max))  # t = σ, α = 1
            self.alphas_cumprod = None
            self._patched = np.zeros(0, dtype=np.int64)
        elif self._flow:
            self.schedule = RectifiedFlow(shift=1.0)  # diffusers' x = (1 − σ)x0 + σε: t = σ
            self.alphas_cumprod = None
            self._patched = np.zeros(0, dtype=np.int64)
        else:
            acp, self._patched = _monotone_alphas_cumprod(self._src.alphas_cumprod)
            self.alphas_cumprod = self._src.alphas_cumprod.clone()
            self.schedule = VPDiscrete(alphas_cumprod=acp)
        self._replicates = solver is None and not direct
        if self._kind == "stepped" and not self._replicates:
            raise ValueError(f"solver: {name}'s grid interleaves or repeats its levels for its own method; an explicit "
                             f"solver runs on the grid of {_GRID_FALLBACK[name]} (DiffcoreScheduler.from_config(config, "
                             "solver=...))")
        # σ-space sources replicated in diffusers' own arithmetic, and the methods without a diffcore plan
        # (diffusers_sigma); Euler, Heun and EDM Euler keep their plan for make_plan / diffcore.sample
        stochastic_flow = name == "FlowMatchEulerDiscreteScheduler" and bool(self._src.config.stochastic_sampling)
        stepped = self._replicates and (name in _sigma.STEPPERS and (name != "FlowMatchEulerDiscreteScheduler"
                                                                     or stochastic_flow))
        self._stepper = _sigma.STEPPERS[name](self._src) if stepped else None
        if self._kind == "stepped" or stochastic_flow and stepped:
            self.solver = None
        else:
            if solver is None:  # the source's own method; built in code: diffcore's default (the grid is the source's)
                solver = (("euler" if self._flow else "dpmpp_2m") if direct
                          else _default_solver(name, dict(self._src.config)))
            self.solver = self._make_solver(solver, solver_options)
            if (name == "UniPCMultistepScheduler" and self.solver.name.startswith("unipc")
                    and self.config.lower_order_final and hasattr(self.solver, "_orders")):
                _lower_every_final(self.solver)
        self._solver0 = self.solver
        self.prediction = _PREDICTIONS[prediction_type]
        self.order = int(self._src.order) if self._stepper is not None else int(getattr(self.solver, "stages", 1) or 1)
        if isinstance(self.solver, _solvers.GridSinglestep):
            self.order = 1  # its stages are the listed timesteps: one entry per inference step
        self.init_noise_sigma = float(self._src.init_noise_sigma) if (self._ve or self._edm) else 1.0
        self._shift = shift
        self._reset_grid()

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``, reading the source class from the config's ``_class_name`` (extra
        keys tolerated; a DiffcoreScheduler config keeps the source it recorded): the source scheduler
        is built from the config (with every value it holds, including those diffusers marks as
        defaults, since ``DDIMScheduler``'s defaults are not ``DPMSolverMultistepScheduler``'s) and
        recorded as ``_source_config``; the default solver is the source's method."""
        if isinstance(config, str) or config is None:
            return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        config = dict(config)
        src_cfg = config.get("_source_config")
        if isinstance(src_cfg, dict) and config.get("_class_name") == cls.__name__:
            src, base = src_cfg.get("_class_name"), dict(src_cfg)
        else:
            src, base = _source_class(config), config
        if src is None or src == cls.__name__:
            config.pop("_use_default_values", None)
            return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        if FAMILIES.get(src, "stepped") == "stepped" and src in _GRID_FALLBACK and kwargs.get("solver") is not None:
            src = _GRID_FALLBACK[src]  # an explicit diffcore solver on the grid of the class sharing its grid code
            # the keys naming the replaced method (DEIS' algorithm_type="deis") are not the grid's
            base = {k: v for k, v in base.items() if k not in ("algorithm_type", "solver_type")}
            if src == "DPMSolverMultistepScheduler":  # DEIS' grid ends at the first training level, not σ = 0
                base["final_sigmas_type"] = "sigma_min"
        if src not in FAMILIES:
            raise ValueError(f"_class_name: {src} is not reproduced by DiffcoreScheduler "
                             f"({_UNSUPPORTED.get(src, 'no matching diffcore method')}); supported: {sorted(FAMILIES)}"
                             + (f"; with solver= the grid of {_GRID_FALLBACK[src]} is used" if src in _GRID_FALLBACK
                                else ""))
        src_cls = _diffusers_class(src)
        params = _init_params(src_cls)
        src_over = {k: v for k, v in kwargs.items() if k in params}
        for k, v in kwargs.items():
            if k in _SOURCE_ONLY and k not in params and v != inspect.signature(cls.__init__).parameters[k].default:
                raise ValueError(f"{k}: {src} has no such option (the grid is {src}'s own)")
        try:  # fills in the source's defaults
            built = src_cls(**{**{k: v for k, v in base.items() if k in params}, **src_over})
        except (NotImplementedError, ValueError, TypeError) as e:
            raise ValueError(f"_class_name: {src} refused this configuration ({e})") from e
        source = {k: v for k, v in built.config.items() if not k.startswith("_")}
        source["_class_name"] = src
        own = _init_params(cls)
        new = {k: v for k, v in source.items() if k in own}
        if src in ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"):
            new["prediction_type"] = "flow_prediction"
        for k in ("solver", "solver_options"):  # a DiffcoreScheduler config keeps its diffcore choices
            if config.get(k) is not None and config.get("_class_name") == cls.__name__:
                new[k] = config[k]
        new["_source_config"] = source
        new["_class_name"] = cls.__name__
        ours = {k: v for k, v in kwargs.items() if k not in params or k in own}
        # __init__ takes this instance instead of building the source again (KDPM2's construction runs its
        # set_timesteps over all 1000 training levels: about a second)
        _PREBUILT.source = (src, source, built)
        try:
            return super().from_config(new, return_unused_kwargs=return_unused_kwargs, **ours)
        finally:
            _PREBUILT.source = None

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' split of a config into ``__init__`` arguments, keeping the private ``_source_config``
        (diffusers' ``register_to_config`` records it before ``__init__`` runs)."""
        init_dict, unused, hidden = super().extract_init_dict(config_dict, **kwargs)
        if isinstance(config_dict.get("_source_config"), dict):
            init_dict["_source_config"] = config_dict["_source_config"]
            hidden.pop("_source_config", None)
        return init_dict, unused, hidden

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
        if key in ("sde_dpm_solver", "sde_dpmpp", "dpm_solver_singlestep", "dpmpp_singlestep", "sde_dpmpp_singlestep"):
            derived["order"] = int(cfg.solver_order)  # solvers whose order is an option (not in the name)
        if key.startswith(("dpmpp_1", "dpmpp_2m", "dpmpp_3m", "dpm_solver", "sde_dpm", "dpmpp_singlestep")) and \
                cfg.solver_type in ("heun", "taylor"):
            derived["solver_type"] = cfg.solver_type  # diffusers maps UniPC/DEIS' bh1/bh2/logrho to midpoint
        if key.startswith("unipc"):
            if cfg.solver_type in ("bh1", "bh2"):
                derived["variant"] = cfg.solver_type
            if not cfg.predict_x0:
                derived["predict_x0"] = False
        if key == "ddpm" and self._src_name == "DDPMScheduler" and cfg.variance_type == "fixed_large":
            derived["variance"] = "beta"  # the forward step's β (Ho et al. 2020, σ² = β)
        if key in ("euler", "heun") and not self._flow:
            derived["variable"] = "rho"  # in σ/α with the sample x/α, as diffusers' Euler and Heun (Karras et al. 2022)
        derived.update(options or {})
        try:
            solver = _solvers.get(key, **derived)
        except TypeError as e:
            raise TypeError(f"solver_options: {e} (options given to {key}: {sorted(derived)})") from e
        if solver.kind is not Kind.GRID:
            raise ValueError(f"solver: {name} chooses its step sizes while it runs, but a diffusers scheduler lists every "
                             f"model time in `timesteps` before the loop; use diffcore.sample(..., solver={name!r}) or a "
                             "fixed-grid solver")
        return solver

    # -- grid -----------------------------------------------------------------------------------------
    def _reset_grid(self) -> None:
        self._head = None
        self._eps_clip = None
        self._ddim_mix = None
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
        if getattr(self, "_stepper", None) is not None:
            self._stepper.reset()

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
        """Build the grid (the source scheduler's own, read from it), the diffcore plan on it and
        the list of model timesteps; reset the run state.

        Args:
            num_inference_steps: solver steps (model evaluations of a one-stage solver).
            device: where ``timesteps`` (and the first plan) live.
            timesteps: custom model timesteps (VP: integer training indices; flow matching: σ·N).
            sigmas: custom levels (VP: noise-to-signal ratios σ/α; flow matching: σ), one per step.
            mu: the dynamic shift of ``use_dynamic_shifting`` (flow matching ``e^μ``-shift).
        """
        if self._stepper is None:
            return self._set_plan_grid(num_inference_steps, device, timesteps, sigmas, mu)
        self._grid_args = dict(num_inference_steps=num_inference_steps, device=device, timesteps=timesteps,
                               sigmas=sigmas, mu=mu)
        self._plan_error = None
        if self.solver is not None:  # Euler, Heun, EDM Euler keep their plan for make_plan and diffcore.sample
            try:
                self._set_plan_grid(num_inference_steps, device, timesteps, sigmas, mu)
            except ValueError as e:  # a grid diffcore's plan refuses; the stepper still runs diffusers' method
                self._plan_error, self.diffcore_times = e, None
        src = self._run_source_set_timesteps(num_inference_steps, timesteps, sigmas, mu)
        if not bool(torch.isfinite(src.timesteps.double()).all()):  # KDPM2 ancestral's σ_down = 0 midpoints
            raise ValueError(f"num_inference_steps: {self._src_name} lists non-finite timesteps at this grid "
                             f"({src.timesteps.tolist()}), where its network would see NaN; use more steps")
        dev = as_device(device)
        self.timesteps = src.timesteps.to(dev)
        self._ts_host = src.timesteps.double().tolist()
        self.sigmas = getattr(src, "sigmas", None)
        self.num_inference_steps = src.num_inference_steps
        self.init_noise_sigma = float(getattr(src, "init_noise_sigma", 1.0))
        self._entries = list(range(len(self._ts_host)))  # one entry per listed timestep; the stepper indexes them
        self._begin_index = None
        self._restart()

    def _set_plan_grid(self, num_inference_steps, device, timesteps, sigmas, mu) -> None:
        grid = self._source_grid(num_inference_steps, timesteps, sigmas, mu)
        times = grid.times
        n = len(grid.model_ts)
        # a zero-length final step (DDIM's ᾱ_0 → ᾱ_0 after index 0, a last listed level at sigma_min): a
        # diffcore solver leaves it out with its network call; replicating DDIM or Euler, the network is
        # called there as in diffusers and the step is theirs (the identity, or DDIM's clipping of x̂0)
        tail = bool(abs(times[-1] - times[-2]) <= 1e-6 * abs(times[-2]))  # float32 vs float64 σ_min: equal
        tail = tail and self._kind != "ddim_inverse"  # its only repeated level is its first (the head below)
        keep_tail = tail and self._replicates and self._src_name in ("DDIMScheduler", "EulerDiscreteScheduler",
                                                                     "EDMEulerScheduler")
        if self._src_name == "DPMSolverMultistepInverseScheduler" and self._replicates:
            keep_tail = self._inverse_tail(tail, n)
        if tail and self._replicates and not keep_tail:
            raise ValueError(f"final_sigmas_type: the last listed level of {self._src_name} equals the final one, a "
                             "zero-length last step that its multistep update still counts (orders, corrector); "
                             "use final_sigmas_type='zero'")
        # DDPMScheduler.step adds β-noise (β = 1 − ᾱ_t/1, Ho et al. 2020 σ² = β) whenever t > 0, its last step
        # from t > 0 to ᾱ = 1 included (the SD config's last t is 1: 0.8 % to 5 % of the output); diffcore's ddpm
        # ends noise-free at σ = 0, so step() adds that last draw from the passed generator as diffusers does
        self._last_beta_noise = (self._src_name == "DDPMScheduler" and self.config.variance_type == "fixed_large"
                                 and self.solver.name == "ddpm" and getattr(self.solver, "variance", None) == "beta"
                                 and float(grid.model_ts[-1]) > 0)
        solve = times[:-1] if tail else times
        # DDIMInverseScheduler's first step leaves ᾱ = 1 (set_alpha_to_one) or stays at ᾱ_0 (timestep 0): no
        # plan starts there (λ = ∞, or a zero-length step), so step() takes it in diffusers' arithmetic (_head)
        head = self._kind == "ddim_inverse" and (times[0] == 0.0 or times[0] == times[1])
        if head:
            if self.prediction == "x0" and times[0] == 0.0:
                raise ValueError("prediction_type: DDIMInverseScheduler's first step from ᾱ = 1 (set_alpha_to_one) reads "
                                 "ε̂ = (x − x̂0)/0 from a 'sample' prediction (diffusers returns inf/nan); use "
                                 "set_alpha_to_one=False")
            self._head = (float(times[0]), float(times[1]), float(grid.model_ts[0]))
            solve, grid = solve[1:], _Grid(grid.model_ts[1:], grid.times[1:], grid.integral)
        else:
            self._head = None
        if head and len(solve) < 2:  # one step, from ᾱ = 1: nothing for a plan
            return self._set_head_only(grid, device)
        if (tail or head) and len(solve) < 2:
            raise ValueError("num_inference_steps: the grid has no step of nonzero length")
        if not np.all(np.diff(solve) > 0 if self._inverse else np.diff(solve) < 0):
            raise ValueError(f"timesteps: expected strictly {'increasing' if self._inverse else 'decreasing'} noise "
                             f"levels, got the grid {times.tolist()} (diffcore times)")
        self.diffcore_times = torch.from_numpy(solve.copy())
        self.num_inference_steps = n
        self._plans = {}
        # DDIMInverseScheduler clips x̂0 but keeps the unclipped ε̂: its noise-form plan reads ε̂ + k·(x̂0 − clip(x̂0))
        # with k = α_t/(α_t ρ_s − σ_t), which gives α_t·clip(x̂0) + σ_t·ε̂ exactly (no cancelling terms)
        self._eps_clip = None
        if (self._src_name == "DDIMInverseScheduler" and self.config.clip_sample and self.solver is not None
                and self.solver.name == "dpm_solver_1"):
            v = self.schedule.eval(self.diffcore_times)
            a, sg = v.alpha.double(), v.sigma.double()
            self._eps_clip = (a[1:] / (a[1:] * sg[:-1] / a[:-1] - sg[1:])).tolist()
        if (self._replicates and isinstance(self.solver, _solvers.GridSinglestep)
                and bool(self._src.config.lower_order_final) != self.solver.lower_order_final):
            # DPMSolverSinglestepScheduler.set_timesteps switches lower_order_final on for good (an uneven step
            # count or a final σ = 0) in its own config: the solver follows
            self.solver = copy.copy(self.solver)
            self.solver.lower_order_final = bool(self._src.config.lower_order_final)
            self._solver0 = self.solver
        host = self._build_plan(torch.device("cpu"), torch.float64)
        self._check_singlestep_orders(host)
        self._entries, model_t = self._list_entries(host, grid, keep_tail)
        if head:
            e = self._entries[0] if self._entries else None
            h = ("head", -1, 0, self._head[2], self._head[0], 0.0, 0.0)
            if self.config.clip_sample:  # x̂0 = cx·x + cm·(model output) at the source level (ᾱ = 1: x̂0 = x for ε and v)
                cx, cm = conversion_coefs(self.prediction, "x0", self.schedule.eval(torch.tensor([self._head[0]],
                                                                                                dtype=torch.float64)),
                                          self.schedule)
                h = h[:5] + (float(cx[0]), float(cm[0]))
            self._entries = [h] + self._entries
            model_t = [h[3]] + list(model_t)
        if self._eps_clip is not None:  # ε̂ = ce·x + cm·(model output) at each entry
            ce, cme = conversion_coefs(self.prediction, "eps", self.schedule.eval(
                torch.tensor([e[4] for e in self._entries], dtype=torch.float64)), self.schedule)
            self._eps_of = list(zip(ce.tolist(), cme.tolist()))
        ts = np.asarray(model_t, dtype=np.float64)
        dev = as_device(device)
        if grid.integral and np.all(ts == np.round(ts)):
            self.timesteps = torch.from_numpy(ts.astype(np.int64)).to(dev)
        elif np.all(ts.astype(np.float32).astype(np.float64) == ts) or dev.type == "mps":
            self.timesteps = torch.from_numpy(ts.astype(np.float32)).to(dev)
        else:
            self.timesteps = torch.from_numpy(ts).to(dev)
        self._ts_host = ts.tolist()
        if self._ve:  # α at every entry and at the end: diffusers' sample is the VP state over α
            self.init_noise_sigma = float(self._src.init_noise_sigma)
            at = torch.tensor([e[4] for e in self._entries] + [float(self.diffcore_times[-1])], dtype=torch.float64)
            self._alphas = self.schedule.eval(at).alpha.tolist()
        self._ddim_mix = None
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

    def _clip_mix(self):
        """DDIMScheduler.step with clipping and the unclipped ε̂ (its default): per step, (a, b) with
        x̂0' = a·clip(x̂0) + b·x̂0 the data prediction that makes the ddim / ddim_eta step give that result.
        The step is x' = αp·x̂0' + c_ε·(x − α·x̂0')/σ + s·z with s² = η²(σp²/σ²)(1 − α²/αp²) and
        c_ε = √(σp² − s²) (Song et al. 2021, eq. 12)."""
        if not (self._src_name in ("DDIMScheduler", "DDIMInverseScheduler") and self.solver.name in ("ddim", "ddim_eta")
                and (self.config.clip_sample or self.config.thresholding)):
            return None
        eta = float(getattr(self.solver, "eta", 0.0)) if self.solver.name == "ddim_eta" else 0.0
        v = self.schedule.eval(self.diffcore_times)
        al, sg = v.alpha.tolist(), v.sigma.tolist()
        mix = []
        for j in range(len(al) - 1):
            a, s, ap, sp = al[j], sg[j], al[j + 1], sg[j + 1]
            var = eta ** 2 * (sp ** 2 / s ** 2) * (1 - a ** 2 / ap ** 2)
            ce = math.sqrt(max(sp ** 2 - var, 0.0))
            c = ap - ce * a / s
            mix.append((ap / c, -ce * a / s / c))
        return mix

    def _build_plan(self, device: torch.device, dtype: torch.dtype, times: Optional[torch.Tensor] = None):
        solver = self.solver
        if times is not None and getattr(solver, "lower_order_final", False) and len(self.diffcore_times) - 1 >= 15:
            # a run started at set_begin_index: diffusers decides the lowering of the last orders on the
            # whole grid's length (15 steps or more: none), not on the steps left
            solver = copy.copy(solver)
            solver.lower_order_final = False
        key = (solver.name, getattr(solver, "eta", None), solver.lower_order_final if hasattr(solver, "lower_order_final")
               else None, str(device), dtype, None if times is None else tuple(times.tolist()))
        plan = self._plans.get(key)
        if plan is None:
            pred = "x0" if (self.config.clip_sample or self.config.thresholding or self._edm) else self.prediction
            if getattr(self, "_eps_clip", None) is not None:
                pred = "eps"
            try:
                plan = solver.plan(self.schedule, self.diffcore_times if times is None else times, device=device,
                                   dtype=dtype, prediction=pred)
            except (ValueError, TypeError) as e:
                raise type(e)(f"solver: {self.solver.name} cannot run this grid ({e})") from e
            self._plans[key] = plan
        return plan

    def _inverse_tail(self, tail: bool, n: int) -> bool:
        """DPMSolverMultistepInverseScheduler's trailing grid ends at its last level twice: diffusers' zero-length
        last step returns the sample (first order, or the midpoint form whose D1 vanishes; the heun forms
        divide 0 by h = 0) and counts in its order rules. The solver takes those rules on the shorter grid."""
        base = self.__dict__.setdefault("_solver_plain", self.solver)
        self.solver = self._solver0 = base
        if not tail:
            return False
        cfg = self._src.config
        last_first = bool(cfg.euler_at_final) or (bool(cfg.lower_order_final) and n < 15) or cfg.solver_order == 1
        if not last_first and cfg.solver_type != "midpoint":
            raise ValueError(f"solver_type: DPMSolverMultistepInverseScheduler's zero-length last step (its last level "
                             f"listed twice) of order {cfg.solver_order} with solver_type={cfg.solver_type!r} divides "
                             "0 by h = 0 in diffusers (NaN); use 'midpoint', lower_order_final with fewer than 15 steps, "
                             "or euler_at_final")
        solver, p = copy.copy(base), base.max_order

        def orders(M, final_zero, first=0):  # diffusers' rules on M + 1 steps, the zero-length one left out
            lof = solver.lower_order_final and M + 1 < 15
            return [min(p, max(1, i - first + 1), (M + 1 - i) if lof else p) for i in range(M)]

        solver._orders = orders
        self.solver = self._solver0 = solver
        return True

    def _grid_index(self, i: int) -> int:
        """The grid point where plan step ``i`` starts: ``i``, except for a single-step plan on grid points
        (DPMSolverSinglestep), whose step of order k spans k grid intervals."""
        if not isinstance(self.solver, _solvers.GridSinglestep):
            return i
        return int(sum(self._build_plan(torch.device("cpu"), torch.float64).orders[:i]))

    def _check_singlestep_orders(self, plan) -> None:
        """DPMSolverSinglestepScheduler: the plan's steps (groups of listed levels) follow the source's
        ``order_list`` (a safety net: both apply diffusers' ``get_order_list``)."""
        if not (self._replicates and self._src_name == "DPMSolverSinglestepScheduler"):
            return
        ours = [o for p in plan.orders for o in range(1, p + 1)]
        theirs = [int(o) for o in self._src.order_list]
        if ours != theirs:
            raise ValueError(f"lower_order_final: DPMSolverSinglestepScheduler's order list {theirs} differs from the "
                             f"plan's {ours}")

    def _set_head_only(self, grid, device) -> None:
        """set_timesteps of a DDIMInverseScheduler grid whose one step leaves ᾱ = 1: no plan, one entry."""
        self.diffcore_times = None
        self.num_inference_steps = len(grid.model_ts)
        self._plans, self._eps_clip = {}, None
        self._entries = [("head", -1, 0, self._head[2], self._head[0], 0.0, 0.0)]
        self._ts_host = [self._head[2]]
        self.timesteps = torch.tensor([int(self._head[2])], dtype=torch.int64, device=as_device(device))
        self.sigmas = torch.from_numpy(self._levels(np.asarray([self._head[0] or 1e-300, self._head[1]])).astype(np.float32))
        self._ddim_mix = None
        self._begin_index = None
        self._restart()

    def _step_head(self, model_output, timestep, sample, return_dict):
        if not isinstance(sample, torch.Tensor) or not sample.is_floating_point():
            raise TypeError("sample: expected a floating-point torch tensor")
        if not isinstance(model_output, torch.Tensor) or model_output.shape != sample.shape:
            raise ValueError(f"model_output: expected a tensor of the shape of sample {tuple(sample.shape)}")
        self._check_timestep(timestep, 0)
        prev = self._head_step(model_output, sample).to(sample.dtype)
        self._k += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _head_step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """DDIMInverseScheduler's first step, from ᾱ = 1 or within ᾱ_0 (no plan starts there), in its arithmetic:
        x̂0 and ε̂ read at the source level, x' = √ᾱ_t·x̂0 + √(1 − ᾱ_t)·ε̂."""
        v = self.schedule.eval(torch.tensor(self._head[:2], dtype=torch.float64))
        (a_s, a_t), (s_s, s_t) = v.alpha.tolist(), v.sigma.tolist()
        x, m = sample.double(), model_output.double()
        if self.prediction == "eps":
            x0, e = (x - s_s * m) / a_s, m
        elif self.prediction == "v":
            x0, e = a_s * x - s_s * m, a_s * m + s_s * x
        else:
            x0 = m
            e = (x - a_s * m) / s_s
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return a_t * x0 + s_t * e

    def _list_entries(self, plan, grid, tail: bool = False):
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
                ts = float(grid.model_ts[j[0]]) if j.size else float(self.model_timestep(t))
                entries.append(("step", i, s, ts, t, 0.0, 0.0))
        if tail:
            entries.append(("tail", plan.num_steps, 0, float(grid.model_ts[-1]), float(nodes[-1]), 0.0, 0.0))
        if self._edm:  # x̂0 = c_skip·x + c_out·F (EDMEulerScheduler.precondition_outputs)
            sd = float(self._src.config.sigma_data)
            sign = -1.0 if self.config.prediction_type == "v_prediction" else 1.0
            entries = [e[:5] + (sd ** 2 / (e[4] ** 2 + sd ** 2), sign * e[4] * sd / math.sqrt(e[4] ** 2 + sd ** 2))
                       for e in entries]
        elif self.config.clip_sample or self.config.thresholding:
            src = self.prediction
            tt = torch.tensor([e[4] for e in entries], dtype=torch.float64)
            cx, cm = conversion_coefs(src, "x0", self.schedule.eval(tt), self.schedule)
            entries = [e[:5] + (float(a), float(b)) for e, a, b in zip(entries, cx.tolist(), cm.tolist())]
        model_t = [e[3] for e in entries]
        return entries, model_t

    def _run_source_set_timesteps(self, n, timesteps, sigmas, mu):
        """The source scheduler's own ``set_timesteps`` on its private instance (CPU), arguments checked by name."""
        src = self._src
        accepted = set(inspect.signature(src.set_timesteps).parameters)
        given = {"num_inference_steps": n, "timesteps": timesteps, "sigmas": sigmas, "mu": mu}
        for k, v in given.items():
            if v is not None and k not in accepted:
                raise ValueError(f"{k}: {self._src_name}.set_timesteps does not take it")
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
            raise ValueError(f"num_inference_steps: expected a positive int, got {n!r}")
        if self.config.use_dynamic_shifting and mu is None and self._flow and "mu" in accepted:
            raise ValueError("mu: required when use_dynamic_shifting=True (Flux-style resolution-dependent shift)")
        if getattr(src.config, "invert_sigmas", False):
            raise ValueError(f"invert_sigmas: {self._src_name} then integrates from data to noise; the drop-in samples "
                             "from noise to data")
        if self._kind == "flow_match" and hasattr(src, "set_shift") and src.shift != self._shift:
            src.set_shift(self._shift)
        kw = {k: v for k, v in given.items() if v is not None}
        try:
            src.set_timesteps(device="cpu", **kw)
        except (ValueError, TypeError, AssertionError, IndexError) as e:
            raise ValueError(f"num_inference_steps, timesteps, sigmas: {self._src_name}.set_timesteps refused them "
                             f"({e})") from e
        return src

    def _source_grid(self, n, timesteps, sigmas, mu) -> "_Grid":
        """The grid of the source scheduler: its own ``set_timesteps`` run on a private instance, read back
        (``timesteps``, ``sigmas``, ``alphas_cumprod``), so that what diffusers computes is used as is."""
        src = self._run_source_set_timesteps(n, timesteps, sigmas, mu)
        ts = src.timesteps.detach().cpu()
        integral = not ts.is_floating_point()
        model_ts = ts.double().numpy()
        N = self.config.num_train_timesteps
        if self._kind == "ddim_inverse":
            # DDIMInverseScheduler.step at listed t: from the level of t − N//n (ᾱ = 1 or ᾱ_0 below index 0) to
            # the level of t, the network evaluated at t (Mokady et al. 2023's DDIM inversion)
            idx = model_ts.astype(np.int64)
            src_idx = np.minimum(idx - N // src.num_inference_steps, N - 1)
            if not np.array_equal(src_idx[1:], idx[:-1]):
                raise ValueError(f"timestep_spacing: DDIMInverseScheduler with {self.config.timestep_spacing!r} steps "
                                 f"to each timestep t from t - {N // src.num_inference_steps}, not from the previous "
                                 f"listed one ({idx.tolist()}), which no solver on one grid reproduces; use 'leading', "
                                 "or 'trailing' with num_inference_steps dividing num_train_timesteps")
            self._check_unpatched(idx)
            times = self.schedule.index_to_t(torch.from_numpy(idx.astype(np.float64))).numpy()
            if src_idx[0] >= 0:
                start = float(self.schedule.index_to_t(float(src_idx[0])))
            else:
                start = 0.0 if self.config.set_alpha_to_one else float(self.schedule.index_to_t(0.0))
            return _Grid(model_ts, np.concatenate([[start], times]), integral)
        if self._kind in ("ddim", "ddpm"):
            idx = model_ts.astype(np.int64)
            if self._kind == "ddim":  # DDIMScheduler.step goes from t to t − N//n, whatever timestep comes next
                prev = idx - N // src.num_inference_steps
                if not np.array_equal(prev[:-1], idx[1:]):
                    raise ValueError(f"timestep_spacing: DDIMScheduler with {self.config.timestep_spacing!r} steps "
                                     f"from each timestep t to t - {N // src.num_inference_steps}, not to the next "
                                     f"listed one ({idx.tolist()}), which no solver on one grid reproduces; use "
                                     "'leading' or 'trailing'")
                last = int(prev[-1])
                zero_final = bool(self.config.set_alpha_to_one)
            else:  # DDPMScheduler ends at ᾱ = 1; set_alpha_to_one=False (a diffcore option there) ends at ᾱ_0
                last, zero_final = -1, bool(self.config.set_alpha_to_one)
            self._check_unpatched(idx)
            times = self.schedule.index_to_t(torch.from_numpy(idx.astype(np.float64))).numpy()
            if last >= 0:
                self._check_unpatched([last])
                final = float(self.schedule.index_to_t(float(last)))
            else:
                final = 0.0 if zero_final else float(self.schedule.index_to_t(0.0))
            return _Grid(model_ts, np.concatenate([times, [final]]), integral)
        levels = src.sigmas.detach().cpu().double().numpy()
        if self._src_name in ("FlowMatchHeunDiscreteScheduler", "HeunDiscreteScheduler"):  # every inner level twice
            levels = np.concatenate([levels[:1], levels[1:-1:2], levels[-1:]])
            model_ts = np.concatenate([model_ts[:1], model_ts[1::2]])
        if self._kind == "sigmas_ve" and levels.size > model_ts.size + 1:
            levels = levels[:model_ts.size + 1]  # log_linear lists one level more than it steps to
        if levels.size != model_ts.size + 1:
            raise ValueError(f"{self._src_name}: expected one more sigma than timesteps, got {levels.size} and "
                             f"{model_ts.size}")
        if self._flow or self._edm:
            times = levels.copy()
        else:  # noise-to-signal ratios σ/α → diffcore time of the same log-SNR; 0 → t = 0
            lo, hi = self.schedule.lam_range()
            pos = levels > 0
            times = np.zeros_like(levels)
            lam = -np.log(levels[pos])
            times[pos] = self.schedule.t_of_lam(torch.from_numpy(np.clip(lam, lo, hi))).numpy()
            if self._patched.size:  # levels strictly between the last unchanged index and the clamped last one
                idx = self.schedule.t_to_index(torch.from_numpy(times[pos])).numpy()
                N1 = self.config.num_train_timesteps - 1
                self._check_unpatched([], fractional=idx[(idx > self._patched[0] - 1) & (idx < N1 - 1e-6)])
        top = float(self.schedule.t_start) * (1 + 1e-6) if self._edm else 1.0
        if not (np.all(np.isfinite(times)) and times[:-1].min() > 0 and times.max() <= top):
            raise ValueError(f"sigmas: expected noise levels inside the schedule, got {levels.tolist()}")
        return _Grid(model_ts, times, integral)

    def _check_unpatched(self, idx, fractional=()) -> None:
        if not self._patched.size:
            return
        patched = set(self._patched.tolist())
        hit = [int(i) for i in idx if int(i) in patched] + [round(float(f), 3) for f in fractional]
        if hit:
            raise ValueError(f"rescale_betas_zero_snr: the grid reaches training indices {hit}, whose ᾱ lie below the "
                             f"clamped last ᾱ = 2⁻²⁴ in {self._src_name} (not a decreasing schedule); use fewer steps")

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at entry ``begin_index`` of ``timesteps`` (img2img pipelines): the solver starts
        afresh at that level (a multistep method warms up again). It must be the first stage of a step."""
        if self._entries is None:
            raise RuntimeError("set_begin_index: call set_timesteps first")
        if isinstance(begin_index, bool) or not isinstance(begin_index, int) or not 0 <= begin_index < len(self._entries):
            raise ValueError(f"begin_index: expected an int in [0, {len(self._entries)}), got {begin_index!r}")
        if self._stepper is not None:  # diffusers' step_index starts there, with the method's fresh state
            if not self._stepper.begin_index:
                raise ValueError(f"begin_index: {self._src_name} always starts at its first timestep")
            self._begin_index = begin_index
            self._restart()
            return
        kind, i, s = self._entries[begin_index][:3]
        if kind != "step" or s != 0:
            raise ValueError(f"begin_index: entry {begin_index} is stage {s} of step {i}; expected the first stage of a step")
        if i > 0:
            sub = self._build_plan(torch.device("cpu"), torch.float64, self.diffcore_times[self._grid_index(i):])
            tail = [e[1] - i for e in self._entries[begin_index:]]
            if getattr(sub, "prelude", None) is not None or tail != [j for j in range(sub.num_steps) for _ in sub.stages(j)]:
                raise ValueError(f"begin_index: {self.solver.name} started at step {i} has other stages than the "
                                 "rest of the full run (or a churn of its start); use set_timesteps on the shorter grid")
        self._begin_index = begin_index
        self._restart()

    # -- protocol -------------------------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity (the sample is the network's input: VP / flow-matching state), except for a σ-space
        source (Euler, Heun): its sample is x/α, and the network's input α times it."""
        if self._stepper is not None:
            if self._entries is None:
                return sample
            return self._stepper.scale(sample, min((self._begin_index or 0) + self._k, len(self._entries) - 1))
        if not (self._ve or self._edm) or self._entries is None:
            return sample
        k = min((self._begin_index or 0) + self._k, len(self._entries) - 1)
        if self._edm:  # c_in = 1/√(σ² + σ_data²)
            return sample / math.sqrt(self._entries[k][4] ** 2 + float(self._src.config.sigma_data) ** 2)
        return sample * self._alphas[k]

    def model_timestep(self, t):
        """The network timestep of diffcore times ``t`` (VP: ``N·t − 1``; flow matching: ``N·t``)."""
        if self._edm:  # EDM's c_noise = ¼·log σ
            return 0.25 * math.log(t) if isinstance(t, (int, float)) else 0.25 * torch.log(torch.as_tensor(t))
        N = self.config.num_train_timesteps
        return t * N - 1 if not self._flow else t * N

    def make_plan(self, device=None, dtype: torch.dtype = torch.float32):
        """The immutable diffcore plan of the current grid on ``device``/``dtype`` (the thread-safe path:
        one ``plan.init_state(x, noise)`` per run, the loop of ``diffcore.sample``). Its model times are
        diffcore times; :meth:`model_timestep` converts them for the network."""
        if self.solver is None:
            raise ValueError(f"solver: {self._src_name}'s method runs step by step in diffusers' arithmetic "
                             "(diffcore.integrations.diffusers_sigma), with no diffcore plan; give each thread its own "
                             "copy()")
        if getattr(self, "_plan_error", None) is not None:
            raise self._plan_error
        if self.diffcore_times is None:
            raise RuntimeError("make_plan: call set_timesteps first")
        return self._build_plan(as_device(device), dtype)

    def copy(self) -> "DiffcoreScheduler":
        """A scheduler with this configuration and grid (sharing the immutable plans) and a fresh run
        state: one per request or thread, since :meth:`step` mutates its scheduler."""
        other = self.__class__.from_config(self.config)
        other._shift = self._shift
        if self._stepper is not None:  # the source's grid is recomputed: its arrays belong to its instance
            if self._entries is not None:
                other.set_timesteps(**self._grid_args)
                if self._begin_index is not None:
                    other.set_begin_index(self._begin_index)
            return other
        if self._entries is not None:
            for name in ("num_inference_steps", "timesteps", "sigmas", "diffcore_times", "_entries",
                         "_ts_host", "_head", "_eps_clip", "_eps_of"):
                if hasattr(self, name):
                    setattr(other, name, getattr(self, name))
            # the solver as set_timesteps adapted it to this grid (singlestep lower_order_final, inverse tail)
            other.solver = other._solver0 = self._solver0
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
        if self._ve and sample.device.type == "cpu":
            # x/α at σ/α ≈ 4096 (zero SNR) loses digits in float32 on the way in and out; the noise is
            # still drawn in the sample's dtype, as diffusers draws it
            dtype = torch.float64
        draw_dtype = sample.dtype if sample.dtype in (torch.float32, torch.float64) else dtype
        times = None
        if self._begin_index:
            i0 = self._entries[self._begin_index][1]
            times = self.diffcore_times[self._grid_index(i0):]
            if times.numel() < 2:
                raise ValueError("begin_index: no solver step left after it")
        plan = self._build_plan(sample.device, dtype, times)
        self._ddim_mix = self._clip_mix()
        x = sample.detach().to(dtype)
        if self._ve:
            x = x * self._alphas[self._begin_index or 0]
        if not plan.stochastic:
            noise = None
        elif isinstance(generator, (list, tuple)):
            if len(generator) != sample.shape[0]:
                raise ValueError(f"generator: expected one generator per sample ({sample.shape[0]}), got {len(generator)}")
            draws = [torch.cat([torch.randn((1,) + tuple(sample.shape[1:]), generator=g, device=g.device,
                                            dtype=draw_dtype) for g in generator]) for _ in range(plan.noise_draws)]
            noise = Noise(noise=torch.stack(draws).to(sample.device, dtype))
        elif generator is not None and draw_dtype != dtype:
            self._gen = generator
            shape, dev = tuple(sample.shape), sample.device
            noise = Noise(provider=lambda draw: torch.randn(shape, generator=self._gen, device=dev,
                                                           dtype=draw_dtype).to(dtype))
        elif generator is not None:
            noise = Noise(generator=generator)
        else:
            noise = Noise()
        self._plan = plan
        self._state = plan.init_state(x, noise) if noise is not None else plan.init_state(x)
        self._k0 = self._begin_index or 0
        self._started = True

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: Optional[bool] = None, generator=None, return_dict: bool = True,
             **kwargs) -> Union[SchedulerOutput, tuple]:
        """Apply the solver to the model output at the current entry of ``timesteps``; returns the
        network input of the next entry (the next stage's input within a multi-stage step), after the
        last entry the sample.

        ``eta`` and ``use_clipped_model_output`` are ``DDIMScheduler.step``'s (``DDIMPipeline`` passes
        them; other pipelines pass ``eta=0.0``): a DDIM source runs DDIM-η (``ddim_eta``, one η per
        loop, noise from ``generator``) and, with clipping, keeps the unclipped ε̂ unless
        ``use_clipped_model_output`` is true, as diffusers does; for another source ``eta`` > 0 raises
        unless the solver is ``ddim_eta`` with that η. Other keyword arguments of other schedulers' ``step`` (``s_churn``, ...) are
        rejected: their effect is a diffcore solver option (``solver_options``)."""
        if self._stepper is not None:
            prev = self._step_stepped(model_output, timestep, sample, eta, generator, kwargs)
            return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
        if kwargs.get("s_churn", 0.0):
            raise ValueError(f"s_churn: EulerDiscreteScheduler's churn ({kwargs['s_churn']}) is not reproduced; use "
                             "solver='edm_churn', solver_options={'s_churn': ...}")
        if kwargs.get("variance_noise") is not None:
            raise ValueError("variance_noise: the drop-in draws its noise from generator= (or diffcore's Philox noise)")
        # without churn, Euler's s_tmin / s_tmax / s_noise do nothing
        rest = sorted(set(kwargs) - {"s_churn", "s_tmin", "s_tmax", "s_noise", "variance_noise"})
        if rest:
            raise TypeError(f"step: unexpected keyword arguments {rest}; sampler options are diffcore solver options "
                            "(DiffcoreScheduler.from_config(..., solver_options={...}))")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta: expected a finite number >= 0, got {eta!r}")
        running = float(getattr(self.solver, "eta", 0.0)) if self.solver.name == "ddim_eta" else 0.0
        if self._replicates and self._src_name == "DDIMScheduler" and self._solver0.name == "ddim" and eta != running:
            # DDIMScheduler's eta: the run is DDIM-η (ddim_eta, noise drawn from the passed generator as
            # diffusers draws it), fixed at the loop's first step
            if self._started:
                raise ValueError(f"eta: the loop started with eta = {running}; got {eta} (one eta per sampling loop)")
            self.solver = _solvers.get("ddim_eta", eta=float(eta)) if eta else self._solver0
        elif eta != 0 and eta != running:  # eta = 0 is every pipeline's default: the solver's own noise
            raise ValueError(f"eta: step() runs the scheduler's solver ({self.solver.name}); for DDIM with eta = {eta} "
                             f"build it with solver='ddim_eta', solver_options={{'eta': {eta}}}")
        if self._entries is None:
            raise RuntimeError("step: call set_timesteps before step (the scheduler has no grid yet)")
        if not isinstance(sample, torch.Tensor) or not sample.is_floating_point():
            raise TypeError("sample: expected a floating-point torch tensor")
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"model_output: expected a torch tensor, got {type(model_output).__name__}")
        if self._head is not None and not self._started and self._k == 0:
            return self._step_head(model_output, timestep, sample, return_dict)
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
        elif kind == "head":  # the next step's sample (passed back by the pipeline) becomes the state
            out = self._head_step(model_output, sample)
        elif kind == "tail":  # zero-length last step: x, or DDIM's α·clip(x̂0) + σ·ε̂ with the unclipped ε̂
            out = sample.to(st.x.dtype) * (self._alphas[k] if self._ve else 1.0)
            if self._ddim_mix is not None and not use_clipped_model_output:
                x0 = cx * out + cm * model_output.to(out.dtype)
                a_t = float(self.schedule.eval(torch.tensor([self._entries[k][4]], dtype=torch.float64)).alpha[0])
                out = out + a_t * (self._clip(x0) - x0)
        else:
            if generator is not None and not isinstance(generator, (list, tuple)) and st.noise.kind == "generator" \
                    and generator is not st.noise.generator:
                st.noise = Noise(generator=generator)
            elif generator is not None and not isinstance(generator, (list, tuple)) and st.noise.kind == "provider":
                self._gen = generator
            buf = st.model_input(s)
            if self._ve:
                buf.copy_(sample * self._alphas[k])
            elif sample.data_ptr() != buf.data_ptr():  # the pipeline may have edited the sample (inpainting)
                buf.copy_(sample)
            m = model_output
            if self._edm:
                m = cx * buf + cm * m.to(buf.dtype)
                if self.config.thresholding:  # EDMDPMSolverMultistepScheduler thresholds its x̂0
                    m = self._clip(m)
            elif self._eps_clip is not None:
                x0 = cx * buf + cm * m.to(buf.dtype)
                ce, cme = self._eps_of[k]
                m = ce * buf + cme * m.to(buf.dtype) + self._eps_clip[i] * (x0 - self._clip(x0))
            elif self.config.clip_sample or self.config.thresholding:
                x0 = cx * buf + cm * m.to(buf.dtype)
                m = self._clip(x0)
                if self._ddim_mix is not None and not use_clipped_model_output:
                    # DDIMScheduler: clipped x̂0 with the unclipped ε̂; the x̂0 that gives the ddim step that result
                    a, b = self._ddim_mix[i]
                    m = a * m + b * x0
            self._plan.step(st, i, s, m)
            nxt = self._entries[k + 1] if k + 1 < len(self._entries) else None
            out = st.model_input(s + 1) if (nxt is not None and nxt[0] == "step" and nxt[1] == self._entries[k][1]
                                            and nxt[2] == s + 1) else st.x
        self._k += 1
        prev = out.to(dtype=sample.dtype, copy=True)
        if kind == "step" and k + 1 == len(self._entries) and getattr(self, "_last_beta_noise", False):
            # diffusers' draw at the last step: after the mean, from this call's generator, in the model output's
            # shape, device and dtype (randn_tensor, as DDPMScheduler.step draws it)
            a_t = float(self.schedule.eval(torch.tensor([self._entries[k][4]], dtype=torch.float64)).alpha[0])
            z = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
            prev += math.sqrt(1.0 - a_t * a_t) * z.to(prev.dtype)
        if self._ve:
            prev /= self._alphas[k + 1]
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _step_stepped(self, model_output, timestep, sample, eta, generator, kwargs) -> torch.Tensor:
        """:meth:`step` of a source run in diffusers' arithmetic (diffusers_sigma): the keyword options of the
        source's own ``step`` (Euler's churn, LMS's ``order``) are passed on."""
        own = set(inspect.signature(self._src.step).parameters) - {"self", "model_output", "timestep", "sample",
                                                                    "generator", "return_dict"}
        if kwargs.get("per_token_timesteps") is not None:
            raise ValueError("per_token_timesteps: per-token levels are not reproduced by the drop-in")
        if kwargs.get("variance_noise") is not None:
            raise ValueError("variance_noise: the drop-in draws its noise from generator=")
        rest = sorted(set(kwargs) - own - {"variance_noise"})
        if rest:
            raise TypeError(f"step: unexpected keyword arguments {rest}; {self._src_name}.step takes {sorted(own)}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta != 0:
            raise ValueError(f"eta: {self._src_name} has no η (got {eta!r}); pipelines pass eta=0.0")
        if self._entries is None:
            raise RuntimeError("step: call set_timesteps before step (the scheduler has no grid yet)")
        if not isinstance(sample, torch.Tensor) or not sample.is_floating_point():
            raise TypeError("sample: expected a floating-point torch tensor")
        if not isinstance(model_output, torch.Tensor) or not model_output.is_floating_point():
            raise TypeError(f"model_output: expected a floating-point torch tensor, got {type(model_output).__name__}")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: expected the shape of sample {tuple(sample.shape)}, got "
                             f"{tuple(model_output.shape)}")
        k = (self._begin_index or 0) + self._k
        if k >= len(self._entries):
            raise RuntimeError(f"step: all {len(self._entries)} entries of timesteps have been stepped; call "
                               "set_timesteps to start a new sampling loop")
        self._check_timestep(timestep, k)
        opts = {n: kwargs[n] for n in kwargs if n not in ("per_token_timesteps", "variance_noise")}
        if "s_churn" in opts and self._src_name == "FlowMatchEulerDiscreteScheduler":
            opts = {}  # diffusers' flow-matching step takes the churn options and ignores them
        self._started = True
        prev = self._stepper.step(model_output, sample, k, generator, **opts)
        self._k += 1
        return prev

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
            if tv is None and self._ve and self._entries is not None:
                # diffusers' σ-space add_noise looks the timestep up in its schedule and has no level for others
                raise ValueError(f"timesteps: {v} is not an entry of the scheduler's timesteps; "
                                 f"{self._src_name}.add_noise takes one of them")
            if tv is None and self._edm:  # c_noise = ¼·log σ
                tv = math.exp(4 * v)
            if tv is None:
                if not (0 <= v <= (N if self._flow else N - 1)):
                    raise ValueError(f"timesteps: expected training timesteps in [0, {N - 1}], got {v}")
                tv = v / N if self._flow else (v + 1) / N
            out.append(tv)
        return torch.tensor(out, dtype=torch.float64)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The forward process ``α(t)·x0 + σ(t)·noise`` at training timesteps (an entry of ``timesteps``
        maps to its grid level). Reads ``timesteps`` on the host: call it outside the sampling loop."""
        if self._stepper is not None:  # diffusers' lookup of the timestep in the source's own schedule
            ts = torch.as_tensor(timesteps).reshape(-1)
            k = (self._begin_index or 0) + self._k if self._started else None
            return self._stepper.add_noise(original_samples, noise, ts, self._begin_index, k)
        t = self._times_of(timesteps)
        v = self.schedule.eval(t)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        a = v.alpha.to(original_samples.device, original_samples.dtype).reshape(shape)
        s = v.sigma.to(original_samples.device, original_samples.dtype).reshape(shape)
        if self._ve:  # a σ-space source's sample: x/α = x0 + (σ/α)·noise
            return original_samples + (s / a) * noise
        return a * original_samples + s * noise

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """Flow matching's name of :meth:`add_noise` (``FlowMatchEulerDiscreteScheduler.scale_noise``)."""
        return self.add_noise(sample, noise, timestep)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

