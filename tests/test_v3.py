"""DPM-Solver-v3 and its empirical model statistics (book §9.7; Zheng et al. 2023).

Oracles: (a) statistics (1, 0, 0) give DDIM / DPM-Solver++(2M, variant B) / DPM-Solver++(3M, w = 2);
(b) (0, −1, 0) gives DDIM in noise form; (c) with b = 0 and constant ℓ, s the step integrals E_k
equal their closed forms; exactness on Gaussian data (f is deterministic there, so the first-order
step is the exact flow map up to the O(h⁴) quadrature of the statistics grid); the observed global
order of the full-order predictor on the reference problem of §12 with N dividing the grid.
"""
import math

import numpy as np
import pytest
import torch

import diffcore
from diffcore import EMS, oracles, schedules, solvers, timesteps
from diffcore.convergence import lsq_slope, pinned_starts, reference_mixture, run_plan
from diffcore.solvers.v3 import _Tables, deriv_matrix, step_integrals

SCHED = schedules.VPLinear()
ORACLE = reference_mixture()
K = 1024


@pytest.fixture(scope="module")
def ems():
    return EMS.from_oracle(ORACLE, SCHED, K=K, nodes=32)


@pytest.fixture(scope="module")
def starts():
    return pinned_starts(ORACLE, SCHED, SCHED.t_start, SCHED.t_end)


def _model(oracle, prediction="eps"):
    return lambda x, t: oracle.predict(x, t, SCHED, prediction)


def _grid(n):
    return timesteps(SCHED, n, spacing="uniform_lambda", dtype=torch.float64)


def _v3(stats, n, **kw):
    kw.setdefault("corrector", False)
    return solvers.get("dpm_solver_v3", statistics=stats, **kw).plan(SCHED, _grid(n), dtype=torch.float64)


@pytest.mark.parametrize("order,other,opts", [(1, "ddim", {}), (2, "dpmpp_2m", {"solver_type": "heun"}),
                                              (3, "dpmpp_3m", {"w": 2.0, "solver_type": "heun"})])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_data_statistics_are_dpmpp(order, other, opts, prediction, starts):
    """(a): EMS (1, 0, 0) ⇒ DPM-Solver++ multistep, to the quadrature error of the grid."""
    stats = EMS.constant(SCHED, 1, 1.0, 0.0, 0.0, K=K)
    plan = _v3(stats, 16, order=order, lower_order_final=False)
    ref_plan = solvers.get(other, lower_order_final=False, **opts).plan(SCHED, plan.timesteps[0], dtype=torch.float64,
                                                                        prediction=prediction)
    a = run_plan(_v3(stats, 16, order=order, lower_order_final=False).solver.plan(
        SCHED, plan.timesteps[0], dtype=torch.float64, prediction=prediction), _model(ORACLE, prediction), starts)
    b = run_plan(ref_plan, _model(ORACLE, prediction), starts)
    assert (a - b).abs().max().item() <= 1e-9 * b.abs().max().item()


def test_noise_statistics_first_order_is_ddim(starts):
    """(b): EMS (0, −1, 0), first order ⇒ DDIM (noise form)."""
    stats = EMS.constant(SCHED, 1, 0.0, -1.0, 0.0, K=K)
    plan = _v3(stats, 12, order=1)
    a = run_plan(plan, _model(ORACLE), starts)
    b = run_plan(solvers.get("ddim").plan(SCHED, plan.timesteps[0], dtype=torch.float64), _model(ORACLE), starts)
    assert (a - b).abs().max().item() <= 1e-9 * b.abs().max().item()


def _closed_E(c, h, k):
    """∫_0^h e^{cu} u^k/k! du."""
    tail = sum((-1) ** j * h ** (k - j) / (math.factorial(k - j) * c ** (j + 1)) for j in range(k + 1))
    return math.exp(c * h) * tail - (-1) ** k / c ** (k + 1)


@pytest.mark.parametrize("l,s", [(0.7, -0.2), (1.0, 0.0), (0.0, -1.0), (0.3, 0.9)])
def test_step_integrals_closed_form(l, s):
    """(c): b = 0, constant ℓ, s ⇒ L, S linear and E_k = ∫ e^{(ℓ+s)u} u^k/k! du exactly."""
    stats = EMS.constant(SCHED, 3, l, s, 0.0, K=K)
    tab = _Tables(stats)
    lam = stats.lam.numpy()
    assert np.allclose(tab.L[:, 0], l * (lam - lam[0]), rtol=0, atol=1e-12)
    assert np.allclose(tab.S[:, 0], s * (lam - lam[0]), rtol=0, atol=1e-12)
    for a, b in ((0, 64), (300, 301), (500, 1024)):
        E, Eb = step_integrals(tab, a, b, 3)
        h = lam[b] - lam[a]
        assert Eb is None
        for k in range(4):
            want = _closed_E(l + s, h, k)
            assert abs(E[k][0] - want) <= 1e-9 * max(abs(want), h), (a, b, k, E[k][0], want)  # O(Δλ⁴ h)


