"""End to end on 2-D data (issue 7 criterion): MonoFlow (Yi et al. 2023) and
consistency training without a teacher (CT, book §11.2 with the improved-CT recipe) each train a 1–2-step
generator whose sliced Wasserstein distance to held-out data of ``oracles.toy_2d_mixture()`` is at most
2 × (SW of the exact Gaussian-mixture teacher with a 50-step DPM-Solver++(2M) + the held-out-vs-held-out
noise floor), the bound of tests/test_distill_e2e.py (same evaluation set, projections and teacher run;
tests/distill_bound.py). Neither method sees the teacher: MonoFlow learns from data samples through a
density-ratio discriminator, CT from data samples alone. Both are slow (40 s and 55 s on one CPU
thread of a loaded machine). A fast test checks the trainer options these recipes use (evaluation EMAs,
iCT curriculum overrides, MonoFlow's sampler).
"""
import pytest
import torch
import torch.nn as nn

import diffcore
from diffcore import models, schedules
from diffcore.distill.consistency import ConsistencyFunction, ConsistencyTrainer
from diffcore.distill.monoflow import MonoFlowTrainer
from diffcore.distill.score_distill import OneStepGenerator
from diffcore.distill.students import ConsistencyStudent

from distill_bound import F64, GM, N_EVAL, _bound, _gen, _naive_sw, _proj, _sw  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp_discriminator(width):
    return nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                         nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))


def _adam_gan(params, lr):
    # β₁ = 0.5: the usual GAN setting; momentum 0.9 carries the generator past the lagging discriminator
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))


@pytest.mark.slow
def test_monoflow_one_step_generator_end_to_end():
    """MonoFlow (§9): a one-step MLP generator (the VSD/FGM tests' OneStepGenerator) trained against a
    logistic density-ratio discriminator (D ≈ log p/q, 2 updates per generator update) with the monotone
    map h(d) = e^d = r. Its particle field h'(D)∇D = ∇r = ∇(p/q) is the Wasserstein-gradient-flow
    velocity of the forward KL(p‖q) (first variation −p/q), which is mass covering: under-sampled modes
    (r > 1) pull harder. With h = id (the reverse-KL flow of the seed, mode seeking) the same recipe
    left the 0.2-weight mode at 3–10 % of the mass for 2000 iterations (SW ≈ 0.3–0.7) for one seed
    of two. The generator is an evaluation EMA (0.99) of the adversarial iterate."""
    sched = schedules.get("vp_linear")
    ref, bound, floor = _bound(sched, "eps")
    torch.manual_seed(0)
    G, D = OneStepGenerator(2, 2, 128, 3), _mlp_discriminator(128)
    tr = MonoFlowTrainer(G, D, lambda n, g: GM.sample(n, g).float(), h="ratio", eta=0.1, gen_steps=1, d_steps=2,
                         gen_lr=1e-3, d_lr=1e-3, gen_optimizer=_adam_gan, d_optimizer=_adam_gan, seed=0,
                         ema_decay=0.99)
    tr.train(1200, 256)
    x = tr.sample(N_EVAL, _gen(3))
    sw = _sw(x, ref)
    naive = _naive_sw(sched, "eps", 1, ref)
    # mode masses (nearest mean) — a diagnostic of the covering property, printed with the numbers
    frac = torch.bincount(((x.double()[:, None] - GM.means[None]) ** 2).sum(-1).argmin(1), minlength=4) / N_EVAL
    print(f"MonoFlow: sw1={sw:.4f} bound={bound:.4f} floor={floor:.4f} ddim1={naive:.4f} "
          f"mode masses={[round(v, 3) for v in frac.tolist()]} (data {GM.weights.tolist()})")
    assert naive > bound
    assert sw <= bound, (sw, bound)


