"""Training objectives (python/diffcore/losses.py, timesampling.py; book Ch. 2–6).

Oracles: the closed-form minimal per-t losses of Gaussian data (§5.1) reached by every preset with the
exact predictor (Monte-Carlo, 4.5 standard errors, fixed seeds), also integrated over the time law
(quadrature / exact sums); the FM/CFM and SM/DSM gradient equivalences on a finite dataset with exact
posterior weights (§3.6 oracle (1), float64); the §4.3 per-sample equality of tied heads; the §1.3
importance-weight identity and log-normal moments; the §4.6 EDM identities; the §3.2 DDPM ELBO weight
identities; sliced-score unbiasedness on a linear model (§3.3); reflow with the exact Gaussian velocity
(§3.7); the Poisson-flow minibatch target (§2.4 (iv)).
"""
import math

import pytest
import torch

import diffcore
from diffcore import losses, oracles, paths, schedules as S, timesampling as TS
from diffcore.param import convert, edm_precond_coefs

F64 = torch.float64
K_SE = 4.5  # Monte-Carlo tolerance in standard errors (chance failure < 1e-5 per check)

MEAN = torch.tensor([0.3, -0.2, 1.0], dtype=F64)
_Q = torch.linalg.qr(torch.tensor([[1.0, 0.3, -0.2], [0.1, 1.0, 0.4], [0.5, -0.3, 1.0]], dtype=F64))[0]
COV = _Q @ torch.diag(torch.tensor([0.3, 1.0, 2.5], dtype=F64)) @ _Q.T
GAUSS = oracles.Gaussian(MEAN, COV)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mc(values, expected, what=""):
    values = values.detach().to(F64)
    mean = float(values.mean())
    se = float(values.std() / math.sqrt(values.numel()))
    assert abs(mean - float(expected)) <= K_SE * se + 1e-12 * abs(float(expected)), \
        f"{what}: MC mean {mean} vs closed form {float(expected)} (SE {se})"


def _m(t, sched, G=GAUSS):
    """m(t) = Tr(Σ S_t⁻¹) of §5.1, computed here from the covariance matrix."""
    v = sched.eval(torch.as_tensor([float(t)], dtype=F64))
    a, s = float(v.alpha[0]), float(v.sigma[0])
    St = a * a * G.cov + s * s * torch.eye(G.dim, dtype=F64)
    return float(torch.trace(torch.linalg.solve(St, G.cov)))


def _oracle(sched, head, G=GAUSS, sigma_data=0.5):
    """The exact network for a head (for "edm": the raw F of §4.6 called with (c_in x, c_noise))."""
    if head == "edm":
        def F(x_in, c_noise):
            t = sched.t_of_lam(-4 * c_noise.to(F64))
            v = sched.eval(t)
            c_skip, c_out, c_in, _ = edm_precond_coefs(v, sigma_data)
            x = x_in / c_in[:, None]
            return (G.denoiser(x, t, sched) - c_skip[:, None] * x) / c_out[:, None]
        return F
    return lambda x, t: G.predict(x, t, sched, head)


# ------------------------------------------------------------------------------- time laws §1.3 ----
def test_lognormal_sigma_moments_on_edm():
    # §1.3 oracle: on EDM the sample mean/variance of ln t match (P_mean, P_std²)
    n = 40_000
    t = TS.get("lognormal_sigma").sample(n, S.EDM(), _gen(0))
    lt = torch.log(t)
    _mc(lt, -1.2, "mean ln t")
    var = float(lt.var())
    assert abs(var - 1.44) <= K_SE * 1.44 * math.sqrt(2 / (n - 1)), var


LAW_CASES = [
    ("uniform", {}, "vp_linear"),
    ("stratified", {}, "vp_linear"),
    ("lognormal_sigma", {}, "vp_linear"),  # truncated at λ(1)
    ("lognormal_sigma", {"t_min": 0.01, "t_max": 20.0}, "edm"),
    ("logit_normal", {"m": 0.3, "s": 0.8}, "rf"),
    ("logit_normal", {"t_min": 0.1, "t_max": 0.7}, "rf"),
    ("uniform_lambda", {}, "vp_linear"),
    ("uniform_lambda", {"t_min": 0.05, "t_max": 0.9}, "vp_cosine"),
]


@pytest.mark.parametrize("name,opts,sched", LAW_CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(LAW_CASES)])
def test_time_law_density_and_importance_identity(name, opts, sched):
    # §1.3: E_{t∼p}[h(t)/p(t)] = ∫ h dt (footnote of Sec. 6.2.2), and ∫ p dt = 1 (quadrature)
    integrate = pytest.importorskip("scipy.integrate")
    sched = S.get(sched)
    law = TS.get(name, **opts)
    lo, hi = law.range(sched)
    dens = lambda t: float(law.density(torch.tensor([t], dtype=F64), sched)[0])  # noqa: E731
    # integrate in u = log t (the laws are spread over decades of t); the density at t is dens(t)·t in u
    if lo > 0:
        total = integrate.quad(lambda u: dens(math.exp(u)) * math.exp(u), math.log(lo), math.log(hi), limit=400,
                               epsabs=1e-11, epsrel=1e-10)[0]
    else:
        total = integrate.quad(dens, lo, hi, limit=400, epsabs=1e-11, epsrel=1e-10)[0]
    assert total == pytest.approx(1.0, abs=1e-7)

    def h(t):  # a smooth positive integrand: the Gaussian minimal ε-loss times (1 + t)
        return GAUSS.min_loss(t, sched, "eps") * (1 + t)

    n = 20_000
    t = law.sample(n, sched, _gen(1))
    assert float(t.min()) >= lo and float(t.max()) <= hi
    est = h(t) / law.density(t, sched)
    ref = integrate.quad(lambda u: float(h(torch.tensor([math.exp(u)], dtype=F64))[0]) * math.exp(u),
                         math.log(max(lo, 1e-300)), math.log(hi), limit=400, epsrel=1e-10)[0] if lo > 0 else \
        integrate.quad(lambda s: float(h(torch.tensor([s], dtype=F64))[0]), lo, hi, limit=400, epsrel=1e-10)[0]
    _mc(est, ref, f"{name} importance identity")