def test_deriv_matrix():
    # full order: exact derivatives of the interpolating polynomial through the nodes
    d = [0.0, -0.3, -0.7]
    g = lambda u: 1.5 - 2 * u + 0.8 * u * u  # noqa: E731
    M = deriv_matrix(d, "full")
    vals = np.array([g(u) for u in d])
    assert np.allclose(M @ vals, [1.5, -2.0, 1.6], atol=1e-12)
    # pseudo order: k!·divided differences over the first k + 1 nodes
    P = deriv_matrix(d, "pseudo")
    dd1 = (vals[1] - vals[0]) / (d[1] - d[0])
    assert np.allclose((P @ vals)[1], dd1) and np.allclose((P @ vals)[2], 2 * 0.8)


@pytest.mark.parametrize("mean", [0.0, 0.8])
def test_exact_on_gaussian_data(mean):
    """For Gaussian data f = −ℓμ is deterministic (Var f = 0 ⇒ s = 0, b = E f′), so every v3 step is
    the exact flow map up to the quadrature of the grid; first order, 5 steps."""
    g = oracles.Gaussian(torch.tensor([mean, -0.5 * mean]), torch.diag(torch.tensor([0.5, 2.0])))
    stats = EMS.from_oracle(g, SCHED, K=1000, nodes=8)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for order, corr in ((1, False), (3, True)):
        plan = solvers.get("dpm_solver_v3", statistics=stats, order=order, corrector=corr).plan(
            SCHED, timesteps(SCHED, 5, dtype=torch.float64), dtype=torch.float64)
        out = run_plan(plan, lambda xx, t: g.predict(xx, t, SCHED, "eps"), x)
        t = plan.timesteps[0]
        exact = g.flow_map(x, float(t[0]), float(t[-1]), SCHED)
        assert (out - exact).abs().max().item() <= 1e-8 * exact.abs().max().item(), (order, corr)


def _errors(stats, starts, ref, ns, **kw):
    return [float(((run_plan(_v3(stats, n, lower_order_final=False, **kw), _model(ORACLE), starts) - ref) ** 2)
                  .mean().sqrt()) for n in ns]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_full_order_convergence(order, ems, starts):
    """Global order p of the full-order predictor (corrector off and on), N dividing K = 1024."""
    ref = oracles.reference_ode(ORACLE, starts, SCHED.t_start, SCHED.t_end, SCHED)
    ns = (32, 64, 128, 256)
    e = _errors(ems, starts, ref, ns, order=order)
    assert lsq_slope(ns, e) >= order - 0.3, e
    ec = _errors(ems, starts, ref, ns, order=order, corrector=True)
    assert lsq_slope(ns, ec) >= order - 0.3, ec
    if order > 1:
        assert ec[-1] < e[-1]


def test_sample_api_save_load(ems, starts, tmp_path):
    path = tmp_path / "ems.pt"
    ems.save(path)
    back = EMS.load(path, schedule=SCHED)
    assert torch.equal(back.l, ems.l) and torch.equal(back.s, ems.s) and torch.equal(back.b, ems.b)
    out = diffcore.sample(_model(ORACLE), starts, SCHED, solver="dpm_solver_v3", statistics=back, steps=8,
                          spacing="uniform_lambda")
    plan = solvers.get("dpm_solver_v3", statistics=ems).plan(SCHED, _grid(8), dtype=torch.float64)
    assert torch.equal(out, run_plan(plan, _model(ORACLE), starts))
    # the plan cache keys the statistics by identity: other statistics, other result
    other = EMS.constant(SCHED, 1, 1.0, 0.0, 0.0, K=K)
    out2 = diffcore.sample(_model(ORACLE), starts, SCHED, solver="dpm_solver_v3", statistics=other, steps=8,
                           spacing="uniform_lambda")
    assert not torch.equal(out, out2)
    with pytest.raises(ValueError, match="computed for"):
        EMS.load(path, schedule=schedules.VPCosine())
    with pytest.raises(ValueError, match="parallel"):
        diffcore.sample(_model(ORACLE), starts, SCHED, solver="dpm_solver_v3", statistics=ems, steps=8,
                        parallel=diffcore.ParallelConfig(window=4))


def test_bad_input(ems, starts):
    with pytest.raises(TypeError, match="statistics"):
        solvers.get("dpm_solver_v3")
    with pytest.raises(ValueError, match="predictor"):
        solvers.get("dpm_solver_v3", statistics=ems, predictor="half")
    with pytest.raises(ValueError, match="snap to the same"):
        solvers.get("dpm_solver_v3", statistics=ems).plan(SCHED, _grid(2000))
    with pytest.raises(ValueError, match="range"):
        solvers.get("dpm_solver_v3", statistics=ems).plan(SCHED, torch.tensor([1.0, 0.5, 0.0]))
    plan = solvers.get("dpm_solver_v3", statistics=ems).plan(SCHED, _grid(4))
    with pytest.raises(ValueError, match="shape"):
        plan.init_state(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="uniform"):
        EMS(torch.tensor([0.0, 1.0, 3.0]), torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="exactly one"):
        EMS.estimate(_model(ORACLE), SCHED)


