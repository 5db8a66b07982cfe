"""Noise schedules (python/diffcore/schedules.py, csrc/core/schedule_math.h).

Float64 throughout. Checks, for every family: derivatives against central finite differences, the
identities between the eight quantities, closed-form inverses, the exact values at both ends of the
time range, range errors, the compiled core against the torch reference, autograd / torch.func
through the reference path, and a user-defined schedule through the generic bisection inverse.
"""
import math

import pytest
import torch

from diffcore import _ops
from diffcore import schedules as S

F64 = torch.float64
NAMES = ("alpha", "sigma", "dalpha", "dsigma", "lam", "dlam", "f", "g2")
BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
N_TRAIN = 1000

# name -> (schedule, σ(t_min) = 0 exactly, α(t_max) = 0 exactly)
SCHEDS = {
    "vp_linear": (S.VPLinear(), True, False),
    "vp_cosine": (S.VPCosine(), True, True),
    "vp_discrete": (S.VPDiscrete(betas=BETAS), True, False),
    "subvp": (S.SubVP(), True, False),
    "ve": (S.VE(), False, False),
    "ve_exact": (S.VE(exact=True), True, False),
    "edm": (S.EDM(), True, False),
    "rf": (S.RectifiedFlow(shift=1.0), True, True),
    "rf_shift3": (S.RectifiedFlow(shift=3.0), True, True),
    "trig": (S.Trig(1.0), True, True),
    "trig_sd05": (S.Trig(0.5), True, True),
}
ALL = list(SCHEDS)


def sched_of(name):
    return SCHEDS[name][0]


def interior(name, n=None):
    """Interior times (strictly inside the valid range; between knots for the discrete schedule)."""
    if name == "vp_discrete":
        js = torch.tensor([0, 1, 2, 10, 50, 137, 300, 512, 700, 901, 998, 999], dtype=F64)
        return (js + 0.37) / N_TRAIN
    if name == "edm":
        return torch.tensor([0.002, 0.01, 0.1, 0.5, 1.0, 3.7, 10.0, 42.0, 80.0], dtype=F64)
    return torch.tensor([0.003, 0.01, 0.05, 0.2, 0.37, 0.5, 0.63, 0.8, 0.95, 0.99, 0.997], dtype=F64)


def dense(name):
    """A dense grid including both ends (used for core-vs-reference comparisons)."""
    s = sched_of(name)
    if name == "edm":
        return torch.cat([torch.zeros(1, dtype=F64), torch.logspace(-4, 3, 501, dtype=F64),
                          torch.tensor([math.inf], dtype=F64)])
    t = torch.linspace(s.t_min, s.t_max, 2001, dtype=F64)
    if name == "vp_discrete":  # also every knot and points just around knots
        knots = torch.arange(N_TRAIN + 1, dtype=F64) / N_TRAIN
        t = torch.cat([t, knots, (knots[1:-1] - 1e-9), (knots[1:-1] + 1e-9)])
    return t


