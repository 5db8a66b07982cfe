"""Model parameterizations: prediction types, their exact conversions, and the model wrapper.

Conversions between heads: book Prop. 6.3.1, Eq. (6.3.1) and (6.3.6); EDM preconditioning: book App. D.6,
eq. D.6.1–D.6.5 (Karras et al. 2022); the model wrapper follows the DPM-Solver code (Lu et al. 2022).

Every prediction type is linear in ``(x0, ε)`` for the path ``x_t = α x0 + σ ε`` (diffusion time,
``t = 0`` data):

=============  ==========================  =====================================================
name           target ``a·x0 + b·ε``       meaning
=============  ==========================  =====================================================
``eps``        ``(0, 1)``                  noise ε̂
``x0``         ``(1, 0)``                  data / denoiser x̂0
``score``      ``(0, −1/σ)``               ŝ = ∇ log p_t
``velocity``   ``(α', σ')``                book velocity dx/dt in *diffusion* time (flow matching's
                                           FM-time velocity has the opposite sign)
``v``          ``(−σ, α)``                 Salimans v = α ε − σ x0, VP schedules only (α² + σ² = 1)
=============  ==========================  =====================================================

diffusers names are accepted as aliases (``epsilon``, ``sample``, ``v_prediction``, ``flow``); see
:func:`canonical_prediction`.

A model output ``m = a_P x0 + b_P ε`` of type P and the state ``x = α x0 + σ ε`` determine
``(x0, ε)`` whenever ``det = a_P σ − b_P α ≠ 0``; hence any target Q is the per-sample affine map
``Q = c_m·m + c_x·x`` with

    c_m = (a_Q σ − b_Q α)/det,    c_x = (b_Q a_P − a_Q b_P)/det

(:func:`conversion_coefs`). This single formula reproduces every entry of the conversion tables
(book Prop. 6.3.1, Table 6.1 with docs/errata.md B11). :func:`convert` applies it in one fused pass
(``_ops.lincomb``), and since the weights are the same for any output, a convex/affine combination of
outputs (classifier-free guidance, book Eq. (8.3.3)) commutes with the conversion.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from . import _ops
from .schedules import Schedule, ScheduleValues, _as_time

__all__ = [
    "PREDICTION_TYPES", "TIME_CONVENTIONS", "canonical_prediction", "resolve_prediction", "conversion_coefs", "convert",
    "edm_precond_coefs", "ModelWrapper", "TimeChange",
]

#: The canonical prediction-type names.
PREDICTION_TYPES = ("eps", "x0", "score", "velocity", "v")

_PRED_ALIASES = {
    "eps": "eps", "epsilon": "eps", "noise": "eps",
    "x0": "x0", "x_0": "x0", "sample": "x0", "data": "x0",
    "score": "score",
    "velocity": "velocity", "flow": "velocity", "v_flow": "velocity",
    "v": "v", "v_prediction": "v", "v_salimans": "v",
}

#: Time conventions for the value handed to the network (:class:`ModelWrapper`).
TIME_CONVENTIONS = ("continuous", "scaled", "index", "sigma", "c_noise")

_VP_TOL = 1e-6  # |α² + σ² − 1| allowed for "v" when only raw values (no schedule) are given


def canonical_prediction(name, argname: str = "prediction") -> str:
    """The canonical name (``"eps"``, ``"x0"``, ``"score"``, ``"velocity"`` or ``"v"``) of a prediction
    type or one of its aliases (``"epsilon"``, ``"noise"``, ``"sample"``, ``"x_0"``, ``"data"``,
    ``"flow"``, ``"v_flow"``, ``"v_prediction"``, ``"v_salimans"``); case-insensitive.

    Raises ``ValueError`` (naming ``argname``) for anything else (the heads of book §6.2.1, Prop. 6.3.1).
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in _PRED_ALIASES:
        raise ValueError(
            f"{argname}: unknown prediction type {name!r}; expected one of {list(PREDICTION_TYPES)} "
            f"(aliases: {sorted(k for k in _PRED_ALIASES if k not in PREDICTION_TYPES)})"
        )
    return _PRED_ALIASES[key]


