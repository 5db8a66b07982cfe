"""Quality figures for 8×8 digits samples (the image-scale check of
guidance and few-step students): a small classifier trained on the clean train split of
:class:`~diffcore.data.Digits`, and three figures computed with it —

* class accuracy: the fraction of samples the classifier assigns to the label they were generated
  for (the CFG figure: it rises with the guidance scale ω, book §8.3.2);
* confidence: the mean classifier probability of that label;
* the Fréchet feature distance, an FID-like figure (Heusel et al. 2017) with the classifier's
  penultimate layer as the feature map instead of Inception:
  ``FD = ‖μ_a − μ_b‖² + tr(C_a + C_b − 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})``, the W2 distance between
  Gaussians fitted to the two feature sets.

The classifier is trained on the images with a little Gaussian noise (σ = ``noise``) so that it is
not brittle to the small off-manifold errors of generated samples.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = [
    "DigitsClassifier",
    "class_accuracy",
    "class_confidence",
    "digits_report",
    "feature_distance",
    "frechet_distance",
    "train_digits_classifier",
]


class DigitsClassifier(nn.Module):
    """A two-hidden-layer SiLU MLP on the flattened 8×8 image; :meth:`features` is its penultimate
    layer (the feature map of :func:`feature_distance`)."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.head = nn.Linear(width, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(_images(x, "x"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _images(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x[0].numel() != 64:
        raise ValueError(f"{name}: expected digits images [n, 1, 8, 8] (or [n, 64]), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.reshape(x.shape[0], 64).float()


def train_digits_classifier(seed: int = 0, steps: int = 600, batch_size: int = 256, lr: float = 1e-2,
                            noise: float = 0.1, width: int = 128) -> DigitsClassifier:
    """A :class:`DigitsClassifier` trained with Adam on ``Digits("train")`` (cross-entropy, images
    perturbed by N(0, noise²)); returned in eval mode with frozen weights. Deterministic given ``seed``
    (and the thread count). About 2 s on one CPU thread."""
    from ..data import Digits

    for name, v in (("steps", steps), ("batch_size", batch_size), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if not noise >= 0:
        raise ValueError(f"noise: expected a non-negative standard deviation, got {noise!r}")
    data = Digits("train")
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        clf = DigitsClassifier(width)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=g)
        x = data.x[idx] + noise * torch.randn(data.x[idx].shape, generator=g)
        loss = nn.functional.cross_entropy(clf(x), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval().requires_grad_(False)


def _probs(samples, labels, classifier):
    x = _images(samples, "samples")
    labels = torch.as_tensor(labels)
    if labels.shape != (x.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(f"labels: expected [{x.shape[0]}] integer class labels, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    with torch.no_grad():
        return classifier(x.clamp(-1.0, 1.0)).softmax(dim=1), labels.long()


def class_accuracy(samples: torch.Tensor, labels: torch.Tensor, classifier: nn.Module) -> float:
    """Fraction of ``samples`` (clamped to the data range [−1, 1]) classified as their ``labels``."""
    p, y = _probs(samples, labels, classifier)
    return float((p.argmax(dim=1) == y).double().mean())


def class_confidence(samples: torch.Tensor, labels: torch.Tensor, classifier: nn.Module) -> float:
    """Mean classifier probability of each sample's own label."""
    p, y = _probs(samples, labels, classifier)
    return float(p.gather(1, y[:, None]).double().mean())


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """W2² between the Gaussians fitted to feature sets ``a [n, D]`` and ``b [m, D]`` (float64):
    ``‖μ_a − μ_b‖² + tr C_a + tr C_b − 2 tr (C_a^{1/2} C_b C_a^{1/2})^{1/2}`` (unbiased covariances)."""
    for name, f in (("a", a), ("b", b)):
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name}: expected a feature matrix [n >= 2, D]")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a, b: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    a, b = a.double(), b.double()
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ra = _sqrtm_psd(ca)
    cross = torch.linalg.eigvalsh(ra @ cb @ ra).clamp(min=0).sqrt().sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + ca.trace() + cb.trace() - 2.0 * cross)


def feature_distance(samples: torch.Tensor, reference: torch.Tensor, classifier: DigitsClassifier) -> float:
    """:func:`frechet_distance` of the classifier features of ``samples`` and ``reference`` images."""
    with torch.no_grad():
        fa = classifier.features(_images(samples, "samples").clamp(-1.0, 1.0))
        fb = classifier.features(_images(reference, "reference"))
    return frechet_distance(fa, fb)


def digits_report(samples: torch.Tensor, labels: torch.Tensor, classifier: DigitsClassifier,
                  reference: Optional[torch.Tensor] = None) -> dict:
    """``{"acc", "conf", "fd"?}``: :func:`class_accuracy`, :func:`class_confidence` and, with
    ``reference`` images (e.g. ``Digits("test").x``), :func:`feature_distance`."""
    out = {"acc": class_accuracy(samples, labels, classifier), "conf": class_confidence(samples, labels, classifier)}
    if reference is not None:
        out["fd"] = feature_distance(samples, reference, classifier)
    return out
