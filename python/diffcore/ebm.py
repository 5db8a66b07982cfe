"""Energy-based models and the score-matching family ("The Principles of Diffusion Models", Ch. 3).

* :class:`EnergyModel` — a density ``p_φ(x) = exp(−E_φ(x)) / Z_φ`` given by an energy network; its score
  ``∇ log p_φ = −∇E_φ`` does not involve ``Z_φ`` (book §3.1.2, Eq. (3.1.2)), so the model is a score model
  that the Langevin samplers (``diffcore.sample(..., solver="langevin", prediction="score")``, book
  Eq. (3.1.4)–(3.1.5)) run directly. :class:`QuadraticEnergy` is the Gaussian energy
  ``½ (x − m)ᵀ P (x − m)`` with a learnable mean and precision.
* :func:`score_matching_loss` — Hyvärinen's tractable score matching (book Prop. 3.2.1, Eq. (3.2.2)):
  ``E[tr ∇s_φ(x) + ½‖s_φ(x)‖²]``, equal to the Fisher divergence (3.2.1) minus a constant that does not
  depend on the model; ``method="exact"`` takes the Jacobian's trace with ``D`` vector–Jacobian products,
  ``method="sliced"`` replaces it by ``vᵀ∇s_φ v`` with random projections ``v`` (sliced score matching,
  Song et al. 2019, arXiv:1905.07088; unbiased for the same objective).
* :func:`sure` — Stein's unbiased risk estimate of a denoiser's mean squared error from noisy data only
  (book §3.3.5, Eq. (3.3.7)): ``‖D(x̃) − x̃‖² + 2σ² ∇·D(x̃) − Dσ²``.
* :func:`generalized_score_matching_loss` — the operator form of book §3.3.6,
  ``E[½‖s_φ‖² − (L†s_φ)(x)]``: ``L = ∇`` gives Hyvärinen's objective, the denoising operator
  ``Lf = x̃ f + σ²∇f`` (``L†g = x̃·g − σ²∇·g``) has the Tweedie denoiser ``E[x₀ | x̃]`` as its minimizer.
* :func:`divergence` — ``∇·f(x)`` per sample, exact (``D`` vector–Jacobian products) or by the
  Hutchinson–Skilling estimator, differentiable with respect to the parameters of ``f`` when gradients
  are enabled (the training losses above build on it).

Shapes: data ``x`` is ``(B, *S)`` (1-D data as ``(B, 1)``); the feature count ``D = prod(S)``. All
losses return the batch mean, or the ``(B,)`` per-sample values with ``reduction="none"``.
docs/score_matching.md derives the identities the tests check.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ._checks import _choice, _positive_float, _positive_int

__all__ = ["EnergyModel", "QuadraticEnergy", "divergence", "score_matching_loss", "sure",
           "generalized_score_matching_loss"]


# ---- argument helpers ---------------------------------------------------------------------------------
def _check_x(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected a floating-point tensor of shape (B, *S), got {got}")
    if x.dim() < 2:
        raise ValueError(f"{name}: expected shape (B, *S) with at least one feature dimension, got "
                         f"{tuple(x.shape)} (reshape a batch of scalars to (B, 1))")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name}: expected a non-empty batch with at least one feature, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name}: expected finite values")
    return x


def _check_fn(fn, name: str) -> Callable:
    if not callable(fn):
        raise TypeError(f"{name}: expected a callable x -> tensor, got {type(fn).__name__}")
    return fn


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample


def _check_generator(generator, device) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if generator is not None and torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(f"generator: on {generator.device}, the data is on {device}")


def _call_field(fn, x: torch.Tensor, name: str) -> torch.Tensor:
    out = fn(x)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name}: expected an output of the input's shape {tuple(x.shape)}, got {got}")
    return out


def _vjp(out: torch.Tensor, x: torch.Tensor, v: torch.Tensor, create_graph: bool) -> torch.Tensor:
    if not out.requires_grad:  # the field does not depend on x (or on anything): zero Jacobian
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, v, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


# ---- divergence ---------------------------------------------------------------------------------------
def divergence(fn: Callable, x: torch.Tensor, method: str = "exact", num_probes: int = 1,
               generator: Optional[torch.Generator] = None, probe: str = "gaussian",
               create_graph: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), ∇·f(x))`` for a field ``f`` mapping ``(B, *S)`` to ``(B, *S)``, the divergence as ``(B,)``.

    ``method="exact"``: the Jacobian's trace from ``D`` vector–Jacobian products (book Eq. (3.2.2)'s
    ``tr ∇s``; cost ``D`` backward passes). ``method="hutchinson"``: ``mean_k v_kᵀ ∇f v_k`` over
    ``num_probes`` probes, Gaussian or Rademacher (``probe``), an unbiased estimate (Hutchinson 1989;
    Skilling 1989; book §5.1.2). ``create_graph`` (default: ``torch.is_grad_enabled()``) keeps the graph
    so that the result can be differentiated with respect to ``f``'s parameters (training). The returned
    ``f(x)`` is a function of a leaf copy of ``x``; ``x`` itself is not modified.
    """
    _check_fn(fn, "fn")
    x = _check_x(x)
    method = _choice(method, "method", ("exact", "hutchinson"))
    num_probes = _positive_int(num_probes, "num_probes")
    probe = _choice(probe, "probe", ("gaussian", "rademacher"))
    _check_generator(generator, x.device)
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    B, D = x.shape[0], x[0].numel()
    with torch.enable_grad():
        xin = x.detach().requires_grad_(True)
        out = _call_field(fn, xin, "fn")
        if method == "exact":
            div = x.new_zeros(B)
            eye = torch.zeros_like(xin).reshape(B, D)
            for i in range(D):
                eye.zero_()
                eye[:, i] = 1
                div = div + _vjp(out, xin, eye.reshape(xin.shape), create_graph).reshape(B, D)[:, i]
        else:
            div = x.new_zeros(B)
            for _ in range(num_probes):
                v = torch.randn(xin.shape, generator=generator, device=x.device, dtype=x.dtype)
                if probe == "rademacher":
                    v = torch.sign(v)
                    v[v == 0] = 1
                div = div + (_vjp(out, xin, v, create_graph) * v).reshape(B, D).sum(1)
            div = div / num_probes
    if not create_graph:
        out, div = out.detach(), div.detach()
    return out, div


