"""Minibatch couplings (Tong et al. 2024) and the DDP-aware global coupling."""
import math
import os

import pytest
import torch

from diffcore import coupling, ot

scipy_stats = pytest.importorskip("scipy.stats")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_exact_1d_is_sorted_matching():
    # spec §7.7 oracle (1): in 1-D the optimal matching for a convex cost pairs the order statistics
    g = _gen(0)
    y0 = torch.randn(40, 1, generator=g, dtype=torch.float64)
    y1 = 3.0 + 0.5 * torch.randn(40, 1, generator=g, dtype=torch.float64)
    p0, p1, lab = coupling.ExactOT().couple(y0, y1)
    assert lab is None
    assert torch.equal(p0, y0)
    rank0 = torch.argsort(torch.argsort(y0[:, 0]))
    assert torch.equal(p1[:, 0], torch.sort(y1[:, 0]).values[rank0])


def test_exact_identical_batches_is_identity():
    # spec §7.7 oracle (2)
    y = torch.randn(33, 3, 2, generator=_gen(1), dtype=torch.float64)
    p0, p1, _ = coupling.ExactOT(normalize="max").couple(y, y.clone())
    assert torch.equal(p0, y) and torch.equal(p1, y)


def test_independent_keeps_batches():
    g = _gen(2)
    y0, y1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    p0, p1, _ = coupling.get("independent").couple(y0, y1)
    assert torch.equal(p0, y0) and torch.equal(p1, y1)


def test_entropic_pairs_preserve_marginals():
    # spec §7.7 oracle (3): indices drawn from the plan have the batch-uniform marginals (chi-square)
    g = _gen(3)
    B, draws = 16, 1500
    y0 = torch.randn(B, 2, generator=g, dtype=torch.float64)
    y1 = torch.randn(B, 2, generator=g, dtype=torch.float64) + 1.0
    c = coupling.EntropicOT(eps=0.05, tol=1e-10)
    pi = torch.cat([c.pair(y0, y1, generator=g)[0] for _ in range(draws)])
    pj = torch.cat([c.pair(y0, y1, generator=g)[1] for _ in range(draws)])
    for idx in (pi, pj):
        counts = torch.bincount(idx, minlength=B).double()
        expected = idx.numel() / B
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert scipy_stats.chi2.sf(chi2, B - 1) > 1e-5, chi2


def test_entropic_pairs_follow_the_plan():
    # the empirical pair frequencies converge to P/ΣP (binomial bound per cell, 5 SE)
    g = _gen(4)
    y0 = torch.randn(6, 2, generator=g, dtype=torch.float64)
    y1 = torch.randn(5, 2, generator=g, dtype=torch.float64)
    c = coupling.EntropicOT(eps=0.2, normalize="mean", tol=1e-12)
    P = c.plan(y0, y1)
    P = P / P.sum()
    n = 0
    counts = torch.zeros_like(P)
    for _ in range(2000):
        i, j = c.pair(y0, y1, generator=g)
        counts.index_put_((i, j), torch.ones_like(i, dtype=P.dtype), accumulate=True)
        n += i.numel()
    freq = counts / n
    se = (P * (1 - P) / n).sqrt()
    assert ((freq - P).abs() <= 5 * se + 1e-12).all()


def test_schrodinger_bridge_plan_is_entropic_plan_with_twice_sigma_squared():
    # spec §7.4 oracle (2): cost ‖·‖²/2 with ε equals cost ‖·‖² with 2ε; SB-CFM uses reg = 2σ²
    g = _gen(5)
    y0 = torch.randn(12, 2, generator=g, dtype=torch.float64)
    y1 = torch.randn(12, 2, generator=g, dtype=torch.float64)
    sigma = 0.7
    P = coupling.SchrodingerBridge(sigma=sigma, tol=1e-12).plan(y0, y1)
    C = coupling.pair_cost(y0, y1)
    Q = ot.sinkhorn(None, None, C / 2, sigma ** 2, tol=1e-12).plan
    assert torch.allclose(P, Q, rtol=0, atol=1e-10)