def assert_rel(a, b, rtol, atol=0.0, what=""):
    """Elementwise |a − b| <= rtol·max(|a|, |b|) + atol; equal infinities and NaN-in-both count as equal."""
    a = torch.as_tensor(a, dtype=F64)
    b = torch.as_tensor(b, dtype=F64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert torch.equal(torch.isnan(a), torch.isnan(b)), (what, a, b)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    err = (a - b).abs()
    tol = rtol * torch.maximum(a.abs(), b.abs()) + atol
    bad = ~same & ~(err <= tol)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        pytest.fail(f"{what}: {int(bad.sum())} element(s) differ, e.g. {a.flatten()[i].item()!r} vs "
                    f"{b.flatten()[i].item()!r} (max rel err {float((err / tol.clamp_min(1e-300))[bad].max()) * rtol:.3g})")


def lam_grid(s, n=41):
    """Finite λ values strictly inside the reachable range."""
    lo, hi = s.lam_range()
    # |λ| <= 8: near t = 1, t itself is stored to an absolute 1e-16, which bounds λ(t(λ)) at ~1e-16/(1 − t)
    lo, hi = max(lo, -8.0), min(hi, 8.0)
    return torch.linspace(lo, hi, n + 2, dtype=F64)[1:-1]


# ---------------------------------------------------------------- derivatives and identities ----

@pytest.mark.parametrize("name", ALL)
def test_derivatives_match_finite_differences(name):
    s = sched_of(name)
    t = interior(name)
    h = 1e-6 * torch.clamp(100 * t, max=1.0)  # 1e-6, smaller near t = 0 where λ' ~ −1/(2t)
    v = s.eval(t)
    vp, vm = s.eval(t + h), s.eval(t - h)
    for q, dq in (("alpha", "dalpha"), ("sigma", "dsigma"), ("lam", "dlam")):
        fd = (getattr(vp, q) - getattr(vm, q)) / (2 * h)
        exact = getattr(v, dq)
        ok = ((fd - exact).abs() <= 1e-6 * exact.abs()) | ((exact == 0) & (fd == 0))
        assert bool(ok.all()), (name, dq, fd, exact)


@pytest.mark.parametrize("name", ALL)
def test_identities(name):
    s = sched_of(name)
    t = interior(name)
    a, sg, da, ds, lam, dlam, f, g2 = s.eval(t)
    assert_rel(torch.log(a / sg), lam, 1e-12, 1e-13, "lam = log(alpha/sigma)")
    assert_rel(da / a, f, 1e-12, 0.0, "f = alpha'/alpha")
    assert_rel(-2 * sg * sg * dlam, g2, 1e-12, 0.0, "g2 = -2 sigma^2 lam'")
    assert_rel(2 * sg * ds - 2 * f * sg * sg, g2, 1e-12, 0.0, "g2 = 2 sigma sigma' - 2 f sigma^2")
    assert bool((g2 >= 0).all())
    assert bool((sg > 0).all() & (a > 0).all() & (dlam < 0).all())  # λ strictly decreasing
    if s.kind == "vp":
        assert_rel(a * a + sg * sg, torch.ones_like(t), 1e-12, 0.0, "alpha^2 + sigma^2 = 1")
    if name == "subvp":
        beta = s.beta_min + (s.beta_max - s.beta_min) * t
        B = s.beta_min * t + 0.5 * (s.beta_max - s.beta_min) * t * t
        assert_rel(g2, beta * (1 - torch.exp(-2 * B)), 1e-12, 0.0, "sub-VP g2")
    if name == "ve":
        assert_rel(dlam, torch.full_like(t, -math.log(s.sigma_max / s.sigma_min)), 1e-14, 0.0, "VE lam'")
        assert_rel(g2, torch.zeros_like(t) + 2 * sg * ds, 1e-12, 0.0, "VE g2 = (sigma^2)'")
    if name == "edm":
        assert torch.equal(sg, t) and bool((a == 1).all())


@pytest.mark.parametrize("name", ALL)
def test_inverse_round_trips(name):
    s = sched_of(name)
    t = interior(name)
    assert_rel(s.t_of_lam(s.lam(t)), t, 1e-12, 0.0, "t(lam(t))")
    lam = lam_grid(s)
    assert_rel(s.lam(s.t_of_lam(lam)), lam, 1e-12, 1e-12, "lam(t(lam))")
    # the torch reference inverse too
    assert_rel(s._inv_ref(s._eval_ref(t)[4]), t, 1e-12, 0.0, "reference t(lam(t))")


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "subvp", "ve_exact", "rf_shift3", "trig_sd05"])
def test_inverse_near_the_clean_end(name):
    """t(λ(t)) keeps full relative accuracy for tiny t (no cancellation in either direction)."""
    s = sched_of(name)
    t = torch.logspace(-12, -3, 19, dtype=F64)
    assert_rel(s.t_of_lam(s.lam(t)), t, 1e-12, 0.0, "t(lam(t)), small t")
    assert_rel(s._inv_ref(s._eval_ref(t)[4]), t, 1e-12, 0.0, "reference t(lam(t)), small t")


# --------------------------------------------------------------------------------- the ends ----

