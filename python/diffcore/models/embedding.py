"""Time and label embeddings shared by the networks in :mod:`diffcore.models`.

The model contract (docs/design.md, "Model contract"): ``net(x, t, labels=None)`` with ``t`` a
``[B]`` tensor of the schedule's continuous diffusion time. That time lives on very different scales:
``t ∈ [0, 1]`` for VP / sub-VP / cosine / rectified-flow / trig schedules, ``t = σ ∈ [0.002, 80]`` for
EDM. A sinusoidal code needs its argument on a known scale, so the embedding first maps ``t`` through
a *time transform* ``c = τ(t)`` chosen by the user, then embeds ``c``:

- ``"identity"``: ``c = t`` (schedules on ``[0, 1]``);
- ``"log"`` (alias ``"edm"``): ``c = ¼ ln t``, EDM's ``c_noise`` (Karras et al. 2022, App. D.6 of the
  book), which maps ``σ ∈ [0.002, 80]`` to ``c ∈ [−1.55, 1.10]``; ``t`` is clamped
  below at ``1e−5`` (``c = −2.88``) because a sampler may evaluate the model at ``σ = 0``;
- any callable ``t ↦ c`` (elementwise).

Both named transforms put ``c`` in a range of width ≈ 1–3, so one frequency band serves both: the
sinusoidal code uses angular frequencies spaced geometrically from 1 to ``max_freq`` (default 1000,
the resolution DDPM's integer-step embedding has on ``t ∈ [0, 1]``): the lowest frequency is
monotone over the whole range, the highest separates times ``1/max_freq`` apart.
:func:`time_transform_for` picks the transform from a schedule (``"log"`` when its time is unbounded,
i.e. ``t`` is a noise level). Exception: a loss with EDM preconditioning (``diffcore.losses`` with
``prediction="edm"``, and :class:`~diffcore.param.ModelWrapper` at sampling time) already calls the
network with ``c_noise = ¼ ln σ`` instead of ``t`` — use ``"identity"`` there.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import nn

__all__ = ["TimeEmbedding", "LabelEmbedding", "activation", "time_transform_for"]

_LOG_FLOOR = 1e-5

_ACTIVATIONS = {
    "silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "elu": nn.ELU,
    "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU, "mish": nn.Mish,
}


def activation(spec: Union[str, Callable[[], nn.Module]]) -> nn.Module:
    """A fresh activation module from a name (``silu``, ``relu``, ``gelu``, ``tanh``, ``elu``,
    ``softplus``, ``leaky_relu``, ``mish``) or a module class / factory."""
    if isinstance(spec, str):
        try:
            return _ACTIVATIONS[spec.lower()]()
        except KeyError:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {spec!r}") from None
    if callable(spec):
        mod = spec()
        if not isinstance(mod, nn.Module):
            raise TypeError(f"activation: a factory must return an nn.Module, got {type(mod).__name__}")
        return mod
    raise TypeError(f"activation: expected a name or an nn.Module class, got {type(spec).__name__}")


def time_transform_for(schedule) -> str:
    """``"log"`` for schedules whose time is a noise level on an unbounded range (EDM: ``t = σ``),
    ``"identity"`` for schedules on a bounded interval (VP, VE, rectified flow, trig, ...)."""
    from .. import schedules as _schedules  # noqa: PLC0415  (models sit above schedules in the layers)

    s = _schedules.get(schedule)
    return "log" if not math.isfinite(float(s.t_max)) or float(s.t_max) > 10.0 else "identity"


def _transform(spec):
    if callable(spec) and not isinstance(spec, str):
        return spec, "callable"
    if not isinstance(spec, str):
        raise TypeError(f"time_transform: expected 'identity', 'log' or a callable, got {type(spec).__name__}")
    name = spec.lower()
    if name == "identity":
        return (lambda t: t), name
    if name in ("log", "edm"):
        return (lambda t: 0.25 * torch.log(t.clamp_min(_LOG_FLOOR))), "log"
    raise ValueError(f"time_transform: expected 'identity', 'log' (alias 'edm') or a callable, got {spec!r}")


class TimeEmbedding(nn.Module):
    """``t [B] → [B, dim]``: ``c = τ(t)`` (module docstring), then a sinusoidal or random-Fourier code.

    Args:
        dim: output width (even).
        kind: ``"sinusoidal"`` — ``[sin(ω_k c), cos(ω_k c)]`` with ``ω_k`` geometric from 1 to
            ``max_freq`` (Vaswani et al. / DDPM positional code); ``"fourier"`` — Gaussian random
            features ``[sin(2π b_k c), cos(2π b_k c)]``, ``b_k ~ N(0, fourier_scale²)`` (Tancik et al.
            2020, the NCSN++ embedding), drawn from a private generator seeded by ``seed`` so building
            a model does not consume the global RNG.
        time_transform: ``"identity"``, ``"log"``/``"edm"`` or a callable (module docstring).
    """

    def __init__(self, dim: int, kind: str = "sinusoidal", time_transform: Union[str, Callable] = "identity",
                 max_freq: float = 1000.0, fourier_scale: float = 16.0, seed: int = 0):
        super().__init__()
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim: expected an even int >= 2, got {dim!r}")
        if not (max_freq >= 1.0 and math.isfinite(max_freq)):
            raise ValueError(f"max_freq: expected a finite number >= 1, got {max_freq!r}")
        self.dim = dim
        self.kind = kind
        self.transform, self.transform_name = _transform(time_transform)
        half = dim // 2
        if kind == "sinusoidal":
            freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half, dtype=torch.float64))
        elif kind == "fourier":
            if not fourier_scale > 0:
                raise ValueError(f"fourier_scale: expected a positive number, got {fourier_scale!r}")
            g = torch.Generator().manual_seed(int(seed))
            freqs = 2 * math.pi * fourier_scale * torch.randn(half, generator=g, dtype=torch.float64)
        else:
            raise ValueError(f"kind: expected 'sinusoidal' or 'fourier', got {kind!r}")
        # a buffer (saved with the model, moved by .to()) in float32: the code is bounded, precision is
        # ample; a model converted with .double() computes it in float64 (JVPs in t need that)
        self.register_buffer("freqs", freqs.float(), persistent=True)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        c = self.transform(t.to(self.freqs.dtype))
        arg = c[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class LabelEmbedding(nn.Module):
    """Class labels → ``[B, dim]`` through a table of ``num_classes + 1`` rows; the last row
    (``null_label == num_classes``) is the "no label" token used by classifier-free guidance
    (book §8.3.2): ``labels=None`` means every sample is unconditional."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.null_label = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
        if labels is None:
            labels = torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        elif not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16,
                                                                             torch.uint8, torch.int8):
            raise TypeError(f"labels: expected an integer tensor [B], got "
                            f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
        elif labels.shape != (batch,):
            raise ValueError(f"labels: expected shape ({batch},), got {tuple(labels.shape)}")
        labels = labels.long()
        # bounds are checked on the host only off-GPU: on CUDA nn.Embedding raises a device assert itself
        if labels.device.type == "cpu" and labels.numel() and (int(labels.min()) < 0
                                                              or int(labels.max()) > self.null_label):
            raise ValueError(f"labels: expected values in [0, {self.num_classes}] ({self.num_classes} = null label), "
                             f"got range [{int(labels.min())}, {int(labels.max())}]")
        return self.table(labels)
