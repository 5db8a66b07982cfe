"""Trajectory distillation, consistency models and MeanFlow (book §10.3, §11.2, §11.5):
the PD target lands exactly on the two-step teacher result, the CM boundary condition is exact, the CD
loss vanishes for the exact consistency function and shrinks at the teacher's order, the exact average
velocity of Gaussian data is a fixed point of the MeanFlow target, MeanFlow at t = s is flow matching,
and students sample through diffcore.sample."""
import copy
import math

import pytest
import torch

import diffcore
from diffcore import oracles, schedules
from diffcore.distill.consistency import (ConsistencyFunction, cd_loss, cm_curriculum, consistency_coefs,
                                          consistency_sample, ct_loss, distance, ict_curriculum, ict_index_probs,
                                          karras_grid, pseudo_huber)
from diffcore.distill.jvp import jvp
from diffcore.distill.meanflow import TwoTimeMLP, meanflow_loss, meanflow_sample, meanflow_target, meanflow_times
from diffcore.distill.progressive import (ProgressiveDistillation, guided_stage1_loss, guided_teacher, pd_loss,
                                          pd_target)
from diffcore.distill.students import ConsistencyStudent, MeanFlowStudent, PDStudent
from diffcore.solvers import ddim_step

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _mlp64(dim=2, seed=0, **kw):
    torch.manual_seed(seed)
    net = diffcore.models.MLP(dim, width=32, depth=2, **kw).double()
    with torch.no_grad():  # the output layer starts at zero: randomise it so the "teacher" is non-trivial
        net.out.weight.normal_(0, 0.5)
        net.out.bias.normal_(0, 0.1)
    return net


# ---- jvp (§0.5) -------------------------------------------------------------------------------------
def test_jvp_autograd_and_fd_match_closed_form():
    x = torch.linspace(-1, 1, 7, dtype=F64)
    s = torch.full((7,), 0.3, dtype=F64)
    v = torch.cos(x)

    def fn(a, b):
        return torch.sin(a) * b ** 2

    exact = torch.cos(x) * v * s ** 2 + torch.sin(x) * 2 * s  # tangent (v, 1)
    out, tan = jvp(fn, (x, s), (v, torch.ones_like(s)))
    assert torch.equal(out, fn(x, s))
    assert torch.allclose(tan, exact, rtol=0, atol=1e-14)
    errs = [(jvp(fn, (x, s), (v, torch.ones_like(s)), method="fd", h=h)[1] - exact).abs().max().item()
            for h in (1e-2, 5e-3)]
    assert errs[0] < 1e-4 and 3.5 < errs[0] / errs[1] < 4.5  # central difference: O(h²)
    assert (jvp(fn, (x, s), (v, torch.ones_like(s)), method="fd")[1] - exact).abs().max() < 1e-9
    with pytest.raises(ValueError, match="method"):
        jvp(fn, (x, s), (v, s), method="forward")
    with pytest.raises(ValueError, match="tangents"):
        jvp(fn, (x, s), (v,))


def test_backprop_through_jvp_primal_matches_plain_forward():
    """§8.2: the primal of torch.func.jvp keeps its graph to the parameters (so it can be the prediction)."""
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2).double()
    with torch.no_grad():
        net.out.weight.normal_()
    x = torch.randn(5, 2, dtype=F64)
    s, t = torch.rand(5, dtype=F64), torch.zeros(5, dtype=F64)
    pred, _ = jvp(net, (x, s, t), (torch.randn_like(x), torch.ones_like(s), torch.zeros_like(t)))
    g1 = torch.autograd.grad((pred ** 2).sum(), list(net.parameters()))
    g2 = torch.autograd.grad((net(x, s, t) ** 2).sum(), list(net.parameters()))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


# ---- progressive distillation (§4.2–§4.3) ------------------------------------------------------------
def _teachers(sched):
    gm = oracles.toy_2d_mixture()
    mlp = _mlp64()
    yield "mixture", lambda p: (lambda x, t: gm.predict(x, t, sched, p))
    yield "mlp", lambda p: (lambda x, t: mlp(x, t))
    yield "random_fn", lambda p: (lambda x, t: torch.sin(3 * x) * t[:, None] + x ** 2)


@pytest.mark.parametrize("sname", ["vp_linear", "vp_cosine", "edm", "rf"])
def test_pd_target_equals_two_step_teacher_for_any_teacher(sname):
    sched = schedules.get(sname)
    g = diffcore.timesteps(sched, 8)
    if sname == "rf":  # α_1 = 0: eps/score heads cannot be converted at t = 1
        g = torch.linspace(0.95, 0.0, 9, dtype=F64)
    preds = ["x0", "velocity"] if sname == "rf" else ["eps", "x0", "velocity", "score"]
    B = 24
    k = torch.arange(B) % 4
    s, u, t = g[2 * k], g[2 * k + 1], g[2 * k + 2]
    x = oracles.toy_2d_mixture().sample_marginal(B, s, sched, _gen(1))
    for _, make in _teachers(sched):
        for pred in preds:
            teacher = make(pred)
            x_tilde, x_t = pd_target(teacher, x, s, u, t, sched, pred)
            # independent two-step reference: the solver engine's DDIM on each sample's 2-step grid
            ref = torch.stack([diffcore.sample(lambda xx, tt, f=teacher: f(xx, tt), x[b:b + 1], sched, solver="ddim",
                                               steps=torch.stack([s[b], u[b], t[b]]), prediction=pred)[0]
                               for b in range(B)])
            scale = 1 + x_t.abs().max().item()
            assert (x_t - ref).abs().max().item() <= 1e-12 * scale
            one = ddim_step(lambda xx, tt, m=x_tilde: m, x, s, t, sched, "x0")
            assert (one - x_t).abs().max().item() <= 1e-12 * scale
            final = t == g[-1]
            if float(sched.sigma(g[-1:])) == 0.0:  # t = 0: the target IS the two-step teacher output
                assert torch.equal(x_tilde[final], x_t[final])
            if sname == "edm":  # edm form x̃ = (s x̃_t − t x_s)/(s − t)
                e = (s[:, None] * x_t - t[:, None] * x) / (s - t)[:, None]
                assert (e - x_tilde).abs().max().item() <= 1e-12 * (1 + e.abs().max().item())


