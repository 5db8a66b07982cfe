"""``diffcore.load(path)``: a ``diffcore train`` checkpoint as a model that knows how to be sampled.

A checkpoint written by ``diffcore train`` stores how its dataset, network and loss were built; the
loss fixes the schedule and the prediction type the network was trained for (its regression target,
book Eq. (6.2.5)), so nothing has to be restated to sample it::

    m = diffcore.load("runs/moons/checkpoint.pt")
    xs = m.sample(2000, solver="heun", steps=10)               # from the prior, seeded
    xs = diffcore.sample(m, x_T, m.schedule, solver="heun")    # or any diffcore.sample call

The returned :class:`LoadedModel` is a :class:`~diffcore.ModelWrapper`, so :func:`diffcore.sample`
(and everything else that takes one) reads its prediction type from it instead of from an argument.
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Union

import torch

from ._device import as_device
from .param import ModelWrapper

__all__ = ["load", "LoadedModel"]


class LoadedModel(ModelWrapper):
    """A trained network with its schedule and prediction type (a :class:`~diffcore.ModelWrapper`).

    Attributes: ``net`` (the ``nn.Module``, in eval mode), ``schedule``, ``prediction``, ``loss`` (the
    rebuilt loss object), ``data_shape`` (one sample's shape), ``step`` (the training step of the
    weights), ``config`` (the build configuration stored by ``diffcore train``), ``device``.
    """

    def __init__(self, net: torch.nn.Module, loss, data_shape, step: int, config: dict, device: torch.device):
        inner = loss.sampling_model(net)
        if isinstance(inner, ModelWrapper):  # EDM preconditioning: the wrapper already predicts x0
            super().__init__(lambda x, t, **kw: inner(x, t, target="x0", **kw), loss.schedule, prediction="x0")
        else:
            super().__init__(inner, loss.schedule, prediction=loss.prediction)
        self.net, self.loss, self.data_shape = net, loss, tuple(data_shape)
        self.step, self.config, self.device = int(step), dict(config), device

    def __repr__(self) -> str:
        return (f"LoadedModel({type(self.net).__name__}, schedule={self.schedule!r}, prediction={self.prediction!r}, "
                f"data_shape={self.data_shape}, step={self.step})")

    def prior_sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` draws of the starting distribution (the loss's own prior where it has one)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive number of samples, got {n!r}")
        g = torch.Generator(self.device).manual_seed(int(seed))
        shape = (n, *self.data_shape)
        if callable(getattr(self.loss, "prior_sample", None)):
            return self.loss.prior_sample(shape, generator=g, device=self.device)
        from .sample import prior_sample  # noqa: PLC0415

        return prior_sample(self.schedule, shape, generator=g, device=self.device)

    @torch.no_grad()
    def sample(self, n: int, solver: str = "heun", steps: int = 20, seed: int = 0,
               labels: Optional[torch.Tensor] = None, guidance=None, **options) -> torch.Tensor:
        """``n`` samples through :func:`diffcore.sample` from a prior draw seeded by ``seed``; ``labels``
        ``(n,)`` for a class-conditional network, ``guidance`` e.g. :class:`diffcore.CFG`."""
        from .sample import sample as _sample  # noqa: PLC0415

        x = self.prior_sample(n, seed)
        kwargs = None
        if labels is not None:
            if getattr(self.net, "num_classes", None) is None:
                raise ValueError("labels: the model is unconditional")
            kwargs = {"labels": torch.as_tensor(labels, device=self.device)}
        return _sample(self, x, self.schedule, solver=solver, steps=steps, model_kwargs=kwargs, guidance=guidance,
                       seed=int(seed), **options)


def load(path: Union[str, os.PathLike], *, ema: bool = True,
         device: Union[str, torch.device, None] = None) -> LoadedModel:
    """Load a ``diffcore train`` checkpoint (the EMA weights unless ``ema=False``) onto ``device``
    (default: CUDA when available) as a ready-to-sample :class:`LoadedModel`.

    Raises :class:`diffcore.train.CheckpointError` naming the file when it is damaged, was not written
    by ``diffcore train`` (a :class:`~diffcore.train.Trainer` run from Python stores no build
    configuration: rebuild that trainer and call ``Trainer.load(path).sample(...)``), or its weights do
    not fit the network it describes.
    """
    from . import models  # noqa: PLC0415
    from .cli import build_data, build_loss  # noqa: PLC0415
    from .train import checkpoint  # noqa: PLC0415

    if ema not in (True, False):
        raise TypeError(f"ema: expected True or False, got {ema!r}")
    device = as_device(device or ("cuda" if torch.cuda.is_available() else "cpu"), "device")
    path = pathlib.Path(path)
    state = checkpoint.load(path, map_location="cpu")
    cfg = state.get("config") or {}
    if "loss" not in cfg or "data" not in cfg or state.get("model_config") is None:
        raise checkpoint.CheckpointError(path, "was not written by `diffcore train` (no build config); "
                                               "sample it from Python with Trainer.load(...).sample(...)")
    net = models.from_config(state["model_config"])
    try:
        net.load_state_dict(state["ema"]["module"] if ema else state["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise checkpoint.CheckpointError(path, f"its weights do not fit the model it describes ({e})") from None
    net.to(device).eval()
    loss = build_loss(cfg["loss"]["name"], cfg["loss"].get("schedule"), cfg["loss"].get("options"))
    dataset = build_data(cfg["data"]["name"], cfg["data"].get("options"))
    return LoadedModel(net, loss, dataset.shape, state.get("step", 0), cfg, device)
