"""Exact oracles for Gaussian and Gaussian-mixture data: the marginal densities, scores and
denoisers ``E[x0 | x_t]`` (book Eq. (6.2.2)) of ``x_t = α x0 + σ ε`` in closed form.

For data ``x0 ~ Σ_k π_k N(μ_k, Σ_k)`` and any affine schedule ``x_t = α_t x0 + σ_t ε`` every quantity
a diffusion model is trained to predict has a closed form, so these classes stand in for a perfectly
trained network in tests of solvers, parameterizations and losses:

* marginal ``p_t = Σ_k π_k N(α μ_k, S_k)``, ``S_k = α²Σ_k + σ²I`` (:meth:`~GaussianMixture.marginal_log_prob`,
  :meth:`~GaussianMixture.sample_marginal`);
* responsibilities ``r_k = softmax_k(log π_k + log N(x; αμ_k, S_k))`` (log-sum-exp, never raw densities);
* score ``s* = −Σ r_k S_k⁻¹(x − αμ_k)``, denoiser ``x0* = Σ r_k (μ_k + αΣ_k S_k⁻¹(x − αμ_k))``,
  noise ``ε* = −σ s*``, velocity ``v* = α' x0* + σ' ε*`` (the probability-flow ODE field
  ``dx/dt = f x − ½ g² s*``) and its divergence (closed form, :meth:`~GaussianMixture.divergence`);
* for one Gaussian (:class:`Gaussian`) the PF-ODE flow map ``Φ_{s→t}(x) = α_t μ + S_t^{1/2} S_s^{−1/2}(x − α_s μ)``
  and the entropy of ``p_t``.

:func:`reference_ode` integrates the probability-flow ODE of any oracle to ~1e-12 with SciPy's DOP853.

Conventions: diffusion time ``t`` (``t = 0`` data), the library's schedules (:mod:`diffcore.schedules`,
or a schedule name), ``x`` of shape ``(B, D)`` and ``t`` a float or a ``(B,)`` tensor of per-sample
times. Everything is computed in float64 (inputs are converted) on ``x``'s device; the methods are
differentiable in ``x`` and in ``t`` (a ``t`` that requires grad makes the schedule use its torch
reference path).

Implementation note. Each covariance is stored through its eigendecomposition ``Σ_k = U_k diag(κ_k) U_kᵀ``
(``U_k = I`` for diagonal and isotropic covariances). ``S_k = U_k diag(α²κ_k + σ²) U_kᵀ`` shares the
eigenvectors, so for every ``t`` the solves, log-determinants and square roots are elementwise in the
rotated coordinates: one ``eigh`` per component at construction replaces a Cholesky factorization of
``S_k`` per time, costs ``O(BKD²)`` per call (``O(BKD)`` without rotations) and stays exact at the ends
``σ = 0`` (``S_k = α²Σ_k``, full rank) and ``α = 0`` (``S_k = σ²I``).
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Optional

import torch

from . import schedules as _schedules
from ._device import as_device
from ._softmax import softmax_mean, softmax_weights
from .param import _ab, canonical_prediction, edm_precond_coefs

__all__ = ["GaussianMixture", "Gaussian", "EmpiricalData", "reference_ode", "toy_2d_mixture", "toy_1d_mixture"]

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)



# ---- input helpers ------------------------------------------------------------------------------
def _tensor(a, name: str, device=None) -> torch.Tensor:
    """float64 tensor from a tensor / array / number / sequence; TypeError naming ``name`` otherwise."""
    if isinstance(a, torch.Tensor):
        if a.is_complex() or a.dtype == torch.bool:
            raise TypeError(f"{name}: expected a real tensor, got dtype {a.dtype}")
        return a.to(dtype=_F64, device=device if device is not None else a.device)
    if isinstance(a, (str, bytes)) or a is None:
        raise TypeError(f"{name}: expected a number, a sequence of numbers or a tensor, got {type(a).__name__}")
    try:
        return torch.as_tensor(a, dtype=_F64, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected a number, a sequence of numbers or a tensor, "
                        f"got {type(a).__name__}") from e


def _finite(a: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(a.detach()).all()):
        raise ValueError(f"{name}: expected finite values")


def _schedule(schedule) -> _schedules.Schedule:
    if isinstance(schedule, _schedules.Schedule):
        return schedule
    if isinstance(schedule, str):
        return _schedules.get(schedule)
    raise TypeError(f"schedule: expected a diffcore Schedule or a schedule name, got {type(schedule).__name__}")


def _sigma_dsigma(v) -> torch.Tensor:
    """σσ' = ½(σ²)', finite at σ = 0 even where σ' is not (VP schedules have σ ~ √t at t = 0): where the
    product σ·σ' is not finite it is taken from the SDE identity (σ²)' = g² + 2fσ²."""
    ssd = v.sigma * v.dsigma
    return torch.where(torch.isfinite(ssd), ssd, 0.5 * v.g2 + v.f * v.sigma * v.sigma)


def _as_count(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name}: expected a non-negative int, got {type(n).__name__}")
    n = int(n)
    if n < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {n}")
    return n


def _generator_device(generator) -> torch.device:
    if generator is None:
        return torch.device("cpu")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return generator.device


def _tolerance(v, name: str) -> float:
    # NaN tolerances make SciPy's step control loop forever; ≤ 0 or inf are no tolerance at all
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < math.inf:
        raise ValueError(f"{name}: expected a finite positive tolerance, got {v!r}")
    return float(v)


class _Params:
    """The mixture's parameters on one device (float64)."""

    __slots__ = ("log_w", "w", "mu", "kappa", "U", "mu_r")

    def __init__(self, log_w, w, mu, kappa, U):
        self.log_w, self.w, self.mu, self.kappa, self.U = log_w, w, mu, kappa, U
        # means in each component's eigenbasis: U_kᵀ μ_k
        self.mu_r = mu if U is None else torch.einsum("kde,kd->ke", U, mu)

    def to(self, device) -> "_Params":
        mv = lambda a: None if a is None else a.to(device)  # noqa: E731
        return _Params(mv(self.log_w), mv(self.w), mv(self.mu), mv(self.kappa), mv(self.U))