def test_pd_target_point_mass_is_the_point_and_loss_weighting():
    sched = schedules.get("vp_cosine")
    star = torch.tensor([[0.7, -1.2]], dtype=F64)
    pm = oracles.EmpiricalData(star)
    g = diffcore.timesteps(sched, 4)
    B = 8
    k = torch.arange(B) % 2
    x = pm.sample_marginal(B, g[2 * k], sched, _gen(0))
    x_tilde, _ = pd_target(lambda xx, tt: pm.predict(xx, tt, sched, "eps"), x, g[2 * k], g[2 * k + 1], g[2 * k + 2],
                           sched, "eps")
    assert torch.allclose(x_tilde, star.expand(B, 2), rtol=0, atol=1e-10)
    # loss of a student predicting x★ + δ: mean_k max(SNR_s, 1) δ² (per-sample mean over features)
    delta = torch.tensor([0.1, -0.3], dtype=F64)
    x0 = star.expand(B, 2).clone()
    loss = pd_loss(lambda xx, tt: (star + delta).expand(xx.shape[0], 2), lambda xx, tt: pm.predict(xx, tt, sched, "x0"),
                   x0, g, sched, "x0", "x0", "snr_trunc", k=k, noise=torch.randn(B, 2, generator=_gen(3), dtype=F64))
    snr = (sched.alpha(g[2 * k]) / sched.sigma(g[2 * k])) ** 2
    expected = (torch.clamp(snr, min=1.0) * (delta ** 2).mean()).mean()
    assert abs(loss.item() - expected.item()) <= 1e-10 * expected.item()
    with pytest.raises(ValueError, match="s, u, t"):
        pd_target(lambda xx, tt: xx, x, g[2], g[1], g[0], sched, "eps")
    with pytest.raises(ValueError, match="teacher_grid"):
        pd_loss(lambda xx, tt: xx, lambda xx, tt: xx, x0, g[:4], sched)


def test_guided_stage1_target_is_cfg_with_shifted_weight():
    """§4.3: x^w = (1 + w) x(c) − w x(∅) equals the library's CFG with ω = w + 1 (CFG.from_w), in any head."""
    sched = schedules.get("vp_linear")
    teacher = _mlp64(num_classes=3)
    B = 6
    x = torch.randn(B, 2, dtype=F64, generator=_gen(0))
    t = torch.linspace(0.1, 0.9, B, dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    null = torch.full_like(labels, teacher.null_label)
    for w in (0.0, 1.5):
        cfg = diffcore.CFG.from_w(w, uncond={"labels": null}).wrap(teacher, {"labels": labels})
        ref = diffcore.convert(cfg(x, t), x, t, sched, "eps", "x0")
        got = guided_teacher(teacher, x, t, sched, labels, w, teacher.null_label, "eps")
        assert torch.allclose(got, ref, rtol=0, atol=1e-12)
        if w == 0.0:
            cond = diffcore.convert(teacher(x, t, labels=labels), x, t, sched, "eps", "x0")
            assert torch.allclose(got, cond, rtol=0, atol=1e-14)
    # stage-1 loss of a student that returns the exact guided target is zero; a shifted one gives δ²·w̄
    def student(xx, tt, labels, w):
        return guided_teacher(teacher, xx, tt, sched, labels, w, teacher.null_label, "eps") + 0.2

    loss = guided_stage1_loss(student, teacher, x, labels, sched, teacher.null_label, teacher_prediction="eps",
                              weighting="none", t=t, w=torch.full((B,), 2.0, dtype=F64),
                              noise=torch.randn(B, 2, dtype=F64, generator=_gen(1)))
    assert abs(loss.item() - 0.04) < 1e-12
    # stage 2 (PD of the w-conditioned model, (c, w) passed through): the one-step target lands on two
    # DDIM steps of the CFG sampler with ω = w + 1
    stage1 = lambda xx, tt, labels, w: guided_teacher(teacher, xx, tt, sched, labels, w, teacher.null_label, "eps")
    s_, u_, t_ = 0.9, 0.6, 0.3
    kw = {"labels": labels, "w": torch.full((B,), 1.5, dtype=F64)}
    x_tilde, x_t = pd_target(stage1, x, s_, u_, t_, sched, "x0", kw)
    ref = diffcore.sample(teacher, x, sched, solver="ddim", steps=torch.tensor([s_, u_, t_], dtype=F64),
                          prediction="eps", model_kwargs={"labels": labels},
                          guidance=diffcore.CFG.from_w(1.5, uncond={"labels": null}))
    assert torch.allclose(x_t, ref, rtol=0, atol=1e-12)
    assert torch.allclose(ddim_step(lambda xx, tt: x_tilde, x, s_, t_, sched, "x0"), ref, rtol=0, atol=1e-12)


def test_progressive_distillation_rounds_beat_naive_few_step_teacher():
    """Two halving rounds (8 → 4 → 2 steps) on 1-D Gaussian data with the exact teacher: the 2-step
    student reproduces the 8-step teacher map far better than the teacher run with 2 DDIM steps."""
    sched = schedules.get("vp_cosine")
    gauss = oracles.Gaussian(torch.tensor([1.0]), torch.tensor(0.09))
    teacher = lambda x, t: gauss.predict(x, t, sched, "x0").to(x.dtype)
    torch.manual_seed(0)
    student = diffcore.models.MLP(1, width=32, depth=2)
    pd = ProgressiveDistillation(teacher, sched, 8, student=student, teacher_prediction="x0", student_prediction="x0",
                                 lr=1e-2, iters=250, batch_size=128)
    data = lambda n, g: gauss.sample(n, g).float()
    st = pd.run(data, target_steps=2, generator=_gen(0))
    assert isinstance(st, PDStudent) and st.steps == 2 and len(pd.history) == 2
    xT = torch.randn(2000, 1, generator=_gen(5)) * float(sched.sigma(st.grid[:1]))
    ref8 = diffcore.sample(teacher, xT.double(), sched, solver="ddim", steps=diffcore.timesteps(sched, 8),
                           prediction="x0")
    naive2 = diffcore.sample(teacher, xT.double(), sched, solver="ddim", steps=st.grid, prediction="x0")
    stud = st.few_step_sample(xT, sched, 2).double()
    err_student = ((stud - ref8) ** 2).mean().item()
    err_naive = ((naive2 - ref8) ** 2).mean().item()
    assert err_student < 0.2 * err_naive, (err_student, err_naive)


# ---- consistency models (§5) --------------------------------------------------------------------------
@pytest.mark.parametrize("sname,t_min", [("edm", 0.002), ("vp_linear", 1e-3), ("rf", 1e-3)])
def test_consistency_boundary_condition_is_exact(sname, t_min):
    sched = schedules.get(sname)
    torch.manual_seed(0)
    net = diffcore.models.MLP(2, width=16, depth=2)
    with torch.no_grad():
        net.out.weight.normal_(0, 3.0)
    f = ConsistencyFunction(net, sched, t_min=t_min)
    x = torch.randn(64, 2) * 5
    assert torch.equal(f(x, torch.full((64,), t_min)), x)
    assert not torch.allclose(f(x, torch.full((64,), 0.5)), x)
    # t_min = 0 on edm: the book's coefficients c_skip = σ_d²/(σ_d² + s²), c_out = sσ_d/√(σ_d² + s²)
    s = torch.tensor([0.3, 2.0, 40.0], dtype=F64)
    cs, co, ci = consistency_coefs(schedules.get("edm").eval(s), schedules.get("edm").eval(torch.zeros(1, dtype=F64)))
    assert torch.allclose(cs, 0.25 / (0.25 + s ** 2), rtol=1e-15)
    assert torch.allclose(co, 0.5 * s / torch.sqrt(0.25 + s ** 2), rtol=1e-15)
    assert torch.allclose(ci, 1 / torch.sqrt(0.25 + s ** 2), rtol=1e-15)
    with pytest.raises(ValueError, match="t_min"):
        ConsistencyFunction(net, "rf", t_min=0.0)


def _cd_setup(N):
    sched = schedules.get("edm")
    gauss = oracles.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor(0.25, dtype=F64))
    t_min = 0.002
    fstar = lambda x, s: gauss.flow_map(x, s, t_min, sched)  # f*(x, s) = Ψ_{s→t_min}(x)
    teacher = lambda x, t: gauss.predict(x, t, sched, "eps")
    i = torch.arange(N - 1).repeat_interleave(32)
    x0 = gauss.sample(i.numel(), _gen(1))
    eps = torch.randn(x0.shape, generator=_gen(2), dtype=F64)
    return sched, gauss, fstar, teacher, karras_grid(N, t_min, 80.0), i, x0, eps


