"""Noise schedules: affine paths ``x_t = α(t)·x0 + σ(t)·ε`` (book Ch. 4, Table 4.1; Table 5.2).

λ is the **half** log-SNR everywhere in the library: ``λ(t) = log(α(t)/σ(t))``. Every schedule gives,
vectorized over ``t`` (diffusion time, ``t = 0`` data):

``alpha, sigma, dalpha, dsigma`` (d/dt), ``lam, dlam``, the forward-SDE coefficients ``f = α'/α`` and
``g2 = (σ²)' − 2fσ² = −2σ²λ'`` (Lemma 4.4.1), and the inverse ``t_of_lam``.

Two implementations of the same formulas: the compiled float64 core (``csrc/core/schedule_math.h``,
used for CPU tensors that need no gradient, e.g. when a solver plan computes its coefficients) and the
eager-torch reference below (any device, differentiable, traceable). Tests hold them equal.

Times outside a schedule's valid range, and λ outside its reachable range, raise ``ValueError``. The
check reads the values on the host, so it runs for CPU tensors and is skipped for CUDA tensors (it
would synchronize); pass ``check=True`` to force it.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Sequence

import torch

from . import _ops

__all__ = [
    "Schedule", "ScheduleValues", "VPLinear", "VPCosine", "VPDiscrete", "SubVP", "VE", "EDM",
    "RectifiedFlow", "OTSigmaMin", "Trig", "get",
]


class ScheduleValues(NamedTuple):
    """All scalar functions of a schedule at the same times (each a tensor shaped like ``t``)."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    dalpha: torch.Tensor
    dsigma: torch.Tensor
    lam: torch.Tensor
    dlam: torch.Tensor
    f: torch.Tensor
    g2: torch.Tensor


