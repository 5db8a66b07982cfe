"""Training objectives: one family ``ω(t)·‖prediction − target‖²`` (book Ch. 2–6).

Every diffusion/flow regression loss under an affine path is an instance of (book Eq. (6.2.5))

    L(φ) = E_{x0, ε, t∼p_time} [ ω(t) ‖NN_φ(x_t, t) − (A_t x0 + B_t ε)‖² ],   x_t = α_t x0 + σ_t ε,

with four independent choices: the schedule (α, σ), the prediction type ⇒ (A, B), the time law
``p_time`` (:mod:`diffcore.timesampling`) and the weight ``ω(t)``. Norms are sums over the non-batch
dimensions (``reduction="mean"`` divides by ``D``); ``loss(...)`` is the batch mean of
:meth:`Loss.per_sample`.

Interface (shared with the trainer, docs/design.md "Model contract")::

    loss = diffcore.losses.get(name, schedule=..., **options)
    value = loss(net, x0, labels=None, generator=None)                      # scalar
    per = loss.per_sample(net, x0, labels=None, generator=None, t=None, noise=None)   # (B,)
    loss.schedule, loss.prediction                                          # for diffcore.sample
    loss.sampling_model(net)                                                # callable(x, t, **model_kwargs)

The network is called as ``net(x, t)`` or ``net(x, t, labels=labels)`` (labels only when given), with
``t`` the schedule's continuous diffusion time ``(B,)`` in ``x``'s dtype (EDM preconditioning feeds
``c_noise(t)`` instead, as :class:`~diffcore.param.ModelWrapper` does at sampling time). All randomness
(t, ε, coupling draws, probes) comes from ``generator`` or torch's global RNG, in that order.

Weighting. ``weighting`` is ``None``/``"unit"`` (ω ≡ 1 on the native head), a callable ``ω(t)`` in
native units (``t`` in the data's dtype) — or a callable returning ``(weight, additive_term)`` for
learned weights (EDM2-style ``e^{−u(t)}‖·‖² + u(t)``, Karras et al. 2024) — or a named *objective* defined by its
canonical ε-weight ``w_ε(t)`` (book §6.2–6.3, Eq. (6.3.6)), applied to any head through the conversion
``ω = w_ε / f_head`` (:func:`eps_weight_factor`), so the same name gives the same objective (value
and gradient, per sample) whatever the head:

==================  =====================================================  ===========================
name                ``w_ε(t)``                                             native form
==================  =====================================================  ===========================
``eps``             1                                                      ε-MSE, ω = 1 (DDPM simple)
``x0``              ``e^{−2λ} = σ²/α²``                                    x0-MSE, ω = 1
``score``           ``1/σ²``                                               score-MSE, ω = 1
``velocity``        ``σ²λ'² = (Δ/α)²``                                     FM/RF velocity, ω = 1
``v``               ``1/α²``                                               angular v (VP), ω = 1
``score_sde``       ½ (alias ``ncsn``)                                     ½σ²‖s − s_c‖² (book §3.3, §4.2)
``likelihood``      ``−λ'`` (alias ``vdm``)                                ½g²‖s − s_c‖² (book §4.2, §6.2.2)
``min_snr``         ``min(1, γ/SNR)``                                      x0, ω = min(SNR, γ)
``edm``             ``1 + e^{−2λ}/σ_d²``                                   EDM F-loss with ω_F = 1
``elbo``            ``½(SNR_{i−1}/SNR_i − 1)`` (discrete law only)         DDPM ELBO (book §2.2)
==================  =====================================================  ===========================

``importance=True`` divides by ``p_time(t)`` so that the estimator targets ``∫ ω(t) mse(t) dt`` (or
the sum over levels for a discrete law), book §6.2.2.

Validation: ``x0`` must be a floating tensor ``(B, *S)`` with ``B ≥ 1`` and finite values (checked for
CPU tensors; on CUDA only with ``check_finite=True``, since the check synchronizes); bad option names
or values raise ``TypeError``/``ValueError`` naming the option.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Optional, Tuple

import torch

from . import schedules as _schedules
from . import timesampling as _ts
from .param import ModelWrapper, _check_v, canonical_prediction, edm_precond_coefs
from .paths import (AffinePath, InterpolantPath, fm_path, poisson_minibatch_target, poisson_prior_sample,
                    poisson_sample)

__all__ = ["Loss", "DiffusionLoss", "CFMLoss", "PoissonFlowLoss", "SlicedScoreLoss", "ReflowLoss", "reflow_pairs",
           "eps_weight_factor", "eps_weight", "native_weight", "WEIGHTINGS", "ddpm_schedule", "get", "available"]

_F64 = torch.float64
_BRIDGE_EDGE = 1e-5  # the bridge target's c'_t ξ has E‖·‖² ∝ 1/(t(1 − t)): keep t away from 0 and 1


# ---- canonical ε-weights (book Eq. (6.3.6)) -------------------------------------------------------
def _head(prediction) -> str:
    if isinstance(prediction, str) and prediction.lower() == "edm":
        return "edm"
    return canonical_prediction(prediction)


def eps_weight_factor(prediction, values, sigma_data: float = 0.5) -> torch.Tensor:
    """The factor ``f`` with ``ω‖NN − target‖² = ω·f·‖ε̂ − ε‖²`` for heads tied by book Prop. 6.3.1 (eq. 6.3.6),
    i.e. ``w_ε = ω·f``: eps 1, x0 ``e^{−2λ} = σ²/α²``, score ``1/σ²``, velocity ``σ²λ'² = (Δ/α)²``
    (Δ = α'σ − ασ'), v ``1/α²`` (Salimans, VP), ``"edm"`` (raw F of book App. D.6) ``σ²/(α² c_out²) =
    1 + e^{−2λ}/σ_d²``. ``values``: ``schedule.eval(t)``. Float64."""
    head = _head(prediction)
    a, s = values.alpha.to(_F64), values.sigma.to(_F64)
    if head == "eps":
        return torch.ones_like(a)
    if head == "x0":
        return (s / a) ** 2
    if head == "score":
        return 1 / (s * s)
    if head == "velocity":
        return ((values.dalpha.to(_F64) * s - a * values.dsigma.to(_F64)) / a) ** 2
    if head == "v":
        return 1 / (a * a)
    if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
        raise ValueError(f"sigma_data: expected a positive number, got {sigma_data!r}")
    return 1 + (s / a) ** 2 / float(sigma_data) ** 2


def eps_weight(omega, prediction, values, sigma_data: float = 0.5) -> torch.Tensor:
    """Canonical ε-weight ``w_ε = ω·f_head`` of a native weight ``ω`` (book Eq. (6.3.6))."""
    return torch.as_tensor(omega, dtype=_F64) * eps_weight_factor(prediction, values, sigma_data)


def native_weight(w_eps, prediction, values, sigma_data: float = 0.5) -> torch.Tensor:
    """Native weight ``ω = w_ε/f_head`` that gives a head the objective with ε-weight ``w_ε`` (book Eq. (6.3.6))."""
    return torch.as_tensor(w_eps, dtype=_F64) / eps_weight_factor(prediction, values, sigma_data)


def _w_elbo(v, t, loss):
    law = loss.time_law
    lam_prev = loss.schedule.eval(law.previous(t, loss.schedule)).lam.to(_F64)
    return 0.5 * torch.expm1(2 * (lam_prev - v.lam.to(_F64)))  # ½(SNR_{i−1}/SNR_i − 1), Sec. 2.2.5


#: canonical ε-weights of the named objectives (book §6.2–6.3); each maps (values, t, loss) to w_ε (float64)
WEIGHTINGS = {
    "eps": lambda v, t, loss: torch.ones_like(v.alpha, dtype=_F64),
    "x0": lambda v, t, loss: eps_weight_factor("x0", v),
    "score": lambda v, t, loss: eps_weight_factor("score", v),
    "velocity": lambda v, t, loss: eps_weight_factor("velocity", v),
    "v": lambda v, t, loss: eps_weight_factor("v", v),
    "score_sde": lambda v, t, loss: torch.full_like(v.alpha, 0.5, dtype=_F64),
    "likelihood": lambda v, t, loss: -v.dlam.to(_F64),
    "min_snr": lambda v, t, loss: torch.clamp(loss.gamma * (v.sigma.to(_F64) / v.alpha.to(_F64)) ** 2, max=1.0),
    "edm": lambda v, t, loss: eps_weight_factor("edm", v, loss.sigma_data),
    "elbo": _w_elbo,
}
_W_ALIASES = {"ncsn": "score_sde", "vdm": "likelihood", "min_snr_gamma": "min_snr", "ddpm_elbo": "elbo",
              "epsilon": "eps", "simple": "eps", "flow": "velocity", "fm": "velocity"}
_UNIT = ("unit", "none", "constant")


# ---- argument checks ----------------------------------------------------------------------------
def _col(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def _flag(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected True or False, got {v!r}")
    return v


def _pos(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
        raise ValueError(f"{name}: expected a finite positive number, got {v!r}")
    return float(v)


def _singular_t(t64: torch.Tensor, ok: torch.Tensor, what: str) -> None:
    bad = t64.detach()[~ok.reshape(-1)]
    raise ValueError(f"t: {what} is infinite or NaN at t = {float(bad[0])} (σ or α is 0 there); pass times inside "
                     "the loss's training range")


def _call_net(net, x, t, labels):
    out = net(x, t) if labels is None else net(x, t, labels=labels)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"net: expected it to return a tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"net: expected an output shaped like its input {tuple(x.shape)}, got {tuple(out.shape)}")
    return out


# ---- base class --------------------------------------------------------------------------------
class Loss:
    """Shared machinery: input checks, time draws, weighting, importance weights and reduction.

    Subclasses set ``schedule``, ``prediction`` and implement :meth:`_errors`, which returns the
    per-sample unweighted error ``(B,)`` (already reduced over the features) and the schedule values.
    """

    prediction: str = "eps"
    _weight_head: Optional[str] = None  # head for canonical (named) weights; None: only unit/callable

    def _setup(self, schedule, time, time_options, t_min, t_max, weighting, importance, reduction,
               check_finite, sigma_data=0.5, gamma=5.0):
        self.schedule = _schedules.get(schedule)
        if time_options is not None and not isinstance(time_options, dict):
            raise TypeError(f"time_options: expected a dict, got {type(time_options).__name__}")
        opts = dict(time_options or {})
        for k, v in (("t_min", t_min), ("t_max", t_max)):
            if v is not None:
                if k in opts:
                    raise ValueError(f"{k}: given both directly and in time_options")
                opts[k] = v
        self.time_law = _ts.get(time, **opts)
        self.time_law.range(self.schedule)  # validate the range (and a discrete grid) against the schedule now
        if isinstance(self.time_law, _ts.Discrete):
            self.time_law.grid(self.schedule)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.importance = _flag(importance, "importance")
        if check_finite is not None:
            _flag(check_finite, "check_finite")
        self.check_finite = check_finite
        self.sigma_data = _pos(sigma_data, "sigma_data")
        self.gamma = _pos(gamma, "gamma")
        self._set_weighting(weighting)

    def _set_weighting(self, weighting):
        self.weighting = weighting
        if weighting is None or (isinstance(weighting, str) and weighting.lower() in _UNIT):
            self._wkind = "unit"
        elif isinstance(weighting, str):
            key = _W_ALIASES.get(weighting.lower(), weighting.lower())
            if key not in WEIGHTINGS:
                raise ValueError(f"weighting: unknown name {weighting!r}; expected 'unit', a callable or one of "
                                 f"{sorted(WEIGHTINGS)} (aliases {sorted(_W_ALIASES)})")
            if self._weight_head is None:
                raise ValueError(f"weighting: named ε-weights apply to affine-path regression heads; "
                                 f"{type(self).__name__} takes 'unit' or a callable ω(t)")
            if key == "v" or self._weight_head == "v":
                _check_v(self.schedule.kind == "vp", "weighting", self.schedule)
            if key == "elbo":
                law = self.time_law
                if not isinstance(law, _ts.Discrete):
                    raise ValueError("weighting: 'elbo' needs the discrete time law (time='discrete')")
                g = law.grid(self.schedule)
                lam_prev = float(self.schedule.eval(g[law.first - 1:law.first]).lam[0])
                if not math.isfinite(lam_prev):
                    raise ValueError("weighting: 'elbo' is infinite for the first level (σ = 0 before it: that "
                                     "term is the reconstruction term, book Thm. 2.2.3); use time_options={'first': 2}")
            self._wkind = key
        elif callable(weighting):
            self._wkind = "callable"
        else:
            raise TypeError(f"weighting: expected None, a name or a callable, got {type(weighting).__name__}")

    # -- inputs ------------------------------------------------------------------------------------
    def _check_x0(self, x0, name: str = "x0") -> torch.Tensor:
        if not isinstance(x0, torch.Tensor):
            raise TypeError(f"{name}: expected a torch tensor (B, *S), got {type(x0).__name__}")
        if not x0.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {x0.dtype}")
        if x0.dim() < 2:
            raise ValueError(f"{name}: expected shape (B, *S) with a batch dimension and at least one feature "
                             f"dimension, got {tuple(x0.shape)} (reshape a batch of scalars to (B, 1))")
        if x0.shape[0] == 0:
            raise ValueError(f"{name}: empty batch (B = 0)")
        if x0[0].numel() == 0:
            raise ValueError(f"{name}: samples have no features, shape {tuple(x0.shape)}")
        check = self.check_finite if self.check_finite is not None else x0.device.type == "cpu"
        if check and not bool(torch.isfinite(x0.detach()).all()):
            raise ValueError(f"{name}: contains NaN or inf")
        return x0

    def _times(self, B: int, t, generator, device) -> torch.Tensor:
        if t is None:
            return self.time_law.sample(B, self.schedule, generator, device).to(device)
        if isinstance(t, torch.Tensor):
            if t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"t: expected a real tensor, got {t.dtype}")
            t = t.detach().to(device=device, dtype=_F64)
        else:
            try:
                t = torch.as_tensor(t, dtype=_F64, device=device)
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(f"t: expected a float or a (B,) tensor, got {type(t).__name__}") from e
        if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
            return t.reshape(1).expand(B).clone()
        if t.dim() != 1 or t.shape[0] != B:
            raise ValueError(f"t: expected a scalar or a (B,) tensor with B = {B}, got shape {tuple(t.shape)}")
        return t

    @staticmethod
    def _noise(x0, noise, generator, name: str = "noise") -> torch.Tensor:
        if noise is None:
            return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor shaped like x0")
        if noise.shape != x0.shape:
            raise ValueError(f"{name}: expected shape {tuple(x0.shape)} (like x0), got {tuple(noise.shape)}")
        if noise.device.type == "cpu" and not bool(torch.isfinite(noise.detach()).all()):  # host check, no sync
            raise ValueError(f"{name}: contains NaN or inf")
        return noise.to(device=x0.device, dtype=x0.dtype)

    def _reduce(self, sq: torch.Tensor) -> torch.Tensor:
        flat = sq.reshape(sq.shape[0], -1)
        return flat.sum(1) if self.reduction == "sum" else flat.mean(1)

    # -- weights -----------------------------------------------------------------------------------
    def _weights(self, t64, values, dtype) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        kind = self._wkind
        if kind == "unit":
            return None, None
        if kind == "callable":
            out = self.weighting(t64.to(dtype))
            w, add = (out if isinstance(out, tuple) else (out, None))
            if isinstance(out, tuple) and len(out) != 2:
                raise ValueError("weighting: a callable returning a tuple must return (weight, additive_term)")
            B = t64.shape[0]
            w = torch.as_tensor(w, dtype=dtype, device=t64.device)
            if w.dim() == 0:
                w = w.expand(B)
            if w.shape != (B,):
                raise ValueError(f"weighting: expected the weight callable to return shape ({B},), got {tuple(w.shape)}")
            if add is not None:
                add = torch.as_tensor(add, dtype=dtype, device=t64.device)
                add = add.expand(B) if add.dim() == 0 else add
                if add.shape != (B,):
                    raise ValueError(f"weighting: expected the additive term of shape ({B},), got {tuple(add.shape)}")
            return w, add
        if kind == self._weight_head:  # the head's own unweighted objective (avoids inf/inf at the ends)
            return None, None
        w_eps = WEIGHTINGS[kind](values, t64, self)
        return native_weight(w_eps, self._weight_head, values, self.sigma_data).to(dtype), None

    def _finish(self, err, t64, values):
        w, add = self._weights(t64, values, err.dtype)
        if t64.device.type == "cpu":  # weights come from t alone: a non-finite one is a bad t, not a bad net
            for part in (w, add):
                if part is not None and not bool(torch.isfinite(part.detach()).all()):
                    _singular_t(t64, torch.isfinite(part.detach()), f"the {self.weighting!r} weight")
        per = err if w is None else w * err
        if add is not None:
            per = per + add
        if self.importance:
            per = per / self.time_law.density(t64, self.schedule).to(device=per.device, dtype=per.dtype)
        return per

    # -- public API --------------------------------------------------------------------------------
    def _errors(self, net, x0, labels, generator, t64, noise):
        raise NotImplementedError

    def per_sample(self, net, x0, labels=None, generator: Optional[torch.Generator] = None, t=None,
                   noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-sample loss ``(B,)``: ``ω(t)·‖prediction − target‖²`` (÷ ``p_time(t)`` with
        ``importance=True``). ``t`` (diffusion time, a scalar or ``(B,)``) and ``noise`` (ε shaped like
        ``x0``) fix the draws that are otherwise taken from ``generator``."""
        if not callable(net):
            raise TypeError(f"net: expected a callable net(x, t, labels=None), got {type(net).__name__}")
        x0 = self._check_x0(x0)
        if t is not None and isinstance(self.time_law, _ts.Discrete) and x0.device.type == "cpu":
            j = self.time_law.index(self._times(x0.shape[0], t, None, x0.device), self.schedule)
            if bool((j < self.time_law.first).any()):  # t_0 is on the grid but never drawn (no loss term there)
                raise ValueError(f"t: expected times among the drawn levels t_{self.time_law.first} … t_L of "
                                 f"{self.time_law!r}")
        if isinstance(labels, torch.Tensor) and (labels.dim() == 0 or labels.shape[0] != x0.shape[0]):
            raise ValueError(f"labels: expected one label per sample ({x0.shape[0]}), got shape {tuple(labels.shape)}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        t64 = self._times(x0.shape[0], t, generator, x0.device)
        err, values = self._errors(net, x0, labels, generator, t64, noise)
        return self._finish(err, t64, values)

    def __call__(self, net, x0, labels=None, generator: Optional[torch.Generator] = None, **kwargs) -> torch.Tensor:
        """Batch mean of :meth:`per_sample` (a scalar tensor)."""
        return self.per_sample(net, x0, labels=labels, generator=generator, **kwargs).mean()

    def sampling_model(self, net) -> Callable:
        """``callable(x, t, **model_kwargs)`` predicting :attr:`prediction` for :func:`diffcore.sample`
        (``prediction=loss.prediction``, ``schedule=loss.schedule``)."""
        if not callable(net):
            raise TypeError(f"net: expected a callable, got {type(net).__name__}")
        return net

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(schedule={self.schedule!r}, prediction={self.prediction!r}, "
                f"time={self.time_law!r}, weighting={self.weighting!r}, importance={self.importance}, "
                f"reduction={self.reduction!r})")


# ---- the affine-path template (book Eq. (6.2.5)) -------------------------------------------------
class DiffusionLoss(Loss):
    """The §4.1 template on the affine path of ``schedule`` (book eq. 6.2.5).

    Args:
        schedule: a :class:`~diffcore.schedules.Schedule` or name (default ``"vp_linear"``).
        prediction: the head: ``"eps"``, ``"x0"``, ``"score"``, ``"velocity"`` (dx/dt, diffusion time),
            ``"v"`` (Salimans, VP only), aliases, or ``"edm"``: EDM preconditioning (book App. D.6): the
            network is the raw ``F`` called as ``net(c_in·x_t, c_noise(t))`` with ``c_noise = −λ/4``
            (``¼ ln σ`` on EDM), regressed on ``F_tgt = ((1 − c_skip α)x0 − c_skip σ ε)/c_out``; then
            :attr:`prediction` is ``"x0"`` and :meth:`sampling_model` wraps ``F`` into the denoiser
            ``c_skip x + c_out F`` (:class:`~diffcore.param.ModelWrapper`).
        weighting: see the module docstring. time, time_options: a :mod:`~diffcore.timesampling` law
            (name + options, or an instance). t_min, t_max: its range (default
            :func:`~diffcore.timesampling.training_range`). importance: divide by ``p_time(t)``.
        reduction: ``"sum"`` (default) or ``"mean"`` over the features. sigma_data: σ_d of EDM
            preconditioning / the ``edm`` weight. gamma: γ of ``min_snr``. check_finite: see module doc.
    """

    def __init__(self, schedule="vp_linear", prediction="eps", weighting=None, time="uniform",
                 time_options: Optional[dict] = None, t_min: Optional[float] = None, t_max: Optional[float] = None,
                 importance: bool = False, reduction: str = "sum", sigma_data: float = 0.5, gamma: float = 5.0,
                 check_finite: Optional[bool] = None):
        head = _head(prediction)
        self.edm = head == "edm"
        self.prediction = "x0" if self.edm else head
        self._weight_head = head
        self._target_kind = head
        self._setup(schedule, time, time_options, t_min, t_max, weighting, importance, reduction, check_finite,
                    sigma_data, gamma)
        if head == "v":
            _check_v(self.schedule.kind == "vp", "prediction", self.schedule)
        self.path = AffinePath(self.schedule)

    def _errors(self, net, x0, labels, generator, t64, noise):
        v = self.schedule.eval(t64)
        eps = self._noise(x0, noise, generator)
        x_t = _col(v.alpha, x0) * x0 + _col(v.sigma, x0) * eps
        A, Bc = self.path.coefficients_at(v, self._target_kind, self.sigma_data)
        if A.device.type == "cpu":
            ok = torch.isfinite(A.detach()) & torch.isfinite(Bc.detach())
            if not bool(ok.all()):
                _singular_t(t64, ok, f"the {self._target_kind!r} target")
        target = _col(A, x0) * x0 + _col(Bc, x0) * eps
        if self.edm:
            _, _, c_in, c_noise = edm_precond_coefs(v, self.sigma_data)
            out = _call_net(net, _col(c_in, x_t) * x_t, c_noise.to(x0.dtype), labels)
        else:
            out = _call_net(net, x_t, t64.to(x0.dtype), labels)
        return self._reduce((out - target) ** 2), v

    def sampling_model(self, net) -> Callable:
        """The network itself, or for ``prediction="edm"`` the x0-predicting
        :class:`~diffcore.param.ModelWrapper` ``c_skip x + c_out F(c_in x, c_noise)``."""
        if not callable(net):
            raise TypeError(f"net: expected a callable, got {type(net).__name__}")
        if self.edm:
            return ModelWrapper(net, self.schedule, edm_precond=True, sigma_data=self.sigma_data)
        return net


class ReflowLoss(DiffusionLoss):
    """Reflow / rectified-flow regression on given pairs (book §5.4, eq. 5.4.1–5.4.2 with the corrected
    interpolant, docs/errata.md B10): in diffusion time on the linear path (default ``"rectified_flow"``),
    ``x_t = (1 − t) ẑ1 + t z0`` with target ``z0 − ẑ1`` (= ``α' x0 + σ' ε``, the ``velocity`` head),
    where ``(z0, ẑ1)`` come from :func:`reflow_pairs` (``z0`` the noise end, ``ẑ1`` the data end).

    Call with the pair as ``x0=(z0, z1)`` or as ``x0=z1, noise=z0`` (the noise is required: the pairing
    *is* the coupling)."""

    def __init__(self, schedule="rectified_flow", weighting=None, time="uniform", time_options=None, t_min=None,
                 t_max=None, importance=False, reduction="sum", check_finite=None):
        super().__init__(schedule, "velocity", weighting, time, time_options, t_min, t_max, importance, reduction,
                         check_finite=check_finite)

    def per_sample(self, net, x0, labels=None, generator=None, t=None, noise=None):
        if isinstance(x0, (tuple, list)):
            if len(x0) != 2 or noise is not None:
                raise ValueError("x0: expected a pair (z0, z1) (and no separate noise=)")
            noise, x0 = x0
        if noise is None:
            raise ValueError("noise: reflow needs the paired source samples z0 (pass x0=(z0, z1) or noise=z0)")
        self._check_x0(noise, "noise")
        return super().per_sample(net, x0, labels=labels, generator=generator, t=t, noise=noise)


# ---- conditional flow matching (book §5.2) --------------------------------------------------------
class CFMLoss(Loss):
    """Conditional flow matching (book §5.2, eq. 5.2.9) on a path of book §5.3, trained in diffusion time.

    With ``y0 = ε`` (noise, the source) and ``y1 = x0`` (data), paired by ``coupling``, and
    ``t = 1 − τ``: ``x_t = α_t y1 + σ_t y0 (+ c ξ)`` and the target is the diffusion-time velocity
    ``α'_t y1 + σ'_t y0 (+ ċ ξ)`` (= ``−`` the FM-time target), i.e. the ``"velocity"`` head of
    :attr:`schedule`; sample with ``diffcore.sample(..., prediction="velocity")``.

    Args:
        path: ``"linear"`` (rectified flow), ``"ot"`` (σ_min path P5), ``"vp"``, ``"ve"``, ``"trig"``,
            ``"bridge"`` (Brownian bridge P6 with ``sigma``; SB-CFM), a Schedule (its affine path) or an
            :class:`~diffcore.paths.InterpolantPath`. Default ``None``: the Brownian bridge with the
            coupling's σ for a Schrödinger-bridge coupling, else ``"linear"``.
        sigma_min: σ_min of ``"ot"``. sigma: σ of ``"bridge"`` (default: the coupling's ``sigma``, e.g.
            ``diffcore.coupling.SchrodingerBridge``). sigma_c: constant extra noise (P1/P2).
        coupling: ``None`` (independent, I-CFM), a name resolved by ``diffcore.coupling.get(name,
            **coupling_options)`` (``"exact"``, ``"sinkhorn"``, ``"sb"``, …) or an object with
            ``couple(y0, y1, labels, generator) -> (y0p, y1p, labelsp)`` or ``pair(y0, y1, generator)
            -> (i, j)``. Labels follow the data (``labels[j]``).

            ``"sb"`` (:class:`~diffcore.coupling.SchrodingerBridge`, also inside
            :class:`~diffcore.coupling.Distributed`) is SB-CFM (Tong et al. 2024, "Improving and
            generalizing flow-based generative models with minibatch optimal transport", TMLR): the
            entropic plan with ε = 2σ² is the static Schrödinger bridge of the Brownian motion σW only
            when the pairs are joined by that motion's bridge, ``x = (1 − τ) y0 + τ y1 + σ√(τ(1 − τ)) ξ``
            with target ``(1 − 2τ)/(2τ(1 − τ))·(x − μ_τ) + y1 − y0`` (FM time τ = 1 − t). So the SB
            coupling selects that path and refuses any other path or another σ; for entropic OT pairs
            on a noise-free path use ``coupling="sinkhorn"``.
        Other options as :class:`DiffusionLoss`. The bridge path's default range is
        ``[1e-5, 1 − 1e-5]``: its target has ``E‖ċξ‖² ∝ 1/(t(1 − t))``, not integrable at the ends.
    """

    prediction = "velocity"

    def __init__(self, path=None, sigma_min: float = 1e-4, sigma: Optional[float] = None, sigma_c: float = 0.0,
                 coupling=None, coupling_options: Optional[dict] = None, time="uniform",
                 time_options: Optional[dict] = None, t_min=None, t_max=None, weighting=None,
                 importance: bool = False, reduction: str = "sum", check_finite: Optional[bool] = None):
        self.coupling = self._resolve_coupling(coupling, coupling_options)
        sb_sigma = self._sb_sigma(self.coupling)
        if path is None:
            path = "linear" if sb_sigma is None else "bridge"
        if isinstance(path, InterpolantPath):
            if sigma is not None or sigma_c:
                raise ValueError("sigma, sigma_c: set them on the InterpolantPath instance")
            self.path = path
        elif isinstance(path, _schedules.Schedule):
            self.path = InterpolantPath(path, sigma_c=sigma_c)
        else:
            is_bridge = isinstance(path, str) and path.lower() in ("bridge", "sb", "brownian_bridge")
            if is_bridge and sigma is None:
                sigma = sb_sigma if sb_sigma is not None else getattr(self.coupling, "sigma", None)
            self.path = fm_path(path, sigma_min=sigma_min, sigma=sigma, sigma_c=sigma_c)
        if sb_sigma is not None:
            self._check_sb_path(self.path, sb_sigma)
        if self.path.bridge_sigma is not None:
            t_min = _BRIDGE_EDGE if t_min is None and "t_min" not in (time_options or {}) else t_min
            t_max = 1 - _BRIDGE_EDGE if t_max is None and "t_max" not in (time_options or {}) else t_max
        self._weight_head = None if self.path.noisy else "velocity"
        self._setup(self.path.schedule, time, time_options, t_min, t_max, weighting, importance, reduction,
                    check_finite)

    @staticmethod
    def _sb_sigma(coupling) -> Optional[float]:
        """σ of a Schrödinger-bridge coupling (unwrapping the DDP-aware wrapper), else None."""
        if coupling is None or isinstance(coupling, str):
            return None
        from . import coupling as _coupling  # noqa: PLC0415 (lazy, as in _resolve_coupling)
        inner = coupling.inner if isinstance(coupling, _coupling.Distributed) else coupling
        return inner.sigma if isinstance(inner, _coupling.SchrodingerBridge) else None

    @staticmethod
    def _check_sb_path(path, sb_sigma: float) -> None:
        if path.bridge_sigma is None:
            raise ValueError(f"path: the Schrödinger-bridge coupling (SB-CFM) needs the Brownian-bridge path of "
                             f"its σ = {sb_sigma}; got {path!r}. Leave path unset (or path='bridge'), or use "
                             f"coupling='sinkhorn' for entropic-OT pairs on a noise-free path")
        if not math.isclose(path.bridge_sigma, sb_sigma, rel_tol=1e-12, abs_tol=0.0):
            raise ValueError(f"sigma: SB-CFM ties the bridge's σ to the coupling's (ε = 2σ²): expected "
                             f"{sb_sigma}, got {path.bridge_sigma}")

    @staticmethod
    def _resolve_coupling(coupling, options):
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"coupling_options: expected a dict, got {type(options).__name__}")
        if isinstance(coupling, str):
            from . import coupling as _coupling  # noqa: PLC0415 (lazy: the coupling layer sits beside losses)
            return _coupling.get(coupling, **(options or {}))
        if options:
            raise ValueError("coupling_options: only used with a coupling name")
        if coupling is None:
            return None
        if not (callable(getattr(coupling, "couple", None)) or callable(getattr(coupling, "pair", None))):
            raise TypeError("coupling: expected None, a name, or an object with couple(y0, y1, labels, generator) "
                            "or pair(y0, y1, generator)")
        return coupling

    def _couple(self, eps, x0, labels, generator):
        c = self.coupling
        if c is None:
            return eps, x0, labels
        if callable(getattr(c, "couple", None)):
            y0, y1, lab = c.couple(eps, x0, labels, generator)
        else:
            i, j = c.pair(eps, x0, generator)
            y0, y1, lab = eps[i], x0[j], (labels[j] if labels is not None else None)
        if y0.shape != eps.shape or y1.shape != x0.shape:
            raise ValueError(f"coupling: expected pairs of shape {tuple(x0.shape)}, got {tuple(y0.shape)} and "
                             f"{tuple(y1.shape)}")
        return y0, y1, lab

    def _errors(self, net, x0, labels, generator, t64, noise):
        eps = self._noise(x0, noise, generator)
        y0, y1, lab = self._couple(eps, x0, labels, generator)
        xi = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) if self.path.noisy else None
        tau = 1 - t64
        x_t = self.path.sample(y0, y1, tau, xi)
        target = -self.path.target(y0, y1, tau, xi)  # FM-time velocity → diffusion time
        out = _call_net(net, x_t, t64.to(x0.dtype), lab)
        v = self.schedule.eval(t64) if self._wkind in WEIGHTINGS else None
        return self._reduce((out - target) ** 2), v


