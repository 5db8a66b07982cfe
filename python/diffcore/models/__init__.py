"""Networks for the trainer: :class:`MLP` (low-dimensional data) and :class:`UNet` (8×8 – 32×32 images).

All follow the model contract ``net(x, t, labels=None) -> tensor shaped like x`` (docs/design.md,
"Model contract"; see :mod:`diffcore.models.base`), embed ``t`` through a documented time transform
(:mod:`diffcore.models.embedding`: ``"identity"`` for t ∈ [0, 1], ``"log"`` for EDM's σ), and are
optionally class-conditional with a null label for classifier-free guidance.

``get(name, **kwargs)`` builds one by name; ``from_config(model.config)`` rebuilds it.
"""
from __future__ import annotations

from .base import Network
from .embedding import LabelEmbedding, TimeEmbedding, activation, time_transform_for
from .mlp import MLP
from .unet import UNet
from .diffusers_adapter import DiffusersNet, from_diffusers

__all__ = ["Network", "MLP", "UNet", "from_diffusers", "DiffusersNet", "TimeEmbedding", "LabelEmbedding", "activation", "time_transform_for",
           "get", "from_config", "available"]

_REGISTRY = {"mlp": MLP, "unet": UNet}


def available() -> list:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> Network:
    """Build a network by name (``"mlp"``, ``"unet"``) with the class's keyword arguments."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name, got {type(name).__name__}")
    try:
        cls = _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"name: unknown model {name!r}; available: {available()}") from None
    return cls(**kwargs)


def from_config(config: dict) -> Network:
    """Rebuild a network from its ``config`` dict (``{"name": ..., **constructor kwargs}``); entries
    recorded as ``None`` because they were callables fall back to the defaults."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError("config: expected a dict with a 'name' entry (a model's .config)")
    kwargs = {k: v for k, v in config.items() if k != "name" and not (k in ("activation", "time_transform")
                                                                         and v is None)}
    return get(config["name"], **kwargs)
