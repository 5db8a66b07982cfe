"""The common base of the networks in :mod:`diffcore.models`: the ``net(x, t, labels=None)`` contract.

- ``x``: ``[B, *S]``; the output has the same shape (a prediction of the kind the loss trains: ε, x0,
  velocity, ...).
- ``t``: ``[B]`` continuous diffusion time of the schedule (a 0-d tensor or a Python number is
  broadcast to the batch for convenience); it is embedded through the model's time transform
  (:mod:`diffcore.models.embedding`).
- ``labels``: ``None`` or an integer ``[B]`` tensor in ``[0, num_classes]``; ``num_classes`` itself
  is ``null_label``, the unconditional token of classifier-free guidance. An unconditional model
  (``num_classes=None``) rejects labels.

Every network keeps the keyword arguments it was built with in ``config`` (plus its registry name
under ``"name"``), so :func:`diffcore.models.from_config` rebuilds it from a checkpoint.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .embedding import LabelEmbedding

__all__ = ["Network"]


class Network(nn.Module):
    """Base class: validation of ``(x, t, labels)`` and the conditioning attributes."""

    name = "network"

    def __init__(self, num_classes: Optional[int], cond_dim: int):
        super().__init__()
        self.label_embedding = None if num_classes is None else LabelEmbedding(num_classes, cond_dim)

    @property
    def num_classes(self) -> Optional[int]:
        return None if self.label_embedding is None else self.label_embedding.num_classes

    @property
    def null_label(self) -> Optional[int]:
        return None if self.label_embedding is None else self.label_embedding.null_label

    def _times(self, x: torch.Tensor, t) -> torch.Tensor:
        B = x.shape[0]
        if not isinstance(t, torch.Tensor):
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise TypeError(f"t: expected a [B] tensor of times, got {type(t).__name__}")
            t = torch.tensor(float(t), device=x.device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t: expected shape ({B},) (one time per sample), got {tuple(t.shape)}")
        return t.to(x.device)

    def _condition(self, temb: torch.Tensor, labels, B: int, device) -> torch.Tensor:
        if self.label_embedding is None:
            if labels is not None:
                raise ValueError("labels: this model is unconditional (num_classes=None); build it with "
                                 "num_classes=K to condition on class labels")
            return temb
        return temb + self.label_embedding(labels, B, device).to(temb.dtype)
