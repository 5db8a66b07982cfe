"""Sample-quality metrics used by the demo, the tests and the benchmarks."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

__all__ = ["sliced_wasserstein", "ks_statistic"]


def sliced_wasserstein(x, y, n_projections: int = 256, p: int = 2, generator: Optional[torch.Generator] = None,
                       projections: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Monte-Carlo sliced p-Wasserstein distance between two equal-size point clouds ``x, y: (n, D)``.

    ``SW_p(x, y) = (E_θ W_p^p(θᵀx, θᵀy))^{1/p}`` with θ uniform on the sphere; each 1-D distance is
    exact for equal-size uniform samples (sorted matching: the 1-D optimal plan is monotone; Peyré & Cuturi
    2019, "Computational Optimal Transport"). Pass ``projections``
    ``(P, D)`` (unit rows) to reuse directions across calls.
    """
    x, y = _points(x, "x"), _points(y, "y")
    if x.dim() != 2 or y.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"x, y: expected two (n, D) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x, y: expected at least one point")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 1 <= p < math.inf:
        raise ValueError(f"p: expected a finite p >= 1, got {p!r}")
    if x.device.type == "cpu" and y.device.type == "cpu":  # a NaN would make the distance NaN silently
        for name, v in (("x", x), ("y", y)):
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name}: contains NaN or inf")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if projections is None:
        if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
            raise ValueError(f"n_projections: expected a positive int, got {n_projections!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        theta = torch.randn(n_projections, x.shape[1], generator=generator, dtype=torch.float64)
        theta = theta / theta.norm(dim=1, keepdim=True)
    else:
        theta = torch.as_tensor(projections, dtype=torch.float64)
        if theta.dim() != 2 or theta.shape[1] != x.shape[1] or theta.shape[0] == 0:
            raise ValueError(f"projections: expected shape (P, {x.shape[1]}) with P >= 1, got {tuple(theta.shape)}")
        norms = theta.norm(dim=1)
        if not bool(((norms - 1).abs() <= 1e-6).all()):  # other lengths rescale the distance (0 hides it)
            raise ValueError("projections: expected unit rows (directions on the sphere), got row norms in "
                             f"[{float(norms.min())}, {float(norms.max())}]")
    theta = theta.to(device=x.device, dtype=dtype)
    px = torch.sort(x.to(dtype) @ theta.T, dim=0).values
    py = torch.sort(y.to(dtype) @ theta.T, dim=0).values
    return ((px - py).abs() ** p).mean() ** (1.0 / p)


def _points(v, name: str) -> torch.Tensor:
    try:
        v = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: expected a tensor or an array of numbers, got {type(v).__name__}") from None
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"{name}: expected real values, got {v.dtype}")
    if not v.is_floating_point():
        v = v.to(torch.float64)  # integer points: sorting and means need a float
    return v


def ks_statistic(samples, cdf) -> float:
    """One-sample Kolmogorov–Smirnov distance ``D = sup_x |F_n(x) − F(x)|`` of 1-D ``samples`` against a
    CDF callable ``cdf`` (e.g. ``mixture.marginal_cdf``). Under the null, ``√n·D`` has the
    Kolmogorov distribution (99.9 % quantile ≈ 1.949)."""
    if not callable(cdf):
        raise TypeError(f"cdf: expected a callable CDF F(x), got {type(cdf).__name__}")
    x = _points(samples, "samples").to(torch.float64).reshape(-1)
    if x.numel() == 0:
        raise ValueError("samples: expected at least one value")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("samples: expected finite values")
    x = torch.sort(x).values
    n = x.numel()
    F = torch.as_tensor(cdf(x), dtype=torch.float64).reshape(-1)
    if F.shape != x.shape:
        raise ValueError(f"cdf: expected one value per sample ({n}), got {F.numel()}")
    if not bool(((F >= 0) & (F <= 1)).all()):  # NaN fails too
        raise ValueError("cdf: expected values in [0, 1] (a cumulative distribution function), got values in "
                         f"[{float(F.min())}, {float(F.max())}]")
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - F, F - (i - 1) / n).max())
