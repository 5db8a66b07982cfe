"""Inverse problems by posterior sampling (book §8.4.2, Eq. (8.4.3)–(8.4.5)).

Measurement ``y = 𝒜(x0) + σ_y z``. Bayes (Eq. (8.4.4)) splits the posterior score into the data
score and a measurement term, ``∇ log p_t(x|y) = ∇ log p_t(x) + ∇ log p_t(y|x)``; each method below
approximates the measurement term ``G_t`` and adds ``w_t G_t`` to the model's score, converted exactly
to its prediction type (book Eq. (8.1.1)), so every solver of :func:`diffcore.sample` samples with it.

==========================  =========================================================  ==========
wrapper                     ``G_t ≈ ∇_{x_t} log p_t(y | x_t)``                         derivative
==========================  =========================================================  ==========
:class:`ScoreProjection`    ``Aᵀ(y_t − A x_t)``, ``y_t = α_t y + σ_t ε`` (σ_y = 0)      F
:class:`ILVR`               ``A^†(y_t − A x_t)``, ``A^† = (AᵀA)⁻¹Aᵀ`` (pseudo-inverse)  F
:class:`DPS`                ``σ_y⁻² [J_𝒜(x̂0) ∂x̂0/∂x_t]ᵀ (y − 𝒜(x̂0(x_t)))``          R
:class:`ExactGaussianLikelihood`  exact, Gaussian prior ``N(μ, Σ)`` and linear ``A``      —
==========================  =========================================================  ==========

Sign. The book (§8.4.2) prints the projection terms as
``−Aᵀ(y_t − A x_t)`` and ``−A^†(y_t − A x_t)``, from the meta-form ``−𝒫_t ℳ_t/γ_t``. The gradient of
the Gaussian log-likelihood ``−‖y_t − A x‖²/2c`` is ``+Aᵀ(y_t − A x)/c``; the minus sign would push
``A x_t`` away from the measurement. The library uses the ascent direction (it reduces to ILVR's
update ``x ← x + A^†(y_t − A x)`` for a unit weight on the state).

DPS (Chung et al. 2023) uses the Tweedie point estimate ``p(x0|x_t) ≈ δ(x0 − x̂0(x_t))``; its
practical form replaces ``1/σ_y²`` by ``ζ_t/‖y − 𝒜(x̂0)‖`` (per sample), i.e. ``G = −ζ_t ∇‖y − 𝒜(x̂0)‖``.

Linear operators act on the flattened per-sample features: :class:`Linear` (a matrix) and
:class:`Mask` (inpainting: ``A = diag(m)`` with the measurement kept in the data's shape, zero
where unobserved). Each has ``apply``, ``adjoint``, ``pinv`` and ``matrix``; DPS also accepts any
differentiable callable ``𝒜(x) → y``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .loss_guidance import GuidedModel, Weight, check_weight, per_sample

__all__ = ["Linear", "Mask", "ScoreProjection", "ILVR", "DPS", "ExactGaussianLikelihood"]


# ------------------------------------------------------------------------------------------------
# operators


class Linear:
    """Linear measurement ``A x`` with ``A`` ``[M, D]`` acting on the flattened features of ``x``
    ``[B, *S]`` (``prod(S) = D``); measurements are ``[B, M]``."""

    def __init__(self, A):
        if not isinstance(A, torch.Tensor):
            A = torch.as_tensor(A, dtype=torch.float64)
        if A.dim() != 2 or not A.is_floating_point() or not bool(torch.isfinite(A).all()):
            raise ValueError(f"A: expected a finite floating-point matrix [M, D], got shape {tuple(A.shape)}")
        self.A = A.to(torch.float64)
        self.A_pinv = torch.linalg.pinv(self.A)  # [D, M]; (AᵀA)⁻¹Aᵀ when A has full column rank
        self.in_features, self.out_features = self.A.shape[1], self.A.shape[0]

    def _flat(self, x, name="x"):
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"{name}: expected [B, ...] with {self.in_features} features per sample, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return x.reshape(x.shape[0], self.in_features)

    def _meas(self, y, name="y"):
        if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[1] != self.out_features:
            raise ValueError(f"{name}: expected a measurement [B, {self.out_features}], got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        return y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` → ``[B, M]``."""
        xf = self._flat(x)
        return xf @ self.A.to(xf.device, xf.dtype).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y`` → ``[B, D]`` (flattened features)."""
        y = self._meas(y)
        return y @ self.A.to(y.device, y.dtype)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """``A^† y`` → ``[B, D]`` (Moore–Penrose pseudo-inverse)."""
        y = self._meas(y)
        return y @ self.A_pinv.to(y.device, y.dtype).T

    def matrix(self) -> torch.Tensor:
        """The dense ``A`` (float64)."""
        return self.A

    def __repr__(self) -> str:
        return f"Linear(M={self.out_features}, D={self.in_features})"


class Mask:
    """Inpainting operator ``A = diag(m)``: ``apply(x) = m ⊙ x`` keeps the data's shape, so the
    measurement ``y`` is an image-shaped tensor that is zero (ignored) where ``m = 0``. It is an
    orthogonal projection: ``Aᵀ = A^† = A``.

    Args:
        mask: per-sample shape ``S`` (bool or 0/1 values; 1 = observed)."""

    def __init__(self, mask):
        m = torch.as_tensor(mask)
        if m.dim() < 1 or m.numel() == 0:
            raise ValueError("mask: expected a non-empty tensor with the per-sample shape of x")
        m = m.to(torch.float64)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask: expected boolean or 0/1 values (1 = observed)")
        self.mask = m
        self.in_features = self.out_features = m.numel()

    def _check(self, x, name):
        if not isinstance(x, torch.Tensor) or x.shape[1:] != self.mask.shape:
            raise ValueError(f"{name}: expected [B, {', '.join(map(str, self.mask.shape))}], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return x * self.mask.to(x.device, x.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._check(x, "x")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._check(y, "y")

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self._check(y, "y")

    def matrix(self) -> torch.Tensor:
        """``diag(m)`` on the flattened features (float64)."""
        return torch.diag(self.mask.flatten())

    def __repr__(self) -> str:
        return f"Mask(shape={tuple(self.mask.shape)}, observed={int(self.mask.sum())})"


def _check_linear(op, name="operator"):
    if not isinstance(op, (Linear, Mask)):
        raise TypeError(f"{name}: expected a diffcore.control Linear(A) or Mask(mask), got {type(op).__name__}")
    return op


def _measurement(y):
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"y: expected a floating-point measurement tensor, got "
                        f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
    return y


def _batched(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``y`` on ``like``'s device/dtype with its batch: a per-sample-shaped ``y`` is shared."""
    y = y.to(like.device, like.dtype)
    if y.shape == like.shape:
        return y
    if y.shape == like.shape[1:]:
        return y.expand_as(like)
    raise ValueError(f"y: expected shape {tuple(like.shape)} (or {tuple(like.shape[1:])} shared by the batch) to "
                     f"match the operator's output, got {tuple(y.shape)}")


