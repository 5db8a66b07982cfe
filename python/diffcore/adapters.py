"""Adapters for networks trained by other flow-matching libraries.

torchcfm (Tong et al. 2024) and torchdyn write the conditional path with time running the other way:
``x_τ = τ·x1 + (1 − τ)·x0`` with ``x0`` the noise at ``τ = 0``, ``x1`` the data at ``τ = 1`` and the
network predicting ``u = dx/dτ`` (towards the data). diffcore's rectified flow (book Table 5.2,
§6.3.3) is the same path in ``t = 1 − τ`` (``t = 1`` noise), so the network is called at ``τ = 1 − t``
and its velocity changes sign, ``dx/dt = −u``: :class:`diffcore.param.TimeChange`.
"""
from __future__ import annotations

from typing import Callable

from . import schedules as _schedules
from .param import TimeChange

__all__ = ["torchcfm"]


def _one_minus(t):
    return 1 - t


def torchcfm(model: Callable, order: str = "tx", schedule=None) -> TimeChange:
    """A torchcfm / torchdyn velocity network (``τ = 0`` noise, ``τ = 1`` data) as a diffcore model on
    ``schedule`` (default :class:`~diffcore.schedules.RectifiedFlow`; also
    :class:`~diffcore.schedules.OTSigmaMin`, Lipman et al.'s path with σ_min, which torchcfm's
    ``TargetConditionalFlowMatcher`` trains). ``order``: ``"tx"`` for ``forward(t, x)`` (torchcfm's
    ``UNetModelWrapper``, torchdyn's ``NeuralODE`` vector fields), ``"cat"`` for an MLP on
    ``torch.cat([x, t], 1)`` (torchcfm's ``MLP``), ``"xt"`` for ``model(x, t)``.

    ``diffcore.sample(diffcore.adapters.torchcfm(net), x, "rectified_flow")`` then samples from
    ``x ~ N(0, I)`` at t = 1 to the data at t = 0 with any diffcore solver."""
    sch = _schedules.RectifiedFlow() if schedule is None else _schedules.get(schedule)
    ok = isinstance(sch, _schedules.OTSigmaMin) or (isinstance(sch, _schedules.RectifiedFlow) and sch.shift == 1.0)
    if not ok:
        raise ValueError(f"schedule: expected rectified_flow (shift 1) or ot_sigma_min, the paths torchcfm trains "
                         f"in τ = 1 − t, got {sch!r}")
    return TimeChange(model, sch, t_of=_one_minus, dt_of=-1.0, prediction="velocity", order=order)
