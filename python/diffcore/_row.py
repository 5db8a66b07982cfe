"""The one Python view of a plan's coefficient rows and stage records (docs/design.md, "Coefficient
plans"). The column offsets and record fields are declared once, in ``csrc/core/row_layout.h``, and
read here from the compiled core; nothing else in Python spells a column number.

A row of a plan with ``K`` history slots has the columns ``cu, co`` (the model-output conversion
``m = cu·u + co·o``), the x-update ``ax, ay, ar_0 … ar_{K−1}, am``, the y-update ``bx, by, br_k, bm``,
the noise weights ``zx, zy`` and a Brownian draw's interval ``ta, tb``. A stage record holds the model
input (0: x, 1: y), the ring slot written (−1: none), whether x and y are written, and the noise
draw number (−1: none). A node record is the schedule at one time of a plan, the plan builder's input:
``t, α, σ, λ, α', σ'`` at the fields ``NODE_T … NODE_DSIGMA``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, NamedTuple, Sequence

import torch

from . import _ops

__all__ = ["layout", "ncoef", "Stage", "stage", "draws", "Weights", "interval", "FIELDS", "node_records", "NODE_T",
           "NODE_ALPHA", "NODE_SIGMA", "NODE_LAM", "NODE_DALPHA", "NODE_DSIGMA", "PREDICTION"]

_R = _ops.StageRecord
FIELDS: int = _R.FIELDS
_N = _ops.NodeRecord
NODE_T, NODE_ALPHA, NODE_SIGMA, NODE_LAM, NODE_DALPHA, NODE_DSIGMA = _N.T, _N.ALPHA, _N.SIGMA, _N.LAM, _N.DALPHA, _N.DSIGMA
#: The compiled core's code of each canonical prediction type (csrc/core/prediction.h).
PREDICTION = {name: int(v) for name, v in _ops.Prediction.__members__.items()}


@lru_cache(maxsize=None)
def layout(K: int) -> "_ops.RowLayout":
    """Column offsets of a row with ``K`` history slots (``.cu``, ``.ax``, ``.ar(k)``, …, ``.ncoef``)."""
    return _ops.RowLayout(int(K))


def ncoef(K: int) -> int:
    """Columns of a row with ``K`` history slots."""
    return layout(K).ncoef


class Stage(NamedTuple):
    """The stage record of one (step, stage)."""
    input: int
    slot: int
    write_x: bool
    write_y: bool
    draw: int


def stage(records: Sequence[int], q: int) -> Stage:
    """Record ``q`` (``q = step·stages + stage``) of a flattened list of stage records."""
    n = len(records) // FIELDS
    if not 0 <= q < n:
        raise IndexError(f"q: expected a record index in [0, {n}), got {q}")
    r = records[q * FIELDS:(q + 1) * FIELDS]
    return Stage(int(r[_R.INPUT]), int(r[_R.SLOT]), bool(r[_R.WRITE_X]), bool(r[_R.WRITE_Y]), int(r[_R.DRAW]))


def draws(records: Sequence[int]) -> List[int]:
    """The noise draw number of every record (−1: no draw)."""
    return [int(d) for d in records[_R.DRAW::FIELDS]]


def node_records(t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, lam: torch.Tensor, dalpha: torch.Tensor,
                 dsigma: torch.Tensor) -> torch.Tensor:
    """Node records ``[*t.shape, F]`` (float64, contiguous) of the given schedule values."""
    out = torch.empty(tuple(t.shape) + (_N.FIELDS,), dtype=torch.float64)
    for k, v in ((NODE_T, t), (NODE_ALPHA, alpha), (NODE_SIGMA, sigma), (NODE_LAM, lam), (NODE_DALPHA, dalpha),
                 (NODE_DSIGMA, dsigma)):
        out[..., k] = v
    return out


def interval(K: int) -> slice:
    """The ``(ta, tb)`` columns of a row, as a slice."""
    L = layout(K)
    return slice(L.ta, L.tb + 1)


class Weights:
    """The named columns of rows ``[..., NC]``, each reshaped to ``shape`` so that it broadcasts against
    the data (``ar`` and ``br`` are lists over the history slots)."""

    __slots__ = ("cu", "co", "ax", "ay", "ar", "am", "bx", "by", "br", "bm", "zx", "zy")

    def __init__(self, rows: torch.Tensor, K: int, shape):
        L = layout(K)
        col = lambda k: rows[..., k].reshape(shape)  # noqa: E731
        self.cu, self.co = col(L.cu), col(L.co)
        self.ax, self.ay, self.am = col(L.ax), col(L.ay), col(L.am)
        self.bx, self.by, self.bm = col(L.bx), col(L.by), col(L.bm)
        self.ar = [col(L.ar(k)) for k in range(K)]
        self.br = [col(L.br(k)) for k in range(K)]
        self.zx, self.zy = col(L.zx), col(L.zy)
