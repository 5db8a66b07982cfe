"""diffcore.ot.emd: exact weighted, rectangular discrete OT, against POT's network simplex (ot.emd / ot.emd2),
the 1-D quantile coupling and the assignment solver."""
import numpy as np
import pytest
import torch

import ot as pot
from diffcore import ot


def _problem(n, m, seed, zeros=0):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) + 0.05, rng.random(m) + 0.05
    if zeros:
        a[rng.choice(n, zeros, replace=False)] = 0
        b[rng.choice(m, zeros, replace=False)] = 0
    return a / a.sum(), b / b.sum(), rng.random((n, m)) * 3


def _check_feasible(P, a, b, tol=1e-12):
    P = P.numpy()
    assert P.min() >= 0
    assert np.abs(P.sum(1) - a).max() <= tol
    assert np.abs(P.sum(0) - b).max() <= tol


@pytest.mark.parametrize("n,m,zeros", [(1, 6, 0), (6, 1, 0), (7, 7, 0), (9, 23, 0), (40, 25, 3), (64, 96, 5)])
def test_emd_matches_pot_cost_and_unique_plan(n, m, zeros):
    for seed in range(3):
        a, b, C = _problem(n, m, 100 * n + seed, zeros)
        res = ot.emd(a, b, C)
        assert isinstance(res, ot.EMDResult) and res.plan.dtype == torch.float64 and res.cost.shape == ()
        ref = pot.emd2(a, b, C)
        assert abs(float(res.cost) - ref) <= 1e-10 * abs(ref)
        # continuous random costs: the optimum is unique with probability one, so the plans coincide
        np.testing.assert_allclose(res.plan.numpy(), pot.emd(a, b, C), rtol=0, atol=1e-12)
        _check_feasible(res.plan, a, b)
        assert abs(float((res.plan.numpy() * C).sum()) - float(res.cost)) <= 1e-14 * abs(ref)
        plan, cost = res  # unpacks as (plan, cost)
        assert plan is res.plan and cost is res.cost


@pytest.mark.parametrize("seed", range(4))
def test_emd_degenerate_ties_and_zero_weights_are_feasible_and_optimal(seed):
    rng = np.random.default_rng(seed)
    n, m = 30, 45
    # integer costs in {0, 1, 2} and uniform-ish weights: many optimal plans, degenerate vertices
    C = rng.integers(0, 3, (n, m)).astype(np.float64)
    a = np.ones(n)
    b = np.ones(m)
    a[rng.choice(n, 4, replace=False)] = 0
    b[rng.choice(m, 6, replace=False)] = 0
    a, b = a / a.sum(), b / b.sum()
    P, cost = ot.emd(a, b, C)
    _check_feasible(P, a, b)
    ref = pot.emd2(a, b, C)
    assert abs(float(cost) - ref) <= 1e-10 * max(abs(ref), 1e-300) + 1e-15
    # zero-weight rows and columns carry nothing
    assert float(P[a == 0].abs().sum()) == 0 and float(P[:, b == 0].abs().sum()) == 0
    # identical points on both sides (a tie everywhere on the diagonal block): cost 0 exactly
    x = rng.standard_normal((12, 2))
    w = np.full(12, 1 / 12)
    P, cost = ot.emd(w, w, ((x[:, None] - x[None]) ** 2).sum(-1))
    assert float(cost) == 0.0
    np.testing.assert_allclose(P.numpy(), np.eye(12) / 12, rtol=0, atol=1e-15)


def test_emd_1d_is_the_quantile_coupling():
    # on the line with cost |x − y|² the optimal plan is the monotone (quantile) coupling, and
    # W2² = ∫_0^1 (F⁻¹(u) − G⁻¹(u))² du over the merged breakpoints of the two cumulative weights
    rng = np.random.default_rng(7)
    x, y = np.sort(rng.standard_normal(17)), np.sort(rng.standard_normal(11) * 2 + 1)
    a, b = rng.random(17), rng.random(11)
    a, b = a / a.sum(), b / b.sum()
    cuts = np.union1d(np.cumsum(a)[:-1], np.cumsum(b)[:-1])
    edges = np.concatenate([[0.0], cuts, [1.0]])
    mid = (edges[1:] + edges[:-1]) / 2
    qx = x[np.searchsorted(np.cumsum(a), mid)]
    qy = y[np.searchsorted(np.cumsum(b), mid)]
    w2 = float((np.diff(edges) * (qx - qy) ** 2).sum())
    P, cost = ot.emd(a, b, (x[:, None] - y[None]) ** 2)
    assert abs(float(cost) - w2) <= 1e-12 * w2
    # monotone: no crossing pairs in the support
    i, j = np.nonzero(P.numpy() > 0)
    order = np.lexsort((j, i))
    assert np.all(np.diff(j[order]) >= 0)


