"""Classifier-free guidance as a model wrapper (book §8.3.2, Eq. (8.3.3)):

    guided = uncond + ω·(cond − uncond)

with the conditional and unconditional branches batched into one model call. ω = 1 is the
conditional model, ω = 0 the unconditional one. Because every prediction-type conversion is affine
with weights that do not depend on the output, guiding ε̂, x̂, v̂ or ŝ gives the same sampler.
Papers that write ``cond + w·(cond − uncond)`` use ``w = ω − 1``: :meth:`CFG.from_w`.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

import torch

__all__ = ["CFG"]


def _cat(name: str, a, b):
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.dim() == 0 or b.dim() == 0 or a.shape != b.shape:  # one entry per sample in both branches
            raise ValueError(f"uncond[{name!r}]: shape {tuple(b.shape)} does not match the conditional {tuple(a.shape)}")
        return torch.cat([a, b])
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        raise TypeError(f"uncond[{name!r}]: a tensor argument needs a tensor in both branches")
    if a is not b and a != b:
        raise ValueError(f"uncond[{name!r}]: non-tensor arguments must be equal in both branches")
    return a


class CFG:
    """Classifier-free guidance with scale ``omega``.

    Args:
        omega: guidance scale ω (1: conditional model, 0: unconditional).
        uncond: keyword arguments of the unconditional branch, overriding the sampler's
            ``model_kwargs`` (e.g. ``{"y": null_labels}``); every tensor argument is concatenated with
            its conditional counterpart along the batch dimension.
    """

    def __init__(self, omega: float, uncond: Optional[dict] = None):
        if not isinstance(omega, numbers.Real) or isinstance(omega, bool):
            raise TypeError(f"omega: expected a number, got {omega!r}")
        if not math.isfinite(omega):  # NaN/inf would turn every guided prediction into NaN silently
            raise ValueError(f"omega: expected a finite guidance scale, got {omega!r}")
        if uncond is not None and not isinstance(uncond, dict):
            raise TypeError(f"uncond: expected a dict of model keyword arguments, got {type(uncond).__name__}")
        self.omega = float(omega)
        self.uncond = dict(uncond or {})

    @classmethod
    def from_w(cls, w: float, uncond: Optional[dict] = None) -> "CFG":
        """Guidance written ``cond + w·(cond − uncond)`` (Ho & Salimans' w): ω = w + 1."""
        if not isinstance(w, numbers.Real) or isinstance(w, bool):
            raise TypeError(f"w: expected a number, got {w!r}")
        if not math.isfinite(w):
            raise ValueError(f"w: expected a finite guidance weight, got {w!r}")
        return cls(float(w) + 1.0, uncond)

    def __repr__(self) -> str:
        return f"CFG(omega={self.omega}, uncond={sorted(self.uncond)})"

    def wrap(self, model: Callable, model_kwargs: Optional[dict] = None) -> Callable:
        """``guided(x, t)``: one batched call of ``model`` on ``[x; x]`` with conditional and
        unconditional keyword arguments stacked."""
        cond = dict(model_kwargs or {})
        if self.omega == 1.0:
            return lambda x, t: model(x, t, **cond)
        keys = set(cond) | set(self.uncond)
        kw = {k: _cat(k, cond.get(k), self.uncond.get(k, cond.get(k))) for k in keys}
        omega = self.omega

        batched = {k: v.shape[0] // 2 for k, v in kw.items() if isinstance(v, torch.Tensor)}

        def guided(x, t):
            for k, n in batched.items():  # shapes only: no device sync
                if n != x.shape[0]:
                    raise ValueError(f"model_kwargs[{k!r}]: {n} rows for a batch of {x.shape[0]} samples")
            out = model(torch.cat([x, x]), torch.cat([t, t]), **kw)
            c, u = out.chunk(2)
            return torch.lerp(u, c, omega)

        return guided