def test_cd_loss_zero_for_exact_consistency_function_and_teacher_order():
    sched, gauss, fstar, teacher, grid, i, x0, eps = _cd_setup(16)
    exact = lambda x, a, b: gauss.flow_map(x, a, b, sched)
    assert cd_loss(fstar, fstar, teacher, x0, grid, sched, "eps", exact, i=i, noise=eps).item() < 1e-28
    # with a one-step teacher the loss is the squared local error mapped by f*: O(Δ^{2(p+1)})
    for solver, order in (("ddim", 1), ("heun", 2)):
        L = []
        for N in (64, 128):
            sched, _, fstar, teacher, grid, i, x0, eps = _cd_setup(N)
            L.append(cd_loss(fstar, fstar, teacher, x0, grid, sched, "eps", solver, i=i, noise=eps).item())
        slope = math.log2(L[0] / L[1])
        assert abs(slope - 2 * (order + 1)) < 0.3, (solver, L, slope)


def test_ct_target_is_ddim_with_one_point_score_and_ct_loss():
    sched, _, _, _, grid, i, x0, eps = _cd_setup(8)
    s_lo, s_hi = grid[i], grid[i + 1]
    x_hi = sched.alpha(s_hi)[:, None] * x0 + sched.sigma(s_hi)[:, None] * eps
    x_lo = ddim_step(lambda x, t: eps, x_hi, s_hi, s_lo, sched, "eps")  # eq. (11.2.5)
    ref = sched.alpha(s_lo)[:, None] * x0 + sched.sigma(s_lo)[:, None] * eps
    assert torch.allclose(x_lo, ref, rtol=0, atol=1e-12)
    # CT with the identity "consistency function": loss = mean ‖x_hi − x_lo‖² = mean (s_hi − s_lo)²‖ε‖²
    loss = ct_loss(lambda x, s: x, lambda x, s: x, x0, grid, sched, i=i, noise=eps)
    expected = (((s_hi - s_lo) ** 2) * (eps ** 2).sum(1)).mean()
    assert abs(loss.item() - expected.item()) <= 1e-12 * expected.item()
    w = ct_loss(lambda x, s: x, lambda x, s: x, x0, grid, sched, weighting="inv_dt", i=i, noise=eps)
    assert abs(w.item() - ((s_hi - s_lo) * (eps ** 2).sum(1)).mean().item()) < 1e-9 * w.item()


def test_consistency_trainer_target_is_an_ema_of_the_online_network():
    """θ⁻ ← μθ⁻ + (1 − μ)θ after each step (§0.4), for CT with the CM curriculum (μ(k) of §5.2)."""
    from diffcore.distill.consistency import ConsistencyTrainer
    torch.manual_seed(0)
    f = ConsistencyFunction(diffcore.models.MLP(2, width=16, depth=2, time_transform="log"), "edm", t_min=0.002)
    tr = ConsistencyTrainer(f, "edm", curriculum="cm", lr=1e-2)
    g = _gen(0)
    for k in range(3):
        before = [p.detach().clone() for p in tr.target.parameters()]
        tr.step(torch.randn(32, 2, generator=g), k=k, K=10, generator=g)
        mu = cm_curriculum(k, 10)[1]
        for pt, pb, po in zip(tr.target.parameters(), before, f.parameters()):
            assert torch.allclose(pt, mu * pb + (1 - mu) * po.detach(), rtol=0, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(tr.target.parameters(), before))
    assert len(tr.losses) == 3 and all(math.isfinite(v) and v > 0 for v in tr.losses)


def test_pseudo_huber_limits_and_distances():
    x = torch.randn(10, 3, dtype=F64, generator=_gen(0))
    y = torch.randn(10, 3, dtype=F64, generator=_gen(1))
    d2 = ((x - y) ** 2).sum(1)
    for c in (1e3, 1e5):  # → ‖·‖²/(2c), relative error ≈ d²/(4c²)
        rel = (pseudo_huber(x, y, c) * 2 * c / d2 - 1).abs().max().item()
        assert rel < d2.max().item() / c ** 2
    assert torch.allclose(pseudo_huber(x, y, 1e-9), d2.sqrt(), rtol=1e-8)  # → ‖·‖ as c → 0
    assert torch.allclose(distance(x, y, "l1"), (x - y).abs().sum(1))
    assert torch.allclose(distance(x, y, "pseudo_huber"), pseudo_huber(x, y, 0.00054 * math.sqrt(3)))
    with pytest.raises(ValueError, match="metric"):
        distance(x, y, "lpips")


def test_ct_curricula():
    K = 1000
    Ns = [cm_curriculum(k, K)[0] for k in range(K + 1)]
    assert Ns[0] == 2 and Ns[-1] == 151 and all(b >= a for a, b in zip(Ns, Ns[1:]))
    assert abs(cm_curriculum(0, K)[1] - 0.9) < 1e-15
    # k = K/2: ⌈√(0.5(151² − 4) + 4) − 1⌉ + 1 = ⌈106.78… − 1⌉ + 1 = 107; μ = 0.9^{2/107}
    N, mu = cm_curriculum(500, K)
    assert N == 107 and abs(mu - 0.9 ** (2 / 107)) < 1e-15
    assert cm_curriculum(500, K, mu_exponent_offset=1)[1] == pytest.approx(0.9 ** (2 / 106), rel=1e-14)
    # iCT: K' = ⌊1000/(log2 128 + 1)⌋ = 125
    assert [ict_curriculum(k, K) for k in (0, 124, 125, 250, 999, 1000)] == [11, 11, 21, 41, 1281, 1281]
    p = ict_index_probs(karras_grid(11))
    assert p.shape == (10,) and bool((p > 0).all()) and abs(p.sum().item() - 1) < 1e-15
    g = karras_grid(5, 0.002, 80.0)
    assert g[0].item() == 0.002 and g[-1].item() == 80.0
    assert abs(g[2].item() - ((0.002 ** (1 / 7) + 80 ** (1 / 7)) / 2) ** 7) < 1e-12


