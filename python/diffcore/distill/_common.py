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
