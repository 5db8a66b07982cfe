"""diffcore.ebm: energy-based models and the score-matching family, against closed forms on Gaussian data
(docs/score_matching.md derives each identity) and a Langevin sample of a trained energy against its law."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffcore
from diffcore import ebm
from diffcore.ebm import EnergyModel, QuadraticEnergy

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
Z = 5.0  # two-sided 5-standard-error bounds: a fixed-seed draw outside fails by chance with p < 6e-7


def _gaussian(D, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(D, generator=g, dtype=F64)
    A = torch.randn(D, D, generator=g, dtype=F64)
    cov = A @ A.T / D + 0.5 * torch.eye(D, dtype=F64)
    return mu, cov


def _draw(mu, cov, n, seed):
    g = torch.Generator().manual_seed(seed)
    return mu + torch.randn(n, mu.shape[0], generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T


def _mean_within(per, target, z=Z):
    per = per.detach()
    se = float(per.std()) / math.sqrt(per.numel())
    assert abs(float(per.mean()) - target) < z * se + 1e-12, (float(per.mean()), target, se)


# ---- Hyvärinen = Fisher divergence − const ------------------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "sliced"])
def test_hyvarinen_equals_fisher_divergence_minus_constant(method):
    """For data N(μ, Σ) and the model N(m, P⁻¹), the Fisher divergence is
    F = ½[tr((P − Σ⁻¹) Σ (P − Σ⁻¹)) + (μ − m)ᵀP²(μ − m)] and J = F − ½ tr Σ⁻¹ (book Prop. 3.2.1)."""
    D, n = 3, 60000
    mu, cov = _gaussian(D, 0)
    x = _draw(mu, cov, n, 1)
    prec_data = torch.linalg.inv(cov)
    const = 0.5 * float(torch.trace(prec_data))
    g = torch.Generator().manual_seed(2)
    for k in range(3):
        m = mu + 0.5 * torch.randn(D, generator=g, dtype=F64) * k
        B = torch.randn(D, D, generator=g, dtype=F64)
        P = prec_data if k == 0 else B @ B.T / D + 0.3 * torch.eye(D, dtype=F64)
        model = EnergyModel(QuadraticEnergy(D, mean=m, precision=P, dtype=F64))
        d = P - prec_data
        fisher = 0.5 * float(torch.trace(d @ cov @ d) + (mu - m) @ P @ P @ (mu - m))
        per = ebm.score_matching_loss(model, x, method=method, reduction="none",
                                      generator=torch.Generator().manual_seed(3 + k))
        assert per.shape == (n,)
        _mean_within(per, fisher - const)
    assert fisher > 0.1  # the models differ from the data, so the constant is checked, not just F = 0


def test_hyvarinen_exact_on_image_shaped_data_and_numpy_views():
    """s(x) = −x: tr ∇s = −D and ½‖s‖² = ½‖x‖², per sample, for (B, C, H, W) data and a strided NumPy view."""
    arr = np.random.default_rng(0).standard_normal((10, 1, 4, 4))
    x = torch.from_numpy(arr)[::2]
    per = ebm.score_matching_loss(lambda y: -y, x, reduction="none")
    torch.testing.assert_close(per, -16 + 0.5 * x.reshape(5, -1).pow(2).sum(1), rtol=1e-14, atol=1e-14)
    x1 = torch.from_numpy(arr[:, 0, 0, :1].copy())  # 1-D data (B, 1)
    per1 = ebm.score_matching_loss(lambda y: -2 * y ** 3, x1, reduction="none")
    torch.testing.assert_close(per1, -6 * x1[:, 0] ** 2 + 2 * x1[:, 0] ** 6, rtol=1e-13, atol=1e-13)


def test_hyvarinen_training_recovers_mean_and_precision():
    """The empirical objective's minimizer over N(m, P⁻¹) is m = x̄, P = S⁻¹ (closed form); the fit reaches
    it and lies within sampling error of the truth (x̄ − μ ~ N(0, Σ/n))."""
    D, n = 2, 2000
    mu, cov = _gaussian(D, 10)
    x = _draw(mu, cov, n, 11)
    torch.manual_seed(0)
    model = EnergyModel(QuadraticEnergy(D, dtype=F64))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        ebm.score_matching_loss(model, x).backward()
        opt.step()
    q = model.energy_net
    xbar = x.mean(0)
    S = (x - xbar).T @ (x - xbar) / n
    torch.testing.assert_close(q.mean.detach(), xbar, atol=2e-3, rtol=0)
    torch.testing.assert_close(q.precision.detach(), torch.linalg.inv(S), rtol=1e-2, atol=1e-2)
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((q.mean.detach() - mu).abs() < Z * se + 2e-3).all())
    # relative error of S⁻¹ is O(sqrt(2/n)) ≈ 0.03 per entry; 0.15 is 5 such errors
    prec = torch.linalg.inv(cov)
    assert float(torch.linalg.norm(q.precision.detach() - prec) / torch.linalg.norm(prec)) < 0.15


# ---- SURE ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_sure_equals_mse_of_linear_denoiser(method):
    """x ~ N(μ, τ²I), x̃ = x + σε, D(x̃) = a x̃ + b: MSE = Σ_d [((a − 1)μ_d + b)² + (a − 1)²τ² + a²σ²]."""
    D, n, tau, sigma, a, b = 4, 100000, 0.7, 0.5, 0.6, 0.2
    g = torch.Generator().manual_seed(20)
    mu = torch.randn(D, generator=g, dtype=F64)
    x = mu + tau * torch.randn(n, D, generator=g, dtype=F64)
    xt = x + sigma * torch.randn(n, D, generator=g, dtype=F64)
    mse = float((((a - 1) * mu + b) ** 2 + (a - 1) ** 2 * tau ** 2 + a ** 2 * sigma ** 2).sum())
    per = ebm.sure(lambda y: a * y + b, xt, sigma, method=method, generator=torch.Generator().manual_seed(21))
    _mean_within(per, mse)
    # the unbiased estimate is not the naive residual: ‖D(x̃) − x̃‖² alone is off by far more than 5 SE
    naive = (a * xt + b - xt).pow(2).sum(1)
    assert abs(float(naive.mean()) - mse) > 20 * float(per.detach().std()) / math.sqrt(n)


def test_sure_conditionally_unbiased_for_nonlinear_denoiser():
    """E[SURE | x] = E[‖D(x̃) − x‖² | x] (book App. D.2.4) for D(x̃) = tanh(W x̃): the per-draw difference
    has mean zero at a fixed clean x."""
    D, n, sigma = 3, 50000, 0.4
    g = torch.Generator().manual_seed(30)
    W = torch.randn(D, D, generator=g, dtype=F64)
    x = torch.randn(1, D, generator=g, dtype=F64).expand(n, D)
    xt = x + sigma * torch.randn(n, D, generator=g, dtype=F64)
    den = lambda y: torch.tanh(y @ W.T)  # noqa: E731
    diff = ebm.sure(den, xt, sigma) - (den(xt) - x).pow(2).sum(1)
    _mean_within(diff, 0.0)


# ---- generalized score matching -----------------------------------------------------------------------
def test_generalized_denoising_operator_has_tweedie_minimizer():
    """x₀ ~ N(μ, τ²), x̃ = x₀ + σε, v = τ² + σ²: with the denoising operator, E[½s² − x̃ s + σ² s'] =
    ½E(s − m)² − ½E m² for m(x̃) = μ + (τ²/v)(x̃ − μ) = E[x₀|x̃] (Stein's lemma; docs/score_matching.md),
    checked for linear s(x̃) = c x̃ + d in closed form."""
    n, mu, tau, sigma = 200000, 0.4, 0.8, 0.6
    v = tau ** 2 + sigma ** 2
    k = tau ** 2 / v
    g = torch.Generator().manual_seed(40)
    xt = mu + math.sqrt(v) * torch.randn(n, 1, generator=g, dtype=F64)
    Em2 = mu ** 2 + k ** 2 * v
    for c, d in [(k, mu * (1 - k)), (1.0, 0.0), (0.2, -0.5)]:
        per = ebm.generalized_score_matching_loss(lambda y: c * y + d, xt, operator="denoising", sigma=sigma,
                                                  reduction="none")
        cc, dd = c - k, d - mu * (1 - k)
        closed = 0.5 * (cc ** 2 * (v + mu ** 2) + 2 * cc * dd * mu + dd ** 2) - 0.5 * Em2
        _mean_within(per, closed)
    # the gradient operator is Hyvärinen's objective (3.2.2), sample by sample
    s = lambda y: -(y - mu) / v  # noqa: E731
    torch.testing.assert_close(ebm.generalized_score_matching_loss(s, xt, reduction="none"),
                               ebm.score_matching_loss(s, xt, reduction="none"), rtol=0, atol=1e-15)


# ---- EBM + Langevin -----------------------------------------------------------------------------------
def test_energy_model_score_is_minus_energy_gradient():
    model = EnergyModel(QuadraticEnergy(2, mean=torch.tensor([1.0, -1.0]),
                                        precision=torch.tensor([[2.0, 0.5], [0.5, 1.0]]), dtype=F64))
    x = torch.randn(5, 2, dtype=F64)
    P = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    expected = -(x - torch.tensor([1.0, -1.0], dtype=F64)) @ P
    torch.testing.assert_close(model(x, torch.zeros(5)), expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # sampling calls it without gradients: still the score, detached
        s = model(x)
    assert not s.requires_grad
    torch.testing.assert_close(s, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.unnormalized_log_prob(x), -0.5 * (((x - torch.tensor([1.0, -1.0], dtype=F64)) @ P)
                                                                       * (x - torch.tensor([1.0, -1.0], dtype=F64))).sum(1))


def test_langevin_samples_gaussian_energy():
    """Unadjusted Langevin on N(1, ¼) with step η has the stationary law N(1, v/(1 − η/(2v))) (v = ¼)."""
    model = EnergyModel(QuadraticEnergy(1, mean=torch.tensor([1.0]), precision=torch.tensor([[4.0]])))
    n, eta = 4000, 0.01
    y = diffcore.sample(model, torch.zeros(n, 1), "vp_linear", solver="langevin", prediction="score", steps=200,
                        step_size=eta, seed=0).double()
    var = 0.25 / (1 - eta / 0.5)
    assert abs(float(y.mean()) - 1.0) < Z * math.sqrt(var / n)
    assert abs(float(y.var()) / var - 1) < Z * math.sqrt(2 / n)


@pytest.mark.slow
def test_ebm_trained_by_score_matching_samples_mixture_with_langevin():
    """An MLP energy trained by exact Hyvärinen score matching on a 1-D two-component mixture, sampled by
    Langevin dynamics (book Eq. (3.1.4)): the Kolmogorov–Smirnov distance to the mixture's CDF."""
    scipy_stats = pytest.importorskip("scipy.stats")
    w, means, std = (0.3, 0.7), (-0.8, 0.8), 0.5
    mix = diffcore.oracles.GaussianMixture.mixture1d(list(w), list(means), [std, std])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 1)).double()
    model = EnergyModel(net)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(1500):
        opt.zero_grad()
        ebm.score_matching_loss(model, mix.sample(512, generator=g)).backward()
        opt.step()
    n = 4000
    y = diffcore.sample(model, torch.randn(n, 1, generator=g, dtype=F64), "vp_linear", solver="langevin",
                        prediction="score", steps=1500, step_size=0.005, seed=3)

    def cdf(v):
        return sum(wi * scipy_stats.norm.cdf(v, mi, std) for wi, mi in zip(w, means))

    ks = scipy_stats.kstest(y[:, 0].numpy(), cdf).statistic
    ks_gauss = scipy_stats.kstest(y[:, 0].numpy(), scipy_stats.norm(float(y.mean()), float(y.std())).cdf).statistic
    print("KS", ks, ks_gauss)
    # 2.22/sqrt(n) = 0.035 is the 1e-4 critical value for exact samples; allow the same again for the
    # model's and the step's bias
    assert ks < 0.07, ks


