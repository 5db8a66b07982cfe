"""Explicit Runge–Kutta methods as Butcher tableaus (diffcore.solvers.tableau) and the solvers made
from them: fixed-grid euler / heun / midpoint / ralston / rk4 plans and the adaptive dopri5.

Asserted: every shipped tableau satisfies the order conditions of its stated order (rooted trees up
to that order, Hairer, Nørsett & Wanner I, §II.2: b·Φ(τ) = 1/γ(τ)) and violates one of the next
order; invalid tableaus are refused naming the field; the observed global order on the Gaussian-mixture
oracle (float64 reference ODE) is the nominal one within 0.3; euler / heun plans are bitwise equal to
the pre-tableau ones (stored coefficient rows below, computed by the previous hand-written generator).
"""
import math
from fractions import Fraction

import pytest
import torch

from diffcore import schedules, solvers
from diffcore.convergence import lsq_slope, pinned_starts, reference_mixture, run_plan
from diffcore.grids import timesteps as make_timesteps
from diffcore.oracles import reference_ode
from diffcore.solvers.tableau import DOPRI5, EULER, HEUN, MIDPOINT, RALSTON, RALSTON3, RK4, TABLEAUS, ButcherTableau

from isolated import expect_error


# -- order conditions ---------------------------------------------------------------------------------

def _trees(n):
    """Rooted trees with n vertices, each a sorted tuple of its children's trees."""
    if n == 1:
        return [()]
    out = set()

    def forests(m, max_tree=None):  # multisets of trees with m vertices in total, non-increasing
        if m == 0:
            yield ()
            return
        for k in range(m, 0, -1):
            for t in _trees(k):
                if max_tree is not None and (k, t) > max_tree:
                    continue
                for rest in forests(m - k, (k, t)):
                    yield ((k, t),) + rest

    for f in forests(n - 1):
        out.add(tuple(sorted(t for _, t in f)))
    return sorted(out)


def _size(t):
    return 1 + sum(_size(c) for c in t)


def _gamma(t):
    return _size(t) * math.prod(_gamma(c) for c in t)


def _phi(tab, t):
    """Stage vector of tree t: Φ_i = Π_children (A Φ(child))_i."""
    S = tab.stages
    v = [1.0] * S
    for c in t:
        pc = _phi(tab, c)
        for i in range(S):
            v[i] *= sum(tab.a[i][j] * pc[j] for j in range(i))
    return v


def _order_residual(tab, n):
    return max(abs(sum(b * p for b, p in zip(tab.b, _phi(tab, t))) - 1.0 / _gamma(t)) for t in _trees(n))


def test_tree_counts():
    # rooted trees with 1..6 vertices: 1, 1, 2, 4, 9, 20 (OEIS A000081)
    assert [len(_trees(n)) for n in range(1, 7)] == [1, 1, 2, 4, 9, 20]


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_order_conditions(name):
    tab = TABLEAUS[name]
    for n in range(1, tab.order + 1):
        assert _order_residual(tab, n) < 1e-14, (name, n)
    assert _order_residual(tab, tab.order + 1) > 1e-6, name  # the stated order is the exact order


def test_dopri5_embedded_is_order_4():
    b4 = [x - e for x, e in zip(DOPRI5.b, DOPRI5.b_err)]
    emb = ButcherTableau(DOPRI5.c, DOPRI5.a, b4, 4, name="dopri4")
    for n in range(1, 5):
        assert _order_residual(emb, n) < 1e-14, n
    assert _order_residual(emb, 5) > 1e-6
    # the published 4th-order weights, exactly
    want = [Fraction(5179, 57600), 0, Fraction(7571, 16695), Fraction(393, 640), Fraction(-92097, 339200),
            Fraction(187, 2100), Fraction(1, 40)]
    assert all(abs(x - float(w)) < 1e-16 for x, w in zip(b4, want))
    assert DOPRI5.fsal and not RK4.fsal


