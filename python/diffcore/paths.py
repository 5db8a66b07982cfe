"""Probability paths and their conditional targets (book Ch. 4–6).

Three families, each documented with its time convention:

* :class:`AffinePath` — the diffusion path ``x_t = α_t x0 + σ_t ε`` of any schedule (book §4.4.1), in
  **diffusion time** (``t = 0`` data). Regression targets of every head (book Table 6.1), conditional score
  and conditional velocity field.
* :class:`InterpolantPath` — flow-matching conditional paths P1–P6 (book §5.3) in **FM time** ``τ``
  (source ``y0`` at ``τ = 0``, target/data ``y1`` at ``τ = 1``):
  ``x_τ = a_τ y0 + b_τ y1 + c_τ ξ`` with ``a_τ = σ_{1−τ}``, ``b_τ = α_{1−τ}`` of a schedule (corrected
  Table 5.2: linear, OT-σ_min (P5), VP, VE, trig) and an optional extra Gaussian noise ``c_τ``: a
  constant ``σ_c`` (P1/P2) or the Brownian bridge ``σ√(τ(1 − τ))`` (P6, SB-CFM). :func:`fm_path` builds
  them by name.
* Poisson flow (Xu et al. 2022, "Poisson Flow Generative Models", NeurIPS): the (d+1)-dimensional
  Green's-function kernel ``p_t(x|x0) = C_d t/(t² + ‖x − x0‖²)^{(d+1)/2}``, its exact sampler
  ``x_t = x0 + t·g/|h|``, the
  conditional velocity ``(x_t − x0)/t``, the finite-dataset exact field (= the minibatch
  self-normalized target when the points are the batch) and the prior ``T z``. Time ``t`` is the extra
  coordinate, ``t = 0`` data — the library's diffusion time on the EDM schedule (α = 1, σ = t).

Tensors are ``(B, *S)``; times are ``(B,)`` tensors (or scalars, broadcast). Coefficients are computed
in float64 and applied in the data's dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import schedules as _schedules
from ._device import as_device
from ._softmax import softmax_mean
from .param import _ab, canonical_prediction, edm_precond_coefs

__all__ = ["AffinePath", "InterpolantPath", "fm_path", "FM_PATHS", "poisson_log_normalizer",
           "poisson_log_prob", "poisson_sample", "poisson_velocity", "poisson_field", "poisson_minibatch_target",
           "poisson_prior_sample"]

_F64 = torch.float64


# ---- helpers -------------------------------------------------------------------------------------
def _check_data(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (B, *S), got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name}: expected shape (B, *S) with at least one feature dimension, got "
                         f"{tuple(x.shape)} (reshape a batch of scalars to (B, 1))")
    return x


def _same(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na}, {nb}: shape mismatch, {tuple(a.shape)} vs {tuple(b.shape)}")


def _times(t, B: int, device, name: str = "t") -> torch.Tensor:
    """``t`` as a float64 ``(B,)`` tensor on ``device`` (a scalar or one-element tensor broadcasts)."""
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name}: expected a real tensor, got {t.dtype}")
        t = t.to(device=device, dtype=_F64)
    else:
        try:
            t = torch.as_tensor(t, dtype=_F64, device=device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: expected a float or a (B,) tensor, got {type(t).__name__}") from e
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1 and B != 1):
        return t.reshape(1).expand(B)
    if t.dim() != 1 or t.shape[0] != B:
        raise ValueError(f"{name}: expected a scalar or a (B,) tensor with B = {B}, got shape {tuple(t.shape)}")
    return t


def _poisson_times(t, B: int, device) -> torch.Tensor:
    """Poisson-kernel times: the kernel's scale, so t > 0 and finite (t = 0 divides by zero, t < 0 and NaN
    give NaN densities). Read on the host only for CPU tensors (no device sync)."""
    t = _times(t, B, device)
    if t.device.type == "cpu" and not bool(((t > 0) & (t < math.inf)).all()):
        raise ValueError(f"t: expected finite Poisson times t > 0, got values in [{float(t.min())}, {float(t.max())}]")
    return t


def _nonzero_sigma(sigma: torch.Tensor, what: str, name: str = "t") -> None:
    """σ_t = 0 (e.g. t = 0 of a VP schedule) makes the Gaussian degenerate: the score and the density are
    infinite there. Checked for CPU values only (no device sync)."""
    if sigma.device.type == "cpu" and not bool((sigma > 0).all()):
        raise ValueError(f"{name}: {what} needs a positive std, but it is 0 at some of the given times")


def _col(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficient ``(B,)`` → ``(B, 1, …, 1)`` in ``like``'s dtype."""
    return c.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def _flat_sq(x: torch.Tensor) -> torch.Tensor:
    return (x * x).reshape(x.shape[0], -1).sum(1)