# ---- energy-based models ------------------------------------------------------------------------------
class EnergyModel(nn.Module):
    """An energy-based model ``p(x) ∝ exp(−E(x))`` (book §3.1.1) around an energy network ``energy``,
    a module or callable mapping ``(B, *S)`` to ``(B,)`` or ``(B, 1)``.

    ``model(x, t=None)`` returns the score ``−∇E(x)`` (book Eq. (3.1.2)); the time argument is accepted
    and ignored, so that the model can be passed to ``diffcore.sample(..., solver="langevin",
    prediction="score")`` (unadjusted Langevin dynamics, book Eq. (3.1.4)). Under ``torch.no_grad`` (as
    in sampling) the score is still computed by autograd and returned detached; with gradients enabled it
    keeps the graph, so losses of the score (:func:`score_matching_loss`) train the energy.
    """

    def __init__(self, energy: Callable):
        super().__init__()
        _check_fn(energy, "energy")
        self.energy_net = energy

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """``E(x)`` as ``(B,)``."""
        x = _check_x(x)
        e = self.energy_net(x)
        if not isinstance(e, torch.Tensor) or e.shape not in ((x.shape[0],), (x.shape[0], 1)):
            got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"energy: expected an output of shape ({x.shape[0]},) or ({x.shape[0]}, 1), got {got}")
        return e.reshape(x.shape[0])

    def unnormalized_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) + log Z = −E(x)``."""
        return -self.energy(x)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """``∇ log p(x) = −∇E(x)``, shape of ``x``."""
        x = _check_x(x)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xin = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            e = self.energy(xin)
            (g,) = torch.autograd.grad(e.sum(), xin, create_graph=create_graph, allow_unused=True)
        s = -g if g is not None else torch.zeros_like(x)
        return s if create_graph else s.detach()

    def forward(self, x: torch.Tensor, t=None, **kwargs) -> torch.Tensor:
        return self.score(x)


class QuadraticEnergy(nn.Module):
    """The Gaussian energy ``E(x) = ½ (x − m)ᵀ P (x − m)`` on ``(B, D)`` data, ``P = L Lᵀ`` with ``L``
    lower triangular and a positive diagonal (``exp`` of a free parameter), so every parameter value is a
    valid precision. ``EnergyModel(QuadraticEnergy(D))`` is the model ``N(m, P⁻¹)``; Hyvärinen's
    objective on it has the closed-form minimizer ``m = x̄``, ``P = S⁻¹`` (``S`` the sample covariance
    with ``1/n``), derived in docs/score_matching.md.
    """

    def __init__(self, dim: int, mean: Optional[torch.Tensor] = None, precision: Optional[torch.Tensor] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        dim = _positive_int(dim, "dim")
        m = torch.zeros(dim, dtype=dtype) if mean is None else torch.as_tensor(mean, dtype=dtype).clone()
        if m.shape != (dim,):
            raise ValueError(f"mean: expected shape ({dim},), got {tuple(m.shape)}")
        if precision is None:
            L = torch.eye(dim, dtype=dtype)
        else:
            P = torch.as_tensor(precision, dtype=torch.float64)
            if P.shape != (dim, dim) or not torch.allclose(P, P.T):
                raise ValueError(f"precision: expected a symmetric ({dim}, {dim}) matrix, got shape {tuple(P.shape)}")
            L, info = torch.linalg.cholesky_ex(P)
            if int(info) != 0:
                raise ValueError("precision: expected a positive definite matrix")
            L = L.to(dtype)
        self.mean = nn.Parameter(m)
        self.log_diag = nn.Parameter(torch.log(torch.diagonal(L)).clone())
        self.lower = nn.Parameter(torch.tril(L, -1).clone())

    def cholesky(self) -> torch.Tensor:
        return torch.tril(self.lower, -1) + torch.diag(torch.exp(self.log_diag))

    @property
    def precision(self) -> torch.Tensor:
        L = self.cholesky()
        return L @ L.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x: expected shape (B, {self.mean.shape[0]}), got {tuple(x.shape)}")
        r = (x - self.mean) @ self.cholesky()
        return 0.5 * (r * r).sum(1)


# ---- losses -------------------------------------------------------------------------------------------
def score_matching_loss(score: Callable, x: torch.Tensor, method: str = "exact", num_projections: int = 1,
                        generator: Optional[torch.Generator] = None, reduction: str = "mean") -> torch.Tensor:
    """Hyvärinen's score-matching objective (book Prop. 3.2.1, Eq. (3.2.2)),

        J(φ) = E_x[ tr ∇ₓs_φ(x) + ½ ‖s_φ(x)‖² ],

    which equals the Fisher divergence ``½ E‖s_φ − ∇log p_data‖²`` (Eq. (3.2.1)) minus
    ``½ E‖∇log p_data‖²``, a constant of the data. ``score`` maps ``(B, *S)`` to ``(B, *S)``: an
    :class:`EnergyModel`, or ``lambda x: net(x, t)`` for a time-conditioned network.

    ``method="exact"`` computes the trace with ``D`` vector–Jacobian products. ``method="sliced"``
    (Song et al. 2019, arXiv:1905.07088) uses ``vᵀ ∇s_φ v`` over ``num_projections`` Gaussian projections
    ``v`` (``E[vvᵀ] = I``, so it is unbiased for ``J``) and keeps ``½‖s_φ‖²`` exact (their variance-reduced
    form): one backward pass per projection instead of ``D``.
    """
    _check_fn(score, "score")
    x = _check_x(x)
    method = _choice(method, "method", ("exact", "sliced"))
    num_projections = _positive_int(num_projections, "num_projections")
    reduction = _choice(reduction, "reduction", ("mean", "none"))
    s, tr = divergence(score, x, "exact" if method == "exact" else "hutchinson", num_projections, generator)
    per = tr + 0.5 * s.reshape(x.shape[0], -1).pow(2).sum(1)
    return _reduce(per, reduction)


def sure(denoiser: Callable, x_noisy: torch.Tensor, sigma: float, method: str = "exact", num_probes: int = 1,
         generator: Optional[torch.Generator] = None, reduction: str = "none") -> torch.Tensor:
    """Stein's unbiased risk estimate of a denoiser (book §3.3.5, Eq. (3.3.7); proof in App. D.2.4):

        SURE(D; x̃) = ‖D(x̃) − x̃‖² + 2σ² ∇·D(x̃) − dσ²,   x̃ = x + σε,

    with ``E[SURE | x] = E[‖D(x̃) − x‖² | x]``: the mean squared error against the unseen clean ``x``
    from the noisy sample alone. ``denoiser`` maps ``(B, *S)`` to ``(B, *S)``; ``method`` ``"exact"``
    or ``"hutchinson"`` (``num_probes``) for the divergence. Default ``reduction="none"``: ``(B,)``.
    Differentiable with respect to the denoiser's parameters (training by SURE).
    """
    _check_fn(denoiser, "denoiser")
    x = _check_x(x_noisy, "x_noisy")
    sigma = _positive_float(sigma, "sigma")
    method = _choice(method, "method", ("exact", "hutchinson"))
    reduction = _choice(reduction, "reduction", ("mean", "none"))
    d, div = divergence(denoiser, x, method, num_probes, generator)
    B, D = x.shape[0], x[0].numel()
    per = (d - x.detach()).reshape(B, D).pow(2).sum(1) + 2 * sigma ** 2 * div - D * sigma ** 2
    return _reduce(per, reduction)


def generalized_score_matching_loss(score: Callable, x: torch.Tensor, operator: str = "gradient",
                                    sigma: Optional[float] = None, method: str = "exact",
                                    num_probes: int = 1, generator: Optional[torch.Generator] = None,
                                    reduction: str = "mean") -> torch.Tensor:
    """Generalized score matching (book §3.3.6): ``E[½‖s_φ(x)‖² − (L†s_φ)(x)]``, equal up to a constant of
    the data to ``½ E‖s_φ − Lp/p‖²``, so its minimizer is the generalized score ``Lp/p``.

    * ``operator="gradient"``: ``L = ∇``, ``L† = −∇·``; Hyvärinen's objective (3.2.2), minimizer ``∇log p``.
    * ``operator="denoising"`` (needs ``sigma``): ``(Lf)(x̃) = x̃ f + σ²∇f``, whose adjoint is
      ``L†g = x̃·g − σ²∇·g``; ``x`` holds noisy samples ``x̃ = x₀ + σε`` and the minimizer is
      ``x̃ + σ²∇log p_σ(x̃) = E[x₀ | x̃]`` (Tweedie, Lemma 3.3.2). ``s_φ`` is then a denoiser.

    ``method`` ``"exact"`` or ``"hutchinson"`` (``num_probes`` probes) for the divergence.
    """
    _check_fn(score, "score")
    x = _check_x(x)
    operator = _choice(operator, "operator", ("gradient", "denoising"))
    method = _choice(method, "method", ("exact", "hutchinson"))
    reduction = _choice(reduction, "reduction", ("mean", "none"))
    if operator == "denoising":
        if sigma is None:
            raise ValueError("sigma: the denoising operator needs the noise level σ > 0, got None")
        sigma = _positive_float(sigma, "sigma")
    elif sigma is not None:
        raise ValueError(f"sigma: only the denoising operator takes a noise level, got sigma={sigma!r} "
                         "with operator='gradient'")
    s, div = divergence(score, x, method, num_probes, generator)
    B = x.shape[0]
    sq = 0.5 * s.reshape(B, -1).pow(2).sum(1)
    if operator == "gradient":
        per = sq + div
    else:
        per = sq - (x.detach() * s).reshape(B, -1).sum(1) + sigma ** 2 * div
    return _reduce(per, reduction)