@pytest.mark.parametrize("kwargs,field", [
    (dict(c=[0.0, 0.5], a=[[], [0.4]], b=[0.5, 0.5], order=1), "a"),          # row sum != c
    (dict(c=[0.0, 1.0], a=[[], [1.0]], b=[0.5, 0.6], order=1), "b"),          # sum b != 1
    (dict(c=[0.1], a=[[]], b=[1.0], order=1), "c"),                           # c0 != 0
    (dict(c=[0.0, 1.5], a=[[], [1.5]], b=[0.5, 0.5], order=1), "c"),          # node outside the step
    (dict(c=[0.0, 1.0], a=[[], [1.0, 0.0]], b=[0.5, 0.5], order=1), "a[1]"),  # not strictly lower
    (dict(c=[0.0, 1.0], a=[[], [1.0]], b=[0.5, 0.5], order=3), "order"),      # order > stages
    (dict(c=[0.0, 1.0], a=[[], [1.0]], b=[0.5, float("nan")], order=1), "b"),
    (dict(c=[0.0, 1.0], a=[[], [1.0]], b=[0.5, 0.5], order=2, b_err=[0.1, 0.0]), "b_err"),
])
def test_tableau_validation(kwargs, field):
    with pytest.raises(ValueError, match=r"^" + field.replace("[", r"\[").replace("]", r"\]") + ":"):
        ButcherTableau(**kwargs)


def test_rungekutta_rejects_bad_low_tableau():
    with pytest.raises(ValueError, match="^low:"):
        solvers.RungeKutta(RK4, low=HEUN)  # a stage at c = 1: the model at σ = 0
    with pytest.raises(ValueError, match="^low:"):
        solvers.RungeKutta(RK4, low=EULER)  # order 1 < 4 − 1 would lose the global order
    with pytest.raises(TypeError, match="^tableau:"):
        solvers.RungeKutta("rk4")
    with pytest.raises(ValueError, match="^variable:"):
        solvers.get("rk4", variable="sigma")


# -- fixed-grid plans -----------------------------------------------------------------------------------

def test_registered():
    names = solvers.available()
    for n in ("euler", "heun", "midpoint", "ralston", "rk4", "dopri5"):
        assert n in names
    assert isinstance(solvers.get("rk4"), solvers.RungeKutta) and solvers.get("rk4").order == 4


def test_plan_structure_rk4():
    sc = schedules.get("rectified_flow")
    p = solvers.get("rk4").plan(sc, torch.linspace(1.0, 0.0, 5, dtype=torch.float64), dtype=torch.float64,
                                prediction="velocity")
    # four model calls per step, three on the final step to σ = 0 (Ralston's 3rd-order method, no c = 1)
    assert p.nstages == [4, 4, 4, 3] and p.nfe == 15
    t = p.model_times[0].to(torch.float64)
    assert torch.allclose(t[0], torch.tensor([1.0, 0.875, 0.875, 0.75], dtype=torch.float64))
    assert torch.allclose(t[3, :3], torch.tensor([0.25, 0.125, 0.0625], dtype=torch.float64))


def test_rk4_exact_on_cubic_velocity():
    """dx/dt = v(t) = 1 + 2t + 3t² + 4t³ integrates exactly by any order-4 method: x(t) = F(t) − F(1),
    F = t + t² + t³ + t⁴ (the grid stops above σ = 0, where the last step would be of order 3)."""
    sc = schedules.get("rectified_flow")
    model = lambda x, t: (1 + 2 * t + 3 * t ** 2 + 4 * t ** 3)[:, None].to(x.dtype).expand_as(x)  # noqa: E731
    x = torch.zeros(3, 2, dtype=torch.float64)
    grid = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.05], dtype=torch.float64)
    out = solvers.get("rk4").plan(sc, grid, dtype=torch.float64, prediction="velocity")
    from diffcore.convergence import run_plan
    y = run_plan(out, model, x)
    want = sum(0.05 ** k for k in range(1, 5)) - 4.0
    assert torch.allclose(y, torch.full_like(y, want), atol=1e-14, rtol=0)


ORACLE = reference_mixture()
VP, RF = schedules.VPLinear(), schedules.get("rectified_flow")
_REF = {}


def _reference(sc):
    """Pinned start points at t_start and the float64 reference ODE solution at t_end (computed once)."""
    if sc.name not in _REF:
        x0 = pinned_starts(ORACLE, sc, sc.t_start, sc.t_end, n=8)
        _REF[sc.name] = (x0, reference_ode(ORACLE, x0, sc.t_start, sc.t_end, sc))
    return _REF[sc.name]


def _observed_order(solver, sc, pred, spacing, steps):
    x0, ref = _reference(sc)
    model = lambda x, t: ORACLE.predict(x, t, sc, pred)  # noqa: E731
    errors = []
    for n in steps:
        ts = make_timesteps(sc, n, spacing=spacing, dtype=torch.float64)
        out = run_plan(solver.plan(sc, ts, dtype=torch.float64, prediction=pred), model, x0)
        errors.append(float(((out - ref) ** 2).mean().sqrt()))
    return lsq_slope(steps, errors), errors


