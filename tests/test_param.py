"""Prediction-type conversions, the fused convert op and the model wrapper (diffcore.param).

Book Prop. 6.3.1 (conversions), Eq. (8.3.3) (CFG), App. D.6 (EDM preconditioning).
"""
import itertools
import math

import pytest
import torch

from diffcore import _ops
from diffcore import schedules as S
from diffcore.param import ModelWrapper, canonical_prediction, conversion_coefs, convert, edm_precond_coefs

TYPES = ["eps", "x0", "score", "velocity", "v"]

# torch.func.jvp's first use scripts its decompositions, which warns inside torch itself
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _core_schedule_fallback(monkeypatch):
    """Use the torch reference for schedule values only while the compiled schedule core is absent."""
    if not hasattr(_ops._core, "schedule_eval"):
        monkeypatch.setattr(S.Schedule, "_use_core", lambda self, t: False)
    yield


SCHEDULES = {
    "vp_linear": (lambda: S.VPLinear(), (0.05, 0.95)),
    "vp_cosine": (lambda: S.VPCosine(), (0.05, 0.95)),
    "ve": (lambda: S.VE(), (0.15, 0.95)),
    "edm": (lambda: S.EDM(), (0.05, 80.0)),
    "rf_shift3": (lambda: S.RectifiedFlow(shift=3.0), (0.05, 0.95)),
    "subvp": (lambda: S.SubVP(), (0.05, 0.95)),
    "trig_0.5": (lambda: S.Trig(0.5), (0.05, 0.95)),
    "trig_1": (lambda: S.Trig(1.0), (0.05, 0.95)),
}


def rand_t(lo, hi, B, gen):
    if hi / lo > 100:  # log-uniform over wide ranges (EDM)
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(B, generator=gen, dtype=torch.float64))
    return lo + (hi - lo) * torch.rand(B, generator=gen, dtype=torch.float64)


def setup(name, B=6, shape=(3, 4), seed=0):
    make, (lo, hi) = SCHEDULES[name]
    sch = make()
    gen = torch.Generator().manual_seed(seed)
    t = rand_t(lo, hi, B, gen)
    x = torch.randn(B, *shape, generator=gen, dtype=torch.float64)
    m = torch.randn(B, *shape, generator=gen, dtype=torch.float64)
    return sch, t, x, m


def types_for(sch):
    return TYPES if sch.kind == "vp" else TYPES[:-1]


def assert_rel(a, b, tol=1e-12):
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1.0)
    assert err <= tol * scale, f"max err {err:.3e} (scale {scale:.3e})"


def bview(c, like):
    return c.reshape((-1,) + (1,) * (like.dim() - 1))


# ------------------------------------------------------------------------------------------------
# names


def test_canonical_prediction_aliases():
    for n in TYPES:
        assert canonical_prediction(n) == n
    assert canonical_prediction("epsilon") == "eps"
    assert canonical_prediction("sample") == "x0"
    assert canonical_prediction("v_prediction") == "v"
    assert canonical_prediction("flow") == "velocity"
    assert canonical_prediction("EPSILON") == "eps"
    with pytest.raises(ValueError, match="prediction.*'eps'"):
        canonical_prediction("noise_pred")
    with pytest.raises(ValueError, match="prediction"):
        canonical_prediction(None)


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_round_trips_all_pairs(name):
    sch, t, x, m = setup(name)
    kinds = types_for(sch)
    for p, q in itertools.permutations(kinds, 2):
        back = convert(convert(m, x, t, sch, p, q), x, t, sch, q, p)
        assert_rel(back, m)
    # chains through every type
    for start in kinds:
        cur, prev = m, start
        for nxt in kinds[kinds.index(start) + 1:] + kinds[:kinds.index(start) + 1]:
            cur, prev = convert(cur, x, t, sch, prev, nxt), nxt
        assert prev == start
        assert_rel(cur, m)
    # direct vs chained: eps -> x0 -> score -> velocity equals eps -> velocity
    chained = convert(convert(convert(m, x, t, sch, "eps", "x0"), x, t, sch, "x0", "score"), x, t, sch, "score", "velocity")
    assert_rel(chained, convert(m, x, t, sch, "eps", "velocity"), 1e-11)
    if sch.kind != "vp":
        for other in kinds:
            with pytest.raises(ValueError, match="dst.*'v'"):
                convert(m, x, t, sch, other, "v")
            with pytest.raises(ValueError, match="src.*'v'"):
                convert(m, x, t, sch, "v", other)


