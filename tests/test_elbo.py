"""diffcore.likelihood.continuous_elbo: the continuous-time ELBO (Kingma et al. 2021; book §4.4.3, App. C.2).

Oracle (docs/bridges.md, "The continuous-time ELBO"): for the exact denoiser of data q and the decoder
N(x; z/α0, (σ0/α0)² I), the expected bound is

    ELBO*(x) = E_{x_T|x}[log π(x_T) − log q_T(x_T)] + D log α0 + E_{x_t0|x}[log q_t0(x_t0)]
             = log q(x) − Δ_prior(x) − Δ_trunc(x),

an expression in densities only (no denoiser): the diffusion integral it replaces is the pointwise I-MMSE
relation. For Gaussian data every term is closed form; for mixtures the two expectations over one Gaussian
are computed by Monte Carlo with the oracle's marginal densities.
"""
import math

import pytest
import torch

from diffcore import oracles, schedules
from diffcore.likelihood import bits_per_dim, continuous_elbo

F64 = torch.float64
VP = schedules.get("vp_linear")
pytestmark = pytest.mark.usefixtures("one_thread")


def _gauss():
    return oracles.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64))


def _ends(sched, t0, T):
    v = sched.eval(torch.tensor([t0, T], dtype=F64))
    return float(v.alpha[0]), float(v.sigma[0]), float(v.alpha[1]), float(v.sigma[1])


def _gauss_E_logq(g, x, a, s):
    """E_{z ~ N(a x, s² I)} log N(z; a μ, a² Σ + s² I), closed form."""
    D = x.shape[1]
    S = a * a * g.cov + s * s * torch.eye(D, dtype=F64)
    Si = torch.linalg.inv(S)
    d = x - g.mean
    return -0.5 * (D * math.log(2 * math.pi) + torch.logdet(S) + s * s * torch.trace(Si) + a * a * ((d @ Si) * d).sum(1))


def _E_logpi(x, aT, sT, sp=1.0):
    D = x.shape[1]
    return -0.5 * (D * math.log(2 * math.pi * sp * sp) + (aT * aT * (x * x).sum(1) + D * sT * sT) / (sp * sp))


def _gauss_elbo(g, x, sched, t0, T):
    a0, s0, aT, sT = _ends(sched, t0, T)
    return _E_logpi(x, aT, sT) - _gauss_E_logq(g, x, aT, sT) + x.shape[1] * math.log(a0) + _gauss_E_logq(g, x, a0, s0)


def test_diffusion_integral_is_the_density_identity_gaussian_quadrature():
    # the derivation behind the oracle, checked without the library's estimator: for Gaussian data the
    # integrand E_ε‖ε − ε̂‖² = tr((I − σ²S⁻¹)²) + α²σ²‖S⁻¹(x − μ)‖² is closed form; its λ-integral over
    # [λ(T), λ(t0)] equals h(T) − h(t0), h(t) = E_{x_t|x}[log q_t(x_t) − log q(x_t|x)]
    from scipy.integrate import quad
    g = _gauss()
    x = torch.tensor([[0.3, -0.2], [2.0, 1.0], [-1.0, -3.0]], dtype=F64)
    t0, T = 1e-3, 1.0
    I2 = torch.eye(2, dtype=F64)
    for xi in x:
        def integrand(lam):
            t = VP.t_of_lam(torch.tensor([lam], dtype=F64))
            v = VP.eval(t)
            a, s = float(v.alpha[0]), float(v.sigma[0])
            Si = torch.linalg.inv(a * a * g.cov + s * s * I2)
            M = I2 - s * s * Si
            return float(torch.trace(M @ M) + a * a * s * s * ((Si @ (xi - g.mean)) ** 2).sum())
        lam0, lamT = float(VP.lam(t0)), float(VP.lam(T))
        integral, err = quad(integrand, lamT, lam0, epsabs=1e-11, epsrel=1e-11, limit=200)

        def h(t):
            a, s = _ends(VP, t, t)[:2]
            return float(_gauss_E_logq(g, xi[None], a, s)[0]) + 0.5 * 2 * (math.log(2 * math.pi * s * s) + 1)
        assert abs(integral - (h(T) - h(t0))) < 1e-8 * max(1.0, abs(integral))


