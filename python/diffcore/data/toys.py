"""2-D toy distributions as seeded samplers (our own code; no sklearn).

Each is a :class:`~diffcore.data.base.Sampler`: ``sample(n, generator=None, return_labels=False)``
draws on the generator's device, and every class has a label (which moon, which Gaussian, which
square, which arm) for class-conditional experiments. All are scaled to a spread of a few units, the
range the unit-variance noise of the diffusion prior matches.
"""
from __future__ import annotations

import math

import torch

from .. import oracles
from .base import Sampler

__all__ = ["TwoMoons", "EightGaussians", "Checkerboard", "Spirals"]


def _positive(name, v, allow_zero=False):
    bad_type = isinstance(v, bool) or not isinstance(v, (int, float))
    if bad_type or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")
    return float(v)


class TwoMoons(Sampler):
    """Two interleaved half circles (labels 0 = upper, 1 = lower).

    In unit coordinates the upper moon is ``(cos s, sin s)`` and the lower one
    ``(1 − cos s, 0.5 − sin s)`` with ``s ~ U[0, π]`` (each moon with probability ½), plus isotropic
    Gaussian noise of std ``noise``; the result is centred at ``(0.5, 0.25)`` and multiplied by
    ``scale``: ``x = scale · (p + noise·z − (0.5, 0.25))``.
    """

    num_classes = 2
    center = (0.5, 0.25)

    def __init__(self, noise: float = 0.05, scale: float = 2.0):
        self.noise = _positive("noise", noise, allow_zero=True)
        self.scale = _positive("scale", scale)

    def _draw(self, n, generator, device, dtype):
        y = torch.randint(0, 2, (n,), generator=generator, device=device)
        s = torch.rand(n, generator=generator, device=device, dtype=torch.float64) * math.pi
        z = torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)
        lower = (y == 1).to(torch.float64)
        px = torch.cos(s) + lower * (1 - 2 * torch.cos(s))          # lower: 1 − cos s
        py = torch.sin(s) + lower * (0.5 - 2 * torch.sin(s))        # lower: 0.5 − sin s
        p = torch.stack([px - self.center[0], py - self.center[1]], dim=1) + self.noise * z
        return (self.scale * p).to(dtype), y

    def __repr__(self) -> str:
        return f"TwoMoons(noise={self.noise}, scale={self.scale})"


class EightGaussians(Sampler):
    """``k`` (default 8) equal-weight isotropic Gaussians of std ``std`` with means
    ``radius · (cos 2πj/k, sin 2πj/k)``; the label is the component ``j``. :attr:`oracle` is the same
    distribution as a :class:`diffcore.oracles.GaussianMixture` (exact densities and denoisers)."""

    def __init__(self, radius: float = 2.0, std: float = 0.2, k: int = 8):
        self.radius = _positive("radius", radius)
        self.std = _positive("std", std)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        self.k = self.num_classes = k

    @property
    def means(self) -> torch.Tensor:
        ang = torch.arange(self.k, dtype=torch.float64) * (2 * math.pi / self.k)
        return self.radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)

    @property
    def oracle(self) -> "oracles.GaussianMixture":
        return oracles.GaussianMixture.ring2d(self.k, self.radius, self.std)

    def _draw(self, n, generator, device, dtype):
        y = torch.randint(0, self.k, (n,), generator=generator, device=device)
        z = torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)
        return (self.means.to(device)[y] + self.std * z).to(dtype), y

    def __repr__(self) -> str:
        return f"EightGaussians(radius={self.radius}, std={self.std}, k={self.k})"


class Checkerboard(Sampler):
    """Uniform on the black squares of a ``size × size`` board of side-``square`` squares centred at 0:
    square ``(i, j)`` (column ``i``, row ``j``, counted from the lower left) is black when ``i + j``
    is even. ``size`` must be even, so half the squares (``size²/2``, the labels, numbered row-major
    over black squares) carry all the mass and both coordinates are marginally uniform on
    ``[−size·square/2, size·square/2]``."""

    def __init__(self, size: int = 4, square: float = 1.0):
        if not isinstance(size, int) or isinstance(size, bool) or size < 2 or size % 2:
            raise ValueError(f"size: expected an even int >= 2, got {size!r}")
        self.size = size
        self.square = _positive("square", square)
        self.num_classes = size * size // 2

    def _draw(self, n, generator, device, dtype):
        k = self.size
        col = torch.randint(0, k, (n,), generator=generator, device=device)
        half_row = torch.randint(0, k // 2, (n,), generator=generator, device=device)
        row = 2 * half_row + (col % 2)  # the rows j with (col + j) even
        u = torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)
        cell = torch.stack([col, row], dim=1).to(torch.float64)
        x = (cell + u - k / 2) * self.square
        return x.to(dtype), row * (k // 2) + col // 2

    def __repr__(self) -> str:
        return f"Checkerboard(size={self.size}, square={self.square})"


class Spirals(Sampler):
    """Two interleaved Archimedean spirals (labels = arm). Arm ``a`` at parameter ``θ = turns·2π·√u``,
    ``u ~ U[0, 1]`` (density ∝ θ, i.e.
    close to uniform along the arc, whose length element is ≈ r dθ), lies at radius ``r = radius·θ/(2π·turns)`` and
    angle ``θ + aπ``, plus isotropic Gaussian noise of std ``noise``."""

    num_classes = 2

    def __init__(self, turns: float = 1.5, radius: float = 3.0, noise: float = 0.08):
        self.turns = _positive("turns", turns)
        self.radius = _positive("radius", radius)
        self.noise = _positive("noise", noise, allow_zero=True)

    def _draw(self, n, generator, device, dtype):
        y = torch.randint(0, 2, (n,), generator=generator, device=device)
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        z = torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)
        theta = self.turns * 2 * math.pi * torch.sqrt(u)
        r = self.radius * theta / (2 * math.pi * self.turns)
        ang = theta + math.pi * y.to(torch.float64)
        x = torch.stack([r * torch.cos(ang), r * torch.sin(ang)], dim=1) + self.noise * z
        return x.to(dtype), y

    def __repr__(self) -> str:
        return f"Spirals(turns={self.turns}, radius={self.radius}, noise={self.noise})"