def test_identity_returns_input():
    sch, t, x, m = setup("vp_linear")
    assert convert(m, x, t, sch, "eps", "epsilon") is m
    out = torch.empty_like(m)
    assert convert(m, x, t, sch, "x0", "sample", out=out) is out
    assert torch.equal(out, m)


# ------------------------------------------------------------------------------------------------
# explicit table entries (book Prop. 6.3.1, Table 6.1 with docs/errata.md B11)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm", "subvp", "trig_0.5", "rf_shift3"])
def test_explicit_formulas(name):
    sch, t, x, m = setup(name)
    v = sch.eval(t)
    a, s, da, ds = (bview(c, x) for c in (v.alpha, v.sigma, v.dalpha, v.dsigma))
    assert_rel(convert(m, x, t, sch, "eps", "x0"), (x - s * m) / a)
    assert_rel(convert(m, x, t, sch, "x0", "eps"), (x - a * m) / s)
    assert_rel(convert(m, x, t, sch, "x0", "velocity"), (ds / s) * x + (da - a * ds / s) * m)
    assert_rel(convert(m, x, t, sch, "eps", "velocity"), (da / a) * x + (ds - da * s / a) * m)
    assert_rel(convert(m, x, t, sch, "eps", "score"), -m / s)
    assert_rel(convert(m, x, t, sch, "score", "x0"), (x + s * s * m) / a)  # Tweedie
    delta = da * s - a * ds
    assert_rel(convert(m, x, t, sch, "velocity", "x0"), (s * m - ds * x) / delta)
    assert_rel(convert(m, x, t, sch, "velocity", "eps"), (da * x - a * m) / delta)
    assert_rel(convert(m, x, t, sch, "velocity", "score"), (a * m - da * x) / (s * delta))


