"""Picard / ParaDiGMS parallel-in-time sampling (Shih et al. 2023; book §9.8, Alg. 8): the window update
against Eq. (9.8.4) written out in float64, window 1 = the sequential solver bit for bit, τ = 0 = the
sequential solver, error ≤ C·τ with C measured, round counts, stochastic samplers with fixed noise,
per-sample grids, model kwargs and argument errors."""
import math

import pytest
import torch

import diffcore
from diffcore import oracles, schedules
from diffcore.convergence import reference_mixture
from diffcore.parallel import ParallelConfig, picard_sample, step_noise_variance, window_update

ORACLE = reference_mixture()
RING = oracles.GaussianMixture.ring2d(k=4, radius=1.5, std=0.3)
SCHED = schedules.VPLinear()


def model(x, t):
    return ORACLE.predict(x, t, SCHED, "eps")


def ring_model(x, t):
    return RING.predict(x, t, SCHED, "eps")


class Counter:
    """A model that counts its calls and the samples it was evaluated on."""

    def __init__(self, fn):
        self.fn, self.calls, self.samples = fn, 0, 0

    def __call__(self, x, t):
        self.calls += 1
        self.samples += x.shape[0]
        return self.fn(x, t)


def _x(B=8, D=1, dtype=torch.float64, seed=0):
    return diffcore.prior_sample(SCHED, (B, D), seed=seed, dtype=dtype)


def _rounds(fn, x, **kw):
    log = []
    out = diffcore.sample(fn, x, schedule=SCHED, callback=log.append, **kw)
    return out, log


# -- the window update (the future fused kernel's reference) ---------------------------------------

def test_window_update_is_eq_9_8_4():
    g = torch.Generator().manual_seed(0)
    J, B, D = 6, 3, 5
    x = torch.randn(J + 1, B, D, generator=g, dtype=torch.float64)
    phi = x[:-1] + 0.1 * torch.randn(J, B, D, generator=g, dtype=torch.float64)
    sig2 = torch.rand(J, B, generator=g, dtype=torch.float64) + 0.5
    y, res, stride = window_update(x, phi, sig2, 0.0)
    # Eq. (9.8.4): X_{ℓ+j+1} = X_ℓ + Σ_{i≤j} Δ_{ℓ+i}, Δ_i = Φ_i(X_i) − X_i, summed one term at a time
    for j in range(J):
        want = x[0].clone()
        for i in range(j + 1):
            want = want + (phi[i] - x[i])
        assert (y[j] - want).abs().max().item() < 1e-13
    assert torch.equal(y[0], phi[0])  # spec §8 oracle (c): the first node is Φ_ℓ(X_ℓ) exactly
    for j in range(1, J):
        e = ((y[j - 1] - x[j]) ** 2).sum(-1) / (D * sig2[j])
        assert torch.allclose(res[j], e, rtol=1e-12, atol=0)
    assert int(stride) == 1  # τ = 0: any change is unconverged


def test_window_update_stride_rule():
    J, B = 5, 2
    x = torch.zeros(J + 1, B, 1, dtype=torch.float64)
    phi = torch.zeros(J, B, 1, dtype=torch.float64)
    phi[2, 1, 0] = 0.3      # node ℓ+3 of sample 1 moves by 0.3: C_3 = 0.3
    sig2 = torch.ones(J, B, dtype=torch.float64)
    _, res, stride = window_update(x, phi, sig2, 0.2)
    assert int(stride) == 3 and res[3, 1].item() == pytest.approx(0.09)
    assert int(window_update(x, phi, sig2, 0.31)[2]) == J   # all converged: slide the whole window
    assert int(window_update(x[:2], phi[:1], sig2[:1], 0.0)[2]) == 1  # stride ≥ 1 always


def test_first_round_with_euler_is_drift_at_start():
    """Spec §8 oracle (d): Euler increments, window = M: the first round gives
    X_j = x_T + Σ_{i<j} (t_{i+1} − t_i) v(x_T, t_i)."""
    M = 6
    x = _x(4)
    plan = diffcore.solvers.get("euler").plan(SCHED, diffcore.timesteps(SCHED, M), dtype=torch.float64)
    t = plan.timesteps[0]
    seen = {}

    def spy(u, tt):
        seen.setdefault("u", u.clone())
        return model(u, tt)

    res = picard_sample(plan, lambda reps: spy, x, ParallelConfig(M, 1e9), return_trajectory=True)
    assert res.rounds == 1 and res.nfe == M   # τ huge: everything accepted after one round
    assert torch.equal(seen["u"], x.repeat(M, 1))
    acc = x.clone()
    for j in range(1, M + 1):
        v = ORACLE.velocity(x, t[j - 1].expand(4), SCHED)
        acc = acc + (t[j] - t[j - 1]) * v
        assert (res.trajectory[j] - acc).abs().max().item() < 1e-12


# -- fixed point = the sequential sample -----------------------------------------------------------

SOLVERS = ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_3", "deis_3", "ipndm", "heun", "dpmpp_2s", "dpm_solver_3"]