# ---- bad inputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, exc, words", [
    ("ebm.score_matching_loss(3, x)", "TypeError", ["score", "callable"]),
    ("ebm.score_matching_loss(f, x[:, 0])", "ValueError", ["x", "(B, *S)"]),
    ("ebm.score_matching_loss(f, x.long())", "TypeError", ["x", "floating-point"]),
    ("ebm.score_matching_loss(f, x * float('nan'))", "ValueError", ["x", "finite"]),
    ("ebm.score_matching_loss(f, x[:0])", "ValueError", ["x", "non-empty"]),
    ("ebm.score_matching_loss(f, x, method='ssm')", "ValueError", ["method", "exact"]),
    ("ebm.score_matching_loss(f, x, method='sliced', num_projections=0)", "ValueError", ["num_projections"]),
    ("ebm.score_matching_loss(lambda y: y[:, :1], x)", "ValueError", ["shape"]),
    ("ebm.score_matching_loss(f, x, reduction='sum')", "ValueError", ["reduction"]),
    ("ebm.score_matching_loss(f, x, method='sliced', generator=1)", "TypeError", ["generator"]),
    ("ebm.sure(f, x, -1.0)", "ValueError", ["sigma", "positive"]),
    ("ebm.sure(f, x, float('inf'))", "ValueError", ["sigma", "positive"]),
    ("ebm.generalized_score_matching_loss(f, x, operator='denoising')", "ValueError", ["sigma"]),
    ("ebm.generalized_score_matching_loss(f, x, sigma=0.5)", "ValueError", ["sigma", "gradient"]),
    ("ebm.generalized_score_matching_loss(f, x, operator='laplace')", "ValueError", ["operator"]),
    ("ebm.EnergyModel(5)", "TypeError", ["energy", "callable"]),
    ("ebm.EnergyModel(lambda y: y)(torch.randn(4, 2))", "ValueError", ["energy", "shape"]),
    ("ebm.QuadraticEnergy(2, precision=-torch.eye(2))", "ValueError", ["precision", "positive definite"]),
    ("ebm.QuadraticEnergy(2, mean=torch.zeros(3))", "ValueError", ["mean", "(2,)"]),
    ("ebm.QuadraticEnergy(0)", "ValueError", ["dim"]),
    ("ebm.divergence(f, x, method='hutchinson', probe='uniform')", "ValueError", ["probe"]),
])
def test_bad_inputs(call, exc, words):
    """Each refusal is an exception naming the argument and what was expected (none is a crash class)."""
    env = {"torch": torch, "ebm": ebm, "x": torch.randn(4, 2), "f": lambda y: -y}
    with pytest.raises({"TypeError": TypeError, "ValueError": ValueError}[exc]) as e:
        eval(call, env)
    missing = [w for w in words if w.lower() not in str(e.value).lower()]
    assert not missing, (missing, str(e.value))
