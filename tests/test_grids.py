"""Time grids (book §9.4.3; Karras et al. 2022)."""
import math

import pytest
import torch

import diffcore
from diffcore import schedules as S
from diffcore.grids import timesteps

SCHEDULES = [
    S.VPLinear(), S.VPCosine(), S.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000)), S.SubVP(), S.VE(),
    S.VE(exact=True), S.EDM(), S.RectifiedFlow(), S.RectifiedFlow(shift=3.0), S.Trig(), S.Trig(0.5),
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
@pytest.mark.parametrize("n", [1, 2, 10, 50])
def test_defaults_work_for_every_schedule(sched, n):
    ts = timesteps(sched, n)
    assert ts.shape == (n + 1,) and ts.dtype == torch.float64
    assert bool((ts[1:] < ts[:-1]).all())
    assert ts[0].item() == sched.t_start
    if sched.final_zero:
        assert sched.sigma(ts[-1:]).item() == 0.0 and sched.lam(ts[-1:]).item() == math.inf
        if n > 1:
            assert ts[-2].item() == sched.t_end
    else:
        assert ts[-1].item() == sched.t_end
    # every interior time is valid and has finite λ
    lam = sched.lam(ts[1:-1])
    assert bool(torch.isfinite(lam).all())


@pytest.mark.parametrize("sched", [S.VPLinear(), S.VE(), S.EDM(), S.VPCosine(), S.SubVP()], ids=repr)
def test_uniform_lambda_has_constant_step(sched):
    ts = timesteps(sched, 20, spacing="uniform_lambda", final_zero=False)
    h = torch.diff(sched.lam(ts))
    assert torch.allclose(h, h.mean().expand_as(h), rtol=1e-10, atol=0)
    assert bool((h > 0).all())


def test_uniform_t_and_quadratic():
    sched = S.VPLinear()
    ts = timesteps(sched, 8, spacing="uniform_t")
    assert torch.allclose(torch.diff(ts), torch.full((8,), (1e-3 - 1.0) / 8, dtype=torch.float64), rtol=1e-12)
    tq = timesteps(sched, 8, spacing="quadratic")
    r = torch.sqrt(tq)
    assert torch.allclose(torch.diff(r), torch.diff(r).mean().expand(8), rtol=1e-10)


def test_karras_rho_one_is_linear_in_sigma_and_large_rho_is_geometric():
    sched = S.EDM()
    sig = timesteps(sched, 10, spacing="karras", rho=1.0, final_zero=False)
    assert torch.allclose(torch.diff(sig), torch.diff(sig).mean().expand(10), rtol=1e-10)
    sig7 = timesteps(sched, 10, final_zero=False)  # EDM default: ρ = 7
    ref = (80 ** (1 / 7) + torch.arange(11, dtype=torch.float64) / 10 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(sig7, ref, rtol=1e-12)
    geo = timesteps(sched, 10, spacing="karras", rho=1e6, final_zero=False)
    h = torch.diff(torch.log(geo))
    assert torch.allclose(h, h.mean().expand(10), rtol=1e-4)


def test_karras_on_vp_uses_noise_to_signal_ratio():
    sched = S.VPLinear()
    ts = timesteps(sched, 6, spacing="karras", rho=7.0)
    v = sched.eval(ts)
    ratio = v.sigma / v.alpha
    hi, lo = ratio[0].item() ** (1 / 7), ratio[-1].item() ** (1 / 7)
    ref = (hi + torch.arange(7, dtype=torch.float64) / 6 * (lo - hi)) ** 7
    assert torch.allclose(ratio, ref, rtol=1e-10)


def test_final_zero_edm_matches_k_diffusion_layout():
    ts = timesteps(S.EDM(), 5)
    assert ts.shape == (6,) and ts[-1].item() == 0.0 and ts[-2].item() == 0.002 and ts[0].item() == 80.0


def test_explicit_range_and_device_dtype():
    ts = timesteps("vp_linear", 4, t_start=0.8, t_end=0.1, dtype=torch.float32)
    assert ts.dtype == torch.float32 and ts[0].item() == pytest.approx(0.8) and ts[-1].item() == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n:"),
        (dict(n=2.5), "n:"),
        (dict(n=4, spacing="nope"), "spacing:"),
        (dict(n=4, t_start=0.1, t_end=0.5), "t_start, t_end"),
        (dict(n=4, t_start=1.5), "t_start:"),
        (dict(n=4, t_end=-0.1), "t_end:"),
        (dict(n=4, rho=-1.0), "rho:"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timesteps(S.VPLinear(), **kwargs)


def test_infinite_lambda_end_needs_uniform_t_or_final_zero():
    with pytest.raises(ValueError, match="finite half log-SNR"):
        timesteps(S.RectifiedFlow(), 10, spacing="uniform_lambda")  # λ(1) = −inf, λ(0) = +inf
    with pytest.raises(ValueError, match="never reaches zero noise"):
        timesteps(S.VE(), 10, final_zero=True)
    ts = timesteps(S.RectifiedFlow(), 10, spacing="uniform_lambda", t_start=0.99, t_end=0.01, final_zero=True)
    assert ts[-1].item() == 0.0


def test_exported_from_package():
    assert diffcore.timesteps is timesteps