@pytest.mark.parametrize("name", ALL)
def test_ends(name):
    s, zero_sigma, zero_alpha = SCHEDS[name]
    lo_t = torch.tensor(s.t_min, dtype=F64)
    v0 = s.eval(lo_t)
    for q in ("alpha", "sigma", "dalpha", "f", "g2"):
        assert math.isfinite(getattr(v0, q).item()), (q, getattr(v0, q))
    assert v0.alpha.item() > 0
    if zero_sigma:
        assert v0.sigma.item() == 0.0 and not math.copysign(1.0, v0.sigma.item()) < 0  # +0, not −0
        assert v0.lam.item() == math.inf and v0.dlam.item() == -math.inf
        assert s.t_of_lam(math.inf).item() == s.t_min
        assert s.lam_range()[1] == math.inf
    else:
        assert all(math.isfinite(x.item()) for x in v0)
        assert v0.sigma.item() > 0
        with pytest.raises(ValueError, match="lam"):
            s.t_of_lam(math.inf)
    if name == "edm":
        assert s.lam_range()[0] == -math.inf
        assert s.t_of_lam(-math.inf).item() == math.inf
        return
    v1 = s.eval(torch.tensor(s.t_max, dtype=F64))
    for q in ("sigma", "dalpha", "dsigma"):
        assert math.isfinite(getattr(v1, q).item()), (q, getattr(v1, q))
    assert v1.sigma.item() > 0
    if zero_alpha:
        assert v1.alpha.item() == 0.0 and v1.lam.item() == -math.inf and v1.dlam.item() == -math.inf
        assert v1.f.item() == -math.inf and v1.g2.item() == math.inf
        assert s.lam_range()[0] == -math.inf
        assert abs(s.t_of_lam(-math.inf).item() - s.t_max) <= 1e-12
    else:
        assert all(math.isfinite(x.item()) for x in v1)
        assert v1.alpha.item() > 0
        with pytest.raises(ValueError, match="lam"):
            s.t_of_lam(-math.inf)
    if s.kind == "vp" and zero_alpha:
        assert v1.sigma.item() == pytest.approx(1.0, rel=1e-15)


def test_specific_end_values():
    vpl = S.VPLinear()
    assert vpl.lam(0.0).item() == math.inf and vpl.sigma(0.0).item() == 0.0
    lo, hi = vpl.lam_range()
    assert hi == math.inf and -5.03 < lo < -5.01
    assert S.VPCosine().lam(1.0).item() == -math.inf and S.VPCosine().alpha(1.0).item() == 0.0
    rf = S.RectifiedFlow()
    assert rf.lam(0.0).item() == math.inf and rf.lam(1.0).item() == -math.inf
    assert rf.t_of_lam(math.inf).item() == 0.0 and rf.t_of_lam(-math.inf).item() == 1.0
    assert S.EDM().lam(0.0).item() == math.inf and S.EDM().sigma(0.0).item() == 0.0
    assert S.Trig().alpha(1.0).item() == 0.0 and S.Trig().t_of_lam(-math.inf).item() == 1.0
    ve = S.VE()
    assert ve.sigma(0.0).item() == pytest.approx(ve.sigma_min, rel=1e-15)
    assert ve.sigma(1.0).item() == pytest.approx(ve.sigma_max, rel=1e-14)
    vex = S.VE(exact=True)
    assert vex.sigma(0.0).item() == 0.0
    assert vex.sigma(1.0).item() == pytest.approx(math.sqrt(vex.sigma_max ** 2 - vex.sigma_min ** 2), rel=1e-14)


