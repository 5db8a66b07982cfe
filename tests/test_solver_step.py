"""The fused sampler step (csrc/core/solver_step.h): every solver's fused kernel equals its eager
torch reference (float64 ≈ 1e-13, float32 ≈ 1e-6, half types within their precision), exact
in-place aliasing, the autograd fallback, and input validation."""
import pytest
import torch

import diffcore
from diffcore import schedules, solvers
from diffcore.noise import Noise

# the adaptive solvers have no plan; DPM-Solver-v3's per-dimension steps are checked in test_v3.py
NAMES = [n for n in solvers.available() if n not in ("dpm_adaptive", "dpm_adaptive_ps", "dpm_solver_v3", "dopri5")]
TOL = {torch.float64: 1e-13, torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _run_both(name, dtype, B=3, S=(2, 5), steps=6, sched=None, device="cpu"):
    sched = sched or schedules.VPLinear()
    plan = solvers.get(name).plan(sched, diffcore.timesteps(sched, steps), device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, *S, generator=g, dtype=torch.float64).to(dtype).to(device)
    nz = Noise(seed=5)  # stochastic plans: both states draw the same noise
    fused, ref = plan.init_state(x, nz), plan.init_state(x, nz)
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            out = (0.5 * fused.model_input(s) + torch.randn(B, *S, generator=g, dtype=torch.float64).to(dtype).to(device))
            plan.step(fused, i, s, out)
            plan.step_reference(ref, i, s, out.clone())
            # feed both the same states so that rounding differences cannot compound
            scale = max(1.0, ref.x.double().abs().max().item())
            err = (fused.x.double() - ref.x.double()).abs().max().item()
            assert err <= TOL[dtype] * scale * 8, (name, i, s, err)
            ref.x.copy_(fused.x)
            if ref.y is not None:
                ref.y.copy_(fused.y)
            if ref.ring is not None:
                assert (fused.ring.double() - ref.ring.double()).abs().max().item() <= TOL[dtype] * scale * 8
                ref.ring.copy_(fused.ring)
    return fused


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_reference(name, dtype):
    _run_both(name, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc_3", "dpm_solver_3", "heun"])
def test_fused_equals_reference_half(name, dtype):
    _run_both(name, dtype)


def test_step_uses_kernel_and_reference_under_autograd(monkeypatch):
    sched = schedules.VPLinear()
    plan = solvers.get("dpmpp_2m").plan(sched, diffcore.timesteps(sched, 4), dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    st = plan.init_state(x)
    assert st._stepper is None  # differentiable run: the reference path, which autograd can follow
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            plan.step(st, i, s, 0.3 * st.model_input(s))
    st.x.sum().backward()
    # with the model 0.3·x the whole run is x ↦ c·x elementwise, so d(sum)/dx = c = x_end/x, and the
    # fused (no-grad) run gives the same x_end
    fused = plan.init_state(x.detach())
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            plan.step(fused, i, s, 0.3 * fused.model_input(s))
    assert torch.allclose(st.x.detach(), fused.x, rtol=1e-13, atol=0)
    assert torch.allclose(x.grad, fused.x / x.detach(), rtol=1e-10)


def test_identity_model_alias_is_safe():
    """A model returning its input tensor itself (exact alias of the state) gives the same result."""
    sched = schedules.VPLinear()
    plan = solvers.get("unipc_2").plan(sched, diffcore.timesteps(sched, 5), dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    a, b = plan.init_state(x, Noise(seed=5)), plan.init_state(x, Noise(seed=5))
    for i in range(plan.num_steps):
        for s in plan.stages(i):
            plan.step(a, i, s, a.model_input(s))
            plan.step(b, i, s, b.model_input(s).clone())
    assert torch.equal(a.x, b.x)


def test_step_validation():
    sched = schedules.VPLinear()
    plan = solvers.get("dpmpp_2m").plan(sched, diffcore.timesteps(sched, 4))
    st = plan.init_state(torch.randn(2, 3))
    with pytest.raises(ValueError, match="out"):
        plan.step(st, 0, 0, torch.randn(2, 4))
    with pytest.raises(TypeError, match="out"):
        plan.step(st, 0, 0, torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="out"):
        plan.step(st, 0, 0, [1.0])
    with pytest.raises(IndexError, match="i"):
        plan.step(st, 7, 0, torch.randn(2, 3))
    with pytest.raises(ValueError, match="x"):
        solvers.get("dpmpp_2m").plan(sched, diffcore.timesteps(sched, 4), device="meta").init_state(torch.randn(2, 3))
    bad = torch.randn(2, 4, 3).transpose(1, 2)  # non-contiguous features: copied, still correct
    st2 = plan.init_state(torch.randn(2, 3, 4))
    st3 = plan.init_state(st2.x.clone())
    plan.step(st2, 0, 0, bad)
    plan.step_reference(st3, 0, 0, bad)
    assert torch.allclose(st2.x, st3.x, atol=1e-6)


def test_plan_validation():
    sched = schedules.VPLinear()
    s = solvers.get("dpmpp_2m")
    with pytest.raises(ValueError, match="timesteps"):
        s.plan(sched, torch.tensor([1.0, 0.5, 0.7]))
    with pytest.raises(ValueError, match="timesteps"):
        s.plan(sched, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="timesteps"):
        s.plan(sched, torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="schedule"):
        s.plan("vp_linear", torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="prediction"):
        s.plan(sched, torch.tensor([1.0, 0.5]), prediction="banana")
    with pytest.raises(ValueError, match="solver"):
        solvers.get("dpmpp_9m")
    with pytest.raises(ValueError, match="order"):
        solvers.DPMSolverPPMulti(order=4)
    with pytest.raises(ValueError, match="solver_type"):
        solvers.get("dpmpp_2m", solver_type="rk4")
    with pytest.raises(ValueError, match="thresholding"):
        solvers.get("dpm_solver_2", thresholding=True)
    with pytest.raises(ValueError, match="variable"):
        solvers.get("heun", variable="lambda")
    # per-sample grids must match the batch
    plan = s.plan(sched, torch.stack([torch.linspace(1, 0.1, 5), torch.linspace(0.9, 0.1, 5)]).double())
    with pytest.raises(ValueError, match="per-sample"):
        plan.init_state(torch.randn(3, 2))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_fused_equals_reference(name, dtype):
    _run_both(name, dtype, device="cuda")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc_3", "dpm_solver_3", "heun", "deis_3"])
def test_cuda_matches_cpu(name):
    sched = schedules.VPLinear()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 17, generator=g, dtype=torch.float64)
    model = lambda x, t: torch.sin(x) * t[:, None]  # noqa: E731
    a = diffcore.sample(model, x, schedule=sched, solver=name, steps=12)
    b = diffcore.sample(model, x.cuda(), schedule=sched, solver=name, steps=12)
    assert (a - b.cpu()).abs().max().item() < 1e-12