def resolve_prediction(prediction, schedule, argname: str = "prediction") -> str:
    """``prediction`` in canonical form, ``None`` meaning the schedule family's own
    (``schedule.prediction``: ``"velocity"`` on the flow-matching paths, ``"eps"`` on the diffusion
    schedules). The model is never called to guess: its output cannot tell the types apart."""
    if prediction is None:
        return canonical_prediction(getattr(schedule, "prediction", "eps"), argname)
    return canonical_prediction(prediction, argname)


def singular_hint(prediction: str, schedule) -> str:
    """The advice appended to a singular-conversion error: a model type that is regular where this
    one divides by a zero α or σ (a flow model read as ε-prediction is the usual mistake)."""
    own = getattr(schedule, "prediction", "eps")
    if canonical_prediction(prediction) != own:
        return (f"; did you mean prediction={own!r}? (the default on {getattr(schedule, 'name', 'this schedule')}"
                " schedules; a flow-matching model predicts the velocity)")
    return ""


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _unpack_values(values):
    """(α, σ, α', σ') from a ScheduleValues, any object with those attributes, or a 4-sequence."""
    if hasattr(values, "alpha") and hasattr(values, "sigma"):
        parts = (values.alpha, values.sigma, values.dalpha, values.dsigma)
    else:
        try:
            parts = tuple(values)[:4]
        except TypeError:
            parts = ()
        if len(parts) != 4:
            raise TypeError("values: expected a ScheduleValues or a sequence (alpha, sigma, dalpha, dsigma)")
    out = []
    for p in parts:
        p = p if isinstance(p, torch.Tensor) else torch.as_tensor(p, dtype=torch.float64)
        out.append(p.to(_compute_dtype(p.device)))
    return out


def _check_v(kind_ok: Optional[bool], argname: str, schedule) -> None:
    if kind_ok is False:
        what = repr(schedule) if schedule is not None else "these schedule values"
        raise ValueError(
            f"{argname}: the Salimans 'v' prediction (v = α ε − σ x0) needs a variance-preserving schedule "
            f"(kind == 'vp', α² + σ² = 1), got {what}; use 'velocity' (dx/dt) for other paths"
        )


def _is_vp(schedule, alpha, sigma) -> Optional[bool]:
    if schedule is not None:
        return getattr(schedule, "kind", "general") == "vp"
    if _ops.in_transform():  # no data-dependent checks inside torch.func transforms
        return None
    with torch.no_grad():
        err = (alpha.detach() ** 2 + sigma.detach() ** 2 - 1).abs()
        return bool((err <= _VP_TOL).all()) if err.numel() else True


def _ab(kind: str, alpha, sigma, dalpha, dsigma):
    """(a, b) with target = a·x0 + b·ε (book Eq. (6.2.5), Table 6.1 with docs/errata.md B11)."""
    if kind == "eps":
        return 0.0, 1.0
    if kind == "x0":
        return 1.0, 0.0
    if kind == "score":
        return 0.0, -1.0 / sigma
    if kind == "velocity":
        return dalpha, dsigma
    return -sigma, alpha  # "v"