@pytest.mark.parametrize("name", SOLVERS)
def test_window_one_is_sequential_bitwise(name):
    for dtype, fn, D in [(torch.float64, model, 1), (torch.float32, ring_model, 2)]:
        x = _x(6, D, dtype)
        seq = diffcore.sample(fn, x, schedule=SCHED, solver=name, steps=12)
        par = diffcore.sample(fn, x, schedule=SCHED, solver=name, steps=12, parallel=ParallelConfig(1, 0.5))
        assert torch.equal(par, seq), name


@pytest.mark.parametrize("name", SOLVERS)
def test_tolerance_zero_is_sequential(name):
    x = _x(8)
    seq = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=20)
    cnt = Counter(model)
    par, log = _rounds(cnt, x, solver=name, steps=20, parallel=ParallelConfig(7, 0.0))
    assert (par - seq).abs().max().item() <= 1e-12
    plan = diffcore.solvers.get(name).plan(SCHED, diffcore.timesteps(SCHED, 20), dtype=torch.float64)
    assert cnt.calls == len(log) <= plan.nfe          # one batched model call per round
    assert all(r["stride"] >= 1 for r in log)


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "edm_churn", "langevin"])
def test_stochastic_fixed_noise_is_sequential(name):
    x = _x(8)
    seq = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=20, seed=11)
    par = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=20, seed=11, parallel=ParallelConfig(6, 0.0))
    assert (par - seq).abs().max().item() <= 1e-12
    one = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=20, seed=11, parallel=ParallelConfig(1, 1.0))
    assert torch.equal(one, seq)


def test_pre_drawn_noise_tensor_and_trajectory():
    x = _x(4)
    plan = diffcore.solvers.get("ddpm").plan(SCHED, diffcore.timesteps(SCHED, 15), dtype=torch.float64)
    z = torch.randn((plan.noise_draws,) + tuple(x.shape), generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    seq, tseq = diffcore.sample(model, x, schedule=SCHED, solver="ddpm", steps=15, noise=z, return_trajectory=True)
    par, tpar = diffcore.sample(model, x, schedule=SCHED, solver="ddpm", steps=15, noise=z, return_trajectory=True,
                                parallel=ParallelConfig(5, 0.0))
    assert len(tpar) == len(tseq) == 16
    for a, b in zip(tpar, tseq):
        assert (a - b).abs().max().item() <= 1e-12


def test_per_sample_grids():
    B, M = 4, 12
    grids = torch.stack([diffcore.timesteps(SCHED, M, t_start=a, t_end=b)
                         for a, b in [(1.0, 1e-3), (0.8, 0.01), (0.6, 0.05), (0.9, 2e-3)]])
    x = _x(B)
    seq = diffcore.sample(model, x, schedule=SCHED, solver="dpmpp_2m", steps=grids)
    par = diffcore.sample(model, x, schedule=SCHED, solver="dpmpp_2m", steps=grids, parallel=ParallelConfig(5, 0.0))
    assert (par - seq).abs().max().item() <= 1e-12


def test_model_kwargs_and_guidance_are_tiled():
    B = 3
    scale = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def cond(x, t, s=None):
        return model(x, t) * s[:, None]

    x = _x(B)
    kw = dict(model_kwargs={"s": scale}, guidance=diffcore.CFG(1.5, uncond={"s": torch.ones(B, dtype=torch.float64)}))
    seq = diffcore.sample(cond, x, schedule=SCHED, solver="ddim", steps=10, **kw)
    par = diffcore.sample(cond, x, schedule=SCHED, solver="ddim", steps=10, parallel=ParallelConfig(4, 0.0), **kw)
    assert (par - seq).abs().max().item() <= 1e-12


# -- τ > 0: error and round counts -----------------------------------------------------------------

def test_error_is_linear_in_tolerance():
    """RMS(Picard − sequential) ≤ C·τ, C measured (2026-11: C ≈ 0.012–0.03 for DDIM with window 10–16,
    ≤ 0.1 for DPM-Solver++(2M)), and the error falls about linearly with τ."""
    x = _x(32)
    for name, C in [("ddim", 0.05), ("dpmpp_2m", 0.2)]:
        seq = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=100)
        errs = []
        taus = [1e-1, 1e-2, 1e-3, 1e-4]
        for tau in taus:
            par = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=100, parallel=ParallelConfig(12, tau))
            errs.append((par - seq).pow(2).mean().sqrt().item())
        assert all(e <= C * t for e, t in zip(errs, taus)), (name, errs)
        slope = (math.log(errs[0]) - math.log(errs[-1])) / (math.log(taus[0]) - math.log(taus[-1]))
        assert 0.7 < slope < 1.3, (name, slope, errs)


@pytest.mark.parametrize("window", [10, 16, 25])
def test_ddim_100_steps_converges_in_30_rounds(window):
    x = _x(16)
    cnt = Counter(model)
    _, log = _rounds(cnt, x, solver="ddim", steps=100, parallel=ParallelConfig(window, 1e-3))
    assert len(log) <= 30 and cnt.calls == len(log)
    assert sum(r["stride"] for r in log) == 100
    assert cnt.samples == 16 * sum(min(window, 100 - r["start"]) for r in log)


