"""Stochastic samplers (book §2.2, §3–4, §9.2.3): exact identities with the deterministic solvers, exact moment
propagation on Gaussian data, weak order of Euler–Maruyama, Langevin's stationary law, the
distribution of every sampler on the 1-D mixture oracle (Kolmogorov–Smirnov), 2-D sliced
Wasserstein, and the Brownian source's convergence in the step count. Fixed seeds throughout."""
import math

import pytest
import torch

import diffcore
from diffcore import convergence, metrics, oracles, schedules, solvers

F64 = torch.float64
MIX = oracles.toy_1d_mixture()
N_KS = 100_000
KS_999 = 1.95  # 99.9 % quantile of √n·D under the null


def _model(oracle, sch, pred="eps"):
    return lambda x, t: oracle.predict(x, t, sch, pred)


def _run(name, sch, steps, x, oracle=MIX, pred="eps", **kw):
    return diffcore.sample(_model(oracle, sch, pred), x, sch, solver=name, steps=steps, prediction=pred, **kw)


def _start(sch, n=64, seed=1, dim=1):
    return diffcore.prior_sample(sch, (n, dim), seed=seed, dtype=F64)


# -- identities -------------------------------------------------------------------------------------

@pytest.mark.parametrize("stoch,kw,det,dkw,sched", [
    ("ddim_eta", {"eta": 0.0}, "ddim", {}, "vp_linear"),
    ("euler_ancestral", {"eta": 0.0}, "ddim", {}, "vp_cosine"),
    ("euler_maruyama", {"eta": 0.0}, "euler", {"variable": "t"}, "vp_linear"),
    ("dpmpp_2m_sde", {"eta": 0.0}, "dpmpp_2m", {}, "edm"),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, "dpmpp_2m", {"solver_type": "heun"}, "vp_linear"),
    ("edm_churn", {}, "heun", {"variable": "rho"}, "edm"),
])
def test_zero_noise_limits_are_the_ode_solvers(stoch, kw, det, dkw, sched):
    sch = schedules.get(sched)
    x = _start(sch)
    a = _run(stoch, sch, 10, x, seed=3, **kw)
    b = _run(det, sch, 10, x, **dkw)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_ddim_eta_one_and_euler_ancestral_are_the_ddpm_posterior_step():
    # DDIM with η = 1 equals the ancestral step with σ̃² = β̃, same noise;
    # DDPM's last step is noise-free, so compare the states before it
    sch = schedules.get("vp_linear")
    x = _start(sch)
    M = 10
    z = torch.randn(M, 64, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    _, ta = _run("ddim_eta", sch, M, x, noise=z, return_trajectory=True)
    _, tb = _run("ddpm", sch, M, x, noise=z[:M - 1], return_trajectory=True)
    _, tc = _run("euler_ancestral", sch, M, x, noise=z, return_trajectory=True)
    for u, v, w in zip(ta[:-1], tb[:-1], tc[:-1]):
        assert torch.allclose(u, v, rtol=0, atol=1e-12)
        assert torch.allclose(u, w, rtol=0, atol=1e-12)


def test_ddim_eta_rejects_noise_above_sigma():
    sch = schedules.get("vp_linear")
    with pytest.raises(ValueError, match="eta"):
        solvers.get("ddim_eta", eta=3.0).plan(sch, diffcore.timesteps(sch, 4))
    with pytest.raises(ValueError, match="eta"):
        solvers.get("ddim_eta", eta=-0.1)


def test_pc_with_zero_snr_is_the_predictor_alone():
    sch = schedules.get("vp_linear")
    x = _start(sch)
    M = 6
    z = torch.randn(2 * M - 1, 64, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = _run("pc", sch, M, x, snr=0.0, noise=z)
    # draws: corrector, predictor, corrector, ..., corrector (the last predictor is noise-free)
    b = _run("pc", sch, M, x, corrector="none", noise=z[1::2])
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


# -- exact moments on Gaussian data --------------------------------------------------------------------

def _nodes(sch, t):
    v = sch.eval(t.to(F64))
    return v.alpha.to(F64), v.sigma.to(F64)


def test_ddpm_posterior_has_exact_marginals_for_point_mass_data():
    # x̂ ≡ c, σ̃² = β̃ ⇒ x_t ~ N(α_t c, σ_t²) at every step
    sch, c = schedules.get("vp_cosine"), 0.7
    plan = solvers.get("ddpm").plan(sch, diffcore.timesteps(sch, 12), dtype=F64, prediction="x0")
    a, s = _nodes(sch, plan.timesteps[0])
    m, v = convergence.gaussian_moments(plan, lambda x, t: torch.full_like(x, c), float(a[0]) * c,
                                        float(s[0]) ** 2, trajectory=True)
    # the last step is noise-free: it lands on the mean
    assert max(abs(mi - float(ai) * c) for mi, ai in zip(m, a)) < 1e-12
    assert max(abs(vi - float(si) ** 2) for vi, si in zip(v[:-1], s[:-1])) < 1e-12


def test_ddpm_beta_variance_is_stationary_for_standard_normal_data():
    # N(0, I) data, σ̃² = b ⇒ x_t ~ N(0, 1) exactly (α² + σ² = 1)
    sch = schedules.get("vp_linear")
    plan = solvers.get("ddpm", variance="beta").plan(sch, diffcore.timesteps(sch, 12), dtype=F64)
    m, v = convergence.gaussian_moments(plan, oracles.Gaussian([0.0], [[1.0]]), 0.0, 1.0, trajectory=True)
    assert max(abs(x) for x in m) < 1e-13
    assert max(abs(x - 1) for x in v[:-1]) < 1e-12


def test_euler_maruyama_weak_order_one():
    sch, mu, s2 = schedules.get("vp_linear"), 0.5, 0.5
    g = oracles.Gaussian([mu], [[s2]])
    errs, Ns = [], [16, 32, 64, 128, 256]
    for N in Ns:
        plan = solvers.get("euler_maruyama").plan(sch, diffcore.timesteps(sch, N), dtype=F64)
        a, s = _nodes(sch, plan.timesteps[0])
        m, v = convergence.gaussian_moments(plan, g, float(a[0]) * mu, float(a[0] ** 2 * s2 + s[0] ** 2))
        errs.append(abs(m - float(a[-1]) * mu) + abs(v - float(a[-1] ** 2 * s2 + s[-1] ** 2)))
    slope = convergence.lsq_slope(Ns, errs)
    assert 0.8 <= slope <= 1.2, (slope, errs)


def test_langevin_reaches_the_discretized_chains_stationary_law():
    # book Eq. (3.1.5): for p = N(μ, v) and exact score the chain's law is N(μ, v/(1 − η/(2v)))
    sch, mu, s2 = schedules.get("vp_linear"), 0.4, 0.6
    g = oracles.Gaussian([mu], [[s2]])
    t, eta, M = 0.4, 0.3, 200
    a, s = _nodes(sch, torch.tensor([t], dtype=F64))
    mean, v = float(a[0]) * mu, float(a[0] ** 2 * s2 + s[0] ** 2)
    v_inf = v / (1 - eta / (2 * v))
    plan = solvers.get("langevin", step_size=eta).plan(sch, diffcore.timesteps(sch, M, t_end=t), dtype=F64)
    m_ex, v_ex = convergence.gaussian_moments(plan, g, 0.0, 1.0)
    assert abs(m_ex - mean) < 1e-10 and abs(v_ex - v_inf) < 1e-10  # the exact recursion has converged
    # Monte Carlo with the kernel's own noise
    n = 100_000
    x = diffcore.prior_sample(sch, (n, 1), seed=4, dtype=F64)
    out = _run("langevin", sch, M, x, oracle=g, t_end=t, step_size=eta, seed=5)
    assert abs(float(out.mean()) - mean) < 4.5 * math.sqrt(v_inf / n)
    assert abs(float(out.var()) - v_inf) < 4.5 * v_inf * math.sqrt(2 / n)
    assert abs(float(out.var()) - v) > 10 * v_inf * math.sqrt(2 / n)  # the O(η) bias is resolved


def test_annealed_langevin_follows_the_variance_recursion():
    # annealed Langevin (book Alg. 1): v ← (1 − η_ℓ/v_ℓ)² v + 2η_ℓ per step at level ℓ, v_ℓ = s² + σ_ℓ²
    sch, s2 = schedules.get("ve", sigma_min=0.05, sigma_max=3.0), 0.5
    g = oracles.Gaussian([0.0], [[s2]])
    solver = solvers.get("annealed_langevin", n_steps_each=7, delta=0.01)
    grid = diffcore.timesteps(sch, 4)
    plan = solver.plan(sch, grid, dtype=F64)
    _, var = convergence.gaussian_moments(plan, g, 0.0, 9.0)
    sig = sch.eval(grid.to(F64)).sigma.to(F64)
    v = 9.0
    for sl in sig:
        eta, vl = 0.01 * float(sl) ** 2 / float(sig[-1]) ** 2, s2 + float(sl) ** 2
        for _ in range(7):
            v = (1 - eta / vl) ** 2 * v + 2 * eta
    assert abs(var - v) < 1e-12 * max(1.0, v)


# -- distributions on the 1-D mixture oracle ----------------------------------------------------------

# (sampler, schedule, options, N, c): the run with 4N steps must have D ≤ δ + 1.95/√n with the bias
# budget δ = c/(4N), and D(N) > D(4N) + 4/√n. Measured D(4N) at n = 10⁵ (seeds below) in brackets:
KS_CASES = [
    ("ddpm", "vp_linear", {}, 10, 2.0),                              # [0.031]
    ("ddpm", "vp_linear", {"variance": "beta"}, 10, 2.0),            # [0.030]
    ("ddim_eta", "vp_linear", {"eta": 0.5}, 10, 2.0),
    ("euler_ancestral", "edm", {}, 10, 2.0),                         # [0.032]
    ("euler_maruyama", "vp_linear", {}, 10, 1.5),                    # [0.022]
    ("pc", "ve", {"snr_norm": "batch"}, 10, 1.5),                    # [0.024]
    ("pc", "vp_linear", {}, 10, 2.0),                                # [0.043] default options, ddpm's bound
    pytest.param("pc", "ve", {}, 10, 1.5, marks=pytest.mark.slow),  # [0.030] (snr_norm="sample": 0.32)
    ("edm_churn", "edm", {"s_churn": 40.0}, 10, 1.0),                # [0.009]
    ("dpmpp_2m_sde", "vp_linear", {}, 10, 0.6),                      # [0.007]
    ("dpmpp_2m_sde", "edm", {"solver_type": "heun"}, 10, 1.0),       # [0.013]
    ("dpmpp_3m_sde", "vp_linear", {}, 10, 0.5),                      # [0.003]
]


def _ks(out, t_end, sch):
    return metrics.ks_statistic(out, lambda v: MIX.marginal_cdf(v, t_end if t_end > 0 else None, sch))


def _ks_id(i, case):
    v = getattr(case, "values", case)  # a pytest.param keeps its tuple in .values
    return f"{v[0]}-{v[1]}-{i}"


@pytest.mark.parametrize("name,sched,opts,N,c", KS_CASES, ids=[_ks_id(i, c) for i, c in enumerate(KS_CASES)])
def test_sampler_distribution_ks(name, sched, opts, N, c):
    sch = schedules.get(sched)
    x = _start(sch, N_KS, seed=11)
    te = float(diffcore.timesteps(sch, N)[-1])
    d1 = _ks(_run(name, sch, N, x, seed=12, **opts), te, sch)
    d4 = _ks(_run(name, sch, 4 * N, x, seed=12, **opts), te, sch)
    assert d4 <= c / (4 * N) + KS_999 / math.sqrt(N_KS), (d1, d4)
    assert d1 > d4 + 4 / math.sqrt(N_KS), (d1, d4)


def test_langevin_distribution_ks():
    sch, t = schedules.get("vp_linear"), 0.3
    x = _start(sch, N_KS, seed=11)
    d = [_ks(_run("langevin", sch, N, x, t_end=t, step_size=0.02, seed=12), t, sch) for N in (25, 100)]
    assert d[1] <= 0.02 + KS_999 / math.sqrt(N_KS), d  # [0.014]: O(η) stationary bias
    assert d[0] > d[1] + 4 / math.sqrt(N_KS), d


def test_annealed_langevin_distribution_ks():
    sch = schedules.get("ve", sigma_min=0.05, sigma_max=5.0)
    x = _start(sch, N_KS, seed=11)
    te = float(diffcore.timesteps(sch, 9)[-1])
    d = [_ks(_run("annealed_langevin", sch, 9, x, n_steps_each=n, delta=5e-3, seed=12), te, sch) for n in (5, 20)]
    assert d[1] <= 0.05 + KS_999 / math.sqrt(N_KS), d
    assert d[0] > d[1] + 4 / math.sqrt(N_KS), d


def test_2d_sliced_wasserstein_below_the_exact_vs_exact_quantile():
    mix2 = oracles.toy_2d_mixture()
    sch = schedules.get("vp_linear")
    n = 20_000
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(64, 2, dtype=F64, generator=g)
    proj = proj / proj.norm(dim=1, keepdim=True)
    te = float(diffcore.timesteps(sch, 40)[-1])
    ref = mix2.sample_marginal(n, te, sch, generator=g)
    null = torch.tensor([float(metrics.sliced_wasserstein(mix2.sample_marginal(n, te, sch, generator=g), ref,
                                                           projections=proj)) for _ in range(40)])
    q999 = float(null.mean() + 3.1 * null.std())  # normal approximation of the 99.9 % quantile
    x = diffcore.prior_sample(sch, (n, 2), seed=3, dtype=F64)
    # pc with its default options ([0.048]; snr_norm="sample" gave 0.72) on ddpm's bound
    for name, delta in (("ddpm", 0.05), ("dpmpp_2m_sde", 0.02), ("euler_maruyama", 0.05), ("pc", 0.05)):
        out = _run(name, sch, 40, x, oracle=mix2, seed=4)
        sw = float(metrics.sliced_wasserstein(out, ref, projections=proj))
        assert sw < q999 + delta, (name, sw, q999)


def test_pc_default_is_batch_independent():
    """A sample's result may not depend on the rest of its batch (per-sample Philox noise; the default
    corrector step comes from the schedule, not from the batch's norms)."""
    sch = schedules.get("vp_linear")
    x = _start(sch, 8, seed=5)
    whole = _run("pc", sch, 20, x, seed=3)
    part = _run("pc", sch, 20, x[:4], seed=3)
    assert torch.equal(whole[:4], part)
    # the batch-mean rule is the counter-example the default avoids
    whole_b = _run("pc", sch, 20, x, seed=3, snr_norm="batch")
    part_b = _run("pc", sch, 20, x[:4], seed=3, snr_norm="batch")
    assert (whole_b[:4] - part_b).abs().max() > 1e-3


# -- the Brownian source ------------------------------------------------------------------------------

def test_brownian_samples_converge_in_the_step_count():
    sch = schedules.get("vp_linear")
    x = _start(sch, 4000, seed=2)
    dist = lambda a, b: float((a - b).abs().mean())  # noqa: E731
    for name in ("euler_maruyama", "dpmpp_2m_sde"):
        a = _run(name, sch, 50, x, seed=7, brownian=True)
        b = _run(name, sch, 100, x, seed=7, brownian=True)
        c = _run(name, sch, 100, x, seed=8, brownian=True)
        assert dist(a, b) < 0.5 * dist(a, c), (name, dist(a, b), dist(a, c))
        # the plain Philox source has no such coupling between step counts
        p = _run(name, sch, 50, x, seed=7)
        q = _run(name, sch, 100, x, seed=7)
        assert dist(p, q) > 0.5 * dist(a, c)


@pytest.mark.skipif(not (torch.cuda.is_available() and diffcore.build_info()["cuda"]), reason="no CUDA device")
@pytest.mark.parametrize("name,opts", [("ddpm", {}), ("dpmpp_2m_sde", {"brownian": True}), ("edm_churn", {"s_churn": 10.0}),
                                       ("pc", {})])
def test_cuda_sampling_matches_cpu_and_graph_replay(name, opts):
    sch = schedules.get("edm" if name == "edm_churn" else "vp_linear")
    g = oracles.Gaussian([0.2, -0.1], [[0.5, 0.1], [0.1, 0.4]])
    x = diffcore.prior_sample(sch, (256, 2), seed=1, dtype=F64)
    cpu = _run(name, sch, 12, x, oracle=g, seed=5, **opts)
    gpu = _run(name, sch, 12, x.cuda(), oracle=g, seed=5, **opts)
    assert torch.allclose(gpu.cpu(), cpu, rtol=0, atol=1e-10)
    graph = _run(name, sch, 12, x.cuda(), oracle=g, seed=5, cuda_graph=True, **opts)
    again = _run(name, sch, 12, x.cuda(), oracle=g, seed=5, cuda_graph=True, **opts)
    assert torch.equal(graph, again) and torch.allclose(graph.cpu(), cpu, rtol=0, atol=1e-10)