# (solver, options, schedule, prediction, spacing, steps, nominal order). Rectified flow integrates to
# t = 0 (σ = 0), so its runs include the final step with the lower-order tableau.
_slow = pytest.mark.slow
ORDER_CASES = [
    ("euler", {}, RF, "velocity", "uniform_t", (16, 32, 64, 128), 1),
    ("heun", {}, RF, "velocity", "uniform_t", (16, 32, 64, 128), 2),
    ("rk4", {}, RF, "velocity", "uniform_t", (8, 16, 32, 64), 4),
    ("midpoint", {}, RF, "velocity", "uniform_t", (16, 32, 64, 128), 2),
    ("ralston", {}, RF, "velocity", "uniform_t", (16, 32, 64, 128), 2),
    pytest.param("euler", {"variable": "rho"}, VP, "eps", "uniform_lambda", (32, 64, 128, 256), 1, marks=_slow),
    pytest.param("heun", {"variable": "rho"}, VP, "eps", "uniform_lambda", (16, 32, 64, 128), 2, marks=_slow),
    pytest.param("rk4", {"variable": "rho"}, VP, "eps", "uniform_lambda", (8, 16, 32, 64), 4, marks=_slow),
]


@pytest.mark.parametrize("name,opts,sc,pred,spacing,steps,nominal", ORDER_CASES)
def test_observed_order(name, opts, sc, pred, spacing, steps, nominal):
    order, errors = _observed_order(solvers.get(name, **opts), sc, pred, spacing, steps)
    assert nominal - 0.3 <= order <= nominal + 0.5, (order, errors)  # and not higher by accident of the problem


# euler / heun rows as the hand-written generator gave them before the tableau engine (rectified flow,
# grid 1 → 0 in 4 uniform steps; VE-style EDM, ρ variable, grid σ = 80, 10, 1, 0.1, 0): the first step's
# rows [stage][column] of the columns that are not zero, and the last step's.
def _rows(name, sc, grid, pred):
    p = solvers.get(name).plan(sc, torch.tensor(grid, dtype=torch.float64), dtype=torch.float64, prediction=pred)
    return p


def test_heun_rows_unchanged():
    p = _rows("heun", RF, [1.0, 0.75, 0.5, 0.25, 0.0], "velocity")
    K = 1
    c = p.coefs[0]
    # stage 0: y = x + h·m (h = −0.25), slot 0; stage 1: x = x + h/2·(r0 + m); last step: Euler
    assert c[0, 0, 1].item() == 1.0 and c[0, 0, 5 + K].item() == 1.0 and c[0, 0, 7 + 2 * K].item() == -0.25
    assert c[0, 1, 2].item() == 1.0 and c[0, 1, 4].item() == -0.125 and c[0, 1, 4 + K].item() == -0.125
    assert p.nstages == [2, 2, 2, 1] and c[3, 0, 4 + K].item() == -0.25
    e = _rows("heun", schedules.get("edm"), [80.0, 10.0, 1.0, 0.1, 0.0], "eps")
    ce = e.coefs[0]
    assert ce[0, 0, 7 + 2 * K].item() == -70.0 and ce[0, 1, 4].item() == -35.0 and ce[3, 0, 4 + K].item() == -0.1


# -- dopri5 -----------------------------------------------------------------------------------------------

def _velocity(sc, pred):
    return lambda x, t: ORACLE.predict(x, t, sc, pred)  # noqa: E731


def test_dopri5_error_tracks_tolerance_and_nfe_falls_with_looser_rtol():
    """sample(..., solver="dopri5") on rectified flow (start at α = 0, end at σ = 0, velocity model)
    against the float64 reference ODE: the error is within a constant of the tolerance, falls with it,
    and the model calls rise as the tolerance tightens."""
    import diffcore
    x0, ref = _reference(RF)
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        calls = []
        model = _velocity(RF, "velocity")
        out = diffcore.sample(lambda x, t: calls.append(1) or model(x, t), x0, RF, solver="dopri5", rtol=tol,
                              atol=tol, prediction="velocity")
        errs.append((out - ref).abs().max().item())
        nfes.append(len(calls))
        assert errs[-1] <= 100 * tol, (tol, errs)  # measured: 33, 50, 2 × tol
    assert errs[0] > errs[1] > errs[2], errs
    assert nfes[0] < nfes[1] < nfes[2], nfes