def test_multistep_consistency_sampling_preserves_the_law():
    """§5.4: exact f* and x_T from the exact marginal give p_{t_min} after 1 and after 3 steps."""
    sched = schedules.get("edm")
    mu, var = torch.tensor([1.0, -0.5], dtype=F64), 0.25
    gauss = oracles.Gaussian(mu, torch.tensor(var, dtype=F64))
    t_min, T, n = 0.002, 80.0, 20000
    fstar = lambda x, s: gauss.flow_map(x, s, t_min, sched)
    xT = gauss.sample_marginal(n, T, sched, _gen(0))
    V_min = var + t_min ** 2
    for times in ([T], [T, 5.0, 0.5]):
        out = consistency_sample(fstar, xT, times, sched, t_min, generator=_gen(1))
        assert (out.mean(0) - mu).abs().max().item() < 4 * math.sqrt(V_min / n)
        assert (out.var(0) / V_min - 1).abs().max().item() < 4 * math.sqrt(2 / n)
    with pytest.raises(ValueError, match="times"):
        consistency_sample(fstar, xT, [T, t_min], sched, t_min)


# ---- MeanFlow (§8) --------------------------------------------------------------------------------------
def _rf_gauss_hstar(mu, var):
    """Closed-form h*(x, s, t) and v*(x, s) of isotropic Gaussian data under rf (§0.6, (G)), written
    directly in torch (differentiable in x, s, t; float64)."""
    def V(t):
        return (1 - t) ** 2 * var + t ** 2

    def psi(x, s, t):
        return (1 - t)[:, None] * mu + torch.sqrt(V(t) / V(s))[:, None] * (x - (1 - s)[:, None] * mu)

    def vstar(x, s):
        dV = -2 * (1 - s) * var + 2 * s
        return -mu + (dV / (2 * V(s)))[:, None] * (x - (1 - s)[:, None] * mu)

    def hstar(x, s, t):
        eq = (s == t)[:, None]
        dt = torch.where(s == t, torch.ones_like(s), t - s)[:, None]
        return torch.where(eq, vstar(x, s), (psi(x, s, t) - x) / dt)

    return psi, vstar, hstar


def test_meanflow_exact_average_velocity_is_a_fixed_point():
    mu, var = torch.tensor([0.8, -1.5], dtype=F64), 0.3
    psi, vstar, hstar = _rf_gauss_hstar(mu, var)
    gauss = oracles.Gaussian(mu, torch.tensor(var, dtype=F64))
    sched = schedules.get("rf")
    B = 64
    s = torch.rand(B, dtype=F64, generator=_gen(0)) * 0.9 + 0.1
    t = s * torch.rand(B, dtype=F64, generator=_gen(1))
    s[0], t[0] = 1.0, 0.0  # (s, t) = (1, 0) included
    x = gauss.sample_marginal(B, s, sched, _gen(2))
    assert torch.allclose(psi(x, s, t), gauss.flow_map(x, s, t, sched), rtol=0, atol=1e-13)
    assert torch.allclose(vstar(x, s), gauss.velocity(x, s, sched), rtol=0, atol=1e-13)
    v = vstar(x, s)
    h, tgt = meanflow_target(hstar, x, s, t, v)
    assert (tgt - hstar(x, s, t)).abs().max().item() < 1e-8
    assert torch.equal(h, hstar(x, s, t))
    errs = [(meanflow_target(hstar, x, s, t, v, method="fd", h=hh)[1] - tgt).abs().max().item() for hh in (4e-3, 2e-3)]
    assert errs[0] < 1e-3 and 3.5 < errs[0] / errs[1] < 4.5  # O(h²)
    # one-step sampling sign (§11 item 8): x_1 − 1·h*(x_1, 1, 0) = Ψ_{1→0}(x_1)
    x1 = torch.randn(B, 2, dtype=F64, generator=_gen(3))
    one = meanflow_sample(hstar, x1, [1.0, 0.0])
    assert torch.allclose(one, gauss.flow_map(x1, 1.0, 0.0, sched), rtol=0, atol=1e-12)
    two = meanflow_sample(hstar, x1, [1.0, 0.4, 0.0])  # the exact average velocity composes exactly
    assert torch.allclose(two, one, rtol=0, atol=1e-12)


def test_meanflow_at_t_equal_s_is_flow_matching():
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2).double()
    with torch.no_grad():
        net.out.weight.normal_(0, 0.5)
    B = 32
    x0 = oracles.toy_2d_mixture().sample(B, _gen(0))
    eps = torch.randn(B, 2, dtype=F64, generator=_gen(1))
    t = torch.rand(B, dtype=F64, generator=_gen(2))
    mf = meanflow_loss(net, x0, "rf", s=t, t=t, p=0.0, noise=eps, reduction="none")
    cfm = diffcore.losses.get("cfm").per_sample(lambda x, tt: net(x, tt, tt), x0, t=t, noise=eps)
    assert torch.allclose(mf, cfm, rtol=1e-13, atol=0)
    g1 = torch.autograd.grad(mf.mean(), list(net.parameters()))
    g2 = torch.autograd.grad(cfm.mean(), list(net.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(g1, g2))
    # target at t = s is v = ε − x0 exactly, and the adaptive weight is err/(sg(err) + c)^p
    _, tgt = meanflow_target(net, x0 * 0 + eps * t[:, None] + x0 * (1 - t[:, None]), t, t, eps - x0)
    assert torch.equal(tgt, eps - x0)
    ad = meanflow_loss(net, x0, "rf", s=t, t=t, p=1.0, c=1e-3, noise=eps, reduction="none")
    assert torch.allclose(ad, cfm / (cfm + 1e-3), rtol=1e-13)
    s2, t2 = meanflow_times(4000, frac_equal=0.75, generator=_gen(4))
    frac = (s2 == t2).double().mean().item()
    assert bool((t2 <= s2).all()) and abs(frac - 0.75) < 0.03
    with pytest.raises(ValueError, match="t <= s"):
        meanflow_loss(net, x0, "rf", s=t * 0.5, t=t, noise=eps)


# ---- DDP: JVP losses give all-reduced gradients ---------------------------------------------------------
def _mf_net():
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2).double()
    with torch.no_grad():
        net.out.weight.normal_()
    return net


