"""Classifier guidance (book §8.2, Eq. (8.2.3)–(8.2.4)).

A frozen unconditional model ``s_φ(x, t)`` and a noise-conditional classifier ``p_ψ(c | x_t, t)``:

    s_CG(x, t) = s_φ(x, t) + ω ∇_x log p_ψ(c | x, t),

ω = 1 is the (approximate) conditional score ∇ log p_t(x|c) (exact Bayes with the exact
classifier), ω = 0 the unconditional model, ω > 1 sharpens toward the class (the library's ω
convention, as :class:`diffcore.CFG`). The classifier sees noisy inputs, so it is trained on
``x_t = α_t x0 + σ_t ε`` with time as an input (Eq. (8.2.4)):

    min_ψ E_{t, (x0, c), ε} [ −log p_ψ(c | α_t x0 + σ_t ε, t) ].

- :class:`NoisyClassifier`: a small time-conditioned MLP ``(x, t) → logits [B, K]`` (the library's
  :class:`~diffcore.models.MLP` outputs ``dim`` values, not ``K`` logits).
- :func:`classifier_loss`: the loss above with ``t`` from a :mod:`diffcore.timesampling` law.
- :class:`ClassifierGuidance`: the guided model wrapper (any prediction type, any solver).
- :class:`GaussianClassPosterior`: the exact ``log p_t(c|x)`` when each class is an isotropic
  Gaussian (a two-class :class:`diffcore.oracles.GaussianMixture`), for tests.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import timesampling as _timesampling
from ..models.embedding import TimeEmbedding
from ..models.embedding import activation as make_activation
from .loss_guidance import GuidedModel, Weight, check_callable, check_schedule

__all__ = ["NoisyClassifier", "classifier_loss", "ClassifierGuidance", "GaussianClassPosterior"]


class NoisyClassifier(nn.Module):
    """Noise-conditional classifier ``net(x, t) → logits [B, num_classes]`` (book Eq. (8.2.4)).

    ``h_0 = act(W_in x + U_0 e(t))``, ``h_i = act(W_i h_{i−1} + U_i e(t))``, ``logits = W_out h``:
    the time code ``e(t)`` (:class:`~diffcore.models.embedding.TimeEmbedding` then a 2-layer MLP)
    shifts every hidden layer, as in :class:`~diffcore.models.MLP`.

    Args:
        dim: features per sample (``x`` is ``[B, dim]`` or ``[B, *S]`` with ``prod(S) == dim``).
        num_classes: number of classes K (>= 2).
        width, depth: hidden width and number of hidden layers.
        time_transform: ``"identity"`` for t ∈ [0, 1], ``"log"`` for EDM's σ
            (:func:`diffcore.models.embedding.time_transform_for` picks it from a schedule).
        activation: activation name.
    """

    def __init__(self, dim: int, num_classes: int, width: int = 64, depth: int = 2,
                 time_transform: Union[str, Callable] = "identity", activation: str = "silu",
                 max_freq: float = 1000.0):
        for name, v, lo in (("dim", dim, 1), ("num_classes", num_classes, 2), ("width", width, 2),
                            ("depth", depth, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        super().__init__()
        self.dim, self.num_classes, self.depth = dim, num_classes, depth
        emb = width + (width % 2)
        self.time_embedding = TimeEmbedding(emb, "sinusoidal", time_transform, max_freq)
        self.time_mlp = nn.Sequential(nn.Linear(emb, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.cond = nn.Linear(width, width * depth)
        self.acts = nn.ModuleList(make_activation(activation) for _ in range(depth))
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x: expected a tensor [B, {self.dim}] (or [B, *S] with {self.dim} features), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B = x.shape[0]
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t), device=x.device)
        t = t.to(x.device).reshape(-1).expand(B) if t.numel() == 1 else t.to(x.device)
        if t.shape != (B,):
            raise ValueError(f"t: expected shape ({B},) (one time per sample), got {tuple(t.shape)}")
        c = self.time_mlp(self.time_embedding(t))
        shifts = self.cond(F.silu(c)).chunk(self.depth, dim=1)
        h = self.acts[0](self.inp(x.reshape(B, self.dim).to(c.dtype)) + shifts[0])
        for i, layer in enumerate(self.hidden):
            h = self.acts[i + 1](layer(h) + shifts[i + 1])
        return self.out(h)


def _labels(labels, B: int, device, name: str = "labels") -> torch.Tensor:
    if isinstance(labels, int) and not isinstance(labels, bool):
        return torch.full((B,), labels, dtype=torch.long, device=device)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool \
            or labels.is_complex():
        raise TypeError(f"{name}: expected an int or an integer tensor [B], got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.dim() == 0:
        labels = labels.expand(B)
    if labels.shape != (B,):
        raise ValueError(f"{name}: expected shape ({B},), got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.long)


def _log_probs(classifier, x, t, labels, name="classifier") -> torch.Tensor:
    """``log p(c_b | x_b, t_b)`` ``[B]`` from a classifier returning logits (or log-probabilities:
    ``log_softmax`` leaves those unchanged)."""
    logits = classifier(x, t)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: expected logits of shape [B, K] with B = {x.shape[0]}, got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    K = logits.shape[1]
    # checked on the host only off-GPU (a device sync per model call otherwise; gather raises on CUDA)
    if labels.device.type == "cpu" and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise ValueError(f"labels: expected class indices in [0, {K - 1}], got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)


def classifier_loss(classifier: Callable, x0: torch.Tensor, labels, schedule,
                    generator: Optional[torch.Generator] = None, time_law="uniform") -> torch.Tensor:
    """Noise-conditional classifier loss (book Eq. (8.2.4)):

        L(ψ) = mean_b [ −log p_ψ(c_b | α_{t_b} x0_b + σ_{t_b} ε_b, t_b) ],

    ``t_b`` from ``time_law`` (a :mod:`diffcore.timesampling` name or law; default uniform over the
    schedule's training range), ``ε_b ~ N(0, I)`` drawn with ``generator``.

    Args:
        classifier: ``classifier(x_t, t) → logits [B, K]`` (e.g. :class:`NoisyClassifier`).
        x0: clean data ``[B, ...]``. labels: integer class labels ``[B]``.
        schedule: the noise schedule (or its name) of the diffusion model to be guided.
    """
    check_callable(classifier, "classifier", "a callable classifier(x, t) -> logits [B, K]")
    schedule = check_schedule(schedule)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.dim() < 1:
        raise TypeError("x0: expected a floating-point tensor with a batch dimension")
    B = x0.shape[0]
    labels = _labels(labels, B, x0.device)
    law = _timesampling.get(time_law)
    t = law.sample(B, schedule, generator=generator, device=x0.device)
    v = schedule.eval(t)
    shape = (B,) + (1,) * (x0.dim() - 1)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = (v.alpha.reshape(shape) * x0 + v.sigma.reshape(shape) * eps).to(x0.dtype)
    return -_log_probs(classifier, xt, t.to(x0.dtype), labels).mean()


class ClassifierGuidance(GuidedModel):
    """Classifier-guided model ``fn(x, t)`` (book Eq. (8.2.3)): the model's
    prediction with score ``ŝ + ω ∇_x log p_ψ(c | x, t)``, exactly converted (book Prop. 6.3.1):
    ``ε̂_g = ε̂ − σ ω G``, ``x̂_g = x̂ + σ²/α ω G``, ``v̂_g = v̂ − ½ g² ω G``.

    Args:
        model: the frozen unconditional model ``model(x, t, **model_kwargs)``.
        classifier: ``classifier(x, t) → logits [B, K]`` (or log-probabilities); differentiated
            with respect to ``x`` only (derivative class R), its parameters are not touched.
        omega: ω (1: conditional, 0: unconditional), a number or a callable ``t → [B]``.
        labels: the target class, an int or an integer tensor ``[B]``.
        schedule, prediction, model_kwargs: as in :class:`~diffcore.control.GuidedModel`.

    ``diffcore.sample(ClassifierGuidance(...), x, schedule, prediction=<same>)`` samples with it.
    """

    def __init__(self, model: Callable, classifier: Callable, omega: Weight, labels, schedule,
                 prediction=None, model_kwargs: Optional[dict] = None):
        super().__init__(model, schedule, prediction, omega, model_kwargs)
        self.classifier = check_callable(classifier, "classifier", "a callable classifier(x, t) -> logits [B, K]")
        is_int = isinstance(labels, int) and not isinstance(labels, bool)
        is_tensor = (isinstance(labels, torch.Tensor) and labels.dim() <= 1 and not labels.is_floating_point()
                     and not labels.is_complex() and labels.dtype != torch.bool)
        if not (is_int or is_tensor):
            raise TypeError(f"labels: expected an int or an integer tensor [B], got "
                            f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        self.labels = labels

    @property
    def omega(self):
        return self.weight

    def log_prob_grad(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``G = ∇_x log p_ψ(c | x, t)`` ``[B, ...]`` (one classifier forward and backward)."""
        labels = _labels(self.labels, x.shape[0], x.device)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = _log_probs(self.classifier, xg, t, labels)
            return torch.autograd.grad(logp.sum(), xg)[0]

    def guidance_term(self, x, t, pred):
        return self.log_prob_grad(x, t)


class GaussianClassPosterior:
    """Exact noisy-class posterior ``log p_t(c | x)`` ``[B, K]`` for classes ``p(x0|c) = N(m_c, κ_c² I)``
    with prior ``π_c`` (a Gaussian mixture, :class:`diffcore.oracles.GaussianMixture`, for D = 1, K = 2):

        p_t(x|c) = N(α_t m_c, (α_t² κ_c² + σ_t²) I),   log p_t(c|x) = log π_c p_t(x|c) − log Σ_k π_k p_t(x|k).

    Called as ``posterior(x, t)`` it is a classifier for :class:`ClassifierGuidance` (differentiable
    in ``x``; computed in float64). With ω = 1 the guided score is then ``∇ log p_t(x|c)`` exactly.

    Args:
        weights: class prior ``π`` ``[K]`` (normalized internally). means: ``[K, D]`` or ``[K]`` (D = 1).
        stds: ``κ`` ``[K]``. schedule: the noise schedule.
    """

    def __init__(self, weights, means, stds, schedule):
        w = torch.as_tensor(weights, dtype=torch.float64)
        m = torch.as_tensor(means, dtype=torch.float64)
        k = torch.as_tensor(stds, dtype=torch.float64)
        if w.dim() != 1 or w.numel() < 2 or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
            raise ValueError(f"weights: expected a 1-D tensor of K >= 2 positive finite weights, got {w.tolist()}")
        if m.dim() == 1:
            m = m[:, None]
        if m.dim() != 2 or m.shape[0] != w.numel():
            raise ValueError(f"means: expected shape [{w.numel()}, D] or [{w.numel()}], got {tuple(m.shape)}")
        if k.shape != w.shape or not bool((k > 0).all()):
            raise ValueError(f"stds: expected {w.numel()} positive standard deviations, got {k.tolist()}")
        self.log_w = torch.log(w / w.sum())
        self.means, self.stds = m, k
        self.schedule = check_schedule(schedule)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def log_posterior(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``log p(c | x_t = x)`` at explicit per-sample ``α``, ``σ`` ``[B]`` (``α = 1, σ = 0``: the
        clean-data posterior ``p(c | x0)``)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape [B, {self.dim}], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        x = x.to(torch.float64)
        dev = x.device
        a = torch.as_tensor(alpha, dtype=torch.float64, device=dev).reshape(-1, 1, 1)
        s = torch.as_tensor(sigma, dtype=torch.float64, device=dev).reshape(-1, 1)
        var = a[:, :, 0] ** 2 * self.stds.to(dev)[None] ** 2 + s ** 2  # [B, K]
        r2 = ((x[:, None, :] - a * self.means.to(dev)[None]) ** 2).sum(-1)
        logits = self.log_w.to(dev)[None] - 0.5 * (r2 / var + self.dim * torch.log(var))
        return logits.log_softmax(-1)

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).to(x.device).reshape(-1)
        v = self.schedule.eval(t.expand(x.shape[0]) if t.numel() == 1 else t)
        return self.log_posterior(x, v.alpha, v.sigma)
