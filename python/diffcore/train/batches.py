"""Per-rank batch streams over the three dataset kinds of :mod:`diffcore.data.base`.

Each stream returns ``(x, labels or None)`` on the training device and has a small ``state_dict``
(epoch and position) so a resumed run continues with exactly the batch the uninterrupted run would
have drawn. The sampler stream has no state of its own: its draws come from the trainer's generator,
whose state the checkpoint stores.
"""
from __future__ import annotations

import torch

from .distributed import shard

__all__ = ["make_stream"]


class SamplerStream:
    def __init__(self, data, batch: int, generator: torch.Generator, labels: bool):
        self.data, self.batch, self.generator, self.labels = data, batch, generator, labels

    def next(self):
        out = self.data.sample(self.batch, generator=self.generator, return_labels=self.labels)
        return out if self.labels else (out, None)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TensorStream:
    """Epochs of seeded permutations sharded over ranks (:func:`diffcore.train.distributed.shard`);
    the incomplete last batch of an epoch is dropped so every step sees ``batch`` samples."""

    def __init__(self, data, batch: int, seed: int, rank: int, world: int, device, labels: bool):
        share = -(-len(data) // world)
        if batch > share:
            raise ValueError(f"batch_size: {batch} samples per rank exceed the {share} this rank gets from the "
                             f"dataset of {len(data)} (world size {world}); use a smaller batch_size")
        self.data, self.batch, self.seed, self.rank, self.world = data, batch, seed, rank, world
        self.device, self.labels = device, labels
        self.epoch, self.pos, self._order = 0, 0, None

    def next(self):
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, shard(len(self.data), self.epoch, self.seed, self.rank, self.world))
        order = self._order[1]
        if self.pos + self.batch > order.numel():
            self.epoch, self.pos = self.epoch + 1, 0
            return self.next()
        idx = order[self.pos: self.pos + self.batch]
        self.pos += self.batch
        x, y = self.data.batch(idx)
        return x.to(self.device, non_blocking=True), (y.to(self.device) if self.labels else None)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


class LoaderStream:
    """Iterates a loader epoch after epoch (``sampler.set_epoch`` when available); resume skips the
    batches of the current epoch already used (exact only for epoch-determined loaders)."""

    def __init__(self, data, device, labels: bool):
        self.data, self.device, self.labels = data, device, labels
        self.epoch, self.pos, self._it = 0, 0, None

    def _start(self):
        sampler = getattr(self.data.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self._it = iter(self.data.loader)
        for _ in range(self.pos):
            if next(self._it, None) is None:
                raise ValueError(f"data: the loader has fewer than {self.pos} batches in epoch {self.epoch} "
                                 f"on resume")

    def next(self):
        if self._it is None:
            self._start()
        item = next(self._it, None)
        if item is None:
            if self.pos == 0:
                raise ValueError("data: the loader yielded no batch in a whole epoch (empty dataset)")
            self.epoch, self.pos = self.epoch + 1, 0
            self._start()
            return self.next()
        self.pos += 1
        x, y = self.data.split(item)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"data: expected the loader to yield tensors, got {type(x).__name__}")
        if self.labels:
            if y is None:
                raise ValueError("data: the model is class-conditional but a loader batch has no labels")
            y = torch.as_tensor(y).to(self.device)
        return x.to(self.device, non_blocking=True), (y if self.labels else None)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self._it = int(state["epoch"]), int(state["pos"]), None


def make_stream(data, batch: int, generator: torch.Generator, seed: int, rank: int, world: int, device,
                labels: bool):
    if data.kind == "sampler":
        return SamplerStream(data, batch, generator, labels)
    if data.kind == "tensor":
        return TensorStream(data, batch, seed, rank, world, device, labels)
    if data.kind == "loader":
        return LoaderStream(data, device, labels)
    raise TypeError(f"data: unknown dataset kind {getattr(data, 'kind', None)!r}")
