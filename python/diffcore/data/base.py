"""Dataset kinds the trainer understands, and the adapters for user data.

Two kinds (the trainer reads ``kind``):

- ``"sampler"`` — an infinite source with ``sample(n, generator=None, return_labels=False)``: every
  batch is a fresh draw from the trainer's ``torch.Generator``, so a run is reproducible from the seed
  and resumable from the generator state (2-D toys, mixture oracles);
- ``"tensor"`` — a finite ``[N, *S]`` tensor (optionally with ``[N]`` labels) indexed in epochs of
  seeded permutations (:class:`TensorData`, the digits dataset);
- ``"loader"`` — any iterable of batches, e.g. a ``torch.utils.data.DataLoader`` (:class:`LoaderData`).

Every kind has ``shape`` (one sample's shape), ``num_classes`` (``None`` when unlabelled) and
``has_labels``.
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

__all__ = ["Sampler", "TensorData", "LoaderData", "check_finite"]


def check_finite(x: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name`` and the first bad row when ``x`` holds NaN or ±inf."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.dim() else ~torch.isfinite(x)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0]) if x.dim() else 0
        raise ValueError(f"{name}: contains NaN or infinite values (first at row {i})")


def _labels(labels, n: int, name: str = "labels") -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{name}: expected integer class labels, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one label per sample), got {tuple(labels.shape)}")
    labels = labels.long()
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name}: expected non-negative class labels, got minimum {int(labels.min())}")
    return labels


class Sampler:
    """Base of the infinite samplers: subclasses implement ``_draw(n, generator, device, dtype)`` →
    ``(x [n, *shape], labels [n] or None)``. Draws happen on the generator's device."""

    kind = "sampler"
    shape: Tuple[int, ...] = (2,)
    num_classes: Optional[int] = None

    @property
    def has_labels(self) -> bool:
        return self.num_classes is not None

    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False,
               dtype: torch.dtype = torch.float32):
        """``n`` samples ``[n, *shape]`` (and their ``[n]`` labels when ``return_labels``)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n: expected a non-negative int, got {n!r}")
        if not isinstance(return_labels, bool):
            raise TypeError(f"return_labels: expected True or False, got {return_labels!r}")
        if return_labels and not self.has_labels:
            raise ValueError(f"return_labels: {type(self).__name__} has no labels")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
        device = generator.device if generator is not None else torch.device("cpu")
        x, y = self._draw(n, generator, device, dtype)
        return (x, y) if return_labels else x

    def _draw(self, n, generator, device, dtype):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TensorData:
    """A finite dataset from a tensor ``x [N, *S]`` and optional integer ``labels [N]``.

    ``num_classes`` defaults to ``labels.max() + 1``. The data is validated once here (floating point,
    non-empty, finite); batches are taken by :meth:`batch`.
    """

    kind = "tensor"

    def __init__(self, x, labels=None, num_classes: Optional[int] = None):
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except Exception as e:  # noqa: BLE001  (numpy arrays, lists: anything torch takes)
                raise TypeError(f"x: expected a tensor [N, *S], got {type(x).__name__}") from e
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"x: expected a tensor [N, *S] with a sample dimension, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("x: empty dataset (N = 0)")
        check_finite(x, "x")
        self.x = x
        self.labels = None if labels is None else _labels(labels, x.shape[0]).to(x.device)
        if num_classes is not None:
            if self.labels is None:
                raise ValueError("num_classes: given without labels")
            if not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
            if int(self.labels.max()) >= num_classes:
                raise ValueError(f"labels: values must be < num_classes = {num_classes}, got {int(self.labels.max())}")
        elif self.labels is not None:
            num_classes = int(self.labels.max()) + 1
        self.num_classes = num_classes

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, index: torch.Tensor):
        """``(x[index], labels[index] or None)``."""
        index = index.to(self.x.device)
        return self.x[index], (None if self.labels is None else self.labels[index])

    def __repr__(self) -> str:
        return f"TensorData(N={len(self)}, shape={self.shape}, num_classes={self.num_classes})"


class LoaderData:
    """Any re-iterable source of batches (a ``DataLoader``, a list of tensors, ...). Each item is a
    tensor ``x``, a pair ``(x, labels)`` or a dict with ``"x"`` (or ``"image"``/``"images"``) and
    optional ``"labels"``/``"label"``/``"y"``.

    Exact resume: the trainer re-enters the epoch it stopped in (calling ``sampler.set_epoch`` when the
    loader's sampler has it, as ``DistributedSampler`` does) and skips the batches already used; this
    reproduces the uninterrupted run only when the loader's order is a function of the epoch (e.g. a
    seeded generator or ``set_epoch``), which a plain ``shuffle=True`` loader is not.
    Pass ``num_classes`` for labelled data; ``shape`` is read from the first batch.
    """

    kind = "loader"

    def __init__(self, loader: Iterable, num_classes: Optional[int] = None, has_labels: Optional[bool] = None):
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"loader: expected an iterable of batches, got {type(loader).__name__}")
        self.loader = loader
        self.num_classes = num_classes
        self._shape = None
        self._has_labels = has_labels

    def _peek(self):
        if self._shape is None:
            for item in self.loader:
                x, y = self.split(item)
                self._shape = tuple(x.shape[1:])
                if self._has_labels is None:
                    self._has_labels = y is not None
                return
            raise ValueError("data: the loader yielded no batch (empty dataset)")

    @property
    def shape(self) -> Tuple[int, ...]:
        self._peek()
        return self._shape

    @property
    def has_labels(self) -> bool:
        self._peek()
        return bool(self._has_labels)

    @staticmethod
    def split(item):
        """``(x, labels or None)`` from one loader item."""
        if isinstance(item, torch.Tensor):
            return item, None
        if isinstance(item, dict):
            x = next((item[k] for k in ("x", "image", "images", "input") if k in item), None)
            if x is None:
                raise ValueError(f"data: a dict batch needs an 'x' (or 'image') entry, got keys {sorted(item)}")
            y = next((item[k] for k in ("labels", "label", "y") if k in item), None)
            return x, y
        if isinstance(item, (tuple, list)) and 1 <= len(item) <= 2:
            return item[0], (item[1] if len(item) == 2 else None)
        raise TypeError(f"data: expected batches as a tensor, (x, labels) or a dict, got {type(item).__name__}")

    def __repr__(self) -> str:
        return f"LoaderData({type(self.loader).__name__}, num_classes={self.num_classes})"
