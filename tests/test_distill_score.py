"""Tests of VSD/DMD, SiD and FGM (book §10.2; Zhou et al. 2024, SiD; Huang et al. 2024, FGM).

Gradient oracles use Gaussian data, an affine generator ``G(z) = a ⊙ z + b`` (so ``p^θ_t`` is Gaussian)
and the EXACT fake score of the generator's law. The integrands are polynomials of degree ≤ 3 in
``(z, ε)``, so a 3-point Gauss–Hermite tensor grid gives the expectation exactly: the expected autograd
gradients are compared with closed-form objectives in float64 to 1e-10 (no Monte-Carlo error).
"""
import itertools
import math

import numpy as np
import pytest
import torch

from diffcore import metrics, models, oracles, schedules
from diffcore.distill.score_distill import (OneStepGenerator, ScoreDistillTrainer, add_noise, fake_score_loss,
                                            fgm_generator_loss, frozen, sample_times, sid_generator_loss,
                                            vsd_generator_loss)

F64 = torch.float64
SCHED = schedules.get("vp_linear")
MU = torch.tensor([0.7, -1.2], dtype=F64)
S2 = torch.tensor([0.5, 2.0], dtype=F64)  # data variances (diagonal)
DATA = oracles.Gaussian(MU, torch.diag(S2))


def teacher(x, t):
    return DATA.eps(x, t, SCHED)


