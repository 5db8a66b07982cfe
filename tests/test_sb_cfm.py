"""SB-CFM: ``losses.get("cfm", coupling="sb")`` is Schrödinger-bridge conditional flow matching (Tong et al.
2024, "Improving and generalizing flow-based generative models with minibatch optimal transport", TMLR,
Eq. (20)–(21)): the entropic-OT coupling with ε = 2σ² AND the Brownian-bridge path of the same σ,

    x_τ = (1 − τ) y0 + τ y1 + σ √(τ(1 − τ)) ξ,   u_τ = (1 − 2τ)/(2τ(1 − τ)) (x_τ − μ_τ) + y1 − y0

in flow-matching time τ (source y0 = noise at τ = 0, data y1 at τ = 1). The library trains in diffusion
time t = 1 − τ, so the network sees ``t = 1 − τ`` and regresses ``−u_τ``.
"""
import math

import pytest
import torch

from diffcore import coupling, losses, paths

F64 = torch.float64


class _IdentitySB(coupling.SchrodingerBridge):
    """The SB coupling's σ with the identity pairing, so that a test knows which (y0, y1) the loss used."""

    def pair(self, y0, y1, generator=None):
        k = torch.arange(y0.shape[0], device=y0.device)
        return k, k


def _bridge_u(y0, y1, tau, x):
    """FM-time conditional velocity of the Brownian bridge (closed form, Tong et al. 2024 Eq. (21))."""
    tau = tau[:, None]
    mu = (1 - tau) * y0 + tau * y1
    return (1 - 2 * tau) / (2 * tau * (1 - tau)) * (x - mu) + y1 - y0


def _capture():
    seen = {}

    def net(x, t, labels=None):
        seen["x"], seen["t"] = x.detach().clone(), t.detach().clone()
        return torch.zeros_like(x)
    return net, seen


def test_sb_coupling_selects_the_bridge_path_with_the_coupling_sigma():
    loss = losses.get("cfm", coupling="sb")
    assert loss.path.bridge_sigma == 0.5 == loss.coupling.sigma
    assert loss.coupling.eps == pytest.approx(2 * 0.5 ** 2, rel=1e-15)
    loss = losses.get("cfm", coupling="sb", coupling_options={"sigma": 0.3})
    assert loss.path.bridge_sigma == 0.3
    assert loss.coupling.eps == pytest.approx(2 * 0.3 ** 2, rel=1e-15)
    # an object, and its DDP-aware wrapper, give the same path
    assert losses.get("cfm", coupling=coupling.SchrodingerBridge(sigma=0.7)).path.bridge_sigma == 0.7
    assert losses.get("cfm", coupling=coupling.Distributed(coupling.SchrodingerBridge(sigma=0.2))).path.bridge_sigma == 0.2
    # the other couplings keep the noise-free linear path
    for name in (None, "exact", "sinkhorn"):
        assert losses.get("cfm", coupling=name).path.bridge_sigma is None
        assert not losses.get("cfm", coupling=name).path.noisy


def test_sb_coupling_with_an_inconsistent_path_is_refused():
    with pytest.raises(ValueError, match="path"):
        losses.get("cfm", coupling="sb", path="linear")
    with pytest.raises(ValueError, match="path"):
        losses.get("cfm", coupling="sb", path=paths.fm_path("ot"))
    with pytest.raises(ValueError, match="sigma"):
        losses.get("cfm", coupling="sb", path="bridge", sigma=0.2)  # the coupling's σ is 0.5
    with pytest.raises(ValueError, match="sigma"):
        losses.get("cfm", coupling="sb", path=paths.fm_path("bridge", sigma=0.4))
    # consistent explicit spellings are accepted
    assert losses.get("cfm", coupling="sb", path="bridge", sigma=0.5).path.bridge_sigma == 0.5
    assert losses.get("cfm", coupling="sb", path=paths.fm_path("bridge", sigma=0.5)).path.bridge_sigma == 0.5


def test_sb_cfm_samples_the_bridge_marginal():
    # identical source points and identical data points make every pairing the same pair, so the state the
    # network sees at diffusion time t (τ = 1 − t) is N((1 − τ) y0 + τ y1, σ² τ(1 − τ)) exactly: first
    # through the named coupling (a batch small enough for its Sinkhorn plan), then with many draws
    sigma = 0.6
    g = torch.Generator().manual_seed(1234)
    y0v, y1v = torch.tensor([0.7, -1.1], dtype=F64), torch.tensor([2.0, 0.5], dtype=F64)
    for loss, B, ts in ((losses.get("cfm", coupling="sb", coupling_options={"sigma": sigma}), 400, (0.5,)),
                        (losses.get("cfm", coupling=_IdentitySB(sigma=sigma)), 20000, (0.2, 0.5, 0.9))):
        _check_marginal(loss, sigma, B, ts, y0v, y1v, g)