def test_estimate_matches_oracle_statistics(ems, starts):
    """Estimating from data samples with the exact model reproduces the quadrature statistics within
    Monte Carlo error; autograd and finite-difference JVPs agree; the model's own trajectories (noise
    source) give the same ℓ; and sampling with estimated statistics is as accurate."""
    data = ORACLE.sample(4000, generator=torch.Generator().manual_seed(1))
    est = EMS.estimate(_model(ORACLE), SCHED, data=data, K=64, chunk=65)
    coarse = EMS.from_oracle(ORACLE, SCHED, K=64, nodes=32)
    assert (est.l - coarse.l).abs().max().item() < 0.03
    fd = EMS.estimate(_model(ORACLE), SCHED, data=data[:500], K=64, chunk=65, jvp="fd", fd_step=1e-5)
    ad = EMS.estimate(_model(ORACLE), SCHED, data=data[:500], K=64, chunk=65)
    assert (fd.l - ad.l).abs().max().item() < 1e-6
    assert ((fd.s - ad.s).abs() / (1 + ad.s.abs())).max().item() < 3e-3  # s is ill-conditioned where Var f → 0
    noise = torch.randn(2000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    traj = EMS.estimate(_model(ORACLE), SCHED, noise=noise, K=64)
    assert (traj.l - coarse.l).abs().max().item() < 0.05
    ref = oracles.reference_ode(ORACLE, starts, SCHED.t_start, SCHED.t_end, SCHED)
    e_est = _errors(est, starts, ref, (16,), order=3)[0]
    e_orc = _errors(coarse, starts, ref, (16,), order=3)[0]
    assert e_est <= 1.5 * e_orc, (e_est, e_orc)


def test_statistics_against_direct_regression():
    """ℓ, s, b of the quadrature agree with a direct computation: samples of p_λ moved along the
    exact ODE by ±δ in λ, ℓ = σ·mean ∂ε̂/∂x on each, f = (σε̂ − ℓx)/α, f′ by central differences, and
    the least-squares line f′ ≈ s f + b (20000 Monte Carlo samples)."""
    stats = EMS.from_oracle(ORACLE, SCHED, K=64, nodes=32)
    gen = torch.Generator().manual_seed(3)
    for k in (16, 32, 48):
        lam = float(stats.lam[k])
        t = float(SCHED.t_of_lam(torch.tensor([lam], dtype=torch.float64))[0])
        x = ORACLE.sample_marginal(20000, t, SCHED, generator=gen)
        h = 1e-4
        fs = []
        for d in (-h, 0.0, h):
            td = SCHED.t_of_lam(torch.tensor([lam + d], dtype=torch.float64))
            xd = x if d == 0 else oracles.reference_ode(ORACLE, x, t, float(td[0]), SCHED)
            tt = torch.full((x.shape[0],), float(td[0]), dtype=torch.float64)
            v = SCHED.eval(td)
            eps = ORACLE.eps(xd, tt, SCHED)
            jac = torch.func.jvp(lambda z: ORACLE.eps(z, tt, SCHED), (xd,), (torch.ones_like(xd),))[1]
            ell = float(v.sigma[0]) * jac.mean()
            fs.append(((float(v.sigma[0]) * eps - ell * xd) / float(v.alpha[0]))[:, 0])
            if d == 0:
                assert abs(ell - stats.l[k, 0]) < 0.02
        f, fp = fs[1], (fs[2] - fs[0]) / (2 * h)
        s_dir, b_dir = np.polyfit(f.numpy(), fp.numpy(), 1)
        assert abs(s_dir - float(stats.s[k, 0])) < 0.05 * (1 + abs(s_dir)), (k, s_dir, float(stats.s[k, 0]))
        assert abs(b_dir - float(stats.b[k, 0])) < 0.05 * (1 + abs(b_dir)), (k, b_dir, float(stats.b[k, 0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_steps_equal_reference(ems, starts, dtype, monkeypatch):
    """The compiled per-feature lincomb path and its eager-torch reference give the same run."""
    from diffcore import _ops
    x = starts.to(dtype)
    model = lambda xx, t: ORACLE.predict(xx, t, SCHED, "eps").to(dtype)  # noqa: E731
    plan = solvers.get("dpm_solver_v3", statistics=ems, corrector=True).plan(SCHED, _grid(8), dtype=dtype)
    fused = run_plan(plan, model, x)
    monkeypatch.setattr(_ops, "fast_path_ok", lambda *a: False)
    ref = run_plan(plan, model, x)
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    assert (fused - ref).abs().max().item() <= tol * ref.abs().max().item()
