"""The CPU noise generators draw exactly the numbers of the scalar Philox-4x32-10 / Box–Muller transform.

The CPU fills (``philox_normal``, the prior draw, the Brownian tree) and the fused step's in-kernel noise
compute many Philox blocks per iteration in vector lanes (csrc/cpu/noise_cpu.cpp), while the CUDA kernels
call the scalar functions of csrc/core/philox.h one element at a time. Three kinds of check pin that the
vector path changes no bit:

* digests (SHA-256 of the raw output bytes) recorded from the scalar generator before the vector one
  replaced it, for draws, Brownian increments, prior draws and whole stochastic sampling loops, over
  seeds, sample ids, draws, domains, dtypes and lengths that are not multiples of the lane count or of the
  4096-element chunk;
* element-by-element equality with the scalar ``normal_at`` (the CUDA kernels' function), including
  element indices at and above 2**34, where the counter's high word is in use;
* structural identities: a prefix of a longer draw equals the shorter draw, a step's in-kernel noise
  equals the same draw handed in as a tensor, any thread count gives the same bits.
"""
import hashlib
import random

import pytest
import torch

import diffcore
from diffcore import _ops, noise, schedules, solvers


_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and diffcore.build_info()["cuda"]), reason="needs CUDA")
# the CUDA kernels draw one element per thread with the scalar functions: the same digests
DEVICES = ["cpu", pytest.param("cuda", marks=_cuda)]


def _digest(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)  # NumPy has no bfloat16
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