@pytest.mark.slow
def test_dopri5_eps_model_on_vp():
    """A noise-prediction model on VP-linear: the sampler converts it to the velocity dopri5 integrates."""
    import diffcore
    x0, ref = _reference(VP)
    out = diffcore.sample(_velocity(VP, "eps"), x0, VP, solver="dopri5", rtol=1e-6, atol=1e-6, prediction="eps")
    assert (out - ref).abs().max().item() <= 1e-4  # measured ~3e-6


def test_dopri5_per_sample_independence():
    """Each sample has its own steps: its result is bitwise the same alone, in a smaller batch or in a
    larger one (the model is per-sample), while the samples take different numbers of model calls."""
    x0, _ = _reference(RF)
    s = solvers.get("dopri5", rtol=1e-4, atol=1e-4)
    v = _velocity(RF, "velocity")
    full, info = s.solve(v, x0, RF, 1.0, 0.0)
    assert len(set(info["nfe_per_sample"].tolist())) > 1, info  # the samples really do step differently
    for j in (0, 3, x0.shape[0] - 1):
        alone, _ = s.solve(v, x0[j:j + 1], RF, 1.0, 0.0)
        assert torch.equal(alone[0], full[j])
    part, _ = s.solve(v, x0[2:5], RF, 1.0, 0.0)
    assert torch.equal(part, full[2:5])
    # torchdiffeq-style shared step: batch-dependent (and so a different result for some sample)
    shared, _ = solvers.get("dopri5", rtol=1e-4, atol=1e-4, batch_control=True).solve(v, x0, RF, 1.0, 0.0)
    assert not torch.equal(shared, full)


def test_dopri5_integrates_forward_too():
    """Inversion (t_start < t_end) runs the same pair backwards in time: data → noise → data returns."""
    x0, _ = _reference(RF)
    s = solvers.get("dopri5", rtol=1e-7, atol=1e-7)
    v = _velocity(RF, "velocity")
    x1, _ = s.solve(v, x0, RF, 1.0, 0.1)
    back, _ = s.solve(v, x1, RF, 0.1, 1.0)
    assert (back - x0).abs().max().item() <= 1e-5  # measured 2e-7


def test_likelihood_uses_the_shared_integrator():
    from diffcore import likelihood
    from diffcore.solvers import dopri5
    assert likelihood._dopri5 is dopri5.integrate


@pytest.mark.parametrize("opts,field", [
    ({"rtol": 0.0}, "rtol"), ({"rtol": -1e-3}, "rtol"), ({"rtol": float("nan")}, "rtol"),
    ({"atol": float("inf")}, "atol"), ({"atol": "1e-3"}, "atol"), ({"max_steps": 0}, "max_steps"),
    ({"max_steps": 2.5}, "max_steps"), ({"max_steps": True}, "max_steps"),
])
def test_dopri5_bad_options_named(opts, field):
    import diffcore
    with pytest.raises(ValueError, match=f"^{field}:"):
        diffcore.sample(_velocity(RF, "velocity"), torch.zeros(2, 1), RF, solver="dopri5", prediction="velocity",
                        **opts)


def test_dopri5_batch_control_must_be_bool():
    with pytest.raises(TypeError, match="^batch_control:"):
        solvers.get("dopri5", batch_control="yes")


def test_dopri5_max_steps_exhausted_names_it():
    x0, _ = _reference(RF)
    with pytest.raises(RuntimeError, match="^max_steps: .*max_steps=3"):
        solvers.get("dopri5", rtol=1e-8, atol=1e-8, max_steps=3).solve(_velocity(RF, "velocity"), x0, RF, 1.0, 0.0)


def test_dopri5_nan_model_named_in_subprocess():
    """A model that returns NaN cannot make dopri5 retry until max_steps (a possible hang): it raises."""
    expect_error("import torch, diffcore\n"
                 "diffcore.sample(lambda x, t: x * float('nan'), torch.ones(2, 3), 'rectified_flow', solver='dopri5',\n"
                 "                prediction='velocity')", "ValueError", "model", "NaN")


def test_dopri5_same_times_named():
    with pytest.raises(ValueError, match="^t_start, t_end:"):
        solvers.get("dopri5").solve(_velocity(RF, "velocity"), torch.zeros(2, 1, dtype=torch.float64), RF, 0.5, 0.5)