def test_emd_uniform_square_equals_the_assignment_and_scales_with_mass():
    rng = np.random.default_rng(3)
    C = torch.from_numpy(rng.random((20, 20)))
    P, cost = ot.emd(None, None, C)
    asg = ot.exact_assignment(C)
    assert abs(float(cost) - float(asg.cost) / 20) <= 1e-13
    np.testing.assert_allclose(P.numpy(), np.eye(20)[asg.perm.numpy()] / 20, atol=1e-15, rtol=0)
    # unnormalized masses: the plan scales with the mass, b is rescaled to a's total within the tolerance
    a, b, C2 = _problem(8, 13, 5)
    P1, c1 = ot.emd(a, b, C2)
    P3, c3 = ot.emd(3 * a, 3 * b * (1 + 1e-10), C2)
    assert abs(float(c3) - 3 * float(c1)) <= 1e-12
    np.testing.assert_allclose(P3.numpy(), 3 * P1.numpy(), rtol=0, atol=1e-14)


def test_emd_inputs_torch_numpy_views_float32_and_lists():
    a, b, C = _problem(10, 14, 11)
    ref = pot.emd2(a, b, C)
    # NumPy views: reversed (negative strides) and transposed weights/cost give the reversed problem
    P, cost = ot.emd(a[::-1], b[::-1], C[::-1, ::-1])
    assert abs(float(cost) - ref) <= 1e-10 * ref
    np.testing.assert_allclose(P.numpy()[::-1, ::-1], pot.emd(a, b, C), rtol=0, atol=1e-12)
    P, cost = ot.emd(b, a, np.asfortranarray(C).T)
    assert abs(float(cost) - ref) <= 1e-10 * ref
    P, cost = ot.emd(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(C).float())
    assert abs(float(cost) - pot.emd2(a, b, C.astype(np.float32).astype(np.float64))) <= 1e-10 * ref
    assert P.dtype == torch.float64 and P.device.type == "cpu"
    P, cost = ot.emd(a.tolist(), b.tolist(), C.tolist())
    assert abs(float(cost) - ref) <= 1e-10 * ref
    # float32 weights summing to 1 only to float32 rounding are accepted and rescaled
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    P, _ = ot.emd(a32, b32, C)
    _check_feasible(P, a32.double().numpy(), b32.double().numpy() * float(a32.double().sum() / b32.double().sum()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_emd_cuda_cost_returns_on_cuda():
    a, b, C = _problem(9, 12, 2)
    P, cost = ot.emd(torch.from_numpy(a).to("cuda"), torch.from_numpy(b).to("cuda"), torch.from_numpy(C).to("cuda"))
    assert P.device.type == "cuda" and cost.device.type == "cuda"
    assert abs(float(cost) - pot.emd2(a, b, C)) <= 1e-10 * pot.emd2(a, b, C)


def test_emd_rejects_bad_input():
    a, b, C = _problem(4, 5, 0)
    cases = [
        ((-a, b, C), ValueError, "a: expected nonnegative"),
        ((a, np.r_[b[:-1], np.nan], C), ValueError, "b: expected nonnegative finite"),
        ((a, np.r_[b[:-1], np.inf], C), ValueError, "b: expected nonnegative finite"),
        ((np.zeros(4), b, C), ValueError, "a: expected a positive total mass"),
        ((a, 1.01 * b, C), ValueError, "b: expected the same total mass as a"),
        ((a[:3], b, C), ValueError, r"a: expected shape \(4,\)"),
        ((a, b[:4], C), ValueError, r"b: expected shape \(5,\)"),
        ((a, b, C[None]), ValueError, r"cost: expected shape \(n, m\)"),
        ((a, b, C[0]), ValueError, r"cost: expected shape \(n, m\)"),
        ((a, b, np.where(np.eye(4, 5) > 0, np.nan, C)), ValueError, "cost: contains NaN"),
        ((a, b, np.where(np.eye(4, 5) > 0, np.inf, C)), ValueError, "cost: contains NaN or infinite"),
        ((a, b, np.zeros((0, 5))), ValueError, "cost: expected a non-empty"),
        ((a, b, torch.ones(4, 5, dtype=torch.complex64)), TypeError, "cost: expected a real"),
        ((a, b, "cost"), TypeError, "cost"),
        ((torch.ones(4, dtype=torch.bool), b, C), TypeError, "a: expected real weights"),
        ((a, b, np.zeros((2001, 2001))), ValueError, "EMD_MAX_VARIABLES"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            ot.emd(*args)