@pytest.mark.parametrize("name", ALL)
def test_out_of_range_raises(name):
    s = sched_of(name)
    bad_t = [-0.1, math.nan] + ([] if name == "edm" else [1.1])
    for bt in bad_t:
        with pytest.raises(ValueError, match="t"):
            s.eval(bt)
        with pytest.raises(ValueError, match="t"):
            s.alpha(torch.tensor([0.5 * (s.t_min + min(s.t_max, 1.0)), bt], dtype=F64))  # one bad element
    lo, hi = s.lam_range()
    bad_lam = [math.nan] + ([lo - 1.0] if math.isfinite(lo) else []) + ([hi + 1.0] if math.isfinite(hi) else [])
    for bl in bad_lam:
        with pytest.raises(ValueError, match="lam"):
            s.t_of_lam(bl)
    with pytest.raises(ValueError):
        S.VPLinear().t_of_lam(-6.0)  # λ(1) ≈ −5.02
    # check=False skips the test (no error) — the values are then whatever the formulas give
    s.eval(torch.tensor([-0.1], dtype=F64), check=False)


# ----------------------------------------------------------------------- discrete schedule ----

def test_discrete_knots_and_indices():
    s = sched_of("vp_discrete")
    acp = torch.cumprod(1 - BETAS, 0)
    n = torch.arange(N_TRAIN, dtype=F64)
    t = s.index_to_t(n)
    assert_rel(s.alpha(t) ** 2, acp, 1e-12, 0.0, "alpha^2 at knots")
    assert_rel(s.sigma(t) ** 2, 1 - acp, 1e-12, 0.0, "sigma^2 at knots")
    assert_rel(s.t_to_index(t), n, 1e-12, 1e-12, "t_to_index(index_to_t(n))")
    tt = interior("vp_discrete")
    assert_rel(s.index_to_t(s.t_to_index(tt)), tt, 1e-12, 0.0, "index_to_t(t_to_index(t))")
    assert s.index_to_t(N_TRAIN - 1).item() == 1.0 and s.t_end == 1.0 / N_TRAIN
    assert s.t_to_index(1.0).item() == N_TRAIN - 1
    # knots map back exactly through the inverse
    assert_rel(s.t_of_lam(s.lam(t)), t, 1e-12, 0.0, "inverse at knots")
    # log α is linear between knots: the midpoint value is the mean of the knot values
    mid = (n[:-1] + 1.5) / N_TRAIN
    la = torch.log(s.alpha(mid))
    assert_rel(la, 0.5 * (torch.log(s.alpha(t[:-1])) + torch.log(s.alpha(t[1:]))), 1e-12, 0.0, "linear log alpha")


def test_discrete_from_betas_equals_from_alphas_cumprod():
    a = S.VPDiscrete(betas=BETAS)
    b = S.VPDiscrete(alphas_cumprod=torch.cumprod(1 - BETAS, 0))
    c = S.VPDiscrete(betas=BETAS.tolist())
    assert a.num_train_timesteps == b.num_train_timesteps == N_TRAIN
    t = dense("vp_discrete")
    for x, y, z in zip(a.eval(t), b.eval(t), c.eval(t)):
        assert torch.equal(x, y) and torch.equal(x, z)
    lam = lam_grid(a)
    assert torch.equal(a.t_of_lam(lam), b.t_of_lam(lam))


@pytest.mark.parametrize("kwargs", [
    {}, {"betas": BETAS, "alphas_cumprod": torch.cumprod(1 - BETAS, 0)},
    {"betas": [0.1, 0.0, 0.2]}, {"betas": [0.1, 1.0]}, {"betas": [-0.1, 0.2]}, {"betas": []},
    {"betas": [0.1, math.nan]},
    {"alphas_cumprod": [0.9, 0.95]}, {"alphas_cumprod": [0.9, 0.9]}, {"alphas_cumprod": [1.0, 0.9]},
    {"alphas_cumprod": [0.9, 0.0]}, {"alphas_cumprod": []},
], ids=lambda k: ",".join(f"{a}={v if not isinstance(v, torch.Tensor) else 'T'}" for a, v in k.items()) or "none")
def test_discrete_bad_inputs(kwargs):
    with pytest.raises(ValueError):
        S.VPDiscrete(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: S.VPLinear(beta_min=-0.1), lambda: S.VPLinear(beta_min=5.0, beta_max=1.0),
    lambda: S.SubVP(beta_min=0.0, beta_max=0.0), lambda: S.VPCosine(s=-0.1),
    lambda: S.VE(sigma_min=0.0), lambda: S.VE(sigma_min=5.0, sigma_max=1.0), lambda: S.EDM(sigma_min=1.0, sigma_max=0.5),
    lambda: S.RectifiedFlow(shift=0.0), lambda: S.Trig(sigma_data=0.0), lambda: S.get("nope"),
])
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