def _ddp_worker(rank, world, init_file, x0, eps, s, t, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = _mf_net()
        B = x0.shape[0] // world
        sl = slice(rank * B, (rank + 1) * B)
        try:  # DDP's default in-place buffer broadcast cannot run inside torch.func.jvp: a clear error
            meanflow_loss(DDP(_mf_net()), x0[sl], "rf", s=s[sl], t=t[sl], noise=eps[sl])
            refused = False
        except ValueError as e:
            refused = "broadcast_buffers=False" in str(e)
        for method in ("autograd", "fd"):
            net.zero_grad()
            ddp = DDP(net, broadcast_buffers=False)
            meanflow_loss(ddp, x0[sl], "rf", s=s[sl], t=t[sl], noise=eps[sl], jvp_method=method).backward()
            torch.save({"refused": refused, "grads": [p.grad.clone() for p in net.parameters()]},
                       f"{out_dir}/{method}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_meanflow_jvp_loss_gradients_are_synchronized_under_ddp(tmp_path):
    """Two gloo processes with half of the batch each end with the gradient of the full-batch loss."""
    mp = pytest.importorskip("torch.multiprocessing")
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    g = _gen(0)
    x0 = torch.randn(16, 2, generator=g, dtype=F64)
    eps = torch.randn(16, 2, generator=g, dtype=F64)
    s = torch.rand(16, generator=g, dtype=F64)
    t = torch.where(torch.arange(16) % 4 == 0, s, s * torch.rand(16, generator=g, dtype=F64))
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), x0, eps, s, t, str(tmp_path)), nprocs=2, join=True)
    for method in ("autograd", "fd"):
        net = _mf_net()
        meanflow_loss(net, x0, "rf", s=s, t=t, noise=eps, jvp_method=method).backward()
        for r in range(2):
            got = torch.load(tmp_path / f"{method}_{r}.pt")
            assert got["refused"]
            for a, p in zip(got["grads"], net.parameters()):
                assert torch.allclose(a, p.grad, rtol=1e-10, atol=1e-14), (method, r)


