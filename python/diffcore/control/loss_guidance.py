"""The common form of gradient guidance (book Eq. (8.1.1): the score plus a weighted guidance term) and
training-free loss guidance (book §8.4.1, Eq. (8.4.2)).

book Eq. (8.1.1). Every guidance method supplies a term ``G_t(x, c)`` and a weight ``w_t`` and replaces the
model's score by ``ŝ_g = ŝ + w_t G_t``. Each prediction type is affine in ``ŝ`` at fixed ``(x_t, t)``
(book Eq. (6.3.1)), so the guided prediction is the model's plus ``c_P(t)·w_t·G_t`` with

    ε̂_g = ε̂ − σ_t w G,   x̂_g = x̂ + (σ_t²/α_t) w G,   v̂_g = v̂ − ½ g²(t) w G,   ŝ_g = ŝ + w G,

and for Salimans' ``v = α ε − σ x0`` (VP only) ``c_v = −σ(α² + σ²)/α``. :func:`score_coefficient`
gives ``c_P``; :class:`GuidedModel` is the model wrapper ``fn(x, t) → guided prediction`` that every
solver of :func:`diffcore.sample` accepts unchanged.

book §8.4.1. Training-free guidance with a non-negative loss ``ℓ(x0, c)`` modifies one DDIM step from ``t``
to ``t' < t`` (book Eq. (8.4.2)):

    x_{t'} = α_{t'} (x̂0(x_t) + η^data 𝒢_0) − σ_{t'} σ_t (ŝ(x_t) + η^latent 𝒢_t),

- data space: ``𝒢_0 = −∇_{x0} ℓ(x0, c)`` at ``x0 = x̂0(x_t)``; may be iterated (gradient descent on
  the clean estimate, :func:`data_space_update`); needs no derivative of the denoiser;
- noise space: ``𝒢_t = −η ∇_{x_t} ℓ(x̂0(x_t), c) = −η (∂x̂0/∂x_t)ᵀ ∇_{x0} ℓ`` — one VJP through the
  denoiser. Correction (docs/errata.md D11): the book writes ``∇_{x0} log ℓ``; the chain rule of the surrogate
  likelihood ``p̃ ∝ exp(−η ℓ)`` has no logarithm.

A second correction: Eq. (8.4.2) read literally changes ``ŝ`` by ``η^latent 𝒢_t`` while holding
``x̂0`` fixed. But ``x̂0`` and ``ŝ`` are tied at ``x_t`` by Tweedie, ``x̂0 = (x_t + σ_t² ŝ)/α_t``, and with
``x̂0`` frozen the net change of ``x_{t'}`` is ``−σ_{t'} σ_t η^latent 𝒢_t``: *against* the guidance (a
sampler with ℓ = ½‖x − c‖² then moves away from ``c``). The library applies the noise-space term
through the score consistently (book Eq. (8.1.1): ``x̂0_g = x̂0 + (σ_t²/α_t) η^latent 𝒢_t``,
``ε̂_g = ε̂ − σ_t η^latent 𝒢_t``), in the spirit of the reference methods, which move ``x_t`` itself
and re-evaluate the model (as the FreeDoM / TFG code does; not re-verified here); the net change ``σ_t (α_{t'} σ_t/α_t − σ_{t'}) η^latent 𝒢_t`` then has the guidance's sign whenever
the SNR grows from ``t`` to ``t'``. The data-space term then corrects the clean estimate with ``ε̂_g``
unchanged (book §8.4.1 A):

    x_{t'} = α_{t'} x̂0' + σ_{t'} ε̂_g,   x̂0' = x̂0_g after ``k`` steps x0 ← x0 + η^data 𝒢_0(x0).

With ``η^data = η^latent = 0`` this is plain DDIM (book Eq. (9.2.2)); with ``η^data = 0`` it is one
DDIM step of :class:`LossGuidance` (the noise-space term as a book Eq. (8.1.1) score term, usable with any
solver). The data-space term changes ``x̂0`` without changing ``ε̂``, which no single prediction can
express, so it lives in the step (:func:`loss_guided_ddim_step`) and its sampler
(:func:`loss_guided_ddim`).

Guidance weights follow the library's ω convention: a weight of 1 on an exact ``∇ log p_t(c|x)`` is
the conditional model (exact Bayes), 0 the unconditional one (book §8.2–8.3; :class:`diffcore.CFG`).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from .. import schedules as _schedules
from ..grids import timesteps as _timesteps
from ..param import canonical_prediction, convert, resolve_prediction

__all__ = ["score_coefficient", "add_score_term", "GuidedModel", "LossGuidance", "noise_space_term",
           "data_space_update", "loss_guided_ddim_step", "loss_guided_ddim"]

Weight = Union[float, Callable[[torch.Tensor], torch.Tensor]]


# ------------------------------------------------------------------------------------------------
# argument checks shared by every wrapper of diffcore.control


def check_schedule(schedule):
    if schedule is None:
        raise TypeError("schedule: required (a diffcore Schedule or its name, e.g. 'vp_linear')")
    return _schedules.get(schedule)


def check_callable(obj, name: str, what: str):
    if not callable(obj):
        raise TypeError(f"{name}: expected {what}, got {type(obj).__name__}")
    return obj


def check_weight(w, name: str):
    """A number or a callable ``t [B] (float64) → [B]``; booleans are rejected."""
    if callable(w):
        return w
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(float(w)):
        raise TypeError(f"{name}: expected a finite number or a callable t -> [B] tensor, got {w!r}")
    return float(w)


def check_model_kwargs(kw):
    if kw is not None and not isinstance(kw, dict):
        raise TypeError(f"model_kwargs: expected a dict, got {type(kw).__name__}")
    return dict(kw or {})


def batch_times(t, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """``t`` as a ``[B]`` tensor on ``x``'s device (a scalar broadcasts)."""
    if not isinstance(t, torch.Tensor):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"{name}: expected a number or a [B] tensor of times, got {type(t).__name__}")
        t = torch.tensor(float(t), dtype=torch.float64)
    t = t.to(x.device)
    if t.dim() == 0 or (t.dim() == 1 and t.numel() == 1):
        return t.reshape(()).expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"{name}: expected a scalar or shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def per_sample(w, t: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    """Evaluate a weight at float64 times and shape it ``[B, 1, ..., 1]`` for broadcasting over x."""
    t64 = t.to(torch.float64)
    val = w(t64) if callable(w) else w
    val = torch.as_tensor(val, dtype=torch.float64, device=x.device)
    if val.dim() == 0:
        val = val.expand(x.shape[0])
    if val.shape != (x.shape[0],):
        raise ValueError(f"{name}: a callable weight must return a scalar or shape ({x.shape[0]},), got "
                         f"{tuple(val.shape)}")
    return val.reshape((x.shape[0],) + (1,) * (x.dim() - 1))


# ------------------------------------------------------------------------------------------------
# book Eq. (8.1.1): a score term in any prediction type


def score_coefficient(t, schedule, prediction) -> torch.Tensor:
    """``c_P(t) = ∂P/∂ŝ`` at fixed ``x_t`` (float64, shaped like ``t``), from the conversions of book
    Prop. 6.3.1:
    ``1`` (score), ``−σ`` (eps), ``σ²/α`` (x0), ``−½g²`` (velocity), ``−σ(α²+σ²)/α`` (v, VP only).

    Computed from the schedule directly rather than through ``conversion_coefs("score", ...)``,
    whose offset term is singular at σ = 0 while this coefficient is not."""
    schedule = check_schedule(schedule)
    pred = canonical_prediction(prediction)
    t = torch.as_tensor(t).to(torch.float64)
    v = schedule.eval(t)
    if pred == "score":
        return torch.ones_like(v.sigma)
    if pred == "eps":
        return -v.sigma
    if pred == "x0":
        return v.sigma ** 2 / v.alpha
    if pred == "velocity":
        return -0.5 * v.g2
    if getattr(schedule, "kind", "general") != "vp":
        raise ValueError(f"prediction: the Salimans 'v' prediction needs a variance-preserving schedule, got "
                         f"{schedule!r}; use 'velocity'")
    return -v.sigma * (v.alpha ** 2 + v.sigma ** 2) / v.alpha


def add_score_term(pred: torch.Tensor, term: torch.Tensor, t, schedule, prediction) -> torch.Tensor:
    """``P + c_P(t)·term``: the prediction whose score is ``ŝ + term`` (book Eq. (8.1.1)).

    ``term`` is ``w_t G_t`` already weighted; it is cast to ``pred``'s dtype after the float64
    coefficient is applied."""
    if not isinstance(pred, torch.Tensor) or not isinstance(term, torch.Tensor):
        raise TypeError("pred, term: expected torch tensors")
    if term.shape != pred.shape:
        raise ValueError(f"term: expected the prediction's shape {tuple(pred.shape)}, got {tuple(term.shape)}")
    t = batch_times(t, pred)
    c = score_coefficient(t, schedule, prediction).reshape((pred.shape[0],) + (1,) * (pred.dim() - 1))
    return pred + (c * term.to(torch.float64)).to(pred.dtype)


class GuidedModel:
    """Model wrapper ``fn(x, t) → P_g = P + c_P(t)·w_t·G_t(x)`` (book Eq. (8.1.1)), in the model's
    own prediction type, for :func:`diffcore.sample`, :func:`diffcore.solvers.ddim_step`, ...

    Subclasses implement :meth:`guidance_term` ``(x, t, pred) → G`` (same shape as ``x``). When
    ``needs_model_grad`` is set (DPS, book §8.4.1 noise space) the model is evaluated under autograd at a
    leaf copy of ``x`` so that ``G`` may differentiate through it (derivative class R); otherwise
    the model runs in the caller's grad mode. The returned prediction is always detached from any
    graph built for ``G``: guidance is a sampling-time operation.

    Args:
        model: ``model(x, t, **model_kwargs)`` returning ``prediction``.
        schedule: the noise schedule (or its name).
        prediction: the model's prediction type (``"eps"``, ``"x0"``, ``"score"``, ``"velocity"``,
            ``"v"`` or an alias); ``None`` (default): the schedule's own, ``"velocity"`` on the
            flow-matching schedules and ``"eps"`` on the diffusion ones (the model is never probed).
        weight: ``w_t``, a number or a callable ``t [B] (float64) → [B]``.
        model_kwargs: extra keyword arguments of ``model``.
    """

    needs_model_grad = False

    def __init__(self, model: Callable, schedule, prediction=None, weight: Weight = 1.0,
                 model_kwargs: Optional[dict] = None):
        self.model = check_callable(model, "model", "a callable model(x, t, **model_kwargs)")
        self.schedule = check_schedule(schedule)
        self.prediction = resolve_prediction(prediction, self.schedule)
        if self.prediction == "v" and getattr(self.schedule, "kind", "general") != "vp":
            raise ValueError(f"prediction: 'v' needs a variance-preserving schedule, got {self.schedule!r}")
        self.weight = check_weight(weight, "weight")
        self.model_kwargs = check_model_kwargs(model_kwargs)

    def guidance_term(self, x: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _predict(self, x, t):
        out = self.model(x, t, **self.model_kwargs)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"model: expected an output of shape {tuple(x.shape)}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out

    def to_x0(self, pred: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser ``x̂0(x_t)`` from the model output (differentiable, book Eq. (6.3.1))."""
        return convert(pred, x, t, self.schedule, self.prediction, "x0")

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError("x: expected a floating-point tensor with a batch dimension")
        t = batch_times(t, x)
        if self.needs_model_grad:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                pred = self._predict(xg, t)
                G = self.guidance_term(xg, t, pred)
            pred = pred.detach()
        else:
            pred = self._predict(x, t)
            G = self.guidance_term(x, t, pred)
        if G.shape != x.shape:
            raise ValueError(f"guidance_term: expected shape {tuple(x.shape)}, got {tuple(G.shape)}")
        w = per_sample(self.weight, t, x, "weight")
        return add_score_term(pred, w * G.detach().to(torch.float64), t, self.schedule, self.prediction)


