"""UniPC: unified predictor–corrector (Zhao et al. 2023).

UniP-p (multistep predictor, order p) plus UniC-p, a corrector that reuses the next step's model
evaluation (no extra NFE) and raises the order to p + 1. One model call per step; the last step is
not corrected. Coefficients (the B(h) systems) are solved in the float64 core
(``csrc/core/plans/unipc.h``).
"""
from __future__ import annotations

from .base import Solver, _check_bool, _check_order


class UniPC(Solver):
    """UniPC-``order``.

    Args:
        order: predictor order p ∈ {1, 2, 3}.
        variant: ``"bh2"`` (B(h) = e^{hh} − 1, the default) or ``"bh1"`` (B(h) = hh).
        predict_x0: data-prediction form (default) or noise-prediction form.
        corrector: apply UniC (default); without it the method is UniP-p, order p
            (UniP-1 = DDIM, UniP-2 (bh2) = DPM-Solver++(2M), UniP-3 (bh2) = DPM-Solver++(3M, w = 2)).
        lower_order_final, thresholding, ...: as for the other multistep solvers.
    """

    method = "unipc"
    multistep = True

    def __init__(self, order: int = 2, variant: str = "bh2", predict_x0: bool = True, corrector: bool = True,
                 **common):
        self.predict_x0 = _check_bool("predict_x0", predict_x0)
        self.supports_thresholding = predict_x0
        super().__init__(**common)
        self.max_order = _check_order(order, (1, 2, 3))
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"variant: expected 'bh1' or 'bh2', got {variant!r}")
        self.variant = variant
        self.corrector = _check_bool("corrector", corrector)
        self.native = "x0" if predict_x0 else "eps"
        self.order = order + 1 if corrector else order
        self.history = order if corrector else order - 1
        self.second_buffer = corrector
        self.name = f"unipc_{order}"

    def _core_options(self) -> dict:
        return {"predict_x0": self.predict_x0, "bh2": self.variant == "bh2", "corrector": self.corrector}

    def _repr_options(self) -> dict:
        return {"variant": self.variant, "predict_x0": self.predict_x0, "corrector": self.corrector}