# ---- Poisson flow (Xu et al. 2022) --------------------------------------------------------------
class PoissonFlowLoss(Loss):
    """Poisson-flow objective (Xu et al. 2022, PFGM): the kernel
    ``p_t(x|x0) = C_d t/(t² + ‖x − x0‖²)^{(d+1)/2}`` sampled exactly as ``x_t = x0 + t z``,
    ``z = g/|h|``, regressed on

    * ``target="per_sample"``: the conditional velocity ``(x_t − x0)/t = z`` (plain CFM; valid but the
      Cauchy target has infinite variance), or
    * ``target="minibatch"``: the self-normalized field ``v̂(x_t) = Σ_j w_j (x_t − x0_j)/t``,
      ``w_j ∝ (t² + ‖x_t − x0_j‖²)^{−(d+1)/2}`` over the batch (:func:`~diffcore.paths.poisson_minibatch_target`;
      biased, consistent as B → ∞); with labels, over the samples of the same class.

    Time ``t`` ∈ ``[t_min, T]`` is the library's diffusion time on the EDM schedule (α = 1, σ = t):
    :attr:`schedule` is ``EDM(t_min, T)``, :attr:`prediction` ``"velocity"`` (dx/dt, with
    ``x0 = x − t v`` the only valid head conversion). Start sampling from :meth:`prior_sample`
    (``T z``), not from a Gaussian. Default time law: ``lognormal_sigma`` truncated to ``[t_min, T]``.
    """

    prediction = "velocity"

    def __init__(self, T: float = 80.0, t_min: float = 0.002, target: str = "per_sample", time="lognormal_sigma",
                 time_options: Optional[dict] = None, weighting=None, importance: bool = False,
                 reduction: str = "sum", check_finite: Optional[bool] = None):
        T, t_min = _pos(T, "T"), _pos(t_min, "t_min")
        if not t_min < T:
            raise ValueError(f"t_min, T: expected t_min < T, got {t_min}, {T}")
        if target not in ("per_sample", "minibatch"):
            raise ValueError(f"target: expected 'per_sample' or 'minibatch', got {target!r}")
        self.T, self.target = T, target
        opts = dict(time_options or {})
        opts.setdefault("t_min", t_min)
        opts.setdefault("t_max", T)
        self._setup(_schedules.EDM(sigma_min=t_min, sigma_max=T), time, opts, None, None, weighting, importance,
                    reduction, check_finite)

    def _errors(self, net, x0, labels, generator, t64, noise):
        if noise is not None:
            noise = self._noise(x0, noise, generator)
        x_t, z = poisson_sample(x0, t64, generator, z=noise)
        if self.target == "per_sample":
            target = z
        elif labels is None:
            target = poisson_minibatch_target(x_t, t64, x0)
        else:  # class-conditional: the field of each sample's own class within the batch
            target = torch.empty_like(x_t)
            for c in torch.unique(labels):
                idx = torch.nonzero(labels == c).flatten()
                target[idx] = poisson_minibatch_target(x_t[idx], t64[idx], x0[idx])
        out = _call_net(net, x_t, t64.to(x0.dtype), labels)
        return self._reduce((out - target) ** 2), None

    def prior_sample(self, shape, generator: Optional[torch.Generator] = None, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Start of sampling at ``t = T`` (:func:`~diffcore.paths.poisson_prior_sample`)."""
        return poisson_prior_sample(shape, self.T, generator, device, dtype)


# ---- sliced score matching (book §3.3) -----------------------------------------------------------
class SlicedScoreLoss(Loss):
    """Sliced score matching (book Sec. 3.3.1; Song et al. 2019) at noise levels of ``schedule``: for
    ``x_t = α x0 + σ ε`` and the score network ``s = net(x_t, t)``,

        L_SSM = E[ uᵀ(∇_x s)u + ½(uᵀs)² ]     (or ``+ ½‖s‖²`` with ``exact_norm=True``, lower variance),

    with probes ``u`` (``"rademacher"`` or ``"gaussian"``, ``E uuᵀ = I``), ``n_probes`` of them averaged;
    ``uᵀ(∇s)u`` costs one vector–Jacobian product per probe (double backward, so the result is
    differentiable in the network's parameters). It equals ``½E‖s − ∇log p_t‖²`` minus a constant, so its
    minimizer is the score. ``t = 0`` on EDM (σ = 0) is plain SSM on the data. Weighting: ``"unit"`` or
    a callable ω(t). :attr:`prediction` is ``"score"``.
    """

    prediction = "score"

    def __init__(self, schedule="vp_linear", probe: str = "rademacher", n_probes: int = 1, exact_norm: bool = False,
                 time="uniform", time_options: Optional[dict] = None, t_min=None, t_max=None, weighting=None,
                 importance: bool = False, reduction: str = "sum", check_finite: Optional[bool] = None):
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"probe: expected 'rademacher' or 'gaussian', got {probe!r}")
        if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
            raise ValueError(f"n_probes: expected a positive int, got {n_probes!r}")
        self.probe, self.n_probes = probe, n_probes
        self.exact_norm = _flag(exact_norm, "exact_norm")
        self._setup(schedule, time, time_options, t_min, t_max, weighting, importance, reduction, check_finite)

    def _probe(self, x, generator):
        if self.probe == "gaussian":
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1

    def _errors(self, net, x0, labels, generator, t64, noise):
        v = self.schedule.eval(t64)
        eps = self._noise(x0, noise, generator)
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            x_t = (_col(v.alpha, x0) * x0 + _col(v.sigma, x0) * eps).detach().requires_grad_(True)
            s = _call_net(net, x_t, t64.to(x0.dtype), labels)
            B = x0.shape[0]
            total = torch.zeros(B, dtype=x0.dtype, device=x0.device)
            half_norm = 0.5 * (s * s).reshape(B, -1).sum(1)
            for _ in range(self.n_probes):
                u = self._probe(x0, generator)
                (g,) = torch.autograd.grad(s, x_t, grad_outputs=u, create_graph=create, retain_graph=True,
                                           allow_unused=True)
                tr = torch.zeros_like(total) if g is None else (g * u).reshape(B, -1).sum(1)  # uᵀ J u
                quad = half_norm if self.exact_norm else 0.5 * (u * s).reshape(B, -1).sum(1) ** 2
                total = total + tr + quad
            err = total / self.n_probes
        if not create:  # evaluated under no_grad: return a plain value like the other losses
            err = err.detach()
        if self.reduction == "mean":
            err = err / x0[0].numel()
        return err, v


# ---- reflow pairs (book §5.4) -------------------------------------------------------------------
def reflow_pairs(model, n: int, schedule="rectified_flow", shape=None, solver: str = "heun", steps: int = 32,
                 generator: Optional[torch.Generator] = None, prediction: str = "velocity",
                 model_kwargs: Optional[dict] = None, batch_size: Optional[int] = None, device=None,
                 dtype: torch.dtype = torch.float32, **sample_options) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rectify (book §5.4, Alg. 2): draw ``z0 ~`` the schedule's prior (``diffcore.prior_sample``) and map it
    through the probability-flow ODE of ``model`` with :func:`diffcore.sample` (noise end → data end),
    giving the coupling ``(z0, ẑ1 = Φ(z0))`` for :class:`ReflowLoss` (the next reflow round).

    Args:
        model: ``model(x, t, **model_kwargs)`` predicting ``prediction`` (or a ModelWrapper /
            ``loss.sampling_model(net)``). n: number of pairs. shape: per-sample shape ``S``.
        solver, steps, **sample_options: passed to :func:`diffcore.sample`.
        model_kwargs: tensors with ``n`` rows (e.g. ``labels``) are sliced along with the batches.
        batch_size: pairs per ``sample`` call (default all).
    Returns ``(z0, z1)``, each ``(n, *S)``. Not an OT solver: reflow lowers convex transport costs but
    its fixed points need not be optimal (book §7.5).
    """
    from .sample import prior_sample, sample  # noqa: PLC0415 (sample sits beside losses in the layers)

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if shape is None:
        raise ValueError("shape: required, the per-sample shape S of the pairs (n, *S)")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if len(shape) < 1 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape: expected a non-empty tuple of positive ints, got {shape!r}")
    bs = n if batch_size is None else batch_size
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    sched = _schedules.get(schedule)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if device is None and generator is not None:
        device = generator.device
    z0 = prior_sample(sched, (n,) + shape, generator=generator, device=device, dtype=dtype)
    kw = dict(model_kwargs or {})
    outs = []
    for lo in range(0, n, bs):
        part = {k: (v[lo:lo + bs] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n else v)
                for k, v in kw.items()}
        outs.append(sample(model, z0[lo:lo + bs], schedule=sched, solver=solver, steps=steps, prediction=prediction,
                           model_kwargs=part or None, **sample_options))
    z1 = torch.cat(outs)
    if z1.device.type == "cpu" and not bool(torch.isfinite(z1).all()):  # pairs are training data: no NaN in them
        raise ValueError("model: the sampled data ends z1 contain NaN or inf (the model's output is not finite)")
    return z0, z1


# ---- presets --------------------------------------------------------------------------------------
def ddpm_schedule(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
    """The DDPM training schedule (Ho et al. 2020): ``β^var = linspace(1e-4, 0.02, L)`` as a
    :class:`~diffcore.schedules.VPDiscrete` (step i at ``t_i = i/L``)."""
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps: expected a positive int, got {num_train_timesteps!r}")
    for name, b in (("beta_start", beta_start), ("beta_end", beta_end)):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < 1:
            raise ValueError(f"{name}: expected a number in (0, 1), got {b!r}")
    return _schedules.VPDiscrete(betas=torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=_F64))


_PRESETS = {
    # name: (class, defaults; a callable default is called to build a fresh object)
    "ddpm_simple": (DiffusionLoss, {"schedule": ddpm_schedule, "prediction": "eps", "time": "discrete"}),
    "ddpm_elbo": (DiffusionLoss, {"schedule": ddpm_schedule, "prediction": "eps", "weighting": "elbo",
                                  "time": "discrete", "time_options": {"first": 2}, "importance": True}),
    "eps": (DiffusionLoss, {"prediction": "eps"}),
    "x0": (DiffusionLoss, {"prediction": "x0"}),
    "v": (DiffusionLoss, {"prediction": "v"}),
    "score": (DiffusionLoss, {"prediction": "score", "weighting": "score_sde"}),
    "ncsn": (DiffusionLoss, {"schedule": "ve", "prediction": "score", "weighting": "ncsn", "time": "discrete",
                             "time_options": {"L": 10}, "importance": True}),
    "likelihood": (DiffusionLoss, {"prediction": "eps", "weighting": "likelihood", "time": "uniform_lambda",
                                   "importance": True}),
    "edm": (DiffusionLoss, {"schedule": "edm", "prediction": "edm", "time": "lognormal_sigma"}),
    "min_snr": (DiffusionLoss, {"prediction": "eps", "weighting": "min_snr"}),
    "cfm": (CFMLoss, {}),
    "poisson_flow": (PoissonFlowLoss, {}),
    "sliced_score": (SlicedScoreLoss, {}),
    "reflow": (ReflowLoss, {}),
}

_PRESET_DOCS = {
    "ddpm_simple": "L_simple: ε-MSE, i ~ U{1..L} on the DDPM schedule (book §2.2, eq. 2.2.10)",
    "ddpm_elbo": "diffusion part of the DDPM ELBO Σ_{i=2}^{L} w^ε_i ‖ε − ε̂‖², w^ε_i = ½(SNR_{i−1}/SNR_i − 1)"
                 " (book §2.2)",
    "eps": "ε-MSE, uniform t", "x0": "x0-MSE, uniform t", "v": "angular v-MSE (VP), uniform t",
    "score": "score-SDE DSM ½σ_t²‖s + ε/σ_t‖², t ~ U[1e-5, 1] (book §4.2)",
    "ncsn": "NCSN multi-level DSM Σ_i ½σ_i²‖s + ε/σ_i‖², 10 geometric levels of VE (book §3.4)",
    "likelihood": "likelihood weighting ω = g² (w_ε = −λ'), uniform-λ times, value = ∫(−λ')E‖ε̂ − ε‖² dt (book §4.2)",
    "edm": "EDM: preconditioned F-loss with unit weight, ln σ ~ N(−1.2, 1.2²) (book App. D.6)",
    "min_snr": "min-SNR-γ (γ = 5): w_ε = min(1, γ/SNR)", "cfm": "conditional flow matching (book §5.2)",
    "poisson_flow": "Poisson flow (Xu et al. 2022)", "sliced_score": "sliced score matching (book §3.3)",
    "reflow": "reflow regression on given pairs (book §5.4)",
}


def available() -> Tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return tuple(_PRESETS)


def get(name, **options) -> Loss:
    """A loss by preset name with its defaults overridden by ``options`` (a :class:`Loss` passes through):

    ``ddpm_simple``, ``ddpm_elbo``, ``eps``, ``x0``, ``v``, ``score``, ``ncsn``, ``likelihood``, ``edm``,
    ``min_snr`` (:class:`DiffusionLoss`), ``cfm`` (:class:`CFMLoss`), ``poisson_flow``
    (:class:`PoissonFlowLoss`), ``sliced_score`` (:class:`SlicedScoreLoss`), ``reflow``
    (:class:`ReflowLoss`). Giving ``time=`` drops the preset's ``time_options``."""
    if isinstance(name, Loss):
        if options:
            raise ValueError(f"options {sorted(options)}: cannot be given with a Loss instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"name: expected a loss name or a Loss, got {type(name).__name__}")
    key = name.lower()
    if key not in _PRESETS:
        raise ValueError(f"name: unknown loss {name!r}; expected one of {sorted(_PRESETS)}")
    cls, defaults = _PRESETS[key]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    bad = sorted(k for k in options if k not in valid)
    if bad:
        raise TypeError(f"{key}: unknown option(s) {bad}; expected some of {valid}")
    kw = {k: (v() if callable(v) and k == "schedule" else v) for k, v in defaults.items()}
    if "time" in options and "time_options" not in options:
        kw.pop("time_options", None)
    kw.update(options)
    return cls(**kw)