# ---- the mixture ---------------------------------------------------------------------------------
class GaussianMixture:
    """Gaussian-mixture data ``Σ_k π_k N(μ_k, Σ_k)`` in ``D`` dimensions with exact diffusion oracles.

    Args:
        weights: ``(K,)`` positive mixture weights (normalized internally).
        means: ``(K, D)`` component means.
        covs: the component covariances, one of ``(K, D, D)`` symmetric positive definite (full),
            ``(K, D)`` positive variances (diagonal), ``(K,)`` positive variances (isotropic, ``Σ_k = c_k I``)
            or a positive scalar (the same isotropic covariance for all components).

    Raises ``ValueError`` (shapes, non-positive weights or variances, non-SPD or non-symmetric matrices,
    non-finite values) or ``TypeError`` (not numeric), naming the argument.

    All oracle methods take ``x`` ``(B, D)``, ``t`` (float or ``(B,)`` tensor) and a schedule (instance or
    name) and return float64 tensors on ``x``'s device.
    """

    def __init__(self, weights, means, covs):
        self._init(weights, means, covs, names=("weights", "means", "covs"))

    # -- construction ------------------------------------------------------------------------------
    def _init(self, weights, means, covs, names):
        wn, mn, cn = names
        w = _tensor(weights, wn, device="cpu")
        mu = _tensor(means, mn, device="cpu")
        c = _tensor(covs, cn, device="cpu")
        if w.dim() != 1 or w.numel() < 1:
            raise ValueError(f"{wn}: expected a non-empty 1-D tensor (K,), got shape {tuple(w.shape)}")
        K = w.numel()
        if mu.dim() != 2 or mu.shape[0] != K or mu.shape[1] < 1:
            raise ValueError(f"{mn}: expected shape (K, D) = ({K}, D) with D >= 1 matching {wn} (K = {K}), "
                             f"got {tuple(mu.shape)}")
        D = mu.shape[1]
        _finite(w, wn)
        _finite(mu, mn)
        _finite(c, cn)
        if not bool((w > 0).all()):
            raise ValueError(f"{wn}: expected positive weights, got minimum {float(w.min())}")
        U = None
        if c.dim() == 0:
            kind, kappa = "isotropic", c.expand(K).clone()
        elif c.dim() == 1:
            if c.shape[0] != K:
                raise ValueError(f"{cn}: a 1-D tensor means isotropic variances of shape (K,) = ({K},), "
                                 f"got {tuple(c.shape)}")
            kind, kappa = "isotropic", c.clone()
        elif c.dim() == 2:
            if tuple(c.shape) != (K, D):
                raise ValueError(f"{cn}: a 2-D tensor means diagonal variances of shape (K, D) = ({K}, {D}), "
                                 f"got {tuple(c.shape)}")
            kind, kappa = "diagonal", c.clone()
        elif c.dim() == 3:
            if tuple(c.shape) != (K, D, D):
                raise ValueError(f"{cn}: a 3-D tensor means full covariances of shape (K, D, D) = "
                                 f"({K}, {D}, {D}), got {tuple(c.shape)}")
            scale = c.abs().amax(dim=(1, 2))
            asym = (c - c.transpose(1, 2)).abs().amax(dim=(1, 2))
            if bool((asym > 1e-12 * scale).any()):
                k = int(torch.argmax(asym / torch.clamp(scale, min=1e-300)))
                raise ValueError(f"{cn}: expected symmetric matrices, component {k} has asymmetry "
                                 f"{float(asym[k]):.3g} (scale {float(scale[k]):.3g})")
            c = 0.5 * (c + c.transpose(1, 2))
            kind = "full"
            kappa, U = torch.linalg.eigh(c)
        else:
            raise ValueError(f"{cn}: expected a scalar, (K,), (K, D) or (K, D, D) tensor, "
                             f"got shape {tuple(c.shape)}")
        if kind == "full":
            tol = D * torch.finfo(_F64).eps * kappa.abs().amax(dim=1)
            bad = kappa.amin(dim=1) <= tol
            if bool(bad.any()):
                k = int(torch.nonzero(bad)[0])
                raise ValueError(f"{cn}: expected symmetric positive definite matrices, component {k} has "
                                 f"smallest eigenvalue {float(kappa[k].min()):.3g}")
        elif not bool((kappa > 0).all()):
            raise ValueError(f"{cn}: expected positive variances, got minimum {float(kappa.min())}")
        if kind == "isotropic":
            self._iso = kappa
            kappa = kappa[:, None].expand(K, D).clone()
        else:
            self._iso = None
        w = w / w.sum()
        self.cov_type = kind
        self.n_components, self.dim = K, D
        self._cpu = _Params(torch.log(w), w, mu, kappa, U)
        self._dev: Dict[str, _Params] = {}

    def _p(self, device) -> _Params:
        device = as_device(device)
        if device.type == "cpu":
            return self._cpu
        key = str(device)
        if key not in self._dev:
            self._dev[key] = self._cpu.to(device)
        return self._dev[key]

    # -- parameters --------------------------------------------------------------------------------
    @property
    def weights(self) -> torch.Tensor:
        """Normalized mixture weights ``(K,)``."""
        return self._cpu.w.clone()

    @property
    def means(self) -> torch.Tensor:
        """Component means ``(K, D)``."""
        return self._cpu.mu.clone()

    @property
    def covs(self) -> torch.Tensor:
        """Component covariances as full matrices ``(K, D, D)``."""
        p = self._cpu
        if p.U is None:
            return torch.diag_embed(p.kappa)
        return p.U @ torch.diag_embed(p.kappa) @ p.U.transpose(1, 2)

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the data distribution ``Σ π_k μ_k`` ``(D,)``."""
        return self._cpu.w @ self._cpu.mu

    @property
    def cov(self) -> torch.Tensor:
        """Covariance of the data distribution ``Σ π_k (Σ_k + μ_k μ_kᵀ) − m mᵀ`` ``(D, D)``."""
        p = self._cpu
        m = self.mean
        dm = p.mu - m
        return torch.einsum("k,kde->de", p.w, self.covs) + torch.einsum("k,kd,ke->de", p.w, dm, dm)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.n_components}, D={self.dim}, cov_type={self.cov_type!r})"

    # -- argument handling -------------------------------------------------------------------------
    def _x(self, x, name: str = "x") -> torch.Tensor:
        x = _tensor(x, name)
        if x.dim() != 2 or x.shape[1] != self.dim:
            hint = " (reshape a 1-D batch to (B, 1))" if self.dim == 1 and x.dim() == 1 else ""
            raise ValueError(f"{name}: expected shape (B, D) with D = {self.dim}, got {tuple(x.shape)}{hint}")
        return x

    @staticmethod
    def _t(t, B: int, device, name: str = "t") -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            if t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name}: expected a real float or tensor, got dtype {t.dtype}")
            t = t.to(device=device, dtype=_F64)
        else:
            t = _tensor(t, name, device=device)
        if t.dim() == 0 or t.numel() == 1:
            return t.reshape(()).expand(B)
        if t.dim() != 1 or t.shape[0] != B:
            raise ValueError(f"{name}: expected a float or a (B,) tensor with B = {B}, got shape {tuple(t.shape)}")
        return t

    def _vals(self, x, t, schedule):
        """(x, schedule values at per-sample t); every value shaped (B,)."""
        x = self._x(x)
        sched = _schedule(schedule)
        t = self._t(t, x.shape[0], x.device)
        return x, sched.eval(t)

    # -- the core computation ----------------------------------------------------------------------
    def _terms(self, x, a, s):
        """Per-component terms at (x, α, σ), all vectorized over (B, K, D).

        Returns (p, z, d, w, logits): z = U_kᵀ(x − αμ_k), d = α²κ_k + σ² (eigenvalues of S_k),
        w = z/d = U_kᵀ S_k⁻¹(x − αμ_k), logits = log π_k + log N(x; αμ_k, S_k)."""
        p = self._p(x.device)
        a3 = a[:, None, None]
        if p.U is None:
            z = x[:, None, :] - a3 * p.mu[None]
        else:
            z = torch.einsum("kde,bd->bke", p.U, x) - a3 * p.mu_r[None]
        d = a3 * a3 * p.kappa[None] + (s * s)[:, None, None]
        w = z / d
        logn = -0.5 * ((z * w).sum(-1) + torch.log(d).sum(-1) + self.dim * _LOG_2PI)
        return p, z, d, w, p.log_w[None] + logn

    @staticmethod
    def _back(p, r, v):
        """Σ_k r_k U_k v_k: combine per-component eigen-coordinates (B, K, D) into (B, D)."""
        if p.U is None:
            return (r[..., None] * v).sum(1)
        return torch.einsum("kde,bke->bd", p.U, r[..., None] * v)

    def _x0_eps(self, x, a, s):
        """(x0*, ε*, r, per-component terms) at (x, α, σ)."""
        p, z, d, w, logits = self._terms(x, a, s)
        r = torch.softmax(logits, dim=-1)
        ew = self._back(p, r, w)  # S⁻¹-weighted residual: ε* = σ ew, s* = −ew
        x0 = r @ p.mu + a[:, None] * self._back(p, r, p.kappa[None] * w)
        return x0, s[:, None] * ew, ew, (p, z, d, w, r)

    # -- data distribution -------------------------------------------------------------------------
    def log_prob(self, x) -> torch.Tensor:
        """Log density of the data distribution at ``x`` ``(B, D)`` → ``(B,)``."""
        x = self._x(x)
        one = torch.ones(x.shape[0], dtype=_F64, device=x.device)
        return torch.logsumexp(self._terms(x, one, torch.zeros_like(one))[-1], dim=-1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` exact samples of the data distribution ``(n, D)`` (CPU, or the generator's device)."""
        n = _as_count(n)
        device = _generator_device(generator)
        return self._sample(n, torch.ones(n, dtype=_F64, device=device), torch.zeros(n, dtype=_F64, device=device),
                            generator)

    def _sample(self, n, a, s, generator):
        p = self._p(a.device)
        k = torch.multinomial(p.w, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long, device=a.device)
        zeta = torch.randn(n, self.dim, dtype=_F64, device=a.device, generator=generator)
        std = torch.sqrt(a[:, None] ** 2 * p.kappa[k] + (s * s)[:, None]) * zeta
        if p.U is not None:
            std = torch.einsum("bde,be->bd", p.U[k], std)
        return a[:, None] * p.mu[k] + std

    # -- marginals ---------------------------------------------------------------------------------
    def marginal_log_prob(self, x, t, schedule) -> torch.Tensor:
        """Exact ``log p_t(x)`` ``(B,)`` of ``x_t = α_t x0 + σ_t ε`` (log-sum-exp over components)."""
        x, v = self._vals(x, t, schedule)
        return torch.logsumexp(self._terms(x, v.alpha, v.sigma)[-1], dim=-1)

    def marginal_cdf(self, x, t=None, schedule=None) -> torch.Tensor:
        """CDF of a one-dimensional mixture at ``x`` (any shape): of the data (``t`` None) or of the
        marginal ``p_t = Σ_k π_k N(α_t μ_k, α_t² s_k² + σ_t²)`` (a float ``t``). For the
        Kolmogorov–Smirnov tests of the samplers (:func:`diffcore.metrics.ks_statistic`)."""
        if self.dim != 1:
            raise ValueError(f"marginal_cdf: defined for one-dimensional mixtures, this one has dim {self.dim}")
        x = torch.as_tensor(x, dtype=_F64)
        a, s = 1.0, 0.0
        if t is not None:
            v = _schedule(schedule).eval(torch.tensor([float(t)], dtype=_F64))
            a, s = float(v.alpha[0]), float(v.sigma[0])
        p = self._p(x.device)
        mu = a * p.mu[:, 0]
        sd = torch.sqrt(a * a * p.kappa[:, 0] + s * s)
        z = (x[..., None] - mu) / sd
        return (p.w * 0.5 * torch.erfc(-z / math.sqrt(2.0))).sum(-1)

    def sample_marginal(self, n: int, t, schedule, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` exact samples of ``p_t`` ``(n, D)``: draw ``k ~ π``, then ``x_t ~ N(α_t μ_k, S_k)``.
        ``t`` is a float or an ``(n,)`` tensor."""
        n = _as_count(n)
        sched = _schedule(schedule)
        device = _generator_device(generator)
        v = sched.eval(self._t(t, n, device))
        return self._sample(n, v.alpha, v.sigma, generator)

    # -- oracles -----------------------------------------------------------------------------------
    def responsibilities(self, x, t, schedule) -> torch.Tensor:
        """Posterior component probabilities ``r_k(x, t)`` ``(B, K)``."""
        x, v = self._vals(x, t, schedule)
        return torch.softmax(self._terms(x, v.alpha, v.sigma)[-1], dim=-1)

    def denoiser(self, x, t, schedule) -> torch.Tensor:
        """Posterior mean ``x0* = E[x0 | x_t = x]`` ``(B, D)``."""
        x, v = self._vals(x, t, schedule)
        return self._x0_eps(x, v.alpha, v.sigma)[0]

    def eps(self, x, t, schedule) -> torch.Tensor:
        """Posterior mean noise ``ε* = E[ε | x_t = x] = −σ s*`` ``(B, D)``."""
        x, v = self._vals(x, t, schedule)
        return self._x0_eps(x, v.alpha, v.sigma)[1]

    def score(self, x, t, schedule) -> torch.Tensor:
        """Score ``s* = ∇_x log p_t(x)`` ``(B, D)`` (finite at σ = 0 for full-rank covariances)."""
        x, v = self._vals(x, t, schedule)
        return -self._x0_eps(x, v.alpha, v.sigma)[2]

    def velocity(self, x, t, schedule) -> torch.Tensor:
        """Probability-flow velocity ``v* = α' x0* + σ' ε* = f x − ½ g² s*`` ``(B, D)`` (d/dt, diffusion time).

        Computed as ``α' x0* + σσ'·Σ_k r_k S_k⁻¹(x − αμ_k)`` (σ' ε* with ε* = σ Σ r_k S_k⁻¹(...)), so it
        stays finite at σ = 0 where σ' is infinite but σσ' = ½(σ²)' is not (VP schedules at t = 0)."""
        x, v = self._vals(x, t, schedule)
        x0, _, ew, _ = self._x0_eps(x, v.alpha, v.sigma)
        return v.dalpha[:, None] * x0 + _sigma_dsigma(v)[:, None] * ew

    def predict(self, x, t, schedule, prediction: str) -> torch.Tensor:
        """The oracle for a network parameterization: ``"x0"``, ``"eps"``, ``"score"``, ``"velocity"``
        (PF-ODE field ``dx/dt``) or ``"v"`` (Salimans–Ho ``v = α ε* − σ x0*``, the v-prediction target
        of VP schedules; the same formula is returned for any schedule). Aliases as in
        :func:`diffcore.param.canonical_prediction`."""
        key = canonical_prediction(prediction)
        x, v = self._vals(x, t, schedule)
        x0, eps, ew, _ = self._x0_eps(x, v.alpha, v.sigma)
        if key == "x0":
            return x0
        if key == "eps":
            return eps
        if key == "score":
            return -ew
        if key == "velocity":
            return v.dalpha[:, None] * x0 + _sigma_dsigma(v)[:, None] * ew
        return v.alpha[:, None] * eps - v.sigma[:, None] * x0

    def divergence(self, x, t, schedule) -> torch.Tensor:
        """Exact divergence ``∇·v*`` of the PF-ODE velocity ``(B,)`` (closed form, no autograd).

        With per-component velocities ``v_k = α' μ̃_k + σ' σ S_k⁻¹(x − αμ_k)`` (affine in ``x``, Jacobian
        ``A_k = (αα'Σ_k + σσ'I) S_k⁻¹``), ``v* = Σ r_k v_k`` and ``∇r_k = r_k (s_k − s*)``:

            ∇·v* = Σ_k r_k tr A_k + Σ_k r_k v_k·s_k − v*·s*,   tr A_k = Σ_i (αα'κ_ki + σσ')/(α²κ_ki + σ²).

        For one Gaussian the last two terms cancel and this is the Gaussian formula of :class:`Gaussian`.
        """
        x, v = self._vals(x, t, schedule)
        a, da, ssd = v.alpha, v.dalpha, _sigma_dsigma(v)
        x0, _, ew, (p, z, d, w, r) = self._x0_eps(x, a, v.sigma)
        a3, da3, ssd3 = a[:, None, None], da[:, None, None], ssd[:, None, None]
        trA = ((a3 * da3 * p.kappa[None] + ssd3) / d).sum(-1)  # (B, K)
        # v_k in component k's eigenbasis: α'(U_kᵀμ_k + ακ w) + σσ' w; s_k = −w there (dot products are
        # invariant under the rotation)
        vk = da3 * (p.mu_r[None] + a3 * p.kappa[None] * w) + ssd3 * w
        vk_sk = -(vk * w).sum(-1)
        vel = da[:, None] * x0 + ssd[:, None] * ew
        return (r * (trA + vk_sk)).sum(-1) + (vel * ew).sum(-1)

    # -- convenience constructors --------------------------------------------------------------------
    @classmethod
    def ring2d(cls, k: int = 8, radius: float = 2.0, std: float = 0.2, weights=None) -> "GaussianMixture":
        """``k`` isotropic components of standard deviation ``std`` evenly spaced on a circle of ``radius``
        (equal weights unless ``weights`` is given)."""
        k = _as_count(k, "k")
        if k < 1:
            raise ValueError("k: expected at least one component")
        if not (radius >= 0 and math.isfinite(radius)):
            raise ValueError(f"radius: expected a finite radius >= 0, got {radius}")
        if not (std > 0 and math.isfinite(std)):
            raise ValueError(f"std: expected a finite std > 0, got {std}")
        ang = torch.arange(k, dtype=_F64) * (2 * math.pi / k)
        means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
        w = torch.ones(k, dtype=_F64) if weights is None else weights
        return cls(w, means, torch.full((k,), float(std) ** 2, dtype=_F64))

    @classmethod
    def mixture1d(cls, weights, means, stds) -> "GaussianMixture":
        """1-D mixture from ``weights``, ``means`` and standard deviations ``stds`` (each ``(K,)``);
        its methods take ``x`` of shape ``(B, 1)``."""
        m = _tensor(means, "means")
        sd = _tensor(stds, "stds")
        if m.dim() != 1:
            raise ValueError(f"means: expected a 1-D tensor (K,), got shape {tuple(m.shape)}")
        if sd.dim() != 1 or sd.shape != m.shape:
            raise ValueError(f"stds: expected shape {tuple(m.shape)} matching means, got {tuple(sd.shape)}")
        _finite(sd, "stds")
        if not bool((sd > 0).all()):
            raise ValueError("stds: expected positive standard deviations")
        return cls(weights, m[:, None], sd * sd)


class Gaussian(GaussianMixture):
    """Gaussian data ``N(mean, cov)``: the one-component :class:`GaussianMixture` plus the closed-form
    probability-flow map and entropy.

    Args:
        mean: ``(D,)``.
        cov: ``(D, D)`` symmetric positive definite, ``(D,)`` diagonal variances, or a scalar variance.
    """

    def __init__(self, mean, cov):
        m = _tensor(mean, "mean", device="cpu")
        if m.dim() != 1 or m.numel() < 1:
            raise ValueError(f"mean: expected a non-empty 1-D tensor (D,), got shape {tuple(m.shape)}")
        c = _tensor(cov, "cov", device="cpu")
        D = m.numel()
        if c.dim() == 0:
            covs = c.reshape(1)
        elif c.dim() == 1:
            if c.shape[0] != D:
                raise ValueError(f"cov: a 1-D tensor means diagonal variances of shape (D,) = ({D},), "
                                 f"got {tuple(c.shape)}")
            covs = c[None]
        elif c.dim() == 2:
            if tuple(c.shape) != (D, D):
                raise ValueError(f"cov: expected shape (D, D) = ({D}, {D}), got {tuple(c.shape)}")
            covs = c[None]
        else:
            raise ValueError(f"cov: expected a scalar, (D,) or (D, D) tensor, got shape {tuple(c.shape)}")
        self._init(torch.ones(1, dtype=_F64), m[None], covs, names=("weights", "mean", "cov"))

    def __repr__(self) -> str:
        return f"Gaussian(D={self.dim}, cov_type={self.cov_type!r})"

    def flow_map(self, x, t_from, t_to, schedule) -> torch.Tensor:
        """Exact probability-flow map ``Φ_{s→t}(x) = α_t μ + S_t^{1/2} S_s^{−1/2}(x − α_s μ)`` from
        ``t_from`` to ``t_to`` (floats or ``(B,)`` tensors; either direction), through the eigendecomposition
        of Σ (``S_t`` shares its eigenvectors, so the matrix square roots are ``U diag(√(α²κ+σ²)) Uᵀ``)."""
        x = self._x(x)
        sched = _schedule(schedule)
        B = x.shape[0]
        vs = sched.eval(self._t(t_from, B, x.device, "t_from"))
        vt = sched.eval(self._t(t_to, B, x.device, "t_to"))
        p = self._p(x.device)
        mu, kappa = p.mu[0], p.kappa[0]
        a_s, a_t = vs.alpha[:, None], vt.alpha[:, None]
        d_to = a_t ** 2 * kappa + vt.sigma[:, None] ** 2
        ratio = torch.sqrt(d_to / (a_s ** 2 * kappa + vs.sigma[:, None] ** 2))
        y = x - a_s * mu
        if p.U is None:
            return a_t * mu + ratio * y
        U = p.U[0]
        return a_t * mu + ((y @ U) * ratio) @ U.T

    def min_loss(self, t, schedule, prediction: str, sigma_data: float = 0.5) -> torch.Tensor:
        """Minimal per-t regression loss (sum convention, no ½, ω = 1) of a head:
        ``E‖A x0* + B ε* − (A x0 + B ε)‖² = (Aσ − Bα)²·m(t)``, ``m(t) = Tr(Σ S_t⁻¹) = Σ_k κ_k/(α²κ_k + σ²)``
        (Cov[x0|x_t] = σ²ΣS⁻¹, Cov[ε|x_t] = α²ΣS⁻¹, Cov[x0, ε|x_t] = −ασΣS⁻¹). Hence x0: ``σ²m``, eps: ``α²m``,
        score: ``(α²/σ²)m``, velocity: ``Δ²m`` (Δ = α'σ − ασ'), v: ``(α² + σ²)²m``, and ``"edm"`` (the raw
        EDM output F of book App. D.6 with ``sigma_data``): ``σ²m/c_out²``. Float64, shaped like ``t``."""
        sched = _schedule(schedule)
        tt = t.to(_F64) if isinstance(t, torch.Tensor) else _tensor(t, "t")
        v = sched.eval(tt)
        kappa = self._p(tt.device).kappa[0]
        a, s = v.alpha, v.sigma
        m = (kappa / (a[..., None] ** 2 * kappa + s[..., None] ** 2)).sum(-1)
        if isinstance(prediction, str) and prediction.lower() == "edm":
            c_out = edm_precond_coefs(v, sigma_data)[1]
            return (s / c_out) ** 2 * m
        key = canonical_prediction(prediction)
        A, Bc = _ab(key, a, s, v.dalpha, v.dsigma)
        return (A * s - Bc * a) ** 2 * m

    def entropy(self, t, schedule) -> torch.Tensor:
        """Differential entropy of ``p_t = N(α_t μ, S_t)``: ``½ Σ_i log(2πe(α²κ_i + σ²))``, shaped like ``t``."""
        sched = _schedule(schedule)
        tt = t.to(_F64) if isinstance(t, torch.Tensor) else _tensor(t, "t")
        v = sched.eval(tt)
        kappa = self._p(tt.device).kappa[0]
        d = v.alpha[..., None] ** 2 * kappa + v.sigma[..., None] ** 2
        return 0.5 * (torch.log(d).sum(-1) + self.dim * (_LOG_2PI + 1.0))


class EmpiricalData:
    """A finite dataset ``p_data = Σ_k π_k δ(x − x^{(k)})`` (Dirac mixture) with its exact diffusion
    oracles — the GMM with ``Σ_k = 0``:

        r_k(x) ∝ π_k exp(−‖x − α x^{(k)}‖²/(2σ²)),  x0* = Σ_k r_k x^{(k)},  ε* = (x − α x0*)/σ,
        s* = −(x − α x0*)/σ²,  v* = α' x0* + σ' ε*,

    i.e. the marginal velocity ``u_t(x) = ∫ u_t(x|x0) p_t(x|x0) p_data(x0) dx0 / p_t(x)`` of the
    flow-matching notes evaluated for a finite dataset (the memorizing optimum of every loss). The sum
    over points is streamed with an online log-sum-exp (``O(B·chunk·D)`` memory). Needs ``σ_t > 0``.

    Args:
        points: ``(N, D)`` data points. weights: optional ``(N,)`` positive weights (uniform by default).
    Oracle methods take ``x`` ``(B, D)``, ``t`` (float or ``(B,)``) and a schedule, as
    :class:`GaussianMixture`, and return float64 tensors on ``x``'s device (differentiable in ``x``).
    """

    def __init__(self, points, weights=None):
        pts = _tensor(points, "points", device="cpu")
        if pts.dim() != 2 or pts.shape[0] < 1 or pts.shape[1] < 1:
            raise ValueError(f"points: expected a non-empty (N, D) tensor, got shape {tuple(pts.shape)}")
        _finite(pts, "points")
        N = pts.shape[0]
        if weights is None:
            w = torch.full((N,), 1.0 / N, dtype=_F64)
        else:
            w = _tensor(weights, "weights", device="cpu")
            if w.dim() != 1 or w.shape[0] != N:
                raise ValueError(f"weights: expected shape ({N},) matching points, got {tuple(w.shape)}")
            _finite(w, "weights")
            if not bool((w > 0).all()):
                raise ValueError("weights: expected positive weights")
            w = w / w.sum()
        self.n_points, self.dim = N, pts.shape[1]
        self._pts = {"cpu": (pts, torch.log(w))}

    @property
    def points(self) -> torch.Tensor:
        return self._pts["cpu"][0].clone()

    @property
    def weights(self) -> torch.Tensor:
        return torch.exp(self._pts["cpu"][1])

    def __repr__(self) -> str:
        return f"EmpiricalData(N={self.n_points}, D={self.dim})"

    def _p(self, device):
        key = str(as_device(device))
        if key not in self._pts:
            pts, lw = self._pts["cpu"]
            self._pts[key] = (pts.to(device), lw.to(device))
        return self._pts[key]

    def _vals(self, x, t, schedule):
        x = _tensor(x, "x")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, D) with D = {self.dim}, got {tuple(x.shape)}")
        v = _schedule(schedule).eval(GaussianMixture._t(t, x.shape[0], x.device))
        if x.shape[0] and not bool((v.sigma > 0).all()):
            raise ValueError("t: the empirical-data oracle needs σ_t > 0 (the posterior is a point mass at σ = 0)")
        return x, v

    def _h(self, sigma):
        inv = -0.5 / (sigma * sigma)
        return lambda d2: inv[:, None] * d2

    def _x0(self, x, v):
        pts, lw = self._p(x.device)
        return softmax_mean(x, pts, lw, self._h(v.sigma), scale=v.alpha)

    def posterior(self, x, t, schedule) -> torch.Tensor:
        """Dense posterior weights ``r_k(x) = P(x0 = x^{(k)} | x_t = x)`` ``(B, N)`` (small N)."""
        x, v = self._vals(x, t, schedule)
        pts, lw = self._p(x.device)
        return softmax_weights(x, pts, lw, self._h(v.sigma), scale=v.alpha)

    def marginal_log_prob(self, x, t, schedule) -> torch.Tensor:
        """``log p_t(x) = logsumexp_k [log π_k + log N(x; α x^{(k)}, σ² I)]`` ``(B,)``."""
        x, v = self._vals(x, t, schedule)
        lse = self._x0(x, v)[1]
        return lse - self.dim * (torch.log(v.sigma) + 0.5 * _LOG_2PI)

    def denoiser(self, x, t, schedule) -> torch.Tensor:
        """``x0* = E[x0 | x_t = x]`` ``(B, D)``."""
        x, v = self._vals(x, t, schedule)
        return self._x0(x, v)[0]

    def predict(self, x, t, schedule, prediction: str) -> torch.Tensor:
        """The optimal head ``"x0"``, ``"eps"``, ``"score"``, ``"velocity"`` (dx/dt, diffusion time) or
        ``"v"`` (``α ε* − σ x0*``)."""
        key = canonical_prediction(prediction)
        x, v = self._vals(x, t, schedule)
        x0 = self._x0(x, v)[0]
        a, s = v.alpha[:, None], v.sigma[:, None]
        if key == "x0":
            return x0
        eps = (x - a * x0) / s
        if key == "eps":
            return eps
        if key == "score":
            return -eps / s
        if key == "velocity":
            return v.dalpha[:, None] * x0 + v.dsigma[:, None] * eps
        return a * eps - s * x0

    def eps(self, x, t, schedule) -> torch.Tensor:
        return self.predict(x, t, schedule, "eps")

    def score(self, x, t, schedule) -> torch.Tensor:
        return self.predict(x, t, schedule, "score")

    def velocity(self, x, t, schedule) -> torch.Tensor:
        return self.predict(x, t, schedule, "velocity")

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` draws of the data ``(n, D)`` (rows of ``points`` drawn with probabilities ``π``)."""
        n = _as_count(n)
        device = _generator_device(generator)
        pts, lw = self._p(device)
        if n == 0:
            return pts[:0].clone()
        return pts[torch.multinomial(torch.exp(lw), n, replacement=True, generator=generator)]

    def sample_marginal(self, n: int, t, schedule, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` exact samples of ``p_t`` ``(n, D)``: ``α x^{(k)} + σ ε``."""
        x0 = self.sample(n, generator)
        v = _schedule(schedule).eval(GaussianMixture._t(t, n, x0.device))
        eps = torch.randn(x0.shape, dtype=_F64, device=x0.device, generator=generator)
        return v.alpha[:, None] * x0 + v.sigma[:, None] * eps


def toy_2d_mixture() -> GaussianMixture:
    """A fixed, deliberately irregular 2-D mixture (unequal weights, full correlated covariances,
    separated and overlapping modes) for demos and tests."""
    weights = torch.tensor([0.45, 0.25, 0.2, 0.1], dtype=_F64)
    means = torch.tensor([[-1.5, 0.5], [1.2, 1.0], [0.8, -1.3], [2.5, -0.2]], dtype=_F64)
    covs = torch.tensor([
        [[0.30, 0.12], [0.12, 0.10]],
        [[0.05, -0.02], [-0.02, 0.08]],
        [[0.20, 0.0], [0.0, 0.02]],
        [[0.01, 0.004], [0.004, 0.03]],
    ], dtype=_F64)
    return GaussianMixture(weights, means, covs)


def toy_1d_mixture() -> GaussianMixture:
    """A fixed 1-D mixture with three unequal modes (``x`` of shape ``(B, 1)``)."""
    return GaussianMixture.mixture1d([0.5, 0.3, 0.2], [-2.0, 0.5, 3.0], [0.4, 0.8, 0.25])


# ---- reference probability-flow ODE ---------------------------------------------------------------
def _oracle_x0_eps(oracle, x, t, sched):
    """(x0*, ε*) from an oracle at one time ``t`` (0-d tensor): one pass for GaussianMixture, otherwise
    ``oracle.denoiser`` and ``oracle.eps`` (or ``oracle.predict``)."""
    if isinstance(oracle, GaussianMixture):
        v = sched.eval(t.reshape(1), check=False)
        B = x.shape[0]
        return oracle._x0_eps(x, v.alpha.expand(B), v.sigma.expand(B))[:2]
    tb = t.reshape(1).expand(x.shape[0])
    if hasattr(oracle, "denoiser") and hasattr(oracle, "eps"):
        return oracle.denoiser(x, tb, sched), oracle.eps(x, tb, sched)
    return oracle.predict(x, tb, sched, "x0"), oracle.predict(x, tb, sched, "eps")


def reference_ode(oracle, x, t_from, t_to, schedule, rtol: float = 1e-12, atol: float = 1e-12,
                  variable: str = "theta") -> torch.Tensor:
    """Float64 reference solution of the probability-flow ODE ``dx/dt = v*(x, t)`` of ``oracle`` from
    ``t_from`` to ``t_to`` (floats, either direction) for every row of ``x`` ``(B, D)``, with SciPy's
    DOP853 on the whole batch as one system. Returns a float64 tensor on ``x``'s device.

    The PF-ODE depends on the schedule only through λ = log(α/σ) up to the scaling of ``x``, so it is
    integrated in a variable of λ, in one of two equivalent forms (``variable``):

    * ``"theta"`` (default): the angle θ = atan2(σ, α) ∈ [0, π/2] and the state u = x/√(α²+σ²). Then
      u = cos θ·x0 + sin θ·ε is the TrigFlow path and ``du/dθ = −sin θ·x0*(x, t) + cos θ·ε*(x, t)`` with
      ``t = t(λ = log cot θ)``. Both the interval and the state stay bounded at *both* ends, σ = 0
      (θ = 0) and α = 0 (θ = π/2: VP-cosine or rectified flow at t = 1), and the right-hand side is smooth
      there for full-rank covariances, so DOP853's mixed error control ``rtol·|u| + atol`` is uniform in
      scale over the whole path. This is why it is the default.
    * ``"rho"``: ρ = σ/α = tan θ and y = x/α = u/cos θ, ``dy/dρ = ε*(α y, t(λ = −log ρ))`` (the EDM form).
      Equally accurate where α > 0, but y and ρ diverge as α → 0, so it rejects endpoints with α = 0.

    At the endpoints the given times are used directly (so σ(t_to) = 0, λ = +∞, needs no inverse); in
    between ``t`` comes from ``schedule.t_of_lam``. With ``rtol = atol = 1e-12`` the result matches the
    exact Gaussian flow map to ~1e-11 (tests/test_oracles.py).

    ``oracle`` is a :class:`GaussianMixture` or any object with ``denoiser(x, t, schedule)`` and
    ``eps(x, t, schedule)`` (or ``predict(x, t, schedule, prediction)``).
    """
    import numpy as np  # noqa: PLC0415
    from scipy.integrate import solve_ivp  # noqa: PLC0415

    sched = _schedule(schedule)
    if variable not in ("theta", "rho"):
        raise ValueError(f"variable: expected 'theta' or 'rho', got {variable!r}")
    rtol, atol = _tolerance(rtol, "rtol"), _tolerance(atol, "atol")
    if not (callable(getattr(oracle, "predict", None)) or (callable(getattr(oracle, "denoiser", None))
                                                          and callable(getattr(oracle, "eps", None)))):
        raise TypeError(f"oracle: expected an oracle with predict(x, t, schedule, prediction) or denoiser() and "
                        f"eps(), got {type(oracle).__name__}")
    xt = _tensor(x, "x")
    if xt.dim() != 2:
        raise ValueError(f"x: expected shape (B, D), got {tuple(xt.shape)}")
    dim = getattr(oracle, "dim", None)
    if dim is not None and xt.shape[1] != dim:
        raise ValueError(f"x: expected shape (B, D) with D = {dim}, got {tuple(xt.shape)}")
    out_device = xt.device
    xt = xt.detach().cpu()
    times = []
    for name, tv in (("t_from", t_from), ("t_to", t_to)):
        tv = _tensor(tv, name)
        if tv.numel() != 1:
            raise ValueError(f"{name}: expected a single time, got shape {tuple(tv.shape)}")
        times.append(float(tv.reshape(())))
    t0, t1 = times
    v0 = sched.eval(torch.tensor([t0], dtype=_F64))
    v1 = sched.eval(torch.tensor([t1], dtype=_F64))
    a0, s0 = float(v0.alpha[0]), float(v0.sigma[0])
    a1, s1 = float(v1.alpha[0]), float(v1.sigma[0])
    B, D = xt.shape
    if B == 0:
        return xt.clone().to(out_device)
    lam_lo, lam_hi = sched.lam_range()

    def time_at(c, c0, c1, lam_fn):
        if c == c0:
            return torch.tensor(t0, dtype=_F64)
        if c == c1:
            return torch.tensor(t1, dtype=_F64)
        lam = min(max(lam_fn(c), lam_lo), lam_hi)
        return sched.t_of_lam(torch.tensor([lam], dtype=_F64), check=False).reshape(())

    if variable == "theta":
        c0, c1 = math.atan2(s0, a0), math.atan2(s1, a1)
        r0, r1 = math.hypot(a0, s0), math.hypot(a1, s1)
        lo, hi = min(c0, c1), max(c0, c1)

        def lam_fn(th):
            return math.log(math.cos(th)) - math.log(math.sin(th)) if 0 < th < math.pi / 2 else \
                (math.inf if th <= 0 else -math.inf)

        def rhs(c, u):
            c = min(max(c, lo), hi)
            t = time_at(c, c0, c1, lam_fn)
            vv = sched.eval(t.reshape(1), check=False)
            r = math.hypot(float(vv.alpha[0]), float(vv.sigma[0]))
            x0, eps = _oracle_x0_eps(oracle, torch.from_numpy(u.reshape(B, D)) * r, t, sched)
            return (-math.sin(c) * x0 + math.cos(c) * eps).detach().cpu().numpy().ravel()

        state0 = (xt / r0).numpy().ravel()
        scale_out = r1
    else:
        if a0 <= 0 or a1 <= 0:
            raise ValueError("t_from, t_to: variable='rho' needs α(t) > 0 at both ends; use variable='theta'")
        c0, c1 = s0 / a0, s1 / a1
        lo, hi = min(c0, c1), max(c0, c1)

        def lam_fn(rho):
            return -math.log(rho) if rho > 0 else math.inf

        def rhs(c, y):
            c = min(max(c, lo), hi)
            t = time_at(c, c0, c1, lam_fn)
            a = float(sched.eval(t.reshape(1), check=False).alpha[0])
            _, eps = _oracle_x0_eps(oracle, torch.from_numpy(y.reshape(B, D)) * a, t, sched)
            return eps.detach().cpu().numpy().ravel()

        state0 = (xt / a0).numpy().ravel()
        scale_out = a1
    if c0 == c1:  # same λ: the flow map is the rescaling x ↦ (scale at t_to / scale at t_from)·x
        return (xt * (scale_out / (r0 if variable == "theta" else a0))).to(out_device)
    sol = solve_ivp(rhs, (c0, c1), np.ascontiguousarray(state0), method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference_ode: DOP853 failed: {sol.message}")
    out = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(B, D) * scale_out
    return out.to(out_device)