def test_discrete_and_stratified_laws():
    sched = losses.ddpm_schedule()
    law = TS.Discrete(first=2)
    t = law.sample(5000, sched, _gen(2))
    idx = torch.round(t * 1000)
    assert torch.equal(t, idx / 1000) and float(idx.min()) >= 2 and float(idx.max()) <= 1000
    assert float(law.density(t[:3], sched)[0]) == pytest.approx(1 / 999)
    torch.testing.assert_close(law.previous(t, sched), (idx - 1) / 1000, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="grid"):
        law.index(torch.tensor([0.0105], dtype=F64), sched)
    # NCSN levels on VE: σ_i = σ_min (σ_max/σ_min)^{(i−1)/(L−1)}
    ve = S.VE()
    lv = TS.Discrete(L=10).levels(ve)
    torch.testing.assert_close(ve.sigma(lv), 0.01 * (5000.0 ** (torch.arange(10, dtype=F64) / 9)), rtol=1e-13, atol=0)
    # stratified: one point in each of B equal strata
    ts = TS.Stratified().sample(16, "rf", _gen(3))
    lo, hi = TS.training_range("rf")
    frac = torch.sort((ts - lo) / (hi - lo)).values
    torch.testing.assert_close(frac[1:] - frac[:-1], torch.full((15,), 1 / 16, dtype=F64), rtol=0, atol=1e-12)


def test_time_law_errors():
    with pytest.raises(ValueError, match="unknown law"):
        TS.get("gamma")
    with pytest.raises(TypeError, match="uniform"):
        TS.get("uniform", mean=3)
    with pytest.raises(ValueError, match="t_min < t_max"):
        TS.Uniform(t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="finite half log-SNR"):
        TS.UniformLambda().sample(4, "vp_cosine")  # λ(1) = −∞ on the cosine schedule
    with pytest.raises(ValueError, match="t_min, t_max"):
        TS.Uniform(t_max=2.0).sample(4, "vp_linear")
    with pytest.raises(ValueError, match="L"):
        TS.Discrete().sample(3, "vp_linear")
    with pytest.raises(ValueError, match="p_std"):
        TS.LogNormalSigma(p_std=0.0)


# ------------------------------------------------------------ §5.1 minimal losses, fixed t ----
def _bridge_oracle(sigma, G=GAUSS):
    """Exact E[target | x_t] and minimal loss of the bridge CFM (diffusion time on the linear path):
    x_t = (1−t)x0 + tε + cξ, target = ε − x0 + ċξ, c = σ√(t(1−t)), ċ = σ(1−2t)/(2√(t(1−t)))."""
    I = torch.eye(G.dim, dtype=F64)

    def parts(t):
        c = sigma * math.sqrt(t * (1 - t))
        dc = sigma * (1 - 2 * t) / (2 * math.sqrt(t * (1 - t)))
        Sx = (1 - t) ** 2 * G.cov + (t * t + c * c) * I
        C = -(1 - t) * G.cov + (t + c * dc) * I  # Cov(target, x_t)
        VT = G.cov + (1 + dc * dc) * I
        return Sx, C, VT

    def net(x, tt):
        t = float(tt[0])
        Sx, C, _ = parts(t)
        return -MEAN + (x - (1 - t) * MEAN) @ torch.linalg.solve(Sx, C).T

    def min_loss(t):
        Sx, C, VT = parts(t)
        return float(torch.trace(VT - C @ torch.linalg.solve(Sx, C.T)))

    return net, min_loss


def _fixed_t_cases():
    ddpm = losses.ddpm_schedule()
    acp = ddpm.alphas_cumprod
    i = 300  # training step i (1-based): t_i = i/1000, ᾱ_i = acp[i−1]
    snr = acp / (1 - acp)
    w_elbo = 0.5 * (float(snr[i - 2]) / float(snr[i - 1]) - 1)
    vp, edm, ve, rf = S.VPLinear(), S.EDM(), S.VE(), S.RectifiedFlow()
    t = 0.4

    def ab(sched, tt):
        v = sched.eval(torch.tensor([tt], dtype=F64))
        return float(v.alpha[0]), float(v.sigma[0]), float(v.dlam[0]), v

    a, s, dl, _ = ab(vp, t)
    ad, _, _, _ = ab(ddpm, i / 1000)
    _, se_, _, ve_ = ab(edm, 0.7)
    c_out = float(edm_precond_coefs(ve_, 0.5)[1][0])
    lv = float(TS.Discrete(L=10).levels(ve)[4])
    cases = [
        ("ddpm_simple", {}, ddpm, "eps", i / 1000, ad * ad * _m(i / 1000, ddpm)),
        ("ddpm_elbo", {"importance": False}, ddpm, "eps", i / 1000, w_elbo * ad * ad * _m(i / 1000, ddpm)),
        ("eps", {}, vp, "eps", t, a * a * _m(t, vp)),
        ("x0", {}, vp, "x0", t, s * s * _m(t, vp)),
        ("v", {}, vp, "v", t, _m(t, vp)),  # (α² + σ²)² m = m on VP
        ("score", {}, vp, "score", t, 0.5 * a * a * _m(t, vp)),  # ½σ²·(α²/σ²)m
        ("ncsn", {"importance": False}, ve, "score", lv, 0.5 * _m(lv, ve)),
        ("likelihood", {"importance": False}, vp, "eps", t, -dl * a * a * _m(t, vp)),
        ("edm", {}, edm, "edm", 0.7, se_ * se_ * _m(0.7, edm) / c_out ** 2),
        ("min_snr", {}, vp, "eps", t, min(1.0, 5.0 * s * s / (a * a)) * a * a * _m(t, vp)),
        ("min_snr", {"prediction": "x0", "gamma": 2.0}, vp, "x0", t, min(a * a / (s * s), 2.0) * s * s * _m(t, vp)),
        ("edm", {"schedule": vp, "time": "uniform"}, vp, "edm", t,
         s * s * _m(t, vp) * (a * a * 0.25 + s * s) / (s * s * 0.25)),
    ]
    for path, sched in (("linear", rf), ("ot", S.OTSigmaMin(1e-4)), ("vp", vp), ("ve", ve), ("trig", S.Trig())):
        v = sched.eval(torch.tensor([t], dtype=F64))
        delta = float(v.dalpha[0] * v.sigma[0] - v.alpha[0] * v.dsigma[0])
        cases.append(("cfm", {"path": path}, sched, "velocity", t, delta * delta * _m(t, sched)))
    return cases


