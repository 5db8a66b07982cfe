"""diffcore.bridge: Gaussian Schrödinger bridge closed form, IPF (exact Gaussian and discrete), DSB, dynamic OT
and the PF-ODE map versus the Brenier map (book §7.2–7.5)."""
import math

import pytest
import torch

from diffcore import bridge, coupling, oracles, ot, schedules

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")

M0 = torch.tensor([0.0, 0.5], dtype=F64)
M1 = torch.tensor([1.0, -0.5], dtype=F64)
S0 = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
S1 = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], dtype=F64)  # does not commute with S0


def _sb(sigma=0.7):
    return bridge.gaussian_sb(M0, S0, M1, S1, sigma)


# ------------------------------------------------------------------------------------------------
# the Gaussian bridge, checked against its defining properties


@pytest.mark.parametrize("sigma", [0.3, 0.7, 2.0])
def test_gaussian_sb_coupling_has_the_schrodinger_product_form(sigma):
    # the static SB is the coupling with the given marginals of the form f(x0) g(x1) exp(−‖x0 − x1‖²/(2σ²))
    # (book eq. 7.2.11 at the ends; §7.3): for a Gaussian joint the x0–x1 block of its precision is −I/σ²
    sb = _sb(sigma)
    G = sb.coupling_cov
    assert float(torch.linalg.eigvalsh(G).min()) > 0
    P = torch.linalg.inv(G)
    torch.testing.assert_close(P[:2, 2:], -torch.eye(2, dtype=F64) / sigma ** 2, rtol=0, atol=1e-9 / sigma ** 2)
    torch.testing.assert_close(G[:2, :2], S0, rtol=0, atol=0)
    torch.testing.assert_close(G[2:, 2:], S1, rtol=0, atol=0)


def test_gaussian_sb_1d_and_limits():
    # 1-D: C = (√(σ⁴ + 4ab) − σ²)/2 (the ε = 2σ² case of the entropic cross-covariance in test_ot's 1-D test)
    a, b, s = 1.3, 0.4, 0.8
    sb = bridge.gaussian_sb([0.0], [[a]], [1.0], [[b]], s)
    assert abs(float(sb.cross_cov) - (math.sqrt(s ** 4 + 4 * a * b) - s ** 2) / 2) < 1e-14
    # σ → 0: the OT coupling Σ0 A; σ → ∞: independence
    A, _, _ = bridge.gaussian_ot_map(M0, S0, M1, S1)
    torch.testing.assert_close(bridge.gaussian_sb(M0, S0, M1, S1, 1e-4).cross_cov, S0 @ A, rtol=0, atol=1e-7)
    assert float(bridge.gaussian_sb(M0, S0, M1, S1, 1e3).cross_cov.abs().max()) < 1e-5