@pytest.mark.parametrize("t_sampling,max_se", [("importance", 0.09), ("uniform", 0.6)])
def test_gaussian_oracle_elbo_equals_closed_form(t_sampling, max_se):
    # uniform t has the larger variance: the weight −λ'(t) ~ 1/(2t) near t0 (VP-linear), which importance
    # sampling in λ flattens (Kingma et al. 2021, Sec. 5.2, Appendix)
    g = _gauss()
    gen = torch.Generator().manual_seed(11)
    x = g.sample(1000, generator=gen)
    model = lambda x, t: g.eps(x, t, VP)  # noqa: E731
    elbo, terms = continuous_elbo(model, x, VP, n_t=32, t_sampling=t_sampling, generator=gen, return_terms=True)
    closed = _gauss_elbo(g, x, VP, 1e-3, 1.0)
    # the prior and reconstruction terms are closed form in both; only the diffusion term is random
    a0, s0, aT, sT = _ends(VP, 1e-3, 1.0)
    kl = 0.5 * ((aT * aT * (x * x) + sT * sT) - 1 - math.log(sT * sT)).sum(1)
    torch.testing.assert_close(terms["prior"], kl, rtol=1e-12, atol=1e-15)
    assert torch.allclose(terms["recon"], torch.tensor(1 + math.log(2 * math.pi) + 2 * math.log(s0 / a0), dtype=F64))
    assert terms["nfe"] == 32
    # mean over 1000 points: its standard error from the per-point errors (conservative when stratified);
    # a 5-SE bound fails by chance < 1e-6
    se = float(terms["std_err"].pow(2).sum().sqrt()) / x.shape[0]
    assert abs(float((elbo - closed).mean())) < 5 * se, (float((elbo - closed).mean()), se)
    assert se < max_se


def test_gaussian_gaps_are_a_kl_and_an_entropy_increase():
    # averaged over x ~ q the bound is below log q by KL(q_T ‖ π) + (h(q_t0) − h(q) − D log α0) ≥ 0
    g = _gauss()
    t0, T = 1e-3, 1.0
    a0, s0, aT, sT = _ends(VP, t0, T)
    gen = torch.Generator().manual_seed(2)
    x = g.sample(200000, generator=gen)
    gap = (g.log_prob(x) - _gauss_elbo(g, x, VP, t0, T)).mean()
    I2 = torch.eye(2, dtype=F64)
    ST = aT * aT * g.cov + sT * sT * I2
    kl = 0.5 * (torch.trace(ST) + aT * aT * (g.mean @ g.mean) - 2 - torch.logdet(ST))
    ent = 0.5 * (torch.logdet(a0 * a0 * g.cov + s0 * s0 * I2) - torch.logdet(a0 * a0 * g.cov))
    assert float(kl) > 0 and float(ent) > 0
    # the pointwise gap has sd < 0.05 here (a quadratic form in x with small coefficients): 200000 draws
    assert abs(float(gap) - float(kl + ent)) < 1e-3


def _mixture_gaps(mix, x, t0, T, n=20000, seed=5):
    """Δ_prior(x), Δ_trunc(x) by Monte Carlo over one Gaussian each, with the oracle's marginal densities
    (and their standard errors)."""
    a0, s0, aT, sT = _ends(VP, t0, T)
    gen = torch.Generator().manual_seed(seed)
    P, D = x.shape
    e = torch.randn(P, n, D, generator=gen, dtype=F64)
    zT = (aT * x[:, None] + sT * e).reshape(P * n, D)
    lpi = -0.5 * ((zT * zT).sum(1) + D * math.log(2 * math.pi))
    r1 = (mix.marginal_log_prob(zT, T, VP) - lpi).reshape(P, n)
    z0 = (a0 * x[:, None] + s0 * e).reshape(P * n, D)
    r2 = mix.marginal_log_prob(z0, t0, VP).reshape(P, n)
    dp = r1.mean(1)
    dt = mix.log_prob(x) - D * math.log(a0) - r2.mean(1)
    return dp, dt, ((r1.var(1) + r2.var(1)) / n).sqrt()