def gh_grid(dim, n=3):
    """Tensor Gauss–Hermite rule for N(0, I_dim): nodes (n^dim, dim), weights summing to 1."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2 * math.pi)
    pts = np.array(list(itertools.product(x, repeat=dim)))
    wts = np.prod(np.array(list(itertools.product(w, repeat=dim))), 1)
    return torch.tensor(pts, dtype=F64), torch.tensor(wts, dtype=F64)


def exact_fake(a, b):
    """ε* of the generator law N(b, diag(a²)) — the optimum of the fake-score loss."""
    g = oracles.Gaussian(b.detach(), torch.diag(a.detach() ** 2))
    return lambda x, t: g.eps(x, t, SCHED)


def coefs(t):
    v = SCHED.eval(torch.tensor(t, dtype=F64))
    return float(v.alpha), float(v.sigma)


def L1_closed(a, b, t):
    """Fisher divergence L1 = E_{p^θ_t}‖ε_φ − ε_ψ*‖² = σ² Σ_i [α²(b−μ)²/V² + (W−V)²/(W V²)]."""
    al, sg = coefs(t)
    V, W = al ** 2 * S2 + sg ** 2, al ** 2 * a ** 2 + sg ** 2
    return sg ** 2 * (al ** 2 * (b - MU) ** 2 / V ** 2 + (W - V) ** 2 / (W * V ** 2)).sum()


def Fplus_closed(a, b, a0, b0, t):
    """F⁺: the same Fisher divergence with the outer density frozen at θ0 = (a0, b0)."""
    al, sg = coefs(t)
    V, W, W0 = al ** 2 * S2 + sg ** 2, al ** 2 * a ** 2 + sg ** 2, al ** 2 * a0 ** 2 + sg ** 2
    return sg ** 2 * ((al * (b0 - MU) / V - al * (b0 - b) / W) ** 2 + W0 * (1 / V - 1 / W) ** 2).sum()


def KL_closed(a, b, t):
    """KL(p^θ_t ‖ p_t) between N(αb, diag W) and N(αμ, diag V)."""
    al, sg = coefs(t)
    V, W = al ** 2 * S2 + sg ** 2, al ** 2 * a ** 2 + sg ** 2
    return 0.5 * (W / V + al ** 2 * (b - MU) ** 2 / V - 1 - torch.log(W / V)).sum()


def params(a=(1.3, 0.6), b=(0.2, 0.1)):
    return (torch.tensor(a, dtype=F64, requires_grad=True), torch.tensor(b, dtype=F64, requires_grad=True))


PTS, WTS = gh_grid(4)
Z, EPS = PTS[:, :2], PTS[:, 2:]


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5])
def test_sid_gradients_match_fisher_divergence(t):
    a, b = params()
    fake = exact_fake(a, b)
    grads = {}
    for lam in (0.5, 1.0, 1.2):
        L = sid_generator_loss(a * Z + b, t, EPS, teacher, fake, SCHED, lam=lam, sample_weight=WTS)
        grads[lam] = [2 * g for g in torch.autograd.grad(L, (a, b))]
    g_L1 = torch.autograd.grad(L1_closed(a, b, t), (a, b))
    g_Fp = torch.autograd.grad(Fplus_closed(a, b, a.detach(), b.detach(), t), (a, b))
    for got, ref in zip(grads[0.5], g_L1):  # λ = 0.5: true Fisher gradient incl. ψ*(θ)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for got, ref in zip(grads[1.0], g_Fp):  # λ = 1: gradient of F⁺
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # L_gen is affine in λ, so 2∇L(1.2) = 1.4∇F⁺ − 0.4∇L1
    for got, r1, rp in zip(grads[1.2], g_L1, g_Fp):
        torch.testing.assert_close(got, 1.4 * rp - 0.4 * r1, rtol=1e-10, atol=1e-12)
    # the three gradients genuinely differ here (the check is not vacuous)
    rel = (grads[0.5][0] - grads[1.0][0]).norm() / grads[0.5][0].norm()
    assert rel > 0.05, float(rel)


def test_fgm_gradient_is_fisher_gradient_and_equals_twice_sid_half():
    a, b = params()
    fake = exact_fake(a, b)
    t = 0.4
    L4 = fgm_generator_loss(a * Z + b, t, EPS, teacher, fake, SCHED, sample_weight=WTS)
    for got, ref in zip(torch.autograd.grad(L4, (a, b)), torch.autograd.grad(L1_closed(a, b, t), (a, b))):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_fgm_equals_2_sid_half_pointwise_for_arbitrary_networks():
    """L4 = 2 L2 − L1 is pure algebra: holds for any (non-optimal) networks and any batch."""
    torch.manual_seed(0)
    net_t, net_f = models.MLP(2, 16, 2).double(), models.MLP(2, 16, 2).double()
    for net in (net_t, net_f):
        torch.nn.init.normal_(net.out.weight, std=0.3)
    x_g = torch.randn(7, 2, dtype=F64)
    eps = torch.randn(7, 2, dtype=F64)
    t = torch.rand(7, dtype=F64) * 0.9 + 0.05
    for i in range(7):
        sw = torch.zeros(7, dtype=F64)
        sw[i] = 1.0
        l4 = fgm_generator_loss(x_g, t, eps, net_t, net_f, SCHED, sample_weight=sw)
        l2h = sid_generator_loss(x_g, t, eps, net_t, net_f, SCHED, lam=0.5, sample_weight=sw)
        torch.testing.assert_close(l4, 2 * l2h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["sid0.5", "sid1", "sid1.2", "fgm", "vsd"])
def test_gradient_vanishes_when_generator_matches_data(method):
    a, b = params(a=S2.sqrt().tolist(), b=MU.tolist())
    fake = exact_fake(a, b)
    x = a * Z + b
    if method == "fgm":
        L = fgm_generator_loss(x, 0.3, EPS, teacher, fake, SCHED, sample_weight=WTS)
    elif method == "vsd":
        L = vsd_generator_loss(x, 0.3, EPS, teacher, fake, SCHED, sample_weight=WTS)
    else:
        L = sid_generator_loss(x, 0.3, EPS, teacher, fake, SCHED, lam=float(method[3:]), sample_weight=WTS)
    for g in torch.autograd.grad(L, (a, b)):
        assert g.abs().max() < 1e-12


def test_sid_stop_gradients_parameters_frozen_input_differentiated():
    torch.manual_seed(1)
    net_t, net_f = models.MLP(2, 16, 2), models.MLP(2, 16, 2)
    for net in (net_t, net_f):
        torch.nn.init.normal_(net.out.weight, std=0.3)
    G = OneStepGenerator(2, 2, 16, 1)
    x_g = G(torch.randn(32, 2))
    L = sid_generator_loss(x_g, 0.5, torch.randn(32, 2), net_t, net_f, SCHED, lam=1.2)
    L.backward()
    assert all(p.grad is None for p in net_t.parameters())
    assert all(p.grad is None for p in net_f.parameters())
    assert all(p.requires_grad for p in net_f.parameters())  # flags restored after the loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())
    # the generator gradient includes the path through the fake network's input: it changes if we
    # detach the fake output (which is NOT what SiD does)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
    g_full = torch.autograd.grad(sid_generator_loss(G(z), 0.5, eps, net_t, net_f, SCHED), G.skip.bias)[0]
    g_det = torch.autograd.grad(
        sid_generator_loss(G(z), 0.5, eps, net_t, lambda x, t: net_f(x, t).detach(), SCHED), G.skip.bias)[0]
    assert (g_full - g_det).abs().max() > 1e-5


def test_frozen_context_restores_flags():
    net = torch.nn.Linear(2, 2)
    net.bias.requires_grad_(False)
    with frozen(net, lambda x: x):
        assert not any(p.requires_grad for p in net.parameters())
    assert net.weight.requires_grad and not net.bias.requires_grad


def test_vsd_gradient_equals_kl_gradient():
    for t in (0.2, 0.6):
        a, b = params()
        L = vsd_generator_loss(a * Z + b, t, EPS, teacher, exact_fake(a, b), SCHED, sample_weight=WTS)
        for got, ref in zip(torch.autograd.grad(L, (a, b)), torch.autograd.grad(KL_closed(a, b, t), (a, b))):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_vsd_spec_isotropic_case():
    """§3.1 oracle: data N(μ, I), G = θ + z, exact scores ⇒ gradient ω α²(θ − μ)/V, V = α² + σ²."""
    mu = torch.tensor([0.5, -1.0], dtype=F64)
    data = oracles.Gaussian(mu, torch.eye(2, dtype=F64))
    th = torch.tensor([2.0, 0.3], dtype=F64, requires_grad=True)
    fake_or = oracles.Gaussian(th.detach(), torch.eye(2, dtype=F64))
    t, omega = 0.35, 1.7
    L = vsd_generator_loss(th + Z, t, EPS, lambda x, s: data.eps(x, s, SCHED),
                           lambda x, s: fake_or.eps(x, s, SCHED), SCHED, omega=omega, sample_weight=WTS)
    g = torch.autograd.grad(L, th)[0]
    al, sg = coefs(t)
    torch.testing.assert_close(g, omega * al ** 2 * (th.detach() - mu) / (al ** 2 + sg ** 2), rtol=1e-10, atol=1e-12)


def test_vsd_surrogate_gradient_by_hand_and_sds_special_case():
    torch.manual_seed(2)
    net_t = models.MLP(2, 16, 2).double()
    torch.nn.init.normal_(net_t.out.weight, std=0.3)
    # Dirac generator x̂0 = R (SDS, §3.1): exact fake ε is (x − αR)/σ = ε, update ω α (ε_φ − ε)/σ
    R = torch.tensor([[0.4, -0.2]], dtype=F64, requires_grad=True)
    n = 16
    eps = torch.randn(n, 2, dtype=F64)
    t = torch.rand(n, dtype=F64) * 0.8 + 0.1
    v = SCHED.eval(t)
    al, sg = v.alpha[:, None], v.sigma[:, None]
    dirac_fake = lambda x, s: (x - SCHED.alpha(s)[:, None] * R.detach()) / SCHED.sigma(s)[:, None]  # noqa: E731
    omega = lambda s: 1.0 + s  # noqa: E731
    L = vsd_generator_loss(R.expand(n, 2), t, eps, net_t, dirac_fake, SCHED, omega=omega)
    g = torch.autograd.grad(L, R)[0]
    with torch.no_grad():
        xt = al * R + sg * eps
        ref = ((1.0 + t)[:, None] * al * (net_t(xt, t) - eps) / sg).mean(0, keepdim=True)
    torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
    # teacher == fake ⇒ exactly zero gradient
    L0 = vsd_generator_loss(R.expand(n, 2), t, eps, net_t, net_t, SCHED)
    assert torch.autograd.grad(L0, R)[0].abs().max() == 0


def test_teacher_in_other_parameterization_and_dmd_normalisation():
    """An x0-predicting teacher gives the same SiD/VSD losses as its ε form (conversion §0.2); DMD's
    normaliser divides each per-sample VSD gradient by mean|x_g − x̂_φ|."""
    a, b = params()
    x_g = (a * Z + b)
    fake = exact_fake(a, b)
    t = torch.full((Z.shape[0],), 0.35, dtype=F64)
    teacher_x0 = lambda x, s: DATA.denoiser(x, s, SCHED)  # noqa: E731
    for lam in (0.5, 1.2):
        l_eps = sid_generator_loss(x_g, t, EPS, teacher, fake, SCHED, lam=lam)
        l_x0 = sid_generator_loss(x_g, t, EPS, teacher_x0, fake, SCHED, lam=lam, teacher_prediction="x0")
        torch.testing.assert_close(l_x0, l_eps, rtol=1e-10, atol=1e-12)
    g_n = torch.autograd.grad(vsd_generator_loss(x_g, t, EPS, teacher, fake, SCHED, dmd_normalize=True,
                                                 sample_weight=WTS), b)[0]
    al, sg = coefs(0.35)
    with torch.no_grad():
        xt = al * x_g + sg * EPS
        e_phi, e_psi = teacher(xt, t), fake(xt, t)
        norm = (x_g - (xt - sg * e_phi) / al).abs().mean(1, keepdim=True)
        hand = (WTS[:, None] * al * (e_phi - e_psi) / sg / norm).sum(0)
    torch.testing.assert_close(g_n, hand, rtol=1e-10, atol=1e-12)


def test_fake_score_loss_minimum_and_no_generator_gradient():
    """With the exact fake denoiser the expected loss is the MMSE Σ_i α²a_i²/W_i; x_g gets no gradient."""
    a, b = params()
    t = 0.45
    x_g = a * Z + b
    L = fake_score_loss(exact_fake(a, b), x_g, t, EPS, SCHED, sample_weight=WTS)
    al, sg = coefs(t)
    W = al ** 2 * a.detach() ** 2 + sg ** 2
    torch.testing.assert_close(L, (al ** 2 * a.detach() ** 2 / W).sum(), rtol=1e-10, atol=1e-12)
    assert not L.requires_grad


def test_add_noise_and_time_sampling_and_errors():
    x0, eps = torch.randn(5, 2, dtype=F64), torch.randn(5, 2, dtype=F64)
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    v = SCHED.eval(t)
    torch.testing.assert_close(add_noise(x0, eps, t, SCHED), v.alpha[:, None] * x0 + v.sigma[:, None] * eps)
    ts = sample_times(1000, SCHED, (0.1, 0.5), torch.Generator().manual_seed(0), dtype=F64)
    lo, hi = SCHED.t_end + 0.1 * (1 - SCHED.t_end), SCHED.t_end + 0.5 * (1 - SCHED.t_end)
    assert ts.min() >= lo and ts.max() <= hi and abs(float(ts.mean()) - (lo + hi) / 2) < 0.02
    with pytest.raises(ValueError, match="lam"):
        sid_generator_loss(x0, 0.5, eps, teacher, teacher, SCHED, lam=float("nan"))
    with pytest.raises(ValueError, match="eps"):
        sid_generator_loss(x0, 0.5, eps[:3], teacher, teacher, SCHED)
    with pytest.raises(ValueError, match="t_range"):
        sample_times(4, SCHED, (0.5, 0.2))
    with pytest.raises(ValueError, match="method"):
        ScoreDistillTrainer(OneStepGenerator(2), models.MLP(2, 8, 1), teacher, SCHED, method="gan")
    with pytest.raises(ValueError, match="weight"):
        vsd_generator_loss(x0, 0.5, eps, teacher, teacher, SCHED, omega=torch.ones(3))


class _Affine(torch.nn.Module):
    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones(2))
        self.b = torch.nn.Parameter(torch.zeros(2))

    def forward(self, z):
        return self.a * z + self.b


@pytest.mark.parametrize("method,lam", [("sid", 1.2), ("fgm", 0.5), ("vsd", 1.0)])
def test_trainer_fits_gaussian_with_learned_fake(method, lam):
    """Alternating training with an MLP fake score moves an affine generator to the data law
    N(μ, diag(s²)): |b − μ| and |a| − s small (init a = 1, b = 0)."""
    torch.manual_seed(0)
    mu, s = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.0])
    data = oracles.Gaussian(mu, torch.diag(s ** 2))
    G = _Affine()
    tr = ScoreDistillTrainer(G, models.MLP(2, 64, 2), lambda x, t: data.eps(x, t, SCHED).float(), SCHED,
                             method=method, lam=lam, gen_lr=1e-2, fake_lr=2e-3, seed=0)
    hist = tr.train(300, 256)
    assert len(hist["gen"]) == 300 and len(hist["fake"]) == 300
    assert (G.b.detach() - mu).abs().max() < 0.1
    assert (G.a.detach().abs() - s).abs().max() < 0.1


def test_trainer_ema_generator():
    """Evaluation EMA: after one generator step with decay μ, ema = μ·θ0 + (1 − μ)·θ1; sample() uses it."""
    torch.manual_seed(0)
    G = _Affine()
    tr = ScoreDistillTrainer(G, models.MLP(2, 8, 1), lambda x, t: DATA.eps(x, t, SCHED).float(), SCHED,
                             gen_lr=0.1, ema_decay=0.25, seed=0)
    b0 = G.b.detach().clone()
    tr.train(1, 64)
    torch.testing.assert_close(tr.G_ema.b, 0.25 * b0 + 0.75 * G.b.detach())
    assert (G.b.detach() - b0).abs().max() > 1e-3
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tr.sample(5, seed=1), tr.G_ema(z))
    with pytest.raises(ValueError, match="ema_decay"):
        ScoreDistillTrainer(_Affine(), models.MLP(2, 8, 1), teacher, SCHED, ema_decay=1.0)


@pytest.mark.slow
def test_sid_end_to_end_mixture_sliced_wasserstein():
    """SiD (λ = 1) trains a one-step MLP generator on the exact 2-D mixture teacher (4 anisotropic
    components) to within 2 × (teacher 50-step DPM-Solver++ SW + held-out noise floor) of the data
    (sliced Wasserstein, 4000 points, 256 fixed projections; EMA generator). ~100 s on one CPU thread."""
    import diffcore
    torch.manual_seed(0)
    G, fake = OneStepGenerator(2, 2, 128, 3), models.MLP(2, 128, 3)
    data = oracles.toy_2d_mixture()
    teacher_fn = lambda x, t: data.eps(x, t, SCHED).to(x.dtype)  # noqa: E731
    n = 4000
    proj = torch.randn(256, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    proj = proj / proj.norm(dim=1, keepdim=True)
    ref = data.sample(n, torch.Generator().manual_seed(11))
    floor = float(metrics.sliced_wasserstein(ref, data.sample(n, torch.Generator().manual_seed(12)), projections=proj))
    xT = diffcore.prior_sample(SCHED, (n, 2), seed=3, dtype=F64)
    x_teacher = diffcore.sample(teacher_fn, xT, SCHED, solver="dpmpp_2m", steps=50, prediction="eps")
    sw_teacher = float(metrics.sliced_wasserstein(x_teacher, ref, projections=proj))
    tr = ScoreDistillTrainer(G, fake, teacher_fn, SCHED, method="sid", lam=1.0, gen_lr=5e-4, fake_lr=2e-3,
                             fake_steps=2, ema_decay=0.998, seed=0)
    tr.train(4000, 256)
    sw = float(metrics.sliced_wasserstein(tr.sample(n).double(), ref, projections=proj))
    assert sw <= 2 * (sw_teacher + floor), (sw, sw_teacher, floor)


# ---- MonoFlow (Yi et al. 2023) --------------------------------------------------------------------
from diffcore.distill.monoflow import (H_FUNCTIONS, MonoFlowTrainer, direct_generator_loss,  # noqa: E402
                                       discriminator_loss, get_h, particle_field, particle_step,
                                       regression_loss)


class _Quadratic(torch.nn.Module):
    """Logit D(x) = xᵀAx + wᵀx + c: the family containing log N(μp,Σp)/N(μq,Σq) exactly."""

    def __init__(self, d):
        super().__init__()
        self.A = torch.nn.Parameter(torch.zeros(d, d))
        self.w = torch.nn.Parameter(torch.zeros(d))
        self.c = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return ((x @ self.A) * x).sum(1) + x @ self.w + self.c


P = oracles.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64))
Q = oracles.Gaussian(torch.tensor([-0.4, 0.8], dtype=F64), torch.tensor([[0.6, 0.0], [0.0, 1.5]], dtype=F64))


def log_ratio(x):
    return P.log_prob(x) - Q.log_prob(x)


def grad_log_ratio(x):
    """∇ log p/q = −Σp⁻¹(x − μp) + Σq⁻¹(x − μq) (closed form)."""
    return -torch.linalg.solve(P.cov, (x - P.mean).T).T + torch.linalg.solve(Q.cov, (x - Q.mean).T).T


H_PRIME = {"log_ratio": lambda d: torch.ones_like(d), "ratio": torch.exp,
           "log_sigmoid": lambda d: torch.sigmoid(-d), "sigmoid": lambda d: torch.sigmoid(d) * torch.sigmoid(-d)}


@pytest.mark.parametrize("h", sorted(H_FUNCTIONS))
def test_monoflow_particle_field_closed_form(h):
    x = torch.randn(50, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    got = particle_field(log_ratio, x, h)
    ref = H_PRIME[h](log_ratio(x))[:, None] * grad_log_ratio(x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert not got.requires_grad


def test_monoflow_regression_gradient_equals_direct_gradient():
    """At θ = θ_k: ∇ E‖G_θ(z) − sg[G_θk(z) + η∇h(D)]‖² = −2η ∇ E h(D(G_θ(z))) (seed eq. for the equivalence)."""
    torch.manual_seed(3)
    G = OneStepGenerator(2, 2, 16, 2).double()
    D = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    z = torch.randn(64, 2, dtype=F64)
    eta = 0.3
    for h in ("log_ratio", "log_sigmoid"):
        target = particle_step(D, G(z), eta, h)
        g_reg = torch.autograd.grad(regression_loss(G(z), target), list(G.parameters()))
        g_dir = torch.autograd.grad(direct_generator_loss(D, G(z), h), list(G.parameters()))
        for a, b in zip(g_reg, g_dir):
            torch.testing.assert_close(a, 2 * eta * b, rtol=1e-10, atol=1e-12)


def test_monoflow_particle_step_moves_gaussian_mean_and_lowers_kl():
    """p = N(μp, I), q = N(μq, I): D* = (μp − μq)·x + const; the step shifts every particle by η(μp − μq);
    the exact regression solution of G = θ + z is θ + η(μp − μq); KL(q‖p) decreases."""
    mup, muq = torch.tensor([1.5, -1.0], dtype=F64), torch.tensor([0.0, 0.5], dtype=F64)
    p, q = oracles.Gaussian(mup, torch.eye(2, dtype=F64)), oracles.Gaussian(muq, torch.eye(2, dtype=F64))
    D = lambda x: p.log_prob(x) - q.log_prob(x)  # noqa: E731
    eta = 0.2
    z = torch.randn(100, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    theta = muq.clone()
    x1 = particle_step(D, theta + z, eta)
    torch.testing.assert_close(x1 - (theta + z), (eta * (mup - muq)).expand(100, 2), rtol=1e-12, atol=1e-12)
    theta_new = (x1 - z).mean(0)  # argmin_θ Σ‖θ + z − target‖²
    torch.testing.assert_close(theta_new, muq + eta * (mup - muq), rtol=1e-12, atol=1e-12)
    kl = lambda m: 0.5 * float(((m - mup) ** 2).sum())  # noqa: E731
    assert kl(theta_new) < kl(muq)


def test_monoflow_logistic_discriminator_learns_log_ratio():
    """Logistic loss on samples of two 1-D Gaussians converges to log p/q (loose tolerance)."""
    torch.manual_seed(0)
    p1 = oracles.Gaussian(torch.tensor([1.0], dtype=F64), torch.tensor([[0.5]], dtype=F64))
    q1 = oracles.Gaussian(torch.tensor([-0.5], dtype=F64), torch.tensor([[1.0]], dtype=F64))
    g = torch.Generator().manual_seed(0)
    xr, xf = p1.sample(20000, g), q1.sample(20000, g)
    D = _Quadratic(1).double()
    opt = torch.optim.LBFGS(D.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = discriminator_loss(D, xr, xf)
        loss.backward()
        return loss
    opt.step(closure)
    grid = torch.linspace(-1.5, 2.0, 30, dtype=F64)[:, None]
    err = (D(grid) - (p1.log_prob(grid) - q1.log_prob(grid))).abs().max()
    assert err < 0.15, float(err)


def test_monoflow_trainer_moves_generator_toward_data():
    """2-D toy: an affine generator trained by MonoFlow (quadratic discriminator, K = 3 regression
    steps) ends much closer to the data mean and scale than it starts."""
    torch.manual_seed(0)
    mu, s = torch.tensor([1.5, -1.0]), torch.tensor([0.5, 1.2])
    data = oracles.Gaussian(mu.double(), torch.diag(s.double() ** 2))
    G = _Affine()
    start = float((G.b.detach() - mu).norm() + (G.a.detach().abs() - s).norm())
    tr = MonoFlowTrainer(G, _Quadratic(2), lambda n, g: data.sample(n, g).float(), h="log_ratio", eta=0.05,
                         gen_steps=3, gen_lr=0.4, d_lr=5e-2, d_steps=5, gen_optimizer=torch.optim.SGD, seed=0)
    tr.train(200, 256)
    end = float((G.b.detach() - mu).norm() + (G.a.detach().abs() - s).norm())
    assert end < 0.1 * start, (start, end)


def test_monoflow_errors():
    with pytest.raises(ValueError, match="h"):
        get_h("nope")
    with pytest.raises(ValueError, match="eta"):
        particle_step(log_ratio, torch.zeros(2, 2, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="target"):
        regression_loss(torch.zeros(3, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="D"):
        discriminator_loss(lambda x: x, torch.zeros(3, 2), torch.zeros(3, 2))
