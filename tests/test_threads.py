"""The CPU thread policy (issue 16, item 9): the default thread count gives the same bits as one thread.

The compiled kernels run large element-wise calls and batches of OT problems on diffcore's worker pool
(csrc/cpu/pool.h) and single-thread small ones (one Sinkhorn problem below 2^22 kernel entries). Each
piece of work is computed the same way whichever thread claims it, so every result here must equal the
one-thread result bitwise, for any thread count (also more threads than cores, which forces
preemption mid-job), from concurrent callers and in a forked child. Timing is bench/bench_threads.py's.
"""
from __future__ import annotations

import sys
import threading

import pytest
import torch

import diffcore
from diffcore import ot, schedules, solvers
from diffcore.noise import Noise
from isolated import expect_ok

COUNTS = (None, 2, 5)  # the default, the cores of the development machine, more threads than cores


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    diffcore.set_num_threads(None)


def _per_count(fn):
    """fn() with one thread, then with each of COUNTS; the results as lists of tensors."""
    out = {}
    for n in (1,) + COUNTS:
        diffcore.set_num_threads(n)
        out[n] = [t.clone() for t in fn()]
    diffcore.set_num_threads(None)
    return out


def _assert_same_bits(out):
    ref = out[1]
    for n, got in out.items():
        for k, (a, b) in enumerate(zip(ref, got)):
            assert torch.equal(a, b), f"{n} threads: output {k} differs from one thread"


def _costs(B, n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, 2, generator=g, dtype=torch.float64)
    y = torch.randn(B, n, 2, generator=g, dtype=torch.float64) + 1.0
    C = ot.squared_euclidean(x, y)
    return (C / C.amax(dim=(-2, -1), keepdim=True)).to(dtype)


def _sinkhorn(C):
    r = ot.sinkhorn(None, None, C, 0.01)
    return [r.plan, r.f, r.g, r.value]


@pytest.mark.parametrize("B,n", [(1, 256), (1, 512), (2, 256), (8, 256)])
def test_sinkhorn_same_bits_as_one_thread(B, n):
    # (1, 256) and (1, 512) were split over a team (row partial sums in another order) before the
    # policy; (8, 256) runs one problem per pool thread
    _assert_same_bits(_per_count(lambda: _sinkhorn(_costs(B, n, seed=B * n))))


def test_sinkhorn_float32_batch_same_bits():
    _assert_same_bits(_per_count(lambda: _sinkhorn(_costs(8, 256, torch.float32, seed=3))))


def test_assignment_batch_same_bits():
    C = _costs(16, 96, seed=5)  # 2^17+ entries: one problem per pool thread

    def run():
        r = ot.exact_assignment(C)
        return [r.perm, r.cost]

    _assert_same_bits(_per_count(run))


def _plan(name):
    sch = schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    return solvers.get(name).plan(sch, diffcore.timesteps(sch, 10), device="cpu", dtype=torch.float32,
                                  prediction="eps")


@pytest.mark.parametrize("name,numel", [("dpmpp_2m", 1 << 20), ("dpmpp_2m_sde", 1 << 16)])
def test_solver_steps_same_bits(name, numel):
    plan = _plan(name)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, numel // 4, generator=g)
    outs = [torch.randn(x0.shape, generator=g) for _ in range(plan.num_steps)]

    def run():
        st = plan.init_state(x0, noise=Noise(seed=11) if name in solvers.STOCHASTIC else None)
        res = []
        for i in range(plan.num_steps):
            for s in plan.stages(i):
                plan.step(st, i, s, outs[i])
                res.append(st.x.clone())
        return res

    _assert_same_bits(_per_count(run))


def test_lincomb_and_noise_same_bits():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 1 << 18, generator=g)
    ring = torch.randn(3, 4, 1 << 18, generator=g)
    coefs = torch.randn(4, 4, generator=g, dtype=torch.float64)
    _assert_same_bits(_per_count(lambda: [diffcore.lincomb(x, coefs, ring),
                                          diffcore.noise.philox_normal((4, 1 << 16), seed=9)]))