def _scm_ddp_worker(rank, world, init_file, x0, z, s, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from diffcore.distill.scm import TrigConsistency, scm_loss
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        B = x0.shape[0] // world
        sl = slice(rank * B, (rank + 1) * B)
        try:  # TwoTimeMLP has buffers: DDP's in-place broadcast cannot run inside torch.func.jvp
            scm_loss(TrigConsistency(DDP(_TimeNet())), x0[sl], s=s[sl], z=z[sl])
            refused = False
        except ValueError as e:
            refused = "broadcast_buffers=False" in str(e)
        for method in ("autograd", "fd"):
            net = _TimeNet()
            f = TrigConsistency(DDP(net, broadcast_buffers=False), 0.5)
            scm_loss(f, x0[sl], s=s[sl], z=z[sl], method=method).backward()
            torch.save({"refused": refused, "grads": [p.grad.clone() for p in net.parameters()]},
                       f"{out_dir}/scm_{method}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_scm_jvp_loss_gradients_are_synchronized_under_ddp(tmp_path):
    """sCT loss (§6.2) with the JVP tangent under two gloo processes, half of the batch each: both end
    with the gradient of the full-batch loss (autograd and finite-difference JVP)."""
    from diffcore.distill.scm import TrigConsistency, scm_loss
    mp = pytest.importorskip("torch.multiprocessing")
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    g = _gen(0)
    x0 = torch.randn(16, 2, generator=g, dtype=F64)
    z = 0.5 * torch.randn(16, 2, generator=g, dtype=F64)
    s = torch.rand(16, generator=g, dtype=F64) * 1.4 + 0.05
    mp.spawn(_scm_ddp_worker, args=(2, str(tmp_path / "init"), x0, z, s, str(tmp_path)), nprocs=2, join=True)
    for method in ("autograd", "fd"):
        net = _TimeNet()
        scm_loss(TrigConsistency(net, 0.5), x0, s=s, z=z, method=method).backward()
        assert max(p.grad.abs().max().item() for p in net.parameters()) > 1e-3  # a non-trivial gradient
        for r in range(2):
            got = torch.load(tmp_path / f"scm_{method}_{r}.pt")
            assert got["refused"]
            for a, p in zip(got["grads"], net.parameters()):
                assert torch.allclose(a, p.grad, rtol=1e-10, atol=1e-14), (method, r)


# ---- students through diffcore.sample ----------------------------------------------------------------
def test_students_sample_through_diffcore_sample():
    torch.manual_seed(0)
    sched = schedules.get("vp_cosine")
    net = _mlp64()
    grid = diffcore.timesteps(sched, 4)
    pd = PDStudent(net, sched, grid, "eps")
    x = torch.randn(16, 2, dtype=F64, generator=_gen(0))
    got = diffcore.sample(pd, x, sched, steps=4)
    assert torch.equal(got, pd.few_step_sample(x, sched, 4))
    ref = diffcore.sample(net, x, sched, solver="ddim", steps=grid, prediction="eps")  # the solver engine's DDIM
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    assert torch.allclose(diffcore.sample(pd, x, sched, steps=2),
                          diffcore.sample(net, x, sched, solver="ddim", steps=grid[::2], prediction="eps"), atol=1e-12)
    with pytest.raises(ValueError, match="divisor"):
        pd.few_step_sample(x, sched, 3)
    with pytest.raises(ValueError, match="schedule"):
        diffcore.sample(pd, x, "vp_linear", steps=4)

    edm = schedules.get("edm")
    cm = ConsistencyStudent(ConsistencyFunction(_mlp64(), edm, t_min=0.002))
    xT = torch.randn(16, 2, dtype=F64, generator=_gen(1)) * 80
    a = diffcore.sample(cm, xT, edm, steps=3, generator=_gen(7))
    b = cm.few_step_sample(xT, edm, 3, generator=_gen(7))
    assert torch.equal(a, b)
    noise = torch.randn((2,) + tuple(xT.shape), generator=_gen(7), dtype=F64)
    assert torch.equal(a, consistency_sample(cm.model, xT, cm.times(3), edm, 0.002, noise=noise))
    assert cm.times(3)[0].item() == 80.0 and cm.times(3).numel() == 3

    h = TwoTimeMLP(2, width=16, depth=2).double()
    mf = MeanFlowStudent(h)
    z = torch.randn(16, 2, dtype=F64, generator=_gen(2))
    assert torch.equal(diffcore.sample(mf, z, "rf", steps=2), meanflow_sample(h, z, [1.0, 0.5, 0.0]))


def test_scm_student_samples_through_diffcore_sample():
    from diffcore.distill.scm import TrigConsistency, scm_sample
    from diffcore.distill.students import SCMStudent
    f = TrigConsistency(_TimeNet(), 0.5)
    st = SCMStudent(f, mid_times=(1.1, 0.4))
    trig = schedules.get("trig", sigma_data=0.5)
    x = 0.5 * torch.randn(16, 2, dtype=F64, generator=_gen(0))
    assert torch.equal(diffcore.sample(st, x, trig, steps=1), f(x, math.pi / 2))
    for k in (2, 3):
        a = diffcore.sample(st, x, trig, steps=k, generator=_gen(7))
        assert torch.equal(a, st.few_step_sample(x, trig, k, generator=_gen(7)))
        noise = torch.randn((k - 1,) + tuple(x.shape), generator=_gen(7), dtype=F64)
        assert torch.equal(a, scm_sample(f, x, [math.pi / 2, 1.1, 0.4][:k], noise=noise))
    with pytest.raises(ValueError, match="steps"):
        st.few_step_sample(x, trig, 4)
    with pytest.raises(ValueError, match="schedule"):
        diffcore.sample(st, x, schedules.get("trig", sigma_data=1.0), steps=1)
    with pytest.raises(ValueError, match="mid_times"):
        SCMStudent(f, mid_times=(0.4, 1.1))


# ---- end to end (exact Gaussian-mixture teacher, 2-D) -------------------------------------------------
def _sw(a, b):
    return diffcore.metrics.sliced_wasserstein(a.double(), b.double(), 256, generator=_gen(11)).item()


@pytest.mark.slow
def test_end_to_end_pd_cd_meanflow_on_2d_mixture():
    """Exact Gaussian-mixture teachers on 2-D data: a 4-step PD student (16-step teacher, two rounds), a
    2-step CD student and a 2-step MeanFlow model (distilled from the exact velocity) all reach a sliced
    Wasserstein distance to data within 2 × (50-step teacher SW + held-out noise floor)."""
    gm = oracles.toy_2d_mixture()
    n = 2000
    data_ref = gm.sample(n, _gen(100))
    floor = _sw(gm.sample(n, _gen(101)), data_ref)
    data = lambda k, g: gm.sample(k, g).float()

    # PD: vp_cosine, exact x0 teacher on 16 DDIM steps → 4-step v-prediction student
    vp = schedules.get("vp_cosine")
    teacher = lambda x, t: gm.predict(x, t, vp, "x0").to(x.dtype)
    xT = torch.randn(n, 2, generator=_gen(102), dtype=F64)
    teacher50 = diffcore.sample(teacher, xT, vp, solver="ddim", steps=50, prediction="x0")
    bound = 2 * (_sw(teacher50, data_ref) + floor)
    naive4 = _sw(diffcore.sample(teacher, xT, vp, solver="ddim", steps=4, prediction="x0"), data_ref)
    torch.manual_seed(0)
    pdd = ProgressiveDistillation(teacher, vp, 16, student=diffcore.models.MLP(2, width=128, depth=3),
                                  teacher_prediction="x0", student_prediction="v", weighting="snr_plus_one",
                                  lr=2e-3, iters=800, batch_size=256)
    st = pdd.run(data, 4, generator=_gen(0))
    sw_pd = _sw(diffcore.sample(st, xT.float(), vp, steps=4), data_ref)

    # CD: edm, Heun steps of the exact teacher on an 18-point Karras grid, EMA target μ = 0.95
    from diffcore.distill.consistency import ConsistencyTrainer
    edm = schedules.get("edm")
    torch.manual_seed(0)
    f = ConsistencyFunction(diffcore.models.MLP(2, width=128, depth=3, time_transform="log"), edm, t_min=0.002)
    tr = ConsistencyTrainer(f, edm, teacher=lambda x, t: gm.predict(x, t, edm, "eps").to(x.dtype), N=18, mu=0.95,
                            lr=2e-3)
    g = _gen(1)
    for _ in range(1500):
        tr.step(data(256, g), generator=g)
    cm = ConsistencyStudent(tr.target)
    sw_cd = _sw(diffcore.sample(cm, xT.float() * 80, edm, steps=2, generator=_gen(3)), data_ref)

    # MeanFlow on rf with v = the exact teacher velocity (distillation variant of §8.2)
    rf = schedules.get("rf")
    torch.manual_seed(0)
    h = TwoTimeMLP(2, width=128, depth=3)
    opt = torch.optim.Adam(h.parameters(), lr=2e-3)
    g = _gen(2)
    for _ in range(1500):
        loss = meanflow_loss(h, data(256, g), rf, frac_equal=0.5, generator=g,
                             teacher=lambda x, t: gm.predict(x, t, rf, "velocity").to(x.dtype))
        opt.zero_grad()
        loss.backward()
        opt.step()
    mfs = MeanFlowStudent(h)
    sw_mf1 = _sw(diffcore.sample(mfs, xT.float(), rf, steps=1), data_ref)
    sw_mf2 = _sw(diffcore.sample(mfs, xT.float(), rf, steps=2), data_ref)
    print(f"floor={floor:.4f} bound={bound:.4f} naive4={naive4:.4f} pd4={sw_pd:.4f} cd2={sw_cd:.4f} "
          f"mf1={sw_mf1:.4f} mf2={sw_mf2:.4f}")
    assert sw_pd <= bound and sw_pd < naive4
    assert sw_cd <= bound
    assert sw_mf2 <= bound


# ---- sCM / TrigFlow (§6) ---------------------------------------------------------------------------------
class _TanHalf(torch.nn.Module):
    """F*(u, s) = −a tan(s/2) u: for a = 1 the exact TrigFlow consistency net of N(0, σ_d² I) data (f* = Id)."""

    def __init__(self, a=1.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a), dtype=F64))

    def forward(self, u, s):
        return -self.a * torch.tan(s / 2)[:, None] * u


