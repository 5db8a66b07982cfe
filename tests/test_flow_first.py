"""Flow matching as a first-class citizen (issue 17, item 6): the prediction default follows the
schedule, every solver runs from every schedule's default grid, a torchcfm time adapter, and the
rectified-flow demo."""
import math

import pytest
import torch

import diffcore
from diffcore import oracles, schedules
from diffcore.likelihood import log_likelihood

F64 = torch.float64
GM = oracles.GaussianMixture.ring2d(4)
FLOW = [schedules.RectifiedFlow(), schedules.RectifiedFlow(shift=3.0), schedules.OTSigmaMin(), schedules.Trig()]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _x(sch, n=6, seed=0):
    return diffcore.prior_sample(sch, (n, 2), generator=_gen(seed), dtype=F64)


# ---- 1. prediction=None: the schedule's own type ------------------------------------------------

@pytest.mark.parametrize("sch", FLOW, ids=repr)
def test_flow_schedules_default_to_velocity(sch):
    vel = lambda x, t: GM.predict(x, t, sch, "velocity")  # noqa: E731
    x = _x(sch)
    assert sch.prediction == "velocity"
    a = diffcore.sample(vel, x, sch, solver="dpmpp_2m", steps=8)
    b = diffcore.sample(vel, x, sch, solver="dpmpp_2m", steps=8, prediction="velocity")
    assert torch.equal(a, b)
    assert diffcore.ModelWrapper(vel, sch).prediction == "velocity"


def test_diffusion_schedules_still_default_to_eps():
    sch = schedules.VPLinear()
    eps = lambda x, t: GM.predict(x, t, sch, "eps")  # noqa: E731
    x = _x(sch)
    a = diffcore.sample(eps, x, sch, solver="dpmpp_2m", steps=8)
    b = diffcore.sample(eps, x, sch, solver="dpmpp_2m", steps=8, prediction="eps")
    assert torch.equal(a, b)
    assert diffcore.ModelWrapper(eps, sch).prediction == "eps"
    assert schedules.EDM().prediction == "eps" and schedules.VE().prediction == "eps"


def test_likelihood_default_on_rectified_flow_is_velocity():
    sch = schedules.RectifiedFlow()
    vel = lambda x, t: GM.predict(x, t, sch, "velocity")  # noqa: E731
    x = GM.sample(3, _gen(1)).to(F64)
    a = log_likelihood(vel, x, sch, t_start=1e-3, t_end=1.0, rtol=1e-6, atol=1e-6)
    b = log_likelihood(vel, x, sch, "velocity", t_start=1e-3, t_end=1.0, rtol=1e-6, atol=1e-6)
    assert torch.equal(a, b)
    # and it is the likelihood: the flow's marginal at t_start is the mixture smoothed by σ = 1e-3
    ref = GM.marginal_log_prob(x, 1e-3, sch)
    assert (a - ref).abs().max().item() < 1e-3


def test_singular_conversion_says_did_you_mean_velocity():
    sch = schedules.RectifiedFlow()
    vel = lambda x, t: GM.predict(x, t, sch, "velocity")  # noqa: E731
    x = _x(sch)
    with pytest.raises(ValueError, match=r"prediction: .*singular.*did you mean prediction='velocity'"):
        diffcore.sample(vel, x, sch, solver="euler", steps=4, prediction="eps")
    with pytest.raises(ValueError, match=r"t_end: .*singular.*did you mean prediction='velocity'"):
        log_likelihood(vel, x, "rf", "eps", t_start=0.0, t_end=1.0)
    with pytest.raises(ValueError, match=r"did you mean prediction='velocity'"):
        diffcore.param.convert(x, x, torch.ones(6, dtype=F64), sch, "eps", "x0")