def _as_time(t, name: str = "t") -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        if t.is_complex():  # a cast would drop the imaginary part with only a warning
            raise TypeError(f"{name}: expected real times, got a {t.dtype} tensor")
        if not t.is_floating_point():
            return t.to(torch.float64)
        return t
    try:
        if hasattr(t, "__array__") and not isinstance(t, torch.Tensor):
            import numpy as np  # noqa: PLC0415  (NumPy views with negative strides: torch cannot wrap them)
            t = np.ascontiguousarray(t)
        return torch.as_tensor(t, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected a float, a sequence of floats or a tensor, got {type(t).__name__}") from e


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) to full precision (torch's softplus switches to x above 20, a 2e-9 error)."""
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


class Schedule:
    """Base class of the affine noise schedules.

    Subclasses implement :meth:`_eval_ref` (all eight quantities in torch) and, where a closed form
    exists, :meth:`_inv_ref`; otherwise the inverse is a guarded bisection on the monotone λ (to
    ≤ 1e-12 relative in float64). Built-in families also carry a compiled-core id (``_cid``) and
    parameters so that CPU evaluation runs in the float64 C++ core.

    Attributes:
        kind: ``"vp"`` (α² + σ² = 1), ``"ve"`` (α ≡ 1) or ``"general"``.
        t_min, t_max: the closed range of valid times.
        t_start, t_end: default sampling range (``t_start`` noisy end, ``t_end`` clean end).
        spacing: default grid spacing for :func:`diffcore.timesteps`.
        final_zero: whether default grids append a last step to σ = 0 (λ = +∞).
        prediction: what a model of this family predicts unless told otherwise (``prediction=None``
            in :func:`diffcore.sample` and :func:`diffcore.log_likelihood`): ``"velocity"`` on the
            flow-matching paths (Lipman et al. 2023; Liu et al. 2023), whose models are trained on the
            velocity target (book §6.3.3), ``"eps"`` on the diffusion schedules (Ho et al. 2020).
    """

    name = "schedule"
    kind = "general"
    prediction: str = "eps"
    t_min: float = 0.0
    t_max: float = 1.0
    t_start: float = 1.0
    t_end: float = 1e-3
    spacing: str = "uniform_lambda"
    final_zero: bool = False
    _cid: Optional[int] = None  # compiled-core family id; None: torch reference only

    # ---- hooks for subclasses -------------------------------------------------------------------
    def _eval_ref(self, t: torch.Tensor) -> tuple:
        raise NotImplementedError

    def _inv_ref(self, lam: torch.Tensor) -> torch.Tensor:
        return self._inv_bisect(lam)

    def _core_params(self) -> Sequence[float]:
        return ()

    def _core_table(self) -> Optional[torch.Tensor]:
        return None

    # ---- public API -----------------------------------------------------------------------------
    def eval(self, t, check: Optional[bool] = None) -> ScheduleValues:
        """All quantities at ``t`` (float, sequence or tensor; result dtype follows a float tensor's,
        float64 otherwise)."""
        t = _as_time(t)
        self._check_t(t, check)
        if t.dtype in _LOW_PRECISION:  # evaluated in float32, then rounded once (bf16 B(t) alone is off by ~1%)
            return ScheduleValues(*(v.to(t.dtype) for v in self.eval(t.float(), check=False)))
        if self._use_core(t):
            vals = _ops.schedule_eval(self._cid, self._core_params(), self._core_table(), t)
            return ScheduleValues(*vals)
        return ScheduleValues(*self._eval_ref(t))

    def alpha(self, t, check=None) -> torch.Tensor:
        return self.eval(t, check).alpha

    def sigma(self, t, check=None) -> torch.Tensor:
        return self.eval(t, check).sigma

    def dalpha(self, t, check=None) -> torch.Tensor:
        return self.eval(t, check).dalpha

    def dsigma(self, t, check=None) -> torch.Tensor:
        return self.eval(t, check).dsigma

    def lam(self, t, check=None) -> torch.Tensor:
        """Half log-SNR λ = log(α/σ)."""
        return self.eval(t, check).lam

    def dlam(self, t, check=None) -> torch.Tensor:
        return self.eval(t, check).dlam

    def f(self, t, check=None) -> torch.Tensor:
        """Drift coefficient of the forward SDE dx = f x dt + g dw: f = α'/α (Lemma 4.4.1)."""
        return self.eval(t, check).f

    def g2(self, t, check=None) -> torch.Tensor:
        """Squared diffusion coefficient g² = (σ²)' − 2fσ² = −2σ²λ' (Lemma 4.4.1, eq. 4.4.2)."""
        return self.eval(t, check).g2

    def snr(self, t, check=None) -> torch.Tensor:
        return torch.exp(2 * self.lam(t, check))

    def t_of_lam(self, lam, check: Optional[bool] = None) -> torch.Tensor:
        """Inverse of λ(t): the time at which the half log-SNR equals ``lam``."""
        lam = _as_time(lam, "lam")
        self._check_lam(lam, check)
        if lam.dtype in _LOW_PRECISION:
            return self.t_of_lam(lam.float(), check=False).to(lam.dtype)
        if self._use_core(lam):
            return _ops.schedule_inverse(self._cid, self._core_params(), self._core_table(), lam)
        return self._inv_ref(lam)

    def lam_range(self) -> tuple:
        """(λ(t_max), λ(t_min)): the reachable half log-SNR range (may include ±inf)."""
        ends = self._eval_ref(torch.tensor([self.t_max, self.t_min], dtype=torch.float64))[4]
        return float(ends[0]), float(ends[1])

    def prior_std(self, t=None) -> float:
        """Standard deviation of the Gaussian the sampler starts from at ``t`` (default ``t_start``):
        σ(t), exact when α(t) = 0 and the usual approximation otherwise."""
        t = self.t_start if t is None else t
        if isinstance(t, torch.Tensor) and t.numel() == 1:
            t = t.item()
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t):
            raise ValueError(f"t: expected a finite time in [{self.t_min}, {self.t_max}] for {self!r}, got {t!r}")
        return float(self.sigma(torch.tensor([float(t)], dtype=torch.float64))[0])

    # ---- internals ------------------------------------------------------------------------------
    def _use_core(self, t: torch.Tensor) -> bool:
        return (
            self._cid is not None
            and t.device.type == "cpu"
            and t.dtype in (torch.float64, torch.float32)
            and _ops.fast_path_ok(t)
        )

    def _check_t(self, t: torch.Tensor, check: Optional[bool]) -> None:
        if check is False or (check is None and t.device.type != "cpu") or t.numel() == 0:
            return
        if _ops.in_transform():  # values inside torch.func transforms cannot be read on the host
            return
        t = t.detach()
        bad = torch.isnan(t) | (t < self.t_min) | (t > self.t_max)
        if bool(bad.any()):
            raise ValueError(
                f"t: expected times in [{self.t_min}, {self.t_max}] for {self!r}, got values in "
                f"[{float(t.min())}, {float(t.max())}]" + (" (with NaN)" if bool(torch.isnan(t).any()) else "")
            )

    def _check_lam(self, lam: torch.Tensor, check: Optional[bool]) -> None:
        if check is False or (check is None and lam.device.type != "cpu") or lam.numel() == 0:
            return
        if _ops.in_transform():
            return
        lo, hi = self.lam_range()
        lam = lam.detach()
        bad = torch.isnan(lam) | (lam < lo) | (lam > hi)
        if bool(bad.any()):
            raise ValueError(
                f"lam: expected half log-SNR values in [{lo}, {hi}] (reachable for t in "
                f"[{self.t_min}, {self.t_max}]) for {self!r}, got values in [{float(lam.min())}, {float(lam.max())}]"
            )

    def _inv_bisect(self, lam: torch.Tensor) -> torch.Tensor:
        """Guarded monotone solve of λ(t) = lam on [t_min, t_max] (λ strictly decreasing)."""
        if not (math.isfinite(self.t_min) and math.isfinite(self.t_max)):
            raise ValueError(f"{self!r}: the generic inverse needs a finite valid range")
        work = lam.detach().to(torch.float64)
        lam_lo, lam_hi = self.lam_range()  # λ(t_max), λ(t_min): the ends map to t_max, t_min exactly
        lo = torch.where(work <= lam_lo, self.t_max, torch.full_like(work, self.t_min))
        hi = torch.where(work >= lam_hi, self.t_min, torch.full_like(work, self.t_max))
        for _ in range(200):  # bracket halves each pass; 200 passes reach the float64 spacing
            mid = 0.5 * (lo + hi)
            above = self._eval_ref(mid)[4] > work  # λ(mid) > target ⇒ the root lies right of mid
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
            if bool(((hi - lo) <= 1e-15 * torch.clamp(hi.abs(), min=1e-300)).all()):
                break
        return (0.5 * (lo + hi)).to(lam.dtype)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._repr_params().items())
        return f"{type(self).__name__}({params})"

    def _repr_params(self) -> dict:
        return {}


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _real(v, name: str) -> float:
    """A finite real parameter (NaN or inf would make every value of the schedule NaN or inf)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


def _t_end(v, lo: float = 0.0, hi: float = 1.0) -> float:
    v = _real(v, "t_end")
    _require(lo < v < hi, f"t_end: expected a default clean end time in ({lo}, {hi}), got {v}")
    return v


class _LinearBeta(Schedule):
    """Shared pieces of the schedules driven by a linear β(t) = β_min + (β_max − β_min)t and its
    integral B(t) = β_min t + ½(β_max − β_min)t² (α = e^{−B/2} for both VP and sub-VP)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_end: float = 1e-3):
        beta_min, beta_max = _real(beta_min, "beta_min"), _real(beta_max, "beta_max")
        _require(beta_min >= 0 and beta_max >= beta_min and beta_max > 0,
                 f"beta_min, beta_max: expected 0 <= beta_min <= beta_max, beta_max > 0, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_end = _t_end(t_end)

    def _core_params(self):
        return (self.beta_min, self.beta_max)

    def _repr_params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def _beta_B(self, t):
        db = self.beta_max - self.beta_min
        return self.beta_min + db * t, self.beta_min * t + 0.5 * db * t * t

    def _t_of_B(self, B):
        """Inverse of B(t) in the cancellation-free form 2B/(β_min + √(β_min² + 2ΔβB)) (also Δβ = 0)."""
        db = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min ** 2 + 2 * db * B))


