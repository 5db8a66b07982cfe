"""Entropic OT (Sinkhorn) and exact assignment (book Sec. 7.2.1–7.2.2): POT and scipy as
independent references, the optimality certificates of entropic OT, the ε-limits, and the sorted / identity
oracles of §7.7."""
import math
import warnings

import numpy as np
import pytest
import torch

import diffcore
from diffcore import ot

scipy_opt = pytest.importorskip("scipy.optimize")
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and diffcore.build_info()["cuda"]), reason="no CUDA device")


def clouds(n, m, d=2, seed=0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return x, y


def normalized_cost(n, m, d=2, seed=0):
    C = ot.squared_euclidean(*clouds(n, m, d, seed))
    return C / C.max()


def random_weights(n, seed, zeros=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    if zeros:
        w[torch.randperm(n, generator=g)[:zeros]] = 0.0
    return w / w.sum()


def pot_log_sinkhorn(a, b, C, eps):
    """POT's log-domain Sinkhorn run to stopThr 1e-12 (numItermax 1e5); asserts that it converged and
    returns its plan and potentials in our convention P = a b exp((f + g − C)/ε)."""
    pot = pytest.importorskip("ot")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P, log = pot.bregman.sinkhorn_log(a.numpy(), b.numpy(), C.numpy(), eps, stopThr=1e-12, numItermax=100000,
                                          log=True)
    P = torch.from_numpy(P)
    assert (P.sum(1) - a).abs().sum() < 1e-11 and (P.sum(0) - b).abs().sum() < 1e-11, "POT did not converge"
    la = torch.where(a > 0, a.log(), torch.zeros_like(a))
    lb = torch.where(b > 0, b.log(), torch.zeros_like(b))
    f = eps * (torch.from_numpy(log["log_u"]) - la)
    g = eps * (torch.from_numpy(log["log_v"]) - lb)
    return P, f, g


def regularized_value(P, a, b, C, eps):
    """⟨P, C⟩ + ε Σ P log(P/(a bᵀ)) of a given plan (0 log 0 = 0)."""
    ab = a[:, None] * b[None, :]
    m = P > 0
    return float((P * C).sum() + eps * (P[m] * torch.log(P[m] / ab[m])).sum())


def gauge(f, g, a, b):
    """Fix the (f + k, g − k) freedom by ⟨a, f⟩ = ⟨b, g⟩, on the positive-weight entries."""
    k = ((a * f).sum() - (b * g).sum()) / 2
    return f - k, g + k


# ------------------------------------------------------------------------------------------------
# Sinkhorn against POT (the "done when")

@pytest.mark.parametrize("n,m,eps,zeros", [(64, 64, 0.01, 0), (50, 70, 0.05, 0), (80, 60, 0.02, 7), (96, 96, 0.004, 0)])
def test_sinkhorn_matches_pot_float64(n, m, eps, zeros):
    C = normalized_cost(n, m, seed=n + m)
    a, b = random_weights(n, 1, zeros), random_weights(m, 2, zeros // 2)
    tol = 1e-9
    res = ot.sinkhorn(a, b, C, eps, tol=tol, max_iters=20000)
    assert bool(res.converged) and float(res.marginal_error) <= tol
    P_pot, f_pot, g_pot = pot_log_sinkhorn(a, b, C, eps)
    assert float((res.plan - P_pot).abs().sum()) <= 10 * tol
    assert float((res.plan - P_pot).abs().max() / P_pot.max()) <= 1e-6
    V_pot = regularized_value(P_pot, a, b, C, eps)
    assert abs(float(res.value) - V_pot) <= 1e-9 * abs(V_pot)
    assert abs(float(res.value) - regularized_value(res.plan, a, b, C, eps)) <= 1e-12 + 1e-10 * abs(V_pot)
    assert abs(float(res.transport_cost) - float((res.plan * C).sum())) <= 1e-13
    am, bm = a > 0, b > 0
    f1, g1 = gauge(res.f[am], res.g[bm], a[am], b[bm])
    f2, g2 = gauge(f_pot[am], g_pot[bm], a[am], b[bm])
    assert float((f1 - f2).abs().max()) <= 1e-8 and float((g1 - g2).abs().max()) <= 1e-8
    # marginals: rows to tol, columns exact (the last update is a g-update)
    assert float((res.plan.sum(1) - a).abs().sum()) <= tol
    assert float((res.plan.sum(0) - b).abs().sum()) <= 1e-14


def test_plain_iterates_are_the_log_domain_reference():
    # overrelax=False is Sinkhorn itself: the same iterates as the eager log-domain reference (and as
    # static IPF, §7.3 oracle (10)), so the same stopping iteration and the same plan
    C = normalized_cost(40, 50, seed=3)
    a, b = random_weights(40, 4), random_weights(50, 5)
    core = ot.sinkhorn(a, b, C, 0.03, overrelax=False)
    ref = ot.sinkhorn_reference(a, b, C, 0.03)
    assert int(core.iterations) == int(ref.iterations)
    assert float((core.plan - ref.plan).abs().sum()) <= 1e-12
    assert abs(float(core.value - ref.value)) <= 1e-13


def test_overrelaxation_reaches_the_same_optimum_in_fewer_iterations():
    C = normalized_cost(128, 128, seed=9)
    plain = ot.sinkhorn(None, None, C, 0.003, overrelax=False, max_iters=5000)
    fast = ot.sinkhorn(None, None, C, 0.003, max_iters=5000)
    assert bool(plain.converged) and bool(fast.converged)
    assert int(fast.iterations) < int(plain.iterations) / 2
    assert float((fast.plan - plain.plan).abs().sum()) <= 2e-8


# ------------------------------------------------------------------------------------------------
# Certificates and limits of entropic OT (Peyré & Cuturi 2019, Ch. 4)

def test_gibbs_form_certificate_and_duality():
    n, m, eps = 60, 45, 0.02
    C = normalized_cost(n, m, seed=11)
    a, b = random_weights(n, 6), random_weights(m, 7)
    res = ot.sinkhorn(a, b, C, eps)
    gibbs = a[:, None] * b[None, :] * torch.exp((res.f[:, None] + res.g[None, :] - C) / eps)
    assert torch.allclose(res.plan, gibbs, rtol=1e-12, atol=1e-300)
    assert float((res.plan.sum(1) - a).abs().sum()) <= 1e-9
    assert float((res.plan.sum(0) - b).abs().sum()) <= 1e-14
    # primal = dual: ⟨a, f⟩ + ⟨b, g⟩ − ε Σ a b (e^{(f+g−C)/ε} − 1) equals the regularized value
    dual = float((a * res.f).sum() + (b * res.g).sum() - eps * (gibbs.sum() - 1.0))
    assert abs(dual - float(res.value)) <= 1e-9 * (1 + abs(float(res.value)))


def test_plan_invariant_under_row_and_column_shifts():
    n, m = 50, 40
    C = normalized_cost(n, m, seed=12)
    g = torch.Generator().manual_seed(0)
    r = torch.rand(n, 1, generator=g, dtype=torch.float64)
    s = torch.rand(1, m, generator=g, dtype=torch.float64)
    p0 = ot.sinkhorn(None, None, C, 0.05).plan
    p1 = ot.sinkhorn(None, None, C + r + s, 0.05).plan
    assert float((p0 - p1).abs().sum()) <= 1e-8


def test_small_eps_value_between_assignment_optimum_and_entropy_bound():
    # uniform square problem: V0 ≤ V_ε ≤ V0 + ε log n (§5.5), and P moves towards the optimal
    # permutation / n as ε decreases (§7.3 oracle (5))
    n = 48
    C = normalized_cost(n, n, seed=2)  # small-ε convergence is problem dependent: one that converges
    A = ot.exact_assignment(C)
    V0 = float(A.cost) / n
    perm_plan = torch.zeros(n, n, dtype=torch.float64)
    perm_plan[torch.arange(n), A.perm] = 1.0 / n
    dist = []
    for eps in (1e-2, 3e-3, 1e-3):
        res = ot.sinkhorn(None, None, C, eps, max_iters=20000)
        assert bool(res.converged)
        assert V0 - 1e-9 <= float(res.value) <= V0 + eps * math.log(n) + 1e-9
        assert V0 - 1e-9 <= float(res.transport_cost) <= float(res.value)
        dist.append(float((res.plan - perm_plan).abs().sum()))
    assert dist[0] > dist[1] > dist[2]


def test_cost_and_eps_rescaling_give_the_same_plan():
    # §7.4 oracle (2): cost ‖·‖²/2 with ε equals cost ‖·‖² with 2ε (the objective is scaled by 2)
    x, y = clouds(40, 30, seed=29)
    C = ot.squared_euclidean(x, y)
    half = ot.sinkhorn(None, None, C / 2, 0.1)
    full = ot.sinkhorn(None, None, C, 0.2)
    assert float((half.plan - full.plan).abs().sum()) <= 1e-8
    assert float(full.value) == pytest.approx(2 * float(half.value), rel=1e-9)


def test_large_eps_gives_the_independent_coupling():
    n, m = 30, 20
    C = normalized_cost(n, m, seed=14)
    a, b = random_weights(n, 8), random_weights(m, 9)
    res = ot.sinkhorn(a, b, C, 1e4)
    assert torch.allclose(res.plan, a[:, None] * b[None, :], rtol=1e-4, atol=0)


def test_1d_gaussian_entropic_cross_covariance():
    # §5.5: for cost κ(x − y)², p = N(m0, A), q = N(m1, Bv) the entropic optimum has cross-covariance
    # c = (−ε + √(ε² + 16 κ² A Bv))/(4κ) (= 1 here, between independence 0 and the monotone map √2).
    # 2000 samples a side: the plan's cross-covariance has sd ≤ √((A·Bv + c²)/n) ≈ 0.039 (0.025
    # measured over 12 seeds); the bound is ≈ 4 sd.
    n, kappa, eps, A, Bv = 2000, 1.0, 2.0, 1.0, 2.0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, generator=g, dtype=torch.float64) * math.sqrt(A)
    y = torch.randn(n, generator=g, dtype=torch.float64) * math.sqrt(Bv) + 0.5
    res = ot.sinkhorn(None, None, kappa * (x[:, None] - y[None, :]) ** 2, eps)
    assert bool(res.converged)
    P = res.plan
    mx, my = float((P.sum(1) * x).sum()), float((P.sum(0) * y).sum())
    cov = float((P * (x[:, None] - mx) * (y[None, :] - my)).sum())
    c = (-eps + math.sqrt(eps ** 2 + 16 * kappa ** 2 * A * Bv)) / (4 * kappa)
    assert abs(cov - c) < 0.15


# ------------------------------------------------------------------------------------------------
# Batching, zero weights, dtypes, options

def test_batched_equals_one_at_a_time():
    g = torch.Generator().manual_seed(15)
    C = torch.rand(4, 30, 25, generator=g, dtype=torch.float64)
    a = torch.rand(4, 30, generator=g, dtype=torch.float64)
    a /= a.sum(-1, keepdim=True)
    res = ot.sinkhorn(a, None, C, 0.02)
    for i in range(4):
        one = ot.sinkhorn(a[i], None, C[i], 0.02)
        assert torch.equal(one.plan, res.plan[i]) and int(one.iterations) == int(res.iterations[i])
        assert float(one.value) == float(res.value[i])
    assert res.plan.shape == (4, 30, 25) and res.f.shape == (4, 30) and res.value.shape == (4,)
    # two leading batch dims
    res2 = ot.sinkhorn(None, None, C.reshape(2, 2, 30, 25), 0.02)
    assert res2.plan.shape == (2, 2, 30, 25) and res2.converged.shape == (2, 2)
    ref = ot.sinkhorn(None, None, C, 0.02)
    assert torch.equal(res2.plan.reshape(4, 30, 25), ref.plan)


def test_zero_weights_are_excluded():
    n, m = 40, 30
    C = normalized_cost(n, m, seed=16)
    a, b = random_weights(n, 10, zeros=9), random_weights(m, 11, zeros=5)
    res = ot.sinkhorn(a, b, C, 0.02)
    assert bool((res.plan[a == 0] == 0).all()) and bool((res.plan[:, b == 0] == 0).all())
    assert bool(torch.isfinite(res.f).all()) and bool(torch.isfinite(res.g).all())
    sub = ot.sinkhorn(a[a > 0], b[b > 0], C[a > 0][:, b > 0], 0.02)
    assert float((res.plan[a > 0][:, b > 0] - sub.plan).abs().sum()) <= 1e-13
    # the zero-weight potentials are the c-transforms of the others
    f_ct = -0.02 * torch.logsumexp(torch.log(b[b > 0]) + (res.g[b > 0] - C[:, b > 0]) / 0.02, dim=1)
    assert torch.allclose(res.f[a == 0], f_ct[a == 0], rtol=0, atol=1e-12)


def test_float32_within_its_tolerance():
    C = normalized_cost(100, 80, seed=17)
    r64 = ot.sinkhorn(None, None, C, 0.02)
    r32 = ot.sinkhorn(None, None, C.float(), 0.02)
    assert r32.plan.dtype == torch.float32 and r32.value.dtype == torch.float32
    assert bool(r32.converged) and float(r32.marginal_error) <= 1e-6
    assert float((r32.plan.double() - r64.plan).abs().sum()) <= 1e-5
    assert abs(float(r32.value) - float(r64.value)) <= 1e-5 * abs(float(r64.value))
    assert float((r32.plan.double().sum(1) - 1 / 100).abs().sum()) <= 2e-6


def test_tiny_eps_and_large_costs_stay_finite():
    # absorption + log-domain repairs: C/ε up to ~3e7, still a finite plan with exact column sums
    x, y = clouds(40, 40, seed=18)
    C = ot.squared_euclidean(x, y) * 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ot.ConvergenceWarning)
        res = ot.sinkhorn(None, None, C, 1e-4, max_iters=2000, eps_scaling=False)
    assert bool(torch.isfinite(res.plan).all()) and bool(torch.isfinite(res.f).all())
    assert float((res.plan.sum(0) - 1 / 40).abs().sum()) <= 1e-12
    assert float(res.marginal_error) > 0.5  # a cold start this far below the cost range barely moves
    # ε-scaling does; "auto" (the default) turns it on here since ε < 1e-4 · (max C − min C)
    A = ot.exact_assignment(C)
    for scaled in (ot.sinkhorn(None, None, C, 1e-4, eps_scaling=True, max_iters=2000),
                   ot.sinkhorn(None, None, C, 1e-4, max_iters=2000)):
        assert bool(scaled.converged)
        assert float(A.cost) / 40 - 1e-9 <= float(scaled.value) <= float(A.cost) / 40 + 1e-4 * math.log(40) + 1e-9


def test_eps_scaling_reaches_the_same_plan():
    C = normalized_cost(64, 64, seed=19)
    r0 = ot.sinkhorn(None, None, C, 0.005, max_iters=5000)
    r1 = ot.sinkhorn(None, None, C, 0.005, eps_scaling=True, max_iters=5000)
    r2 = ot.sinkhorn(None, None, C, 0.005, eps_scaling=0.3, eps0=2.0, max_iters=5000)
    for r in (r1, r2):
        assert bool(r.converged) and float((r.plan - r0.plan).abs().sum()) <= 2e-8


def test_max_iters_warns_and_flags():
    C = normalized_cost(50, 50, seed=20)
    with pytest.warns(ot.ConvergenceWarning, match="did not reach"):
        res = ot.sinkhorn(None, None, C, 0.001, max_iters=7)
    assert not bool(res.converged) and int(res.iterations) == 7
    assert float((res.plan.sum(0) - 1 / 50).abs().sum()) <= 1e-13  # stopped after a g-update
    assert float(res.marginal_error) == pytest.approx(float((res.plan.sum(1) - 1 / 50).abs().sum()), rel=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ot.sinkhorn(None, None, C, 0.001, max_iters=7, warn=False)


def test_inputs_numpy_strided_and_uniform_weights():
    C = normalized_cost(30, 20, seed=21)
    ref = ot.sinkhorn(None, None, C, 0.05)
    from_np = ot.sinkhorn(np.full(30, 1 / 30), None, C.numpy(), 0.05)
    assert torch.allclose(from_np.plan, ref.plan, rtol=0, atol=1e-15)
    t = ot.sinkhorn(None, None, C.T.contiguous().T, 0.05)  # column-major input
    assert torch.equal(t.plan, ref.plan)
    tr = ot.sinkhorn(None, None, C.T, 0.05)  # a transposed problem: the transposed plan
    assert torch.allclose(tr.plan.T, ref.plan, rtol=0, atol=1e-9 / 20)


def test_autograd_runs_the_reference_and_the_envelope_gradient_is_the_plan():
    C = normalized_cost(20, 15, seed=22).requires_grad_(True)
    res = ot.sinkhorn(None, None, C, 0.1)
    res.value.backward()
    # envelope theorem (§7.3 item 7): ∂ value / ∂C = P at the optimum
    assert torch.allclose(C.grad, res.plan.detach(), rtol=0, atol=1e-8)
    with torch.no_grad():
        fast = ot.sinkhorn(None, None, C, 0.1)
    assert float((fast.plan - res.plan.detach()).abs().sum()) <= 1e-8
    # torch.func transforms take the same reference path
    g = torch.func.grad(lambda c: ot.sinkhorn(None, None, c, 0.1, max_iters=200).value)(C.detach())
    assert torch.allclose(g, fast.plan, rtol=0, atol=1e-8)


def test_squared_euclidean():
    x, y = clouds(7, 5, d=3, seed=23)
    C = ot.squared_euclidean(x, y)
    assert torch.allclose(C, torch.cdist(x, y) ** 2, rtol=1e-12, atol=1e-12)
    xb, yb = x.expand(2, 7, 3), y.expand(2, 5, 3)
    assert torch.equal(ot.squared_euclidean(xb, yb)[1], C)
    with pytest.raises(ValueError, match="x, y"):
        ot.squared_euclidean(x, y[:, :2])


def test_sinkhorn_rejects_bad_input():
    C = normalized_cost(6, 5)
    with pytest.raises(ValueError, match="eps"):
        ot.sinkhorn(None, None, C, 0.0)
    with pytest.raises(ValueError, match="eps"):
        ot.sinkhorn(None, None, C, -1.0)
    with pytest.raises(ValueError, match="eps"):
        ot.sinkhorn(None, None, C, float("nan"))
    bad = C.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="cost: contains NaN"):
        ot.sinkhorn(None, None, bad, 0.1)
    bad[2, 3] = float("inf")
    with pytest.raises(ValueError, match="cost: contains NaN or infinite"):
        ot.sinkhorn(None, None, bad, 0.1)
    with pytest.raises(ValueError, match="cost: contains NaN.*problem 1"):
        ot.sinkhorn(None, None, torch.stack([C, bad]), 0.1)
    with pytest.raises(ValueError, match="a: expected shape"):
        ot.sinkhorn(torch.full((5,), 0.2, dtype=torch.float64), None, C, 0.1)
    with pytest.raises(ValueError, match="b: expected shape"):
        ot.sinkhorn(None, torch.full((2, 5), 0.2, dtype=torch.float64), C, 0.1)
    with pytest.raises(ValueError, match="a: expected nonnegative"):
        ot.sinkhorn(torch.tensor([0.5, 0.5, 0.5, -0.5, 0.0, 0.0], dtype=torch.float64), None, C, 0.1)
    with pytest.raises(ValueError, match="b: expected weights summing to 1"):
        ot.sinkhorn(None, torch.full((5,), 0.3, dtype=torch.float64), C, 0.1)
    with pytest.raises(ValueError, match="cost: expected a non-empty"):
        ot.sinkhorn(None, None, torch.zeros(0, 5, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="cost: expected a non-empty"):
        ot.sinkhorn(None, None, torch.zeros(0, 3, 5, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="cost: expected shape"):
        ot.sinkhorn(None, None, torch.zeros(5, dtype=torch.float64), 0.1)
    with pytest.raises(TypeError, match="cost: expected float32 or float64"):
        ot.sinkhorn(None, None, torch.zeros(3, 3, dtype=torch.int64), 0.1)
    with pytest.raises(TypeError, match="cost: expected float32 or float64"):
        ot.sinkhorn(None, None, C.half(), 0.1)
    with pytest.raises(ValueError, match="max_iters"):
        ot.sinkhorn(None, None, C, 0.1, max_iters=0)
    with pytest.raises(ValueError, match="check_every"):
        ot.sinkhorn(None, None, C, 0.1, check_every=0)
    with pytest.raises(ValueError, match="tol"):
        ot.sinkhorn(None, None, C, 0.1, tol=-1.0)
    with pytest.raises(ValueError, match="eps_scaling"):
        ot.sinkhorn(None, None, C, 0.1, eps_scaling=2.0)
    with pytest.raises(ValueError, match="eps_scaling"):
        ot.sinkhorn(None, None, C, 0.1, eps_scaling="always")
    with pytest.raises(ValueError, match="eps0"):
        ot.sinkhorn(None, None, C, 0.1, eps0=-1.0)
    # the reference path (autograd) raises the same errors
    with pytest.raises(ValueError, match="b: expected weights summing to 1"):
        ot.sinkhorn(None, torch.full((5,), 0.3, dtype=torch.float64), C.requires_grad_(True), 0.1)


# ------------------------------------------------------------------------------------------------
# Exact assignment

@pytest.mark.parametrize("kind", ["uniform", "clouds", "integer", "large"])
def test_exact_assignment_matches_scipy(kind):
    rng = np.random.default_rng(hash(kind) % 2 ** 32)
    for n in (1, 2, 3, 7, 31, 64, 150):
        for _ in range(3):
            if kind == "uniform":
                C = rng.random((n, n))
            elif kind == "integer":  # many ties
                C = rng.integers(0, 4, (n, n)).astype(float)
            elif kind == "large":
                C = rng.standard_normal((n, n)) * 1e6
            else:
                x, y = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
                C = ((x[:, None] - y[None]) ** 2).sum(-1)
            r, c = scipy_opt.linear_sum_assignment(C)
            want = C[r, c].sum()
            res = ot.exact_assignment(torch.from_numpy(C))
            perm = res.perm.numpy()
            assert sorted(perm.tolist()) == list(range(n))
            assert abs(C[np.arange(n), perm].sum() - want) <= 1e-12 * max(1.0, abs(want))
            assert abs(float(res.cost) - want) <= 1e-12 * max(1.0, abs(want))


def test_exact_assignment_1d_is_the_sorted_matching():
    # §7.7 oracle (1): for a convex cost of x − y in 1-D the optimum matches sorted samples
    g = torch.Generator().manual_seed(24)
    x = torch.randn(200, generator=g, dtype=torch.float64)
    y = torch.randn(200, generator=g, dtype=torch.float64) * 2 + 1
    res = ot.exact_assignment((x[:, None] - y[None, :]) ** 2)
    rank_x, rank_y = torch.argsort(torch.argsort(x)), torch.argsort(y)
    assert torch.equal(res.perm, rank_y[rank_x])
    assert float(res.cost) == pytest.approx(float(((torch.sort(x).values - torch.sort(y).values) ** 2).sum()),
                                            rel=1e-12)


def test_exact_assignment_identity_and_batches():
    # §7.7 oracle (2): identical batches couple to the identity; a batch equals one-at-a-time solves
    x, _ = clouds(64, 1, d=5, seed=25)
    C = ot.squared_euclidean(x, x)
    assert torch.equal(ot.exact_assignment(C).perm, torch.arange(64))
    g = torch.Generator().manual_seed(26)
    Cb = torch.rand(5, 40, 40, generator=g, dtype=torch.float64)
    res = ot.exact_assignment(Cb)
    assert res.perm.shape == (5, 40) and res.cost.shape == (5,)
    for i in range(5):
        one = ot.exact_assignment(Cb[i])
        assert torch.equal(one.perm, res.perm[i]) and float(one.cost) == float(res.cost[i])
    f32 = ot.exact_assignment(Cb.float())
    assert torch.equal(f32.perm, ot.exact_assignment(Cb.float().double()).perm)


def test_exact_assignment_cost_is_differentiable():
    g = torch.Generator().manual_seed(27)
    C = torch.rand(10, 10, generator=g, dtype=torch.float64, requires_grad=True)
    res = ot.exact_assignment(C)
    res.cost.backward()
    want = torch.zeros(10, 10, dtype=torch.float64)
    want[torch.arange(10), res.perm] = 1.0
    assert torch.equal(C.grad, want)


def test_exact_assignment_rejects_bad_input():
    with pytest.raises(ValueError, match="cost: expected a square"):
        ot.exact_assignment(torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="cost: expected a square"):
        ot.exact_assignment(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="cost: expected a non-empty"):
        ot.exact_assignment(torch.zeros(0, 0, dtype=torch.float64))
    bad = torch.zeros(3, 3, dtype=torch.float64)
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="cost: contains NaN"):
        ot.exact_assignment(bad)
    with pytest.raises(TypeError, match="cost: expected a real"):
        ot.exact_assignment(torch.zeros(3, 3, dtype=torch.complex128))


# ------------------------------------------------------------------------------------------------
# CUDA (compiled kernels against the CPU solver)

@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_sinkhorn_cuda_matches_cpu(dtype, tol):
    g = torch.Generator().manual_seed(28)
    C = torch.rand(6, 70, 50, generator=g, dtype=torch.float64).to(dtype)
    a = torch.rand(6, 70, generator=g, dtype=torch.float64)
    a[:, ::9] = 0
    a = (a / a.sum(-1, keepdim=True)).to(dtype)
    cpu = ot.sinkhorn(a, None, C, 0.01, tol=tol)
    gpu = ot.sinkhorn(a.cuda(), None, C.cuda(), 0.01, tol=tol)
    assert gpu.plan.is_cuda and bool(gpu.converged.all())
    assert float((gpu.plan.cpu().double() - cpu.plan.double()).abs().sum(dim=(1, 2)).max()) <= 20 * tol
    assert torch.allclose(gpu.value.cpu().double(), cpu.value.double(), rtol=10 * tol, atol=0)
    # plan [6, 70, 50]: the row marginals (sums over the last axis) are the weights a, the columns uniform
    assert float((gpu.plan.double().sum(-1) - a.cuda().double()).abs().sum(-1).max()) <= 2 * tol
    assert float((gpu.plan.double().sum(-2) - 1 / 50).abs().sum(-1).max()) <= 2 * tol


@cuda
@pytest.mark.cuda
def test_sinkhorn_cuda_bad_input_and_assignment_roundtrip():
    C = torch.rand(8, 8, dtype=torch.float64, device="cuda")
    bad = C.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="cost: contains NaN"):
        ot.sinkhorn(None, None, bad, 0.1)
    res = ot.exact_assignment(C)
    assert res.perm.is_cuda
    assert torch.equal(res.perm.cpu(), ot.exact_assignment(C.cpu()).perm)