# (shape, seed, sample_ids, draw, domain, dtype) -> digest of philox_normal, recorded from the scalar code
PHILOX = [
    (((1, 1), 0, None, 0, 0, torch.float32), "59123a7351151b01"),
    (((3, 5), 1, None, 0, 0, torch.float64), "d82a2065079bdd52"),
    (((2, 4097), 2 ** 40 + 7, [7, 2 ** 32 - 1], 3, 0, torch.float64), "3d6f14a62a54d3e9"),
    (((16, 1024), 0, None, 0, 1, torch.float32), "dfb0251f405a922f"),
    (((2, 3, 7, 11), 12345, None, 2 ** 32 - 1, 2, torch.float16), "0c258734efb656b5"),
    (((5, 8195), 99, None, 11, 0, torch.bfloat16), "267ae51489f47222"),
    (((1, 70001), 2 ** 64 - 1, [3], 5, 1, torch.float32), "8f77071ce02b1f8b"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("args,want", PHILOX)
def test_philox_normal_bits_are_unchanged(args, want, device):
    shape, seed, ids, draw, domain, dtype = args
    z = noise.philox_normal(shape, seed, sample_ids=ids, draw=draw, domain=domain, dtype=dtype, device=device)
    assert _digest(z) == want


# (shape, t0, t1, seed, depth, ta, tb, dtype) -> digest of BrownianTree.increment
BROWNIAN = [
    (((4, 1000), 0.0, 1.0, 3, 20, 0.3, 0.35, torch.float64), "51485edecaeac105"),
    (((2, 4099), -1.0, 2.5, 2 ** 33 + 1, 20, 2.5, -1.0, torch.float32), "790b60afcbf5f352"),
    (((3, 17), 0.0, 1.0, 5, 7, 0.1, 0.9, torch.float64), "d5e4d563880e3aa4"),
    (((2, 5000), 0.0, 1.0, 8, 30, 0.5, 0.5000001, torch.float64), "c59281807664a888"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("args,want", BROWNIAN)
def test_brownian_increment_bits_are_unchanged(args, want, device):
    shape, t0, t1, seed, depth, ta, tb, dtype = args
    tree = noise.BrownianTree(t0, t1, shape, seed=seed, depth=depth, dtype=dtype, device=device)
    assert _digest(tree.increment(ta, tb)) == want


def test_prior_draw_bits_are_unchanged():
    a = diffcore.prior_sample(schedules.get("edm"), (3, 5001), seed=8)
    b = diffcore.prior_sample(schedules.get("vp_linear"), (2, 4, 9, 9), seed=2 ** 50, dtype=torch.float64)
    assert (_digest(a), _digest(b)) == ("15c2adc8b673bf02", "43ada050ec42f356")


# (solver, dtype, brownian) -> digest of x after a 6-step loop with in-kernel noise
STEP = {
    ("ddpm", torch.float32, False): "fae5403b587079af", ("ddpm", torch.float32, True): "ab81e55d809ddf74",
    ("ddpm", torch.float64, False): "1b38401ff2b6a295", ("ddpm", torch.float64, True): "be347e030b31c62a",
    ("ddpm", torch.bfloat16, False): "803fbed393eb6745", ("ddpm", torch.bfloat16, True): "1e07eae0383eb855",
    ("euler_ancestral", torch.float32, False): "d093042a5b3b4840",
    ("euler_ancestral", torch.float32, True): "c61c157f738f194d",
    ("euler_ancestral", torch.float64, False): "f94373fbb630ab68",
    ("euler_ancestral", torch.float64, True): "39f7ef8f1f81cac6",
    ("euler_ancestral", torch.bfloat16, False): "e3646d51ef749cfb",
    ("euler_ancestral", torch.bfloat16, True): "f0affcc05752aa63",
    ("dpmpp_2m_sde", torch.float32, False): "d8dbd23044d941cc",
    ("dpmpp_2m_sde", torch.float32, True): "bf2d4a1dbb1c2fff",
    ("dpmpp_2m_sde", torch.float64, False): "2e92ffad6e8581f3",
    ("dpmpp_2m_sde", torch.float64, True): "106c1290470229ee",
    ("dpmpp_2m_sde", torch.bfloat16, False): "3a2957908b4b2070",
    ("dpmpp_2m_sde", torch.bfloat16, True): "a7e391d2af263f9b",
}


def _run_loop(name, dtype, nz, x0, o0, device="cpu"):
    sch = schedules.get("vp_linear")
    plan = solvers.get(name).plan(sch, diffcore.timesteps(sch, 6), dtype=dtype, prediction="eps", device=device)
    st = plan.init_state(x0.to(device, dtype), nz)
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            plan.step(st, i, s, (o0 * (1 + 0.1 * i)).to(device, dtype))
    return st.x, plan


def _step_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4101, generator=g, dtype=torch.float64), torch.randn(3, 4101, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "dpmpp_2m_sde"])
def test_stochastic_step_bits_are_unchanged(name):
    x0, o0 = _step_data()
    got, want = {}, {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for brownian in (False, True):
            x, _ = _run_loop(name, dtype, noise.Noise(seed=5, sample_ids=[4, 0, 9], brownian=brownian), x0, o0)
            got[dtype, brownian] = _digest(x)
            want[dtype, brownian] = STEP[name, dtype, brownian]
    assert got == want


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_kernel_noise_equals_the_same_draws_passed_as_a_tensor(dtype, device):
    x0, o0 = _step_data()
    ids = [4, 0, 9]
    fused, plan = _run_loop("dpmpp_2m_sde", dtype, noise.Noise(seed=5, sample_ids=ids), x0, o0, device)
    z = torch.stack([noise.philox_normal((3, 4101), 5, sample_ids=ids, draw=d, dtype=dtype, device=device)
                     for d in range(plan.noise_draws)])
    passed, _ = _run_loop("dpmpp_2m_sde", dtype, noise.Noise(noise=z), x0, o0, device)
    assert torch.equal(fused, passed)


def _scalar(seed, sample_id, draw, domain, elements):
    return torch.tensor(_ops._core.philox_normal_at(seed, sample_id, draw, domain, list(elements)), dtype=torch.float64)


def test_vector_fill_equals_the_scalar_transform_element_by_element():
    # every lane position, chunk boundaries (4096) and an odd tail
    z = noise.philox_normal((2, 9001), 2 ** 33 + 5, sample_ids=[17, 2 ** 32 - 2], draw=7, domain=1,
                            dtype=torch.float64)
    for row, sid in zip(z, (17, 2 ** 32 - 2)):
        assert torch.equal(row, _scalar(2 ** 33 + 5, sid, 7, 1, range(9001)))


def test_vector_blocks_equal_the_scalar_transform_past_the_32_bit_block_counter():
    # element n is in block n // 4; blocks >= 2**32 move their high word into the counter's last word,
    # which no tensor here is long enough to reach: probe those elements directly
    rng = random.Random(3)
    starts = [0, 2 ** 34 - 8, 2 ** 34, 5 * 2 ** 34 + 12, 2 ** 50 + 4, 2 ** 62 - 4 * 70] + \
             [4 * rng.randrange(2 ** 58) for _ in range(10)]
    for s in starts:
        seed = rng.randrange(2 ** 64)
        block = _ops._core.philox_normal_block(seed, 11, 3, 0, s // 4, 70)  # 70 blocks: a group and a tail
        assert torch.equal(torch.tensor(block, dtype=torch.float64), _scalar(seed, 11, 3, 0, range(s, s + 280)))


def test_every_instruction_set_variant_draws_the_same_bits():
    # the vector generator is compiled for several instruction sets and picks one from the running CPU:
    # each one this CPU can run must give the scalar transform's bits
    isas, active = _ops._core.noise_isas()
    assert isas[0] == "baseline" and active == isas[-1]
    rng = random.Random(5)
    for isa in isas:
        for _ in range(4):
            seed, sid, q0, count = rng.randrange(2 ** 64), rng.randrange(2 ** 32), rng.randrange(2 ** 40), rng.randrange(1, 300)
            got = _ops._core.philox_normal_block(seed, sid, 9, 2, q0, count, isa)
            assert torch.equal(torch.tensor(got, dtype=torch.float64), _scalar(seed, sid, 9, 2, range(4 * q0, 4 * (q0 + count))))


def test_a_prefix_of_a_longer_draw_is_the_shorter_draw():
    long = noise.philox_normal((2, 12289), 4, draw=1)
    for n in (1, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 4095, 4097, 8191, 12288):
        assert torch.equal(noise.philox_normal((2, n), 4, draw=1), long[:, :n])
    tree = noise.BrownianTree(0.0, 1.0, (2, 9000), seed=6)
    short = noise.BrownianTree(0.0, 1.0, (2, 4099), seed=6)
    assert torch.equal(short.increment(0.7, 0.2), tree.increment(0.7, 0.2)[:, :4099])


def test_thread_count_does_not_change_the_noise():
    n = diffcore.get_num_threads()
    try:
        out = []
        for k in (1, 2, 3):
            diffcore.set_num_threads(k)
            tree = noise.BrownianTree(0.0, 1.0, (5, 20011), seed=2)
            out.append((noise.philox_normal((5, 70001), 1, draw=2), tree.increment(0.25, 0.5)))
    finally:
        diffcore.set_num_threads(n)
    for a, b in out[1:]:
        assert torch.equal(a, out[0][0]) and torch.equal(b, out[0][1])


def test_scalar_probes_refuse_bad_arguments():
    with pytest.raises(ValueError, match="count"):
        _ops._core.philox_normal_block(0, 0, 0, 0, 0, -1)
    with pytest.raises(ValueError, match="count"):
        _ops._core.philox_normal_block(0, 0, 0, 0, 0, 1 << 20)
    with pytest.raises(ValueError, match="q0"):
        _ops._core.philox_normal_block(0, 0, 0, 0, 2 ** 62, 2)
    with pytest.raises(ValueError, match="domain"):
        _ops._core.philox_normal_at(0, 0, 0, 3, [0])
    with pytest.raises(ValueError, match="elements"):
        _ops._core.philox_normal_at(0, 0, 0, 0, [2 ** 64 - 1])
    with pytest.raises(ValueError, match="id"):
        _ops._core.philox_normal_at(0, 2 ** 32, 0, 0, [0])
    with pytest.raises(ValueError, match="draw"):
        _ops._core.philox_normal_block(0, 0, -1, 0, 0, 1)
    with pytest.raises(ValueError, match="isa"):
        _ops._core.philox_normal_block(0, 0, 0, 0, 0, 1, "sse9")
