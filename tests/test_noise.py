"""Counter-based noise: Philox-4x32-10 known answers, the normal transform, batch-split invariance,
the Brownian tree, and the noise arguments of diffcore.sample."""
import math

import pytest
import torch

import diffcore
from diffcore import metrics, noise, oracles, schedules, solvers

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: (counter, key, expected).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and diffcore.build_info()["cuda"]), reason="no CUDA device")


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    assert noise.philox4x32(ctr, key) == want
    assert tuple(noise.philox4x32_reference(torch.tensor([ctr]), key)[0].tolist()) == want


def test_philox_matches_torch_reference_on_random_blocks():
    g = torch.Generator().manual_seed(0)
    ctr = torch.randint(0, 2 ** 32, (200, 4), generator=g, dtype=torch.int64)
    key = (0x12345678, 0x9ABCDEF0)
    ref = noise.philox4x32_reference(ctr, key)
    got = torch.tensor([noise.philox4x32(c.tolist(), key) for c in ctr])
    assert torch.equal(got, ref)


def test_normals_match_the_libm_box_muller():
    # our log/sin/cos polynomials against torch's libm: a few ulp apart
    z = noise.philox_normal((3, 5000), seed=2 ** 40 + 17, sample_ids=[4, 9, 1], draw=6, dtype=torch.float64)
    for row, sid in zip(z, (4, 9, 1)):
        ref = noise.philox_normal_reference(5000, 2 ** 40 + 17, sid, 6)
        assert torch.allclose(row, ref, rtol=0, atol=1e-14)


def test_normals_are_standard_normal():
    z = noise.philox_normal((4, 100000), seed=123, dtype=torch.float64)
    n = z.numel()
    D = metrics.ks_statistic(z, lambda v: 0.5 * torch.erfc(-v / math.sqrt(2)))
    assert math.sqrt(n) * D < 1.95  # 99.9 % Kolmogorov quantile, fixed seed
    assert abs(float(z.mean())) < 4.5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 4.5 * math.sqrt(2 / n)


def test_float32_is_the_rounded_float64_draw():
    a = noise.philox_normal((2, 3001), seed=5, dtype=torch.float64)
    b = noise.philox_normal((2, 3001), seed=5, dtype=torch.float32)
    assert torch.equal(a.float(), b)


def test_sample_ids_make_noise_independent_of_the_batch():
    full = noise.philox_normal((10, 7, 3), seed=99, draw=2)
    part = noise.philox_normal((3, 7, 3), seed=99, sample_ids=[8, 1, 5], draw=2)
    assert torch.equal(part, full[[8, 1, 5]])
    other = noise.philox_normal((10, 7, 3), seed=99, draw=3)
    assert not torch.equal(full, other)


def test_noise_argument_errors():
    with pytest.raises(ValueError, match="seed"):
        noise.philox_normal((2, 2), seed=-1)
    with pytest.raises(ValueError, match="sample_ids"):
        noise.philox_normal((2, 2), seed=1, sample_ids=[1, 2, 3])
    with pytest.raises(TypeError, match="sample_ids"):
        noise.philox_normal((2, 2), seed=1, sample_ids=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="at most one"):
        noise.Noise(seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="brownian"):
        noise.Noise(noise=torch.zeros(1), brownian=True)


@cuda
def test_cuda_noise_is_bit_identical_to_cpu():
    for dtype in (torch.float32, torch.float64):
        a = noise.philox_normal((5, 100003), seed=77, sample_ids=[3, 1, 4, 1, 5], draw=9, dtype=dtype)
        b = noise.philox_normal((5, 100003), seed=77, sample_ids=[3, 1, 4, 1, 5], draw=9, dtype=dtype, device="cuda")
        assert torch.equal(a, b.cpu())
    tree = dict(t0=0.0, t1=2.0, shape=(3, 4099), seed=4, dtype=torch.float64)
    za = noise.BrownianTree(**tree).increment(1.3, 0.4)
    zb = noise.BrownianTree(**tree, device="cuda").increment(1.3, 0.4)
    assert torch.equal(za, zb.cpu())


# -- Brownian tree ----------------------------------------------------------------------------------

def test_brownian_increments_add_up_and_are_standard_normal():
    tree = noise.BrownianTree(0.0, 1.0, (2, 50000), seed=3, dtype=torch.float64)
    a, b, c = 0.8, 0.55, 0.1
    total = tree(a, c)
    assert torch.allclose(tree(a, b) + tree(b, c), total, atol=1e-12)
    z = tree.increment(a, c)
    n = z.numel()
    assert math.sqrt(n) * metrics.ks_statistic(z, lambda v: 0.5 * torch.erfc(-v / math.sqrt(2))) < 1.95
    # disjoint increments are independent
    r = float(torch.corrcoef(torch.stack([tree.increment(a, b).flatten(), tree.increment(b, c).flatten()]))[0, 1])
    assert abs(r) < 4.5 / math.sqrt(n)