def test_exact_cost_decreases_with_batch_size_toward_bures():
    # spec §7.7 oracle (4): E[OT_B]/B is non-increasing in B (averaging the optimal matching of B + 1
    # points over its B-subsets gives feasible matchings) and ≥ W2² (joint convexity of W2²)
    g = _gen(6)
    m1 = torch.tensor([2.0, -1.0], dtype=torch.float64)
    L1 = torch.tensor([[1.2, 0.0], [0.5, 0.4]], dtype=torch.float64)
    S1 = L1 @ L1.T
    ev, U = torch.linalg.eigh(S1)
    w2 = float(m1 @ m1 + 2 + S1.trace() - 2 * (U @ torch.diag(ev.sqrt()) @ U.T).trace())
    indep = float(m1 @ m1 + 2 + S1.trace())
    means, ses = [], []
    for B, reps in ((4, 4000), (32, 600), (256, 100)):
        costs = []
        for _ in range(reps):
            y0 = torch.randn(B, 2, generator=g, dtype=torch.float64)
            y1 = m1 + torch.randn(B, 2, generator=g, dtype=torch.float64) @ L1.T
            p0, p1, _ = coupling.ExactOT().couple(y0, y1)
            costs.append((p1 - p0).pow(2).sum(1).mean())
        costs = torch.stack(costs)
        means.append(float(costs.mean()))
        ses.append(float(costs.std() / math.sqrt(reps)))
    assert means[0] < indep
    for k in range(2):
        assert means[k] - means[k + 1] > 4 * math.hypot(ses[k], ses[k + 1]), (means, ses)
    assert means[-1] > w2 - 4 * ses[-1]
    assert means[-1] - w2 < 0.25, (means, w2)


def test_labels_are_coupled_within_class():
    g = _gen(7)
    B = 30
    y0 = torch.randn(B, 2, generator=g, dtype=torch.float64)
    y1 = torch.randn(B, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (B,), generator=g)
    p0, p1, pl = coupling.ExactOT().couple(y0, y1, labels)
    for c in range(3):
        idx = torch.nonzero(labels == c).flatten()
        q0, q1, _ = coupling.ExactOT().couple(y0[idx], y1[idx])
        assert torch.equal(p0[idx], q0) and torch.equal(p1[idx], q1)
        assert (pl[idx] == c).all()
    # every target is used once, with its own label
    assert torch.equal(torch.sort(p1[:, 0]).values, torch.sort(y1[:, 0]).values)


def test_bad_input():
    y = torch.randn(4, 2)
    with pytest.raises(ValueError, match="equal batch sizes"):
        coupling.ExactOT().couple(y, torch.randn(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        coupling.ExactOT().couple(y, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        coupling.ExactOT().couple(torch.randn(0, 2), torch.randn(0, 2))
    with pytest.raises(ValueError, match="feature shapes"):
        coupling.EntropicOT().couple(y, torch.randn(4, 3))
    with pytest.raises(ValueError, match="eps"):
        coupling.EntropicOT(eps=-1.0)
    with pytest.raises(ValueError, match="labels"):
        coupling.ExactOT().couple(y, y, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown name"):
        coupling.get("hungarian-ish")


_DDP_CASES = (("exact", False), ("exact", True), ("sinkhorn", False))


def _inner(kind):
    return coupling.ExactOT() if kind == "exact" else coupling.EntropicOT(eps=0.1, tol=1e-9)


def _ddp_worker(rank, world, init_file, y0, y1, labels, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        B = y0.shape[0] // world
        sl = slice(rank * B, (rank + 1) * B)
        for n, (kind, with_labels) in enumerate(_DDP_CASES):
            c = coupling.Distributed(_inner(kind))
            # rank 0's generator matches the single-process reference; the others differ on purpose
            g = torch.Generator().manual_seed(11 if rank == 0 else 1000 + rank)
            res = c.couple(y0[sl], y1[sl], labels[sl] if with_labels else None, generator=g)
            torch.save(res, os.path.join(out_dir, f"case{n}_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_coupling_equals_single_process_global_one(tmp_path):
    # two gloo processes, each with half of the batch, form exactly the pairs one process forms on
    # the whole batch (exact OT, exact OT within classes, and sampled entropic pairs)
    mp = pytest.importorskip("torch.multiprocessing")
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    world, B = 2, 24
    g = _gen(8)
    y0 = torch.randn(world * B, 3, generator=g, dtype=torch.float64)
    y1 = torch.randn(world * B, 3, generator=g, dtype=torch.float64) + 0.5
    labels = torch.randint(0, 2, (world * B,), generator=g)
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), y0, y1, labels, str(tmp_path)), nprocs=world,
             join=True)
    for n, (kind, with_labels) in enumerate(_DDP_CASES):
        ref = _inner(kind).couple(y0, y1, labels if with_labels else None,
                                  generator=torch.Generator().manual_seed(11))
        for r in range(world):
            got = torch.load(tmp_path / f"case{n}_{r}.pt")
            sl = slice(r * B, (r + 1) * B)
            assert torch.equal(got[0], ref[0][sl]) and torch.equal(got[1], ref[1][sl]), (kind, with_labels, r)
            if with_labels:
                assert torch.equal(got[2], ref[2][sl])
