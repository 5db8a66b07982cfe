"""Small helpers shared by the distillation modules."""
from __future__ import annotations

import torch

from .. import schedules as _schedules


def sched(schedule) -> _schedules.Schedule:
    """A schedule object from an object or a name (``TypeError`` when missing)."""
    if schedule is None:
        raise TypeError("schedule: required (a diffcore Schedule or its name)")
    return _schedules.get(schedule)


def col(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values ``[B]`` as a column broadcasting against ``like`` ``[B, *S]``."""
    return c.to(device=like.device, dtype=like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def per_sample(v, like: torch.Tensor, name: str = "t") -> torch.Tensor:
    """A number or a ``[B]`` tensor as ``[B]`` values in ``like``'s dtype and device (times in the sample
    dtype: a float32 default would perturb α_t, σ_t of float64 computations)."""
    B = like.shape[0]
    if not isinstance(v, torch.Tensor) and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise TypeError(f"{name}: expected a number or a [B] = [{B}] tensor, got {type(v).__name__}")
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.dim() == 0:
        v = v.expand(B)
    if v.shape != (B,):
        raise ValueError(f"{name}: expected a scalar or a [B] = [{B}] tensor, got shape {tuple(v.shape)}")
    return v


def per_sample_weight(weight, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A time weight — ``None`` (1), a number, a ``[B]`` tensor or a callable ``w(t)`` — as ``[B]`` values."""
    if weight is None:
        return torch.ones(like.shape[0], dtype=like.dtype, device=like.device)
    w = weight(t) if (callable(weight) and not isinstance(weight, torch.Tensor)) else weight
    return per_sample(w, like, "weight")


class StepLoop:
    """``train(iters, batch_size)``: ``iters`` calls of the trainer's ``step(batch_size)``; returns
    ``self.history``."""

    def train(self, iters: int, batch_size: int = 256):
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise ValueError(f"iters: expected a non-negative int, got {iters!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        for _ in range(iters):
            self.step(batch_size)
        return self.history
