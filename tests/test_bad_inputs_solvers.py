"""Bad inputs of the adaptive solvers (``dpm_adaptive``, ``dpm_adaptive_ps``) and of ``pc``: each is refused
with an error that names the argument and what was expected, or (an empty batch) gives the result every
other sampler gives. What used to hang runs in a child interpreter with a timeout (tests/isolated.py)."""
import math

import pytest
import torch

import diffcore
from diffcore import oracles, schedules, solvers
from isolated import expect_error

F64 = torch.float64
ADAPTIVE = ("dpm_adaptive", "dpm_adaptive_ps")
SCH = schedules.get("vp_linear")
MIX = oracles.toy_1d_mixture()

_PRELUDE = """
import torch, diffcore
from diffcore import oracles, schedules, solvers
sch = schedules.get("vp_linear")
mix = oracles.toy_1d_mixture()
model = lambda x, t: mix.predict(x, t, sch, "eps")
x = diffcore.prior_sample(sch, (8, 1), seed=1, dtype=torch.float64)
"""


def _model(x, t):
    return MIX.predict(x, t, SCH, "eps")


def _x(n=8):
    return diffcore.prior_sample(SCH, (n, 1), seed=1, dtype=F64)


def _run(solver, model=_model, x=None, **kw):
    return diffcore.sample(model, _x() if x is None else x, SCH, solver=solver, prediction="eps", **kw)


# -- item 4: θ ≥ 1 retried a rejected step with a larger one, 100000 times ------------------------------

@pytest.mark.parametrize("name", ADAPTIVE)
def test_theta_above_one_is_refused_and_a_runaway_step_is_capped(name):
    # Before: θ = 1.5 retried a rejected step with the factor 1.5·E^(−1/k) > 1 (for 1 < E < 1.5^k), so the
    # step grew and was never accepted, 100000 times (minutes). Now θ ≥ 1 is refused, and θ = 1.5 forced
    # past the constructor stops after 50 consecutive rejections with the time and the tolerances.
    code = _PRELUDE + f"""
for theta in (1.0, 1.5, 2.0):
    try:
        diffcore.sample(model, x, sch, solver={name!r}, prediction="eps", theta=theta)
    except ValueError as e:
        assert "theta: expected a finite number with 0.0 < theta < 1.0" in str(e), str(e)
    else:
        raise AssertionError(f"theta={{theta}} accepted")
s = solvers.get({name!r})
s.theta = 1.5
diffcore.sample(model, x, sch, solver=s, prediction="eps")
"""
    r = expect_error(code, "RuntimeError", "could not control the step size", "t=", "rtol=0.05", "atol=0.0078",
                     "max_rejections=50", timeout=60)
    assert "50 consecutive rejected steps" in r.exc_msg


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("theta", [1.0, 0, -0.5, float("nan"), float("inf"), "0.9", True])
def test_theta_outside_the_open_unit_interval_is_refused(name, theta):
    with pytest.raises(ValueError, match="theta"):
        solvers.get(name, theta=theta)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_max_rejections_is_honoured(name):
    # tolerances of 1e-14 reject the first trial step (E ≫ 1) whatever θ
    with pytest.raises(RuntimeError, match=r"could not control the step size.*1 consecutive rejected"):
        _run(name, rtol=1e-14, atol=1e-14, max_rejections=1)


# -- item 7: errors that name the argument ---------------------------------------------------------------

@pytest.mark.parametrize("name", ADAPTIVE)
def test_model_returning_nan_is_named(name):
    # used to surface as "lam: expected half log-SNR values ... got values in [nan, nan]"
    with pytest.raises(ValueError, match=r"model: returned non-finite values .* at t=1\b"):
        _run(name, model=lambda x, t: x * float("nan"))


