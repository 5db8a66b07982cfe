"""Probability paths (python/diffcore/paths.py; book Ch. 5) and the OT-σ_min schedule (Lipman et al. 2023).

Oracles: the §4.1 target table and §4.6 F_tgt in closed form; the finite-difference continuity
residual of every conditional path P1–P6 (§2.2); targets = d/dτ of the sampled trajectory by
autograd; P3 field = two-sided target at the sample; the corrected Table 5.2 coefficients; the
Poisson-flow oracles of §2.4 ((i) F(d, 1) law by Kolmogorov–Smirnov, (ii) normalization by
quadrature, (iv) exact field = posterior mean of the conditional velocity, and its continuity
equation).
"""
import math

import pytest
import torch

from diffcore import paths, schedules as S

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- affine path ----
@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "ve", "edm", "rf", "trig", "ot_sigma_min"])
def test_affine_targets_follow_the_table(name):
    # book Table 6.1 (score row corrected, docs/errata.md B11) and App. D.6 F_tgt = (σ x0 − α σ_d² ε)/(σ_d √R)
    sched = S.get(name)
    g = _gen(0)
    B = 6
    x0 = torch.randn(B, 2, 3, generator=g, dtype=F64)
    eps = torch.randn(B, 2, 3, generator=g, dtype=F64)
    t = (torch.rand(B, generator=g, dtype=F64) * 0.9 + 0.05) * (10.0 if name == "edm" else 1.0)
    v = sched.eval(t)
    col = lambda c: c[:, None, None]  # noqa: E731
    a, s, da, ds = col(v.alpha), col(v.sigma), col(v.dalpha), col(v.dsigma)
    path = paths.AffinePath(sched)
    expect = {"eps": eps, "x0": x0, "score": -eps / s, "velocity": da * x0 + ds * eps}
    if sched.kind == "vp":
        expect["v"] = a * eps - s * x0
    for head, want in expect.items():
        torch.testing.assert_close(path.target(x0, eps, t, head), want, rtol=1e-13, atol=1e-13)
    sd = 0.5
    R = a * a * sd ** 2 + s * s
    torch.testing.assert_close(path.target(x0, eps, t, "edm", sigma_data=sd),
                               (s * x0 - a * sd ** 2 * eps) / (sd * torch.sqrt(R)), rtol=1e-12, atol=1e-12)
    xt = path.sample(x0, t, eps)
    torch.testing.assert_close(xt, a * x0 + s * eps, rtol=0, atol=1e-15)
    # conditional score −ε/σ and conditional velocity α'x0 + σ'ε at the sample (Lemma D.2.1, Sec. 5.2.1)
    torch.testing.assert_close(path.conditional_score(xt, x0, t), -eps / s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path.conditional_velocity(xt, x0, t), da * x0 + ds * eps, rtol=1e-12, atol=1e-12)
    lp = torch.distributions.Normal(a * x0, s).log_prob(xt).reshape(B, -1).sum(1)
    torch.testing.assert_close(path.log_prob(xt, x0, t), lp, rtol=1e-12, atol=1e-12)