class VPLinear(_LinearBeta):
    """Variance-preserving SDE with linear β(t) = β_min + (β_max − β_min)t (continuous DDPM;
    book §4.3.2, Table 4.1). α = e^{−B/2}, σ = √(1 − e^{−B}), B(t) = ∫₀ᵗβ."""

    name = "vp_linear"
    kind = "vp"
    _cid = int(_ops.ScheduleFamily.vp_linear)

    def _eval_ref(self, t):
        beta, B = self._beta_B(t)
        alpha = torch.exp(-0.5 * B)
        sig2 = -torch.expm1(-B)
        sigma = torch.sqrt(sig2)
        return (alpha, sigma, -0.5 * beta * alpha, 0.5 * beta * alpha * alpha / sigma,
                -0.5 * torch.log(torch.expm1(B)), -beta / (2 * sig2), -0.5 * beta, beta)

    def _inv_ref(self, lam):
        return self._t_of_B(_softplus(-2 * lam))


class SubVP(_LinearBeta):
    """sub-VP SDE (Song et al. 2021, score SDE): α = e^{−B/2}, σ = 1 − e^{−B} (σ, not σ²),
    g² = β(1 − e^{−2B}), with the linear β of :class:`VPLinear`."""

    name = "subvp"
    kind = "general"
    _cid = int(_ops.ScheduleFamily.subvp)

    def _eval_ref(self, t):
        beta, B = self._beta_B(t)
        alpha = torch.exp(-0.5 * B)
        sigma = -torch.expm1(-B)
        dsigma = beta * alpha * alpha
        return (alpha, sigma, -0.5 * beta * alpha, dsigma, -0.5 * B - torch.log(sigma),
                -0.5 * beta - dsigma / sigma, -0.5 * beta, beta * -torch.expm1(-2 * B))

    def _inv_ref(self, lam):
        # α solves e^λ α² + α − e^λ = 0; B = −2 log α written without cancellation near α = 1.
        u = torch.exp(-lam)
        return self._t_of_B(2 * torch.log1p(0.5 * (u + u * u / (torch.sqrt(u * u + 4) + 2))))