# ---- affine diffusion path (diffusion time) ------------------------------------------------------
class AffinePath:
    """The affine Gaussian path of a schedule, ``p_t(x|x0) = N(α_t x0, σ_t² I)`` (book
    §4.4.1, Eq. (4.4.1)). **Diffusion time** ``t``.

    Regression targets ``A_t x0 + B_t ε`` (book Table 6.1 with the corrected score row, docs/errata.md B11):
    ``eps`` (0, 1), ``x0`` (1, 0), ``score`` (0, −1/σ), ``velocity`` (α', σ') = dx/dt, ``v`` (−σ, α)
    (VP only) and ``"edm"``, the raw EDM network output ``F`` of book App. D.6:
    ``((1 − c_skip α)/c_out, −c_skip σ/c_out)``.
    """

    def __init__(self, schedule):
        self.schedule = _schedules.get(schedule)

    def __repr__(self) -> str:
        return f"AffinePath({self.schedule!r})"

    def values(self, t, B: int, device):
        return self.schedule.eval(_times(t, B, device))

    def coefficients(self, t, prediction: str, sigma_data: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(A_t, B_t)`` (float64 ``(B,)``) of the target ``A_t x0 + B_t ε`` of ``prediction`` at times ``t``
        (a ``(B,)`` tensor)."""
        t = _times(t, t.shape[0] if isinstance(t, torch.Tensor) and t.dim() == 1 else 1,
                   t.device if isinstance(t, torch.Tensor) else "cpu")
        return self.coefficients_at(self.schedule.eval(t), prediction, sigma_data)

    def coefficients_at(self, values, prediction: str, sigma_data: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`coefficients` from precomputed schedule values (``schedule.eval(t)``)."""
        v = values
        if isinstance(prediction, str) and prediction.lower() == "edm":
            c_skip, c_out, _, _ = edm_precond_coefs(v, sigma_data)
            return (1 - c_skip * v.alpha) / c_out, -c_skip * v.sigma / c_out
        key = canonical_prediction(prediction)
        if key == "v" and self.schedule.kind != "vp":
            raise ValueError(f"prediction: 'v' (α ε − σ x0) needs a variance-preserving schedule, got {self.schedule!r}")
        A, Bc = _ab(key, v.alpha, v.sigma, v.dalpha, v.dsigma)
        zero = torch.zeros_like(v.alpha)
        return A + zero, Bc + zero

    def sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = α_t x0 + σ_t ε``."""
        x0 = _check_data(x0, "x0")
        _same(x0, noise, "x0", "noise")
        v = self.values(t, x0.shape[0], x0.device)
        return _col(v.alpha, x0) * x0 + _col(v.sigma, x0) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t, prediction: str, sigma_data: float = 0.5) -> torch.Tensor:
        """The regression target ``A_t x0 + B_t ε`` of ``prediction`` (book Table 6.1)."""
        x0 = _check_data(x0, "x0")
        _same(x0, noise, "x0", "noise")
        v = self.values(t, x0.shape[0], x0.device)
        A, Bc = self.coefficients_at(v, prediction, sigma_data)
        if A.device.type == "cpu" and not bool((torch.isfinite(A) & torch.isfinite(Bc)).all()):
            raise ValueError(f"t: the {prediction!r} target is infinite at some of the given times (σ_t or α_t is 0 "
                             "there); draw times inside the open range")
        return _col(A, x0) * x0 + _col(Bc, x0) * noise

    def conditional_score(self, x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """``∇_x log p_t(x|x0) = −(x − α_t x0)/σ_t²`` (Lemma D.2.1; = −ε/σ at the sample)."""
        x = _check_data(x, "x")
        _same(x, x0, "x", "x0")
        v = self.values(t, x.shape[0], x.device)
        _nonzero_sigma(v.sigma, "the conditional score")
        return -(x - _col(v.alpha, x) * x0) / _col(v.sigma * v.sigma, x)

    def conditional_velocity(self, x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """The conditional velocity as a field in ``x`` (book Sec. 5.2.1, §4.4.1):
        ``v_t(x|x0) = α'_t x0 + (σ'_t/σ_t)(x − α_t x0) = f x − ½ g² ∇log p_t(x|x0)``; at the sample it is
        ``α' x0 + σ' ε``."""
        _same(x, x0, "x", "x0")
        v = self.values(t, x.shape[0], x.device)
        return _col(v.dalpha, x) * x0 + _col(v.dsigma / v.sigma, x) * (x - _col(v.alpha, x) * x0)

    def log_prob(self, x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """``log N(x; α_t x0, σ_t² I)`` ``(B,)``."""
        x = _check_data(x, "x")
        _same(x, x0, "x", "x0")
        v = self.values(t, x.shape[0], x.device)
        _nonzero_sigma(v.sigma, "the log-density")
        D = x[0].numel()
        r = _flat_sq(x - _col(v.alpha, x) * x0).to(_F64)
        return -0.5 * r / v.sigma ** 2 - D * (torch.log(v.sigma) + 0.5 * math.log(2 * math.pi))


# ---- flow-matching interpolants (FM time) ---------------------------------------------------------
class InterpolantPath:
    """Flow-matching conditional paths (book §5.3) in **FM time** ``τ ∈ [0, 1]`` (source ``y0`` at τ = 0,
    target ``y1`` at τ = 1; book Sec. 5.2–5.3):

        x_τ = a_τ y0 + b_τ y1 + c_τ ξ,   a_τ = σ_{1−τ},  b_τ = α_{1−τ}  (of ``schedule``),

    with extra noise ``c_τ = 0`` (default), a constant ``sigma_c`` (P1/P2: ``N(a y0 + b y1, σ_c² I)``)
    or the Brownian bridge ``c_τ = bridge_sigma·√(τ(1 − τ))`` (P6; with the linear schedule). The
    target (the time derivative of the sampled trajectory, Prop. 5.3.1 at the sample) is
    ``a'_τ y0 + b'_τ y1 + c'_τ ξ``; for the bridge ``c'_τ ξ = (1 − 2τ)/(2τ(1 − τ))·(x − μ_τ)``.

    Conditioning: ``two_sided`` (``z = (y0, y1)``, P1/P2/P6: ``p_τ(x|z) = N(a y0 + b y1, c² I)``, needs
    ``c > 0`` for a density) or one-sided (``z = y1`` with Gaussian source ``y0 ~ N(0, I)``, P3/P4/P5:
    ``N(b y1, (a² + c²) I)``). Fields follow Prop. 5.3.1, ``v = μ' + (s'/s)(x − μ)``.

    In diffusion time (``t = 1 − τ``, ``y0 = ε``, ``y1 = x0``) the same sample is the schedule's
    ``α_t x0 + σ_t ε (+ c ξ)`` and the velocity flips sign: ``v(x, t) = −v^FM(x, 1 − t)``.
    """

    def __init__(self, schedule="rectified_flow", sigma_c: float = 0.0, bridge_sigma: Optional[float] = None):
        self.schedule = _schedules.get(schedule)
        if isinstance(sigma_c, bool) or not isinstance(sigma_c, (int, float)) or not (0 <= sigma_c < math.inf):
            raise ValueError(f"sigma_c: expected a finite number >= 0, got {sigma_c!r}")
        if bridge_sigma is not None:
            if isinstance(bridge_sigma, bool) or not isinstance(bridge_sigma, (int, float)) or \
                    not (0 < bridge_sigma < math.inf):
                raise ValueError(f"bridge_sigma: expected a finite number > 0, got {bridge_sigma!r}")
            if sigma_c:
                raise ValueError("sigma_c, bridge_sigma: give at most one of them")
        self.sigma_c = float(sigma_c)
        self.bridge_sigma = None if bridge_sigma is None else float(bridge_sigma)

    def __repr__(self) -> str:
        extra = f", bridge_sigma={self.bridge_sigma}" if self.bridge_sigma is not None else \
            (f", sigma_c={self.sigma_c}" if self.sigma_c else "")
        return f"InterpolantPath({self.schedule!r}{extra})"

    @property
    def noisy(self) -> bool:
        """Whether the path adds the extra noise ``c_τ ξ``."""
        return self.sigma_c > 0 or self.bridge_sigma is not None

    def coefs(self, tau) -> Tuple[torch.Tensor, ...]:
        """``(a, b, c, a', b', c')`` at FM times ``tau`` (float64, d/dτ)."""
        if isinstance(tau, torch.Tensor) and (tau.is_complex() or tau.dtype == torch.bool):
            raise TypeError(f"tau: expected real FM times, got {tau.dtype}")
        try:
            tau = tau.to(_F64) if isinstance(tau, torch.Tensor) else torch.as_tensor(tau, dtype=_F64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"tau: expected a float or a tensor of FM times, got {type(tau).__name__}") from None
        if tau.device.type == "cpu" and not bool(((tau >= 0) & (tau <= 1)).all()):  # NaN fails too
            raise ValueError(f"tau: expected FM times in [0, 1], got values in [{float(tau.min())}, {float(tau.max())}]")
        v = self.schedule.eval(1 - tau)
        if self.bridge_sigma is not None:
            s = self.bridge_sigma
            r = torch.sqrt(tau * (1 - tau))
            c, dc = s * r, s * (1 - 2 * tau) / (2 * r)
        else:
            c, dc = torch.full_like(tau, self.sigma_c), torch.zeros_like(tau)
        return v.sigma, v.alpha, c, -v.dsigma, -v.dalpha, dc

    def _prep(self, y0, y1, tau, xi):
        y0 = _check_data(y0, "y0")
        _same(y0, y1, "y0", "y1")
        tau = _times(tau, y0.shape[0], y0.device, "tau")
        if xi is not None:
            _same(y0, xi, "y0", "xi")
        elif self.noisy:
            raise ValueError("xi: this path adds noise c_τ ξ; pass the standard normal draw xi")
        return y0, tau, self.coefs(tau)

    def sample(self, y0: torch.Tensor, y1: torch.Tensor, tau, xi: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x_τ = a_τ y0 + b_τ y1 + c_τ ξ`` (FM time)."""
        y0, tau, (a, b, c, _, _, _) = self._prep(y0, y1, tau, xi)
        x = _col(a, y0) * y0 + _col(b, y0) * y1
        return x + _col(c, y0) * xi if xi is not None and self.noisy else x

    def target(self, y0: torch.Tensor, y1: torch.Tensor, tau, xi: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``d x_τ/dτ = a'_τ y0 + b'_τ y1 + c'_τ ξ`` (FM time; the CFM regression target)."""
        y0, tau, (_, _, _, da, db, dc) = self._prep(y0, y1, tau, xi)
        if self.noisy and dc.device.type == "cpu" and not bool(torch.isfinite(dc).all()):
            raise ValueError("tau: the Brownian-bridge target is singular at τ = 0 and τ = 1 (c'_τ is infinite); "
                             "draw τ inside (0, 1)")
        u = _col(da, y0) * y0 + _col(db, y0) * y1
        return u + _col(dc, y0) * xi if xi is not None and self.noisy else u

    def _mean_std(self, x, y0, y1, tau, one_sided):
        x = _check_data(x, "x")
        _same(x, y1, "x", "y1")
        tau = _times(tau, x.shape[0], x.device, "tau")
        a, b, c, da, db, dc = self.coefs(tau)
        if one_sided:
            s = torch.sqrt(a * a + c * c)
            ds = (a * da + c * dc) / s
            return x, _col(b, x) * y1, _col(db, x) * y1, s, ds
        if y0 is None:
            raise ValueError("y0: required for the two-sided conditional path (z = (y0, y1))")
        _same(x, y0, "x", "y0")
        return x, _col(a, x) * y0 + _col(b, x) * y1, _col(da, x) * y0 + _col(db, x) * y1, c, dc

    def field(self, x: torch.Tensor, y0: Optional[torch.Tensor], y1: torch.Tensor, tau,
              one_sided: bool = False) -> torch.Tensor:
        """Conditional velocity field ``v_τ(x|z) = μ'_τ + (s'_τ/s_τ)(x − μ_τ)`` (Prop. 5.3.1; FM time).
        Two-sided: ``z = (y0, y1)``, ``s = c`` (with ``c ≡ 0`` the field is ``μ'``). One-sided
        (``one_sided=True``, ``y0`` ignored): ``z = y1``, ``s = √(a² + c²)`` — P3 gives
        ``b' y1 + (a'/a)(x − b y1)``, P5 ``(y1 − (1 − σ_min) x)/(1 − (1 − σ_min)τ)``."""
        x, mu, dmu, s, ds = self._mean_std(x, y0, y1, tau, one_sided)
        ratio = torch.where(s > 0, ds / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        return dmu + _col(ratio, x) * (x - mu)

    def log_prob(self, x: torch.Tensor, y0: Optional[torch.Tensor], y1: torch.Tensor, tau,
                 one_sided: bool = False) -> torch.Tensor:
        """``log p_τ(x|z)`` ``(B,)`` of the Gaussian conditional path (needs ``s_τ > 0``)."""
        x, mu, _, s, _ = self._mean_std(x, y0, y1, tau, one_sided)
        _nonzero_sigma(s, "the log-density of the conditional path", "tau")
        D = x[0].numel()
        return -0.5 * _flat_sq(x - mu).to(_F64) / s ** 2 - D * (torch.log(s) + 0.5 * math.log(2 * math.pi))


#: Names accepted by :func:`fm_path` (path option of the CFM loss).
FM_PATHS = ("linear", "ot", "vp", "ve", "trig", "bridge")


def fm_path(name: str = "linear", sigma_min: float = 1e-4, sigma: Optional[float] = None,
            sigma_c: float = 0.0) -> InterpolantPath:
    """A named flow-matching path (FM time):

    * ``"linear"`` (aliases ``"rectified"``, ``"rf"``): ``a = 1 − τ``, ``b = τ`` (S6, P1–P3);
    * ``"ot"``: Lipman's σ_min path P5 / S8, ``a = 1 − (1 − σ_min)τ``, ``b = τ``;
    * ``"vp"``: VP-linear diffusion as FM, ``b = α_{1−τ}``, ``a = √(1 − b²)`` (P4);
    * ``"ve"``: VE diffusion as FM, ``a = σ_{1−τ}``, ``b = 1`` (P4; prior N(0, σ_max² I));
    * ``"trig"``: ``a = cos(πτ/2)``, ``b = sin(πτ/2)``;
    * ``"bridge"``: the Brownian bridge P6 ``N((1 − τ)y0 + τ y1, σ² τ(1 − τ) I)``, needs ``sigma``.
    """
    key = name.lower() if isinstance(name, str) else None
    key = {"rectified": "linear", "rf": "linear", "rectified_flow": "linear", "ot_sigma_min": "ot",
           "sb": "bridge", "brownian_bridge": "bridge", "trigonometric": "trig"}.get(key, key)
    if key not in FM_PATHS:
        raise ValueError(f"path: unknown flow-matching path {name!r}; expected one of {list(FM_PATHS)}")
    if key == "bridge":
        if sigma is None:
            raise ValueError("sigma: the Brownian-bridge path needs sigma > 0 (SB-CFM uses the σ of the coupling)")
        return InterpolantPath("rectified_flow", bridge_sigma=sigma)
    if sigma is not None:
        raise ValueError(f"sigma: only used by the 'bridge' path, got path={name!r}")
    sched = {"linear": lambda: _schedules.RectifiedFlow(), "ot": lambda: _schedules.OTSigmaMin(sigma_min),
             "vp": lambda: _schedules.VPLinear(), "ve": lambda: _schedules.VE(),
             "trig": lambda: _schedules.Trig()}[key]()
    return InterpolantPath(sched, sigma_c=sigma_c)


# ---- Poisson flow (diffusion time on the EDM schedule: σ = t) -------------------------------------
def poisson_log_normalizer(d: int) -> float:
    """``log C_d``, ``C_d = Γ((d+1)/2)/π^{(d+1)/2}`` (the normalization of the kernel, Xu et al. 2022)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d: expected a positive int, got {d!r}")
    return math.lgamma(0.5 * (d + 1)) - 0.5 * (d + 1) * math.log(math.pi)


def poisson_log_prob(x: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    """``log p_t(x|x0) = log C_d + log t − (d+1)/2·log(t² + ‖x − x0‖²)`` ``(B,)``, ``d`` = features per
    sample (the d-variate Cauchy with scale t; Xu et al. 2022)."""
    x = _check_data(x, "x")
    _same(x, x0, "x", "x0")
    d = x[0].numel()
    t = _poisson_times(t, x.shape[0], x.device)
    r2 = _flat_sq(x - x0).to(_F64)
    return poisson_log_normalizer(d) + torch.log(t) - 0.5 * (d + 1) * torch.log(t * t + r2)


def _poisson_z(shape, generator, device, dtype) -> torch.Tensor:
    g = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    h = torch.randn((shape[0],) + (1,) * (len(shape) - 1), generator=generator, device=device, dtype=dtype)
    return g / h.abs()


def poisson_sample(x0: torch.Tensor, t, generator: Optional[torch.Generator] = None,
                   z: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact draw of the Poisson kernel at fixed ``t``: ``x_t = x0 + t·z``, ``z = g/|h|``,
    ``g ~ N(0, I_d)``, ``h ~ N(0, 1)`` (Xu et al. 2022; a ratio ``ε_x/|ε_t|`` of normals drawn jointly with t is
    exact only at fixed t). Returns ``(x_t, z)``; ``z`` may be given."""
    x0 = _check_data(x0, "x0")
    t = _poisson_times(t, x0.shape[0], x0.device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if z is None:
        z = _poisson_z(tuple(x0.shape), generator, x0.device, x0.dtype)
    else:
        _same(x0, z, "x0", "z")
    return x0 + _col(t, x0) * z, z


def poisson_velocity(x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
    """Conditional velocity ``G_{>1}/G_1 = (x_t − x0)/t`` (= ``z`` at the sample)."""
    x_t = _check_data(x_t, "x_t")
    _same(x_t, x0, "x_t", "x0")
    t = _poisson_times(t, x_t.shape[0], x_t.device)
    return (x_t - x0) / _col(t, x_t)


def poisson_field(x: torch.Tensor, t, points: torch.Tensor, weights: Optional[torch.Tensor] = None,
                  chunk: Optional[int] = None) -> torch.Tensor:
    """Exact marginal Poisson field of a finite dataset (Xu et al. 2022):

        f_t(x) = Σ_k w_k (x − x^{(k)})/t = (x − Σ_k w_k x^{(k)})/t,
        w_k ∝ π_k (t² + ‖x − x^{(k)}‖²)^{−(d+1)/2}   (log-sum-exp weights, streamed over the points).

    With ``points`` the training minibatch this is the self-normalized minibatch target ``v̂(x_t)`` of
    Poisson-flow models (biased, consistent as the batch grows). ``x`` ``(B, *S)``, ``points``
    ``(N, *S)``, ``weights`` optional ``(N,)`` positive. Computed in float64, returned in ``x``'s dtype."""
    x = _check_data(x, "x")
    points = _check_data(points, "points")
    if points.shape[1:] != x.shape[1:]:
        raise ValueError(f"points: expected feature shape {tuple(x.shape[1:])}, got {tuple(points.shape[1:])}")
    if points.shape[0] == 0:
        raise ValueError("points: expected at least one point")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk: expected a positive int number of points per block or None, got {chunk!r}")
    B = x.shape[0]
    d = x[0].numel()
    t = _poisson_times(t, B, x.device)
    xf = x.reshape(B, -1).to(_F64)
    pf = points.reshape(points.shape[0], -1).to(device=x.device, dtype=_F64)
    if weights is None:
        lw = torch.zeros(pf.shape[0], dtype=_F64, device=x.device)
    else:
        w = weights.to(device=x.device, dtype=_F64) if isinstance(weights, torch.Tensor) else \
            torch.as_tensor(weights, dtype=_F64, device=x.device)
        if w.shape != (pf.shape[0],) or not bool(((w > 0) & (w < math.inf)).all()):
            raise ValueError(f"weights: expected {pf.shape[0]} finite positive weights")
        lw = torch.log(w)
    t2 = (t * t)[:, None]
    mean, _ = softmax_mean(xf, pf, lw, lambda r2: -0.5 * (d + 1) * torch.log(t2 + r2), chunk=chunk)
    return ((xf - mean) / t[:, None]).reshape(x.shape).to(x.dtype)


def poisson_minibatch_target(x_t: torch.Tensor, t, x0_batch: torch.Tensor) -> torch.Tensor:
    """The self-normalized minibatch target of Poisson-flow training (Xu et al. 2022):
    ``v̂(x_t) = Σ_j w_j (x_t − x0_j)/t``, ``w_j ∝ (t² + ‖x_t − x0_j‖²)^{−(d+1)/2}`` over the batch's data
    points — :func:`poisson_field` with the batch as the dataset (equal to the exact field when the batch
    is the whole dataset)."""
    return poisson_field(x_t, t, x0_batch)


def poisson_prior_sample(shape, T: float, generator: Optional[torch.Generator] = None, device=None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Start of Poisson-flow sampling at ``t = T``: ``T·z`` with ``z = g/|h|`` (the kernel centred at 0;
    it approximates ``p_T`` up to a relative O(data radius/T))."""
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not (0 < T < math.inf):
        raise ValueError(f"T: expected a finite positive number, got {T!r}")
    try:
        shape = tuple(int(d.__index__()) for d in shape)
    except (TypeError, AttributeError):
        raise TypeError(f"shape: expected a sequence of ints (B, *S), got {shape!r}") from None
    if len(shape) < 2 or min(shape) < 0:
        raise ValueError(f"shape: expected (B, *S) of non-negative sizes with at least one feature dimension, "
                         f"got {shape}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    device = as_device(device, default=None)
    if device is None and generator is not None:
        device = generator.device
    return float(T) * _poisson_z(shape, generator, device, dtype)