def conversion_coefs(src, dst, values, schedule: Optional[Schedule] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights ``(c_x, c_m)`` with ``dst = c_x·x + c_m·m`` for a model output ``m`` of type
    ``src`` at state ``x`` (book Prop. 6.3.1, eq. 6.3.1/6.3.6).

    Args:
        src, dst: prediction types (canonical names or aliases, :func:`canonical_prediction`).
        values: a :class:`~diffcore.schedules.ScheduleValues` (``schedule.eval(t)``) or a sequence of
            tensors ``(alpha, sigma, dalpha, dsigma)``.
        schedule: the schedule the values come from; used for the VP check of ``"v"``. Without it the
            check is numeric (``|α² + σ² − 1| ≤ 1e-6``).

    Returns two float64 tensors (float32 on MPS) shaped like the broadcast values. With
    ``det = a_src σ − b_src α``: ``c_m = (a_dst σ − b_dst α)/det``, ``c_x = (b_dst a_src − a_dst b_src)/det``.
    Differentiable in the values. ``"v"`` on a non-VP schedule raises ``ValueError``.
    """
    src = canonical_prediction(src, "src")
    dst = canonical_prediction(dst, "dst")
    alpha, sigma, dalpha, dsigma = _unpack_values(values)
    if "v" in (src, dst):
        _check_v(_is_vp(schedule, alpha, sigma), "src" if src == "v" else "dst", schedule)
    alpha, sigma, dalpha, dsigma = torch.broadcast_tensors(alpha, sigma, dalpha, dsigma)
    if src == dst:
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    a_p, b_p = _ab(src, alpha, sigma, dalpha, dsigma)
    a_q, b_q = _ab(dst, alpha, sigma, dalpha, dsigma)
    det = a_p * sigma - b_p * alpha
    c_m = (a_q * sigma - b_q * alpha) / det
    c_x = (b_q * a_p - a_q * b_p) / det
    zero = torch.zeros_like(alpha)
    return c_x + zero, c_m + zero  # python-float entries → full tensors


# ------------------------------------------------------------------------------------------------
# internals shared by convert and ModelWrapper


def _batch_times(t, B: int, argname: str = "t") -> torch.Tensor:
    """``t`` as a float tensor of shape (B,): a scalar or one-element tensor broadcasts."""
    t = _as_time(t, argname)
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1 and B != 1):
        return t.reshape(1).expand(B)
    if t.dim() != 1 or t.shape[0] != B:
        raise ValueError(f"{argname}: expected a scalar or a 1-D tensor of batch size {B}, got shape {tuple(t.shape)}")
    return t


def _eval64(schedule: Schedule, t: torch.Tensor) -> ScheduleValues:
    return schedule.eval(t.to(_compute_dtype(t.device)))


def _check_pair(m: torch.Tensor, x: torch.Tensor, mname: str = "m") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(m, torch.Tensor):
        raise TypeError(f"{mname}, x: expected torch tensors, got {type(m).__name__}, {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x: expected at least one (batch) dimension")
    if m.shape != x.shape:
        raise ValueError(f"{mname}, x: shape mismatch, {mname} has shape {tuple(m.shape)} and x {tuple(x.shape)}")


def _feature_compact(a: torch.Tensor) -> bool:
    """Whether the per-sample (feature) dimensions are row-major contiguous, as the kernel needs."""
    return a.numel() == 0 or a[0].is_contiguous()


def _compact(a: torch.Tensor) -> torch.Tensor:
    return a if _feature_compact(a) else a.contiguous()


def _affine(x: torch.Tensor, m: torch.Tensor, c_x: torch.Tensor, c_m: torch.Tensor, out=None) -> torch.Tensor:
    """``c_x·x + c_m·m`` per sample in one fused pass (``_ops.lincomb``, reference under autograd)."""
    if m.dtype != x.dtype:
        m = m.to(x.dtype)
    coefs = torch.stack([c_x, c_m], 1).to(x.device)
    if x.device.type != "mps":
        coefs = coefs.to(torch.float64)
    x_, m_ = _compact(x), _compact(m)
    if out is not None:
        if out.shape != x.shape:
            raise ValueError(f"out: expected shape {tuple(x.shape)}, got {tuple(out.shape)}")
        if not _feature_compact(out) or out.dtype != x.dtype:
            return out.copy_(_ops.lincomb(x_, coefs, ring=m_.unsqueeze(0)))
    return _ops.lincomb(x_, coefs, ring=m_.unsqueeze(0), out=out)


def convert(m: torch.Tensor, x: torch.Tensor, t, schedule: Schedule, src, dst, out: Optional[torch.Tensor] = None):
    """Convert a model output ``m`` of prediction type ``src`` at state ``x`` and times ``t`` to type
    ``dst`` (book Prop. 6.3.1, eq. 6.3.1).

    Args:
        m, x: ``(B, *S)`` tensors of the same shape (``m`` is cast to ``x``'s dtype).
        t: diffusion times, a scalar or a ``(B,)`` tensor.
        schedule: the noise schedule (its ``eval(t)`` gives α, σ, α', σ').
        src, dst: prediction types (see :func:`canonical_prediction`).
        out: optional output buffer (may be ``x`` or ``m``).

    The per-sample weights of :func:`conversion_coefs` (float64) are applied in ONE pass by the
    compiled ``lincomb`` kernel; under autograd, ``torch.func`` transforms or ``torch.compile`` the
    eager reference runs instead, so gradients and JVPs are exact. ``src == dst`` returns ``m``
    itself (or copies it into ``out``).
    """
    src = canonical_prediction(src, "src")
    dst = canonical_prediction(dst, "dst")
    schedule = _as_schedule(schedule)
    _check_pair(m, x)
    if "v" in (src, dst):
        _check_v(getattr(schedule, "kind", "general") == "vp", "src" if src == "v" else "dst", schedule)
    tb = _batch_times(t, x.shape[0])
    if src == dst:
        if out is None:
            return m
        if out.shape != x.shape:
            raise ValueError(f"out: expected shape {tuple(x.shape)}, got {tuple(out.shape)}")
        return out.copy_(m)
    c_x, c_m = conversion_coefs(src, dst, _eval64(schedule, tb), schedule)
    _check_regular(c_x, c_m, tb, src, dst, schedule)
    return _affine(x, m, c_x, c_m, out)


def _check_regular(c_x, c_m, tb, src: str, dst: str, schedule) -> None:
    """A conversion that divides by a σ or α that is zero at ``t`` gives inf/NaN silently; refuse it.
    Host values only (CPU times), so that no device sync is added to a sampler's step."""
    if c_x.device.type != "cpu" or _ops.in_transform():
        return
    if bool(torch.isfinite(c_x.detach() + c_m.detach()).all()):  # inf + (−inf) is NaN: one pass for both
        return
    bad = ~(torch.isfinite(c_x.detach()) & torch.isfinite(c_m.detach()))
    if bool(bad.any()):
        raise ValueError(
            f"t: {src} -> {dst} is singular at t = {float(tb.detach()[bad.nonzero()[0, 0]])} for {schedule!r} "
            "(it divides by a σ or α that is zero there); convert at times inside the open range"
            + singular_hint(src, schedule)
        )


def _as_schedule(schedule) -> Schedule:
    """A schedule instance, or one built from its name (``"vp_linear"``, …); anything else is refused
    here rather than failing later as an attribute error."""
    if isinstance(schedule, str):
        from .schedules import get
        return get(schedule)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a diffcore Schedule or a schedule name such as 'vp_linear', "
                        f"got {type(schedule).__name__}")
    return schedule


def edm_precond_coefs(values, sigma_data: float = 0.5):
    """EDM preconditioning for a general affine schedule (book App. D.6,
    eq. D.6.1–D.6.5): with ``R = α² σ_d² + σ²``,

        c_in = 1/√R,  c_skip = α σ_d²/R,  c_out = σ σ_d/√R,  c_noise = ¼ log(σ/α) = −λ/4,

    so that ``x̂0 = c_skip·x + c_out·F(c_in·x, c_noise)``. For EDM (α = 1, σ = t) this is eq. D.6.5
    with ``c_noise = ¼ ln σ``. Returns ``(c_skip, c_out, c_in, c_noise)`` in float64.

    ``values``: a :class:`~diffcore.schedules.ScheduleValues` or a sequence ``(alpha, sigma, ...)``.
    """
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not 0 < sigma_data < math.inf:
        raise ValueError(f"sigma_data: expected a finite positive number, got {sigma_data!r}")
    if hasattr(values, "alpha") and hasattr(values, "sigma"):
        pair = (values.alpha, values.sigma)
    else:
        pair = tuple(values)[:2]
        if len(pair) != 2:
            raise TypeError("values: expected a ScheduleValues or a sequence (alpha, sigma, ...)")
    alpha, sigma = (p if isinstance(p, torch.Tensor) else torch.as_tensor(p, dtype=torch.float64) for p in pair)
    alpha, sigma = torch.broadcast_tensors(alpha.to(_compute_dtype(alpha.device)), sigma.to(_compute_dtype(sigma.device)))
    sd2 = float(sigma_data) ** 2
    R = alpha * alpha * sd2 + sigma * sigma
    rs = torch.sqrt(R)
    c_skip = alpha * sd2 / R
    c_out = sigma * float(sigma_data) / rs
    c_in = 1.0 / rs
    lam = getattr(values, "lam", None)
    if isinstance(lam, torch.Tensor):
        c_noise = -0.25 * lam.to(alpha.dtype) + torch.zeros_like(alpha)
    else:
        c_noise = 0.25 * (torch.log(sigma) - torch.log(alpha))
    return c_skip, c_out, c_in, c_noise


# ------------------------------------------------------------------------------------------------


class ModelWrapper:
    """Wrap a user network so that it returns any prediction type at continuous diffusion times
    (the pattern of the DPM-Solver reference code, Lu et al. 2022; conversions book Prop. 6.3.1;
    EDM preconditioning book App. D.6).

    Args:
        model: the network, called as ``model(x_in, t_model, **model_kwargs)`` with ``x_in`` of shape
            ``(B, *S)`` and ``t_model`` of shape ``(B,)``; returns a tensor shaped like ``x``.
        schedule: the :class:`~diffcore.schedules.Schedule` the network was trained with.
        prediction: what the network predicts: ``"eps"``, ``"x0"``, ``"score"``,
            ``"velocity"`` (dx/dt in diffusion time) or ``"v"`` (Salimans, VP schedules only), or a
            diffusers alias. With ``edm_precond=True`` the network outputs the raw ``F`` and the
            wrapper's native prediction is ``"x0"`` (only ``None``/``"x0"`` are accepted then).
            Default (``None``): the schedule's own, ``schedule.prediction`` (``"velocity"`` on the
            flow schedules, ``"eps"`` otherwise).
        time_convention: the time the network receives (default ``"continuous"``, or ``"c_noise"``
            with ``edm_precond=True``):

            * ``"continuous"``: ``t`` itself;
            * ``"scaled"``: ``time_scale·t`` (default 1000: continuous-time VP checkpoints);
            * ``"index"``: the discrete training index ``N·t − 1`` (:class:`~diffcore.schedules.VPDiscrete`
              only, via ``schedule.t_to_index``; fractional between knots);
            * ``"sigma"``: ``σ(t)``, times ``time_scale`` if given (SD3/Flux: ×1000 on a
              rectified-flow schedule; k-diffusion/EDM models: σ itself);
            * ``"c_noise"``: EDM's ``¼·log(σ/α)`` (= ¼ ln σ on EDM), or ``c_noise(t, values)`` if a
              callable is given.
        time_scale: factor for ``"scaled"`` (default 1000) and ``"sigma"`` (default 1).
        edm_precond: form ``x̂0 = c_skip·x + c_out·F(c_in·x, t_model)`` (eq. D.6.1, D.6.4).
        sigma_data: σ_d of the EDM preconditioning.
        c_noise: optional callable ``(t, values) → (B,)`` for ``time_convention="c_noise"``.

    Calling ``wrapper(x, t, target="x0", **model_kwargs)`` returns the ``target`` prediction at times
    ``t`` (a scalar or ``(B,)``); the network is called once and the conversion (including the EDM
    skip connection) is one fused pass. ``t_model`` is float64 for float64 ``x``, float32 otherwise.
    """

    def __init__(self, model: Callable, schedule: Schedule, prediction: Optional[str] = None,
                 time_convention: Optional[str] = None, time_scale: Optional[float] = None,
                 edm_precond: bool = False, sigma_data: float = 0.5,
                 c_noise: Optional[Callable] = None):
        if not callable(model):
            raise TypeError(f"model: expected a callable, got {type(model).__name__}")
        schedule = _as_schedule(schedule)
        if edm_precond not in (True, False):  # bool("no") would switch preconditioning on
            raise TypeError(f"edm_precond: expected True or False, got {edm_precond!r}")
        self.model = model
        self.schedule = schedule
        self.edm_precond = bool(edm_precond)
        if self.edm_precond:
            if prediction is not None and canonical_prediction(prediction) != "x0":
                raise ValueError(
                    f"prediction: with edm_precond=True the network outputs the raw F and the wrapper "
                    f"predicts 'x0'; got prediction={prediction!r}")
            self.prediction = "x0"
        else:
            self.prediction = resolve_prediction(prediction, schedule)
        if self.prediction == "v":
            _check_v(schedule.kind == "vp", "prediction", schedule)

        if time_convention is None:
            time_convention = "c_noise" if self.edm_precond else "continuous"
        tc = time_convention.lower() if isinstance(time_convention, str) else None
        if tc not in TIME_CONVENTIONS:
            raise ValueError(f"time_convention: unknown value {time_convention!r}; expected one of {list(TIME_CONVENTIONS)}")
        self.time_convention = tc
        if tc == "index" and not hasattr(schedule, "t_to_index"):
            raise ValueError(
                f"time_convention: 'index' needs a discrete-time schedule (VPDiscrete), got {schedule!r}")
        if time_scale is not None:
            if tc not in ("scaled", "sigma"):
                raise ValueError(f"time_scale: only used with time_convention 'scaled' or 'sigma', got {tc!r}")
            if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale > 0):
                raise ValueError(f"time_scale: expected a positive finite number, got {time_scale!r}")
        self.time_scale = float(time_scale) if time_scale is not None else (1000.0 if tc == "scaled" else 1.0)
        if c_noise is not None:
            if tc != "c_noise":
                raise ValueError(f"c_noise: only used with time_convention='c_noise', got {tc!r}")
            if not callable(c_noise):
                raise TypeError(f"c_noise: expected a callable (t, values) -> tensor, got {type(c_noise).__name__}")
        self.c_noise = c_noise
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not 0 < sigma_data < math.inf:
            raise ValueError(f"sigma_data: expected a finite positive number, got {sigma_data!r}")
        self.sigma_data = float(sigma_data)

    def __repr__(self) -> str:
        return (f"ModelWrapper(schedule={self.schedule!r}, prediction={self.prediction!r}, "
                f"time_convention={self.time_convention!r}, time_scale={self.time_scale}, "
                f"edm_precond={self.edm_precond}, sigma_data={self.sigma_data})")

    # ---- time conventions -----------------------------------------------------------------------
    def model_time(self, t, values: Optional[ScheduleValues] = None) -> torch.Tensor:
        """The time value handed to the network for continuous times ``t`` (float64)."""
        t = _as_time(t)
        t = t.to(_compute_dtype(t.device))
        tc = self.time_convention
        if tc == "continuous":
            return t
        if tc == "scaled":
            return self.time_scale * t
        if tc == "index":
            return self.schedule.t_to_index(t)
        if values is None:
            values = self.schedule.eval(t)
        if tc == "sigma":
            s = values.sigma
            return s if self.time_scale == 1.0 else self.time_scale * s
        if self.c_noise is not None:
            return torch.as_tensor(self.c_noise(t, values))
        return -0.25 * values.lam  # ¼·log(σ/α)

    # ---- prediction -----------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, t, target: str = "x0", **model_kwargs) -> torch.Tensor:
        target = canonical_prediction(target, "target")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch tensor, got {type(x).__name__}")
        if x.dim() < 1:
            raise ValueError("x: expected at least one (batch) dimension")
        if target == "v":
            _check_v(self.schedule.kind == "vp", "target", self.schedule)
        B = x.shape[0]
        tb = _batch_times(t, B)
        values = _eval64(self.schedule, tb)
        t_model = self.model_time(tb, values)
        t_model = t_model.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)

        if self.edm_precond:
            c_skip, c_out, c_in, _ = edm_precond_coefs(values, self.sigma_data)
            x_in = _ops.lincomb(_compact(x), c_in.reshape(B, 1).to(x.device))
        else:
            x_in = x
        out = self.model(x_in, t_model, **model_kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model: expected it to return a tensor, got {type(out).__name__}")
        _check_pair(out, x, "model output")

        if self.edm_precond:
            # x̂0 = c_skip x + c_out F; target = c_x x + c_m x̂0 = (c_x + c_m c_skip) x + c_m c_out F
            if target == "x0":
                return _affine(x, out, c_skip, c_out)
            c_x, c_m = conversion_coefs("x0", target, values, self.schedule)
            _check_regular(c_x, c_m, tb, "x0", target, self.schedule)
            return _affine(x, out, c_x + c_m * c_skip, c_m * c_out)
        if target == self.prediction:
            return out
        c_x, c_m = conversion_coefs(self.prediction, target, values, self.schedule)
        _check_regular(c_x, c_m, tb, self.prediction, target, self.schedule)
        return _affine(x, out, c_x, c_m)

    def predict(self, x: torch.Tensor, t, target: str = "x0", **model_kwargs) -> torch.Tensor:
        """Alias of calling the wrapper."""
        return self(x, t, target, **model_kwargs)

    def eps_fn(self, x, t, **model_kwargs):
        """Noise prediction ε̂(x, t)."""
        return self(x, t, "eps", **model_kwargs)

    def x0_fn(self, x, t, **model_kwargs):
        """Data prediction x̂0(x, t)."""
        return self(x, t, "x0", **model_kwargs)

    def score_fn(self, x, t, **model_kwargs):
        """Score ŝ(x, t) = ∇ log p_t(x)."""
        return self(x, t, "score", **model_kwargs)

    def velocity_fn(self, x, t, **model_kwargs):
        """PF-ODE velocity dx/dt = α' x̂0 + σ' ε̂ in diffusion time (book Prop. 6.3.2, Eq. (6.3.2))."""
        return self(x, t, "velocity", **model_kwargs)


_CALL_ORDERS = ("xt", "tx", "cat")


class TimeChange(ModelWrapper):
    """A network trained in another time variable ``τ``, seen in the time ``t`` of a diffcore
    ``schedule``: the network is called at ``τ = t_of(t)`` on the same state (its path at ``τ`` must be
    the schedule's path at ``t``). Then x̂0, ε̂, the score and Salimans' v are the same quantities in both
    times, and a velocity obeys the chain rule ``dx/dt = (dτ/dt)·dx/dτ`` (``dt_of`` gives ``dτ/dt``).

    This is what a torchcfm / torchdyn model needs (``τ = 1 − t``, ``dτ/dt = −1``:
    :func:`diffcore.adapters.torchcfm`). It is a :class:`ModelWrapper` (continuous time), so
    :func:`diffcore.sample` and :func:`diffcore.log_likelihood` take it and read its prediction type.

    Args:
        model: the network; called as ``model(x, τ, **kw)`` (``order="xt"``), ``model(τ, x, **kw)``
            (``"tx"``, the torchdiffeq/torchdyn/torchcfm ``forward(t, x)``) or
            ``model(torch.cat([x, τ[:, None]], 1), **kw)`` (``"cat"``, torchcfm's MLP on flat ``x``),
            with ``τ`` a ``[B]`` tensor in ``x``'s dtype.
        schedule: the diffcore schedule whose time ``t`` the sampler uses.
        t_of: ``τ(t)``, a callable on ``[B]`` tensors.
        dt_of: ``dτ/dt``, a number or a callable on ``[B]`` tensors; needed for a velocity model.
        prediction: the network's output type (default: the schedule's own, ``schedule.prediction``).
        order: how the network takes its arguments (see ``model``).
    """

    def __init__(self, model: Callable, schedule, t_of: Callable, dt_of=None, prediction: Optional[str] = None,
                 order: str = "xt"):
        if not callable(model):
            raise TypeError(f"model: expected a callable, got {type(model).__name__}")
        if not callable(t_of):
            raise TypeError(f"t_of: expected a callable t -> τ on [B] tensors, got {type(t_of).__name__}")
        if order not in _CALL_ORDERS:
            raise ValueError(f"order: expected one of {list(_CALL_ORDERS)}, got {order!r}")
        schedule = _as_schedule(schedule)
        pred = resolve_prediction(prediction, schedule)
        if dt_of is not None and not callable(dt_of):
            if isinstance(dt_of, bool) or not isinstance(dt_of, (int, float)) or not math.isfinite(dt_of) \
                    or dt_of == 0:
                raise ValueError(f"dt_of: expected dτ/dt as a finite non-zero number or a callable, got {dt_of!r}")
        if pred == "velocity" and dt_of is None:
            raise ValueError("dt_of: a velocity model needs dτ/dt for the chain rule dx/dt = (dτ/dt)·dx/dτ "
                             "(e.g. dt_of=-1 for τ = 1 − t)")
        self.network, self.t_of, self.dt_of, self.order = model, t_of, dt_of, order
        super().__init__(self._in_schedule_time, schedule, prediction=pred, time_convention="continuous")

    def _in_schedule_time(self, x, t, **kw):
        tau = torch.as_tensor(self.t_of(t)).to(device=x.device, dtype=x.dtype)
        if tau.dim() == 0:
            tau = tau.expand(x.shape[0])
        if self.order == "xt":
            out = self.network(x, tau, **kw)
        elif self.order == "tx":
            out = self.network(tau, x, **kw)
        else:
            if x.dim() != 2:
                raise ValueError(f"x: order='cat' appends τ as a feature column of a flat [B, D] x, got shape "
                                 f"{tuple(x.shape)}")
            out = self.network(torch.cat([x, tau[:, None]], 1), **kw)
        if self.prediction == "velocity" and isinstance(out, torch.Tensor):
            d = self.dt_of(t) if callable(self.dt_of) else self.dt_of
            if isinstance(d, torch.Tensor) and d.dim() == 1:
                d = d.to(device=out.device, dtype=out.dtype).reshape((-1,) + (1,) * (out.dim() - 1))
            out = out * d
        return out

    def __repr__(self) -> str:
        return f"TimeChange(schedule={self.schedule!r}, prediction={self.prediction!r}, order={self.order!r})"
