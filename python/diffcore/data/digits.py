"""scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes; UCI optdigits test set) as a
:class:`~diffcore.data.base.TensorData` of shape ``[N, 1, 8, 8]`` scaled from the 0–16 ink counts to
``[−1, 1]``, with labels 0–9. scikit-learn is imported only here (``pip install scikit-learn`` or
``pip install "diffcore[data]"``).
"""
from __future__ import annotations

import torch

from .base import TensorData

__all__ = ["Digits"]


def _load_digits():
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError as e:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn "
                          "(or pip install \"diffcore[data]\")") from e
    return load_digits()


class Digits(TensorData):
    """The 8×8 digits, ``x = ink/8 − 1 ∈ [−1, 1]`` (ink ∈ {0, …, 16}).

    Args:
        split: ``"all"`` (default), ``"train"`` or ``"test"``: a fixed random split (``test_fraction``,
            permutation seeded by ``seed``) so that held-out images are available for evaluation.
        dtype: floating dtype of the images.
    """

    def __init__(self, split: str = "all", test_fraction: float = 0.2, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        if split not in ("all", "train", "test"):
            raise ValueError(f"split: expected 'all', 'train' or 'test', got {split!r}")
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or \
                not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {seed!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch dtype for the images, got {dtype!r}")
        d = _load_digits()
        x = torch.as_tensor(d.images, dtype=torch.float64).reshape(-1, 1, 8, 8) / 8.0 - 1.0
        y = torch.as_tensor(d.target, dtype=torch.long)
        if split != "all":
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))
            n_test = int(round(test_fraction * x.shape[0]))
            idx = perm[:n_test] if split == "test" else perm[n_test:]
            x, y = x[idx], y[idx]
        super().__init__(x.to(dtype), y, num_classes=10)
        self.split = split

    def __repr__(self) -> str:
        return f"Digits(split={self.split!r}, N={len(self)})"