def test_rectified_flow_formulas():
    sch = S.RectifiedFlow()  # shift 1: alpha = 1 - t, sigma = t
    gen = torch.Generator().manual_seed(1)
    t = 0.05 + 0.9 * torch.rand(5, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    v = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    tt = t[:, None]
    assert_rel(convert(v, x, t, sch, "velocity", "x0"), x - tt * v)
    assert_rel(convert(v, x, t, sch, "flow", "eps"), x + (1 - tt) * v)
    x0 = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    xt = (1 - tt) * x0 + tt * eps
    assert_rel(convert(x0, xt, t, sch, "x0", "velocity"), eps - x0)


def test_salimans_v_formulas():
    sch, t, x, m = setup("vp_cosine")
    v = sch.eval(t)
    a, s = bview(v.alpha, x), bview(v.sigma, x)
    assert_rel(convert(m, x, t, sch, "v", "x0"), a * x - s * m)
    assert_rel(convert(m, x, t, sch, "v_prediction", "epsilon"), s * x + a * m)


def test_conversion_coefs_raw_values_and_scalar_t():
    sch, t, x, m = setup("vp_linear")
    v = sch.eval(t)
    c1 = conversion_coefs("eps", "x0", v, sch)
    c2 = conversion_coefs("eps", "x0", (v.alpha, v.sigma, v.dalpha, v.dsigma))
    for a, b in zip(c1, c2):
        assert a.dtype == torch.float64 and a.shape == t.shape
        assert torch.equal(a, b)
    assert_rel(c1[0], 1 / v.alpha)
    assert_rel(c1[1], -v.sigma / v.alpha)
    # numeric VP check without a schedule
    ve = S.VE().eval(t)
    with pytest.raises(ValueError, match="'v'"):
        conversion_coefs("v", "eps", (ve.alpha, ve.sigma, ve.dalpha, ve.dsigma))
    conversion_coefs("v", "eps", (v.alpha.float(), v.sigma.float(), v.dalpha.float(), v.dsigma.float()))
    # scalar time broadcasts over the batch
    ts = 0.3
    ref = convert(m, x, torch.full_like(t, ts), sch, "eps", "x0")
    assert torch.equal(convert(m, x, ts, sch, "eps", "x0"), ref)
    assert torch.equal(convert(m, x, torch.tensor(ts, dtype=torch.float64), sch, "eps", "x0"), ref)


# ------------------------------------------------------------------------------------------------
# Gaussian oracle (Prop. 6.3.1): the optimal heads satisfy every conversion


def gaussian_heads(x, values, mu, s2):
    a, s, da, ds = (bview(c, x) for c in (values.alpha, values.sigma, values.dalpha, values.dsigma))
    S_t = a * a * s2 + s * s
    r = x - a * mu
    heads = {
        "x0": mu + a * s2 / S_t * r,
        "eps": s / S_t * r,
        "score": -r / S_t,
        "velocity": da * mu + (a * da * s2 + s * ds) / S_t * r,
    }
    heads["v"] = a * heads["eps"] - s * heads["x0"]
    return heads


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_gaussian_oracle_heads(name):
    sch, t, x, _ = setup(name, B=5, shape=(8,), seed=3)
    gen = torch.Generator().manual_seed(4)
    mu = torch.randn(8, generator=gen, dtype=torch.float64)
    s2 = 0.7
    heads = gaussian_heads(x, sch.eval(t), mu, s2)
    kinds = types_for(sch)
    for p, q in itertools.permutations(kinds, 2):
        assert_rel(convert(heads[p], x, t, sch, p, q), heads[q], 1e-11)
    # and the velocity head is the PF-ODE drift f x - ½ g² s (book Prop. 6.3.2)
    v = sch.eval(t)
    drift = bview(v.f, x) * x - 0.5 * bview(v.g2, x) * heads["score"]
    assert_rel(heads["velocity"], drift, 1e-11)


# ------------------------------------------------------------------------------------------------
# fused kernel vs torch reference


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 2e-6)])
def test_fused_equals_reference(dtype, tol):
    sch, t, x, m = setup("vp_linear", B=7, shape=(5, 33))
    x, m = x.to(dtype), m.to(dtype)
    assert _ops.fast_path_ok(x, m)
    for p, q in [("eps", "x0"), ("x0", "velocity"), ("v", "score"), ("score", "eps")]:
        c_x, c_m = conversion_coefs(p, q, sch.eval(t), sch)
        ref = _ops.lincomb_reference(x, torch.stack([c_x, c_m], 1), ring=m.unsqueeze(0))
        got = convert(m, x, t, sch, p, q)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        exact = bview(c_x, x) * x.double() + bview(c_m, x) * m.double()
        torch.testing.assert_close(got.double(), exact, rtol=4 * tol, atol=4 * tol)
        out = torch.empty_like(x)
        assert convert(m, x, t, sch, p, q, out=out) is out
        torch.testing.assert_close(out, got, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_fused_half_precision(dtype, tol):
    sch, t, x, m = setup("vp_cosine", B=4, shape=(64,))
    xh, mh = x.to(dtype), m.to(dtype)
    for p, q in [("eps", "x0"), ("v", "eps"), ("x0", "velocity")]:
        got = convert(mh, xh, t, sch, p, q)
        assert got.dtype == dtype
        c_x, c_m = conversion_coefs(p, q, sch.eval(t), sch)
        exact = bview(c_x, x) * xh.double() + bview(c_m, x) * mh.double()
        scale = exact.abs().max().item()
        assert (got.double() - exact).abs().max().item() <= tol * scale


def test_noncontiguous_and_inplace():
    sch, t, x, m = setup("edm", B=4, shape=(6, 5))
    ref = convert(m, x, t, sch, "eps", "x0")
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # non-compact features
    torch.testing.assert_close(convert(m, xt, t, sch, "eps", "x0"), ref, rtol=1e-15, atol=0)
    xc = x.clone()
    assert convert(m, xc, t, sch, "eps", "x0", out=xc) is xc
    torch.testing.assert_close(xc, ref, rtol=1e-15, atol=0)


# ------------------------------------------------------------------------------------------------
# autograd / torch.func


class _RaisingCore:
    def __init__(self, real):
        self._real = real

    def lincomb(self, *a, **k):
        raise RuntimeError("compiled lincomb called")

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_gradcheck_and_no_fast_path_under_autograd(monkeypatch):
    sch, t, x, m = setup("vp_linear", B=3, shape=(4,))
    monkeypatch.setattr(_ops, "_core", _RaisingCore(_ops._core))
    with pytest.raises(RuntimeError, match="compiled lincomb"):
        convert(m, x, t, sch, "eps", "x0")  # plain inputs take the compiled path
    mg, xg = m.clone().requires_grad_(), x.clone().requires_grad_()
    for p, q in [("eps", "x0"), ("v", "velocity"), ("score", "eps")]:
        assert torch.autograd.gradcheck(lambda a, b: convert(a, b, t, sch, p, q), (mg, xg))
    # gradient w.r.t. t through the schedule values
    tg = t.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda tt: convert(m, x, tt, sch, "eps", "velocity"), (tg,))