def _check_marginal(loss, sigma, B, ts, y0v, y1v, g):
    x0 = y1v.expand(B, 2).clone()
    noise = y0v.expand(B, 2).clone()
    for t in ts:
        net, seen = _capture()
        loss.per_sample(net, x0, generator=g, t=torch.full((B,), t, dtype=F64), noise=noise)
        tau = 1 - t
        mean = (1 - tau) * y0v + tau * y1v
        var = sigma ** 2 * tau * (1 - tau)
        x = seen["x"]
        # 6-standard-error bounds: chance failure < 1e-8 per check
        assert torch.all((x.mean(0) - mean).abs() < 6 * math.sqrt(var / B)), (t, x.mean(0), mean)
        assert torch.all((x.var(0) / var - 1).abs() < 6 * math.sqrt(2 / (B - 1))), (t, x.var(0), var)
        torch.testing.assert_close(seen["t"], torch.full((B,), t, dtype=F64), rtol=0, atol=0)


def test_sb_cfm_target_is_the_bridge_conditional_velocity():
    # with a known pairing, a network that returns −u_τ(x_t) of the closed form has zero loss, sample by sample
    sigma = 0.45
    loss = losses.get("cfm", coupling=_IdentitySB(sigma=sigma))
    assert loss.path.bridge_sigma == sigma
    g = torch.Generator().manual_seed(7)
    B = 64
    x0 = torch.randn(B, 3, generator=g, dtype=F64) + 2.0
    eps = torch.randn(B, 3, generator=g, dtype=F64)
    t = 0.02 + 0.96 * torch.rand(B, generator=g, dtype=F64)
    seen = {}

    def oracle(x, tt, labels=None):
        seen["x"] = x
        return -_bridge_u(eps, x0, 1 - tt, x)
    per = loss.per_sample(oracle, x0, generator=g, t=t, noise=eps)
    assert per.shape == (B,)
    assert float(per.max()) < 1e-24
    # and the state is off the straight line (the bridge noise is there): ξ̂ is standard normal-ish
    tau = (1 - t)[:, None]
    xi = (seen["x"] - ((1 - tau) * eps + tau * x0)) / (sigma * torch.sqrt(tau * (1 - tau)))
    assert 0.5 < float(xi.var()) < 1.6  # 192 draws of N(0, 1): chance outside < 1e-9


def test_bridge_velocity_closed_form_is_the_path_derivative_and_solves_continuity():
    # independent checks of the formula used above: (a) d/dτ of the sampled path with ξ held fixed;
    # (b) the continuity equation ∂p/∂τ + ∂(p u)/∂x = 0 for p_τ = N(μ_τ, σ²τ(1 − τ)) in 1-D
    sigma = 0.8
    path = paths.fm_path("bridge", sigma=sigma)
    g = torch.Generator().manual_seed(3)
    y0, y1, xi = (torch.randn(5, 1, generator=g, dtype=F64) for _ in range(3))
    tau = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.95], dtype=F64)
    h = 1e-6
    fd = (path.sample(y0, y1, tau + h, xi) - path.sample(y0, y1, tau - h, xi)) / (2 * h)
    x = path.sample(y0, y1, tau, xi)
    torch.testing.assert_close(path.target(y0, y1, tau, xi), fd, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(_bridge_u(y0, y1, tau, x), fd, rtol=1e-7, atol=1e-7)

    def p(xx, tt):
        m, s2 = (1 - tt) * y0 + tt * y1, sigma ** 2 * tt * (1 - tt)
        return torch.exp(-(xx - m) ** 2 / (2 * s2)) / torch.sqrt(2 * math.pi * s2)
    tt = tau[:, None]
    dp_dt = (p(x, tt + h) - p(x, tt - h)) / (2 * h)
    flux = lambda xx: p(xx, tt) * _bridge_u(y0, y1, tau, xx)  # noqa: E731
    dflux = (flux(x + h) - flux(x - h)) / (2 * h)
    torch.testing.assert_close(dp_dt + dflux, torch.zeros_like(x), rtol=0, atol=1e-5 * float(p(x, tt).max()))


def test_sb_cfm_matches_torchcfm():
    torchcfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    sigma = 0.35
    fm = torchcfm.SchrodingerBridgeConditionalFlowMatcher(sigma=sigma)
    assert fm.ot_sampler.reg == pytest.approx(2 * sigma ** 2)
    loss = losses.get("cfm", coupling=_IdentitySB(sigma=sigma))
    g = torch.Generator().manual_seed(11)
    B = 32
    x1 = torch.randn(B, 2, generator=g, dtype=F64) * 0.5 + 1.0
    x0 = torch.randn(B, 2, generator=g, dtype=F64)
    t = 0.05 + 0.9 * torch.rand(B, generator=g, dtype=F64)
    seen = {}

    def theirs(x, tt, labels=None):
        seen["x"] = x
        return -fm.compute_conditional_flow(x0, x1, 1 - tt, x)  # their time is FM time τ = 1 − t
    per = loss.per_sample(theirs, x1, generator=g, t=t, noise=x0)
    assert float(per.max()) < 1e-12  # their 1e-8 guard in the denominator
    tau = (1 - t)[:, None]
    eps_hat = (seen["x"] - fm.compute_mu_t(x0, x1, 1 - t)) / fm.compute_sigma_t(tau)
    torch.testing.assert_close(fm.sample_xt(x0, x1, 1 - t, eps_hat), seen["x"], rtol=1e-12, atol=1e-12)
