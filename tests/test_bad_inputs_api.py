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


def _kw_model(x, t, y=None):
    return x if y is None else x * y[:, None].to(x.dtype)


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
    ("uncond_batch", lambda: dc.CFG(2.0, uncond={"y": torch.zeros(1)}).wrap(_kw_model, {"y": torch.ones(4)}),
     ValueError, ["uncond['y']"]),
    ("cond_batch", lambda: dc.CFG(2.0, uncond={"y": torch.zeros(2)}).wrap(_kw_model, {"y": torch.ones(2)})(
        X, torch.rand(4)), ValueError, ["model_kwargs['y']", "batch of 4"]),
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
    ("device", dict(device="gpu0"), ValueError, ["device"]),
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


# ---- thresholding ----------------------------------------------------------------------------------

from diffcore import thresholding as TH  # noqa: E402

THRESHOLD = [
    ("dyn_max_inf", lambda: TH.dynamic_threshold(X, max_value=INF), ValueError, ["max_value"]),
    ("dyn_max_nan", lambda: TH.dynamic_threshold(X, max_value=NAN), ValueError, ["max_value"]),
    ("dyn_ratio_str", lambda: TH.dynamic_threshold(X, ratio="0.9"), ValueError, ["ratio"]),
    ("dyn_int", lambda: TH.dynamic_threshold(X.long()), TypeError, ["x0"]),
    ("static_neg", lambda: TH.static_threshold(X, max_value=-1.0), ValueError, ["max_value"]),
    ("static_nan", lambda: TH.static_threshold(X, max_value=NAN), ValueError, ["max_value"]),
    ("static_list", lambda: TH.static_threshold([1.0, 2.0]), TypeError, ["x0"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in THRESHOLD], ids=[r[0] for r in THRESHOLD])
def test_thresholding_bad_input(fn, exc, words):
    _check(fn, exc, words)


def test_dynamic_threshold_empty_batch_is_identity():
    assert TH.dynamic_threshold(torch.empty(0, 3)).shape == (0, 3)


# ---- time laws -------------------------------------------------------------------------------------

from diffcore import timesampling as TS  # noqa: E402

TIMELAWS = [
    ("density_nan", lambda: TS.get("uniform").density(NAN, "vp_linear"), ValueError, ["t:", "nan"]),
    ("density_logit_nan", lambda: TS.get("logit_normal").density(torch.tensor([0.5, NAN]), "rectified_flow"),
     ValueError, ["t:"]),
    ("density_complex", lambda: TS.get("uniform").density(torch.tensor([0.5j]), "vp_linear"), TypeError, ["t:"]),
    ("density_str", lambda: TS.get("uniform").density("a", "vp_linear"), TypeError, ["t:"]),
    ("sample_generator", lambda: TS.get("uniform").sample(4, "vp_linear", generator=3), TypeError, ["generator"]),
    ("sample_B", lambda: TS.get("uniform").sample(-1, "vp_linear"), ValueError, ["B:"]),
    ("p_std_inf", lambda: TS.get("lognormal_sigma", p_std=INF), ValueError, ["p_std"]),
    ("t_min_nan", lambda: TS.get("uniform", t_min=NAN), ValueError, ["t_min"]),
    ("unknown", lambda: TS.get("foo"), ValueError, ["time"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in TIMELAWS], ids=[r[0] for r in TIMELAWS])
def test_timesampling_bad_input(fn, exc, words):
    _check(fn, exc, words)


def test_uniform_density_outside_range_is_zero_inside_is_inverse_width():
    lo, hi = TS.training_range("vp_linear")
    d = TS.get("uniform").density(torch.tensor([0.5, 2.0], dtype=torch.float64), "vp_linear")
    assert d[0].item() == pytest.approx(1 / (hi - lo), rel=1e-15) and d[1].item() == 0.0


# ---- metrics ---------------------------------------------------------------------------------------

from diffcore import metrics as M  # noqa: E402

_U = torch.eye(3, dtype=torch.float64)
METRICS = [
    ("sw_nan", lambda: M.sliced_wasserstein(X * NAN, X), ValueError, ["x:", "nan"]),
    ("sw_inf_y", lambda: M.sliced_wasserstein(X, X * INF), ValueError, ["y:"]),
    ("sw_p_inf", lambda: M.sliced_wasserstein(X, X, p=INF), ValueError, ["p:"]),
    ("sw_p_nan", lambda: M.sliced_wasserstein(X, X, p=NAN), ValueError, ["p:"]),
    ("sw_p_str", lambda: M.sliced_wasserstein(X, X, p="2"), ValueError, ["p:"]),
    ("sw_nproj_float", lambda: M.sliced_wasserstein(X, X, n_projections=2.5), ValueError, ["n_projections"]),
    ("sw_generator", lambda: M.sliced_wasserstein(X, X, generator=3), TypeError, ["generator"]),
    ("sw_zero_proj", lambda: M.sliced_wasserstein(X, X, projections=torch.zeros(2, 3)), ValueError, ["projections", "unit"]),
    ("sw_complex", lambda: M.sliced_wasserstein(X + 0j, X + 0j), TypeError, ["x:"]),
    ("sw_str", lambda: M.sliced_wasserstein(X, "a"), TypeError, ["y:"]),
    ("ks_cdf_nan", lambda: M.ks_statistic(X[:, 0], lambda v: v * NAN), ValueError, ["cdf"]),
    ("ks_cdf_range", lambda: M.ks_statistic(X[:, 0], lambda v: v * 0 + 5), ValueError, ["cdf", "[0, 1]"]),
    ("ks_cdf_len", lambda: M.ks_statistic(X[:, 0], lambda v: v[:2]), ValueError, ["cdf"]),
    ("ks_cdf_type", lambda: M.ks_statistic(X[:, 0], 3), TypeError, ["cdf"]),
    ("ks_complex", lambda: M.ks_statistic(X[:, 0] + 1j, torch.special.ndtr), TypeError, ["samples"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in METRICS], ids=[r[0] for r in METRICS])
def test_metrics_bad_input(fn, exc, words):
    _check(fn, exc, words)


def test_sliced_wasserstein_integer_points_equal_float():
    """Integer point clouds are their float values: along the coordinate axes the 1-D matching of
    {0, 1} with {1, 2} moves every point by 1, so SW_2 over the three axes (x·e_k) is 1 in each of the two
    shifted coordinates and 0 in the third: sqrt((1 + 1 + 0)/3)."""
    a = torch.tensor([[0, 0, 0], [1, 1, 0]])
    b = a + torch.tensor([1, 1, 0])
    assert M.sliced_wasserstein(a, b, projections=_U).item() == pytest.approx(math.sqrt(2 / 3), rel=1e-15)


# ---- coupling --------------------------------------------------------------------------------------

from diffcore import coupling as C  # noqa: E402

COUPLING = [
    ("eps_bool", lambda: C.get("sinkhorn", eps=True), ValueError, ["eps"]),
    ("eps_inf", lambda: C.get("sinkhorn", eps=INF), ValueError, ["eps"]),
    ("tol_nan", lambda: C.get("sinkhorn", tol=NAN), ValueError, ["tol"]),
    ("max_iters_float", lambda: C.get("sinkhorn", max_iters=2.5), ValueError, ["max_iters"]),
    ("max_iters_str", lambda: C.get("sinkhorn", max_iters="a"), ValueError, ["max_iters"]),
    ("sb_sigma_bool", lambda: C.get("sb", sigma=True), ValueError, ["sigma"]),
    ("sb_sigma_inf", lambda: C.get("sb", sigma=INF), ValueError, ["sigma"]),
    ("unknown_option", lambda: C.get("independent", foo=1), TypeError, ["options", "foo"]),
    ("distributed_str", lambda: C.get("exact", distributed="yes"), TypeError, ["distributed"]),
    ("pair_cost_features", lambda: C.pair_cost(X, X[:, :2]), ValueError, ["y0, y1"]),
    ("pair_cost_str", lambda: C.pair_cost("a", X), TypeError, ["y0"]),
    ("pair_cost_nan", lambda: C.pair_cost(X * NAN, X), ValueError, ["y0", "nan"]),
    ("pair_cost_scalar", lambda: C.pair_cost(torch.tensor(1.0), torch.tensor(2.0)), TypeError, ["y0"]),
    ("couple_nan", lambda: C.get("exact")(X, X * NAN), ValueError, ["y1"]),
    ("couple_sizes", lambda: C.get("exact")(X, X[:3]), ValueError, ["batch sizes"]),
    ("couple_labels", lambda: C.get("exact")(X, X, labels=torch.tensor([0, 1])), ValueError, ["labels"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in COUPLING], ids=[r[0] for r in COUPLING])
def test_coupling_bad_input(fn, exc, words):
    _check(fn, exc, words)


# ---- paths -----------------------------------------------------------------------------------------

from diffcore import paths as P  # noqa: E402

_VP = P.AffinePath("vp_linear")
_BRIDGE = P.fm_path("bridge", sigma=0.5)
PATHS = [
    ("score_t0", lambda: _VP.conditional_score(X, X, 0.0), ValueError, ["t:", "std"]),
    ("log_prob_t0", lambda: _VP.log_prob(X, X, 0.0), ValueError, ["t:"]),
    ("score_target_t0", lambda: _VP.target(X, X, 0.0, "score"), ValueError, ["t:", "score"]),
    ("cscore_str", lambda: _VP.conditional_score("a", X, 0.5), TypeError, ["x:"]),
    ("tau_out", lambda: P.fm_path("linear").sample(X, X, 1.5), ValueError, ["tau", "[0, 1]"]),
    ("tau_nan", lambda: P.fm_path("linear").target(X, X, NAN), ValueError, ["tau"]),
    ("tau_str", lambda: P.fm_path("linear").coefs("a"), TypeError, ["tau"]),
    ("bridge_target_end", lambda: _BRIDGE.target(X, X, 0.0, xi=X), ValueError, ["tau", "bridge"]),
    ("bridge_log_prob_end", lambda: _BRIDGE.log_prob(X, X, X, 1.0), ValueError, ["tau"]),
    ("poisson_t0", lambda: P.poisson_velocity(X, X, 0.0), ValueError, ["t:", "t > 0"]),
    ("poisson_t_neg", lambda: P.poisson_field(X, -1.0, X), ValueError, ["t:"]),
    ("poisson_t_nan", lambda: P.poisson_log_prob(X, X, NAN), ValueError, ["t:"]),
    ("poisson_t_inf", lambda: P.poisson_sample(X, INF), ValueError, ["t:"]),
    ("poisson_xt_str", lambda: P.poisson_velocity("a", X, 1.0), TypeError, ["x_t"]),
    ("poisson_chunk0", lambda: P.poisson_field(X, 1.0, X, chunk=0), ValueError, ["chunk"]),
    ("poisson_chunk_neg", lambda: P.poisson_field(X, 1.0, X, chunk=-1), ValueError, ["chunk"]),
    ("poisson_weights_inf", lambda: P.poisson_field(X, 1.0, X, weights=torch.tensor([1.0, INF, 1, 1])),
     ValueError, ["weights"]),
    ("poisson_prior_int", lambda: P.poisson_prior_sample((2, 3), 1.0, dtype=torch.int64), TypeError, ["dtype"]),
    ("poisson_prior_shape", lambda: P.poisson_prior_sample(3, 1.0), TypeError, ["shape"]),
    ("poisson_prior_neg", lambda: P.poisson_prior_sample((-1, 3), 1.0), ValueError, ["shape"]),
    ("poisson_prior_gen", lambda: P.poisson_prior_sample((2, 3), 1.0, generator=3), TypeError, ["generator"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in PATHS], ids=[r[0] for r in PATHS])
def test_paths_bad_input(fn, exc, words):
    _check(fn, exc, words)


# ---- losses ----------------------------------------------------------------------------------------

from diffcore import losses as LS  # noqa: E402


def _net(x, t, labels=None):
    return 0.5 * x


LOSSES = [
    ("noise_nan", lambda: LS.get("eps").per_sample(_net, X, noise=X * NAN), ValueError, ["noise", "nan"]),
    ("labels_len", lambda: LS.get("eps")(_net, X, labels=torch.tensor([0, 1])), ValueError, ["labels"]),
    ("generator", lambda: LS.get("eps")(_net, X, generator=3), TypeError, ["generator"]),
    ("score_t0", lambda: LS.get("score").per_sample(_net, X, t=0.0), ValueError, ["t:", "score"]),
    ("likelihood_t0", lambda: LS.get("likelihood").per_sample(_net, X, t=0.0), ValueError, ["t:", "weight"]),
    ("ddpm_off_grid", lambda: LS.get("ddpm_simple").per_sample(_net, X, t=0.5005), ValueError, ["t:", "grid"]),
    ("ddpm_elbo_t0", lambda: LS.get("ddpm_elbo").per_sample(_net, X, t=0.0), ValueError, ["t:", "levels"]),
    ("ddpm_schedule_steps", lambda: LS.ddpm_schedule(num_train_timesteps=0), ValueError, ["num_train_timesteps"]),
    ("ddpm_schedule_float", lambda: LS.ddpm_schedule(num_train_timesteps=2.5), ValueError, ["num_train_timesteps"]),
    ("ddpm_schedule_beta", lambda: LS.ddpm_schedule(beta_end=NAN), ValueError, ["beta_end"]),
    ("unknown", lambda: LS.get("foo"), ValueError, ["name"]),
    ("unknown_option", lambda: LS.get("eps", foo=1), TypeError, ["foo"]),
    ("reduction", lambda: LS.get("eps", reduction="max"), ValueError, ["reduction"]),
    ("reflow_generator", lambda: LS.reflow_pairs(_net, 4, shape=(3,), steps=2, generator=3), TypeError, ["generator"]),
    ("reflow_nan_model", lambda: LS.reflow_pairs(lambda x, t: x * NAN, 4, shape=(3,), steps=2), ValueError,
     ["model", "nan"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in LOSSES], ids=[r[0] for r in LOSSES])
def test_losses_bad_input(fn, exc, words):
    _check(fn, exc, words)


def test_ddpm_loss_on_grid_time_matches_closed_form():
    """At a grid time t_i = i/N of the DDPM schedule the ε-loss of the net ε̂ = 0 is ‖ε‖² (sum over
    features) whatever α, σ: the on-grid check must accept the grid itself."""
    loss = LS.get("ddpm_simple")
    t = torch.full((4,), 500 / 1000, dtype=torch.float64)
    per = loss.per_sample(lambda x, tt, labels=None: torch.zeros_like(x), X, t=t, noise=X)
    assert torch.allclose(per, (X * X).sum(1), rtol=1e-14, atol=0)


# ---- oracles ---------------------------------------------------------------------------------------

from diffcore import oracles as OR  # noqa: E402

_X2 = X[:, :2]
ORACLES = [
    ("ref_ode_atol_neg", lambda: OR.reference_ode(OR.toy_2d_mixture(), _X2, 0.9, 0.1, "vp_linear", atol=-1.0),
     ValueError, ["atol"]),
    ("ref_ode_rtol_zero", lambda: OR.reference_ode(OR.toy_2d_mixture(), _X2, 0.9, 0.1, "vp_linear", rtol=0.0),
     ValueError, ["rtol"]),
    ("ref_ode_oracle", lambda: OR.reference_ode(3, _X2, 0.9, 0.1, "vp_linear"), TypeError, ["oracle"]),
    ("sample_generator", lambda: OR.toy_2d_mixture().sample(3, generator=3), TypeError, ["generator"]),
    ("sample_marginal_generator", lambda: OR.toy_2d_mixture().sample_marginal(3, 0.5, "vp_linear", generator=3),
     TypeError, ["generator"]),
    ("empirical_generator", lambda: OR.EmpiricalData(_X2).sample(3, generator=3), TypeError, ["generator"]),
    ("weights_nan", lambda: OR.GaussianMixture([NAN, 1.0], [[0.0], [1.0]], [1.0, 1.0]), ValueError, ["weights"]),
    ("cov_not_pd", lambda: OR.Gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, -1.0]]), ValueError, ["cov"]),
    ("score_dim", lambda: OR.toy_2d_mixture().score(X, 0.5, "vp_linear"), ValueError, ["x:"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in ORACLES], ids=[r[0] for r in ORACLES])
def test_oracles_bad_input(fn, exc, words):
    _check(fn, exc, words)


def test_reference_ode_nan_tolerance_does_not_hang():
    """SciPy's step control loops forever on rtol = NaN: the check must come first (in a child process,
    so that a regression fails this test instead of hanging the run)."""
    from isolated import expect_error
    expect_error("""
        import torch, diffcore
        o = diffcore.oracles.toy_2d_mixture()
        diffcore.oracles.reference_ode(o, torch.zeros(2, 2, dtype=torch.float64), 0.9, 0.1, 'vp_linear', rtol=float('nan'))
    """, "ValueError", "rtol", timeout=60)


# ---- likelihood ------------------------------------------------------------------------------------

from diffcore import likelihood as LK  # noqa: E402


def test_log_likelihood_nan_model_fails_fast_naming_model():
    """A model that returns NaN used to make the adaptive integrator reject and retry up to max_steps
    (70 000 model calls); the first evaluation now raises, naming the model."""
    calls = []

    def nan_model(x, t):
        calls.append(1)
        return x * NAN

    # max_steps bounds the cost of a regression (it would end in a RuntimeError about rtol, atol)
    _check(lambda: LK.log_likelihood(nan_model, _X2, "vp_linear", divergence="exact", max_steps=50), ValueError,
           ["model", "nan"])
    assert len(calls) <= 3  # the (exact-divergence) evaluation at the start only


def test_log_likelihood_gaussian_is_exact():
    """Data N(0, I) under VP-linear: the exact ε-model is ε*(x, t) = σ_t x (the marginal stays N(0, I)),
    and the PF-ODE likelihood equals log N(x; 0, I) up to the prior mismatch at t_end = 1, which is zero
    here (p_1 = N(0, I) exactly)."""
    model = lambda x, t: x * VP_SIGMA(t)[:, None]  # noqa: E731
    lp = LK.log_likelihood(model, _X2, "vp_linear", divergence="exact", rtol=1e-9, atol=1e-9, t_start=1e-3)
    ref = -0.5 * (_X2 ** 2).sum(1) - math.log(2 * math.pi)
    assert torch.allclose(lp, ref, rtol=0, atol=1e-6)


def VP_SIGMA(t):
    return S.VPLinear().sigma(t.to(torch.float64))


LIKELIHOOD = [
    ("empty_batch", lambda: LK.log_likelihood(lambda x, t: x, _X2[:0], "vp_linear"), ValueError, ["x:", "empty"]),
    ("return_stats_str", lambda: LK.log_likelihood(lambda x, t: x, _X2, "vp_linear", return_stats="yes"),
     TypeError, ["return_stats"]),
    ("return_terms_str", lambda: LK.ddpm_bound(lambda x, t: torch.zeros_like(x), _X2.clamp(-1, 1),
                                               LS.ddpm_schedule(10), return_terms="yes"), TypeError, ["return_terms"]),
    ("bpd_log_p_str", lambda: LK.bits_per_dim("a", 4), TypeError, ["log_p"]),
    ("rtol_nan", lambda: LK.log_likelihood(lambda x, t: x, _X2, "vp_linear", rtol=NAN), ValueError, ["rtol"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in LIKELIHOOD], ids=[r[0] for r in LIKELIHOOD])
def test_likelihood_bad_input(fn, exc, words):
    _check(fn, exc, words)


# ---- data ------------------------------------------------------------------------------------------

from diffcore import data as DA  # noqa: E402

DATA = [
    ("generator", lambda: DA.get("two_moons").sample(3, generator=3), TypeError, ["generator"]),
    ("return_labels_str", lambda: DA.get("eight_gaussians").sample(3, return_labels="yes"), TypeError,
     ["return_labels"]),
    ("dtype_int", lambda: DA.get("two_moons").sample(3, dtype=torch.int64), TypeError, ["dtype"]),
    ("unknown_option", lambda: DA.get("two_moons", foo=1), TypeError, ["two_moons", "foo"]),
    ("unknown_name", lambda: DA.get("foo"), ValueError, ["name"]),
    ("n_neg", lambda: DA.get("two_moons").sample(-1), ValueError, ["n:"]),
    ("noise_nan", lambda: DA.TwoMoons(noise=NAN), ValueError, ["noise"]),
    ("labels_len", lambda: DA.TensorData(X, labels=torch.tensor([0, 1])), ValueError, ["labels"]),
    ("tensor_nan", lambda: DA.TensorData(X * NAN), ValueError, ["x"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in DATA], ids=[r[0] for r in DATA])
def test_data_bad_input(fn, exc, words):
    _check(fn, exc, words)


# ---- diffcore.k noise levels -----------------------------------------------------------------------

from diffcore.k import sigmas as KS  # noqa: E402

KSIGMAS = [
    ("karras_int", lambda: KS.get_sigmas_karras(5, 0.01, 80.0, dtype=torch.int64), TypeError, ["dtype"]),
    ("exp_int", lambda: KS.get_sigmas_exponential(5, 0.01, 80.0, dtype=torch.int32), TypeError, ["dtype"]),
    ("vp_int", lambda: KS.get_sigmas_vp(5, dtype=torch.int64), TypeError, ["dtype"]),
    ("polyexp_rho_inf", lambda: KS.get_sigmas_polyexponential(5, 0.01, 80.0, rho=INF), ValueError, ["rho"]),
    ("karras_rho_inf", lambda: KS.get_sigmas_karras(5, 0.01, 80.0, rho=INF), ValueError, ["rho"]),
    ("sigma_min_zero", lambda: KS.get_sigmas_karras(5, 0.0, 80.0), ValueError, ["sigma_min"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in KSIGMAS], ids=[r[0] for r in KSIGMAS])
def test_k_sigmas_bad_input(fn, exc, words):
    _check(fn, exc, words)


# ---- CLI -------------------------------------------------------------------------------------------

from diffcore import cli as CLI  # noqa: E402

_TRAIN = ["train", "--data", "two_moons", "--steps", "1", "--batch", "4", "--no-progress", "--width", "4",
          "--depth", "1"]
CLI_ROWS = [
    ("sample_n0", ["sample", "--checkpoint", "missing.pt", "-n", "0"], 1, ["-n", "positive"]),
    ("train_data_option", _TRAIN + ["--data-option", "foo=1"], 1, ["two_moons", "foo"]),
    ("train_data_option_form", _TRAIN + ["--data-option", "x"], 1, ["--data-option"]),
    ("train_lr_nan", _TRAIN + ["--lr", "nan"], 1, ["lr"]),
    ("train_batch0", _TRAIN + ["--batch", "0"], 1, ["batch"]),
    ("train_unknown_loss", _TRAIN + ["--loss", "foo"], 1, ["loss"]),
    ("train_schedule", _TRAIN + ["--schedule", "foo"], 1, ["path"]),
    ("train_channel_mult", _TRAIN + ["--channel-mult", "a"], 1, ["--channel-mult"]),
    ("train_steps_neg", _TRAIN + ["--steps", "-1"], 1, ["steps"]),
]


@pytest.mark.parametrize("argv,rc,words", [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_cli_bad_arguments(argv, rc, words, tmp_path, capsys):
    """Bad flags end with an exit status and one error line naming the flag, not a traceback."""
    argv = list(argv) + (["--out", str(tmp_path / "run")] if argv[0] == "train" else [])
    assert CLI.main(argv) == rc
    err = capsys.readouterr().err
    assert err.startswith(f"diffcore {argv[0]}: error:") and "Traceback" not in err
    missing = [w for w in words if w.lower() not in err.lower()]
    assert not missing, f"{err!r} lacks {missing}"


# ---- ModelWrapper and schedule construction by name ------------------------------------------------

from diffcore import param as PM  # noqa: E402

WRAPPER = [
    ("schedule_none", lambda: PM.ModelWrapper(_net, None), TypeError, ["schedule"]),
    ("schedule_bad_name", lambda: PM.ModelWrapper(_net, "vp_linaer"), ValueError, ["schedule"]),
    ("edm_precond_str", lambda: PM.ModelWrapper(_net, "edm", edm_precond="no"), TypeError, ["edm_precond"]),
    ("sigma_data_inf", lambda: PM.ModelWrapper(_net, "edm", sigma_data=INF), ValueError, ["sigma_data"]),
    ("edm_coefs_sigma_data_inf", lambda: PM.edm_precond_coefs((torch.ones(1), torch.ones(1)), sigma_data=INF),
     ValueError, ["sigma_data"]),
    ("singular_eps_t0", lambda: PM.ModelWrapper(_net, "vp_linear", prediction="x0")(X, 0.0, target="eps"),
     ValueError, ["t:", "singular"]),
    ("schedule_get_option", lambda: S.get("vp_linear", foo=1), TypeError, ["params", "foo"]),
]


@pytest.mark.parametrize("fn,exc,words", [r[1:] for r in WRAPPER], ids=[r[0] for r in WRAPPER])
def test_model_wrapper_bad_input(fn, exc, words):
    _check(fn, exc, words)


def test_model_wrapper_accepts_schedule_name():
    """x̂0 from an ε-network (ε̂ = x) at t on VP-linear: (x − σx)/α with the closed-form α, σ."""
    t = 0.4
    B = 0.1 * t + 0.5 * (20.0 - 0.1) * t * t
    alpha, sigma = math.exp(-0.5 * B), math.sqrt(1 - math.exp(-B))
    out = PM.ModelWrapper(lambda x, tt: x, "vp_linear")(X, t, target="x0")
    assert torch.allclose(out, X * (1 - sigma) / alpha, rtol=1e-13, atol=0)


def test_schedule_low_precision_times_are_rounded_once():
    """bf16 times: every value is the exact value at that time rounded once to bf16 (relative error
    ≤ 2⁻⁸, half an ulp). Computed in bf16 throughout, λ of VP-linear was off by a third."""
    t = torch.linspace(0.05, 0.99, 50, dtype=torch.float64).bfloat16()
    for s in (S.VPLinear(), S.VPCosine(), S.SubVP()):
        exact = S.ScheduleValues(*s._eval_ref(t.double()))  # float64 at the same (bf16-representable) times
        got = s.eval(t)
        for name in ("alpha", "sigma", "lam"):
            e, g = getattr(exact, name), getattr(got, name)
            assert g.dtype == torch.bfloat16
            rel = ((g.double() - e).abs() / e.abs()).max().item()
            assert rel <= 2 ** -8 + 1e-12, (type(s).__name__, name, rel)
    lam = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.bfloat16)
    inv = S.VPLinear().t_of_lam(lam)
    assert inv.dtype == torch.bfloat16
    assert torch.equal(inv, S.VPLinear().t_of_lam(lam.double()).bfloat16())


def test_schedule_accepts_numpy_views_with_negative_strides():
    np = pytest.importorskip("numpy")
    a = np.array([0.1, 0.5, 0.9])[::-1]
    assert torch.equal(S.VPLinear().sigma(a), S.VPLinear().sigma(torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)))
