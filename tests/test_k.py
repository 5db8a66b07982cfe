"""diffcore.k: k-diffusion-style sampler functions.

Ground truths: ``diffcore.sample`` on the same σ grid (EDM schedule, ``prediction="x0"``, the same
noise as a pre-drawn tensor), k-diffusion's own ``sampling.sample_*`` (loaded by
``diffcore.integrations._peers.load_k_diffusion``; skipped when unavailable), closed-form σ grids and
identities between methods (DDIM η = 0 ≡ Euler, DDIM η ≡ Euler ancestral for α = 1, DEIS ≡ LMS).
Model: the exact denoiser of ``oracles.toy_2d_mixture()`` in float64.
"""
import math

import pytest
import torch

import diffcore
import diffcore.k as DK
from diffcore import oracles, schedules, solvers
from diffcore.noise import Noise, default_seed

pytestmark = pytest.mark.usefixtures("one_thread")

SCH = schedules.get("edm")
MIX = oracles.toy_2d_mixture()
F64 = torch.float64
S_MIN, S_MAX = 0.03, 14.6


def den(x, sigma, **_):
    return MIX.predict(x, sigma, SCH, "x0")


GRID0 = DK.get_sigmas_karras(8, S_MIN, S_MAX, dtype=F64)     # 8 steps, the last to σ = 0
GRIDS = {"zero": GRID0, "nozero": GRID0[:-1]}                # 7 steps ending at σ_min


def start(grid, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64) * grid[0]


from k_peer import keyed, kdiff  # noqa: E402  (shared with the other k-diffusion parity module)


# (k function, its options, diffcore solver, solver options, stochastic) — k's functions first
CASES = [
    ("sample_euler", {}, "euler", {"variable": "rho"}, False),
    ("sample_heun", {}, "heun", {"variable": "rho"}, False),
    ("sample_dpm_2", {}, "dpm_solver_2", {}, False),
    ("sample_dpmpp_2m", {}, "dpmpp_2m", {"lower_order_final": False}, False),
    ("sample_euler_ancestral", {"eta": 0.7, "s_noise": 0.9}, "euler_ancestral", {"eta": 0.7, "s_noise": 0.9}, True),
    ("sample_dpmpp_2m_sde", {"eta": 0.8}, "dpmpp_2m_sde", {"eta": 0.8, "lower_order_final": False}, True),
    ("sample_dpmpp_2m_sde", {"solver_type": "heun", "s_noise": 1.1}, "dpmpp_2m_sde",
     {"solver_type": "heun", "s_noise": 1.1, "lower_order_final": False}, True),
    ("sample_dpmpp_3m_sde", {"eta": 0.6, "s_noise": 1.1}, "dpmpp_3m_sde",
     {"eta": 0.6, "s_noise": 1.1, "lower_order_final": False}, True),
    ("sample_dpmpp_3m_sde", {"eta": 0.0}, "dpmpp_3m_sde", {"eta": 0.0, "lower_order_final": False}, True),
]
EXTRA = [
    ("sample_dpmpp_2s", {}, "dpmpp_2s", {}, False),
    ("sample_dpm_3", {}, "dpm_solver_3", {}, False),
    ("sample_dpmpp_3m", {}, "dpmpp_3m", {"lower_order_final": False}, False),
    ("sample_dpmpp_3m", {"w": 2.0, "lower_order_final": True}, "dpmpp_3m", {"w": 2.0}, False),
    ("sample_unipc", {}, "unipc_2", {"lower_order_final": False}, False),
    ("sample_unipc", {"order": 3, "variant": "bh1"}, "unipc_3", {"variant": "bh1", "lower_order_final": False}, False),
    ("sample_unipc", {"order": 1, "corrector": False}, "unipc_1", {"corrector": False, "lower_order_final": False},
     False),
    ("sample_ddim", {}, "ddim", {}, False),
    ("sample_ddim", {"eta": 0.5}, "ddim_eta", {"eta": 0.5}, True),
    ("sample_ddpm", {}, "ddpm", {}, True),
    ("sample_ddpm", {"variance": "beta"}, "ddpm", {"variance": "beta"}, True),
    ("sample_deis", {}, "deis_3", {"lower_order_final": False}, False),
    ("sample_deis", {"order": 2}, "deis_2", {"lower_order_final": False}, False),
    ("sample_ipndm", {}, "ipndm", {"lower_order_final": False}, False),
]


