"""One spelling per device: every device argument the library takes goes through :func:`as_device`.

A tensor on the GPU reports ``cuda:0``, never ``cuda``; ``torch.device("cuda") != torch.device("cuda:0")``,
so a plan built with ``device="cuda"`` and compared against its sample's device would reject the very
tensor it was built for. Normalizing at the API edge makes every later comparison (and every cache key
built from ``str(device)``) see the form a tensor reports.
"""
from __future__ import annotations

import operator
from typing import Optional, Union

import torch

__all__ = ["as_device", "DeviceLike"]

DeviceLike = Union[str, int, torch.device, None]

_CPU = torch.device("cpu")
_UNINDEXED = ("cpu", "meta")  # device types whose tensors report no index


def _backend(kind: str, attr: str):
    """``torch.<kind>.<attr>`` when that backend is usable here, else None (no driver is touched when
    ``is_available`` says no: the error, if any, belongs to the first tensor actually placed there)."""
    mod = getattr(torch, kind, None)
    avail, fn = getattr(mod, "is_available", None), getattr(mod, attr, None)
    try:
        return fn if callable(avail) and callable(fn) and avail() else None
    except (RuntimeError, AssertionError):  # a backend built in but unusable on this machine
        return None


def _current_index(kind: str) -> int:
    """The ordinal torch puts a tensor on for ``torch.device(kind)``; 0 without a usable backend."""
    cur = _backend(kind, "current_device")
    try:
        return int(cur()) if cur is not None else 0
    except (RuntimeError, AssertionError):
        return 0


def _check_count(dev: torch.device, name: str, given) -> None:
    count = _backend(dev.type, "device_count")
    try:
        n = int(count()) if count is not None else None
    except (RuntimeError, AssertionError):
        n = None
    if n is None:
        return
    if dev.index >= n:
        raise ValueError(f"{name}: expected a {dev.type} device index below {n} (this machine has {n} "
                         f"{dev.type} device{'s' if n != 1 else ''}), got {given!r}")


def as_device(device: DeviceLike, name: str = "device",
              default: Optional[DeviceLike] = _CPU) -> Optional[torch.device]:
    """``device`` as the indexed :class:`torch.device` a tensor placed there reports.

    Accepts a ``torch.device``, a string (``"cpu"``, ``"cuda"``, ``"cuda:1"``), a non-negative int (a
    CUDA ordinal, as torch's ``device=0`` means) or None (``default``; None when ``default`` is None,
    for arguments where "not given" defers to torch's default device). ``"cuda"`` becomes
    ``cuda:<torch.cuda.current_device()>``, or ``cuda:0`` where CUDA is not available. Raises
    ``TypeError``/``ValueError`` naming ``name`` for anything else.
    """
    given = device
    if device is None:
        if default is None:
            return None
        return as_device(default, name, None)
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{name}: expected a device such as 'cpu', 'cuda' or 'cuda:0', got {given!r} ({e})") \
                from None
    elif hasattr(device, "__index__") and not isinstance(device, bool):  # int, numpy integer
        device = operator.index(device)
        if device < 0:
            raise ValueError(f"{name}: expected a non-negative CUDA device index, got {given!r}")
        dev = torch.device("cuda", device)
    else:
        raise TypeError(f"{name}: expected a torch.device, a string such as 'cuda:0', an int CUDA index or None, "
                        f"got {type(device).__name__}")
    if dev.type in _UNINDEXED:
        return _CPU if dev.type == "cpu" else torch.device(dev.type)
    if dev.index is None:
        return torch.device(dev.type, _current_index(dev.type))
    _check_count(dev, name, given)
    return dev