class VPCosine(Schedule):
    """Cosine VP schedule (Nichol & Dhariwal 2021, Eq. (17)):
    α(t) = cos(θ(t))/cos(θ(0)), θ(t) = (π/2)(t + s)/(1 + s), σ = √(1 − α²). α(1) = 0 exactly
    (λ = −∞), so the default sampling start is t = 0.9946 as in DPM-Solver."""

    name = "vp_cosine"
    kind = "vp"
    t_start = 0.9946
    _cid = int(_ops.ScheduleFamily.vp_cosine)

    def __init__(self, s: float = 0.008, t_end: float = 1e-3):
        s = _real(s, "s")
        _require(s >= 0, f"s: expected s >= 0, got {s}")
        self.s = float(s)
        self.t_end = _t_end(t_end)

    def _core_params(self):
        return (self.s,)

    def _repr_params(self):
        return {"s": self.s}

    def _eval_ref(self, t):
        s = self.s
        k = math.pi / (2 * (1 + s))
        c0 = math.cos(k * s)
        cos_th = torch.sin(k * (1 - t))  # cos θ(t), exactly 0 at t = 1
        sin_th = torch.sin(k * (t + s))
        alpha = cos_th / c0
        one_minus = 2 * torch.sin(0.5 * k * (t + 2 * s)) * torch.sin(0.5 * k * t) / c0  # 1 − α, no cancellation
        sig2 = one_minus * (1 + alpha)
        sigma = torch.sqrt(sig2)
        dalpha = -k * sin_th / c0
        f = -k * sin_th / cos_th
        return (alpha, sigma, dalpha, -alpha * dalpha / sigma, torch.log(alpha) - 0.5 * torch.log(sig2),
                f / sig2, f, -2 * f)

    def _inv_ref(self, lam):
        s = self.s
        k = math.pi / (2 * (1 + s))
        s0, c0 = math.sin(k * s), math.cos(k * s)
        alpha = torch.sqrt(torch.sigmoid(2 * lam))
        sig2 = torch.sigmoid(-2 * lam)
        # cos θ = c0·α, sin θ = R; θ − θ0 from its sine and cosine, without the cancellation of θ − θ0
        # near t = 0: sin(θ − θ0) = c0(R − s0·α) = c0·σ²/(R + s0·α)
        R = torch.sqrt(s0 * s0 + c0 * c0 * sig2)
        return torch.atan2(c0 * sig2 / (R + s0 * alpha), c0 * c0 * alpha + s0 * R) / k