# ------------------------------------------------------------------------------------------------
# projection methods (σ_y = 0, linear A)


class _Projection(GuidedModel):
    def __init__(self, model, operator, y, schedule, prediction, weight, noise, generator, model_kwargs):
        super().__init__(model, schedule, prediction, weight, model_kwargs)
        self.operator = _check_linear(operator)
        self.y = _measurement(y)
        if not isinstance(noise, bool):
            raise TypeError(f"noise: expected a bool, got {type(noise).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        self.noise, self.generator = noise, generator

    def noisy_measurement(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``y_t = α_t y + σ_t ε`` (fresh ``ε`` per call; ``α_t y`` with ``noise=False``)."""
        y = _batched(self.y, like)
        v = self.schedule.eval(t.to(torch.float64))
        shape = (y.shape[0],) + (1,) * (y.dim() - 1)
        yt = v.alpha.reshape(shape).to(y.dtype) * y
        if self.noise:
            eps = torch.randn(y.shape, generator=self.generator, device=y.device, dtype=y.dtype)
            yt = yt + v.sigma.reshape(shape).to(y.dtype) * eps
        return yt

    def guidance_term(self, x, t, pred):
        Ax = self.operator.apply(x)
        return self.correction(x, self.noisy_measurement(t, Ax))


class ScoreProjection(_Projection):
    """Score-SDE conditioning for linear inverse problems (book §8.4.2;
    Song et al. 2021): ``G_t = Aᵀ(y_t − A x_t)`` with ``y_t = α_t y + σ_t ε`` (see the module note on
    the sign), added to the score with weight ``w_t``.

    Args:
        model: the frozen unconditional model. operator: :class:`Linear` or :class:`Mask`.
        y: the measurement (``[B, M]`` / ``[M]`` for Linear, ``[B, *S]`` / ``S`` for Mask).
        schedule, prediction, model_kwargs: as :class:`~diffcore.control.GuidedModel`.
        weight: ``w_t`` (number or callable of t). noise: draw ``ε`` in ``y_t`` (else ``y_t = α_t y``).
        generator: for ``ε``.
    """

    def __init__(self, model: Callable, operator, y: torch.Tensor, schedule, prediction=None,
                 weight: Weight = 1.0, noise: bool = True, generator: Optional[torch.Generator] = None,
                 model_kwargs: Optional[dict] = None):
        super().__init__(model, operator, y, schedule, prediction, weight, noise, generator, model_kwargs)

    def correction(self, x: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        """``Aᵀ(y_t − A x)`` in ``x``'s shape."""
        return self.operator.adjoint(y_t - self.operator.apply(x)).reshape(x.shape)


class ILVR(_Projection):
    """Iterative latent variable refinement (Choi et al. 2021; book §8.4.2):
    ``G_t = A^†(y_t − A x_t)``, ``A^† = (AᵀA)⁻¹Aᵀ`` (the Moore–Penrose pseudo-inverse), with
    ``y_t = α_t y + σ_t ε``. Arguments as :class:`ScoreProjection`."""

    def __init__(self, model: Callable, operator, y: torch.Tensor, schedule, prediction=None,
                 weight: Weight = 1.0, noise: bool = True, generator: Optional[torch.Generator] = None,
                 model_kwargs: Optional[dict] = None):
        super().__init__(model, operator, y, schedule, prediction, weight, noise, generator, model_kwargs)

    def correction(self, x: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        """``A^†(y_t − A x)`` in ``x``'s shape (zero when ``y_t = A x``)."""
        return self.operator.pinv(y_t - self.operator.apply(x)).reshape(x.shape)


# ------------------------------------------------------------------------------------------------
# DPS


class DPS(GuidedModel):
    """Diffusion posterior sampling (Chung et al. 2023; book Eq. (8.4.5)):

        G_t = ∇_{x_t} [ −‖y − 𝒜(x̂0(x_t))‖² / (2σ_y²) ] = σ_y⁻² [J_𝒜(x̂0) ∂x̂0/∂x_t]ᵀ (y − 𝒜(x̂0)),

    one VJP through the model and ``𝒜`` per evaluation (derivative class R). With ``zeta`` the
    practical step replaces ``1/σ_y²`` by ``ζ_t/‖y − 𝒜(x̂0)‖`` per sample (``G = −ζ_t ∇‖y − 𝒜(x̂0)‖``).
    For a Gaussian prior (G) and linear ``A`` this is ``(α_t σ_d²/V_t) Aᵀ(y − A x*)/σ_y²``: the exact
    likelihood score without the ``A Σ_{0|t} Aᵀ`` term (:class:`ExactGaussianLikelihood`).

    Args:
        model: the frozen unconditional model. operator: :class:`Linear`, :class:`Mask`, or any
            differentiable callable ``𝒜(x0) → y`` (batched).
        y: the measurement (batched like ``𝒜``'s output, or shared without the batch dimension).
        sigma_y: measurement noise ``σ_y > 0`` (the exact DPS weight ``1/σ_y²``); may be 0 or None
            when ``zeta`` is given.
        zeta: step size ``ζ_t`` (number or callable of t) of the normalized practical form.
        weight: an extra ``w_t`` (default 1).
        schedule, prediction, model_kwargs: as :class:`~diffcore.control.GuidedModel`.
    """

    needs_model_grad = True

    def __init__(self, model: Callable, operator, y: torch.Tensor, schedule, prediction=None,
                 sigma_y: Optional[float] = None, zeta: Optional[Weight] = None, weight: Weight = 1.0,
                 model_kwargs: Optional[dict] = None):
        super().__init__(model, schedule, prediction, weight, model_kwargs)
        if isinstance(operator, (Linear, Mask)):
            self.forward_op = operator.apply
        elif callable(operator):
            self.forward_op = operator
        else:
            raise TypeError(f"operator: expected Linear, Mask or a callable A(x0) -> y, got {type(operator).__name__}")
        self.operator = operator
        self.y = _measurement(y)
        if sigma_y is not None and (isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float))
                                    or not (math.isfinite(sigma_y) and sigma_y >= 0)):
            raise ValueError(f"sigma_y: expected a finite number >= 0 or None, got {sigma_y!r}")
        if zeta is None:
            if sigma_y is None or sigma_y == 0:
                raise ValueError("sigma_y: the exact DPS weight 1/σ_y² needs sigma_y > 0; for noiseless "
                                 "measurements give the practical step size zeta=")
            self.zeta = None
        else:
            self.zeta = check_weight(zeta, "zeta")
        self.sigma_y = None if sigma_y is None else float(sigma_y)

    def guidance_term(self, x: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        x0 = self.to_x0(pred, x, t)
        Ax0 = self.forward_op(x0)
        if not isinstance(Ax0, torch.Tensor) or Ax0.dim() < 1 or Ax0.shape[0] != x.shape[0]:
            raise ValueError(f"operator: expected a batched output [B, ...] with B = {x.shape[0]}, got "
                             f"{getattr(Ax0, 'shape', type(Ax0).__name__)}")
        r = _batched(self.y, Ax0) - Ax0
        # Jᵀ r for every sample at once: samples do not interact, so the gradient of the sum is per-sample
        g = torch.autograd.grad(-0.5 * (r ** 2).sum(), x)[0]
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        if self.zeta is None:
            return g / self.sigma_y ** 2
        norm = r.detach().reshape(x.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(r.dtype).tiny)
        return g * (per_sample(self.zeta, t, x, "zeta") / norm.to(torch.float64).reshape(shape)).to(g.dtype)


# ------------------------------------------------------------------------------------------------
# exact likelihood score for a Gaussian prior (test oracle)


class ExactGaussianLikelihood(GuidedModel):
    """The exact measurement score for Gaussian data ``x0 ~ N(μ, Σ)`` and linear ``A``
    (Gaussian conditioning, generalised from ``Σ = σ_d² I``): ``p(x0 | x_t)`` is Gaussian with

        mean x* = μ + J (x_t − α_t μ),  J = α_t Σ V_t⁻¹,  cov Σ_{0|t} = σ_t² Σ V_t⁻¹,  V_t = α_t² Σ + σ_t² I,

    so ``p_t(y | x_t) = N(y; A x*, C_t)``, ``C_t = A Σ_{0|t} Aᵀ + σ_y² I``, and

        G_t = ∇_{x_t} log p_t(y | x_t) = Jᵀ Aᵀ C_t^+ (y − A x*)

    (``C^+`` the pseudo-inverse: rows that a :class:`Mask` does not observe carry no information).
    With an exact unconditional model and weight 1 the guided score is ``∇ log p_t(x_t | y)`` exactly,
    so the PF-ODE samples the posterior ``N(μ_post, Σ_post)``. The model's output is not used by the
    term (it is added to it).

    Args:
        model, schedule, prediction, model_kwargs, weight: as :class:`~diffcore.control.GuidedModel`.
        operator: :class:`Linear` or :class:`Mask`. y: measurements (batched or shared).
        sigma_y: ``σ_y ≥ 0``. mean: ``μ`` ``[D]``. cov: ``Σ`` ``[D, D]`` (SPD), ``[D]`` or a scalar variance.
    """

    def __init__(self, model: Callable, operator, y: torch.Tensor, sigma_y: float, mean, cov, schedule,
                 prediction=None, weight: Weight = 1.0, model_kwargs: Optional[dict] = None):
        super().__init__(model, schedule, prediction, weight, model_kwargs)
        self.operator = _check_linear(operator)
        self.y = _measurement(y)
        if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not (sigma_y >= 0
                                                                                     and math.isfinite(sigma_y)):
            raise ValueError(f"sigma_y: expected a finite number >= 0, got {sigma_y!r}")
        self.sigma_y = float(sigma_y)
        mu = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        D = mu.numel()
        if D != self.operator.in_features:
            raise ValueError(f"mean: expected {self.operator.in_features} entries (the operator's input size), got {D}")
        S = torch.as_tensor(cov, dtype=torch.float64)
        if S.dim() == 0:
            S = S * torch.eye(D, dtype=torch.float64)
        elif S.dim() == 1:
            S = torch.diag(S)
        if S.shape != (D, D) or not torch.allclose(S, S.T):
            raise ValueError(f"cov: expected a symmetric [{D}, {D}] matrix, a [{D}] diagonal or a scalar")
        lam, U = torch.linalg.eigh(S)
        if not bool((lam > 0).all()):
            raise ValueError("cov: expected a positive definite covariance")
        self.mean, self.cov, self._lam, self._U = mu, S, lam, U

    def guidance_term(self, x: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        B, D = x.shape[0], self.mean.numel()
        dev = x.device
        v = self.schedule.eval(t.to(torch.float64))
        a, s = v.alpha.to(dev)[:, None], v.sigma.to(dev)[:, None]
        lam, U, mu = self._lam.to(dev)[None], self._U.to(dev), self.mean.to(dev)
        d = a ** 2 * lam + s ** 2                     # eigenvalues of V_t, [B, D]
        j = a * lam / d                               # of J
        c0 = s ** 2 * lam / d                         # of Σ_{0|t}
        A = self.operator.matrix().to(dev)
        xf = x.detach().reshape(B, D).to(torch.float64)
        z = (xf - a * mu) @ U                          # eigen-coordinates
        xstar = mu + (j * z) @ U.T
        AU = A @ U                                     # [M, D]
        C = torch.einsum("md,bd,nd->bmn", AU, c0, AU) + self.sigma_y ** 2 * torch.eye(A.shape[0], dtype=torch.float64,
                                                                                     device=dev)
        yb = _batched(self.y, self.operator.apply(x.detach().to(torch.float64))).reshape(B, -1)
        r = yb - xstar @ A.T
        Cr = (torch.linalg.pinv(C, hermitian=True) @ r[:, :, None])[:, :, 0]
        g = ((Cr @ AU) * j) @ U.T                      # Jᵀ Aᵀ C⁺ r, J symmetric
        return g.reshape(x.shape)