def test_brownian_tree_is_stateless_and_seeded():
    t1 = noise.BrownianTree(0.0, 5.0, (4, 16), seed=11)
    t2 = noise.BrownianTree(0.0, 5.0, (4, 16), seed=11)
    assert torch.equal(t1(2.0, 1.0), t2(2.0, 1.0))
    _ = t1(4.0, 3.0)  # query order does not matter
    assert torch.equal(t1(2.0, 1.0), t2(2.0, 1.0))
    t3 = noise.BrownianTree(0.0, 5.0, (2, 16), seed=11, sample_ids=[3, 0])
    assert torch.equal(t3(2.0, 1.0), t1(2.0, 1.0)[[3, 0]])
    with pytest.raises(ValueError, match="ta, tb"):
        t1.increment(6.0, 1.0)


# -- noise in diffcore.sample ------------------------------------------------------------------------

def _gauss_model(schedule):
    g = oracles.Gaussian([0.3], [[0.5]])
    return lambda x, t: g.predict(x, t, schedule, "eps")


def test_sample_seed_reproduces_and_batch_split_is_invariant():
    sch = schedules.get("vp_linear")
    model = _gauss_model(sch)
    x = diffcore.prior_sample(sch, (12, 1), seed=0, dtype=torch.float64)
    for name in ("ddpm", "dpmpp_2m_sde", "euler_maruyama"):
        a = diffcore.sample(model, x, sch, solver=name, steps=8, seed=42)
        b = diffcore.sample(model, x, sch, solver=name, steps=8, seed=42)
        assert torch.equal(a, b)
        idx = torch.tensor([10, 2, 7])
        part = diffcore.sample(model, x[idx], sch, solver=name, steps=8, seed=42, sample_ids=idx)
        assert torch.allclose(part, a[idx], rtol=0, atol=1e-14)
        c = diffcore.sample(model, x, sch, solver=name, steps=8, seed=43)
        assert not torch.allclose(a, c)


def test_prior_sample_seed_is_batch_invariant():
    sch = schedules.get("edm")
    a = diffcore.prior_sample(sch, (6, 3), seed=8)
    b = diffcore.prior_sample(sch, (2, 3), seed=8, sample_ids=[5, 1])
    assert torch.equal(b, a[[5, 1]])
    assert abs(float(a.std()) / 80.0 - 1) < 1.0  # scaled by σ_max


def test_fused_noise_equals_the_reference_path():
    sch = schedules.get("vp_linear")
    plan = solvers.get("dpmpp_2m_sde").plan(sch, diffcore.timesteps(sch, 6), dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    out = torch.randn(5, 3, dtype=torch.float64)
    for brownian in (False, True):
        nz = noise.Noise(seed=9, brownian=brownian)
        fast, ref = plan.init_state(x, nz), plan.init_state(x, nz)
        for i in range(plan.num_steps):
            plan.step(fast, i, 0, out)
            plan.step_reference(ref, i, 0, out)
        assert torch.allclose(fast.x, ref.x, rtol=0, atol=1e-13)


def test_generator_and_pre_drawn_noise():
    sch = schedules.get("vp_linear")
    model = _gauss_model(sch)
    x = torch.randn(4, 1, dtype=torch.float64)
    plan = solvers.get("ddim_eta").plan(sch, diffcore.timesteps(sch, 5), dtype=torch.float64)
    a = diffcore.sample(model, x, sch, solver="ddim_eta", steps=5, generator=torch.Generator().manual_seed(1))
    b = diffcore.sample(model, x, sch, solver="ddim_eta", steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(1)
    z = torch.stack([torch.randn(4, 1, generator=g, dtype=torch.float64) for _ in range(plan.noise_draws)])
    c = diffcore.sample(model, x, sch, solver="ddim_eta", steps=5, noise=z)
    assert torch.allclose(a, c, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="noise"):
        diffcore.sample(model, x, sch, solver="ddim_eta", steps=5, noise=z[:2])


def test_provider_noise_equals_pre_drawn_noise_and_checks_its_draws():
    from diffcore.noise import Noise  # noqa: PLC0415

    sched = diffcore.schedules.get("vp_linear")
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = lambda xx, t: 0.5 * xx  # noqa: E731
    plan = diffcore.solvers.get("ddpm").plan(sched, diffcore.timesteps(sched, 6), dtype=torch.float64)
    z = torch.randn((plan.noise_draws,) + tuple(x.shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    calls = []

    def provider(d):
        calls.append(d)
        return z[d]

    def run(noise):
        st = plan.init_state(x, noise)
        for i in range(plan.num_steps):
            for s in plan.stages(i):
                plan.step(st, i, s, model(st.model_input(s), plan.model_time(i, s)))
        return st.x

    assert torch.equal(run(Noise(provider=provider)), run(Noise(noise=z)))
    assert sorted(calls) == list(range(plan.noise_draws))  # each draw made exactly once
    with pytest.raises(ValueError, match="provider's draw 0 must be a tensor"):
        run(Noise(provider=lambda d: torch.zeros(2)))
    with pytest.raises(TypeError, match="provider: expected a callable"):
        Noise(provider=3)
    with pytest.raises(ValueError, match="at most one of"):
        Noise(seed=1, provider=provider)