@pytest.mark.parametrize("name", ADAPTIVE)
def test_model_turning_infinite_midway_names_the_time(name):
    def model(x, t):
        eps = _model(x, t)
        return torch.where(t.reshape(-1, 1) < 0.5, torch.full_like(eps, math.inf), eps)

    with pytest.raises(ValueError, match="model: returned non-finite values") as e:
        _run(name, model=model)
    t = float(str(e.value).split("at t=")[1].split()[0])
    assert t < 0.5, str(e.value)


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("h_init", [math.inf, math.nan, 0.0, -0.1])
def test_h_init_must_be_finite_and_positive(name, h_init):
    # h_init=inf used to end in "math domain error"
    with pytest.raises(ValueError, match="h_init: expected a finite number"):
        _run(name, h_init=h_init)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_h_init_beyond_the_interval_is_clipped(name):
    # a first trial step longer than the whole λ interval is tried as the whole interval
    tol = dict(rtol=1e-4, atol=1e-4)
    ref = _run(name, x=_x(2), **tol)
    out = _run(name, x=_x(2), h_init=100.0, **tol)
    assert (out - ref).abs().max() < 1e-2, (out - ref).abs().max()  # the same ODE solution, within tolerances


@pytest.mark.parametrize("name", ADAPTIVE)
def test_empty_batch_gives_an_empty_result_like_the_fixed_grid_samplers(name):
    x = _x()[:0]
    ddpm = _run("ddpm", x=x, steps=5)
    out = _run(name, x=x)
    assert out.shape == ddpm.shape == (0, 1) and out.dtype == F64


def test_max_steps_must_be_a_positive_int():
    for v in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="max_steps: expected a positive int"):
            _run("dpm_adaptive", max_steps=v)


def test_max_steps_exhausted_names_it():
    with pytest.raises(RuntimeError, match="max_steps=2"):
        _run("dpm_adaptive", max_steps=2)


def test_max_rounds_must_be_a_positive_int():
    for v in (0, -1, 2.0, False):
        with pytest.raises(ValueError, match="max_rounds: expected a positive int"):
            _run("dpm_adaptive_ps", max_rounds=v)


def test_max_rounds_exhausted_names_it():
    with pytest.raises(RuntimeError, match="max_rounds=2"):
        _run("dpm_adaptive_ps", max_rounds=2)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_max_rejections_must_be_a_positive_int(name):
    with pytest.raises(ValueError, match="max_rejections: expected a positive int"):
        solvers.get(name, max_rejections=0)


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("order", [1, 4, 2.0, True, "3"])
def test_order_outside_its_set_is_refused(name, order):
    with pytest.raises(ValueError, match="order: expected 2 or 3"):
        solvers.get(name, order=order)


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("arg", ["rtol", "atol"])
@pytest.mark.parametrize("v", [-1.0, math.nan, math.inf, "0.1"])
def test_tolerances_must_be_finite_and_not_negative(name, arg, v):
    with pytest.raises(ValueError, match=f"{arg}: expected a finite number"):
        solvers.get(name, **{arg: v})


def test_dpm_adaptive_tolerances_must_be_positive():
    for arg in ("rtol", "atol"):
        with pytest.raises(ValueError, match=f"{arg}: expected a finite number with 0.0 < {arg}"):
            solvers.get("dpm_adaptive", **{arg: 0.0})


def test_dpm_adaptive_ps_needs_one_positive_tolerance():
    solvers.get("dpm_adaptive_ps", rtol=0.0, atol=0.01)  # a pure absolute tolerance is fine
    with pytest.raises(ValueError, match="rtol, atol: at least one must be positive"):
        solvers.get("dpm_adaptive_ps", rtol=0.0, atol=0.0)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_tolerances_below_the_arithmetic_are_named(name):
    # the scaled error overflows to inf; before, dpm_adaptive returned x after no step at all (h → 0) and
    # dpm_adaptive_ps shrank h for 100000 rounds. Now the tolerances are named.
    expect_error(_PRELUDE + f"diffcore.sample(model, x, sch, solver={name!r}, prediction='eps', rtol=1e-300, "
                 "atol=1e-300)", "ValueError", "rtol, atol: the error estimate", "not finite", timeout=60)


@pytest.mark.parametrize("t_err", [math.inf, math.nan, 0.0, 5.0])
def test_t_err_must_be_below_the_interval(t_err):
    # t_err ≥ |t_start − t_end| returned x unchanged (no step taken)
    with pytest.raises(ValueError, match="t_err: expected"):
        _run("dpm_adaptive", t_err=t_err)


# -- pc ------------------------------------------------------------------------------------------------

def test_pc_snr_norm_names_its_choices():
    with pytest.raises(ValueError, match="snr_norm: expected 'expected', 'sample' or 'batch'"):
        solvers.get("pc", snr_norm="mean")
    assert solvers.get("pc").snr_norm == "expected"