# ------------------------------------------------------------------ compiled core vs torch ----

@pytest.mark.parametrize("name", ALL)
def test_core_matches_reference(name):
    s = sched_of(name)
    t = dense(name)
    assert s._use_core(t)
    core = s.eval(t)
    ref = s._eval_ref(t)
    for q, x, y in zip(NAMES, core, ref):
        assert x.dtype == F64 and x.shape == t.shape
        # λ crosses 0 where it is a difference of O(1–10) terms: an absolute floor of 1e-14 there
        assert_rel(x, y, 1e-13, 1e-14 if q == "lam" else 0.0, f"{name} {q}")
        zeros = (x == 0) & (y == 0)
        assert torch.equal(torch.signbit(x[zeros]), torch.signbit(y[zeros])), (name, q, "signed zeros")
    lam = torch.cat([lam_grid(s, 201), torch.tensor([v for v in s.lam_range()], dtype=F64)])
    assert_rel(s.t_of_lam(lam), s._inv_ref(lam), 1e-13, 0.0, f"{name} t_of_lam")


@pytest.mark.parametrize("name", ALL)
def test_float32_in_float32_out(name):
    s = sched_of(name)
    t64 = interior(name)
    t32 = t64.to(torch.float32)
    v32 = s.eval(t32)
    v64 = s.eval(t32.to(F64))
    for x, y in zip(v32, v64):
        assert x.dtype == torch.float32
        assert torch.equal(x, y.to(torch.float32))
    lam32 = s.lam(t32)
    tl = s.t_of_lam(lam32)
    assert tl.dtype == torch.float32
    assert torch.allclose(tl.to(F64), t64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vp_linear", "vp_discrete", "edm", "trig_sd05"])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 1, 3), (2, 0)])
def test_shapes_are_kept(name, shape):
    s = sched_of(name)
    base = interior(name)
    n = math.prod(shape)
    t = base.repeat(n // base.numel() + 1)[:n].reshape(shape)
    v = s.eval(t)
    for x, y in zip(v, s._eval_ref(t)):
        assert x.shape == t.shape
        assert_rel(x, y, 1e-13, 1e-14)
    lam = v.lam
    assert s.t_of_lam(lam).shape == t.shape
    assert_rel(s.t_of_lam(lam), t, 1e-12)
    assert s.t_of_lam(lam.float()).shape == t.shape
    # a non-contiguous view goes through the core too
    if t.dim() == 2 and t.numel() > 0:
        tt = t.t()
        assert not tt.is_contiguous()
        for x, y in zip(s.eval(tt), s._eval_ref(tt)):
            assert x.shape == tt.shape
            assert_rel(x, y, 1e-13, 1e-14)


def test_python_scalars_and_lists():
    s = S.VPLinear()
    assert s.alpha(0.5).shape == () and s.alpha(0.5).dtype == F64
    assert s.alpha([0.1, 0.5]).shape == (2,)
    assert s.alpha(torch.tensor([0, 1])).dtype == F64  # integer tensors become float64
    assert s.t_of_lam(0.0).shape == ()


def test_core_argument_validation():
    core = _ops._core
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    out = torch.empty(8, 5, dtype=F64)
    cap = torch.utils.dlpack.to_dlpack
    core.schedule_eval(0, [0.1, 20.0], None, cap(t), cap(out))
    assert_rel(out[4], S.VPLinear()._eval_ref(t)[4], 1e-13)
    with pytest.raises(TypeError, match="^t:"):
        core.schedule_eval(0, [0.1, 20.0], None, cap(t.float()), cap(out))
    with pytest.raises(TypeError, match="^out:"):
        core.schedule_eval(0, [0.1, 20.0], None, cap(t), cap(out.float()))
    with pytest.raises(ValueError, match="^out:"):
        core.schedule_eval(0, [0.1, 20.0], None, cap(t), cap(torch.empty(7, 5, dtype=F64)))
    with pytest.raises(ValueError, match="^out:"):
        core.schedule_eval(0, [0.1, 20.0], None, cap(t), cap(torch.empty(8, 6, dtype=F64)))
    with pytest.raises(ValueError, match="^t:.*contiguous"):
        core.schedule_eval(0, [0.1, 20.0], None, cap(torch.linspace(0, 1, 10, dtype=F64)[::2]), cap(out))
    with pytest.raises(ValueError, match="^out:.*contiguous"):
        core.schedule_eval(0, [0.1, 20.0], None, cap(t), cap(torch.empty(5, 8, dtype=F64).t()))
    with pytest.raises(ValueError, match="^cid:"):
        core.schedule_eval(99, [], None, cap(t), cap(out))
    with pytest.raises(ValueError, match="^params:"):
        core.schedule_eval(0, [0.1], None, cap(t), cap(out))
    with pytest.raises(ValueError, match="^params:"):
        core.schedule_eval(5, [1.0], None, cap(t), cap(out))
    with pytest.raises(ValueError, match="^table:"):
        core.schedule_eval(2, [1000.0], None, cap(t), cap(out))
    table = sched_of("vp_discrete")._core_table()
    with pytest.raises(TypeError, match="^table:"):
        core.schedule_eval(2, [1000.0], cap(table.float()), cap(t), cap(out))
    with pytest.raises(ValueError, match="^table:"):
        core.schedule_eval(2, [1000.0], cap(table[:-1]), cap(t), cap(out))
    with pytest.raises(ValueError, match="^params:"):
        core.schedule_eval(2, [1000.5], cap(table), cap(t), cap(out))
    with pytest.raises(TypeError, match="^t:"):
        core.schedule_eval(0, [0.1, 20.0], None, t, cap(out))  # not a capsule
    lam = torch.linspace(-3, 3, 5, dtype=F64)
    res = torch.empty(5, dtype=F64)
    core.schedule_inverse(2, [1000.0], cap(table), cap(lam), cap(res))
    assert_rel(res, sched_of("vp_discrete")._inv_ref(lam), 1e-13)
    with pytest.raises(TypeError, match="^lam:"):
        core.schedule_inverse(0, [0.1, 20.0], None, cap(lam.float()), cap(res))
    with pytest.raises(ValueError, match="^out:"):
        core.schedule_inverse(0, [0.1, 20.0], None, cap(lam), cap(torch.empty(4, dtype=F64)))
    with pytest.raises(ValueError, match="^cid:"):
        core.schedule_inverse(-1, [], None, cap(lam), cap(res))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_core_rejects_cuda_tensors():
    cap = torch.utils.dlpack.to_dlpack
    t = torch.linspace(0.1, 0.9, 5, dtype=F64, device="cuda")
    out = torch.empty(8, 5, dtype=F64, device="cuda")
    with pytest.raises(ValueError, match="^t:.*CPU"):
        _ops._core.schedule_eval(0, [0.1, 20.0], None, cap(t), cap(out.cpu()))
    with pytest.raises(ValueError, match="^out:.*CPU"):
        _ops._core.schedule_eval(0, [0.1, 20.0], None, cap(t.cpu()), cap(out))


# -------------------------------------------------------------------- user-defined schedule ----

class MyVP(S.Schedule):
    """VP-linear formulas written by a user: only _eval_ref, no compiled core, no closed-form inverse."""

    kind = "vp"
    _cid = None

    def __init__(self, beta_min=0.1, beta_max=20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def _eval_ref(self, t):
        db = self.beta_max - self.beta_min
        beta = self.beta_min + db * t
        B = self.beta_min * t + 0.5 * db * t * t
        alpha = torch.exp(-0.5 * B)
        sig2 = -torch.expm1(-B)
        sigma = torch.sqrt(sig2)
        return (alpha, sigma, -0.5 * beta * alpha, 0.5 * beta * alpha * alpha / sigma,
                -0.5 * torch.log(torch.expm1(B)), -beta / (2 * sig2), -0.5 * beta, beta)


def test_user_schedule_bisection_inverse(monkeypatch):
    my, ref = MyVP(), S.VPLinear()
    lam = torch.cat([lam_grid(ref, 101), ref.lam(interior("vp_linear"))])
    monkeypatch.setattr(_ops, "schedule_inverse", _raise)
    monkeypatch.setattr(_ops, "schedule_eval", _raise)
    assert not my._use_core(lam)
    got = my.t_of_lam(lam)
    assert_rel(got, ref._inv_ref(lam), 1e-12, 0.0, "bisection vs closed form")
    # reachable ends: λ(t_max) and λ(t_min) = +inf map to the ends exactly
    lo, hi = my.lam_range()
    assert hi == math.inf
    assert my.t_of_lam(hi).item() == my.t_min
    assert my.t_of_lam(lo).item() == pytest.approx(my.t_max, rel=1e-12)
    with pytest.raises(ValueError):
        my.t_of_lam(lo - 1)
    v = my.eval(interior("vp_linear"))  # reference path
    assert_rel(v.alpha, ref._eval_ref(interior("vp_linear"))[0], 0.0)


# ---------------------------------------------------------------------- autograd, torch.func ----

def _raise(*args, **kwargs):
    raise AssertionError("the compiled core must not be called here")


GRAD_FAMILIES = ["vp_linear", "vp_cosine", "vp_discrete", "subvp", "ve_exact", "edm", "rf_shift3", "trig_sd05"]


@pytest.mark.parametrize("name", GRAD_FAMILIES)
def test_gradcheck(name):
    s = sched_of(name)
    t = interior(name)[2:7].clone().requires_grad_(True)
    for fn in (s.alpha, s.sigma, s.lam):
        assert torch.autograd.gradcheck(fn, (t,), eps=1e-7, atol=1e-6, rtol=1e-5)
    # the gradient of λ is λ' exactly (same formulas), and of t_of_lam its reciprocal
    (g,) = torch.autograd.grad(s.lam(t).sum(), t)
    assert_rel(g, s.dlam(t.detach()), 1e-10)
    lam = s.lam(t.detach()).requires_grad_(True)
    (gi,) = torch.autograd.grad(s.t_of_lam(lam).sum(), lam)
    assert_rel(gi, 1 / s.dlam(t.detach()), 1e-9)


@pytest.mark.parametrize("name", ALL)
def test_jvp_matches_derivatives(name, monkeypatch):
    s = sched_of(name)
    t = interior(name)
    expect = s.eval(t)
    monkeypatch.setattr(_ops, "schedule_eval", _raise)
    monkeypatch.setattr(_ops, "schedule_inverse", _raise)
    for q, dq in (("alpha", "dalpha"), ("sigma", "dsigma"), ("lam", "dlam")):
        val, tan = torch.func.jvp(lambda x: getattr(s, q)(x), (t,), (torch.ones_like(t),))
        assert_rel(val, getattr(expect, q), 1e-13, 1e-14, q)
        assert_rel(tan, getattr(expect, dq), 1e-10, 0.0, dq)


def test_core_not_used_under_autograd(monkeypatch):
    s = S.VPLinear()
    t = torch.tensor([0.2, 0.5], dtype=F64)
    monkeypatch.setattr(_ops, "schedule_eval", _raise)
    monkeypatch.setattr(_ops, "schedule_inverse", _raise)
    with pytest.raises(AssertionError, match="compiled core"):
        s.eval(t)  # plain CPU tensor: the core path is taken
    with pytest.raises(AssertionError, match="compiled core"):
        s.t_of_lam(torch.tensor([0.0], dtype=F64))
    tg = t.clone().requires_grad_(True)
    v = s.eval(tg)
    assert v.alpha.requires_grad
    v.lam.sum().backward()
    assert tg.grad is not None and bool(torch.isfinite(tg.grad).all())
    lg = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    assert s.t_of_lam(lg).requires_grad