def test_mixture_oracle_elbo_is_log_p_minus_the_computed_gaps():
    # t_min = 0.05 (σ0 ≈ 0.17) and t_max = 0.5 (α_T ≈ 0.28) make both gaps large against the Monte-Carlo error
    t0, T = 0.05, 0.5
    mix = oracles.toy_2d_mixture()
    gen = torch.Generator().manual_seed(3)
    x = mix.sample(6, generator=gen)
    xs = x.repeat_interleave(400, 0)  # 400 independent estimates per point
    for prediction in ("eps", "velocity"):
        model = lambda z, t, p=prediction: mix.predict(z, t, VP, p)  # noqa: E731
        elbo, terms = continuous_elbo(model, xs, VP, prediction, t_min=t0, t_max=T, n_t=16, generator=gen,
                                      return_terms=True)
        per_point = elbo.reshape(6, 400).mean(1)
        se = terms["std_err"].reshape(6, 400).pow(2).sum(1).sqrt() / 400
        dp, dt, se_gap = _mixture_gaps(mix, x, t0, T)
        target = mix.log_prob(x) - dp - dt
        assert bool(((per_point - target).abs() < 6 * torch.sqrt(se ** 2 + se_gap ** 2)).all()), (
            prediction, per_point - target, se)
        assert float(se.max()) < 0.08
        assert float((dp + dt).abs().max()) > 10 * float(se.max()), (dp, dt)  # the gaps are resolved


def test_mixture_bound_on_average_between_log_p_minus_gaps_and_log_p():
    # over data x ~ q: mean ELBO ≤ mean log q, and ≥ mean log q − (prior KL + truncation gap), both gaps
    # computed (their mean is ≥ 0: a KL and an entropy increase)
    mix = oracles.toy_1d_mixture()
    gen = torch.Generator().manual_seed(8)
    x = mix.sample(3000, generator=gen)
    model = lambda z, t: mix.eps(z, t, VP)  # noqa: E731
    elbo, terms = continuous_elbo(model, x, VP, t_min=0.05, t_max=0.5, n_t=16, generator=gen, return_terms=True)
    se = float(terms["std_err"].pow(2).sum().sqrt()) / x.shape[0]
    dp, dt, se_gap = _mixture_gaps(mix, x[:300], 0.05, 0.5, n=4000)
    gap = float((dp + dt).mean())
    gap_se = float((dp + dt).std()) / math.sqrt(300) + float(se_gap.pow(2).sum().sqrt()) / 300
    assert gap > 5 * gap_se
    logp = float(mix.log_prob(x).mean())
    mean_elbo = float(elbo.mean())
    assert mean_elbo <= logp + 1e-6 + 5 * se
    assert mean_elbo >= logp - (gap + 5 * gap_se) - 5 * se


def test_decoder_denoiser_shapes_and_bits_per_dim():
    # 1-D data (B, 1) and images (B, 1, 4, 4) with an isotropic Gaussian oracle; the "denoiser" decoder is a
    # tighter reconstruction term for the exact denoiser (its error has the posterior variance, smaller than
    # the forward kernel's σ0²/α0²)
    g1 = oracles.Gaussian(torch.tensor([0.3], dtype=F64), torch.tensor(0.5, dtype=F64))
    gen = torch.Generator().manual_seed(4)
    x = g1.sample(3000, generator=gen)
    m1 = lambda z, t: g1.eps(z, t, VP)  # noqa: E731
    e_inv, t_inv = continuous_elbo(m1, x, VP, n_t=4, generator=gen, return_terms=True)
    e_den, t_den = continuous_elbo(m1, x, VP, n_t=4, decoder="denoiser", generator=gen, return_terms=True)
    assert t_den["nfe"] == 5 and t_inv["nfe"] == 4
    assert float(t_den["recon"].mean()) < float(t_inv["recon"].mean())
    gi = oracles.Gaussian(torch.zeros(16, dtype=F64), torch.tensor(0.8, dtype=F64))
    xi = gi.sample(512, generator=gen).reshape(512, 1, 4, 4).float()
    mi = lambda z, t: gi.eps(z.reshape(-1, 16), t, VP).reshape(z.shape).to(z.dtype)  # noqa: E731
    e, terms = continuous_elbo(mi, xi, VP, n_t=8, generator=gen, return_terms=True)
    assert e.shape == (512,) and e.dtype == F64
    closed = _gauss_elbo(gi, xi.reshape(512, 16).double(), VP, 1e-3, 1.0)
    se = float(terms["std_err"].pow(2).sum().sqrt()) / 512
    assert abs(float((e - closed).mean())) < 5 * se + 1e-4  # float32 model input
    bpd = bits_per_dim(e, (1, 4, 4))
    torch.testing.assert_close(bpd, -e / (16 * math.log(2)))


