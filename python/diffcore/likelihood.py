"""Likelihoods: exact log-density through the probability-flow ODE, and the DDPM variational bound.

* :func:`log_likelihood` — ``log p_ε(x)`` by the instantaneous change of variables along the PF-ODE
  (book §4.2.2 III, Eq. (4.2.7); Lemma 5.1.1, Eq. (5.1.9); §5.1.2), with the exact
  divergence (small ``D``) or the Hutchinson–Skilling estimator, integrated by an embedded
  Dormand–Prince 5(4) pair with per-sample step-size control (:func:`diffcore.solvers.dopri5.integrate`).
* :func:`continuous_elbo` — the continuous-time evidence lower bound (Kingma et al. 2021; book §4.4.3,
  App. C.2): prior KL + reconstruction at ``t_min`` + a Monte-Carlo estimate of the diffusion integral.
* :func:`bits_per_dim` — nats → bits/dim with the uniform-dequantization offset (Ho et al. 2020; Song et al. 2021).
* :func:`ddpm_bound` — the DDPM evidence bound ``L_prior + Σ_{i≥2} KL_i + L_recon`` in bits/dim
  (book Thm. 2.2.3 with docs/errata.md B5, Lemma 2.2.2), with the reverse variance ``σ̃²`` or ``b_i`` and the
  discretized-Gaussian decoder; :func:`ddpm_coefficients` gives the per-step chain quantities.

Conventions: diffusion time ``t`` (``t = 0`` data), any :mod:`diffcore.schedules` schedule, models
called as ``model(x, t, **model_kwargs)`` with ``t`` a ``[B]`` tensor of continuous times, or a
:class:`~diffcore.ModelWrapper`. Everything that is accumulated (ODE state, log-densities, KL terms) is
float64; the model sees its input in ``x``'s dtype. Both functions are evaluation tools: no gradient
flows back to the caller (autograd is used internally for the divergence only).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Optional

import torch

from . import schedules as _schedules
from ._device import as_device
from ._checks import _choice, _positive_float, _positive_int
from .param import ModelWrapper, conversion_coefs, convert, resolve_prediction, singular_hint
from .paths import _check_data
from .solvers.dopri5 import integrate as _integrate

__all__ = ["log_likelihood", "bits_per_dim", "ddpm_bound", "ddpm_coefficients", "DDPMCoefficients", "continuous_elbo"]

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)
_LN2 = math.log(2.0)

#: Largest data dimension for which ``divergence="auto"`` takes the exact trace (D vector–Jacobian
#: products per model call, batched); above it, Hutchinson–Skilling with ``num_probes`` probes.
AUTO_EXACT_MAX_DIM = 32

# Elements (probes × batch × D) per batched VJP call; more are split into chunks.
_VJP_CHUNK_ELEMENTS = 1 << 24


# ------------------------------------------------------------------------------------------------
# argument helpers


def _check_x(x, name: str = "x") -> torch.Tensor:
    x = _check_data(x, name)
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B = 0), got shape {tuple(x.shape)}")
    if x[0].numel() == 0:
        raise ValueError(f"{name}: expected at least one data dimension, got shape {tuple(x.shape)}")
    if x.numel() and not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name}: expected finite values")
    return x.detach()


def _check_generator(generator, device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(f"generator: lives on {generator.device}, but x is on {device}")


def _resolve_model(model, schedule, prediction, model_kwargs):
    """(call(x, t, kw) → native output, native prediction, schedule)."""
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs: expected a dict, got {type(model_kwargs).__name__}")
    if isinstance(model, ModelWrapper):
        if schedule is None:
            schedule = model.schedule
        else:
            schedule = _schedules.get(schedule)
            if schedule is not model.schedule and repr(schedule) != repr(model.schedule):
                raise ValueError(f"schedule: {schedule!r} differs from the ModelWrapper's schedule "
                                 f"{model.schedule!r}")
        native = model.prediction

        def call(x, t, kw):
            return model(x, t, target=native, **kw)
        return call, native, schedule
    if not callable(model):
        raise TypeError(f"model: expected a callable model(x, t, **model_kwargs) or a diffcore.ModelWrapper, "
                        f"got {type(model).__name__}")
    if schedule is None:
        raise TypeError("schedule: required (a diffcore Schedule or its name, e.g. 'vp_linear', 'edm', 'rf')")
    schedule = _schedules.get(schedule)
    native = resolve_prediction(prediction, schedule, "prediction")
    if native == "v" and schedule.kind != "vp":
        raise ValueError(f"prediction: the Salimans 'v' prediction needs a variance-preserving schedule, got "
                         f"{schedule!r}; use 'velocity'")

    def call(x, t, kw):
        return model(x, t, **kw)
    return call, native, schedule


def _index_kwargs(kw: dict, idx: Optional[torch.Tensor], B: int) -> dict:
    """Per-sample keyword tensors (leading dimension B) restricted to the samples ``idx``."""
    if idx is None or not kw:
        return kw
    return {k: (v[idx.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B else v)
            for k, v in kw.items()}


def _model_time(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(torch.float64 if dtype == torch.float64 else torch.float32)


# ------------------------------------------------------------------------------------------------
# Dormand–Prince 5(4)

# one Dormand–Prince engine with the sampler's ``solver="dopri5"``: per-sample step control, the tableau
# of diffcore.solvers.tableau.DOPRI5
_dopri5 = _integrate


# ------------------------------------------------------------------------------------------------
# divergence


def _vjp_quadratic(out: torch.Tensor, xin: torch.Tensor, probes: torch.Tensor, state: dict) -> torch.Tensor:
    """``uᵣᵀ (∂out/∂xin) uᵣ`` per probe r and sample: ``[R, b]`` (float64), from batched vector–Jacobian
    products (``is_grads_batched``; a plain loop over probes when the model's backward cannot be vmapped).
    Per-sample Jacobians assume the samples of a batch do not interact."""
    R, b = probes.shape[0], probes.shape[1]
    per = max(1, _VJP_CHUNK_ELEMENTS // max(1, probes[0].numel()))
    res = []
    for r0 in range(0, R, per):
        u = probes[r0:r0 + per].to(out.dtype)
        g = None
        if state.get("batched", True):
            try:
                (g,) = torch.autograd.grad(out, xin, u, retain_graph=True, is_grads_batched=True, allow_unused=True)
            except (RuntimeError, NotImplementedError):  # no batching rule somewhere in the model's backward
                state["batched"] = False
                g = None
            else:
                if g is None:
                    raise _NoDependence
        if g is None:
            gs = []
            for r in range(u.shape[0]):
                (gr,) = torch.autograd.grad(out, xin, u[r], retain_graph=True, allow_unused=True)
                if gr is None:
                    raise _NoDependence
                gs.append(gr)
            g = torch.stack(gs)
        res.append((g.to(_F64) * u.to(_F64)).reshape(u.shape[0], b, -1).sum(-1))
    return torch.cat(res, 0)


class _NoDependence(Exception):
    """The model's output does not depend on its input through autograd."""


def _velocity_and_divergence(call, native, schedule, x, t, kw, probes, exact, vjp_state):
    """PF-ODE velocity ``v = c_x x + c_m m`` (``m`` the model's native output, conversion of
    book Prop. 6.3.2) and ``uᵀ(∂v/∂x)u = c_x‖u‖² + c_m uᵀ(∂m/∂x)u`` per probe u: summed over
    the D unit vectors (``exact``) this is the trace ``∇·v``, for random probes the Hutchinson–Skilling
    estimate of it. (The linear part is *not* taken out exactly for random probes: c_x I and c_m ∂m/∂x
    nearly cancel for an x0-model near σ = 0, and only their sum has a small variance.)

    ``x`` is the float64 state ``[b, *S]`` (the model's input is cast to ``vjp_state["dtype"]``);
    returns ``(v [b, D] float64, div [b, R] float64)`` with ``R = 1`` for the exact trace."""
    b = x.shape[0]
    D = x[0].numel()
    vals = schedule.eval(t, check=False)
    c_x, c_m = conversion_coefs(native, "velocity", vals, schedule)
    c_x, c_m = c_x.to(_F64), c_m.to(_F64)
    dtype = vjp_state["dtype"]
    with torch.enable_grad():
        xin = x.detach().to(dtype).requires_grad_(True)
        out = call(xin, _model_time(t, dtype), kw)
        if not isinstance(out, torch.Tensor) or out.shape != xin.shape:
            raise ValueError(f"model: expected an output of shape {tuple(xin.shape)}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        if not out.requires_grad:
            raise _NoDependence
        quad = _vjp_quadratic(out, xin, probes, vjp_state)
    m = out.detach().to(_F64).reshape(b, D)
    usq = (probes * probes).reshape(probes.shape[0], b, D).sum(-1)  # [R, b]
    div = c_x[None] * usq + c_m[None] * quad
    if exact:
        div = div.sum(0, keepdim=True)
    v = c_x[:, None] * x.reshape(b, D) + c_m[:, None] * m
    return v, div.T


def _unit_probes(shape, b, device):
    D = math.prod(shape)
    return torch.eye(D, dtype=_F64, device=device).reshape(D, 1, *shape).expand(D, b, *shape).contiguous()


def _gaussian_prior(std: float):
    var = std * std

    def logp(z: torch.Tensor) -> torch.Tensor:
        zf = z.reshape(z.shape[0], -1)
        D = zf.shape[1]
        return -0.5 * ((zf * zf).sum(1) / var + D * (_LOG_2PI + math.log(var)))
    return logp


def _default_prior_std(schedule, T: float) -> float:
    """N(0, I) for VP and sub-VP (Song et al. 2021), else N(0, σ(T)² I) — the
    distribution :func:`diffcore.prior_sample` starts from (σ_max for VE/EDM, 1 for rectified flow)."""
    if schedule.kind == "vp" or isinstance(schedule, _schedules.SubVP):
        return 1.0
    return schedule.prior_std(T)


def _check_endpoint(schedule, native, t: float, name: str) -> None:
    vals = schedule.eval(torch.tensor([t], dtype=_F64))
    c_x, c_m = conversion_coefs(native, "velocity", vals, schedule)
    if not (math.isfinite(float(c_x[0])) and math.isfinite(float(c_m[0]))):
        raise ValueError(
            f"{name}: the PF-ODE velocity of a {native!r} model is singular at t = {t} for {schedule!r} "
            f"(α = {float(vals.alpha[0]):.3g}, σ = {float(vals.sigma[0]):.3g}); choose {name} strictly inside "
            f"the schedule's range (e.g. t_start = 1e-5 at the data end) or a model type that stays finite there"
            + singular_hint(native, schedule))


# ------------------------------------------------------------------------------------------------
# public: log_likelihood


def log_likelihood(model: Callable, x: torch.Tensor, schedule=None, prediction: Optional[str] = None, *,
                   t_start: Optional[float] = None, t_end: Optional[float] = None, divergence: str = "auto",
                   probe: str = "rademacher", num_probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                   generator: Optional[torch.Generator] = None, model_kwargs: Optional[dict] = None,
                   prior_log_prob: Optional[Callable] = None, step_control: str = "per_sample",
                   max_steps: int = 10000, return_stats: bool = False):
    """Per-sample log-likelihood ``log p_ε(x)`` (nats) of the probability-flow ODE model, by the
    instantaneous change of variables (book §4.2.2 III, Eq. (4.2.7); Lemma 5.1.1,
    Eq. (5.1.9)): the augmented ODE

        d/dt [x, δ] = [v(x, t), ∇·v(x, t)],   [x, δ](ε) = [x0, 0],   log p_ε(x0) = log p_prior(x(T)) + δ(T),

    is integrated **forward** from ``t_start = ε`` (data) to ``t_end = T``, with
    ``v = f(t)x − ½g²(t)ŝ(x, t) = α' x̂0 + σ' ε̂`` the PF-ODE velocity (book Prop. 6.3.2) obtained from any
    prediction type m by the exact conversion ``v = c_x(t)·x + c_m(t)·m`` of :mod:`diffcore.param`, and
    ``∇·v = tr(∂v/∂x)`` exact or estimated (the divergence is taken of the converted field).

    Args:
        model: ``model(x, t, **model_kwargs)`` with ``t`` a ``[B]`` tensor of continuous times, returning
            ``prediction``; or a :class:`~diffcore.ModelWrapper` (its own prediction type, time convention
            and EDM preconditioning; ``prediction`` is then ignored). Samples of a batch must not interact
            (e.g. no batch-norm in training mode): per-sample Jacobians are taken through the batch.
        x: data ``[B, *S]`` (``D = prod(S)``), in the schedule's units. The model receives inputs in
            ``x.dtype``; the ODE state, δ and the result are float64.
        schedule: a :class:`~diffcore.schedules.Schedule` or name (default for a ModelWrapper: its own).
        prediction: ``"eps"``, ``"x0"``, ``"score"``, ``"velocity"``, ``"v"`` or an alias; default ``None``:
            the schedule's own (``"velocity"`` on the flow schedules, ``"eps"`` otherwise).
        t_start: data end ε (default ``schedule.t_end``, e.g. 1e-3 for VP-linear; Song et al. use 1e-5).
        t_end: noise end T (default ``schedule.t_start``). Needs ``t_start < t_end``, and the conversion
            to the velocity must be finite at both (an ``"eps"`` model at α = 0, e.g. rectified flow at
            t = 1, or an ``"x0"`` model at σ = 0 raise ``ValueError``).
        divergence: ``"exact"`` (trace of ∂v/∂x from D vector–Jacobian products through the model,
            batched; cost ∝ D), ``"hutchinson"`` (Hutchinson–Skilling ``uᵀ(∂v/∂x)u``, one VJP per probe;
            book §3.3.1, §5.1.2) or ``"auto"``:
            exact when ``D ≤ 32`` (:data:`AUTO_EXACT_MAX_DIM`; there it costs no more than a few dozen
            probes would and has no variance), Hutchinson otherwise.
        probe: ``"rademacher"`` (±1; lower variance, exact for a diagonal Jacobian) or ``"gaussian"``.
        num_probes: K probes per sample; all K are drawn **once per call and kept fixed for the whole ODE
            solve** (a deterministic right-hand side for the adaptive solver), integrated as K separate δ's
            along the same trajectory, and averaged. ``return_stats`` gives the K per-probe values.
        rtol, atol: tolerances of the Dormand–Prince 5(4) solver on the joint state ``[x, δ_1..δ_K]``.
            Measured on the Gaussian-mixture oracles (2-D and 16-D; VP, EDM, rectified flow), the error
            of log p stays below 25·τ nats for rtol = atol = τ: ~4e-5 at the default 1e-5 (the spec's),
            ~2e-6 at 1e-7.
        generator: ``torch.Generator`` for the probes.
        model_kwargs: passed to the model; tensors whose leading dimension is B are treated as per-sample
            and follow the samples (``step_control="per_sample"`` calls the model on the unfinished
            samples only).
        prior_log_prob: ``callable(x_T [B, *S]) → [B]`` log-density of the prior at ``t_end`` (e.g. the
            exact marginal of an oracle). Default: N(0, I) for VP / sub-VP schedules (their stationary
            law, Song et al. 2021) and N(0, σ(T)² I) otherwise (σ_max for VE / EDM, 1 for rectified flow at
            T = 1) — the law :func:`diffcore.prior_sample` starts from. The default is exact only where
            α(T) = 0; for VP-linear at T = 1, α(T) = 0.0066, the usual approximation.
        step_control: ``"per_sample"`` (default: each sample its own step sizes, results independent of
            the batch, finished samples leave the model calls) or ``"batch"`` (one step size for the
            batch, the largest per-sample error decides).
        max_steps: trial steps per sample before ``RuntimeError``.
        return_stats: also return a dict: ``nfe`` (model calls), ``nfe_per_sample``, ``steps``,
            ``rejected`` (``[B]``), ``prior_log_prob`` ``[B]``, ``delta`` ``[K, B]`` (``[1, B]`` exact),
            ``x_T`` ``[B, *S]``, ``divergence`` (the method used), and for Hutchinson
            ``log_p_per_probe`` ``[K, B]`` and ``std_err`` ``[B]`` (std over probes / √K; K ≥ 2).

    Returns ``log p`` ``[B]`` float64 (the mean over probes for Hutchinson), in nats, as a density on
    the units of ``x``; :func:`bits_per_dim` converts.

    The loop reads the error norm back to the host once per step (not sync-free on CUDA).
    """
    x = _check_x(x)
    call, native, schedule = _resolve_model(model, schedule, prediction, model_kwargs)
    divergence = _choice(divergence, "divergence", ("exact", "hutchinson", "auto"))
    probe = _choice(probe, "probe", ("rademacher", "gaussian"))
    num_probes = _positive_int(num_probes, "num_probes")
    rtol, atol = _positive_float(rtol, "rtol"), _positive_float(atol, "atol")
    max_steps = _positive_int(max_steps, "max_steps")
    if not isinstance(return_stats, bool):
        raise TypeError(f"return_stats: expected True or False, got {return_stats!r}")
    step_control = _choice(step_control, "step_control", ("per_sample", "batch"))
    _check_generator(generator, x.device)
    if prior_log_prob is not None and not callable(prior_log_prob):
        raise TypeError(f"prior_log_prob: expected a callable x_T -> [B] log-density, got "
                        f"{type(prior_log_prob).__name__}")

    t0 = float(schedule.t_end if t_start is None else t_start)
    t1 = float(schedule.t_start if t_end is None else t_end)
    for name, tv in (("t_start", t0), ("t_end", t1)):
        if not (math.isfinite(tv) and schedule.t_min <= tv <= schedule.t_max):
            raise ValueError(f"{name}: expected a time in [{schedule.t_min}, {schedule.t_max}] for {schedule!r}, "
                             f"got {tv}")
    if not t0 < t1:
        raise ValueError(f"t_start, t_end: expected t_start (data end) < t_end (noise end), got {t0} and {t1}")
    _check_endpoint(schedule, native, t0, "t_start")
    _check_endpoint(schedule, native, t1, "t_end")

    B, shape = x.shape[0], tuple(x.shape[1:])
    D = math.prod(shape)
    dev = x.device
    exact = divergence == "exact" or (divergence == "auto" and D <= AUTO_EXACT_MAX_DIM)
    K = 1 if exact else num_probes
    if exact:
        probes = None
    elif probe == "rademacher":
        probes = torch.randint(0, 2, (K, B) + shape, generator=generator, device=dev).to(_F64) * 2 - 1
    else:
        probes = torch.randn((K, B) + shape, generator=generator, device=dev, dtype=_F64)
    kw = dict(model_kwargs or {})
    vjp_state = {"dtype": x.dtype}

    def rhs(t, y, idx):
        b = y.shape[0]
        xs = y[:, :D].reshape((b,) + shape)
        u = _unit_probes(shape, b, dev) if exact else (probes if idx is None else probes[:, idx])
        v, div = _velocity_and_divergence(call, native, schedule, xs, t, _index_kwargs(kw, idx, B), u, exact,
                                          vjp_state)
        return torch.cat([v, div], 1)

    y0 = torch.cat([x.to(_F64).reshape(B, D), torch.zeros(B, K, dtype=_F64, device=dev)], 1)
    ta = torch.full((B,), t0, dtype=_F64, device=dev)
    tb = torch.full((B,), t1, dtype=_F64, device=dev)
    try:
        with torch.no_grad():
            y1, st = _dopri5(rhs, y0, ta, tb, rtol, atol, max_steps=max_steps,
                             batch_control=step_control == "batch")
    except _NoDependence:
        raise ValueError("model: its output does not depend on x through autograd (is it detached, or run under "
                         "torch.no_grad / inference_mode?); the divergence needs ∂model/∂x") from None
    xT = y1[:, :D].reshape((B,) + shape)
    delta = y1[:, D:].T  # [K, B]
    prior_fn = prior_log_prob if prior_log_prob is not None else _gaussian_prior(_default_prior_std(schedule, t1))
    with torch.no_grad():
        lp_prior = prior_fn(xT.to(x.dtype) if prior_log_prob is not None and x.dtype != _F64 else xT)
    if not isinstance(lp_prior, torch.Tensor) or lp_prior.shape != (B,):
        raise ValueError(f"prior_log_prob: expected a [B] = [{B}] tensor, got "
                         f"{tuple(lp_prior.shape) if isinstance(lp_prior, torch.Tensor) else type(lp_prior).__name__}")
    lp_prior = lp_prior.detach().to(_F64)
    per_probe = lp_prior[None] + delta
    logp = per_probe.mean(0)
    if not return_stats:
        return logp
    stats = dict(st)
    stats.update(prior_log_prob=lp_prior, delta=delta, x_T=xT, divergence="exact" if exact else "hutchinson")
    if not exact:
        stats["log_p_per_probe"] = per_probe
        if K >= 2:
            stats["std_err"] = per_probe.std(0) / math.sqrt(K)
    return logp, stats


# ------------------------------------------------------------------------------------------------
# public: bits_per_dim

_RANGES = {"[-1,1]": (-1.0, 1.0), "[0,1]": (0.0, 1.0)}


def bits_per_dim(log_p, dim, data_range=None, bits: int = 8, offset: Optional[float] = None):
    """Bits per dimension ``bpd = −log p/(D ln 2) + offset`` (Ho et al. 2020; Song et al. 2021).

    Args:
        log_p: log-likelihood(s) in nats (tensor or number), e.g. from :func:`log_likelihood`.
        dim: the data dimension D (an int, or a sample's shape such as ``(3, 32, 32)``).
        data_range: where the ``bits``-bit data were scaled to, for the dequantization offset:
            ``"[-1,1]"``, ``"[0,1]"`` or a ``(lo, hi)`` pair; ``None`` (default): no offset, the bits/dim
            of the density on the data's own scale (right for data already on the dequantized integer
            scale ``k + u``).
        bits: bit depth of the discrete data (8).
        offset: an explicit offset instead of ``data_range``.

    Convention (uniform dequantization, Song et al. 2021 / Ho et al.): the integer data k ∈ {0..2^bits − 1}
    become ``y = (k + u)/2^bits``, u ~ U[0, 1), then are mapped affinely onto ``[lo, hi]``. A density
    on that scale relates to the density of the dequantized 8-bit values ``k + u`` by the Jacobian
    ``(2^bits/(hi − lo))^D``, so ``offset = log2(2^bits/(hi − lo))``: **7** for ``[−1, 1]``, **8** for
    ``[0, 1]``. The result then upper-bounds (by Jensen) the
    bits/dim of the discrete data. If your scaling was ``k/127.5 − 1`` (÷255) the exact offset is
    ``log2(127.5) = 6.994``: pass ``offset=`` explicitly.

    Returns a float64 tensor shaped like ``log_p``.
    """
    if isinstance(dim, (tuple, list, torch.Size)):
        if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in dim):
            raise ValueError(f"dim: expected an int or a shape of positive ints, got {dim!r}")
        dim = math.prod(int(d) for d in dim)
    dim = _positive_int(dim, "dim")
    if offset is not None and data_range is not None:
        raise ValueError("offset, data_range: give at most one of them")
    if offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not math.isfinite(float(offset)):
            raise ValueError(f"offset: expected a finite number, got {offset!r}")
        off = float(offset)
    elif data_range is None:
        off = 0.0
    else:
        bits = _positive_int(bits, "bits")
        if isinstance(data_range, str):
            key = data_range.replace(" ", "").replace("−", "-")
            if key not in _RANGES:
                raise ValueError(f"data_range: expected one of {list(_RANGES)} or a (lo, hi) pair, got {data_range!r}")
            lo, hi = _RANGES[key]
        else:
            try:
                lo, hi = (float(v) for v in data_range)
            except (TypeError, ValueError):
                raise ValueError(f"data_range: expected one of {list(_RANGES)} or a (lo, hi) pair, "
                                 f"got {data_range!r}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"data_range: expected lo < hi, got {data_range!r}")
        off = bits - math.log2(hi - lo)
    try:
        lp = log_p if isinstance(log_p, torch.Tensor) else torch.as_tensor(log_p, dtype=_F64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"log_p: expected a tensor or number of log-likelihoods, got {type(log_p).__name__}") from None
    if lp.is_complex() or lp.dtype == torch.bool:
        raise TypeError(f"log_p: expected real values, got dtype {lp.dtype}")
    return -lp.to(_F64) / (dim * _LN2) + off


# ------------------------------------------------------------------------------------------------
# DDPM variational bound


class DDPMCoefficients(NamedTuple):
    """Per-step quantities of the discrete forward chain ``x_0 → x_1 → … → x_L`` on the times
    ``t_1 < … < t_L`` of an affine schedule (book §2.2 / Lemma 2.2.2; general form
    Lemma 4.4.2), all ``[L]`` float64, entry ``i − 1`` for step ``i``; the data are ``x_0`` (α_0 = 1,
    σ_0 = 0). In the variance notation of VP schedules ``beta`` is ``β_i`` (diffusers' ``betas``),
    ``alpha**2`` is ``ᾱ_i`` (``alphas_cumprod``)."""

    t: torch.Tensor  #: times t_i
    alpha: torch.Tensor  #: α_{t_i}
    sigma: torch.Tensor  #: σ_{t_i}
    alpha_step: torch.Tensor  #: a_i = α_i/α_{i−1}: q(x_i|x_{i−1}) = N(a_i x_{i−1}, b_i I)
    beta: torch.Tensor  #: b_i = σ_i² − a_i² σ_{i−1}²
    posterior_var: torch.Tensor  #: σ̃_i² = b_i σ_{i−1}²/σ_i² (0 for i = 1)
    coef_x0: torch.Tensor  #: μ̃_i = coef_x0·x0 + coef_xt·x_i; coef_x0 = α_{i−1} b_i/σ_i²
    coef_xt: torch.Tensor  #: a_i σ_{i−1}²/σ_i²
    snr: torch.Tensor  #: SNR_i = α_i²/σ_i²
    w_x0: torch.Tensor  #: ½(SNR_{i−1} − SNR_i): KL_i = w_x0·‖x0 − x̂0‖² with variance σ̃² (inf for i = 1)
    w_eps: torch.Tensor  #: ½(SNR_{i−1}/SNR_i − 1): KL_i = w_eps·‖ε − ε̂‖² with variance σ̃² (inf for i = 1)


def _check_timesteps(schedule, timesteps, device) -> torch.Tensor:
    if timesteps is None:
        if isinstance(schedule, _schedules.VPDiscrete):
            N = schedule.num_train_timesteps
            return (torch.arange(1, N + 1, dtype=_F64) / N).to(device)
        raise ValueError(f"timesteps: required for {schedule!r}: the increasing times t_1 < … < t_L of the discrete "
                         f"chain (only VPDiscrete defaults to its training steps t_i = i/N)")
    try:
        ts = torch.as_tensor(timesteps, dtype=_F64).detach().to(device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"timesteps: expected a 1-D tensor or sequence of times, got {type(timesteps).__name__}") from None
    if ts.dim() != 1 or ts.numel() < 1:
        raise ValueError(f"timesteps: expected a non-empty 1-D tensor of times, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()) or not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError("timesteps: expected finite, strictly increasing times t_1 < … < t_L")
    if float(ts[0]) < schedule.t_min or float(ts[-1]) > schedule.t_max:
        raise ValueError(f"timesteps: expected times in [{schedule.t_min}, {schedule.t_max}] for {schedule!r}, got "
                         f"[{float(ts[0])}, {float(ts[-1])}]")
    return ts


def ddpm_coefficients(schedule, timesteps=None, device=None) -> DDPMCoefficients:
    """The chain coefficients of :class:`DDPMCoefficients` for ``schedule`` on ``timesteps``
    (default for :class:`~diffcore.schedules.VPDiscrete`: its training steps ``t_i = i/N``, where
    ``α_{t_i}² = ᾱ_i`` exactly). Computed from the half log-SNR without cancellation:
    ``b_i = −σ_i² expm1(2(λ_i − λ_{i−1}))``, ``w_eps = ½ expm1(2(λ_{i−1} − λ_i))``,
    ``w_x0 = −½ SNR_{i−1} expm1(2(λ_i − λ_{i−1}))``, with ``λ_0 = +∞``.

    Raises ``ValueError`` naming ``timesteps`` for a missing, non-increasing or out-of-range grid, or a
    first time with σ = 0."""
    schedule = _schedules.get(schedule)
    ts = _check_timesteps(schedule, timesteps, as_device(device))
    v = schedule.eval(ts)
    a, s, lam = v.alpha.to(_F64), v.sigma.to(_F64), v.lam.to(_F64)
    if not float(s[0]) > 0:
        raise ValueError(f"timesteps: σ(t_1) must be > 0 (got t_1 = {float(ts[0])}); the first step must add noise")
    one = torch.ones(1, dtype=_F64, device=ts.device)
    a_prev = torch.cat([one, a[:-1]])
    s_prev = torch.cat([0 * one, s[:-1]])
    lam_prev = torch.cat([one * math.inf, lam[:-1]])
    em = torch.expm1(2 * (lam - lam_prev))  # e^{2(λ_i − λ_{i−1})} − 1 ∈ [−1, 0)
    s2, s2_prev = s * s, s_prev * s_prev
    beta = -s2 * em
    snr = torch.exp(2 * lam)
    snr_prev = torch.exp(2 * lam_prev)
    return DDPMCoefficients(
        t=ts, alpha=a, sigma=s, alpha_step=a / a_prev, beta=beta, posterior_var=beta * s2_prev / s2,
        coef_x0=-a_prev * em, coef_xt=(a / a_prev) * s2_prev / s2, snr=snr,
        w_x0=torch.where(torch.isinf(lam_prev), torch.full_like(lam, math.inf), -0.5 * snr_prev * em),
        w_eps=0.5 * torch.expm1(2 * (lam_prev - lam)),
    )


def _log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi (±inf allowed), without cancellation: on the side where both
    lie in the upper tail use Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)."""
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    lb, la = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return lb + torch.log(-torch.expm1(la - lb))


def _discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, std: float, bits: int) -> torch.Tensor:
    """−log P(x0 | N(mean, std²)) summed over dimensions ``[B]`` for data on the ``2^bits``-level grid of
    [−1, 1]: bins of width 2/(2^bits − 1) centred on the grid, the end bins open (Ho et al. 2020)."""
    half = 1.0 / (2 ** bits - 1)
    inf = torch.full_like(x0, math.inf)
    lo = torch.where(x0 < -1 + half, -inf, (x0 - half - mean) / std)
    hi = torch.where(x0 > 1 - half, inf, (x0 + half - mean) / std)
    return -_log_ndtr_diff(lo, hi).reshape(x0.shape[0], -1).sum(1)


def ddpm_bound(model: Callable, x0: torch.Tensor, schedule=None, prediction: Optional[str] = None, *, timesteps=None,
               variance: str = "posterior", num_timesteps: Optional[int] = None, num_samples: int = 1,
               decoder: str = "discretized", bits: int = 8, prior_std: Optional[float] = None,
               generator: Optional[torch.Generator] = None, model_kwargs: Optional[dict] = None,
               return_terms: bool = False):
    """Per-sample DDPM variational bound on ``−log p(x0)``, in **bits/dim** (book
    Thm. 2.2.3 with corrected indices (docs/errata.md B5), KL of Lemma 2.2.2 / eq. 2.2.7):

        −log p_θ(x0) ≤ L_prior + Σ_{i=2}^{L} E_{q(x_i|x0)} KL(q(x_{i−1}|x_i, x0) ‖ p_θ(x_{i−1}|x_i)) + L_recon,

    ``L_prior = KL(N(α_L x0, σ_L² I) ‖ N(0, s_p² I))`` (closed form), the reverse kernel
    ``p_θ(x_{i−1}|x_i) = N(μ̃_i(x_i, x̂0(x_i, t_i)), s_i² I)`` (the posterior mean with the model's data
    prediction), so ``KL_i = ½D[log(s_i²/σ̃_i²) + σ̃_i²/s_i² − 1] + coef_x0² ‖x0 − x̂0‖²/(2 s_i²)``, and
    ``L_recon = E_{q(x_1|x0)}[−log p_θ(x0|x_1)]`` with decoder mean ``x̂0(x_1, t_1)``.

    Args:
        model: ``model(x, t, **model_kwargs)`` (``t``: ``[B]`` continuous times; for a discrete-time
            network wrap it in ``ModelWrapper(..., time_convention="index")``) or a ModelWrapper.
        x0: data ``[B, *S]``; for ``decoder="discretized"``, ``bits``-bit data scaled to [−1, 1].
        schedule: a :class:`~diffcore.schedules.VPDiscrete` (steps ``t_i = i/N`` by default) or any schedule
            with ``timesteps``.
        prediction: the model's prediction type (converted to ``x̂0``).
        timesteps: increasing times ``t_1 < … < t_L`` of the chain (a respaced subset gives the bound of
            the respaced chain); required unless the schedule is VPDiscrete.
        variance: reverse variance ``s_i²``: ``"posterior"`` (σ̃_i², the book's choice, tight for point-mass
            data) or ``"beta"`` (b_i, the DDPM paper's "fixedlarge", optimal for N(0, I) data). Decoder
            (i = 1) variance: ``b_1 = σ_1²`` for ``"beta"``; σ̃_2² for ``"posterior"`` (σ̃_1² = 0; the clipped
            value of the reference code of Nichol & Dhariwal 2021).
        num_timesteps: ``None`` (default): the full sum over all L − 1 KL terms, each with its own noise draw
            per sample (L model calls per estimate; the standard evaluation). An int n ≤ L − 1: a stratified
            Monte-Carlo estimate — the steps 2..L are cut into n contiguous strata, one step drawn
            uniformly per stratum and sample, weighted by the stratum size (unbiased; n + 1 model calls).
        num_samples: independent estimates averaged (each with fresh noise and steps); with ≥ 2 the
            terms include a standard error. The expectation over x_i has no closed form, so every estimate
            is unbiased but random; use ``generator`` for reproducibility.
        decoder: ``"discretized"`` (default; discretized Gaussian, bin width 2/(2^bits − 1), open end bins,
            Ho et al. 2020: a bound on the probability of the discrete data, directly in bits/dim, no
            dequantization offset) or ``"gaussian"`` (the continuous density N(x0; x̂0, s_1²): a bound on a
            density on x0's scale; see :func:`bits_per_dim` for offsets).
        bits: bit depth for the discretized decoder (8).
        prior_std: std of the Gaussian prior at t_L (default 1 for VP/sub-VP, else σ(t_L)).
        generator: ``torch.Generator`` for the noise and the sampled steps.
        model_kwargs: passed to the model unchanged.
        return_terms: also return a dict (nats, float64): ``prior``, ``diffusion`` (Σ KL), ``recon``,
            ``total`` (each ``[B]``, averaged over ``num_samples``), ``bpd_samples`` ``[num_samples, B]``,
            ``std_err`` ``[B]`` (bits/dim; with ``num_samples ≥ 2``), ``kl_steps`` ``[L − 1, B]`` (the
            full-sum mode: the KL of each step i = 2..L), ``nfe``.

    Returns bits/dim ``[B]`` float64 (total nats / (D ln 2)). Evaluation only: runs under ``torch.no_grad``.
    """
    x0 = _check_x(x0, "x0")
    if not isinstance(return_terms, bool):
        raise TypeError(f"return_terms: expected True or False, got {return_terms!r}")
    call, native, schedule = _resolve_model(model, schedule, prediction, model_kwargs)
    variance = _choice(variance, "variance", ("posterior", "beta"))
    decoder = _choice(decoder, "decoder", ("discretized", "gaussian"))
    num_samples = _positive_int(num_samples, "num_samples")
    bits = _positive_int(bits, "bits")
    _check_generator(generator, x0.device)
    dev = x0.device
    co = ddpm_coefficients(schedule, timesteps, device=dev)
    L = co.t.numel()
    if num_timesteps is not None:
        num_timesteps = _positive_int(num_timesteps, "num_timesteps")
        if L < 2 or num_timesteps > L - 1:
            raise ValueError(f"num_timesteps: expected at most L − 1 = {L - 1} (the number of KL terms), got "
                             f"{num_timesteps}")
    if decoder == "discretized":
        if float(x0.min()) < -1 - 1e-6 or float(x0.max()) > 1 + 1e-6:
            raise ValueError(f"x0: the discretized decoder expects {bits}-bit data scaled to [-1, 1], got values in "
                             f"[{float(x0.min())}, {float(x0.max())}] (use decoder='gaussian' for continuous data)")
    if prior_std is None:
        prior_std = _default_prior_std(schedule, float(co.t[-1]))
    prior_std = _positive_float(prior_std, "prior_std")
    kw = dict(model_kwargs or {})
    B = x0.shape[0]
    D = x0[0].numel()
    xf = x0.to(_F64).reshape(B, D)
    shape = tuple(x0.shape)
    nfe = 0

    def x0_hat(x_i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        xin = x_i.reshape(shape).to(x0.dtype)
        out = call(xin, _model_time(t, x0.dtype), kw)
        if not isinstance(out, torch.Tensor) or out.shape != xin.shape:
            raise ValueError(f"model: expected an output of shape {tuple(xin.shape)}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        if native != "x0":
            out = convert(out.to(_F64), xin.to(_F64), t, schedule, native, "x0")
        return out.to(_F64).reshape(B, D)

    def noise():
        return torch.randn(B, D, generator=generator, device=dev, dtype=_F64)

    # per-step variances
    s2 = co.posterior_var.clone() if variance == "posterior" else co.beta.clone()
    if variance == "posterior":
        s2[0] = co.posterior_var[1] if L >= 2 else co.beta[0]
    kl_const = 0.5 * D * (torch.log(s2 / co.posterior_var) + co.posterior_var / s2 - 1)
    if variance == "posterior":
        kl_const.zero_()
    kl_w = co.coef_x0 ** 2 / (2 * s2)  # weight of ‖x0 − x̂0‖² in KL_i (i ≥ 2)

    # L_prior, closed form
    aL, sL = co.alpha[-1], co.sigma[-1]
    vp = prior_std ** 2
    prior = 0.5 * (((aL * aL) * (xf * xf) + sL * sL) / vp - 1 - torch.log(sL * sL / vp)).sum(1)

    recon_all, diff_all = [], []
    kl_steps = torch.zeros(max(L - 1, 0), B, dtype=_F64, device=dev) if num_timesteps is None else None
    with torch.no_grad():
        for _ in range(num_samples):
            # L_recon (i = 1)
            t1 = co.t[0].expand(B)
            xh = x0_hat(co.alpha[0] * xf + co.sigma[0] * noise(), t1)
            s1 = math.sqrt(float(s2[0]))
            if decoder == "discretized":
                recon = _discretized_gaussian_nll(xf, xh, s1, bits)
            else:
                recon = 0.5 * (((xf - xh) / s1) ** 2 + _LOG_2PI + 2 * math.log(s1)).sum(1)
            diff = torch.zeros(B, dtype=_F64, device=dev)
            if L >= 2 and num_timesteps is None:
                for j in range(1, L):
                    xh = x0_hat(co.alpha[j] * xf + co.sigma[j] * noise(), co.t[j].expand(B))
                    kl = kl_const[j] + kl_w[j] * ((xf - xh) ** 2).sum(1)
                    kl_steps[j - 1] += kl / num_samples
                    diff += kl
            elif L >= 2:
                edges = torch.linspace(0, L - 1, num_timesteps + 1, dtype=_F64).round().long().tolist()
                for k in range(num_timesteps):
                    size = edges[k + 1] - edges[k]
                    u = torch.rand(B, generator=generator, device=dev, dtype=_F64)
                    j = 1 + edges[k] + torch.clamp((u * size).long(), max=size - 1)  # index of step i = j + 1
                    xh = x0_hat(co.alpha[j][:, None] * xf + co.sigma[j][:, None] * noise(), co.t[j])
                    diff += size * (kl_const[j] + kl_w[j] * ((xf - xh) ** 2).sum(1))
            recon_all.append(recon)
            diff_all.append(diff)
    recon_r, diff_r = torch.stack(recon_all), torch.stack(diff_all)
    total_r = prior[None] + diff_r + recon_r
    bpd_r = total_r / (D * _LN2)
    bpd = bpd_r.mean(0)
    if not return_terms:
        return bpd
    terms = {"prior": prior, "diffusion": diff_r.mean(0), "recon": recon_r.mean(0), "total": total_r.mean(0),
             "bpd_samples": bpd_r, "nfe": nfe}
    if num_samples >= 2:
        terms["std_err"] = bpd_r.std(0) / math.sqrt(num_samples)
    if kl_steps is not None:
        terms["kl_steps"] = kl_steps
    return bpd, terms


# ------------------------------------------------------------------------------------------------
# continuous-time evidence bound (VDM / score-SDE ELBO)

_ELBO_T_SAMPLING = ("importance", "uniform")
_ELBO_DECODERS = ("inverse", "denoiser")


def continuous_elbo(model: Callable, x: torch.Tensor, schedule=None, prediction: Optional[str] = None, *,
                    t_min: Optional[float] = None, t_max: Optional[float] = None, n_t: int = 16,
                    t_sampling: str = "importance", stratified: bool = True, decoder: str = "inverse",
                    prior_std: Optional[float] = None, generator: Optional[torch.Generator] = None,
                    model_kwargs: Optional[dict] = None, return_terms: bool = False):
    """Per-sample continuous-time evidence lower bound ``ELBO(x) ≤ log p_θ(x)`` in nats (Kingma et al. 2021,
    "Variational Diffusion Models", eq. (17)–(18); book §4.4.3, the Remark after eq. (4.4.7), and App. C.2,
    eq. (C.2.1)–(C.2.2), for its path-space form):

        ELBO(x) = −KL(q(x_T|x) ‖ N(0, s_p² I)) + E_{q(x_{t0}|x)}[log p(x | x_{t0})]
                  − ½ ∫_{t0}^{T} −SNR'(t) E_ε ‖x − x̂(x_t, t)‖² dt,

    with ``x_t = α_t x + σ_t ε``, ``SNR = α²/σ²``. The integrand is evaluated in the ε form
    ``−½ SNR'(t)‖x − x̂‖² = −λ'(t)‖ε − ε̂(x_t, t)‖²`` (λ = log(α/σ); the two are equal since
    ``α(x − x̂) = σ(ε̂ − ε)``), which stays finite at small t where SNR is huge. The three terms
    (docs/bridges.md, "The continuous-time ELBO"):

    * prior: ``KL(N(α_T x, σ_T² I) ‖ N(0, s_p² I))``, closed form;
    * reconstruction (the truncation at ``t0 = t_min``) with decoder ``"inverse"`` (default):
      ``p(x | z) = N(x; z/α_{t0}, (σ_{t0}/α_{t0})² I)``, the forward kernel read backwards, whose term
      ``D/2 (1 + log 2π + 2 log(σ_{t0}/α_{t0}))`` is closed form and needs no model call; with
      ``"denoiser"``: ``p(x | z) = N(x; x̂(z, t0), (σ_{t0}/α_{t0})² I)``, one model call per draw (tighter
      where the denoiser is accurate);
    * diffusion: a Monte-Carlo estimate with ``n_t`` draws of ``(t, ε)`` per sample. ``t_sampling=
      "importance"`` (default) draws λ uniformly on ``[λ(T), λ(t0)]`` (the importance weight ``−λ'`` of
      VDM's eq. (18) cancels: the estimate is ``(λ(t0) − λ(T))·‖ε − ε̂‖²``); ``"uniform"`` draws t
      uniformly on ``[t0, T]`` (estimate ``(T − t0)(−λ'(t))‖ε − ε̂‖²``). ``stratified`` (default) puts
      the k-th of the ``n_t`` draws in the k-th of ``n_t`` equal strata (VDM's low-discrepancy sampler):
      unbiased, lower variance.

    For the exact denoiser of the data distribution ``q`` the bound equals (docs/bridges.md)
    ``log q(x) − Δ_prior(x) − Δ_trunc(x)``, with ``Δ_prior = E_{q(x_T|x)}[log q_T(x_T) − log π(x_T)]`` and
    ``Δ_trunc = log q(x) − D log α_{t0} − E_{q(x_{t0}|x)} log q_{t0}(x_{t0})`` (decoder ``"inverse"``); both
    gaps are nonnegative on average over ``x ~ q`` (a KL divergence and an entropy increase) but not
    pointwise.

    Args:
        model: ``model(x, t, **model_kwargs)`` returning ``prediction``, or a :class:`~diffcore.ModelWrapper`.
        x: data ``[B, *S]`` (a floating-point tensor), in the schedule's units; the model sees ``x.dtype``,
            all accumulation is float64.
        schedule: a :class:`~diffcore.schedules.Schedule` or name (a ModelWrapper's own by default).
        prediction: the model's prediction type; ``None``: the schedule's own (converted to ε exactly).
        t_min: ``t0``, the data end of the integral (default ``schedule.t_end``, e.g. 1e-3 for VP-linear);
            needs ``σ(t0) > 0`` and ``α(t0) > 0``.
        t_max: ``T``, the noise end (default ``schedule.t_start``); needs ``α(T) > 0`` (λ(T) finite), so
            for rectified flow pass e.g. ``t_max = 1 − 1e-3``.
        n_t: draws of ``(t, ε)`` per sample (one batched model call each).
        t_sampling: ``"importance"`` or ``"uniform"`` (above).
        stratified: stratify the ``n_t`` draws (above).
        decoder: ``"inverse"`` or ``"denoiser"`` (above).
        prior_std: ``s_p`` (default 1 for VP/sub-VP, else σ(T), as :func:`log_likelihood`).
        generator: ``torch.Generator`` for t and ε (on ``x``'s device).
        model_kwargs: passed to the model unchanged.
        return_terms: also return a dict of ``[B]`` float64 tensors (nats): ``prior`` (the KL), ``recon``
            (``−E log p(x|x_{t0})``), ``diffusion`` (the integral), ``std_err`` (of the ELBO, from the spread
            of the ``n_t`` draws; conservative when stratified; ``n_t ≥ 2``), and ``nfe``, ``t_min``, ``t_max``.

    Returns the ELBO ``[B]`` float64 in nats (a bound on a density on the units of ``x``;
    ``bits_per_dim(elbo, D)`` gives the corresponding upper bound in bits/dim). Evaluation only: runs under
    ``torch.no_grad``.
    """
    x = _check_x(x)
    call, native, schedule = _resolve_model(model, schedule, prediction, model_kwargs)
    n_t = _positive_int(n_t, "n_t")
    t_sampling = _choice(t_sampling, "t_sampling", _ELBO_T_SAMPLING)
    decoder = _choice(decoder, "decoder", _ELBO_DECODERS)
    for name, v in (("stratified", stratified), ("return_terms", return_terms)):
        if not isinstance(v, bool):
            raise TypeError(f"{name}: expected True or False, got {v!r}")
    _check_generator(generator, x.device)
    t0 = schedule.t_end if t_min is None else t_min
    T = schedule.t_start if t_max is None else t_max
    for name, tv in (("t_min", t0), ("t_max", T)):
        if isinstance(tv, bool) or not isinstance(tv, numbers.Real) or not (
                math.isfinite(tv) and schedule.t_min <= tv <= schedule.t_max):
            raise ValueError(f"{name}: expected a time in [{schedule.t_min}, {schedule.t_max}] for {schedule!r}, "
                             f"got {tv}")
    t0, T = float(t0), float(T)
    if not t0 < T:
        raise ValueError(f"t_min, t_max: expected t_min (data end) < t_max (noise end), got {t0} and {T}")
    ends = schedule.eval(torch.tensor([t0, T], dtype=_F64))
    a0, s0, aT, sT = (float(v) for v in (ends.alpha[0], ends.sigma[0], ends.alpha[1], ends.sigma[1]))
    lam0, lamT = float(ends.lam[0]), float(ends.lam[1])
    if not (s0 > 0 and a0 > 0 and math.isfinite(lam0)):
        raise ValueError(f"t_min: expected a time with α > 0 and σ > 0 (a finite log-SNR), got t_min = {t0} "
                         f"(α = {a0:.3g}, σ = {s0:.3g}) for {schedule!r}; e.g. t_min = 1e-3")
    if not (aT > 0 and math.isfinite(lamT)):
        raise ValueError(f"t_max: expected a time with α > 0 (a finite log-SNR; the ELBO's weight −λ'(t) diverges "
                         f"where α = 0), got t_max = {T} (α = {aT:.3g}) for {schedule!r}; e.g. t_max = {T} − 1e-3")
    if prior_std is None:
        prior_std = _default_prior_std(schedule, T)
    prior_std = _positive_float(prior_std, "prior_std")
    kw = dict(model_kwargs or {})
    B, shape = x.shape[0], tuple(x.shape)
    D = x[0].numel()
    dev = x.device
    xf = x.to(_F64).reshape(B, D)
    nfe = 0

    def eps_hat(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        xin = xt.reshape(shape).to(x.dtype)
        out = call(xin, _model_time(t, x.dtype), kw)
        if not isinstance(out, torch.Tensor) or out.shape != xin.shape:
            raise ValueError(f"model: expected an output of shape {tuple(xin.shape)}, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        out = out.to(_F64)
        if native != "eps":
            out = convert(out, xin.to(_F64), t, schedule, native, "eps")
        return out.reshape(B, D)

    # prior: KL(N(α_T x, σ_T² I) ‖ N(0, s_p² I))
    vp = prior_std ** 2
    prior = 0.5 * (((aT * aT) * (xf * xf) + sT * sT) / vp - 1.0 - math.log(sT * sT / vp)).sum(1)
    log_ratio0 = math.log(s0 / a0)  # log of the decoder's std
    draws = torch.empty(n_t, B, dtype=_F64, device=dev)
    with torch.no_grad():
        if decoder == "inverse":
            recon = torch.full((B,), 0.5 * D * (1.0 + _LOG_2PI + 2.0 * log_ratio0), dtype=_F64, device=dev)
        else:
            eps = torch.randn(B, D, generator=generator, device=dev, dtype=_F64)
            z = a0 * xf + s0 * eps
            e_hat = eps_hat(z, torch.full((B,), t0, dtype=_F64, device=dev))
            # x − x̂0 = (σ/α)(ε̂ − ε): the decoder's squared error in units of its std is ‖ε̂ − ε‖²
            recon = 0.5 * ((e_hat - eps) ** 2).sum(1) + 0.5 * D * (_LOG_2PI + 2.0 * log_ratio0)
        for k in range(n_t):
            u = torch.rand(B, generator=generator, device=dev, dtype=_F64)
            if stratified:
                u = (k + u) / n_t
            if t_sampling == "importance":
                lam = lam0 + (lamT - lam0) * u
                t = schedule.t_of_lam(lam).to(_F64).clamp(t0, T)
                weight = torch.full((B,), lam0 - lamT, dtype=_F64, device=dev)
            else:
                t = t0 + (T - t0) * u
                weight = -(T - t0) * schedule.eval(t).dlam.to(_F64)
            vals = schedule.eval(t)
            eps = torch.randn(B, D, generator=generator, device=dev, dtype=_F64)
            xt = vals.alpha.to(_F64)[:, None] * xf + vals.sigma.to(_F64)[:, None] * eps
            draws[k] = weight * ((eps - eps_hat(xt, t)) ** 2).sum(1)
    diffusion = draws.mean(0)
    elbo = -(prior + recon + diffusion)
    if not return_terms:
        return elbo
    terms = {"prior": prior, "recon": recon, "diffusion": diffusion, "nfe": nfe, "t_min": t0, "t_max": T}
    if n_t >= 2:
        terms["std_err"] = draws.std(0) / math.sqrt(n_t)
    return elbo, terms
