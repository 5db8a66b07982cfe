"""Dynamic thresholding of data predictions (book §9.5.2 names it, formula from
Saharia et al. 2022): per sample, ``s = max(quantile(|x̂|, p), c)``, ``x̂ ← clip(x̂, −s, s)/s``.

The output always lies in ``[−1, 1]``; with the default ``c = 1`` the operation is the identity
whenever ``max|x̂| ≤ 1``.
"""
from __future__ import annotations

import torch

__all__ = ["dynamic_threshold", "static_threshold"]


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding of ``x0`` (``[B, *S]``) with percentile ``ratio`` and floor ``max_value``."""
    if not isinstance(x0, torch.Tensor) or x0.dim() < 1:
        raise TypeError("x0: expected a torch tensor with a batch dimension")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a number in (0, 1], got {ratio!r}")
    if not max_value > 0:
        raise ValueError(f"max_value: expected a positive number, got {max_value!r}")
    B = x0.shape[0]
    flat = x0.reshape(B, -1)
    compute = flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat
    s = torch.quantile(compute.abs(), ratio, dim=1)
    s = torch.clamp(s, min=max_value).reshape((B,) + (1,) * (x0.dim() - 1)).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def static_threshold(x0: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Static thresholding: ``clip(x0, −max_value, max_value)``."""
    return x0.clamp(-max_value, max_value)