@pytest.mark.parametrize("name", ["vp_linear", "edm", "rf_shift3"])
def test_jvp_matches_analytic(name, monkeypatch):
    sch, t, x, m = setup(name, B=4, shape=(5,))
    gen = torch.Generator().manual_seed(9)
    dm = torch.randn(m.shape, generator=gen, dtype=torch.float64)
    dx = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    monkeypatch.setattr(_ops, "_core", _RaisingCore(_ops._core))
    for p, q in [("eps", "x0"), ("x0", "velocity"), ("velocity", "score")]:
        c_x, c_m = conversion_coefs(p, q, sch.eval(t), sch)
        val, tan = torch.func.jvp(lambda a, b: convert(a, b, t, sch, p, q), (m, x), (dm, dx))
        assert_rel(tan, bview(c_x, x) * dx + bview(c_m, x) * dm, 1e-13)
        assert_rel(val, bview(c_x, x) * x + bview(c_m, x) * m, 1e-13)


# ------------------------------------------------------------------------------------------------
# CFG commutes with conversion (book Eq. (8.3.3))


@pytest.mark.parametrize("name", ["vp_cosine", "ve", "rf_shift3"])
def test_cfg_commutes_with_conversion(name):
    sch, t, x, m1 = setup(name, seed=5)
    m2 = torch.randn_like(m1)
    for w in (0.0, 1.0, 3.5, -1.25):
        for p, q in itertools.permutations(types_for(sch), 2):
            lhs = w * convert(m1, x, t, sch, p, q) + (1 - w) * convert(m2, x, t, sch, p, q)
            rhs = convert(w * m1 + (1 - w) * m2, x, t, sch, p, q)
            assert_rel(lhs, rhs, 1e-12)


# ------------------------------------------------------------------------------------------------
# ModelWrapper


class Recorder:
    """A dummy network recording what it receives and returning a fixed function of its input."""

    def __init__(self, fn=None):
        self.calls = []
        self.fn = fn or (lambda x, t: 0.5 * x + t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype))

    def __call__(self, x, t, **kw):
        self.calls.append((x.clone(), t.clone(), kw))
        return self.fn(x, t)