def test_gaussian_sb_drifts_solve_fokker_planck_and_nelson_relation():
    # the drifts are linear, b_t(x) = K_t x + k_t; the marginal N(m_t, Σ_t) must obey dm/dt = b_t(m_t),
    # dΣ/dt = K Σ + Σ Kᵀ + σ² I forward, the same with −d/dt for the backward drift, and b + b̂ = σ² ∇log p_t
    sigma = 0.7
    sb = _sb(sigma)
    eye = torch.eye(2, dtype=F64)
    h = 1e-5
    for t in (0.1, 0.35, 0.6, 0.9):
        m, S = sb.marginal(t)
        dm = (sb.marginal(t + h)[0] - sb.marginal(t - h)[0]) / (2 * h)
        dS = (sb.marginal(t + h)[1] - sb.marginal(t - h)[1]) / (2 * h)
        pts = torch.cat([m[None], m[None] + eye])
        bf, bb = sb.forward_drift(pts, t), sb.backward_drift(pts, t)
        Kf, Kb = (bf[1:] - bf[:1]).T, (bb[1:] - bb[:1]).T
        torch.testing.assert_close(bf[0], dm, rtol=0, atol=1e-8)
        torch.testing.assert_close(bb[0], -dm, rtol=0, atol=1e-8)
        torch.testing.assert_close(Kf @ S + S @ Kf.T + sigma ** 2 * eye, dS, rtol=0, atol=1e-8)
        torch.testing.assert_close(Kb @ S + S @ Kb.T + sigma ** 2 * eye, -dS, rtol=0, atol=1e-8)
        x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
        score = -(x - m) @ torch.linalg.inv(S)
        torch.testing.assert_close(sb.forward_drift(x, t) + sb.backward_drift(x, t), sigma ** 2 * score,
                                   rtol=0, atol=1e-12)
        # the drifts are gradients (of σ² log Ψ and σ² log Ψ̂, book eq. 7.2.13-7.2.14): symmetric Jacobians,
        # and the potentials' gradients reproduce them while Ψ Ψ̂ = p_t
        torch.testing.assert_close(Kf, Kf.T, rtol=0, atol=1e-10)
        torch.testing.assert_close(Kb, Kb.T, rtol=0, atol=1e-10)
        xg = x.clone().requires_grad_(True)
        lp, lph = sb.log_potentials(xg, t)
        gp, gph = torch.autograd.grad(lp.sum(), xg, retain_graph=True)[0], torch.autograd.grad(lph.sum(), xg)[0]
        torch.testing.assert_close(sigma ** 2 * gp, sb.forward_drift(x, t), rtol=0, atol=1e-10)
        torch.testing.assert_close(sigma ** 2 * gph, sb.backward_drift(x, t), rtol=0, atol=1e-10)
        logp = torch.distributions.MultivariateNormal(m, S).log_prob(x)
        torch.testing.assert_close(lp + lph, logp, rtol=0, atol=1e-10)
    # ends: the marginals are the given ones
    torch.testing.assert_close(sb.marginal(1.0)[1], S1, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# IPF


def test_gaussian_ipf_converges_to_the_closed_form():
    sigma = 0.7
    sb = _sb(sigma)
    steps = bridge.gaussian_ipf(M0, S0, M1, S1, sigma, iterations=40)
    assert len(steps) == 41
    cross = [float((s.cov[:2, 2:] - sb.cross_cov).abs().max()) for s in steps]
    marg = [max(float((s.cov[2:, 2:] - S1).abs().max()), float((s.mean[2:] - M1).abs().max())) for s in steps]
    assert cross[0] > 0.5 and marg[0] > 0.9  # the reference coupling x1 = x0 + σz is far
    # strictly decreasing until float64 rounding (≈ 1e-15) is reached
    assert all(cross[k + 1] < cross[k] or cross[k] < 1e-13 for k in range(len(cross) - 1)), cross
    assert all(marg[k + 1] < marg[k] or marg[k] < 1e-13 for k in range(len(marg) - 1)), marg
    assert cross[-1] < 1e-10 and marg[-1] < 1e-7  # linear convergence: the means contract by ≈ 0.65 per iteration
    # every iterate ends with the t = 0 marginal imposed
    for s in steps[1:]:
        torch.testing.assert_close(s.cov[:2, :2], S0, rtol=0, atol=1e-12)


def test_static_bridge_is_entropic_ot_at_twice_sigma_squared_with_potentials():
    # the same statement as test_coupling's SB-plan test, through the bridge module, plus the potentials
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 2, generator=g, dtype=F64)
    y = torch.randn(15, 2, generator=g, dtype=F64) + 1
    a = torch.rand(12, generator=g, dtype=F64) + 0.1
    b = torch.rand(15, generator=g, dtype=F64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    sigma = 0.7
    res = bridge.static_bridge(x, y, sigma, a, b)
    C = ot.squared_euclidean(x, y)
    Q = ot.sinkhorn(a, b, C / 2, sigma ** 2, tol=1e-12).plan
    torch.testing.assert_close(res.plan, Q, rtol=0, atol=1e-10)
    gibbs = a[:, None] * b[None] * torch.exp(res.phi[:, None] + res.psi[None] - C / (2 * sigma ** 2))
    torch.testing.assert_close(res.plan, gibbs, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(res.plan.sum(1), a, rtol=0, atol=1e-9)
    # uniform weights: the plan SB-CFM resamples
    P = coupling.SchrodingerBridge(sigma=sigma, tol=1e-12).plan(x[:12], y[:12])
    torch.testing.assert_close(bridge.static_bridge(x[:12], y[:12], sigma, tol=1e-12).plan, P, rtol=0, atol=1e-10)


def test_static_bridge_of_gaussian_samples_approaches_the_closed_form_cross_covariance():
    # 1-D, n = 1500 a side: the plan's cross-covariance has sd ≈ √((ab + c²)/n) ≈ 0.03; bound ≈ 4.5 sd
    g = torch.Generator().manual_seed(1)
    n, a, b, sigma = 1500, 1.0, 2.0, 0.8
    x = torch.randn(n, 1, generator=g, dtype=F64) * math.sqrt(a)
    y = torch.randn(n, 1, generator=g, dtype=F64) * math.sqrt(b) + 0.5
    P = bridge.static_bridge(x, y, sigma).plan
    mx, my = float((P.sum(1) * x[:, 0]).sum()), float((P.sum(0) * y[:, 0]).sum())
    cov = float((P * (x - mx) * (y.T - my)).sum())
    c = float(bridge.gaussian_sb([0.0], [[a]], [0.5], [[b]], sigma).cross_cov)
    assert abs(cov - c) < 0.15


# ------------------------------------------------------------------------------------------------
# dynamic OT and the PF-ODE map (§7.2.1, §7.5)


def test_brenier_map_and_benamou_brenier_action():
    A, bvec, w2 = bridge.gaussian_ot_map(M0, S0, M1, S1)
    torch.testing.assert_close(A, A.T, rtol=0, atol=0)
    assert float(torch.linalg.eigvalsh(A).min()) > 0
    torch.testing.assert_close(A @ S0 @ A, S1, rtol=0, atol=1e-12)
    # W2² = E‖T(x) − x‖² in closed form
    E = A - torch.eye(2, dtype=F64)
    shift = bvec + E @ M0
    assert abs(w2 - float(torch.trace(E @ S0 @ E) + shift @ shift)) < 1e-12
    # the Benamou–Brenier action of the displacement velocity: particles move on straight lines at constant
    # speed, so the action equals the samples' own transport cost (to the integrator's accuracy)
    g = torch.Generator().manual_seed(0)
    x = M0 + torch.randn(4000, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(S0).T
    v = bridge.gaussian_ot_velocity(M0, S0, M1, S1)
    energy = bridge.kinetic_energy(v, x, steps=20)
    emp = float(((x @ A.T + bvec - x) ** 2).sum(1).mean())
    assert abs(energy - emp) < 1e-9
    assert abs(emp - w2) < 0.1  # sampling: sd of ‖T(x) − x‖² ≈ 1.4 over 4000 draws → se 0.022


def test_linear_interpolation_flow_map_is_not_the_brenier_map():
    # book §7.5: the flow of E[x1 − x0 | x_t] (independent coupling) pushes N(m0, Σ0) to N(m1, Σ1) but is not
    # the OT map when Σ0 and Σ1 do not commute (M is not symmetric), and it transports at a higher cost
    A, _, w2 = bridge.gaussian_ot_map(M0, S0, M1, S1)
    M, c = bridge.gaussian_linear_flow_map(M0, S0, M1, S1)
    torch.testing.assert_close(M @ S0 @ M.T, S1, rtol=0, atol=1e-9)
    torch.testing.assert_close(M @ M0 + c, M1, rtol=0, atol=1e-12)
    assert float((M - M.T).abs().max()) > 0.1
    assert float((M - A).abs().max()) > 0.1
    E = M - torch.eye(2, dtype=F64)
    cost = float(torch.trace(E @ S0 @ E.T) + ((M1 - M0) ** 2).sum())
    assert cost > w2 + 0.02, (cost, w2)
    # commuting covariances (Σ0 = I): the same flow is the OT map
    Mi, _ = bridge.gaussian_linear_flow_map(M0, torch.eye(2, dtype=F64), M1, S1)
    Ai, _, _ = bridge.gaussian_ot_map(M0, torch.eye(2, dtype=F64), M1, S1)
    torch.testing.assert_close(Mi, Ai, rtol=0, atol=1e-8)


def test_diffusion_pf_ode_of_gaussian_data_is_the_ot_map():
    # the library's exact PF-ODE map of Gaussian data (oracles.Gaussian.flow_map, VP) from t = 1 to t = 1e-3
    # is linear with a symmetric PD matrix, hence the Brenier map between its two Gaussian marginals
    sched = schedules.get("vp_linear")
    g = oracles.Gaussian(M1, S1)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    pts = torch.cat([torch.zeros(1, 2, dtype=F64), torch.eye(2, dtype=F64), x])
    y = g.flow_map(pts, 1.0, 1e-3, sched)
    L = (y[1:3] - y[:1]).T
    v = sched.eval(torch.tensor([1.0, 1e-3], dtype=F64))
    a1, s1 = float(v.alpha[0]), float(v.sigma[0])
    a0, s0 = float(v.alpha[1]), float(v.sigma[1])
    A, bvec, _ = bridge.gaussian_ot_map(a1 * M1, a1 ** 2 * S1 + s1 ** 2 * torch.eye(2, dtype=F64),
                                        a0 * M1, a0 ** 2 * S1 + s0 ** 2 * torch.eye(2, dtype=F64))
    torch.testing.assert_close(L, A, rtol=0, atol=1e-9)
    torch.testing.assert_close(y[3:], x @ A.T + bvec, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# DSB


def _gauss_pair(n, gen):
    xs = torch.randn(n, 1, generator=gen, dtype=F64)
    xt = 2 + 0.5 * torch.randn(n, 1, generator=gen, dtype=F64)
    return xs, xt


def _dsb_errors(d, xs, xt, gen, c_ref):
    p = d.sample_forward(xs, generator=gen, return_path=True)
    x0, x1 = p[0, :, 0], p[-1, :, 0]
    q = d.sample_backward(xt, generator=gen)[:, 0]
    cross = float(((x0 - x0.mean()) * (x1 - x1.mean())).mean())
    return {"fwd_mean": abs(float(x1.mean()) - 2), "fwd_var": abs(float(x1.var()) - 0.25),
            "bwd_mean": abs(float(q.mean())), "bwd_var": abs(float(q.var()) - 1), "cross": abs(cross - c_ref)}


def test_dsb_affine_drifts_converge_to_the_gaussian_bridge():
    # source N(0, 1), target N(2, 0.25), σ = 1: the SB cross-covariance is (√2 − 1)/2 ≈ 0.207. Least-squares
    # affine drifts make the iterates IPF's up to Monte Carlo (4000 paths; se of a mean ≈ 0.016, of a
    # variance ≈ 0.02) and the O(1/N) bias of the N = 30 step chains (≈ 0.02 forward, 0.1 backward, measured
    # against N = 10 and 40)
    gen = torch.Generator().manual_seed(0)
    xs, xt = _gauss_pair(4000, gen)
    c_ref = float(bridge.gaussian_sb([0.0], [[1.0]], [2.0], [[0.25]], 1.0).cross_cov)
    d = bridge.DSB(1, sigma=1.0, num_steps=30, drift="affine", dtype=F64)
    hist = []
    d.fit(xs, xt, iterations=5, num_paths=4000, generator=gen,
          callback=lambda i, dd: hist.append(_dsb_errors(dd, xs, xt, gen, c_ref)))
    first, last = hist[0], hist[-1]
    assert first["fwd_mean"] > 0.15 and first["bwd_mean"] > 0.7  # iteration 1: one half bridge each way
    assert last["fwd_mean"] < first["fwd_mean"] / 3 and last["bwd_mean"] < first["bwd_mean"] / 3
    assert last["fwd_mean"] < 0.08 and last["fwd_var"] < 0.06 and last["cross"] < 0.05
    assert last["bwd_mean"] < 0.2 and last["bwd_var"] < 0.1
    # the time-½ marginal of the forward chain is the bridge's N(m_½, Σ_½) (mean 1, variance ≈ 0.54)
    mid = d.sample_forward(xs, generator=gen, return_path=True)[15, :, 0]
    m_half, S_half = bridge.gaussian_sb([0.0], [[1.0]], [2.0], [[0.25]], 1.0).marginal(0.5)
    assert abs(float(mid.mean()) - float(m_half)) < 0.06 and abs(float(mid.var()) - float(S_half)) < 0.06


def test_dsb_mlp_quick_run_moves_toward_the_target():
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    xs, xt = _gauss_pair(2000, gen)
    d = bridge.DSB(1, sigma=1.0, num_steps=10, hidden=32, lr=3e-3)
    d.fit(xs, xt, iterations=1, train_steps=150, num_paths=512, generator=gen)
    x1 = d.sample_forward(xs[:2000].float(), generator=gen)
    q = d.sample_backward(xt[:2000].float(), generator=gen)
    assert x1.dtype == torch.float32 and bool(torch.isfinite(x1).all())
    # iteration 1's backward chain is the time reversal of the reference from N(0, 1) (a half bridge, book
    # §7.4.2): E[x0 | x1] = x1/2, so from the target (mean 2) it ends at mean 1; the forward chain fitted to
    # its reversal ends near the target mean 2, where the reference alone ends at 0
    assert abs(float(q.mean()) - 1) < 0.25, float(q.mean())
    assert abs(float(x1.mean()) - 2) < 0.6, float(x1.mean())


@pytest.mark.slow
def test_dsb_mlp_converges_to_the_gaussian_bridge():
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    xs, xt = _gauss_pair(8000, gen)
    c_ref = float(bridge.gaussian_sb([0.0], [[1.0]], [2.0], [[0.25]], 1.0).cross_cov)
    d = bridge.DSB(1, sigma=1.0, num_steps=30, hidden=64, lr=2e-3)
    hist = []
    d.fit(xs.float(), xt.float(), iterations=5, train_steps=800, batch_size=512, num_paths=2048, generator=gen,
          callback=lambda i, dd: hist.append(_dsb_errors(dd, xs.float(), xt.float(), gen, c_ref)))
    first, last = hist[0], hist[-1]
    assert last["bwd_mean"] < first["bwd_mean"] / 2
    assert last["fwd_mean"] < 0.15 and last["fwd_var"] < 0.1 and last["cross"] < 0.08
    assert last["bwd_mean"] < 0.3 and last["bwd_var"] < 0.2


# ------------------------------------------------------------------------------------------------
# bad inputs


def test_bridge_rejects_bad_input():
    bad_cov = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # indefinite
    cases = [
        (lambda: bridge.gaussian_sb(M0, bad_cov, M1, S1, 1.0), ValueError, "cov0: expected a positive definite"),
        (lambda: bridge.gaussian_sb(M0, S0, M1, torch.tensor([[1.0, 0.2], [0.1, 1.0]]), 1.0), ValueError,
         "cov1: expected a symmetric"),
        (lambda: bridge.gaussian_sb(M0, S0, M1[:1], S1, 1.0), ValueError, "mean1: expected shape"),
        (lambda: bridge.gaussian_sb(M0, S0, M1, torch.eye(3), 1.0), ValueError, r"cov1: expected a \(2, 2\)"),
        (lambda: bridge.gaussian_sb(M0, S0, M1, S1, 0.0), ValueError, "sigma: expected a positive"),
        (lambda: bridge.gaussian_sb(M0, S0, M1, S1, float("nan")), ValueError, "sigma"),
        (lambda: bridge.gaussian_sb(torch.tensor([float("nan"), 0.0]), S0, M1, S1, 1.0), ValueError, "mean0"),
        (lambda: bridge.gaussian_sb("m", S0, M1, S1, 1.0), TypeError, "mean0"),
        (lambda: bridge.gaussian_ipf(M0, S0, M1, S1, 1.0, iterations=-1), ValueError, "iterations"),
        (lambda: _sb().marginal(1.5), ValueError, "t: expected a time in"),
        (lambda: _sb().forward_drift(torch.zeros(3, 2, dtype=F64), 1.0), ValueError, "t: expected a time in"),
        (lambda: _sb().backward_drift(torch.zeros(3, 2, dtype=F64), 0.0), ValueError, "t: expected a time in"),
        (lambda: _sb().forward_drift(torch.zeros(3, 3, dtype=F64), 0.5), ValueError, r"x: expected shape \(B, 2\)"),
        (lambda: _sb().sample_coupling(0), ValueError, "n: expected"),
        (lambda: _sb().log_potentials(torch.zeros(3, 2, dtype=F64), 1.0), ValueError, "t: expected a time in"),
        (lambda: bridge.static_bridge(torch.zeros(3, 2), torch.zeros(4, 3), 1.0), ValueError, "y: expected shape"),
        (lambda: bridge.static_bridge([[0.0]], torch.zeros(4, 1), 1.0), TypeError, "x: expected"),
        (lambda: bridge.static_bridge(torch.zeros(3, 1), torch.zeros(4, 1), -1.0), ValueError, "sigma"),
        (lambda: bridge.kinetic_energy("v", torch.zeros(3, 2)), TypeError, "velocity"),
        (lambda: bridge.kinetic_energy(lambda x, t: x, torch.zeros(3, 2), steps=0), ValueError, "steps"),
        (lambda: bridge.gaussian_linear_flow_map(M0, S0, M1, S1, rtol=0), ValueError, "rtol"),
        (lambda: bridge.DSB(0), ValueError, "dim"),
        (lambda: bridge.DSB(1, sigma=-1), ValueError, "sigma"),
        (lambda: bridge.DSB(1, num_steps=0), ValueError, "num_steps"),
        (lambda: bridge.DSB(1, drift="linear"), ValueError, "drift"),
        (lambda: bridge.DSB(1, dtype=torch.int64), TypeError, "dtype"),
        (lambda: bridge.DSB(1).sample_backward(torch.zeros(3, 1)), RuntimeError, "fit"),
        (lambda: bridge.DSB(1).sample_forward(torch.zeros(3, 2)), ValueError, r"x0: expected shape \(B, 1\)"),
        (lambda: bridge.DSB(1).sample_forward(torch.full((3, 1), float("inf"))), ValueError, "x0: expected finite"),
        (lambda: bridge.DSB(1).fit(torch.zeros(3, 1), torch.zeros(3, 1), iterations=0), ValueError, "iterations"),
        (lambda: bridge.DSB(1).fit(torch.zeros(3, 1), torch.zeros(3, 2)), ValueError, "x_tgt"),
        (lambda: bridge.DSB(1).fit(torch.zeros(3, 1), torch.zeros(3, 1), callback=3), TypeError, "callback"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dsb_affine_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(0)
    xs, xt = _gauss_pair(4000, torch.Generator().manual_seed(0))
    d = bridge.DSB(1, sigma=1.0, num_steps=30, drift="affine", dtype=F64, device="cuda")
    d.fit(xs.to("cuda"), xt.to("cuda"), iterations=5, num_paths=4000, generator=gen)
    x1 = d.sample_forward(xs.to("cuda"), generator=gen)
    assert x1.device.type == "cuda"
    assert abs(float(x1.mean()) - 2) < 0.08 and abs(float(x1.var()) - 0.25) < 0.06
