"""A diffusers network (``UNet2DModel``, ``UNet2DConditionModel``, a transformer) as a diffcore network.

diffcore's model contract is ``net(x, t, labels=None) -> tensor`` with ``t`` the continuous diffusion
time in [0, 1]; a diffusers model is ``model(sample, timestep, ...) -> UNet2DOutput`` whose ``timestep``
is on diffusers' scale: the training index 0..N−1 of a discrete DDPM schedule, and ``1000·t`` (= 1000·σ)
for flow-matching models (SD3, Flux). :func:`from_diffusers` maps the time and unwraps ``.sample``, so
the same module trains under :class:`diffcore.train.Trainer` and samples with :func:`diffcore.sample`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["from_diffusers", "DiffusersNet"]


class DiffusersNet(nn.Module):
    """``net(x, t, labels=None)`` around a diffusers model; see :func:`from_diffusers`."""

    def __init__(self, model: nn.Module, schedule=None, time_scale: Optional[float] = None):
        super().__init__()
        self.model = model
        cfg = getattr(model, "config", {})
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        self.in_channels = get("in_channels", None)
        self.num_classes = get("num_class_embeds", None)
        self.null_label = None if self.num_classes is None else self.num_classes - 1
        self.schedule = schedule
        self.to_index = time_scale is None and hasattr(schedule, "t_to_index")
        self.time_scale = 1000.0 if time_scale is None else float(time_scale)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The ``timestep`` diffusers' model was trained with at diffcore time ``t``: on a discrete VP
        schedule its training index ``N·t − 1`` (``VPDiscrete.t_to_index``: ``t = 1`` is index 999),
        else ``time_scale·t``."""
        if self.to_index:
            return self.schedule.t_to_index(t)
        return t * self.time_scale

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None, **kwargs):
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if labels is not None:
            kwargs["class_labels"] = labels
        out = self.model(x, self.model_time(t).to(x.dtype), **kwargs)
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out


def from_diffusers(model: nn.Module, schedule=None, time_scale: Optional[float] = None) -> DiffusersNet:
    """Wrap a diffusers model so that it follows diffcore's contract ``net(x, t, labels=None) -> tensor``.

    Args:
        model: a diffusers model returning an output with ``.sample`` (``UNet2DModel``,
            ``UNet2DConditionModel``, ``SD3Transformer2DModel``, ...) or a tuple (``return_dict=False``).
        schedule: the diffcore schedule the model is (or will be) trained on. A discrete VP schedule
            (:class:`~diffcore.schedules.VPDiscrete`, what a diffusers DDPM config maps to) hands the
            model its training index ``N·t − 1``, as diffusers' schedulers do; any other schedule hands
            it ``time_scale·t``.
        time_scale: the factor for continuous schedules (default 1000: diffusers' convention, e.g.
            ``1000·σ`` for flow-matching transformers).

    ``labels`` are passed as ``class_labels`` (a ``UNet2DModel`` with ``num_class_embeds``; the last
    class is then the null label for classifier-free guidance). Extra keyword arguments (e.g.
    ``encoder_hidden_states``) go to the model unchanged.
    """
    from ..schedules import get as _get_schedule  # noqa: PLC0415

    if not isinstance(model, nn.Module) or not callable(model):
        raise TypeError(f"model: expected a diffusers model (an nn.Module), got {type(model).__name__}")
    if schedule is not None:
        schedule = _get_schedule(schedule)
    if time_scale is not None and (isinstance(time_scale, bool) or not isinstance(time_scale, (int, float))
                                   or not 0 < time_scale < float("inf")):
        raise ValueError(f"time_scale: expected a positive finite number, got {time_scale!r}")
    return DiffusersNet(model, schedule, time_scale)
