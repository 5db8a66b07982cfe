"""The end-to-end bound of issue 7, shared by the slow distillation tests: a few-step student on
``oracles.toy_2d_mixture()`` passes when its sliced Wasserstein distance to held-out data is at most
2 × (SW of the exact Gaussian-mixture teacher with a 50-step DPM-Solver++(2M) + the held-out-vs-held-out
noise floor). Fixed evaluation set, projections and teacher start, so every test is held to the same
numbers.
"""
import torch

import diffcore
from diffcore import metrics, oracles

F64 = torch.float64
N_EVAL = 4000
GM = oracles.toy_2d_mixture()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _proj():
    p = torch.randn(256, 2, generator=_gen(5), dtype=F64)
    return p / p.norm(dim=1, keepdim=True)


def _sw(x, ref):
    return float(metrics.sliced_wasserstein(x.double(), ref, projections=_proj()))


def _bound(sched, prediction):
    """(held-out set, 2 × (SW of the exact teacher with 50 DPM-Solver++(2M) steps on ``sched`` + floor), floor)."""
    ref = GM.sample(N_EVAL, _gen(11))
    floor = _sw(GM.sample(N_EVAL, _gen(12)), ref)
    xT = diffcore.prior_sample(sched, (N_EVAL, 2), seed=3, dtype=F64)
    x = diffcore.sample(lambda x, t: GM.predict(x, t, sched, prediction), xT, sched, solver="dpmpp_2m", steps=50,
                        prediction=prediction)
    return ref, 2 * (_sw(x, ref) + floor), floor


def _naive_sw(sched, prediction, steps, ref):
    """SW of the exact teacher run with ``steps`` DDIM steps: what the student's NFE buys without
    distillation (must be above the bound for the bound to mean anything at that NFE)."""
    xT = diffcore.prior_sample(sched, (N_EVAL, 2), seed=3, dtype=F64)
    return _sw(diffcore.sample(lambda x, t: GM.predict(x, t, sched, prediction), xT, sched, solver="ddim",
                               steps=steps, prediction=prediction), ref)