def test_wrapper_time_conventions():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)

    def seen(sch, **kw):
        rec = Recorder()
        w = ModelWrapper(rec, sch, **kw)
        w(x, t, cond="c")
        xin, tin, mkw = rec.calls[-1]
        assert mkw == {"cond": "c"} and tin.shape == (3,) and tin.dtype == torch.float64
        assert torch.equal(xin, x)
        return tin

    vp = S.VPLinear()
    assert torch.equal(seen(vp), t)
    assert torch.equal(seen(vp, time_convention="continuous"), t)
    assert_rel(seen(vp, time_convention="scaled"), 1000 * t, 1e-15)
    assert_rel(seen(vp, time_convention="scaled", time_scale=999), 999 * t, 1e-15)
    disc = S.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    ti = torch.tensor([1.0, 500.0, 1000.0], dtype=torch.float64) / 1000
    rec = Recorder()
    ModelWrapper(rec, disc, time_convention="index")(x, ti)
    torch.testing.assert_close(rec.calls[-1][1], torch.tensor([0.0, 499.0, 999.0], dtype=torch.float64), rtol=0, atol=1e-12)
    rf = S.RectifiedFlow(shift=3.0)
    u = 3 * t / (1 + 2 * t)
    assert_rel(seen(rf, time_convention="sigma"), u, 1e-14)
    assert_rel(seen(rf, time_convention="sigma", time_scale=1000), 1000 * u, 1e-14)
    edm = S.EDM()
    te = torch.tensor([0.01, 1.0, 40.0], dtype=torch.float64)
    rec = Recorder()
    ModelWrapper(rec, edm, time_convention="sigma")(x, te)
    assert_rel(rec.calls[-1][1], te, 1e-15)
    ModelWrapper(rec, edm, time_convention="c_noise")(x, te)
    assert_rel(rec.calls[-1][1], 0.25 * torch.log(te), 1e-14)
    v = vp.eval(t)
    assert_rel(seen(vp, time_convention="c_noise"), 0.25 * torch.log(v.sigma / v.alpha), 1e-13)
    got = seen(vp, time_convention="c_noise", c_noise=lambda tt, vals: 7 * tt + vals.alpha)
    assert_rel(got, 7 * t + v.alpha, 1e-15)
    # float32 data: the network receives float32 times; a scalar t broadcasts
    rec = Recorder()
    ModelWrapper(rec, vp, time_convention="scaled")(x.float(), 0.25)
    assert rec.calls[-1][1].dtype == torch.float32
    assert torch.equal(rec.calls[-1][1], torch.full((3,), 250.0))


@pytest.mark.parametrize("name", ["vp_linear", "rf_shift3", "edm"])
def test_wrapper_targets_match_convert(name):
    sch, t, x, _ = setup(name, B=3, shape=(4,))
    net = Recorder(lambda xx, tt: torch.sin(xx) * tt.reshape(-1, 1))
    for pred in types_for(sch):
        w = ModelWrapper(net, sch, prediction=pred)
        m = net.fn(x, t)
        for tgt in types_for(sch):
            assert_rel(w(x, t, target=tgt), convert(m, x, t, sch, pred, tgt), 1e-15)
            assert_rel(w.predict(x, t, tgt), convert(m, x, t, sch, pred, tgt), 1e-15)
    w = ModelWrapper(net, sch, prediction="eps")
    assert_rel(w.x0_fn(x, t), w(x, t, "x0"), 0)
    assert_rel(w.eps_fn(x, t), net.fn(x, t), 0)
    assert_rel(w.score_fn(x, t), w(x, t, "score"), 0)
    assert_rel(w.velocity_fn(x, t), w(x, t, "velocity"), 0)


