"""Guided progressive distillation (book §10.3.4): the exact class-conditional
mixture teacher obeys Bayes' rule, the w-conditioned network reduces to its MLP at initialisation,
and the stage-2 target of a w-conditioned model at fixed w lands on two DDIM steps of the guided
sampler (the classifier-free-guided teacher, ω = w + 1). Fast tests (default run)."""
import pytest
import torch

import diffcore
from diffcore import models, oracles, schedules
from diffcore.distill.guided import ClassMixtureTeacher, GuidedProgressiveDistillation, WConditioned
from diffcore.distill.progressive import guided_teacher, pd_target
from diffcore.distill.students import PDStudent
from diffcore.solvers import ddim_step

F64 = torch.float64
CLASSES = [[0], [1, 3], [2]]


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _teacher(sched, prediction="x0"):
    return ClassMixtureTeacher(oracles.toy_2d_mixture(), CLASSES, sched, prediction)


def test_class_mixture_teacher_is_bayes_consistent():
    """The null label's denoiser (the full mixture) equals Σ_c p_t(c|x) x*_c(x) with
    p_t(c|x) ∝ π_c p_t(x|c) computed from the class mixtures' marginal densities; classes and prior
    are the restricted mixtures and their weights."""
    sched = schedules.get("vp_cosine")
    T = _teacher(sched)
    gm = oracles.toy_2d_mixture()
    assert torch.allclose(T.prior, torch.tensor([0.45, 0.35, 0.2], dtype=F64), atol=1e-15)
    x = 1.5 * torch.randn(64, 2, dtype=F64, generator=_gen(0))
    t = torch.rand(64, dtype=F64, generator=_gen(1)) * 0.9 + 0.05
    logp = torch.stack([T.prior[c].log() + T.components[c].marginal_log_prob(x, t, sched) for c in range(3)], 1)
    post = torch.softmax(logp, dim=1)
    den = torch.stack([T(x, t, torch.full((64,), c)) for c in range(3)], 1)
    bayes = (post[:, :, None] * den).sum(1)
    null = T(x, t, torch.full((64,), T.null_label))
    assert torch.allclose(null, gm.denoiser(x, t, sched), rtol=0, atol=1e-13)
    assert torch.allclose(null, bayes, rtol=0, atol=1e-12)
    mixed = torch.tensor([0, 1, 2, 3] * 16)
    got = T(x, t, mixed)  # a mixed batch is routed per label
    for c in range(4):
        m = mixed == c
        assert torch.equal(got[m], (null if c == 3 else den[:, c])[m])
    x0, lab = T.sample(20000, _gen(2))
    freq = torch.bincount(lab, minlength=3).double() / 20000
    assert torch.allclose(freq, T.prior, atol=0.015)
    # class 0 is the single component 0: its sample mean is μ_0 to Monte-Carlo accuracy (std ≈ 0.55/√n)
    assert torch.allclose(x0[lab == 0].mean(0), gm.means[0], atol=0.03)
    with pytest.raises(ValueError, match="classes"):
        ClassMixtureTeacher(gm, [[0], [1, 2]], sched)
    with pytest.raises(ValueError, match="labels"):
        T(x, t, torch.full((64,), 4))


def test_w_conditioned_mlp_starts_as_its_mlp_and_validates():
    torch.manual_seed(0)
    mlp = models.MLP(2, 32, 2, num_classes=3)
    with torch.no_grad():
        mlp.out.weight.normal_(0, 0.5)
    net = WConditioned(mlp, w_max=4.0)
    x = torch.randn(8, 2, generator=_gen(0))
    t = torch.rand(8, generator=_gen(1))
    lab = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    ref = mlp(x, t, labels=lab)
    for w in (0.0, 2.5, torch.linspace(0, 4, 8)):
        assert torch.allclose(net(x, t, labels=lab, w=w), ref, rtol=0, atol=1e-6)
    with torch.no_grad():
        net.w_mlp[-1].weight.normal_(0, 0.5)
    a, b = net(x, t, labels=lab, w=1.0), net(x, t, labels=lab, w=3.0)
    assert (a - b).abs().max() > 1e-3  # w now conditions the output
    assert torch.equal(a, net(x, t, labels=lab, w=torch.full((8,), 1.0)))  # scalar == broadcast [B]
    assert net.null_label == 3 and net.num_classes == 3
    with pytest.raises(TypeError, match="w"):
        net(x, t, labels=lab)
    with pytest.raises(ValueError, match="w"):
        net(x, t, labels=lab, w=torch.ones(3))
    with pytest.raises(TypeError, match="net"):
        WConditioned(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="w_max"):
        WConditioned(mlp, w_max=0.0)


