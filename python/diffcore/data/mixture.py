"""The Gaussian-mixture oracle (:class:`diffcore.oracles.GaussianMixture`) as a training dataset.

Training on data whose exact denoiser, score, velocity and density are known lets a test compare a
trained network with the optimum it should approach (:mod:`diffcore.oracles`).
"""
from __future__ import annotations

import torch

from .. import oracles
from .base import Sampler

__all__ = ["MixtureData"]


class MixtureData(Sampler):
    """Samples of a Gaussian mixture; the label of a sample is its component index.

    Args:
        mixture: a :class:`diffcore.oracles.GaussianMixture` (``oracle`` keeps it for exact evaluation).
    """

    def __init__(self, mixture: "oracles.GaussianMixture"):
        if not isinstance(mixture, oracles.GaussianMixture):
            raise TypeError(f"mixture: expected a diffcore.oracles.GaussianMixture, got {type(mixture).__name__}")
        self.oracle = mixture
        self.shape = (mixture.dim,)
        self.num_classes = mixture.n_components
        # component k = μ_k + L_k z with Σ_k = L_k L_kᵀ; the factors once, in float64
        self._chol = torch.linalg.cholesky(mixture.covs)
        self._means = mixture.means
        self._weights = mixture.weights

    def _draw(self, n, generator, device, dtype):
        w, mu, L = (a.to(device) for a in (self._weights, self._means, self._chol))
        y = torch.multinomial(w, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long, device=device)
        z = torch.randn(n, mu.shape[1], generator=generator, device=device, dtype=torch.float64)
        x = mu[y] + torch.einsum("nde,ne->nd", L[y], z)
        return x.to(dtype), y

    def __repr__(self) -> str:
        return f"MixtureData({self.oracle!r})"