class VPDiscrete(Schedule):
    """Discrete-time VP schedule from ``betas`` or ``alphas_cumprod`` (DDPM checkpoints), made
    continuous as in DPM-Solver (Lu et al. 2022): training index n = 0…N−1 sits at t = (n + 1)/N and
    log α(t) is piecewise linear in t between the knots, with the extra knot α(0) = 1 so a grid can end
    at σ = 0. :meth:`t_to_index` / :meth:`index_to_t` map continuous time to the integer timestep a
    discrete-time network expects (``index = N·t − 1``)."""

    name = "vp_discrete"
    kind = "vp"
    spacing = "uniform_t"
    _cid = int(_ops.ScheduleFamily.vp_discrete)

    def __init__(self, betas=None, alphas_cumprod=None):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("betas, alphas_cumprod: give exactly one of them")
        if betas is not None:
            b = torch.as_tensor(betas, dtype=torch.float64).flatten()
            _require(b.numel() >= 1 and bool(((b > 0) & (b < 1)).all()), "betas: expected values in (0, 1)")
            acp = torch.cumprod(1 - b, 0)
        else:
            acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            _require(acp.numel() >= 1 and bool(((acp > 0) & (acp < 1)).all()),
                     "alphas_cumprod: expected values in (0, 1)")
        _require(acp.numel() == 1 or bool((acp[1:] < acp[:-1]).all()),
                 "alphas_cumprod: expected a strictly decreasing sequence (betas > 0)")
        self.alphas_cumprod = acp
        self.num_train_timesteps = int(acp.numel())
        # knots t_j = j/N, j = 0..N; log α at the knots (0 at t = 0)
        self._log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(acp)])
        N = self.num_train_timesteps
        self.t_end = 1.0 / N

    def _core_params(self):
        return (float(self.num_train_timesteps),)

    def _core_table(self):
        return self._log_alpha

    def _repr_params(self):
        return {"num_train_timesteps": self.num_train_timesteps}

    def t_to_index(self, t) -> torch.Tensor:
        """Continuous time → (fractional) training index n = N·t − 1."""
        return _as_time(t) * self.num_train_timesteps - 1

    def index_to_t(self, n) -> torch.Tensor:
        """Training index (int or float) → continuous time t = (n + 1)/N."""
        return (_as_time(n) + 1) / self.num_train_timesteps

    def _eval_ref(self, t):
        N = self.num_train_timesteps
        la_knots = self._log_alpha.to(t.device, torch.float64 if t.dtype == torch.float64 else t.dtype)
        j = torch.clamp(torch.floor(t.detach() * N), 0, N - 1).long()
        la0 = la_knots[j]
        d = la_knots[j + 1] - la0
        la = la0 + (t * N - j) * d
        dla = N * d
        alpha = torch.exp(la)
        sig2 = 0.0 - torch.expm1(2 * la)  # 0.0 - (-0.0) is +0: σ(0) = +0, λ'(0) = −inf
        sigma = torch.sqrt(sig2)
        dalpha = alpha * dla
        return (alpha, sigma, dalpha, -alpha * dalpha / sigma, la - 0.5 * torch.log(sig2), dla / sig2,
                dla, -2 * dla)

    def _inv_ref(self, lam):
        N = self.num_train_timesteps
        la = -0.5 * _softplus(-2 * lam)
        neg = -self._log_alpha.to(lam.device, lam.dtype)  # increasing in j
        j = torch.clamp(torch.searchsorted(neg, -la.detach().contiguous(), right=True) - 1, 0, N - 1)
        frac = (neg[j] - (-la)) / (neg[j] - neg[j + 1])
        return (j + frac) / N


