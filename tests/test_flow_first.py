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
    x = GM.sample(2, _gen(1)).to(F64)
    a = log_likelihood(vel, x, sch, t_start=1e-2, t_end=1.0, rtol=1e-4, atol=1e-4)
    b = log_likelihood(vel, x, sch, "velocity", t_start=1e-2, t_end=1.0, rtol=1e-4, atol=1e-4)
    assert torch.equal(a, b)
    # and it is the likelihood: the flow's marginal at t_start is the mixture smoothed by σ = 1e-2
    ref = GM.marginal_log_prob(x, 1e-2, sch)
    assert (a - ref).abs().max().item() < 5e-3  # the integrator at rtol = atol = 1e-4


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


# ---- 2. every solver from every schedule's default grid -----------------------------------------

ALL_SCHEDULES = {
    "vp_linear": schedules.VPLinear(), "subvp": schedules.SubVP(), "vp_cosine": schedules.VPCosine(),
    "vp_discrete": schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=F64)),
    "ve": schedules.VE(), "edm": schedules.EDM(), "rectified_flow": schedules.RectifiedFlow(),
    "rf_shift3": schedules.RectifiedFlow(shift=3.0), "ot_sigma_min": schedules.OTSigmaMin(), "trig": schedules.Trig(),
}
#: the flow paths (α = 0 at the noisy end, σ = 0 or σ_min at the clean end) run by default; the rest is slow-marked
QUICK = ("rectified_flow", "ot_sigma_min")
_REFS = {}


def _reference(key):
    """Start and float64 reference PF-ODE solution over the schedule's default range (to σ = 0 where
    the default grid ends there), from the closed-form mixture velocity integrated by DOP853."""
    if key not in _REFS:
        sch = ALL_SCHEDULES[key]
        x = _x(sch, n=4)
        t_to = sch.t_min if sch.final_zero else sch.t_end
        _REFS[key] = x, oracles.reference_ode(GM, x, sch.t_start, t_to, sch, rtol=1e-7, atol=1e-7)
    return _REFS[key]


def _cases():
    for key in ALL_SCHEDULES:
        for name in diffcore.solvers.available():
            marks = [] if key in QUICK and name != "annealed_langevin" else [pytest.mark.slow]
            yield pytest.param(key, name, marks=marks, id=f"{key}-{name}")


@pytest.mark.parametrize("key,name", list(_cases()))
def test_every_solver_runs_from_the_default_grid(key, name):
    sch = ALL_SCHEDULES[key]
    model = lambda x, t: GM.predict(x, t, sch, sch.prediction)  # noqa: E731  (the schedule's own type)
    x, ref = _reference(key)
    if name == "dpm_solver_v3":  # needs the model's statistics: genuinely impossible with default options
        with pytest.raises(TypeError, match="statistics"):
            diffcore.sample(model, x, sch, solver=name)
        return
    # their steps are model calls: 10 is about 3 third-order steps (fast) or 5 second-order ones (singlestep)
    steps = 20 if name in ("dpm_solver_fast", "dpm_solver_singlestep", "dpmpp_singlestep", "sde_dpmpp_singlestep") else 10
    out = diffcore.sample(model, x, sch, solver=name, steps=steps, seed=0)
    assert out.shape == x.shape and bool(torch.isfinite(out).all()), (key, name)
    if name not in diffcore.solvers.STOCHASTIC:
        # the ring has radius 2: a wrong time direction, prediction type or start lands ≥ 2 away; 10 steps of
        # the first-order methods are within 0.5 here, the adaptive ones within 0.02 (their tolerances)
        err = (out - ref).abs().max().item()
        bound = 0.05 if name.startswith("dpm_adaptive") else 1.0
        assert err < bound, (key, name, err)


def test_default_grid_of_a_noise_form_solver_starts_inside_alpha_zero():
    sch = schedules.RectifiedFlow()
    ts, te = diffcore.grids.regular_range(sch)
    assert (ts, te) == (0.999, 0.001)
    assert diffcore.grids.regular_range(schedules.VPLinear()) == (1.0, 1e-3)
    vel = lambda x, t: GM.predict(x, t, sch, "velocity")  # noqa: E731
    x = _x(sch)
    # the default grid of dpm_solver_2 is the default spacing over [0.999, 0]
    a = diffcore.sample(vel, x, sch, solver="dpm_solver_2", steps=6)
    b = diffcore.sample(vel, x, sch, solver="dpm_solver_2", steps=diffcore.timesteps(sch, 6, t_start=0.999))
    assert torch.equal(a, b)
    # an explicit start at α = 0 is used as given, and refused with the hint
    with pytest.raises(ValueError, match="t_start=0.999"):
        diffcore.sample(vel, x, sch, solver="dpm_solver_2", steps=6, t_start=1.0)
    with pytest.raises(ValueError, match="t_start: dpm_adaptive"):
        diffcore.sample(vel, x, sch, solver="dpm_adaptive", t_start=1.0)


# ---- 4. the rectified-flow oracle demo ---------------------------------------------------------

def test_oracle_demo_on_rectified_flow_runs_and_matches_the_exact_ode():
    from isolated import expect_ok
    r = expect_ok("from diffcore.demo import main\n"
                  "main(['--oracle', '--schedule', 'rectified_flow', '-n', '50'])\n", timeout=300)
    import re
    rms = {m.group(1): float(m.group(2)) for m in
           re.finditer(r"solver='(\w+)', steps=\d+\): .*?RMS distance to the exact ODE solution ([0-9.e+-]+)", r.out)}
    assert set(rms) == {"dpmpp_2m", "unipc_2", "dpmpp_3m"}, r.out
    # the exact velocity read as ε̂ (the old default) is ≈ 0.6 away; 10 to 20 solver steps are within 0.15
    assert max(rms.values()) < 0.15 and rms["dpmpp_3m"] < 0.03, rms