class _TimeNet(torch.nn.Module):
    """A float64 F(u, s) through TwoTimeMLP (its time code stays in float64, unlike models.MLP's)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = TwoTimeMLP(2, width=32, depth=2).double()
        with torch.no_grad():
            self.net.out.weight.normal_(0, 0.5)

    def forward(self, u, s):
        return self.net(u, s, torch.zeros_like(s))


def test_scm_boundary_exact_tangent_matches_fd_and_vanishes_at_optimum():
    from diffcore.distill.scm import TrigConsistency, scm_loss, scm_tangent
    sd = 0.5
    f = TrigConsistency(_TimeNet(), sd)
    x = torch.randn(32, 2, dtype=F64, generator=_gen(0))
    assert torch.equal(f(x, 0.0), x)
    s = torch.rand(32, dtype=F64, generator=_gen(1)) * 1.4 + 0.05
    dxds = torch.randn(32, 2, dtype=F64, generator=_gen(2))
    _, g_ad = scm_tangent(f, x, s, dxds, c=None)
    _, g_fd = scm_tangent(f, x, s, dxds, c=None, method="fd", h=1e-5)
    assert (g_ad - g_fd).abs().max().item() < 1e-7 * (1 + g_ad.abs().max().item())
    # g = cos(s)·df/ds: compare with a central difference of f along the path (x + τ dxds, s + τ)
    eps = 1e-6  # truncation O(eps²·F''') ≈ 1e-9 here
    fd = (f(x + eps * dxds, s + eps) - f(x - eps * dxds, s - eps)) / (2 * eps)
    assert torch.allclose(g_ad, torch.cos(s)[:, None] * fd, rtol=0, atol=1e-7)
    # normalisation g/(‖g‖ + c)
    _, g_n = scm_tangent(f, x, s, dxds, c=0.1)
    assert torch.allclose(g_n, g_ad / (g_ad.norm(dim=1, keepdim=True) + 0.1), rtol=1e-14)
    # (G) μ = 0 under trig: F* = −tan(s/2) u makes f* = Id, and with the exact teacher (velocity 0) g ≡ 0
    exact = TrigConsistency(_TanHalf(1.0), sd)
    assert torch.allclose(exact(x, s), x, rtol=0, atol=1e-15)
    _, g0 = scm_tangent(exact, x, s, torch.zeros_like(x), c=None)
    assert g0.abs().max().item() < 1e-14
    x0 = sd * torch.randn(32, 2, dtype=F64, generator=_gen(3))
    zero_teacher = lambda u, ss: torch.zeros_like(u)
    for a, vanishes in ((1.0, True), (1.2, False)):
        m = TrigConsistency(_TanHalf(a), sd)
        loss = scm_loss(m, x0, s=s, teacher=zero_teacher, generator=_gen(4))
        (grad,) = torch.autograd.grad(loss, [m.net.a])
        assert (abs(grad.item()) < 1e-14) == vanishes, (a, grad.item())


def test_scm_time_law_and_sampler():
    from diffcore.distill.scm import TrigConsistency, scm_sample, scm_times
    s = scm_times(20000, -1.0, 1.4, 0.5, _gen(0), F64)
    tau = torch.log(0.5 * torch.tan(s))
    assert abs(tau.mean().item() + 1.0) < 4 * 1.4 / math.sqrt(20000)
    assert abs(tau.std().item() / 1.4 - 1) < 0.02
    exact = TrigConsistency(_TanHalf(1.0), 0.5)  # f* = Id for N(0, σ_d²) data: every step keeps the law
    x = 0.5 * torch.randn(20000, 2, dtype=F64, generator=_gen(1))
    out = scm_sample(exact, x, [math.pi / 2, 1.0, 0.3], generator=_gen(2))
    assert (out.var(0) / 0.25 - 1).abs().max().item() < 4 * math.sqrt(2 / 20000)
    assert not torch.allclose(out, x)  # re-noised: a new draw of the same law


@pytest.mark.parametrize("warmup", [0, 2])
def test_scm_trainer_is_the_documented_loop(warmup):
    """SCMTrainer = Adam on scm_loss (draws: data, times, noise from the trainer's generator), tangent
    warm-up r = min(1, (k + 1)/warmup), then an evaluation-EMA update; bitwise against the hand-written loop."""
    from diffcore.distill.consistency import ema_update
    from diffcore.distill.scm import SCMTrainer, TrigConsistency, scm_loss
    from diffcore.distill.students import SCMStudent
    data = lambda n, g: 0.5 * torch.randn(n, 2, generator=g, dtype=F64)
    teacher = lambda u, ss: -torch.tan(ss / 2)[:, None] * u
    f = TrigConsistency(_TimeNet(), 0.5)
    ref, ema = copy.deepcopy(f), copy.deepcopy(f).requires_grad_(False)
    tr = SCMTrainer(f, data, teacher, lr=1e-2, ema_decay=0.9, warmup=warmup, seed=3)
    hist = tr.train(3, 8)
    opt, g = torch.optim.Adam(ref.parameters(), lr=1e-2), _gen(3)
    for k in range(3):
        r = 1.0 if warmup == 0 else min(1.0, (k + 1) / warmup)
        loss = scm_loss(ref, data(8, g), teacher=teacher, r=r, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(ema, ref, 0.9)
        assert hist[k] == loss.item()
    for a, b in zip(tr.model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(tr.ema.parameters(), ema.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(tr.ema.parameters()), next(tr.model.parameters()))
    st = tr.student()
    assert isinstance(st, SCMStudent) and st.model is tr.ema
    with pytest.raises(ValueError, match="warmup"):
        SCMTrainer(f, data, warmup=-1)


# ---- CTM (§7) ----------------------------------------------------------------------------------------------
def _gauss_edm():
    return oracles.Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor(0.25, dtype=F64)), schedules.get("edm")


class _GStarNet(torch.nn.Module):
    """The raw net that makes CTMModel's g_θ equal the exact g* of (G)/edm (§0.6)."""

    def __init__(self, gauss, sched, sd=0.5):
        super().__init__()
        self.gauss, self.sched, self.sd = gauss, sched, sd
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x_in, s, t):
        r = torch.sqrt(s * s + self.sd ** 2)
        x = x_in * r[:, None]
        same = (s == t)[:, None]
        dt = torch.where(s == t, torch.ones_like(s), s - t)[:, None]
        psi = self.gauss.flow_map(x, s, torch.where(s == t, s * 0.5, t), self.sched)
        g = torch.where(same, self.gauss.denoiser(x, torch.clamp(s, min=1e-3), self.sched),
                        (s[:, None] * psi - t[:, None] * x) / dt)
        c_skip, c_out = self.sd ** 2 / (s * s + self.sd ** 2), s * self.sd / r
        safe = torch.where(c_out > 0, c_out, torch.ones_like(c_out))
        return torch.where((c_out > 0)[:, None], (g - c_skip[:, None] * x) / safe[:, None], torch.zeros_like(x)) \
            + 0 * self.dummy