def test_affine_v_needs_vp_and_shapes_are_checked():
    path = paths.AffinePath("rf")
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="variance-preserving"):
        path.target(x, x, 0.5, "v")
    with pytest.raises(ValueError, match="prediction"):
        path.target(x, x, 0.5, "nope")
    with pytest.raises(ValueError, match="shape mismatch"):
        path.sample(x, 0.5, torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="feature dimension"):
        path.sample(torch.zeros(3, dtype=F64), 0.5, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        path.sample(x, torch.tensor([0.1, 0.2, 0.3]), x)


# ------------------------------------------------------------------------------ OT σ_min (S8) ----
def test_ot_sigma_min_schedule_closed_forms():
    sm = 0.05
    sched = S.OTSigmaMin(sm)
    t = torch.tensor([0.0, 1e-4, 0.1, 0.37, 0.5, 0.8, 0.99], dtype=F64)
    v = sched.eval(t)
    torch.testing.assert_close(v.alpha, 1 - t, rtol=0, atol=0)
    torch.testing.assert_close(v.sigma, sm + (1 - sm) * t, rtol=1e-15, atol=0)
    sig = sm + (1 - sm) * t
    torch.testing.assert_close(v.dlam, -1 / ((1 - t) * sig), rtol=1e-14, atol=0)
    torch.testing.assert_close(v.g2, -2 * v.sigma ** 2 * v.dlam, rtol=1e-14, atol=0)
    torch.testing.assert_close(sched.t_of_lam(v.lam), t, rtol=0, atol=1e-14)
    # analytic derivatives vs central differences (interior)
    ti, h = t[2:], 1e-6
    vp, vm = sched.eval(ti + h), sched.eval(ti - h)
    for name, der in (("alpha", "dalpha"), ("sigma", "dsigma"), ("lam", "dlam")):
        fd = (getattr(vp, name) - getattr(vm, name)) / (2 * h)
        torch.testing.assert_close(fd, getattr(sched.eval(ti), der), rtol=1e-7, atol=1e-9)
    # velocity target of P5 in diffusion time: (1 − σ_min) ε − x0
    g = _gen(1)
    x0, eps = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    tt = torch.rand(4, generator=g, dtype=F64)
    torch.testing.assert_close(paths.AffinePath(sched).target(x0, eps, tt, "velocity"), (1 - sm) * eps - x0,
                               rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="sigma_min"):
        S.OTSigmaMin(0.0)
    assert isinstance(S.get("ot_sigma_min"), S.OTSigmaMin)


# ------------------------------------------------------------------ flow-matching paths P1–P6 ----
# (label, path, one_sided)
FM_CASES = [
    ("P1 linear, σ_c", paths.InterpolantPath("rf", sigma_c=0.3), False),
    ("P1 trig, σ_c", paths.InterpolantPath("trig", sigma_c=0.2), False),
    ("P3 linear one-sided", paths.fm_path("linear"), True),
    ("P4 vp", paths.fm_path("vp"), True),
    ("P4 ve", paths.fm_path("ve"), True),
    ("P4 trig", paths.fm_path("trig"), True),
    ("P5 ot σ_min", paths.fm_path("ot", sigma_min=0.05), True),
    ("P6 bridge", paths.fm_path("bridge", sigma=0.7), False),
    ("P6 bridge one-sided", paths.fm_path("bridge", sigma=0.7), True),
]


def _pv(path, x, y0, y1, tau, one_sided):
    p = torch.exp(path.log_prob(x, y0, y1, tau, one_sided))
    return p, path.field(x, y0, y1, tau, one_sided)


def _d5(f, h):
    """Fourth-order central difference of f(δ) at δ = 0."""
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


@pytest.mark.parametrize("label,path,one_sided", FM_CASES, ids=[c[0] for c in FM_CASES])
def test_fm_path_continuity_residual(label, path, one_sided):
    # §2.2 oracle: ∂_τ p_τ(x|z) + ∇·(v_τ(x|z) p_τ(x|z)) = 0 by central differences (2-D, float64)
    g = _gen(2)
    B, h = 64, 1e-3
    y0 = torch.randn(B, 2, generator=g, dtype=F64)
    y1 = 1.5 * torch.randn(B, 2, generator=g, dtype=F64) + 0.5
    tau = 0.1 + 0.8 * torch.rand(B, generator=g, dtype=F64)
    a, b, c, *_ = path.coefs(tau)
    s = torch.sqrt(a * a + c * c) if one_sided else c
    mu = b[:, None] * y1 + (0 if one_sided else a[:, None] * y0)
    x = mu + s[:, None] * torch.randn(B, 2, generator=g, dtype=F64)
    hs = h * torch.clamp(s, max=1.0)  # steps in units of the local width (which sets the time scale too)
    dp = _d5(lambda d: _pv(path, x, y0, y1, tau + d, one_sided)[0], hs)
    div, scale = torch.zeros(B, dtype=F64), dp.abs()
    hx = h * s[:, None]
    for i in range(2):
        e = torch.zeros(1, 2, dtype=F64)
        e[0, i] = 1.0

        def flux(d, e=e, i=i):
            p, v = _pv(path, x + d[:, None] * e, y0, y1, tau, one_sided)
            return v[:, i] * p

        term = _d5(flux, hx[:, 0])
        div, scale = div + term, scale + term.abs()
    res = (dp + div).abs() / scale
    assert float(res.max()) < 1e-6, (label, float(res.max()))


@pytest.mark.parametrize("label,path,one_sided", FM_CASES, ids=[c[0] for c in FM_CASES])
def test_fm_target_is_time_derivative_of_the_sample(label, path, one_sided):
    # §2.2 oracle: along x_τ = Ψ_τ(y0; z) the target equals d/dτ Ψ_τ (autograd vs closed form); for
    # two-sided noisy paths the field at the sample equals the target too (Prop. 5.3.1)
    g = _gen(3)
    B = 16
    y0 = torch.randn(B, 3, generator=g, dtype=F64)
    y1 = torch.randn(B, 3, generator=g, dtype=F64) + 1.0
    xi = torch.randn(B, 3, generator=g, dtype=F64) if path.noisy else None
    tau = (0.05 + 0.9 * torch.rand(B, generator=g, dtype=F64)).requires_grad_(True)
    x = path.sample(y0, y1, tau, xi)
    dx = torch.stack([torch.autograd.grad(x[:, d].sum(), tau, retain_graph=True)[0] for d in range(3)], 1)
    target = path.target(y0, y1, tau.detach(), xi)
    torch.testing.assert_close(dx, target, rtol=1e-10, atol=1e-10)
    if path.noisy and not one_sided:
        torch.testing.assert_close(path.field(x.detach(), y0, y1, tau.detach()), target, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["linear", "vp", "ve", "trig", "ot"])
def test_one_sided_field_at_sample_is_two_sided_target(name):
    # §2.2 oracle: the P3 field b' y1 + (a'/a)(x − b y1) at x = a y0 + b y1 equals a' y0 + b' y1
    path = paths.fm_path(name)
    g = _gen(4)
    y0, y1 = torch.randn(8, 4, generator=g, dtype=F64), torch.randn(8, 4, generator=g, dtype=F64)
    tau = 0.05 + 0.9 * torch.rand(8, generator=g, dtype=F64)
    x = path.sample(y0, y1, tau)
    torch.testing.assert_close(path.field(x, None, y1, tau, one_sided=True), path.target(y0, y1, tau),
                               rtol=1e-12, atol=1e-12)


def test_fm_coefficients_match_corrected_table_5_2():
    # corrected Table 5.2 (§8 B8), FM time: linear (1 − τ, τ), trig (cos, sin), VP b = α_{1−τ}, a = √(1 − b²),
    # VE b = 1, a = σ_{1−τ}; P5 a = 1 − (1 − σ_min)τ, b = τ with field (y1 − (1 − σ_min)x)/(1 − (1 − σ_min)τ)
    tau = torch.tensor([0.01, 0.2, 0.5, 0.77, 0.99], dtype=F64)
    a, b, _, da, db, _ = paths.fm_path("linear").coefs(tau)
    torch.testing.assert_close(torch.stack([a, b, da, db]), torch.stack([1 - tau, tau, -torch.ones_like(tau),
                                                                          torch.ones_like(tau)]), rtol=0, atol=1e-15)
    a, b, *_ = paths.fm_path("trig").coefs(tau)
    torch.testing.assert_close(a, torch.cos(math.pi * tau / 2), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(b, torch.sin(math.pi * tau / 2), rtol=1e-14, atol=1e-15)
    a, b, *_ = paths.fm_path("vp").coefs(tau)
    torch.testing.assert_close(b, S.VPLinear().alpha(1 - tau), rtol=1e-15, atol=0)
    torch.testing.assert_close(a, torch.sqrt(1 - b * b), rtol=1e-12, atol=1e-15)
    a, b, *_ = paths.fm_path("ve").coefs(tau)
    torch.testing.assert_close(b, torch.ones_like(tau), rtol=0, atol=0)
    torch.testing.assert_close(a, S.VE().sigma(1 - tau), rtol=1e-15, atol=0)
    sm = 0.1
    p5 = paths.fm_path("ot", sigma_min=sm)
    a, b, *_ = p5.coefs(tau)
    torch.testing.assert_close(a, 1 - (1 - sm) * tau, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(b, tau, rtol=1e-14, atol=1e-15)
    g = _gen(5)
    x, y1 = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    want = (y1 - (1 - sm) * x) / (1 - (1 - sm) * tau)[:, None]
    torch.testing.assert_close(p5.field(x, None, y1, tau, one_sided=True), want, rtol=1e-12, atol=1e-12)
    # the bridge: N((1 − τ)y0 + τ y1, σ²τ(1 − τ)), field (1 − 2τ)/(2τ(1 − τ))(x − μ) + y1 − y0
    sig = 0.4
    br = paths.fm_path("bridge", sigma=sig)
    y0 = torch.randn(5, 2, generator=g, dtype=F64)
    mu = (1 - tau)[:, None] * y0 + tau[:, None] * y1
    want = ((1 - 2 * tau) / (2 * tau * (1 - tau)))[:, None] * (x - mu) + y1 - y0
    torch.testing.assert_close(br.field(x, y0, y1, tau), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(br.coefs(tau)[2], sig * torch.sqrt(tau * (1 - tau)), rtol=1e-15, atol=0)


def test_fm_time_is_diffusion_time_reversed():
    # §0: τ = 1 − t, y0 = ε, y1 = x0; the FM-time velocity is minus the diffusion-time one
    sched = S.VPCosine()
    path = paths.InterpolantPath(sched)
    aff = paths.AffinePath(sched)
    g = _gen(6)
    x0, eps = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(6, generator=g, dtype=F64)
    torch.testing.assert_close(path.sample(eps, x0, 1 - t), aff.sample(x0, t, eps), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(path.target(eps, x0, 1 - t), -aff.target(x0, eps, t, "velocity"),
                               rtol=1e-12, atol=1e-12)


def test_fm_path_options_are_checked():
    with pytest.raises(ValueError, match="sigma"):
        paths.fm_path("bridge")
    with pytest.raises(ValueError, match="only used"):
        paths.fm_path("linear", sigma=0.3)
    with pytest.raises(ValueError, match="unknown"):
        paths.fm_path("spiral")
    with pytest.raises(ValueError, match="sigma_c"):
        paths.InterpolantPath("rf", sigma_c=-1.0)
    p = paths.fm_path("bridge", sigma=0.5)
    y = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="xi"):
        p.sample(y, y, 0.5)


# -------------------------------------------------------------------------------- Poisson flow ----
def test_poisson_normalizer_known_values():
    assert paths.poisson_log_normalizer(1) == pytest.approx(-math.log(math.pi), abs=1e-15)  # Cauchy: 1/π
    assert paths.poisson_log_normalizer(2) == pytest.approx(-math.log(2 * math.pi), abs=1e-15)
    with pytest.raises(ValueError):
        paths.poisson_log_normalizer(0)


def test_poisson_radius_law_is_F_d_1():
    # §2.4 oracle (i): ‖z‖²/d ~ F(d, 1) (Kolmogorov–Smirnov, d = 5, 2·10⁵ samples)
    stats = pytest.importorskip("scipy.stats")
    d, n = 5, 200_000
    x0 = torch.zeros(n, d, dtype=F64)
    t = 0.7
    xt, z = paths.poisson_sample(x0, t, generator=_gen(7))
    torch.testing.assert_close(xt, t * z, rtol=0, atol=0)
    torch.testing.assert_close(paths.poisson_velocity(xt, x0, t), z, rtol=1e-15, atol=1e-15)
    r = ((z * z).sum(1) / d).numpy()
    assert stats.kstest(r, stats.f(d, 1).cdf).pvalue > 1e-4


@pytest.mark.parametrize("d", [1, 2])
def test_poisson_kernel_integrates_to_one(d):
    # §2.4 oracle (ii): ∫ p_t(x|x0) dx = 1 with C_d = Γ((d+1)/2)/π^{(d+1)/2}
    integrate = pytest.importorskip("scipy.integrate")
    t, x0 = 0.37, torch.full((1, d), 0.4, dtype=F64)

    def dens(r):  # density at distance r from x0 (the kernel is radial)
        x = x0.clone()
        x[0, 0] += r
        return float(torch.exp(paths.poisson_log_prob(x, x0, t))[0])

    if d == 1:
        total = 2 * integrate.quad(dens, 0, math.inf, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
    else:
        total = 2 * math.pi * integrate.quad(lambda r: r * dens(r), 0, math.inf, epsabs=1e-13, epsrel=1e-12,
                                             limit=200)[0]
    assert total == pytest.approx(1.0, abs=1e-8)


def _dataset(g, N=6, d=2):
    return torch.randn(N, d, generator=g, dtype=F64) * 1.3, 0.5 + torch.rand(N, generator=g, dtype=F64)


def test_poisson_field_is_posterior_mean_of_conditional_velocity():
    # §2.4 (iv): f_t(x) = Σ_k w_k (x − x_k)/t, w_k ∝ π_k p_t(x|x_k); the weights are formed here from the
    # normalized kernel densities (C_d and t included), the field from the streamed log-sum-exp
    g = _gen(8)
    pts, w = _dataset(g)
    B = 40
    x = 2.0 * torch.randn(B, 2, generator=g, dtype=F64)
    t = 0.05 + 3 * torch.rand(B, generator=g, dtype=F64)
    logp = torch.stack([paths.poisson_log_prob(x, pts[k].expand(B, 2), t) for k in range(pts.shape[0])], 1)
    post = torch.softmax(torch.log(w)[None] + logp, 1)
    cond = torch.stack([paths.poisson_velocity(x, pts[k].expand(B, 2), t) for k in range(pts.shape[0])], 1)
    want = (post[..., None] * cond).sum(1)
    torch.testing.assert_close(paths.poisson_field(x, t, pts, w), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(paths.poisson_field(x, t, pts, w, chunk=1), want, rtol=1e-12, atol=1e-12)
    # minibatch estimator with the whole dataset as the batch (uniform weights) = the exact field
    x_img = x.reshape(B, 1, 2)
    torch.testing.assert_close(paths.poisson_field(x_img, t, pts.reshape(-1, 1, 2)).reshape(B, 2),
                               paths.poisson_field(x, t, pts, torch.ones(pts.shape[0], dtype=F64)),
                               rtol=1e-13, atol=1e-13)


def test_poisson_field_satisfies_continuity_equation():
    # the exact field and the marginal p_t = Σ π_k p_t(x|x_k) satisfy ∂_t p + ∇·(f p) = 0 (FD, 2-D)
    g = _gen(9)
    pts, w = _dataset(g, N=4)
    w = w / w.sum()
    B, h = 32, 1e-4
    x = 1.5 * torch.randn(B, 2, generator=g, dtype=F64)
    t = 0.3 + 2 * torch.rand(B, generator=g, dtype=F64)

    def p(xx, tt):
        lp = torch.stack([paths.poisson_log_prob(xx, pts[k].expand(B, 2), tt) for k in range(pts.shape[0])], 1)
        return torch.exp(torch.logsumexp(torch.log(w)[None] + lp, 1))

    dp = (p(x, t + h) - p(x, t - h)) / (2 * h)
    div, scale = torch.zeros(B, dtype=F64), dp.abs()
    for i in range(2):
        e = torch.zeros(2, dtype=F64)
        e[i] = h
        fp = paths.poisson_field(x + e, t, pts, w)[:, i] * p(x + e, t)
        fm = paths.poisson_field(x - e, t, pts, w)[:, i] * p(x - e, t)
        term = (fp - fm) / (2 * h)
        div, scale = div + term, scale + term.abs()
    assert float(((dp + div).abs() / scale).max()) < 1e-6


def test_poisson_prior_and_argument_checks():
    z = paths.poisson_prior_sample((5, 3), T=40.0, generator=_gen(10), dtype=F64)
    assert z.shape == (5, 3) and z.dtype == F64
    with pytest.raises(ValueError, match="T"):
        paths.poisson_prior_sample((5, 3), T=0.0)
    with pytest.raises(ValueError, match="shape"):
        paths.poisson_prior_sample((5,), T=1.0)
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="feature shape"):
        paths.poisson_field(x, 1.0, torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="weights"):
        paths.poisson_field(x, 1.0, torch.zeros(4, 2, dtype=F64), torch.tensor([1.0, -1.0, 1.0, 1.0]))
