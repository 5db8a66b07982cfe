"""Bad input at the public entry points of schedules, grids, conversion, guidance, losses, coupling,
time laws, paths, oracles, metrics, data and the CLI (issue 16, items 5 and 7): every hostile value
raises an exception whose message names the argument, instead of a crash, a hang or a silently wrong
number. Each row of a table is (what is called, the exception, words its message must contain).
"""
from __future__ import annotations

import math

import pytest
import torch

import diffcore as dc
from diffcore import schedules as S

NAN, INF = float("nan"), float("inf")
X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _check(fn, exc, words):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value).lower()
    missing = [w for w in words if w.lower() not in msg]
    assert not missing, f"message {str(info.value)!r} lacks {missing}"


# ---- guidance --------------------------------------------------------------------------------------

GUIDANCE = [
    ("cfg_nan", lambda: dc.CFG(NAN), ValueError, ["omega", "finite"]),
    ("cfg_inf", lambda: dc.CFG(INF), ValueError, ["omega", "finite"]),
    ("cfg_neg_inf", lambda: dc.CFG(-INF), ValueError, ["omega"]),
    ("cfg_str", lambda: dc.CFG("2"), TypeError, ["omega"]),
    ("cfg_bool", lambda: dc.CFG(True), TypeError, ["omega"]),
    ("cfg_uncond_list", lambda: dc.CFG(2.0, uncond=[1]), TypeError, ["uncond"]),
    ("from_w_nan", lambda: dc.CFG.from_w(NAN), ValueError, ["w:", "finite"]),
    ("from_w_str", lambda: dc.CFG.from_w("a"), TypeError, ["w:"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in GUIDANCE], ids=[r[0] for r in GUIDANCE])
def test_guidance_bad_input(fn, exc, words):
    _check(fn, exc, words)


def test_cfg_finite_omega_still_guides():
    # guided = u + ω(c − u) with c = 2x, u = x: ω = 3 gives 4x exactly
    g = dc.CFG(3).wrap(lambda x, t, **kw: torch.where(kw["y"][:, None] == 1, 2 * x, x), {"y": torch.ones(4)})
    g2 = dc.CFG(3, uncond={"y": torch.zeros(4)}).wrap(
        lambda x, t, **kw: torch.where(kw["y"][:, None] == 1, 2 * x, x), {"y": torch.ones(4)})
    assert torch.equal(g(X, torch.rand(4)), 2 * X)  # no uncond override: both branches conditional
    assert torch.allclose(g2(X, torch.rand(4)), 4 * X, rtol=0, atol=1e-15)


# ---- timesteps -------------------------------------------------------------------------------------

TIMESTEPS = [
    ("int64", dict(dtype=torch.int64), TypeError, ["dtype", "floating"]),
    ("bool", dict(dtype=torch.bool), TypeError, ["dtype"]),
    ("complex", dict(dtype=torch.complex64), TypeError, ["dtype"]),
    ("dtype_str", dict(dtype="float32"), TypeError, ["dtype"]),
    ("f16_too_many", dict(n=5000, dtype=torch.float16), ValueError, ["dtype", "float16"]),
    ("rho_inf", dict(schedule="edm", rho=INF), ValueError, ["rho", "finite"]),
    ("rho_nan", dict(schedule="edm", rho=NAN), ValueError, ["rho"]),
    ("rho_zero", dict(schedule="edm", rho=0.0), ValueError, ["rho"]),
    ("rho_neg", dict(schedule="edm", rho=-2.0), ValueError, ["rho"]),
    ("rho_bool", dict(schedule="edm", rho=True), ValueError, ["rho"]),
    ("rho_str", dict(schedule="edm", rho="7"), ValueError, ["rho"]),
    ("rho_tiny", dict(schedule="edm", rho=1e-300), ValueError, ["rho"]),
    ("t_start_str", dict(t_start="a"), TypeError, ["t_start"]),
    ("t_start_nan", dict(t_start=NAN), ValueError, ["t_start"]),
    ("t_start_inf_edm", dict(schedule="edm", t_start=INF), ValueError, ["t_start"]),
    ("t_end_out", dict(t_end=-0.5), ValueError, ["t_end"]),
    ("t_start_vec", dict(t_start=torch.tensor([0.5, 0.6])), TypeError, ["t_start"]),
    ("final_zero_str", dict(schedule="edm", final_zero="no"), TypeError, ["final_zero"]),
    ("n_zero", dict(n=0), ValueError, ["n:"]),
    ("n_float", dict(n=5.0), ValueError, ["n:"]),
    ("spacing", dict(spacing="cubic"), ValueError, ["spacing"]),
    ("schedule", dict(schedule="vp_linaer"), ValueError, ["schedule"]),
]


@pytest.mark.parametrize("kw,exc,words", [r[1:] for r in TIMESTEPS], ids=[r[0] for r in TIMESTEPS])
def test_timesteps_bad_input(kw, exc, words):
    kw = dict(kw)
    schedule, n = kw.pop("schedule", "vp_linear"), kw.pop("n", 5)
    _check(lambda: dc.timesteps(schedule, n, **kw), exc, words)


def _karras_ref(smin, smax, n, rho):
    """Karras et al. (2022) Eq. (5), as (1 − f)σ_max^{1/ρ} + f σ_min^{1/ρ}, in 60-digit decimals (no overflow)."""
    from decimal import Decimal, getcontext
    getcontext().prec = 60
    r, lo, hi = Decimal(1) / Decimal(repr(rho)), Decimal(repr(smin)), Decimal(repr(smax))
    return torch.tensor([float(((1 - Decimal(i) / n) * hi ** r + Decimal(i) / n * lo ** r) ** Decimal(repr(rho)))
                         for i in range(n + 1)], dtype=torch.float64)


def test_karras_matches_formula_for_small_and_large_rho():
    """The log-space form of the ρ-spacing equals Eq. (5) from small ρ (where σ^{1/ρ} overflows a
    float64 evaluation) to large ρ."""
    smin, smax, n = 0.002, 80.0, 6
    for rho in (0.01, 0.3, 1.0, 7.0, 50.0, 1e4):
        g = dc.timesteps(S.EDM(smin, smax), n, spacing="karras", rho=rho, final_zero=False)
        assert torch.allclose(g, _karras_ref(smin, smax, n, rho), rtol=1e-11, atol=0), rho
    g = dc.timesteps(S.EDM(smin, smax), 4, spacing="karras", rho=1e-3, final_zero=False)  # 80^1000 overflows
    assert torch.allclose(g, _karras_ref(smin, smax, 4, 1e-3), rtol=1e-11, atol=0)


def test_timesteps_low_precision_dtype_ok_when_representable():
    g = dc.timesteps("edm", 18, dtype=torch.bfloat16)
    assert g.dtype == torch.bfloat16 and bool((g[1:] < g[:-1]).all())
    ref = dc.timesteps("edm", 18).to(torch.bfloat16)
    assert torch.equal(g, ref)


# ---- convert ---------------------------------------------------------------------------------------

CONVERT = [
    ("schedule_none", dict(schedule=None), TypeError, ["schedule", "Schedule"]),
    ("schedule_int", dict(schedule=3), TypeError, ["schedule"]),
    ("schedule_bad_name", dict(schedule="vp_linaer"), ValueError, ["schedule"]),
    ("t_nan", dict(t=NAN), ValueError, ["t:"]),
    ("t_out", dict(t=2.0), ValueError, ["t:"]),
    ("t_complex", dict(t=torch.tensor([0.5j] * 4)), TypeError, ["t:"]),
    ("t_len", dict(t=torch.rand(3, dtype=torch.float64)), ValueError, ["t:", "batch"]),
    ("singular_t0", dict(t=0.0, src="x0", dst="eps"), ValueError, ["t:", "singular"]),
    ("singular_cosine_t1", dict(t=1.0, schedule="vp_cosine", src="eps", dst="x0"), ValueError, ["t:", "singular"]),
    ("src", dict(src="foo"), ValueError, ["src"]),
    ("dst", dict(dst=None), ValueError, ["dst"]),
    ("m_shape", dict(m=X[:2]), ValueError, ["m, x"]),
    ("x_int", dict(m=X.long(), x=X.long()), TypeError, ["x:"]),
    ("out_shape", dict(out=torch.empty(3, dtype=torch.float64)), ValueError, ["out"]),
]


@pytest.mark.parametrize("kw,exc,words", [r[1:] for r in CONVERT], ids=[r[0] for r in CONVERT])
def test_convert_bad_input(kw, exc, words):
    args = dict(m=X, x=X, t=0.5, schedule=S.VPLinear(), src="eps", dst="x0")
    args.update(kw)
    _check(lambda: dc.convert(**args), exc, words)


def test_convert_accepts_schedule_name():
    """A name is the schedule of that name: x̂0 = (x − σ ε̂)/α of VPLinear's closed form."""
    t = 0.3
    B = 0.1 * t + 0.5 * (20.0 - 0.1) * t * t
    alpha, sigma = math.exp(-0.5 * B), math.sqrt(1 - math.exp(-B))
    eps = torch.ones_like(X)
    out = dc.convert(eps, X, t, "vp_linear", "eps", "x0")
    assert torch.allclose(out, (X - sigma * eps) / alpha, rtol=1e-13, atol=0)


# ---- prior_sample ----------------------------------------------------------------------------------

PRIOR = [
    ("int64", dict(dtype=torch.int64), TypeError, ["dtype", "floating"]),
    ("int64_seed", dict(dtype=torch.int64, seed=0), TypeError, ["dtype"]),
    ("bool", dict(dtype=torch.bool), TypeError, ["dtype"]),
    ("complex", dict(dtype=torch.complex64), TypeError, ["dtype"]),
    ("shape_neg", dict(shape=(-2, 3)), ValueError, ["shape"]),
    ("shape_float", dict(shape=(2.0, 3)), TypeError, ["shape"]),
    ("shape_none", dict(shape=None), TypeError, ["shape"]),
    ("t_str", dict(t="a"), ValueError, ["t:"]),
    ("t_nan", dict(t=NAN), ValueError, ["t:"]),
    ("t_out", dict(t=2.0), ValueError, ["t:"]),
    ("t_inf_edm", dict(schedule="edm", t=INF), ValueError, ["t:"]),
    ("generator_int", dict(generator=3), TypeError, ["generator"]),
    ("seed_neg", dict(seed=-1), ValueError, ["seed"]),
    ("schedule", dict(schedule="nope"), ValueError, ["schedule"]),
]


@pytest.mark.parametrize("kw,exc,words", [r[1:] for r in PRIOR], ids=[r[0] for r in PRIOR])
def test_prior_sample_bad_input(kw, exc, words):
    args = dict(schedule="vp_linear", shape=(2, 3))
    args.update(kw)
    _check(lambda: dc.prior_sample(**args), exc, words)


def test_prior_sample_int_shape_is_one_dim():
    g = torch.Generator().manual_seed(1)
    x = dc.prior_sample("ve", 5, generator=g, dtype=torch.float64)
    ref = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 50.0
    assert x.shape == (5,) and torch.allclose(x, ref, rtol=1e-15, atol=0)


# ---- schedules -------------------------------------------------------------------------------------

SCHEDULES = [
    ("vp_beta_max_inf", lambda: S.VPLinear(beta_max=INF), ValueError, ["beta_max", "finite"]),
    ("vp_beta_min_nan", lambda: S.VPLinear(beta_min=NAN), ValueError, ["beta_min"]),
    ("vp_beta_str", lambda: S.VPLinear(beta_min="0.1"), TypeError, ["beta_min"]),
    ("vp_t_end_zero", lambda: S.VPLinear(t_end=0.0), ValueError, ["t_end"]),
    ("vp_t_end_nan", lambda: S.VPLinear(t_end=NAN), ValueError, ["t_end"]),
    ("subvp_beta_inf", lambda: S.SubVP(beta_max=INF), ValueError, ["beta_max"]),
    ("cosine_s_inf", lambda: S.VPCosine(s=INF), ValueError, ["s:"]),
    ("cosine_t_end", lambda: S.VPCosine(t_end=1.5), ValueError, ["t_end"]),
    ("ve_sigma_max_inf", lambda: S.VE(sigma_max=INF), ValueError, ["sigma_max"]),
    ("ve_exact_str", lambda: S.VE(exact="yes"), TypeError, ["exact"]),
    ("edm_sigma_max_inf", lambda: S.EDM(sigma_max=INF), ValueError, ["sigma_max"]),
    ("edm_sigma_min_str", lambda: S.EDM(sigma_min="a"), TypeError, ["sigma_min"]),
    ("rf_shift_inf", lambda: S.RectifiedFlow(shift=INF), ValueError, ["shift"]),
    ("rf_shift_nan", lambda: S.RectifiedFlow(shift=NAN), ValueError, ["shift"]),
    ("trig_sigma_data_inf", lambda: S.Trig(sigma_data=INF), ValueError, ["sigma_data"]),
    ("ot_sigma_min_nan", lambda: S.OTSigmaMin(sigma_min=NAN), ValueError, ["sigma_min"]),
    ("get_unknown", lambda: S.get("nope"), ValueError, ["schedule"]),
    ("eval_complex", lambda: S.VPLinear().eval(torch.tensor([0.5j])), TypeError, ["t:"]),
    ("eval_str", lambda: S.VPLinear().eval("a"), TypeError, ["t:"]),
    ("eval_out", lambda: S.VPLinear().sigma(1.5), ValueError, ["t:"]),
    ("eval_nan", lambda: S.EDM().sigma(torch.tensor([NAN])), ValueError, ["t:"]),
    ("t_of_lam_nan", lambda: S.VPLinear().t_of_lam(NAN), ValueError, ["lam"]),
    ("prior_std_nan", lambda: S.VPLinear().prior_std(NAN), ValueError, ["t:"]),
    ("prior_std_inf", lambda: S.EDM().prior_std(INF), ValueError, ["t:"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in SCHEDULES], ids=[r[0] for r in SCHEDULES])
def test_schedules_bad_input(fn, exc, words):
    _check(fn, exc, words)