@pytest.mark.parametrize("name", ["edm", "vp_linear", "rf_shift3", "trig_0.5"])
def test_edm_precond_zero_net_is_optimal_denoiser(name):
    sd = 0.5
    sch, t, x, _ = setup(name, B=5, shape=(6,))
    rec = Recorder(lambda xx, tt: torch.zeros_like(xx))
    w = ModelWrapper(rec, sch, edm_precond=True, sigma_data=sd)
    v = sch.eval(t)
    a, s = bview(v.alpha, x), bview(v.sigma, x)
    x0 = w(x, t)  # target "x0" by default
    assert_rel(x0, a * sd ** 2 / (a * a * sd ** 2 + s * s) * x, 1e-14)
    # the network got c_in·x and c_noise
    xin, tin, _ = rec.calls[-1]
    assert_rel(xin, x / torch.sqrt(a * a * sd ** 2 + s * s), 1e-14)
    assert_rel(tin, -0.25 * v.lam, 1e-14)
    # every other head equals the Gaussian oracle for N(0, sd² I)
    heads = gaussian_heads(x, v, torch.zeros(6, dtype=torch.float64), sd ** 2)
    for tgt in types_for(sch):
        assert_rel(w(x, t, target=tgt), heads[tgt], 1e-12)


def test_edm_precond_nonzero_net():
    sch, t, x, _ = setup("vp_cosine", B=4, shape=(3,))
    fn = lambda xx, tt: torch.cos(xx) + tt.reshape(-1, 1)  # noqa: E731
    w = ModelWrapper(Recorder(fn), sch, edm_precond=True, sigma_data=0.7, time_convention="continuous")
    c_skip, c_out, c_in, _ = edm_precond_coefs(sch.eval(t), 0.7)
    x0 = bview(c_skip, x) * x + bview(c_out, x) * fn(bview(c_in, x) * x, t)
    assert_rel(w(x, t), x0, 1e-14)
    for tgt in ("eps", "score", "velocity", "v"):
        assert_rel(w(x, t, tgt), convert(x0, x, t, sch, "x0", tgt), 1e-12)