# ------------------------------------------------------------------------------------------------
# book §8.4.1: training-free loss guidance


def _checked_loss(loss: Callable, x0: torch.Tensor, cond) -> torch.Tensor:
    val = loss(x0, cond)
    if not isinstance(val, torch.Tensor) or val.dim() > 1 or (val.dim() == 1 and val.shape[0] != x0.shape[0]):
        raise ValueError(f"loss: expected a scalar or a [B] tensor of per-sample losses, got "
                         f"{getattr(val, 'shape', type(val).__name__)}")
    return val


def _loss_grad(loss: Callable, x0: torch.Tensor, cond) -> torch.Tensor:
    """``∇_{x0} Σ_b ℓ(x0_b, c_b)``: the per-sample gradients, since samples do not interact."""
    with torch.enable_grad():
        xg = x0.detach().requires_grad_(True)
        return torch.autograd.grad(_checked_loss(loss, xg, cond).sum(), xg)[0]


def noise_space_term(model: Callable, x: torch.Tensor, t, loss: Callable, cond, schedule, prediction=None,
                     eta: float = 1.0, model_kwargs: Optional[dict] = None):
    """``(pred, x̂0, 𝒢_t)`` with ``𝒢_t = −η ∇_{x_t} ℓ(x̂0(x_t), c) = −η (∂x̂0/∂x_t)ᵀ ∇_{x0} ℓ``
    (book §8.4.1 with docs/errata.md D11; one VJP through the model). ``pred`` and ``x̂0`` are
    returned detached."""
    schedule = check_schedule(schedule)
    check_callable(loss, "loss", "a callable loss(x0, cond) -> [B]")
    eta = check_weight(eta, "eta")
    g = _NoiseSpace(model, schedule, prediction, loss, cond, eta, model_kwargs)
    tb = batch_times(t, x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        pred = g._predict(xg, tb)
        x0 = g.to_x0(pred, xg, tb)
        G = g._term(xg, tb, x0)
    return pred.detach(), x0.detach(), G.detach()


class _NoiseSpace(GuidedModel):
    needs_model_grad = True

    def __init__(self, model, schedule, prediction, loss, cond, eta, model_kwargs):
        super().__init__(model, schedule, prediction, 1.0, model_kwargs)
        self.loss, self.cond, self.eta = loss, cond, eta

    def _term(self, x, t, x0):
        with torch.enable_grad():
            gx = torch.autograd.grad(_checked_loss(self.loss, x0, self.cond).sum(), x)[0]
        return -per_sample(self.eta, t, x, "eta").to(gx.dtype) * gx

    def guidance_term(self, x, t, pred):
        return self._term(x, t, self.to_x0(pred, x, t))


class LossGuidance(_NoiseSpace):
    """Noise-space loss guidance as a model wrapper: ``ŝ_g = ŝ + η^latent 𝒢_t`` with
    ``𝒢_t = −η ∇_{x_t} ℓ(x̂0(x_t), c)`` (book §8.4.1 B; the surrogate
    ``G = −τ∇ℓ`` evaluated through the Tweedie estimate), converted exactly to the model's
    prediction type so that any solver of :func:`diffcore.sample` uses it.

    Args:
        model, schedule, prediction, model_kwargs: as in :class:`GuidedModel`.
        loss: ``loss(x0, cond) → [B]`` (or a scalar sum) of non-negative per-sample losses.
        cond: the condition handed to ``loss`` unchanged.
        eta_latent: ``η^latent_t`` (number or callable of t); eta: the rescaling ``η`` of the
            surrogate likelihood ``p̃ ∝ exp(−η ℓ)``.

    Note: even with an exact model, the guided PF-ODE does not sample the tilted
    density ``p_0 exp(−η^latent η ℓ)``.
    """

    def __init__(self, model: Callable, loss: Callable, schedule, prediction=None, cond=None,
                 eta_latent: Weight = 1.0, eta: Weight = 1.0, model_kwargs: Optional[dict] = None):
        check_callable(loss, "loss", "a callable loss(x0, cond) -> [B]")
        super().__init__(model, schedule, prediction, loss, cond, check_weight(eta, "eta"), model_kwargs)
        self.weight = check_weight(eta_latent, "eta_latent")


def data_space_update(x0: torch.Tensor, loss: Callable, cond=None, eta_data: Union[float, torch.Tensor] = 1.0,
                      iters: int = 1) -> torch.Tensor:
    """``iters`` gradient steps ``x0 ← x0 + η^data 𝒢_0``, ``𝒢_0 = −∇_{x0} ℓ(x0, c)`` (book
    §8.4.1 A). ``iters = 1`` is the book's single correction; more iterations are the
    "applied iteratively" variant. ``eta_data`` is a number or a per-sample ``[B, 1, ...]`` tensor."""
    check_callable(loss, "loss", "a callable loss(x0, cond) -> [B]")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters: expected an int >= 0, got {iters!r}")
    out = x0.detach()
    for _ in range(iters):
        out = out - eta_data * _loss_grad(loss, out, cond).to(out.dtype)
    return out


def loss_guided_ddim_step(model: Callable, x: torch.Tensor, t, s, schedule, loss: Optional[Callable] = None,
                          cond=None, prediction=None, eta_data: Weight = 0.0, eta_latent: Weight = 0.0,
                          eta: Weight = 1.0, data_iters: int = 1,
                          model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """One generalized DDIM step ``t → s`` (book Eq. (8.4.2), with the
    noise-space term applied through the score consistently, see the module's second correction):

        ŝ_g = ŝ + η^latent 𝒢_t,   x̂0_g = (x_t + σ_t² ŝ_g)/α_t,   ε̂_g = −σ_t ŝ_g,
        x_s = α_s x̂0' + σ_s ε̂_g,  x̂0' = x̂0_g + η^data 𝒢_0 (iterated ``data_iters`` times),

    with ``𝒢_t`` from :func:`noise_space_term` and the data-space steps of :func:`data_space_update`.
    ``t``, ``s``: numbers or ``[B]`` per-sample times with ``σ_t > 0``. With both ``η`` zero the
    result is :func:`diffcore.solvers.ddim_step` (η = 0 DDIM)."""
    schedule = check_schedule(schedule)
    prediction = resolve_prediction(prediction, schedule)
    check_callable(model, "model", "a callable model(x, t, **model_kwargs)")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point tensor with a batch dimension")
    eta_data = check_weight(eta_data, "eta_data")
    eta_latent = check_weight(eta_latent, "eta_latent")
    if loss is None and (callable(eta_data) or callable(eta_latent) or eta_data != 0.0 or eta_latent != 0.0):
        raise ValueError("loss: required when eta_data or eta_latent is non-zero")
    tb, sb = batch_times(t, x, "t"), batch_times(s, x, "s")
    vt, vs = schedule.eval(tb.to(torch.float64)), schedule.eval(sb.to(torch.float64))
    if bool((vt.sigma <= 0).any()):
        raise ValueError("t: the step must start at σ > 0 (the model output cannot be converted at zero noise)")
    kw = check_model_kwargs(model_kwargs)
    use_latent = loss is not None and (callable(eta_latent) or eta_latent != 0.0)
    if use_latent and bool((vt.alpha <= 0).any()):
        # x̂0_g = (x_t + σ_t² ŝ_g)/α_t: the latent term has no data estimate where the signal is gone (a flow
        # schedule's t = 1); it returned NaN there
        raise ValueError(f"eta_latent: the latent guidance term needs α_t > 0, but the step starts at t = "
                         f"{float(tb.reshape(-1)[0])} where α = 0; start below it (e.g. t_start from "
                         "diffcore.grids.regular_range) or use eta_data")
    if use_latent:
        pred, x0, G = noise_space_term(model, x, tb, loss, cond, schedule, prediction, eta, kw)
    else:
        pred = model(x, tb, **kw)
        if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
            raise ValueError(f"model: expected an output of shape {tuple(x.shape)}, got "
                             f"{getattr(pred, 'shape', type(pred).__name__)}")
        x0 = convert(pred, x, tb, schedule, prediction, "x0")
        G = None
    eps = convert(pred, x, tb, schedule, prediction, "eps")
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    x0_64, eps64 = x0.to(torch.float64), eps.to(torch.float64)
    if G is not None:
        wG = per_sample(eta_latent, tb, x, "eta_latent") * G.to(torch.float64)
        x0_64 = x0_64 + score_coefficient(tb, schedule, "x0").reshape(shape) * wG
        eps64 = eps64 + score_coefficient(tb, schedule, "eps").reshape(shape) * wG
    if loss is not None and (callable(eta_data) or eta_data != 0.0):
        x0_64 = data_space_update(x0_64, loss, cond, per_sample(eta_data, tb, x, "eta_data"), data_iters)
    a_s = vs.alpha.reshape(shape).to(torch.float64)
    s_s = vs.sigma.reshape(shape).to(torch.float64)
    return (a_s * x0_64 + s_s * eps64).to(x.dtype)


def loss_guided_ddim(model: Callable, x: torch.Tensor, schedule, loss: Optional[Callable] = None, cond=None,
                     steps: int = 50, prediction=None, eta_data: Weight = 0.0, eta_latent: Weight = 0.0,
                     eta: Weight = 1.0, data_iters: int = 1, spacing: Optional[str] = None,
                     model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Sample with :func:`loss_guided_ddim_step` over the schedule's default grid of ``steps`` steps
    (:func:`diffcore.timesteps`); a grid ending at σ = 0 takes its last step to the clean estimate."""
    schedule = check_schedule(schedule)
    grid = _timesteps(schedule, steps, spacing=spacing)
    out = x
    for i in range(grid.shape[0] - 1):
        out = loss_guided_ddim_step(model, out, float(grid[i]), float(grid[i + 1]), schedule, loss, cond,
                                    prediction, eta_data, eta_latent, eta, data_iters, model_kwargs)
    return out
