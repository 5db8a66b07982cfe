"""Classifier-free guidance and progressive distillation on the 8×8 digits (issue 7 Done-when;
image-scale checks, book §8.3.2 eq. 8.3.3 and §10.3).

Default run: the CFG plumbing on digits shapes against a float64 hand-written guided DDIM loop, the
ω = 1 / ω = 0 identities, the Fréchet feature distance against its closed form and scipy, and the
digits classifier used as the quality oracle. Slow (``-m slow``): classifier accuracy of CFG samples
rising with ω on a trained class-conditional teacher.
"""
from __future__ import annotations

import math

import diffcore
import pytest
import torch
from diffcore.data import Digits
from diffcore.models import MLP
from diffcore.train.digits_quality import (
    class_accuracy,
    class_confidence,
    digits_report,
    frechet_distance,
    train_digits_classifier,
)

SCHED = "vp_cosine"


def _untrained(seed=0, dtype=torch.float32):
    """A class-conditional MLP with a random (not zero-initialised) output layer, so that labels matter."""
    torch.manual_seed(seed)
    net = MLP(64, width=32, depth=2, num_classes=10)
    torch.nn.init.normal_(net.out.weight, std=0.3)
    torch.nn.init.normal_(net.out.bias, std=0.1)
    return net.to(dtype).eval().requires_grad_(False)


def _labels_and_noise(n_per_class=3, seed=1, dtype=torch.float32):
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = diffcore.prior_sample(SCHED, (y.numel(), 1, 8, 8), seed=seed).to(dtype)
    return y, x


# ---- CFG plumbing on digits shapes (cheap) -------------------------------------------------------
def test_cfg_omega_one_is_the_conditional_model_bitwise():
    net = _untrained()
    y, x = _labels_and_noise()
    null = torch.full_like(y, net.null_label)
    cond = diffcore.sample(net, x, SCHED, solver="ddim", steps=4, prediction="eps", model_kwargs={"labels": y})
    guided = diffcore.sample(net, x, SCHED, solver="ddim", steps=4, prediction="eps", model_kwargs={"labels": y},
                             guidance=diffcore.CFG(1.0, uncond={"labels": null}))
    assert torch.equal(cond, guided)
    # and the labels do matter for this network (so the identity above is not vacuous)
    uncond = diffcore.sample(net, x, SCHED, solver="ddim", steps=4, prediction="eps", model_kwargs={"labels": null})
    assert (cond - uncond).abs().max() > 1e-2


def test_cfg_omega_zero_is_the_unconditional_model():
    net = _untrained(1)
    y, x = _labels_and_noise()
    null = torch.full_like(y, net.null_label)
    uncond = diffcore.sample(net, x, SCHED, solver="ddim", steps=4, prediction="eps", model_kwargs={"labels": null})
    guided = diffcore.sample(net, x, SCHED, solver="ddim", steps=4, prediction="eps", model_kwargs={"labels": y},
                             guidance=diffcore.CFG(0.0, uncond={"labels": null}))
    # the branches run as one batch of 2B, so float32 matmul blocking may differ in the last bits
    torch.testing.assert_close(guided, uncond, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("omega", [2.5, -0.5])
def test_cfg_digits_matches_float64_guided_ddim_loop(omega):
    """diffcore.sample + CFG against DDIM written out by hand (book eq. 8.3.3 on ε̂, then
    x̂0 = (x − σ_s ε̂)/α_s, x_t = α_t x̂0 + σ_t ε̂), everything in float64."""
    net = _untrained(2, torch.float64)
    y, x = _labels_and_noise(dtype=torch.float64)
    null = torch.full_like(y, net.null_label)
    sched = diffcore.schedules.get(SCHED)
    grid = diffcore.timesteps(sched, 5)
    out = diffcore.sample(net, x, sched, solver="ddim", steps=grid, prediction="eps", model_kwargs={"labels": y},
                          guidance=diffcore.CFG(omega, uncond={"labels": null}))
    ref = x.clone()
    for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
        tb = torch.full((ref.shape[0],), s, dtype=torch.float64)
        e_c, e_u = net(ref, tb, labels=y), net(ref, tb, labels=null)
        eps = e_u + omega * (e_c - e_u)
        v = sched.eval(torch.tensor([s, t], dtype=torch.float64))
        ref = v.alpha[1] * (ref - v.sigma[0] * eps) / v.alpha[0] + v.sigma[1] * eps
    assert out.dtype == torch.float64 and out.shape == (30, 1, 8, 8)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


# ---- quality helpers -------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = a + torch.randn(6, generator=g, dtype=torch.float64)
    shift = torch.linspace(-1, 1, 6, dtype=torch.float64)
    mu, tr = a.mean(0), torch.cov(a.T).trace()
    assert abs(frechet_distance(a, a)) < 1e-8
    # a translation moves only the mean: FD = ‖δ‖²
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    # a scaling by k: μ → kμ, C → k²C, so FD = (k − 1)² (‖μ‖² + tr C)
    assert frechet_distance(a, 3.0 * a) == pytest.approx(4.0 * float(mu @ mu + tr), rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    cross = linalg.sqrtm(ca @ cb).real.trace()  # tr (C_a C_b)^{1/2} = tr (C_a^{1/2} C_b C_a^{1/2})^{1/2}
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum()) + ca.trace() + cb.trace() - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-7)