FIXED = _fixed_t_cases()


@pytest.mark.parametrize("case", range(len(FIXED)), ids=[f"{c[0]}-{i}" for i, c in enumerate(FIXED)])
def test_preset_reaches_gaussian_minimum_at_fixed_t(case):
    # §5.1: with the exact predictor, E[per-sample loss at t] = ω(t)·(Aσ − Bα)²·m(t) (sum convention)
    name, opts, sched, head, t, expected = FIXED[case]
    loss = losses.get(name, **opts)
    assert type(loss.schedule) is type(sched)
    n = 6000
    x0 = GAUSS.sample(n, _gen(10 + case))
    per = loss.per_sample(_oracle(loss.schedule, head), x0, generator=_gen(100 + case), t=t)
    _mc(per, expected, name)
    # ... and Gaussian.min_loss (the oracle addition) agrees with the test's own m(t) formula
    if name not in ("ddpm_elbo", "likelihood", "score", "ncsn", "min_snr") and not (name == "edm" and opts):
        assert float(GAUSS.min_loss(t, loss.schedule, head)) == pytest.approx(expected, rel=1e-12)


def test_bridge_cfm_reaches_its_minimum():
    net, min_loss = _bridge_oracle(0.6)
    loss = losses.get("cfm", path="bridge", sigma=0.6)
    for j, t in enumerate((0.2, 0.55)):
        x0 = GAUSS.sample(6000, _gen(20 + j))
        _mc(loss.per_sample(net, x0, generator=_gen(30 + j), t=t), min_loss(t), f"bridge t={t}")


def test_sliced_score_reaches_gaussian_minimum():
    # §3.3: with the exact score, E[uᵀ∇s u + ½(uᵀs)²] = −Tr S⁻¹ + ½Tr S⁻¹ = −½ Tr S_t⁻¹
    sched = S.VPLinear()
    t = 0.3
    v = sched.eval(torch.tensor([t], dtype=F64))
    St = v.alpha[0] ** 2 * COV + v.sigma[0] ** 2 * torch.eye(3, dtype=F64)
    expected = -0.5 * float(torch.trace(torch.linalg.inv(St)))
    for probe, exact in (("rademacher", False), ("gaussian", False), ("rademacher", True)):
        loss = losses.get("sliced_score", probe=probe, exact_norm=exact)
        per = loss.per_sample(_oracle(sched, "score"), GAUSS.sample(6000, _gen(40)), generator=_gen(41), t=t)
        _mc(per, expected, f"SSM {probe} exact_norm={exact}")


# ------------------------------------------------------- §5.1 minima integrated over p_time ----
def test_integrated_losses_match_quadrature():
    integrate = pytest.importorskip("scipy.integrate")
    n = 20_000
    x0 = GAUSS.sample(n, _gen(50))
    vp = S.VPLinear()
    # likelihood weighting: ∫ (−λ') α² m dt = ∫ α² m dλ over [λ(t_max), λ(t_min)] (§3.4)
    loss = losses.get("likelihood")
    lo, hi = loss.time_law.range(vp)
    l_lo, l_hi = float(vp.lam(torch.tensor([hi], dtype=F64))), float(vp.lam(torch.tensor([lo], dtype=F64)))
    f = lambda lam: float(GAUSS.min_loss(vp.t_of_lam(torch.tensor([lam], dtype=F64)), vp, "eps")[0])  # noqa: E731
    ref = integrate.quad(f, l_lo, l_hi, limit=200, epsrel=1e-10)[0]
    _mc(loss.per_sample(_oracle(vp, "eps"), x0, generator=_gen(51)), ref, "likelihood")
    # ... the same objective sampled uniformly in t (importance weights 1/p = t_max − t_min)
    loss_u = losses.get("likelihood", time="uniform", prediction="x0")
    _mc(loss_u.per_sample(_oracle(vp, "x0"), x0, generator=_gen(52)), ref, "likelihood, uniform t, x0 head")
    # DDPM ELBO: exact sum Σ_{i=2}^{L} w_i ᾱ_i m(t_i)
    ddpm = losses.ddpm_schedule()
    acp = ddpm.alphas_cumprod
    snr = acp / (1 - acp)
    ts = torch.arange(2, 1001, dtype=F64) / 1000
    w = 0.5 * (snr[:-1] / snr[1:] - 1)
    ref = float((w * GAUSS.min_loss(ts, ddpm, "eps")).sum())
    _mc(losses.get("ddpm_elbo").per_sample(_oracle(ddpm, "eps"), x0, generator=_gen(53)), ref, "ddpm_elbo")
    # CFM on the linear path, uniform t: ∫ Δ² m dt with Δ = −1
    rf = S.RectifiedFlow()
    loss = losses.get("cfm")
    lo, hi = loss.time_law.range(rf)
    ref = integrate.quad(lambda t: _m(t, rf), lo, hi, limit=200, epsrel=1e-10)[0] / (hi - lo)
    _mc(loss.per_sample(_oracle(rf, "velocity"), x0, generator=_gen(54)), ref, "cfm linear")
    # NCSN: Σ_i ½ m(σ_i) over the 10 levels (importance = ×L)
    ve = S.VE()
    lv = TS.Discrete(L=10).levels(ve)
    ref = float((0.5 * GAUSS.min_loss(lv, ve, "eps")).sum())
    _mc(losses.get("ncsn").per_sample(_oracle(ve, "score"), x0, generator=_gen(55)), ref, "ncsn")