def test_edm_precond_coefs_properties():
    sd = 0.5
    # limits (book App. D.6): σ → 0 and σ → ∞ with α = 1
    small = torch.tensor([1e-2, 1e-4, 1e-6, 1e-9], dtype=torch.float64)
    c_skip, c_out, _, _ = edm_precond_coefs(S.EDM().eval(small), sd)
    assert bool(((1 - c_skip) <= small ** 2 / sd ** 2).all()) and bool((c_out <= small).all())
    assert (1 - c_skip[-1]).item() < 1e-15 and c_out[-1].item() < 1.01e-9
    large = torch.tensor([1e2, 1e4, 1e6, 1e9], dtype=torch.float64)
    c_skip, c_out, _, _ = edm_precond_coefs(S.EDM().eval(large), sd)
    assert bool((c_skip <= sd ** 2 / large ** 2).all()) and bool(((sd - c_out) <= sd ** 3 / large ** 2).all())
    assert c_skip[-1].item() < 1e-18 and abs(c_out[-1].item() - sd) < 1e-15
    sig = torch.tensor([0.002, 0.3, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_precond_coefs(S.EDM().eval(sig), sd)  # eq. D.6.5
    assert_rel(c_skip, sd ** 2 / (sd ** 2 + sig ** 2), 1e-15)
    assert_rel(c_out, sig * sd / torch.sqrt(sd ** 2 + sig ** 2), 1e-15)
    assert_rel(c_in, 1 / torch.sqrt(sd ** 2 + sig ** 2), 1e-15)
    assert_rel(c_noise, 0.25 * torch.log(sig), 1e-15)
    # unit variance of c_in·x_t and of F_tgt for data with variance sd² (exact formulas)
    for name in SCHEDULES:
        sch, t, _, _ = setup(name, B=8)
        v = sch.eval(t)
        for sdd in (0.5, 1.0, 2.0):
            cs, co, ci, _ = edm_precond_coefs(v, sdd)
            a, s = v.alpha, v.sigma
            assert_rel(ci ** 2 * (a * a * sdd ** 2 + s * s), torch.ones_like(a), 1e-14)
            var_f = ((1 - cs * a) ** 2 * sdd ** 2 + cs ** 2 * s ** 2) / co ** 2
            assert_rel(var_f, torch.ones_like(a), 1e-12)
    # raw (alpha, sigma) tuples work too
    v = S.VPLinear().eval(torch.tensor([0.4], dtype=torch.float64))
    a1 = edm_precond_coefs(v, sd)
    a2 = edm_precond_coefs((v.alpha, v.sigma), sd)
    for p, q in zip(a1, a2):
        assert_rel(p, q, 1e-15)


def test_wrapper_autograd_and_jvp():
    sch, t, x, _ = setup("vp_linear", B=3, shape=(4,))
    lin = torch.nn.Linear(4, 4, dtype=torch.float64)
    w = ModelWrapper(lambda xx, tt: lin(xx) * tt[:, None], sch, prediction="v", edm_precond=False)
    xg = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: w(a, t, "eps"), (xg,))
    w2 = ModelWrapper(lambda xx, tt: torch.tanh(xx) * tt[:, None], S.EDM(), edm_precond=True)
    te = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: w2(a, te, "eps"), (xg,))
    dx = torch.randn_like(x)
    _, tan = torch.func.jvp(lambda a: w2(a, te, "x0"), (x,), (dx,))
    eps = 1e-6
    fd = (w2(x + eps * dx, te) - w2(x - eps * dx, te)) / (2 * eps)
    torch.testing.assert_close(tan, fd, rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs():
    sch, t, x, m = setup("vp_linear", B=3, shape=(4,))
    ve = S.VE()
    with pytest.raises(ValueError, match="src"):
        convert(m, x, t, sch, "eps2", "x0")
    with pytest.raises(ValueError, match="dst"):
        convert(m, x, t, sch, "eps", "y")
    with pytest.raises(ValueError, match="'v'"):
        convert(m, x, t, ve, "eps", "v")
    with pytest.raises(ValueError, match="shape mismatch"):
        convert(m[:, :3], x, t, sch, "eps", "x0")
    with pytest.raises(ValueError, match="batch size 3"):
        convert(m, x, t[:2], sch, "eps", "x0")
    with pytest.raises(ValueError, match="batch size 3"):
        convert(m, x, t[:, None], sch, "eps", "x0")
    with pytest.raises(ValueError, match="out"):
        convert(m, x, t, sch, "eps", "x0", out=torch.empty(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="t: expected times"):
        convert(m, x, torch.tensor([0.5, 1.5, 0.2], dtype=torch.float64), sch, "eps", "x0")
    net = Recorder()
    with pytest.raises(ValueError, match="prediction"):
        ModelWrapper(net, sch, prediction="noise2")
    with pytest.raises(ValueError, match="prediction.*'v'"):
        ModelWrapper(net, ve, prediction="v")
    with pytest.raises(ValueError, match="time_convention"):
        ModelWrapper(net, sch, time_convention="timesteps")
    with pytest.raises(ValueError, match="time_convention.*index"):
        ModelWrapper(net, sch, time_convention="index")
    with pytest.raises(ValueError, match="time_scale"):
        ModelWrapper(net, sch, time_convention="continuous", time_scale=10)
    with pytest.raises(ValueError, match="time_scale"):
        ModelWrapper(net, sch, time_convention="scaled", time_scale=-1)
    with pytest.raises(ValueError, match="c_noise"):
        ModelWrapper(net, sch, c_noise=lambda t, v: t)
    with pytest.raises(ValueError, match="prediction"):
        ModelWrapper(net, sch, prediction="eps", edm_precond=True)
    with pytest.raises(ValueError, match="sigma_data"):
        ModelWrapper(net, sch, edm_precond=True, sigma_data=0)
    w = ModelWrapper(net, ve)
    with pytest.raises(ValueError, match="target.*'v'"):
        w(x, t, target="v")
    with pytest.raises(ValueError, match="target"):
        w(x, t, target="what")
    with pytest.raises(ValueError, match="batch size 3"):
        w(x, torch.rand(2, dtype=torch.float64))
    bad = ModelWrapper(lambda xx, tt: xx[:, :2], sch)
    with pytest.raises(ValueError, match="model output.*shape mismatch"):
        bad(x, t)
