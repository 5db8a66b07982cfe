"""diffcore.sample / prior_sample / CFG / one-step primitives: per-sample timesteps equal
one-at-a-time runs, one solver object serves concurrent threads, guidance batching, inversion,
thresholding, the adaptive solver, and argument errors."""
import threading

import pytest
import torch

import diffcore
from diffcore import oracles, schedules, solvers
from diffcore.convergence import reference_mixture

ORACLE = reference_mixture()
SCHED = schedules.VPLinear()


def model(x, t):
    return ORACLE.predict(x, t, SCHED, "eps")


def test_sample_matches_reference_ode():
    x = diffcore.prior_sample(SCHED, (16, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = oracles.reference_ode(ORACLE, x, SCHED.t_start, SCHED.t_end, SCHED)
    out = diffcore.sample(model, x, schedule=SCHED, solver="unipc_3", steps=200)
    assert (out - ref).abs().max().item() < 1e-5
    assert out.dtype == torch.float64 and out.shape == x.shape


def test_prior_sample_scale_and_validation():
    x = diffcore.prior_sample("edm", (4000, 2), generator=torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32
    # σ_max = 80: sample std within ±3% (4000·2 draws; the chance of failing is far below 1e-4)
    assert abs(x.std().item() / 80.0 - 1) < 0.03
    with pytest.raises(ValueError):
        diffcore.prior_sample("nope", (2, 2))


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc_3", "dpm_solver_3", "heun", "deis_3", "ipndm", "dpmpp_3m"])
def test_per_sample_timesteps_equal_single_runs(name):
    B, M = 4, 9
    starts = torch.tensor([1.0, 0.8, 0.6, 0.9], dtype=torch.float64)
    ends = torch.tensor([1e-3, 0.01, 0.05, 0.002], dtype=torch.float64)
    grids = torch.stack([diffcore.timesteps(SCHED, M, t_start=float(a), t_end=float(b)) for a, b in zip(starts, ends)])
    x = torch.randn(B, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batched = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=grids)
    for b in range(B):
        single = diffcore.sample(model, x[b:b + 1], schedule=SCHED, solver=name, steps=grids[b])
        assert (batched[b] - single[0]).abs().max().item() <= 1e-13


def test_model_receives_per_sample_times():
    seen = []

    def spy(x, t):
        seen.append(t.clone())
        return model(x, t)

    grids = torch.stack([diffcore.timesteps(SCHED, 3), diffcore.timesteps(SCHED, 3, t_start=0.5)])
    diffcore.sample(spy, torch.zeros(2, 1, dtype=torch.float64), schedule=SCHED, solver="ddim", steps=grids)
    assert all(t.shape == (2,) for t in seen)
    assert torch.allclose(seen[0], grids[:, 0]) and torch.allclose(seen[1], grids[:, 1])


def test_two_threads_share_one_solver():
    solver = solvers.get("unipc_2")
    xs = [torch.randn(64, 1, generator=torch.Generator().manual_seed(k), dtype=torch.float64) for k in range(4)]
    expected = [diffcore.sample(model, x, schedule=SCHED, solver=solver, steps=25) for x in xs]
    results = [None] * 4

    def work(k):
        results[k] = diffcore.sample(model, xs[k], schedule=SCHED, solver=solver, steps=25)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r, e in zip(results, expected):
        assert torch.equal(r, e)


def test_one_plan_serves_interleaved_states():
    plan = solvers.get("dpmpp_3m").plan(SCHED, diffcore.timesteps(SCHED, 8), dtype=torch.float64)
    xa, xb = torch.randn(3, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    sa, sb = plan.init_state(xa), plan.init_state(xb)
    for i in range(plan.num_steps):  # interleave two runs step by step
        for st in (sa, sb):
            for s in plan.stages(i):
                plan.step(st, i, s, model(st.model_input(s), plan.model_time(i, s).expand(st.x.shape[0])))
    assert torch.equal(sa.x, diffcore.sample(model, xa, schedule=SCHED, solver="dpmpp_3m", steps=8))
    assert torch.equal(sb.x, diffcore.sample(model, xb, schedule=SCHED, solver="dpmpp_3m", steps=8))


def test_cfg_batches_branches_and_matches_manual_guidance():
    calls = []

    def cond_model(x, t, y):
        calls.append(x.shape[0])
        return model(x, t) + 0.1 * y[:, None]

    x = torch.randn(6, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.ones(6, dtype=torch.float64)
    null = torch.zeros(6, dtype=torch.float64)
    omega = 3.0
    got = diffcore.sample(cond_model, x, schedule=SCHED, solver="dpmpp_2m", steps=6, model_kwargs={"y": y},
                          guidance=diffcore.CFG(omega, uncond={"y": null}))
    assert calls == [12] * 6  # one batched call per step

    def manual(x, t):
        c, u = cond_model(x, t, y), cond_model(x, t, null)
        return u + omega * (c - u)

    want = diffcore.sample(manual, x, schedule=SCHED, solver="dpmpp_2m", steps=6)
    assert (got - want).abs().max().item() < 1e-13
    assert diffcore.CFG.from_w(2.0).omega == 3.0
    # ω = 1 is the conditional model itself
    g1 = diffcore.sample(cond_model, x, schedule=SCHED, solver="ddim", steps=3, model_kwargs={"y": y},
                         guidance=diffcore.CFG(1.0, uncond={"y": null}))
    c1 = diffcore.sample(cond_model, x, schedule=SCHED, solver="ddim", steps=3, model_kwargs={"y": y})
    assert torch.equal(g1, c1)


def test_cfg_commutes_with_prediction_conversion():
    """Guidance applied to ε̂ then converted equals guidance applied to x̂ (book Eq. (8.3.3))."""
    x = torch.randn(5, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def two(kind):
        def m(x, t, y):
            return ORACLE.predict(x, t, SCHED, kind) * (1 + 0.2 * y[:, None]) if kind == "eps" else \
                diffcore.convert(ORACLE.predict(x, t, SCHED, "eps") * (1 + 0.2 * y[:, None]), x, t, SCHED, "eps", "x0")
        return m

    kw = dict(schedule=SCHED, solver="dpmpp_2m", steps=5, model_kwargs={"y": torch.ones(5, dtype=torch.float64)},
              guidance=diffcore.CFG(2.5, uncond={"y": torch.zeros(5, dtype=torch.float64)}))
    a = diffcore.sample(two("eps"), x, prediction="eps", **kw)
    b = diffcore.sample(two("x0"), x, prediction="x0", **kw)
    assert (a - b).abs().max().item() < 1e-12


@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpmpp_2m", 2), ("unipc_2", 3), ("heun", 2)])
def test_inversion_converges_to_reference(name, order):
    """Encoding data → noise (t_start < t_end) integrates the same ODE forwards, at the solver's order."""
    x = torch.linspace(-1.5, 2.0, 9, dtype=torch.float64)[:, None]
    ref = oracles.reference_ode(ORACLE, x, 1e-3, 0.9, SCHED)
    errs = [(diffcore.sample(model, x, schedule=SCHED, solver=name, steps=n, t_start=1e-3, t_end=0.9) - ref)
            .abs().max().item() for n in (100, 400)]
    assert errs[1] < errs[0] * 4.0 ** (-(order - 0.5)), errs


def test_ddim_step_and_heun_step():
    x = torch.randn(7, 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.full((7,), 0.8, dtype=torch.float64)
    s = torch.linspace(0.3, 0.7, 7, dtype=torch.float64)
    got = solvers.ddim_step(model, x, t, s, SCHED)
    vt, vs = SCHED.eval(t), SCHED.eval(s)
    eps = model(x, t)
    x0 = (x - vt.sigma[:, None] * eps) / vt.alpha[:, None]
    assert (got - (vs.alpha[:, None] * x0 + vs.sigma[:, None] * eps)).abs().max().item() < 1e-13
    # per-sample Heun steps equal one-step runs of the 'heun' plan
    h = solvers.heun_step(model, x, t, s, SCHED)
    for b in range(7):
        ts = torch.tensor([0.8, float(s[b])], dtype=torch.float64)
        one = diffcore.sample(model, x[b:b + 1], schedule=SCHED, solver="heun", steps=ts)
        assert (h[b] - one[0]).abs().max().item() < 1e-13
    # differentiable
    xg = x.clone().requires_grad_(True)
    solvers.ddim_step(model, xg, t, s, SCHED).sum().backward()
    assert torch.isfinite(xg.grad).all()
    # inversion direction
    up = solvers.ddim_step(model, x, s, t, SCHED)
    assert up.shape == x.shape
    with pytest.raises(ValueError, match="t"):
        solvers.ddim_step(model, x, torch.zeros(7), s, schedules.EDM())


def test_thresholding_keeps_data_prediction_in_range():
    seen = []
    sched = SCHED

    def wild(x, t):
        return 5.0 * torch.tanh(x)  # x̂ far outside [-1, 1]

    x = torch.randn(4, 1, 8, dtype=torch.float64)
    plan = solvers.get("dpmpp_2m", thresholding=True).plan(sched, diffcore.timesteps(sched, 5), dtype=torch.float64,
                                                          prediction="x0")
    st = plan.init_state(x)
    for i in range(plan.num_steps):
        plan.step(st, i, 0, wild(st.x, None))
        seen.append(st.ring.abs().max().item())
    assert max(seen) <= 1.0 + 1e-12
    from diffcore.thresholding import dynamic_threshold
    small = torch.rand(3, 10, dtype=torch.float64) * 2 - 1
    assert torch.equal(dynamic_threshold(small), small)


def test_dpm_adaptive_through_sample():
    x = torch.randn(8, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = diffcore.sample(model, x, schedule=SCHED, solver="dpm_adaptive", rtol=1e-4, atol=1e-4)
    ref = oracles.reference_ode(ORACLE, x, SCHED.t_start, SCHED.t_end, SCHED)
    assert (out - ref).abs().max().item() < 1e-3
    with pytest.raises(ValueError, match="dpm_adaptive"):
        diffcore.sample(model, x, schedule=SCHED, solver="dpm_adaptive", return_trajectory=True)


def test_sample_options_and_errors():
    x = torch.randn(3, 1, dtype=torch.float64)
    out, traj = diffcore.sample(model, x, schedule="vp_linear", steps=4, return_trajectory=True)
    assert len(traj) == 5 and torch.equal(traj[-1], out) and torch.equal(traj[0], x)
    seen = []
    diffcore.sample(model, x, schedule=SCHED, steps=4, callback=lambda d: seen.append(d["i"]))
    assert seen == [0, 1, 2, 3]
    assert "dpmpp_2m" in solvers.available() and "dpm_adaptive" in solvers.available()
    with pytest.raises(TypeError, match="schedule"):
        diffcore.sample(model, x)
    with pytest.raises(ValueError, match="steps"):
        diffcore.sample(model, x, schedule=SCHED, steps=0)
    with pytest.raises(ValueError, match="model"):
        diffcore.sample(lambda x, t: x[:1], x, schedule=SCHED, steps=2)
    with pytest.raises(TypeError, match="model"):
        diffcore.sample(3, x, schedule=SCHED, steps=2)
    with pytest.raises(TypeError, match="guidance"):
        diffcore.sample(model, x, schedule=SCHED, steps=2, guidance=2.0)
    with pytest.raises(TypeError, match="x"):
        diffcore.sample(model, torch.zeros(3, dtype=torch.int64), schedule=SCHED, steps=2)
    with pytest.raises(TypeError):
        diffcore.sample(model, x, schedule=SCHED, steps=2, bogus_option=1)


def test_model_wrapper_and_flow_matching():
    sched = schedules.RectifiedFlow()
    vel = lambda x, t: ORACLE.predict(x, t, sched, "velocity")  # noqa: E731
    x = torch.randn(6, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ref = oracles.reference_ode(ORACLE, x, 1.0, 0.0, sched)
    for name in ["euler", "heun", "dpmpp_2m", "unipc_2", "unipc_3", "dpmpp_3m"]:
        out = diffcore.sample(vel, x, schedule=sched, solver=name, steps=400, prediction="velocity")
        assert (out - ref).abs().max().item() < 2e-2, name
    # α = 0 at t = 1 on an explicit grid: noise-form and single-step solvers refuse with a hint instead of
    # NaNs (their default grid starts inside, diffcore.grids.regular_range)
    for name in ["dpm_solver_2", "deis_2", "ipndm", "dpmpp_2s"]:
        with pytest.raises(ValueError, match="α = 0"):
            diffcore.sample(vel, x, schedule=sched, solver=name, steps=torch.linspace(1, 0, 11, dtype=torch.float64),
                            prediction="velocity")
    out = diffcore.sample(vel, x, schedule=sched, solver="deis_3", steps=400, prediction="velocity", t_start=0.999)
    assert (out - oracles.reference_ode(ORACLE, x, 0.999, 0.0, sched)).abs().max().item() < 2e-2
    wrapped = diffcore.ModelWrapper(vel, sched, prediction="velocity")
    a = diffcore.sample(wrapped, x, schedule=sched, solver="dpmpp_2m", steps=10)
    b = diffcore.sample(vel, x, schedule=sched, solver="dpmpp_2m", steps=10, prediction="velocity")
    assert (a - b).abs().max().item() < 1e-12


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
def test_cuda_graph_replay_equals_eager():
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2)).cuda()

    def m(x, t):
        return net(torch.cat([x, t[:, None]], 1))

    x = torch.randn(32, 2, device="cuda")
    eager = diffcore.sample(m, x, schedule=SCHED, solver="unipc_2", steps=10)
    g1 = diffcore.sample(m, x, schedule=SCHED, solver="unipc_2", steps=10, cuda_graph=True)
    x2 = torch.randn(32, 2, device="cuda")
    g2 = diffcore.sample(m, x2, schedule=SCHED, solver="unipc_2", steps=10, cuda_graph=True)  # replay
    assert torch.equal(g1, eager)
    assert torch.equal(g2, diffcore.sample(m, x2, schedule=SCHED, solver="unipc_2", steps=10))


@cuda
@pytest.mark.cuda
def test_cuda_loop_has_no_host_sync():
    net = torch.nn.Linear(2, 2).cuda()
    x = torch.randn(8, 2, device="cuda")
    plan = solvers.get("dpmpp_3m").plan(SCHED, diffcore.timesteps(SCHED, 6), device="cuda")
    st = plan.init_state(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(plan.num_steps):
            for s in plan.stages(i):
                plan.step(st, i, s, net(st.model_input(s)))
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_ddim_step_rejects_eps_model_at_alpha_zero():
    from diffcore.solvers import ddim_step
    rf = diffcore.schedules.get("rf")
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="α = 0"):
        ddim_step(lambda xx, t: torch.zeros_like(xx), x, 1.0, 0.5, rf, prediction="eps")
    out = ddim_step(lambda xx, t: torch.zeros_like(xx), x, 1.0, 0.5, rf, prediction="x0")
    assert torch.allclose(out, 0.5 * x)  # x_s = α_s·0 + σ_s·ε̂ with ε̂ = x/σ_t = x at t = 1


def test_schedule_defaults_to_the_models_own():
    """A ModelWrapper (and diffcore.load's result) carries its schedule: sample(m, x) needs no other."""
    import diffcore
    from diffcore import oracles, schedules
    sch = schedules.VPLinear()
    gm = oracles.GaussianMixture(torch.tensor([0.3, 0.7], dtype=torch.float64),
                                 torch.tensor([[-1.0], [1.5]], dtype=torch.float64),
                                 torch.tensor([[0.2], [0.3]], dtype=torch.float64))
    m = diffcore.ModelWrapper(lambda x, t: gm.eps(x, t, sch), sch, prediction="eps")
    x = torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(diffcore.sample(m, x, steps=6), diffcore.sample(m, x, sch, steps=6))
    with pytest.raises(TypeError, match="schedule: required"):
        diffcore.sample(lambda x, t: x, x, steps=6)
    assert diffcore.adapters.torchcfm is not None