def test_edm_isotropic_data_minimum_is_D():
    # §4.6 oracle (2): for p_data = N(0, σ_d² I), x0* = c_skip x, F* ≡ 0, minimal loss ω c_out² D = D
    sd, D = 0.5, 4
    G = oracles.Gaussian(torch.zeros(D, dtype=F64), sd ** 2)
    edm = S.EDM()
    t = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=F64)
    x = torch.randn(5, D, generator=_gen(60), dtype=F64)
    c_skip = edm_precond_coefs(edm.eval(t), sd)[0]
    torch.testing.assert_close(G.denoiser(x, t, edm), c_skip[:, None] * x, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(G.min_loss(t, edm, "edm"), torch.full_like(t, float(D)), rtol=1e-12, atol=0)
    loss = losses.get("edm")
    per = loss.per_sample(lambda x_in, c: torch.zeros_like(x_in), G.sample(20_000, _gen(61)), generator=_gen(62))
    _mc(per, D, "edm, F = 0")


# ------------------------------------------------------------------------- EDM identities §4.6 ----
def test_edm_unit_variance_limits_and_sampling_model():
    sd = 0.5
    sched = S.VPCosine()
    t = torch.tensor([0.05, 0.3, 0.6, 0.9], dtype=F64)
    v = sched.eval(t)
    c_skip, c_out, c_in, c_noise = edm_precond_coefs(v, sd)
    # (1) unit variance of the input and of F_tgt for data of variance σ_d² (exact covariance algebra)
    a, s = v.alpha, v.sigma
    torch.testing.assert_close(c_in ** 2 * (a * a * sd ** 2 + s * s), torch.ones_like(t), rtol=1e-14, atol=0)
    A, B = paths.AffinePath(sched).coefficients(t, "edm", sd)
    torch.testing.assert_close(A * A * sd ** 2 + B * B, torch.ones_like(t), rtol=1e-13, atol=0)
    # ... and by Monte Carlo through the loss's own target (F ≡ 0 ⇒ per-sample = ‖F_tgt‖², D = 2)
    loss = losses.DiffusionLoss(sched, prediction="edm", sigma_data=sd)
    x0 = sd * torch.randn(20_000, 2, generator=_gen(63), dtype=F64)
    _mc(loss.per_sample(lambda x, c: torch.zeros_like(x), x0, generator=_gen(64), t=0.4), 2.0, "Var F_tgt")
    # (3) limits on EDM (α = 1): c_skip → 1, c_out → 0 as σ → 0; c_skip → 0, c_out → σ_d as σ → ∞
    cs, co, _, _ = edm_precond_coefs(S.EDM().eval(torch.tensor([1e-9, 1e9], dtype=F64)), sd)
    assert float(cs[0]) == pytest.approx(1, abs=1e-15) and float(co[0]) == pytest.approx(0, abs=1e-8)
    assert float(cs[1]) == pytest.approx(0, abs=1e-15) and float(co[1]) == pytest.approx(sd, rel=1e-15)
    # sampling model: c_skip x + c_out F(c_in x, c_noise), the same F the loss trained
    F = lambda x, c: torch.tanh(x) * (1 + c[:, None])  # noqa: E731
    model = loss.sampling_model(F)
    x = torch.randn(4, 2, generator=_gen(65), dtype=F64)
    want = c_skip[:, None] * x + c_out[:, None] * F(c_in[:, None] * x, c_noise)
    torch.testing.assert_close(model(x, t), want, rtol=1e-12, atol=1e-12)
    # per-sample F-loss = ω_F‖F − F_tgt‖² = ‖x̂0 − x0‖²/c_out² through the wrapper (eq. D.6.2)
    eps = torch.randn(4, 2, generator=_gen(66), dtype=F64)
    x0 = torch.randn(4, 2, generator=_gen(67), dtype=F64)
    xt = a[:, None] * x0 + s[:, None] * eps
    per = loss.per_sample(F, x0, t=t, noise=eps)
    torch.testing.assert_close(per, ((model(xt, t) - x0) ** 2).sum(1) / c_out ** 2, rtol=1e-10, atol=1e-12)


def test_edm_sampling_model_drives_the_sampler():
    # the wrapped exact F* reproduces the Gaussian PF-ODE map through diffcore.sample
    loss = losses.get("edm")
    F = _oracle(loss.schedule, "edm")
    xT = 80.0 * torch.randn(64, 3, generator=_gen(68), dtype=F64)
    out = diffcore.sample(loss.sampling_model(F), xT, schedule=loss.schedule, solver="unipc_3", steps=40,
                          prediction=loss.prediction)
    ref = GAUSS.flow_map(xT, 80.0, 0.0, loss.schedule)
    assert float((out - ref).abs().max()) < 1e-2  # solver error (2.5e-3 observed)


# ---------------------------------------------------------------- §4.3 tied heads, §4.4 weights ----
def _eps_net(x, t):
    return torch.tanh(x @ torch.tensor([[0.7, -0.2, 0.1], [0.3, 0.5, -0.4], [0.0, 0.2, 0.9]], dtype=F64)) * \
        (1 + t[:, None]) + 0.1 * x


@pytest.mark.parametrize("sched_name", ["vp_linear", "rf", "edm"])
def test_tied_heads_give_equal_per_sample_losses(sched_name):
    # §4.3 oracle: with heads tied by §4.2, every named objective has the same per-sample value on every head
    sched = S.get(sched_name)
    g = _gen(70)
    B = 32
    x0, eps = torch.randn(B, 3, generator=g, dtype=F64), torch.randn(B, 3, generator=g, dtype=F64)
    lo, hi = TS.training_range(sched)
    t = lo + (hi - lo) * (0.02 + 0.96 * torch.rand(B, generator=g, dtype=F64))
    heads = ["eps", "x0", "score", "velocity"] + (["v"] if sched.kind == "vp" else [])

    def tied(head):
        return lambda x, tt: convert(_eps_net(x, tt), x, tt, sched, "eps", head)

    def tied_edm(x_in, c_noise):  # the raw F whose denoiser is the tied x̂0
        tt = sched.t_of_lam(-4 * c_noise)
        v = sched.eval(tt)
        c_skip, c_out, c_in, _ = edm_precond_coefs(v, 0.5)
        x = x_in / c_in[:, None]
        return (convert(_eps_net(x, tt), x, tt, sched, "eps", "x0") - c_skip[:, None] * x) / c_out[:, None]

    names = ["eps", "x0", "velocity", "likelihood", "score_sde", "min_snr", "edm"] + (["v"] if sched.kind == "vp" else [])
    for w in names:
        ref = losses.DiffusionLoss(sched, "eps", weighting=w).per_sample(tied("eps"), x0, t=t, noise=eps)
        for head in heads[1:]:
            per = losses.DiffusionLoss(sched, head, weighting=w).per_sample(tied(head), x0, t=t, noise=eps)
            torch.testing.assert_close(per, ref, rtol=1e-12, atol=0, msg=f"{w} on {head}")
        per = losses.DiffusionLoss(sched, "edm", weighting=w).per_sample(tied_edm, x0, t=t, noise=eps)
        torch.testing.assert_close(per, ref, rtol=1e-12, atol=0, msg=f"{w} on edm")


def test_eps_weight_factors_match_the_spec_table():
    # §4.3/§4.4: w_ε = ω_x e^{−2λ}, ω_s/σ², ω_v σ²λ'², angular v 1 + e^{−2λ} (VP), EDM F 1 + e^{−2λ}/σ_d²
    sched = S.VPLinear()
    t = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=F64)
    v = sched.eval(t)
    lam, dl, s = v.lam, v.dlam, v.sigma
    f = losses.eps_weight_factor
    torch.testing.assert_close(f("x0", v), torch.exp(-2 * lam), rtol=1e-12, atol=0)
    torch.testing.assert_close(f("score", v), 1 / s ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(f("velocity", v), s ** 2 * dl ** 2, rtol=1e-11, atol=0)
    torch.testing.assert_close(f("v", v), 1 + torch.exp(-2 * lam), rtol=1e-12, atol=0)
    torch.testing.assert_close(f("edm", v, 0.5), 1 + torch.exp(-2 * lam) / 0.25, rtol=1e-12, atol=0)
    torch.testing.assert_close(losses.native_weight(losses.eps_weight(2.5, "x0", v), "x0", v),
                               torch.full_like(t, 2.5), rtol=1e-14, atol=0)
    rf = S.RectifiedFlow().eval(t)  # S6: velocity loss ⇔ w_ε = 1/(1 − t)² = (1 + e^{−λ})²
    torch.testing.assert_close(f("velocity", rf), 1 / (1 - t) ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(f("velocity", rf), (1 + torch.exp(-rf.lam)) ** 2, rtol=1e-12, atol=0)


# -------------------------------------------------------------------------------- DDPM §3.2 ----
def test_ddpm_elbo_weight_identities():
    # §3.2 oracle (2): w^ε_i = β_i²/(2α_i²(1 − ᾱ_{i−1}²)) = ½(SNR_{i−1}/SNR_i − 1) (book std notation, written
    # in variances), = the ELBO weighting of the loss, = likelihood.ddpm_coefficients; w^x_i = ½(SNR_{i−1} − SNR_i)
    sched = losses.ddpm_schedule()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    acp = torch.cumprod(1 - betas, 0)
    i = torch.arange(2, 1001)
    w_var = betas[i - 1] / (2 * (1 - betas[i - 1]) * (1 - acp[i - 2]))
    snr = acp / (1 - acp)
    w_snr = 0.5 * (snr[i - 2] / snr[i - 1] - 1)
    torch.testing.assert_close(w_var, w_snr, rtol=1e-12, atol=0)
    loss = losses.get("ddpm_elbo", importance=False)
    t = i.to(F64) / 1000
    w_loss = losses.WEIGHTINGS["elbo"](sched.eval(t), t, loss)
    torch.testing.assert_close(w_loss, w_snr, rtol=1e-10, atol=0)
    w_lik = diffcore.likelihood.ddpm_coefficients(sched).w_eps[1:]
    torch.testing.assert_close(w_lik, w_snr, rtol=1e-10, atol=0)
    # the x0-form: per-sample ELBO term with an x0 head = ½(SNR_{i−1} − SNR_i)‖x̂0 − x0‖²
    g = _gen(71)
    B = 50
    ts = i[torch.randint(0, 999, (B,), generator=g)].to(F64) / 1000
    x0, eps = torch.randn(B, 3, generator=g, dtype=F64), torch.randn(B, 3, generator=g, dtype=F64)
    net = lambda x, tt: 0.8 * x + 0.1  # noqa: E731
    per = losses.get("ddpm_elbo", prediction="x0", importance=False).per_sample(net, x0, t=ts, noise=eps)
    k = torch.round(ts * 1000).long()
    v = sched.eval(ts)
    xt = v.alpha[:, None] * x0 + v.sigma[:, None] * eps
    want = 0.5 * (snr[k - 2] - snr[k - 1]) * ((net(xt, ts) - x0) ** 2).sum(1)
    torch.testing.assert_close(per, want, rtol=1e-9, atol=0)
    # §3.2 oracle (3): point-mass data with the exact predictor: every diffusion KL term is zero
    point = oracles.EmpiricalData(torch.tensor([[0.4, -1.0, 2.0]], dtype=F64))
    xb = point.points.expand(B, 3)
    per = losses.get("ddpm_elbo").per_sample(lambda x, tt: point.eps(x, tt, sched), xb, generator=g)
    assert float(per.abs().max()) < 1e-12
    with pytest.raises(ValueError, match="first"):
        losses.get("ddpm_elbo", time_options={"first": 1})


# -------------------------------------------------- §3.6 FM/CFM and SM/DSM gradient equivalence ----
def _linear_model(D, g):
    W = (0.3 * torch.randn(D, D, generator=g, dtype=F64)).requires_grad_(True)
    b = (0.1 * torch.randn(D, generator=g, dtype=F64)).requires_grad_(True)
    c = (0.1 * torch.randn(D, generator=g, dtype=F64)).requires_grad_(True)
    return (W, b, c), (lambda x, t: x @ W + b + t[:, None] * c)


@pytest.mark.parametrize("kind", ["cfm", "dsm"])
def test_conditional_and_marginal_gradients_agree_exactly(kind):
    # §3.6 oracle (1), deterministic: fixed x_t samples, the conditional loss with the inner expectation over
    # x0 | x_t done exactly by posterior weights has the gradient of the marginal loss (exact target)
    g = _gen(72)
    N, D, M = 5, 2, 24
    data = oracles.EmpiricalData(1.5 * torch.randn(N, D, generator=g, dtype=F64), 0.5 + torch.rand(N, generator=g))
    if kind == "cfm":
        loss, head, sched = losses.get("cfm", path="linear"), "velocity", S.RectifiedFlow()
    else:
        loss, head, sched = losses.DiffusionLoss("vp_linear", "score"), "score", S.VPLinear()
    t = 0.1 + 0.8 * torch.rand(M, generator=g, dtype=F64)
    x = data.sample_marginal(M, t, sched, g)
    r = data.posterior(x, t, sched)
    params, net = _linear_model(D, g)
    v = sched.eval(t)
    L_cond = 0
    for k in range(N):
        xk = data.points[k].expand(M, D)
        eps_k = (x - v.alpha[:, None] * xk) / v.sigma[:, None]  # the ε that puts x0 = x_k at x_t = x
        L_cond = L_cond + (r[:, k] * loss.per_sample(net, xk, t=t, noise=eps_k)).mean()
    target = data.predict(x, t, sched, head)
    L_marg = ((net(x, t) - target) ** 2).sum(1).mean()
    g_cond = torch.autograd.grad(L_cond, params)
    g_marg = torch.autograd.grad(L_marg, params)
    for a, b in zip(g_cond, g_marg):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the gap is the φ-independent E Tr Cov[target | x_t] (§3.6 (3)/(4)): compute it from the posterior
    conds = torch.stack([paths.AffinePath(sched).conditional_velocity(x, data.points[k].expand(M, D), t) if kind == "cfm"
                         else paths.AffinePath(sched).conditional_score(x, data.points[k].expand(M, D), t)
                         for k in range(N)], 1)
    gap = (r * ((conds - target[:, None]) ** 2).sum(-1)).sum(1).mean()
    torch.testing.assert_close(L_cond.detach() - L_marg.detach(), gap, rtol=1e-10, atol=1e-12)


def test_cfm_without_coupling_is_the_velocity_loss():
    g = _gen(73)
    x0, eps = torch.randn(10, 2, 3, generator=g, dtype=F64), torch.randn(10, 2, 3, generator=g, dtype=F64)
    t = torch.rand(10, generator=g, dtype=F64)
    net = lambda x, tt: torch.sin(x) * tt[:, None, None]  # noqa: E731
    for path, sched in (("linear", "rf"), ("trig", "trig"), ("vp", "vp_linear")):
        a = losses.get("cfm", path=path).per_sample(net, x0, t=t.clamp(min=1e-3), noise=eps)
        b = losses.DiffusionLoss(sched, "velocity").per_sample(net, x0, t=t.clamp(min=1e-3), noise=eps)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------- sliced score §3.3 ----
def test_sliced_score_linear_model_is_exact_and_unbiased():
    # §3.3 oracles: averaging over all u ∈ {±1}^D gives Tr ∇s + ½‖s‖² per sample exactly; Gaussian probes are
    # unbiased for J(P, m) = −Tr P + ½Tr(PᵀP S) + ½‖P(αμ − m)‖² on the noisy marginal N(αμ, S_t)
    D = 3
    P = torch.tensor([[1.2, 0.3, -0.1], [0.1, 0.8, 0.2], [-0.2, 0.0, 1.5]], dtype=F64)
    mm = torch.tensor([0.1, 0.2, -0.3], dtype=F64)
    net = lambda x, t: -(x - mm) @ P.T  # noqa: E731
    sched = S.VPLinear()
    t = 0.2
    loss = losses.SlicedScoreLoss(sched, probe="rademacher", n_probes=2 ** D)
    signs = torch.tensor([[1 - 2 * ((k >> j) & 1) for j in range(D)] for k in range(2 ** D)], dtype=F64)
    it = iter(range(2 ** D))
    loss._probe = lambda x, generator: signs[next(it)].expand_as(x).clone()
    x0 = torch.randn(7, D, generator=_gen(74), dtype=F64)
    eps = torch.randn(7, D, generator=_gen(75), dtype=F64)
    v = sched.eval(torch.tensor([t], dtype=F64))
    xt = v.alpha * x0 + v.sigma * eps
    s = net(xt, None)
    want = -torch.trace(P) + 0.5 * (s * s).sum(1)
    torch.testing.assert_close(loss.per_sample(net, x0, t=t, noise=eps), want, rtol=1e-12, atol=1e-12)
    St = v.alpha[0] ** 2 * COV + v.sigma[0] ** 2 * torch.eye(D, dtype=F64)
    dm = v.alpha[0] * MEAN - mm
    J = -torch.trace(P) + 0.5 * torch.trace(P.T @ P @ St) + 0.5 * float(((P @ dm) ** 2).sum())
    x0 = GAUSS.sample(20_000, _gen(76))
    for probe in ("gaussian", "rademacher"):
        per = losses.SlicedScoreLoss(sched, probe=probe).per_sample(net, x0, generator=_gen(77), t=t)
        _mc(per, J, f"SSM {probe}")


def test_sliced_score_gradients_reach_the_parameters():
    W = torch.eye(2, dtype=F64).requires_grad_(True)
    net = lambda x, t: -(x @ W) ** 3  # noqa: E731
    val = losses.get("sliced_score")(net, torch.randn(8, 2, generator=_gen(78), dtype=F64), generator=_gen(79))
    (gW,) = torch.autograd.grad(val, W)
    assert torch.isfinite(gW).all() and float(gW.abs().sum()) > 0


# ------------------------------------------------------------------------------- reflow §3.7 ----
def test_reflow_with_exact_gaussian_velocity():
    # §3.7 oracle (1): Rectify with the exact velocity maps the prior onto the data law (here: pairs equal the
    # closed-form PF-ODE map); (2) in 1-D that map is the monotone affine (OT) map and the next reflow is
    # straight: the reflow loss with the straight-line velocity vanishes; Prop. 5.4.1: the cost drops
    rf = S.RectifiedFlow()
    G1 = oracles.Gaussian(torch.tensor([1.5], dtype=F64), torch.tensor([[0.36]], dtype=F64))
    model = lambda x, t: G1.velocity(x, t, rf)  # noqa: E731
    z0, z1 = losses.reflow_pairs(model, 256, rf, shape=(1,), steps=64, generator=_gen(80), dtype=F64,
                                 batch_size=100)  # Heun: error 4e-3 at 24 steps, 9e-4 at 48 (second order)
    torch.testing.assert_close(z1, G1.flow_map(z0, 1.0, 0.0, rf), rtol=0, atol=1e-3)
    torch.testing.assert_close(z1, 1.5 + 0.6 * z0, rtol=0, atol=1e-3)  # monotone affine = OT map in 1-D
    # the straight velocity of the pairs: z0 − z1 with z0 = (x − (1 − t)·1.5)/((1 − t)·0.6 + t)
    straight = lambda x, t: (1 - 0.6) * (x - (1 - t)[:, None] * 1.5) / ((1 - t) * 0.6 + t)[:, None] - 1.5  # noqa
    loss = losses.get("reflow")
    per = loss.per_sample(straight, (z0, z1), generator=_gen(81))
    assert float(per.max()) < 1e-5  # O(ODE error²)
    c = ((z1 - z0) ** 2).sum(1)  # Prop. 5.4.1: below the independent coupling's E‖x0 − ε‖² = Var + mean² + 1
    assert float(c.mean()) + K_SE * float(c.std()) / math.sqrt(c.numel()) < 0.36 + 1.5 ** 2 + 1
    with pytest.raises(ValueError, match="z0"):
        loss.per_sample(straight, z1)
    with pytest.raises(ValueError, match="shape"):
        losses.reflow_pairs(model, 4, rf)


# ------------------------------------------------------------------------------ couplings ----
class _Reverse:
    """A coupling object with pair(): pairs source i with target B − 1 − i."""

    def pair(self, y0, y1, generator=None):
        B = y0.shape[0]
        return torch.arange(B), torch.arange(B - 1, -1, -1)


def test_cfm_coupling_plumbing():
    seen = {}

    def net(x, t, labels=None):
        seen["x"], seen["labels"] = x, labels
        return torch.zeros_like(x)

    g = _gen(82)
    x0, eps = torch.randn(6, 2, generator=g, dtype=F64), torch.randn(6, 2, generator=g, dtype=F64)
    labels = torch.arange(6)
    t = torch.full((6,), 0.3, dtype=F64)
    per = losses.get("cfm", coupling=_Reverse()).per_sample(net, x0, labels=labels, t=t, noise=eps)
    x1 = x0.flip(0)
    torch.testing.assert_close(seen["x"], 0.7 * x1 + 0.3 * eps, rtol=0, atol=1e-15)
    assert torch.equal(seen["labels"], labels.flip(0))
    torch.testing.assert_close(per, ((eps - x1) ** 2).sum(1), rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="coupling_options"):
        losses.get("cfm", coupling_options={"eps": 0.1})
    with pytest.raises(TypeError, match="coupling"):
        losses.get("cfm", coupling=3)
    with pytest.raises(ValueError, match="sigma"):
        losses.get("cfm", path="bridge")


def test_cfm_named_couplings():
    # string couplings resolve lazily through diffcore.coupling; the SB coupling gives the bridge its σ
    coupling = pytest.importorskip("diffcore.coupling")
    pytest.importorskip("diffcore.ot")
    g = _gen(90)
    x0 = torch.randn(6, 2, generator=g, dtype=F64)
    net = lambda x, t, labels=None: torch.zeros_like(x)  # noqa: E731
    loss = losses.get("cfm", coupling="exact")
    assert isinstance(loss.coupling, coupling.ExactOT)
    assert float(loss(net, x0, generator=g)) > 0
    loss = losses.get("cfm", path="bridge", coupling="sb", coupling_options={"sigma": 0.3})
    assert loss.path.bridge_sigma == 0.3
    assert float(loss(net, x0, labels=torch.tensor([0, 1, 0, 1, 0, 1]), generator=g)) > 0


# ----------------------------------------------------------------------------- Poisson flow ----
def test_poisson_flow_targets():
    g = _gen(83)
    B = 12
    x0 = torch.randn(B, 2, 2, generator=g, dtype=F64)
    t = 0.2 + torch.rand(B, generator=g, dtype=F64)
    z = paths.poisson_sample(torch.zeros_like(x0), 1.0, generator=g)[1]
    zero = lambda x, tt, labels=None: torch.zeros_like(x)  # noqa: E731
    per = losses.get("poisson_flow").per_sample(zero, x0, t=t, noise=z)
    torch.testing.assert_close(per, (z * z).reshape(B, -1).sum(1), rtol=1e-14, atol=0)
    # minibatch target with the whole dataset as the batch = the exact finite-dataset field (§2.4 (iv))
    loss = losses.get("poisson_flow", target="minibatch")
    xt = x0 + t[:, None, None] * z
    field = paths.poisson_field(xt, t, x0)
    seen = {}

    def rec(x, tt):
        seen["x"] = x
        return field

    per = loss.per_sample(rec, x0, t=t, noise=z)
    torch.testing.assert_close(seen["x"], xt, rtol=0, atol=1e-14)
    assert float(per.abs().max()) == 0.0
    # class-conditional: the minibatch field runs within each class
    labels = torch.tensor([0, 1, 2] * 4)
    per = loss.per_sample(zero, x0, labels=labels, t=t, noise=z)
    want = torch.empty_like(xt)
    for c in range(3):
        idx = labels == c
        want[idx] = paths.poisson_field(xt[idx], t[idx], x0[idx])
    torch.testing.assert_close(per, (want * want).reshape(B, -1).sum(1), rtol=1e-12, atol=0)
    assert loss.schedule.sigma_max == 80.0 and loss.prediction == "velocity"
    assert loss.prior_sample((3, 2, 2), generator=g).shape == (3, 2, 2)
    t_draw = loss.time_law.sample(1000, loss.schedule, g)
    assert float(t_draw.min()) >= 0.002 and float(t_draw.max()) <= 80.0
    with pytest.raises(ValueError, match="target"):
        losses.get("poisson_flow", target="exact")
    with pytest.raises(ValueError, match="weighting"):
        losses.get("poisson_flow", weighting="likelihood")


# ---------------------------------------------------------------------- interface and errors ----
def test_generator_reproducibility_labels_reduction_and_learned_weights():
    x0 = torch.randn(16, 3, 4, generator=_gen(84))
    calls = []

    def net(x, t, labels=None):
        calls.append(labels)
        assert t.dtype == x.dtype and t.shape == (x.shape[0],)
        return 0.5 * x

    for name in losses.available():
        if name == "reflow":
            continue
        loss = losses.get(name)
        torch.manual_seed(0)
        a = loss(net, x0, generator=_gen(5))
        torch.manual_seed(123)  # the global RNG must not matter
        b = loss(net, x0, generator=_gen(5))
        assert torch.equal(a, b), name
        assert a.dim() == 0 and torch.isfinite(a), name
    assert all(c is None for c in calls)
    loss = losses.get("eps")
    loss(net, x0, labels=torch.arange(16), generator=_gen(1))
    assert torch.equal(calls[-1], torch.arange(16))
    mean = losses.get("eps", reduction="mean").per_sample(net, x0, generator=_gen(2))
    torch.testing.assert_close(mean * 12, loss.per_sample(net, x0, generator=_gen(2)), rtol=1e-6, atol=1e-6)
    # learned weights: a callable returning (weight, additive term), EDM2-style e^{−u}‖·‖² + u
    u = lambda t: 0.3 * t  # noqa: E731
    lw = losses.get("eps", weighting=lambda t: (torch.exp(-u(t)), u(t)))
    t = torch.rand(16, generator=_gen(3), dtype=torch.float64) * 0.9 + 0.05
    want = torch.exp(-u(t)).float() * loss.per_sample(net, x0, t=t, noise=torch.zeros_like(x0)) + u(t).float()
    torch.testing.assert_close(lw.per_sample(net, x0, t=t, noise=torch.zeros_like(x0)), want, rtol=1e-5, atol=1e-6)
    # importance = division by p_time(t): uniform on [lo, hi] multiplies by hi − lo
    imp = losses.get("eps", importance=True)
    lo, hi = imp.time_law.range(imp.schedule)
    torch.testing.assert_close(imp.per_sample(net, x0, t=t, noise=torch.zeros_like(x0)),
                               (hi - lo) * loss.per_sample(net, x0, t=t, noise=torch.zeros_like(x0)),
                               rtol=1e-6, atol=0)


def test_validation_errors():
    loss = losses.get("eps")
    net = lambda x, t: x  # noqa: E731
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="NaN"):
        loss(net, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN"):
        loss(net, torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="feature dimension"):
        loss(net, torch.randn(4))
    with pytest.raises(ValueError, match="empty batch"):
        loss(net, torch.randn(0, 3))
    with pytest.raises(TypeError, match="floating"):
        loss(net, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="x0"):
        loss(net, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="net"):
        loss(lambda x, t: x[:, :2], x)
    with pytest.raises(TypeError, match="net"):
        loss(lambda x, t: 3.0, x)
    with pytest.raises(TypeError, match="net"):
        loss(None, x)
    with pytest.raises(ValueError, match="noise"):
        loss.per_sample(net, x, noise=torch.randn(4, 2))
    with pytest.raises(ValueError, match="t:"):
        loss.per_sample(net, x, t=torch.rand(3))
    with pytest.raises(ValueError, match="t:"):
        loss.per_sample(net, x, t=2.0)  # outside [0, 1] of vp_linear
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("ddpm_simplest")
    with pytest.raises(TypeError, match="unknown option"):
        losses.get("eps", temperature=1.0)
    with pytest.raises(ValueError, match="prediction"):
        losses.get("eps", prediction="noise_level")
    with pytest.raises(ValueError, match="variance-preserving"):
        losses.get("v", schedule="rf")
    with pytest.raises(ValueError, match="reduction"):
        losses.get("eps", reduction="max")
    with pytest.raises(ValueError, match="weighting"):
        losses.get("eps", weighting="snr_cubed")
    with pytest.raises(TypeError, match="weighting"):
        losses.get("eps", weighting=3)
    with pytest.raises(ValueError, match="discrete"):
        losses.get("eps", weighting="elbo")
    with pytest.raises(ValueError, match="gamma"):
        losses.get("min_snr", gamma=-1.0)
    with pytest.raises(TypeError, match="importance"):
        losses.get("eps", importance="yes")
    with pytest.raises(ValueError, match="t_min"):
        losses.get("eps", t_min=0.5, time_options={"t_min": 0.2})
    with pytest.raises(ValueError, match="unknown law"):
        losses.get("eps", time="poisson")
    with pytest.raises(ValueError, match="weighting"):
        losses.get("sliced_score", weighting="likelihood")
    with pytest.raises(ValueError, match="probe"):
        losses.get("sliced_score", probe="sphere")
    lw = losses.get("eps", weighting=lambda t: torch.ones(3))
    with pytest.raises(ValueError, match="weighting"):
        lw(net, x)
    assert losses.get(loss) is loss
    assert "edm" in losses.available()
    # overriding the time law drops the preset's time options
    assert isinstance(losses.get("ddpm_elbo", time="uniform", weighting="eps").time_law, TS.Uniform)