# ---- 3. torchcfm's time direction (τ = 0 noise) through a time change ----------------------------

def _torchcfm_oracle(sch):
    """The mixture's exact velocity in torchcfm's convention: τ = 1 − t, u = dx/dτ = −dx/dt."""
    return lambda tau, x: -GM.predict(x, 1 - tau, sch, "velocity")


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "unipc_3", "dpm_solver_2", "euler_ancestral",
                                  "dpm_adaptive"])
@pytest.mark.parametrize("sch", [schedules.RectifiedFlow(), schedules.OTSigmaMin(sigma_min=0.01)], ids=repr)
def test_torchcfm_adapter_equals_the_native_run(sch, name):
    from diffcore.adapters import torchcfm
    native = lambda x, t: GM.predict(x, t, sch, "velocity")  # noqa: E731
    x = _x(sch)
    a = diffcore.sample(native, x, sch, solver=name, steps=8, seed=1)
    b = diffcore.sample(torchcfm(_torchcfm_oracle(sch), schedule=sch), x, sch, solver=name, steps=8, seed=1)
    assert (a - b).abs().max().item() < 1e-10


def test_torchcfm_adapter_orders_and_likelihood():
    from diffcore.adapters import torchcfm
    sch = schedules.RectifiedFlow()
    cfm = _torchcfm_oracle(sch)
    native = lambda x, t: GM.predict(x, t, sch, "velocity")  # noqa: E731
    x = _x(sch)
    ref = diffcore.sample(native, x, sch, solver="heun", steps=6)
    mlp = lambda xt: cfm(xt[:, -1], xt[:, :-1])  # noqa: E731  torchcfm's MLP: one input, t as the last column
    for model, order in ((cfm, "tx"), (lambda xx, tau: cfm(tau, xx), "xt"), (mlp, "cat")):
        wrapped = torchcfm(model, order=order)
        assert wrapped.prediction == "velocity"
        assert (diffcore.sample(wrapped, x, sch, solver="heun", steps=6) - ref).abs().max().item() < 1e-10
    # the network sees τ = 1 − t: at the sampler's first time (t = 1, noise) it is called at τ = 0
    seen = []
    diffcore.sample(torchcfm(lambda tau, xx: seen.append(tau.clone()) or cfm(tau, xx)), x, sch, solver="euler",
                    steps=2)
    assert seen[0].tolist() == [0.0] * 6 and seen[1].tolist() == [0.5] * 6
    y = GM.sample(2, _gen(3)).to(F64)
    kw = dict(t_start=1e-2, t_end=1.0, rtol=1e-4, atol=1e-4)
    assert (log_likelihood(torchcfm(cfm), y, sch, **kw) - log_likelihood(native, y, sch, **kw)).abs().max() < 1e-10


def test_time_change_bad_inputs():
    from diffcore.adapters import torchcfm
    from diffcore.param import TimeChange
    net = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="schedule: expected rectified_flow"):
        torchcfm(net, schedule=schedules.RectifiedFlow(shift=3.0))
    with pytest.raises(ValueError, match="order"):
        torchcfm(net, order="yx")
    with pytest.raises(TypeError, match="t_of"):
        TimeChange(net, "rf", t_of=0.5, dt_of=-1)
    with pytest.raises(ValueError, match="dt_of: a velocity model needs"):
        TimeChange(net, "rf", t_of=lambda t: 1 - t)
    with pytest.raises(ValueError, match="dt_of"):
        TimeChange(net, "rf", t_of=lambda t: 1 - t, dt_of=math.nan)
    with pytest.raises(TypeError, match="model"):
        TimeChange(3, "rf", t_of=lambda t: 1 - t, dt_of=-1)
    with pytest.raises(ValueError, match="x: order='cat'"):
        torchcfm(lambda xt: xt[:, :-1], order="cat")(torch.zeros(2, 1, 3, dtype=F64), 0.5)
    # an ε-model needs no chain rule: τ = 1 − t is all
    vp = schedules.VPLinear()
    w = TimeChange(lambda x, tau: GM.predict(x, 1 - tau, vp, "eps"), vp, t_of=lambda t: 1 - t)
    x = _x(vp)
    assert torch.allclose(w(x, 0.3, target="eps"), GM.predict(x, torch.full((6,), 0.3, dtype=F64), vp, "eps"),
                          rtol=0, atol=1e-14)


def test_dpm_solver_v3_from_the_default_rectified_flow_grid():
    # statistics over regular_range (λ is infinite at the flow's own ends) serve the default grid
    sch = schedules.RectifiedFlow()
    model = lambda x, t: GM.predict(x, t, sch, "velocity")  # noqa: E731
    x, ref = _reference("rectified_flow")
    ts, te = diffcore.grids.regular_range(sch)
    stats = diffcore.EMS.constant(sch, (2,), t_start=ts, t_end=te)  # (1, 0, 0): DPM-Solver++ (book §9.7.6)
    out = diffcore.sample(model, x, sch, solver="dpm_solver_v3", steps=10, statistics=stats)
    # 10 steps over [0.999, 0.001] against the exact flow over [1, 0]: both ends within ~1e-3, steps ~0.05
    assert (out - ref).abs().max().item() < 0.1