@pytest.fixture(scope="module")
def classifier():
    torch.set_num_threads(1)
    return train_digits_classifier(seed=0)


def test_digits_classifier_is_an_accurate_oracle(classifier):
    test = Digits("test")
    acc = class_accuracy(test.x, test.labels, classifier)
    assert acc > 0.9, acc  # measured 0.967 (359 held-out images)
    # accuracy and confidence agree on what they measure: clean held-out digits are confidently right
    conf = class_confidence(test.x, test.labels, classifier)
    assert 0.85 < conf <= 1.0
    # a sample counts for one label only: accuracies against two disjoint labellings sum to <= 1
    assert class_accuracy(test.x, (test.labels + 1) % 10, classifier) <= 1.0 - acc + 1e-12
    rep = digits_report(test.x, test.labels, classifier, reference=test.x)
    assert rep["acc"] == acc and abs(rep["fd"]) < 1e-6


def test_quality_helpers_reject_bad_input(classifier):
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="labels"):
        class_accuracy(x, torch.zeros(3, dtype=torch.long), classifier)
    with pytest.raises(ValueError, match="labels"):
        class_accuracy(x, torch.zeros(4), classifier)
    with pytest.raises(ValueError, match="samples"):
        class_accuracy(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), classifier)
    with pytest.raises(ValueError, match="a, b"):
        frechet_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="steps"):
        train_digits_classifier(steps=0)


# ---- slow: CFG on a trained class-conditional teacher ---------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    """ε-prediction conditional MLP with label dropout 0.1 (≈ 15 s on one thread). Its conditional
    samples are only weakly class-specific (accuracy ≈ 0.2–0.4 at ω = 1), the regime where guidance
    has room to act; a v-prediction teacher already reaches ≈ 0.9 at ω = 1 and saturates at ω = 2."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = MLP(64, width=192, depth=3, num_classes=10)
    trainer = diffcore.train.Trainer(net, diffcore.losses.get("eps", schedule=SCHED), Digits("train"),
                                     batch_size=256, lr=2e-3, label_dropout=0.1, ema_decay=0.995, seed=0,
                                     device="cpu", log_every=None)
    trainer.fit(1200)
    return trainer.ema.module.eval().requires_grad_(False)


@pytest.mark.slow
def test_cfg_accuracy_rises_with_omega(teacher, classifier):
    y, x = _labels_and_noise(n_per_class=50, seed=1)
    null = torch.full_like(y, teacher.null_label)
    n = y.numel()
    acc = {}
    for omega in (0.0, 1.0, 2.0, 4.0):
        with torch.no_grad():
            s = diffcore.sample(teacher, x, SCHED, solver="dpmpp_2m", steps=25, prediction="eps",
                                model_kwargs={"labels": y}, guidance=diffcore.CFG(omega, uncond={"labels": null}))
        acc[omega] = class_accuracy(s, y, classifier)
    print("CFG class accuracy per omega:", acc)
    # ω = 0 samples do not depend on y, and y is balanced, so E[acc] = Σ_k P(class k)/10 = 0.1 exactly
    assert abs(acc[0.0] - 0.1) < 3 * math.sqrt(0.1 * 0.9 / n)
    # strictly rising, each step by more than 3 binomial standard errors of the difference
    for lo, hi in ((1.0, 2.0), (2.0, 4.0)):
        se = math.sqrt(acc[lo] * (1 - acc[lo]) / n + acc[hi] * (1 - acc[hi]) / n)
        assert acc[hi] - acc[lo] > 3 * se, (lo, hi, acc, se)
