"""Checkpoint files: written atomically, loaded without unpickling code.

A checkpoint is one ``torch.save`` file of plain containers, tensors and numbers (no pickled
classes), so :func:`load` uses ``torch.load(weights_only=True)``. :func:`save` writes a temporary
file in the destination directory, flushes and fsyncs it, then ``os.replace``-s it over the target:
a crash or a full disk leaves either the previous checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import os
import pathlib
import pickle
from typing import Union

import torch

__all__ = ["save", "load", "FORMAT"]

FORMAT = "diffcore.train/1"


def save(obj: dict, path: Union[str, os.PathLike]) -> pathlib.Path:
    """Atomically write ``obj`` to ``path`` (parent directories are created)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # persist the rename itself (POSIX); not available on every platform
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load(path: Union[str, os.PathLike], map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save` (``ValueError`` if it is not a diffcore checkpoint)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"checkpoint: {path} is not a readable torch checkpoint ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {path} is not a diffcore trainer checkpoint (format {FORMAT!r})")
    return obj