def test_oversubscribed_pool_many_calls():
    # 6 threads on a 2-core machine: helpers are preempted in the middle of jobs, claim late and find
    # jobs already finished; every one of many consecutive jobs must still be complete and exact
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 1 << 18, generator=g)
    ring = torch.randn(2, 2, 1 << 18, generator=g)
    coefs = torch.randn(2, 3, generator=g, dtype=torch.float64)
    diffcore.set_num_threads(1)
    want = diffcore.lincomb(x, coefs, ring)
    diffcore.set_num_threads(6)
    bad = [k for k in range(150) if not torch.equal(diffcore.lincomb(x, coefs, ring), want)]
    assert not bad, f"calls {bad[:10]} differ from one thread"


def test_concurrent_callers_same_bits():
    # OT releases the GIL: two Python threads use the pool at once (the second runs its job serially)
    C1, C2 = _costs(8, 256, seed=7), _costs(8, 256, seed=8)
    diffcore.set_num_threads(1)
    want = [_sinkhorn(C1), _sinkhorn(C2)]
    diffcore.set_num_threads(None)
    got = [None, None]

    def work(k, C):
        got[k] = [_sinkhorn(C) for _ in range(3)]

    ts = [threading.Thread(target=work, args=(k, C)) for k, C in enumerate((C1, C2))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k in range(2):
        for run in got[k]:
            assert all(torch.equal(a, b) for a, b in zip(run, want[k]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc/self/task")
def test_small_calls_start_no_thread_large_ones_at_most_n_minus_1():
    # the team-size rule as a user sees it: threads of the process before and after
    expect_ok("""
        import os, torch, diffcore
        torch.set_num_threads(1)
        diffcore.set_num_threads(3)
        tasks = lambda: len(os.listdir('/proc/self/task'))
        x = torch.randn(4, 1 << 12); ring = torch.randn(2, 4, 1 << 12)
        c = torch.randn(4, 3, dtype=torch.float64)
        C = torch.rand(8, 32, 32, dtype=torch.float64)
        n0 = tasks()
        diffcore.lincomb(x, c, ring); diffcore.ot.sinkhorn(None, None, C, 0.1); diffcore.ot.exact_assignment(C)
        diffcore.ot.sinkhorn(None, None, torch.rand(1, 400, 400, dtype=torch.float64), 0.1)  # one problem < 2^22
        assert tasks() == n0, (n0, tasks())
        X = torch.randn(4, 1 << 20); R = torch.randn(2, 4, 1 << 20)
        diffcore.lincomb(X, c, R)
        assert n0 < tasks() <= n0 + 2, (n0, tasks())
    """, timeout=120)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_pool_works_in_forked_child():
    # a child forked after the pool started has none of its helper threads: its jobs must not wait for them
    expect_ok("""
        import os, torch, diffcore
        diffcore.set_num_threads(3)
        X = torch.randn(4, 1 << 20); R = torch.randn(2, 4, 1 << 20)
        c = torch.randn(4, 3, dtype=torch.float64)
        want = diffcore.lincomb(X, c, R)
        pid = os.fork()
        if pid == 0:
            ok = all(torch.equal(diffcore.lincomb(X, c, R), want) for _ in range(5))
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    """, timeout=120)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_sinkhorn_team_in_forked_child():
    # one problem of 2^22 entries is split over an OpenMP team; libgomp's pool does not survive fork(),
    # so a child that inherited the thread count must solve on one thread instead of hanging
    expect_ok("""
        import os, torch, diffcore
        from diffcore import _ops
        diffcore.set_num_threads(2)
        C = torch.rand(1, 2048, 2048, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        args = (None, None, 0.05, 1e-9, 20, 10, 2, 0.0, 0.5, 1e-3, True, 1e-8)  # ot.sinkhorn's defaults, 20 iterations
        want = _ops.sinkhorn(C, *args)[0]
        pid = os.fork()
        if pid == 0:
            got = _ops.sinkhorn(C, *args)[0]
            os._exit(0 if torch.allclose(got, want, rtol=1e-12, atol=1e-300) else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    """, timeout=60)