def test_stage2_target_of_w_conditioned_model_is_two_guided_ddim_steps():
    """§4.3 stage 2 at a fixed w: (i) with the exact stage-1 model (the guided teacher x^w_φ of the
    mixture oracle), the PD target x̃_t equals two DDIM steps of diffcore.sample with CFG ω = w + 1, and
    one DDIM step with x̃ lands there; (ii) with a w-conditioned network as the stage-2 teacher, x̃_t
    equals the solver engine's two-step DDIM of that network with (labels, w) passed through."""
    sched = schedules.get("vp_cosine")
    T = _teacher(sched)
    B = 32
    x = torch.randn(B, 2, dtype=F64, generator=_gen(0))
    lab = torch.tensor([0, 1, 2, 1] * 8)
    null = torch.full_like(lab, T.null_label)
    s_, u_, t_ = 0.8, 0.5, 0.2
    for w in (0.0, 2.0):
        exact = lambda xx, tt, labels, w: guided_teacher(T, xx, tt, sched, labels, w, T.null_label, "x0")
        kw = {"labels": lab, "w": torch.full((B,), w, dtype=F64)}
        x_tilde, x_t = pd_target(exact, x, s_, u_, t_, sched, "x0", kw)
        ref = diffcore.sample(T, x, sched, solver="ddim", steps=torch.tensor([s_, u_, t_], dtype=F64),
                              prediction="x0", model_kwargs={"labels": lab},
                              guidance=diffcore.CFG.from_w(w, uncond={"labels": null}))
        assert torch.allclose(x_t, ref, rtol=0, atol=1e-12)
        assert torch.allclose(ddim_step(lambda xx, tt: x_tilde, x, s_, t_, sched, "x0"), ref, rtol=0, atol=1e-12)
    torch.manual_seed(0)
    net = WConditioned(models.MLP(2, 32, 2, num_classes=3)).double()
    with torch.no_grad():
        net.net.out.weight.normal_(0, 0.5)
        net.w_mlp[-1].weight.normal_(0, 0.5)
    kw = {"labels": lab, "w": 2.0}
    x_tilde, x_t = pd_target(net, x, s_, u_, t_, sched, "v", kw)
    ref = diffcore.sample(net, x, sched, solver="ddim", steps=torch.tensor([s_, u_, t_], dtype=F64), prediction="v",
                          model_kwargs=kw)
    assert torch.allclose(x_t, ref, rtol=0, atol=1e-12)
    assert torch.allclose(ddim_step(lambda xx, tt: x_tilde, x, s_, t_, sched, "x0"), ref, rtol=0, atol=1e-12)


def test_guided_pd_pipeline_returns_a_w_conditioned_pd_student():
    """Two stages on a tiny budget: the result is a PDStudent on the halved grid whose sampler (through
    diffcore.sample, (labels, w) in model_kwargs) is the solver engine's DDIM of its network; stage 1
    reduces its loss."""
    sched = schedules.get("vp_cosine")
    T = _teacher(sched)
    torch.manual_seed(0)
    net = WConditioned(models.MLP(2, 32, 2, num_classes=3))
    gpd = GuidedProgressiveDistillation(T, net, sched, 4, T.null_label, (0.0, 2.0), "x0", "v",
                                       weighting="snr_plus_one", lr=3e-3, stage1_iters=150, iters=3, batch_size=128)
    data = lambda n, g: (lambda o: (o[0].float(), o[1]))(T.sample(n, g))
    st = gpd.run(data, 1, _gen(0))
    h = gpd.history["stage1"]
    assert sum(h[-20:]) / 20 < 0.5 * sum(h[:20]) / 20
    assert isinstance(st, PDStudent) and st.steps == 1 and len(gpd.history["stage2"]) == 2
    assert torch.equal(st.grid, diffcore.timesteps(sched, 4)[::4])
    x = torch.randn(16, 2, generator=_gen(1))
    kw = {"labels": torch.arange(16) % 3, "w": 1.5}
    got = diffcore.sample(st, x, sched, steps=1, model_kwargs=kw)
    assert torch.equal(got, ddim_step(st.net, x, st.grid[0], st.grid[1], sched, "v", kw))
    with pytest.raises(TypeError, match="data"):
        gpd.stage1(lambda n, g: T.sample(n, g)[0])
    with pytest.raises(ValueError, match="w_range"):
        GuidedProgressiveDistillation(T, net, sched, 4, T.null_label, (2.0, 1.0))