def _id(c):
    return c[0] + "".join(f"-{k}={v}" for k, v in c[1].items())


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("case", CASES + EXTRA, ids=_id)
def test_equals_diffcore_sample(case, grid_name):
    fn, opts, solver, sopts, stochastic = case
    grid = GRIDS[grid_name]
    x = start(grid)
    kw = {}
    if stochastic:
        ns = keyed(x)
        opts = dict(opts, noise_sampler=ns)
        draws = solvers.get(solver, **sopts).plan(SCH, grid, prediction="x0").noise_draws
        # draw j of these plans is step j's noise; where k-diffusion draws nothing its coefficient is 0
        kw["noise"] = torch.stack([ns(grid[j], grid[j + 1]) for j in range(draws)])
    out = getattr(DK, fn)(den, x, grid, disable=True, **opts)
    ref = diffcore.sample(den, x, SCH, solver=solver, steps=grid, prediction="x0", **kw, **sopts)
    assert out.dtype == F64 and out.shape == x.shape
    assert (out - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_equals_k_diffusion(case, grid_name):
    kds = kdiff()
    fn, opts, _, _, stochastic = case
    grid = GRIDS[grid_name]
    x = start(grid, seed=1)
    if stochastic:
        opts = dict(opts, noise_sampler=keyed(x))
    ref = getattr(kds, fn)(den, x, grid, disable=True, **opts)
    out = getattr(DK, fn)(den, x, grid, disable=True, **opts)
    scale = ref.abs().max().item()
    assert scale > 0.1  # a real sample, not a degenerate zero
    assert (out - ref).abs().max().item() < 1e-10


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
def test_extras_equal_k_diffusion_relatives(grid_name):
    """dpmpp_2s ≡ k's 2S ancestral at η = 0; DEIS ≡ k's LMS, except that a step to σ = 0 is
    first order here (x ← x̂ at the last nonzero σ)."""
    pytest.importorskip("scipy")  # k-diffusion's sample_lms integrates with scipy.integrate.quad
    kds = kdiff()
    grid = GRIDS[grid_name]
    x = start(grid, seed=2)
    ref = kds.sample_dpmpp_2s_ancestral(den, x, grid, disable=True, eta=0.0)
    assert (DK.sample_dpmpp_2s(den, x, grid, disable=True) - ref).abs().max().item() < 1e-10
    for order in (1, 2, 3):
        out = DK.sample_deis(den, x, grid, disable=True, order=order)
        if grid[-1] > 0:
            ref = kds.sample_lms(den, x, grid, disable=True, order=order)
        else:
            pre = kds.sample_lms(den, x, grid[:-1], disable=True, order=order)
            ref = den(pre, grid[-2].expand(x.shape[0]))
        assert (out - ref).abs().max().item() < 1e-10, order


def test_rng_parity_with_k_diffusion_defaults():
    """k-diffusion's default noise (torch.randn_like on the global generator) is consumed in the same
    order: the same torch.manual_seed gives the same sample and leaves the generator in the same state."""
    kds = kdiff()
    for grid in GRIDS.values():
        x = start(grid, seed=3)
        for fn, opts in (("sample_euler_ancestral", {}), ("sample_heun", {"s_churn": 2.0}),
                         ("sample_heun", {"s_churn": 1.0, "s_tmin": 0.1, "s_tmax": 3.0, "s_noise": 1.05})):
            torch.manual_seed(5)
            ref = getattr(kds, fn)(den, x, grid, disable=True, **opts)
            after_ref = torch.rand(3)
            torch.manual_seed(5)
            out = getattr(DK, fn)(den, x, grid, disable=True, **opts)
            after = torch.rand(3)
            assert (out - ref).abs().max().item() < 1e-10, (fn, opts)
            assert torch.equal(after, after_ref), (fn, opts)


@pytest.mark.parametrize("grid_name", sorted(GRIDS))
def test_heun_churn_equals_diffcore_edm_churn(grid_name):
    grid = GRIDS[grid_name]
    x = start(grid, seed=4)
    M = grid.shape[0] - 1
    torch.manual_seed(6)
    z = torch.stack([torch.randn_like(x) for _ in range(M)])  # one churn draw per step, as k-diffusion
    opts = dict(s_churn=1.5, s_tmin=0.05, s_tmax=5.0, s_noise=1.02)
    torch.manual_seed(6)
    out = DK.sample_heun(den, x, grid, disable=True, **opts)
    ref = diffcore.sample(den, x, SCH, solver="edm_churn", steps=grid, prediction="x0", noise=z, **opts)
    assert (out - ref).abs().max().item() < 1e-12
    # churn changed the result: the noise is really used
    assert (out - DK.sample_heun(den, x, grid, disable=True)).abs().max().item() > 1e-3


def test_method_identities():
    """For α = 1: DDIM (η = 0) is Euler, and DDIM with η ≤ 1 is Euler ancestral with the same η."""
    for grid in GRIDS.values():
        x = start(grid, seed=7)
        e = DK.sample_euler(den, x, grid, disable=True)
        assert (DK.sample_ddim(den, x, grid, disable=True) - e).abs().max().item() < 1e-12
        for eta in (0.3, 1.0):
            ns = keyed(x)
            a = DK.sample_ddim(den, x, grid, disable=True, eta=eta, noise_sampler=ns)
            b = DK.sample_euler_ancestral(den, x, grid, disable=True, eta=eta, noise_sampler=ns)
            assert (a - b).abs().max().item() < 1e-12


def test_callback_contents_match_k_diffusion():
    kds = kdiff()
    grid = GRID0
    x = start(grid, seed=8)
    for fn, opts in (("sample_dpmpp_2m", {}), ("sample_euler_ancestral", {"eta": 0.5}),
                     ("sample_heun", {"s_churn": 2.0, "s_tmax": 2.0}), ("sample_dpm_2", {})):
        if fn == "sample_euler_ancestral":
            opts = dict(opts, noise_sampler=keyed(x))
        got, want = [], []
        torch.manual_seed(9)
        getattr(DK, fn)(den, x, grid, disable=True, callback=got.append, **opts)
        torch.manual_seed(9)
        getattr(kds, fn)(den, x, grid, disable=True, callback=want.append, **opts)
        assert len(got) == len(want) == grid.shape[0] - 1
        for g, w in zip(got, want):
            assert set(g) == {"x", "i", "sigma", "sigma_hat", "denoised"}
            assert g["i"] == w["i"]
            assert float(g["sigma"]) == float(w["sigma"])
            assert abs(float(g["sigma_hat"]) - float(w["sigma_hat"])) < 1e-12 * float(w["sigma_hat"])
            assert (g["x"] - w["x"]).abs().max().item() < 1e-10
            assert (g["denoised"] - w["denoised"]).abs().max().item() < 1e-10
            # 'denoised' is the denoiser's output at ('x', 'sigma_hat')
            d = den(g["x"], torch.full((x.shape[0],), float(g["sigma_hat"]), dtype=F64))
            assert (g["denoised"] - d).abs().max().item() < 1e-12
        # the states handed out are copies: later steps do not overwrite them
        assert (got[0]["x"] - got[-1]["x"]).abs().max().item() > 1e-3


def test_callback_sigma_hat_under_churn():
    grid = GRID0
    x = start(grid, seed=10)
    got = []
    M = grid.shape[0] - 1
    DK.sample_heun(den, x, grid, disable=True, callback=got.append, s_churn=2.0, s_tmax=2.0)
    g = min(2.0 / M, math.sqrt(2) - 1)
    for c in got:
        expect = float(c["sigma"]) * (1 + (g if float(c["sigma"]) <= 2.0 else 0.0))
        assert float(c["sigma_hat"]) == pytest.approx(expect, rel=1e-14)


def test_extra_args_and_dtype_float32():
    kds = kdiff()
    grid = DK.get_sigmas_karras(6, S_MIN, S_MAX)                # default dtype, as k-diffusion: float32
    assert grid.dtype == torch.float32
    x = start(grid).float()
    seen = []

    def model(x, sigma, scale=None):
        seen.append((sigma.dtype, sigma.shape, scale))
        return MIX.predict(x.double(), sigma.double(), SCH, "x0").float() * scale

    out = DK.sample_dpmpp_2m(model, x, grid, extra_args={"scale": 0.5}, disable=True)
    ref = kds.sample_dpmpp_2m(model, x, grid, extra_args={"scale": 0.5}, disable=True)
    assert out.dtype == torch.float32
    assert all(s == (torch.float32, torch.Size([x.shape[0]]), 0.5) for s in seen)
    assert (out - ref).abs().max().item() < 1e-5 * ref.abs().max().item()


def test_diffcore_noise_sources():
    """A diffcore Noise passes through (in-kernel noise), and the SDE samplers' default is diffcore's
    Brownian tree seeded from torch's global generator."""
    grid = GRID0
    x = start(grid, seed=11)
    out = DK.sample_dpmpp_2m_sde(den, x, grid, disable=True, noise_sampler=Noise(seed=3))
    ref = diffcore.sample(den, x, SCH, solver="dpmpp_2m_sde", steps=grid, prediction="x0", seed=3,
                          lower_order_final=False)
    assert (out - ref).abs().max().item() < 1e-12
    torch.manual_seed(12)
    out = DK.sample_dpmpp_3m_sde(den, x, grid, disable=True)
    torch.manual_seed(12)
    seed = default_seed()
    ref = diffcore.sample(den, x, SCH, solver="dpmpp_3m_sde", steps=grid, prediction="x0", seed=seed, brownian=True,
                          lower_order_final=False)
    assert (out - ref).abs().max().item() < 1e-12
    other = diffcore.sample(den, x, SCH, solver="dpmpp_3m_sde", steps=grid, prediction="x0", seed=seed,
                            lower_order_final=False)
    assert (out - other).abs().max().item() > 1e-3  # the Brownian increments are not the plain Philox draws


def test_sigma_grids():
    n, smin, smax = 10, 0.002, 80.0
    i = torch.arange(n, dtype=F64)
    karras = (smax ** (1 / 7) + i / (n - 1) * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    expo = torch.exp(math.log(smax) + i / (n - 1) * (math.log(smin) - math.log(smax)))
    poly = torch.exp((1 - i / (n - 1)) ** 2 * (math.log(smax) - math.log(smin)) + math.log(smin))
    t = 1 + i / (n - 1) * (1e-3 - 1)
    vp = torch.sqrt(torch.expm1(19.9 * t ** 2 / 2 + 0.1 * t))
    for got, want in ((DK.get_sigmas_karras(n, smin, smax, dtype=F64), karras),
                      (DK.get_sigmas_exponential(n, smin, smax, dtype=F64), expo),
                      (DK.get_sigmas_polyexponential(n, smin, smax, rho=2.0, dtype=F64), poly),
                      (DK.get_sigmas_vp(n, dtype=F64), vp)):
        assert got.shape == (n + 1,) and got[-1] == 0
        assert torch.allclose(got[:-1], want, rtol=1e-13, atol=0)
    assert DK.get_sigmas_karras(1, smin, smax, dtype=F64).tolist() == [smax, 0.0]


def test_sigma_grids_match_k_diffusion():
    """k-diffusion computes its grids in torch's default dtype; under float64 they agree to rounding,
    under float32 to float32 rounding (except VP near t = eps_s, where k-diffusion's exp(·) − 1
    cancels in float32: 2e-4 relative at σ ≈ 0.01; ours is computed in float64)."""
    kds = kdiff()
    cases = (("get_sigmas_karras", (12, 0.03, 14.6)), ("get_sigmas_karras", (5, 0.1, 10.0, 3.0)),
             ("get_sigmas_exponential", (12, 0.03, 14.6)), ("get_sigmas_polyexponential", (12, 0.03, 14.6, 1.7)),
             ("get_sigmas_vp", (12,)))
    for name, args in cases:
        ref = getattr(kds, name)(*args)
        got = getattr(DK, name)(*args)
        assert got.dtype == ref.dtype == torch.float32
        if name != "get_sigmas_vp":
            assert torch.allclose(got, ref, rtol=3e-6, atol=0), name
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        for name, args in cases:
            ref = getattr(kds, name)(*args)
            got = getattr(DK, name)(*args)
            assert got.dtype == ref.dtype == F64
            assert torch.allclose(got, ref, rtol=1e-12, atol=0), name
    finally:
        torch.set_default_dtype(old)


def test_progress_bar(capsys):
    DK.sample_euler(den, start(GRID0), GRID0, disable=True)
    assert capsys.readouterr().err == ""
    DK.sample_euler(den, start(GRID0), GRID0, disable=False)
    assert "8/8" in capsys.readouterr().err


def test_bad_input():
    x = start(GRID0)
    with pytest.raises(ValueError, match="sigmas: expected a 1-D"):
        DK.sample_euler(den, x, GRID0[None], disable=True)
    with pytest.raises(ValueError, match="sigmas: expected strictly decreasing"):
        DK.sample_dpmpp_2m(den, x, GRID0.flip(0), disable=True)
    with pytest.raises(ValueError, match="sigmas: expected strictly decreasing"):
        DK.sample_dpmpp_2m(den, x, torch.tensor([2.0, 1.0, 1.0, 0.0], dtype=F64), disable=True)
    with pytest.raises(ValueError, match="sigmas: expected finite noise levels >= 0"):
        DK.sample_dpmpp_2m(den, x, torch.tensor([2.0, 1.0, -0.5], dtype=F64), disable=True)
    with pytest.raises(ValueError, match="sigmas: expected a tensor on x's device"):
        DK.sample_heun(den, x, GRID0.to("meta"), disable=True)
    with pytest.raises(TypeError, match="sigmas: expected a 1-D torch tensor"):
        DK.sample_heun(den, x, GRID0.tolist(), disable=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'etaa'"):
        DK.sample_euler_ancestral(den, x, GRID0, disable=True, etaa=0.5)
    with pytest.raises(ValueError, match="s_churn: sample_euler"):
        DK.sample_euler(den, x, GRID0, disable=True, s_churn=1.0)
    with pytest.raises(ValueError, match="s_churn: sample_dpm_2"):
        DK.sample_dpm_2(den, x, GRID0, disable=True, s_churn=1.0)
    with pytest.raises(ValueError, match="solver_type"):
        DK.sample_dpmpp_2m_sde(den, x, GRID0, disable=True, solver_type="taylor")
    with pytest.raises(ValueError, match="eta"):
        DK.sample_euler_ancestral(den, x, GRID0, disable=True, eta=-1.0)
    with pytest.raises(ValueError, match="noise_sampler: expected a tensor of x's shape"):
        DK.sample_euler_ancestral(den, x, GRID0, disable=True, noise_sampler=lambda s, sn: torch.zeros(3))
    with pytest.raises(TypeError, match="noise_sampler: expected a callable"):
        DK.sample_dpmpp_2m_sde(den, x, GRID0, disable=True, noise_sampler=3)
    with pytest.raises(ValueError, match="model: expected the denoised sample"):
        DK.sample_dpmpp_2m(lambda x, s: x[:1], x, GRID0, disable=True)
    with pytest.raises(TypeError, match="extra_args: expected a dict"):
        DK.sample_dpmpp_2m(den, x, GRID0, extra_args=[1], disable=True)
    with pytest.raises(ValueError, match="order: expected 1, 2 or 3"):
        DK.sample_unipc(den, x, GRID0, disable=True, order=4)
    with pytest.raises(ValueError, match="sigma_min, sigma_max"):
        DK.get_sigmas_karras(5, 10.0, 1.0)
    with pytest.raises(ValueError, match="n: expected a positive int"):
        DK.get_sigmas_exponential(0, 0.1, 1.0)
