"""Exponential moving average of a model's weights (Polyak averaging; the sampling weights of DDPM,
EDM and most diffusion training recipes).

``θ_ema ← d·θ_ema + (1 − d)·θ`` after every optimizer step. With ``warmup=True`` the decay at update
``k`` (1-based) is ``min(decay, (1 + k)/(10 + k))``, so early averages are not dominated by the random
initialisation (the schedule of ``tf.train.ExponentialMovingAverage`` with ``num_updates``).
Buffers (e.g. the frequencies of a time embedding) are copied, not averaged.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA copy of ``model`` (a separate ``nn.Module`` in eval mode, no gradients).

    Args:
        model: the trained module (unwrapped, not the DDP wrapper).
        decay: ``d`` in ``[0, 1)``; ``0`` keeps a plain copy of the latest weights.
        warmup: use the ``(1 + k)/(10 + k)`` ramp (module docstring).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._pairs = None

    def current_decay(self) -> float:
        """The decay the next update uses."""
        k = self.updates + 1
        return min(self.decay, (1 + k) / (10 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        if self._pairs is None or self._pairs[0] is not model:
            # the parameter lists once per model (walking the module tree costs more than the update)
            self._pairs = (model, list(self.module.parameters()), [p.detach() for p in model.parameters()],
                           list(self.module.buffers()), list(model.buffers()))
        _, ema_p, p, ema_b, b = self._pairs
        torch._foreach_lerp_(ema_p, p, 1.0 - d)  # ema += (1 − d)(p − ema), one multi-tensor kernel
        for be, bb in zip(ema_b, b):
            be.copy_(bb)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