@pytest.mark.slow
def test_consistency_training_two_step_end_to_end():
    """Consistency training (§5.2, book eq. 11.2.6) with the improved-CT recipe [Ref]: no teacher, θ⁻ =
    sg[θ], the doubling curriculum N(k) (s₀ = 10, capped at s₁ = 160 for a 3000-iteration run: K' = 750
    iterations per N ∈ {11, 21, 41, 81, 161}), the lognormal index law (P_mean = −1.1, P_std = 2), the
    pseudo-Huber distance (c = 0.00054√D) and the 1/Δs weight; edm, t_min = 0.002, T = 80. The 2-step
    sampler (T, then one re-noising to the middle Karras time) of the evaluation EMA meets the bound, which
    the exact teacher with 2 DDIM steps misses. (One step, measured ≈ 0.33, does not: CT's O(Δs) target
    bias is not yet resolved at this budget.)"""
    edm = schedules.get("edm")
    ref, bound, floor = _bound(edm, "eps")
    torch.manual_seed(0)
    f = ConsistencyFunction(models.MLP(2, width=128, depth=3, time_transform="log"), edm, t_min=0.002)
    tr = ConsistencyTrainer(f, edm, curriculum="ict", metric="pseudo_huber", weighting="inv_dt", lr=2e-4,
                            curriculum_kwargs={"s1": 160}, ema_decay=0.995, betas=(0.9, 0.99))
    K, g = 3000, _gen(1)
    for k in range(K):
        tr.step(GM.sample(256, g).float(), k, K, generator=g)
    st = ConsistencyStudent(tr.ema)
    xT = 80 * torch.randn(N_EVAL, 2, generator=_gen(3))
    sw1 = _sw(diffcore.sample(st, xT, edm, steps=1), ref)
    sw2 = _sw(diffcore.sample(st, xT, edm, steps=2, generator=_gen(4)), ref)
    naive = _naive_sw(edm, "eps", 2, ref)
    print(f"CT: sw1={sw1:.4f} sw2={sw2:.4f} bound={bound:.4f} floor={floor:.4f} ddim2={naive:.4f}")
    assert naive > bound
    assert sw2 <= bound, (sw2, bound)


# ---- the trainer options the end-to-end recipes use (fast) ---------------------------------------------
def _flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def test_trainer_evaluation_emas_and_options(monkeypatch):
    """The evaluation EMAs are μ·(initial weights) + (1 − μ)·(online weights) after one step; MonoFlow's
    ``sample`` is ``G(z)`` of the EMA (or of the iterate) with z from the given generator; the iCT
    curriculum overrides reach N(k) (spied on the grid builder); bad options raise naming the argument."""
    torch.manual_seed(0)
    G2 = OneStepGenerator(2, 2, 8, 1)
    w0 = _flat(G2)
    tr2 = MonoFlowTrainer(G2, _mlp_discriminator(8), lambda n, g: GM.sample(n, g).float(), h="ratio", seed=0,
                          ema_decay=0.9)
    tr2.step(16)
    w1 = _flat(G2)
    assert not torch.equal(w0, w1)
    assert torch.allclose(_flat(tr2.ema), 0.9 * w0 + 0.1 * w1, atol=1e-7)
    z = torch.randn(5, 2, generator=_gen(7))
    assert torch.equal(tr2.sample(5, _gen(7), use_ema=False), G2(z).detach())
    assert torch.equal(tr2.sample(5, _gen(7)), tr2.ema(z))
    assert not torch.equal(tr2.sample(5, _gen(7)), tr2.sample(5, _gen(7), use_ema=False))
    with pytest.raises(ValueError, match="ema_decay"):
        MonoFlowTrainer(OneStepGenerator(2), _mlp_discriminator(8), GM.sample, ema_decay=1.0)
    with pytest.raises(ValueError, match="n:"):
        tr2.sample(0)

    edm = schedules.get("edm")
    torch.manual_seed(0)
    f = ConsistencyFunction(models.MLP(2, width=8, depth=1, time_transform="log"), edm, t_min=0.002)
    w0 = _flat(f)
    ct = ConsistencyTrainer(f, edm, curriculum="ict", metric="pseudo_huber", weighting="inv_dt", lr=1e-2,
                            curriculum_kwargs={"s0": 4, "s1": 8, "p_mean": 0.0}, ema_decay=0.8, betas=(0.5, 0.9))
    seen = []
    import diffcore.distill.consistency as cmod
    orig = cmod.karras_grid
    monkeypatch.setattr(cmod, "karras_grid", lambda N, *a, **k: (seen.append(N), orig(N, *a, **k))[1])
    for k in (0, 10):  # K = 10, K' = ⌊10/(log₂2 + 1)⌋ = 5: N(0) = 4 + 1, N(10) = min(4·4, 8) + 1 = 9
        ct.step(GM.sample(32, _gen(k)).float(), k, 10, generator=_gen(k))
        if k == 0:
            assert torch.allclose(_flat(ct.ema), 0.8 * w0 + 0.2 * _flat(f), atol=1e-7)
            assert torch.equal(_flat(ct.target), _flat(f))  # iCT: θ⁻ = sg[θ] (μ = 0)
    monkeypatch.undo()
    assert seen == [5, 9]
    assert ct.opt.param_groups[0]["betas"] == (0.5, 0.9)
    with pytest.raises(ValueError, match="curriculum_kwargs"):
        ConsistencyTrainer(f, edm, curriculum="ict", curriculum_kwargs={"mu0": 0.9})
    with pytest.raises(ValueError, match="ema_decay"):
        ConsistencyTrainer(f, edm, curriculum="ict", ema_decay=-0.1)
