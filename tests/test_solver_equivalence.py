"""Exact identities between solvers (book Ch. 9, Table 9.1, with
docs/errata.md S3–S5), in float64 on the same grid with the Gaussian-mixture oracle as the model, to
1e-12·max|x|; and bit-compatibility of DPM-Solver++(3M) w = 1 with an independent transcription of
the reference code's update."""
import math

import pytest
import torch

import diffcore
from diffcore import schedules, solvers
from diffcore.convergence import reference_mixture, run_plan

ORACLE = reference_mixture()
X0 = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)[:, None]


def _run(name, sched, ts, prediction="eps", **opts):
    plan = solvers.get(name, **opts).plan(sched, ts, dtype=torch.float64, prediction=prediction)
    scale = sched.prior_std()
    model = lambda x, t: ORACLE.predict(x, t, sched, prediction)  # noqa: E731
    return run_plan(plan, model, X0 * scale)


def _assert_same(a, b):
    tol = 1e-12 * max(1.0, a.abs().max().item())
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


SCHEDULES = {
    "vp": lambda: schedules.VPLinear(),
    "ve": lambda: schedules.VE(),
    "rf": lambda: schedules.RectifiedFlow(),
    "edm": lambda: schedules.EDM(),
}


@pytest.mark.parametrize("family", list(SCHEDULES))
@pytest.mark.parametrize("prediction", ["eps", "x0", "velocity"])
def test_ddim_family_identity(family, prediction):
    sched = SCHEDULES[family]()
    # noise-form solvers cannot start where α = 0 (rectified flow at t = 1: ρ = σ/α = ∞)
    ts = diffcore.timesteps(sched, 12, t_start=0.99 if family == "rf" else None)
    ref = _run("ddim", sched, ts, prediction)
    for other, opts in [("dpm_solver_1", {}), ("dpmpp_1", {}), ("deis_1", {}), ("unipc_1", {"corrector": False}),
                        ("unipc_1", {"corrector": False, "predict_x0": False}), ("euler", {"variable": "rho"})]:
        _assert_same(ref, _run(other, sched, ts, prediction, **opts))


@pytest.mark.parametrize("family", ["vp", "edm", "rf"])
def test_dpm_solver_2_r1_is_heun_in_rho(family):
    sched = SCHEDULES[family]()
    ts = diffcore.timesteps(sched, 10, final_zero=False)
    if family == "rf":
        ts = torch.linspace(0.99, 0.02, 11, dtype=torch.float64)
    a = _run("dpm_solver_2", sched, ts, r1=1.0)
    b = _run("heun", sched, ts, variable="rho")
    _assert_same(a, b)


def test_edm_heun_is_karras_algorithm_1():
    """heun on EDM (α ≡ 1, ρ = σ) = Karras et al. Alg. 1, written out here with x̂ (last step Euler)."""
    sched = schedules.EDM()
    ts = diffcore.timesteps(sched, 8)  # karras grid ending at σ = 0
    assert ts[-1] == 0
    got = _run("heun", sched, ts, prediction="x0")
    x = X0 * sched.prior_std()
    den = lambda x, s: ORACLE.denoiser(x, torch.full((x.shape[0],), s, dtype=torch.float64), sched)  # noqa: E731
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        d = (x - den(x, s)) / s
        xn = x + (t - s) * d
        if t > 0:
            d2 = (xn - den(xn, t)) / t
            xn = x + (t - s) * 0.5 * (d + d2)
        x = xn
    _assert_same(got, x)


@pytest.mark.parametrize("family", ["vp", "ve", "rf"])
def test_unipc_without_corrector_is_dpmpp_multistep(family):
    sched = SCHEDULES[family]()
    ts = diffcore.timesteps(sched, 16, t_start=0.99 if family == "rf" else None)
    _assert_same(_run("dpmpp_2m", sched, ts), _run("unipc_2", sched, ts, corrector=False))
    _assert_same(_run("dpmpp_3m", sched, ts, w=2.0), _run("unipc_3", sched, ts, corrector=False))


def test_dpmpp_2s_midpoint_is_book_alg6():
    """Book Alg. 6 (r₁ = ½): u = (σ_{s1}/σ_s)x + α_{s1}(1 − e^{−h/2})x̂_s, x_t = (σ_t/σ_s)x + α_t(1 − e^{−h})x̂(u)."""
    sched = schedules.VPLinear()
    ts = diffcore.timesteps(sched, 7, spacing="uniform_t")
    got = _run("dpmpp_2s", sched, ts)
    x = X0 * sched.prior_std()
    ev = lambda t: sched.eval(torch.tensor([t], dtype=torch.float64))  # noqa: E731
    x0 = lambda x, t: ORACLE.denoiser(x, torch.full((x.shape[0],), t, dtype=torch.float64), sched)  # noqa: E731
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        vs, vt = ev(s), ev(t)
        h = float(vt.lam - vs.lam)
        s1 = float(sched.t_of_lam(vs.lam + h / 2))
        v1 = ev(s1)
        u = float(v1.sigma / vs.sigma) * x + float(v1.alpha) * (-math.expm1(-h / 2)) * x0(x, s)
        x = float(vt.sigma / vs.sigma) * x + float(vt.alpha) * (-math.expm1(-h)) * x0(u, s1)
    _assert_same(got, x)