def test_ctm_boundary_oracle_consistency_and_gamma_sampling():
    from diffcore.distill.ctm import CTMModel, ctm_consistency_loss, gamma_sample
    gauss, edm = _gauss_edm()
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2, time_scale=1 / 80).double()
    with torch.no_grad():
        net.out.weight.normal_()
    G = CTMModel(net)
    x = torch.randn(32, 2, dtype=F64, generator=_gen(0)) * 3
    s = torch.rand(32, dtype=F64, generator=_gen(1)) * 10 + 0.01
    assert torch.equal(G(x, s, s), x)
    exact = CTMModel(_GStarNet(gauss, edm))
    t = s * torch.rand(32, dtype=F64, generator=_gen(2))
    # G with g = g* is the exact flow map; g*(x, s, s) = x*(x, s) and v = (x − g*(x, s, s))/s = v*
    assert torch.allclose(exact(x, s, t), gauss.flow_map(x, s, t, edm), rtol=0, atol=1e-12)
    assert torch.allclose((x - exact.g(x, s, s)) / s[:, None], gauss.velocity(x, s, edm), rtol=0, atol=1e-12)
    near = exact.g(x, s, s * (1 - 1e-7))
    assert (near - gauss.denoiser(x, s, edm)).abs().max().item() < 1e-5
    # exact flow map as the solver and g = g*: L_consist = 0 for every (s, u, t)
    u = t + (s - t) * torch.rand(32, dtype=F64, generator=_gen(3))
    x0 = gauss.sample(32, _gen(4))
    flow = lambda xx, a, b: gauss.flow_map(xx, a, b, edm)
    assert ctm_consistency_loss(exact, exact, x0, s, t, u, flow, generator=_gen(5)).item() < 1e-24
    # γ = 0 with the exact flow map: Ψ_{T→0} for any grid (semigroup); γ = 1: CM multistep sampling
    xT = torch.randn(32, 2, dtype=F64, generator=_gen(6)) * 80
    ref = gauss.flow_map(xT, 80.0, 0.0, edm)
    for grid in ([80.0, 0.0], [80.0, 5.0, 0.7, 0.0]):
        assert torch.allclose(gamma_sample(exact, xT, grid, 0.0), ref, rtol=0, atol=1e-10)
    times = [80.0, 5.0, 0.7, 0.0]
    noise = torch.randn(3, 32, 2, dtype=F64, generator=_gen(7))
    cm = consistency_sample(lambda xx, tt: gauss.flow_map(xx, tt, 0.0, edm), xT, times[:-1], edm, 0.0,
                            noise=noise[:2])
    assert torch.allclose(gamma_sample(exact, xT, times, 1.0, noise=noise), cm, rtol=0, atol=1e-10)
    from diffcore.distill.students import CTMStudent
    st = CTMStudent(exact, gamma=0.5)
    assert torch.equal(diffcore.sample(st, xT, "edm", steps=3, generator=_gen(8)),
                       gamma_sample(exact, xT, karras_grid(4, 0.0, 80.0).flip(0), 0.5, generator=_gen(8)))


def test_ctm_gradient_flows_through_the_inner_jump_only_and_teacher_solver():
    from diffcore.distill.ctm import CTMModel, ctm_consistency_loss, ctm_dsm_loss, teacher_solver
    gauss, edm = _gauss_edm()
    torch.manual_seed(0)
    net = TwoTimeMLP(2, width=16, depth=2, time_scale=1 / 80).double()
    with torch.no_grad():
        net.out.weight.normal_()
    G = CTMModel(net)
    target = copy.deepcopy(G).requires_grad_(False)
    x0 = gauss.sample(16, _gen(0))
    eps = torch.randn(16, 2, dtype=F64, generator=_gen(1))
    s = torch.rand(16, dtype=F64, generator=_gen(2)) * 5 + 0.1
    t, u = 0.3 * s, 0.6 * s
    flow = lambda xx, a, b: gauss.flow_map(xx, a, b, edm)
    loss = ctm_consistency_loss(G, target, x0, s, t, u, flow, noise=eps)
    g1 = torch.autograd.grad(loss, list(G.parameters()))
    # reference: the outer map is a frozen copy (no parameter gradient), gradient through its input only
    outer = copy.deepcopy(G).requires_grad_(False)
    x_s = x0 + s[:, None] * eps
    with torch.no_grad():
        tgt = target(target(flow(x_s, s, u), u, t), t, torch.zeros_like(t))
    ref = ((outer(G(x_s, s, t), t, torch.zeros_like(t)) - tgt) ** 2).sum(1).mean()
    assert abs(ref.item() - loss.item()) < 1e-12 * ref.item()
    g2 = torch.autograd.grad(ref, list(G.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-14) for a, b in zip(g1, g2))
    # DSM term: ‖g_θ(x_s, s, s) − x0‖² (per-sample feature mean)
    d = ctm_dsm_loss(G, x0, s, noise=eps)
    assert abs(d.item() - ((G.g(x_s, s, s) - x0) ** 2).mean().item()) < 1e-12
    # teacher solver: Heun sub-steps of the exact teacher converge to the flow map at second order
    teacher = lambda xx, tt: gauss.predict(xx, tt, edm, "eps")
    s2, u2 = torch.full((16,), 2.0, dtype=F64), torch.full((16,), 0.5, dtype=F64)
    errs = [(teacher_solver(teacher, "eps", k)(x_s, s2, u2) - flow(x_s, s2, u2)).abs().max().item() for k in (8, 16)]
    assert 3.0 < errs[0] / errs[1] < 5.0, errs


@pytest.mark.parametrize("local", [True, False])
def test_ctm_trainer_is_the_documented_loop(local):
    """CTMTrainer = Adam on consistency + DSM loss with grid indices s = τ_i, u = τ_{i−1} (local) or s
    (global), t = τ_j (j < i), EDM log-normal DSM σ, then the target EMA; bitwise against the loop."""
    from diffcore.distill.consistency import ema_update
    from diffcore.distill.ctm import CTMModel, CTMTrainer, ctm_consistency_loss, ctm_dsm_loss
    from diffcore.distill.students import CTMStudent
    gauss, edm = _gauss_edm()
    torch.manual_seed(0)
    G = CTMModel(TwoTimeMLP(2, width=16, depth=2, time_scale=1 / 10).double())
    ref, target = copy.deepcopy(G), copy.deepcopy(G).requires_grad_(False)
    flow = lambda xx, a, b: gauss.flow_map(xx, a, b, edm)
    data = lambda n, g: gauss.sample(n, g)
    grid = torch.tensor([0.0, 0.1, 0.7, 3.0, 10.0], dtype=F64)
    tr = CTMTrainer(G, data, flow, grid, lr=1e-2, ema_decay=0.8, local=local, seed=5)
    hist = tr.train(3, 8)
    opt, g = torch.optim.Adam(ref.parameters(), lr=1e-2), _gen(5)
    for k in range(3):
        x0 = data(8, g)
        i = torch.randint(2 if local else 1, 5, (8,), generator=g)
        j = (torch.rand(8, generator=g) * i).long()
        s, t = grid[i], grid[j]
        u = grid[i - 1] if local else s
        assert bool((t <= u).all() and (u <= s).all() and (u > 0).all())
        sig = torch.exp(-1.2 + 1.2 * torch.randn(8, generator=g)).double()
        loss = ctm_consistency_loss(ref, target, x0, s, t, u, flow, generator=g) + ctm_dsm_loss(ref, x0, sig,
                                                                                                 generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(target, ref, 0.8)
        assert hist[k] == loss.item()
    for a, b in zip(tr.model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(tr.target.parameters(), target.parameters()):
        assert torch.equal(a, b)
    st = tr.student()
    assert isinstance(st, CTMStudent) and st.model is tr.target and st.T == 10.0
    with pytest.raises(ValueError, match="grid"):
        CTMTrainer(G, data, flow, [0.1, 0.7, 3.0])