def test_flow_schedule_needs_t_max_below_one_and_then_works():
    rf = schedules.get("rf")
    g = _gauss()
    model = lambda z, t: g.predict(z, t, rf, "velocity")  # noqa: E731
    x = g.sample(4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="t_min: expected a time with"):
        continuous_elbo(model, x, rf)  # σ(0) = 0
    with pytest.raises(ValueError, match="t_max: expected a time with"):
        continuous_elbo(model, x, rf, t_min=1e-3)  # α(1) = 0
    e = continuous_elbo(model, x, rf, t_max=1 - 1e-3, t_min=1e-3, n_t=4, generator=torch.Generator().manual_seed(1))
    assert e.shape == (4,) and bool(torch.isfinite(e).all())


def test_continuous_elbo_rejects_bad_input():
    g = _gauss()
    model = lambda z, t: g.eps(z, t, VP)  # noqa: E731
    x = g.sample(3, generator=torch.Generator().manual_seed(0))
    bad = [
        (dict(n_t=0), ValueError, "n_t"),
        (dict(n_t=2.5), ValueError, "n_t"),
        (dict(t_sampling="sobol"), ValueError, "t_sampling"),
        (dict(decoder="bernoulli"), ValueError, "decoder"),
        (dict(t_min=0.0), ValueError, "t_min"),
        (dict(t_min=0.5, t_max=0.2), ValueError, "t_min, t_max"),
        (dict(t_max=2.0), ValueError, "t_max"),
        (dict(t_min=float("nan")), ValueError, "t_min"),
        (dict(t_min=True), ValueError, "t_min"),
        (dict(prior_std=-1.0), ValueError, "prior_std"),
        (dict(stratified="yes"), TypeError, "stratified"),
        (dict(return_terms=1), TypeError, "return_terms"),
        (dict(generator=3), TypeError, "generator"),
        (dict(prediction="banana"), ValueError, "prediction"),
    ]
    for kw, exc, match in bad:
        with pytest.raises(exc, match=match):
            continuous_elbo(model, x, VP, **kw)
    with pytest.raises(ValueError, match="x: expected finite"):
        continuous_elbo(model, torch.full((2, 2), float("nan"), dtype=F64), VP)
    with pytest.raises(TypeError, match="x"):
        continuous_elbo(model, [[0.0, 1.0]], VP)
    with pytest.raises(ValueError, match="model: expected an output of shape"):
        continuous_elbo(lambda z, t: z[:, :1], x, VP)
    with pytest.raises(TypeError, match="schedule"):
        continuous_elbo(model, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_continuous_elbo_on_cuda_matches_closed_form():
    g = _gauss()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = g.sample(1000, generator=torch.Generator().manual_seed(1)).to("cuda")
    model = lambda z, t: g.eps(z, t, VP)  # noqa: E731
    elbo, terms = continuous_elbo(model, x, VP, n_t=32, generator=gen, return_terms=True)
    assert elbo.device.type == "cuda"
    closed = _gauss_elbo(g, x.cpu(), VP, 1e-3, 1.0)
    se = float(terms["std_err"].pow(2).sum().sqrt()) / x.shape[0]
    assert abs(float((elbo.cpu() - closed).mean())) < 5 * se