class VE(Schedule):
    """Variance-exploding SDE with geometric σ(t) = σ_min (σ_max/σ_min)^t (NCSN;
    book §4.3.1, Table 4.1). By default the kernel std is σ(t) itself (the library convention; it amounts to
    starting from data convolved with N(0, σ_min²)); ``exact=True`` uses √(σ(t)² − σ_min²), the exact
    kernel of the SDE started at t = 0, which reaches σ = 0."""

    name = "ve"
    kind = "ve"
    t_end = 0.0
    _cid = int(_ops.ScheduleFamily.ve)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, exact: bool = False):
        sigma_min, sigma_max = _real(sigma_min, "sigma_min"), _real(sigma_max, "sigma_max")
        if exact not in (True, False):
            raise TypeError(f"exact: expected a bool, got {exact!r}")
        _require(0 < sigma_min < sigma_max, f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, "
                                            f"got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.exact = float(sigma_min), float(sigma_max), bool(exact)
        if self.exact:  # start of the default range where σ_t = σ_min
            self.t_end = 0.5 * math.log(2.0) / math.log(self.sigma_max / self.sigma_min)

    def _core_params(self):
        return (self.sigma_min, self.sigma_max, 1.0 if self.exact else 0.0)

    def _repr_params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "exact": self.exact}

    def _eval_ref(self, t):
        L = math.log(self.sigma_max / self.sigma_min)
        zero = torch.zeros_like(t)
        st = self.sigma_min * torch.exp(t * L)
        if not self.exact:
            return (zero + 1, st, zero, st * L, -math.log(self.sigma_min) - t * L, zero - L, zero,
                    2 * st * st * L)
        sigma = self.sigma_min * torch.sqrt(torch.expm1(2 * t * L))
        dsigma = st * st * L / sigma
        return (zero + 1, sigma, zero, dsigma, -torch.log(sigma), -dsigma / sigma, zero, 2 * st * st * L)

    def _inv_ref(self, lam):
        L = math.log(self.sigma_max / self.sigma_min)
        if not self.exact:
            return (-lam - math.log(self.sigma_min)) / L
        return 0.5 * torch.log1p(torch.exp(-2 * lam) / self.sigma_min ** 2) / L