def test_rounds_fewer_than_steps_and_monotone_in_tolerance():
    x = _x(8)
    rounds = []
    for tau in [0.3, 0.03, 3e-3, 3e-4]:
        _, log = _rounds(model, x, solver="ddpm", steps=60, seed=2, parallel=ParallelConfig(8, tau))
        rounds.append(len(log))
    assert all(r < 60 for r in rounds) and rounds == sorted(rounds)


def test_max_iters_finishes_sequentially():
    x = _x(4)
    seq = diffcore.sample(model, x, schedule=SCHED, solver="ddim", steps=30)
    _, log = _rounds(model, x, solver="ddim", steps=30, parallel=ParallelConfig(8, 0.0, max_iters=3))
    assert all(r["stride"] == 1 for r in log[3:])
    par = diffcore.sample(model, x, schedule=SCHED, solver="ddim", steps=30, parallel=ParallelConfig(8, 0.0, max_iters=3))
    assert (par - seq).abs().max().item() <= 1e-12


def test_step_noise_variance_is_ddpm_posterior():
    plan = diffcore.solvers.get("ddim").plan(SCHED, diffcore.timesteps(SCHED, 5))
    v = step_noise_variance(plan)[:, 0]
    t = plan.timesteps[0]
    e = SCHED.eval(t)
    abar = e.alpha.double() ** 2   # VP: σ² = 1 − ᾱ
    for i in range(5):
        # DDPM: β̃ = (1 − ᾱ_{s}) / (1 − ᾱ_{t}) · (1 − ᾱ_t / ᾱ_s), t = t_i (noisier), s = t_{i+1}
        beta = 1 - abar[i] / abar[i + 1]
        want = (1 - abar[i + 1]) / (1 - abar[i]) * beta
        assert v[i].item() == pytest.approx(want.item(), rel=1e-9, abs=1e-300)


# -- argument errors -------------------------------------------------------------------------------

def test_argument_errors():
    with pytest.raises(TypeError, match="window"):
        ParallelConfig(2.0)
    with pytest.raises(ValueError, match="window"):
        ParallelConfig(0)
    with pytest.raises(ValueError, match="tolerance"):
        ParallelConfig(4, -1.0)
    with pytest.raises(TypeError, match="tolerance"):
        ParallelConfig(4, "0.1")
    with pytest.raises(ValueError, match="max_iters"):
        ParallelConfig(4, 0.1, max_iters=0)
    x = _x(2)
    with pytest.raises(TypeError, match="parallel"):
        diffcore.sample(model, x, schedule=SCHED, solver="ddim", parallel=4)
    with pytest.raises(ValueError, match="parallel"):
        diffcore.sample(model, x, schedule=SCHED, solver="dpm_adaptive", parallel=ParallelConfig())
    with pytest.raises(ValueError, match="solver"):
        diffcore.sample(model, x, schedule=SCHED, solver="pc", steps=5, seed=0, parallel=ParallelConfig())
    with pytest.raises(ValueError, match="parallel"):
        diffcore.sample(model, x, schedule=SCHED, solver="ddim", progress=True, parallel=ParallelConfig())


# -- window split across ranks (torch.distributed, gloo on the CPU) --------------------------------

_WORKER = r"""
import json, os, sys
import torch, torch.distributed as dist
import diffcore
from diffcore import schedules
from diffcore.convergence import reference_mixture
dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
O, S = reference_mixture(), schedules.VPLinear()
seen = [0]
def model(x, t):
    seen[0] += x.shape[0]
    return O.predict(x, t, S, "eps")
x = diffcore.prior_sample(S, (4, 1), seed=0, dtype=torch.float64)
log = []
out = diffcore.sample(model, x, schedule=S, solver=sys.argv[1], steps=20, seed=3, callback=log.append,
                      parallel=diffcore.ParallelConfig(5, float(sys.argv[2]), distributed=True))
print(json.dumps({"out": out.flatten().tolist(), "seen": seen[0], "rounds": len(log),
                  "nfe": sum(min(5, 20 - r["start"]) for r in log)}))
dist.destroy_process_group()
"""


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("name,tau", [("ddpm", 0.0), ("dpmpp_2m", 1e-3)])
def test_distributed_window_split(name, tau):
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, name, str(tau)], env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    res = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        res.append(json.loads(out.strip().splitlines()[-1]))
    x = _x(4, seed=0)
    log = []
    single = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=20, seed=3, callback=log.append,
                             parallel=ParallelConfig(5, tau))
    for r in res:  # every rank ends with the single-process Picard result, in the same rounds
        assert torch.equal(torch.tensor(r["out"], dtype=torch.float64).reshape(4, 1), single)
        assert r["rounds"] == len(log)
        # each rank evaluated its share: ceil(J / 2) nodes of every window, 4 samples each
        assert r["seen"] == 4 * sum(-(-min(5, 20 - q["start"]) // 2) for q in log)
    if tau == 0.0:
        seq = diffcore.sample(model, x, schedule=SCHED, solver=name, steps=20, seed=3)
        assert (single - seq).abs().max().item() <= 1e-12