def _reference_3m(sched, ts, x, lower_order_final):
    """The DPM-Solver reference code's multistep dpmsolver++ order 3 (w = 1), transcribed from its
    published update (r0 = h0/h, D1_0 = (m0 − m1)/r0, ..., x_t = σ_t/σ_s x − α_t φ1 m0 + α_t φ2 D1 −
    α_t φ3 D2 with φ1 = e^{−h} − 1, φ2 = φ1/h + 1, φ3 = φ2/h − ½)."""
    ev = lambda t: sched.eval(torch.tensor([float(t)], dtype=torch.float64))  # noqa: E731
    x0 = lambda x, t: ORACLE.denoiser(x, torch.full((x.shape[0],), float(t), dtype=torch.float64), sched)  # noqa: E731
    lam = [float(ev(t).lam) for t in ts]
    M = len(ts) - 1
    ms = []
    for i in range(M):
        ms.append(x0(x, ts[i]))
        order = min(3, i + 1)
        if lower_order_final and M < 15:
            order = min(order, M - i)
        vs, vt = ev(ts[i]), ev(ts[i + 1])
        h = lam[i + 1] - lam[i]
        phi1 = math.expm1(-h)
        a_t, ratio = float(vt.alpha), float(vt.sigma / vs.sigma)
        m0 = ms[-1]
        if order == 1:
            x = ratio * x - a_t * phi1 * m0
        elif order == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            D1 = (m0 - ms[-2]) / r0
            x = ratio * x - a_t * phi1 * m0 - 0.5 * a_t * phi1 * D1
        else:
            h0, h1 = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
            r0, r1 = h0 / h, h1 / h
            D1_0, D1_1 = (m0 - ms[-2]) / r0, (ms[-2] - ms[-3]) / r1
            D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
            D2 = (D1_0 - D1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            x = ratio * x - a_t * phi1 * m0 + a_t * phi2 * D1 - a_t * phi3 * D2
    return x


@pytest.mark.parametrize("lof", [True, False])
def test_dpmpp_3m_w1_matches_reference_code(lof):
    sched = schedules.VPLinear()
    ts = diffcore.timesteps(sched, 9)
    got = _run("dpmpp_3m", sched, ts, prediction="x0", w=1.0, lower_order_final=lof)
    _assert_same(got, _reference_3m(sched, ts, X0 * sched.prior_std(), lof))


def _poly_x0_exact(sched, ts, coeffs, i0, x_start, solver_name, **opts):
    """One full-history step of a data-form multistep solver for an x-independent model
    x̂(λ) = Σ c_k λ^k, against the exact x_t = (σ_t/σ_s)x_s + σ_t[F(λ_t) − F(λ_s)],
    F(λ) = e^λ Σ_k c_k P_k(λ) with P_0 = 1, P_1 = λ − 1, P_2 = λ² − 2λ + 2."""
    v = sched.eval(ts)
    lam = v.lam
    model_x0 = lambda lm: sum(c * lm ** k for k, c in enumerate(coeffs))  # noqa: E731
    P = [lambda l: 1.0, lambda l: l - 1.0, lambda l: l * l - 2 * l + 2]  # noqa: E731
    F = lambda l: math.exp(l) * sum(c * P[k](l) for k, c in enumerate(coeffs))  # noqa: E731
    plan = solvers.get(solver_name, lower_order_final=False, **opts).plan(sched, ts, dtype=torch.float64,
                                                                           prediction="x0")
    K = plan.solver.history
    st = plan.init_state(x_start)
    for j in range(i0 - K, i0):
        st.ring[plan.history_slot(j)] = model_x0(float(lam[j]))
    plan.step(st, i0, 0, torch.full_like(x_start, model_x0(float(lam[i0]))))
    s, t = i0, i0 + 1
    exact = float(v.sigma[t] / v.sigma[s]) * x_start + float(v.sigma[t]) * (F(float(lam[t])) - F(float(lam[s])))
    return (st.x - exact).abs().max().item()


def test_polynomial_exactness_of_data_form_multistep():
    sched = schedules.VPLinear()
    ts = torch.tensor([0.9, 0.7, 0.55, 0.4, 0.3], dtype=torch.float64)  # non-uniform in λ
    x = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    lin, quad = [0.2, -0.7], [0.2, -0.7, 0.3]
    assert _poly_x0_exact(sched, ts, lin, 2, x, "dpmpp_2m", solver_type="heun") < 1e-13
    assert _poly_x0_exact(sched, ts, quad, 3, x, "dpmpp_3m", w=2.0) < 1e-13
    assert _poly_x0_exact(sched, ts, quad, 3, x, "unipc_3", corrector=False) < 1e-13
    # the midpoint 2M variant and the reference weighting w = 1 are not exact (§6.7 oracle (b))
    assert _poly_x0_exact(sched, ts, lin, 2, x, "dpmpp_2m") > 1e-6
    assert _poly_x0_exact(sched, ts, quad, 3, x, "dpmpp_3m", w=1.0) > 1e-6


def test_point_mass_data_is_exact_for_data_form_solvers():
    """x̂ ≡ c (point-mass data): every data-form solver is exact on any grid (§6.3 oracle (b))."""
    sched = schedules.VPLinear()
    ts = diffcore.timesteps(sched, 3)
    c = 0.7
    x = torch.tensor([[1.3], [-0.4]], dtype=torch.float64)
    model = lambda x, t: torch.full_like(x, c)  # noqa: E731
    v = sched.eval(ts)
    exact = float(v.alpha[-1]) * c + float(v.sigma[-1] / v.sigma[0]) * (x - float(v.alpha[0]) * c)
    for name in ["ddim", "dpmpp_1", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc_2", "unipc_3"]:
        plan = solvers.get(name).plan(sched, ts, dtype=torch.float64, prediction="x0")
        assert (run_plan(plan, model, x) - exact).abs().max().item() < 1e-13, name
