"""Training data: 2-D toys, the Gaussian-mixture oracle, scikit-learn's 8×8 digits and adapters for any
tensor or DataLoader.

``get(name, **kwargs)`` builds a dataset by name; ``as_data(obj, labels=None, num_classes=None)`` wraps a
user tensor / DataLoader / mixture (and passes diffcore datasets through). Kinds and the sampling
protocol: :mod:`diffcore.data.base`.

| name | object | shape | labels |
|---|---|---|---|
| ``two_moons`` (``moons``) | :class:`TwoMoons` | (2,) | moon |
| ``eight_gaussians`` (``8gaussians``) | :class:`EightGaussians` | (2,) | component |
| ``checkerboard`` | :class:`Checkerboard` | (2,) | black square |
| ``spirals`` | :class:`Spirals` | (2,) | arm |
| ``mixture`` (``toy_2d_mixture``) | :class:`MixtureData` of ``oracles.toy_2d_mixture()`` | (2,) | component |
| ``ring`` | :class:`MixtureData` of ``GaussianMixture.ring2d(**kwargs)`` | (2,) | component |
| ``digits`` | :class:`Digits` (needs scikit-learn) | (1, 8, 8) | digit |
"""
from __future__ import annotations

from .. import oracles
from .base import LoaderData, Sampler, TensorData, check_finite
from .digits import Digits
from .mixture import MixtureData
from .toys import Checkerboard, EightGaussians, Spirals, TwoMoons

__all__ = ["Sampler", "TensorData", "LoaderData", "TwoMoons", "EightGaussians", "Checkerboard", "Spirals",
           "MixtureData", "Digits", "get", "as_data", "available", "check_finite"]

_REGISTRY = {
    "two_moons": TwoMoons, "moons": TwoMoons,
    "eight_gaussians": EightGaussians, "8gaussians": EightGaussians,
    "checkerboard": Checkerboard,
    "spirals": Spirals,
    "mixture": lambda: MixtureData(oracles.toy_2d_mixture()),
    "toy_2d_mixture": lambda: MixtureData(oracles.toy_2d_mixture()),
    "ring": lambda **kw: MixtureData(oracles.GaussianMixture.ring2d(**kw)),
    "digits": Digits,
}


def available() -> list:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs):
    """Build a dataset by name (table in the module docstring) with the class's keyword arguments."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name, got {type(name).__name__} (use as_data for tensors)")
    try:
        factory = _REGISTRY[name.lower().replace("-", "_")]
    except KeyError:
        raise ValueError(f"name: unknown dataset {name!r}; available: {available()}") from None
    import inspect  # noqa: PLC0415

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:  # named here rather than as a constructor TypeError
            raise TypeError(f"{name}: unknown option(s) {unknown}; expected some of {sorted(params)}")
    return factory(**kwargs)


def as_data(obj, labels=None, num_classes=None):
    """A trainer dataset from a diffcore dataset (returned as is), a name (:func:`get`), a tensor /
    array ``[N, *S]`` with optional ``labels [N]`` (:class:`TensorData`), a
    :class:`~diffcore.oracles.GaussianMixture` (:class:`MixtureData`) or any iterable of batches such
    as a ``DataLoader`` (:class:`LoaderData`)."""
    if isinstance(obj, (Sampler, TensorData, LoaderData)):
        if labels is not None:
            raise ValueError("labels: only for a tensor dataset")
        return obj
    if isinstance(obj, str):
        return get(obj)
    if isinstance(obj, oracles.GaussianMixture):
        return MixtureData(obj)
    import torch  # noqa: PLC0415

    if isinstance(obj, torch.Tensor) or hasattr(obj, "__array__"):
        return TensorData(obj, labels, num_classes)
    if hasattr(obj, "__iter__"):
        if labels is not None:
            raise ValueError("labels: a loader yields its own labels; pass num_classes instead")
        return LoaderData(obj, num_classes)
    raise TypeError(f"data: expected a dataset name, a tensor [N, *S], a GaussianMixture or an iterable of "
                    f"batches, got {type(obj).__name__}")