class EDM(Schedule):
    """EDM / Karras schedule (Karras et al. 2022; book App. D.6): α = 1, σ = t, t ∈ [0, ∞). The default
    sampling range is [σ_min, σ_max] = [0.002, 80] on a Karras ρ = 7 grid with a final step to σ = 0."""

    name = "edm"
    kind = "ve"
    t_max = math.inf
    spacing = "karras"
    final_zero = True
    _cid = int(_ops.ScheduleFamily.edm)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        sigma_min, sigma_max = _real(sigma_min, "sigma_min"), _real(sigma_max, "sigma_max")
        _require(0 < sigma_min < sigma_max, f"sigma_min, sigma_max: expected 0 < sigma_min < sigma_max, "
                                            f"got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_start, self.t_end = self.sigma_max, self.sigma_min

    def _repr_params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def _eval_ref(self, t):
        zero = torch.zeros_like(t)
        return (zero + 1, t, zero, zero + 1, -torch.log(t), -1 / t, zero, 2 * t)

    def _inv_ref(self, lam):
        return torch.exp(-lam)


class RectifiedFlow(Schedule):
    """Rectified-flow / linear path α = 1 − u, σ = u (book Table 5.2, §6.3.3), with the
    SD3/Flux time shift (Esser et al. 2024, SD3): u(t) = s·t/(1 + (s − 1)t), i.e. λ_s(t) = λ(t) − log s.
    ``t`` is the unshifted time; with ``shift = 1`` u = t. σ = u is what SD3/Flux models receive as
    their timestep (×1000): use the model wrapper's ``time_convention="sigma"`` (or a scale)."""

    name = "rectified_flow"
    prediction = "velocity"
    kind = "general"
    t_end = 0.0
    spacing = "uniform_t"
    _cid = int(_ops.ScheduleFamily.rectified_flow)

    def __init__(self, shift: float = 1.0):
        shift = _real(shift, "shift")
        _require(shift > 0, f"shift: expected shift > 0, got {shift}")
        self.shift = float(shift)

    def _core_params(self):
        return (self.shift,)

    def _repr_params(self):
        return {"shift": self.shift}

    def _eval_ref(self, t):
        s = self.shift
        den = 1 + (s - 1) * t
        u = s * t / den
        du = s / (den * den)
        one_minus_t = 1 - t
        return ((one_minus_t) / den, u, -du, du, torch.log1p(-t) - torch.log(s * t),
                -1 / (t * one_minus_t), -s / (one_minus_t * den), 2 * s * s * t / (den * den * one_minus_t))

    def _inv_ref(self, lam):
        return torch.sigmoid(-lam - math.log(self.shift))


class OTSigmaMin(Schedule):
    """Optimal-transport conditional path with a minimal noise level σ_min (Lipman et al. 2023,
    Eq. (20)): α = 1 − t, σ = σ_min + (1 − σ_min)·t, t ∈ [0, 1].

    In flow-matching time τ = 1 − t this is ``x_τ = τ·y1 + (1 − (1 − σ_min)τ)·y0`` with velocity target
    ``y1 − (1 − σ_min)·y0`` (diffusion time: ``(1 − σ_min)·ε − x0``). At t = 0 the data are smoothed by
    N(0, σ_min²); ``σ_min = 0`` is :class:`RectifiedFlow`. Derived quantities: α' = −1, σ' = 1 − σ_min,
    λ' = −1/((1 − t)σ), f = −1/(1 − t), g² = 2σ/(1 − t), t(λ) = (1 − σ_min e^λ)/(1 + (1 − σ_min)e^λ).
    Torch reference only (no compiled-core id).
    """

    name = "ot_sigma_min"
    prediction = "velocity"
    kind = "general"
    t_end = 0.0
    spacing = "uniform_t"

    def __init__(self, sigma_min: float = 1e-4):
        sigma_min = _real(sigma_min, "sigma_min")
        _require(isinstance(sigma_min, (int, float)) and 0 < sigma_min < 1,
                 f"sigma_min: expected 0 < sigma_min < 1, got {sigma_min!r}")
        self.sigma_min = float(sigma_min)

    def _repr_params(self):
        return {"sigma_min": self.sigma_min}

    def _eval_ref(self, t):
        sm = self.sigma_min
        zero = torch.zeros_like(t)
        one_minus_t = 1 - t
        sigma = sm + (1 - sm) * t
        return (one_minus_t, sigma, zero - 1, zero + (1 - sm), torch.log1p(-t) - torch.log(sigma),
                -1 / (one_minus_t * sigma), -1 / one_minus_t, 2 * sigma / one_minus_t)

    def _inv_ref(self, lam):
        # (1 − σ_min e^λ)/(1 + (1 − σ_min)e^λ), written with e^{−λ} for large λ so that nothing overflows
        sm = self.sigma_min
        e = torch.exp(-torch.abs(lam))
        pos = (e - sm) / (e + (1 - sm))  # λ ≥ 0: divide through by e^λ
        neg = (1 - sm * e) / (1 + (1 - sm) * e)  # λ < 0: e = e^λ
        return torch.where(lam >= 0, pos, neg)


class Trig(Schedule):
    """Trigonometric path α = cos(πt/2), σ = σ_d·sin(πt/2) (book Table 5.2 for σ_d = 1), t ∈ [0, 1].

    This is sCM's TrigFlow path ``x_s = cos(s)·x0 + sin(s)·z, z ~ N(0, σ_d² I)`` (Lu & Song 2025; book §11.3.3)
    under the time map s = πt/2: :meth:`to_trigflow_time` and :meth:`from_trigflow_time`. Defaults
    sample from σ/α = 80 down to 0.002 uniformly in λ, then step to σ = 0.
    """

    name = "trig"
    prediction = "velocity"
    final_zero = True
    _cid = int(_ops.ScheduleFamily.trig)

    def __init__(self, sigma_data: float = 1.0):
        sigma_data = _real(sigma_data, "sigma_data")
        _require(sigma_data > 0, f"sigma_data: expected sigma_data > 0, got {sigma_data}")
        self.sigma_data = float(sigma_data)
        self.kind = "vp" if self.sigma_data == 1.0 else "general"
        self.t_start = 2 / math.pi * math.atan(80.0 / self.sigma_data)
        self.t_end = 2 / math.pi * math.atan(0.002 / self.sigma_data)

    def _core_params(self):
        return (self.sigma_data,)

    def _repr_params(self):
        return {"sigma_data": self.sigma_data}

    @staticmethod
    def to_trigflow_time(t):
        """Library time t ∈ [0, 1] → TrigFlow time s = πt/2 ∈ [0, π/2]."""
        return _as_time(t) * (math.pi / 2)

    @staticmethod
    def from_trigflow_time(s):
        """TrigFlow time s ∈ [0, π/2] → library time t = 2s/π."""
        return _as_time(s, "s") * (2 / math.pi)

    def _eval_ref(self, t):
        h = math.pi / 2
        sd = self.sigma_data
        c = torch.sin(h * (1 - t))  # cos(πt/2), exactly 0 at t = 1
        s = torch.sin(h * t)
        return (c, sd * s, -h * s, sd * h * c, torch.log(c) - torch.log(sd * s), -h / (s * c), -h * s / c,
                math.pi * sd * sd * s / c)

    def _inv_ref(self, lam):
        return (2 / math.pi) * torch.atan2(torch.ones_like(lam), self.sigma_data * torch.exp(lam))


_FAMILIES = {
    "vp_linear": VPLinear, "vp": VPLinear, "linear": VPLinear,
    "vp_cosine": VPCosine, "cosine": VPCosine,
    "vp_discrete": VPDiscrete, "discrete": VPDiscrete,
    "subvp": SubVP, "sub_vp": SubVP,
    "ve": VE,
    "edm": EDM, "karras": EDM,
    "rectified_flow": RectifiedFlow, "rf": RectifiedFlow, "flow": RectifiedFlow,
    "ot_sigma_min": OTSigmaMin, "ot_path": OTSigmaMin,
    "trig": Trig, "trigflow": Trig,
}


def get(name, **params) -> Schedule:
    """A schedule by name (``"vp_linear"``, ``"vp_cosine"``, ``"vp_discrete"``, ``"subvp"``, ``"ve"``,
    ``"edm"``, ``"rectified_flow"``, ``"ot_sigma_min"``, ``"trig"`` and aliases); a Schedule passes through."""
    if isinstance(name, Schedule):
        if params:
            raise ValueError("params: cannot be given with a Schedule instance")
        return name
    try:
        cls = _FAMILIES[str(name).lower()]
    except KeyError:
        raise ValueError(f"schedule: unknown name {name!r}; expected one of {sorted(set(_FAMILIES))}") from None
    try:
        return cls(**params)
    except TypeError as e:
        if "argument" not in str(e):  # a check of ours, already naming its argument
            raise
        raise TypeError(f"params: the {cls.__name__} schedule does not take {sorted(params)} ({e})") from None
