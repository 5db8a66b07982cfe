"""diffusers drop-in (diffcore.integrations.diffusers): a real DDPMPipeline with every fixed-grid diffcore
solver; DDIM, DPM-Solver++ 2M and flow-matching Euler equal diffusers' own schedulers to 1e-4
relative; the continuous-limit check against diffcore.sample on the same grid (float64, 1e-10)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       FlowMatchEulerDiscreteScheduler, UNet2DModel)

import diffcore  # noqa: E402
from diffcore import oracles, solvers  # noqa: E402
from diffcore.integrations.diffusers import DiffcoreScheduler  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FIXED = [n for n in solvers.available() if n != "dpm_solver_v3" and hasattr(solvers.get(n), "plan")]  # fixed-grid
#: options that keep the Langevin-type samplers to a few model calls per level
SMALL = {"annealed_langevin": {"n_steps_each": 2}, "edm_churn": {"s_churn": 0.5}}


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8).eval()


def _pipe_images(unet, sched, n, seed=0):
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, generator=torch.Generator().manual_seed(seed), num_inference_steps=n, output_type="np")
    return torch.from_numpy(out.images)


def _loop(unet, sched, n, seed=0, **set_kw):
    """DDPMPipeline's loop without the final clamp to [0, 1] (which saturates a random network's images)."""
    sched.set_timesteps(n, **set_kw)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=g).prev_sample
    return x


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- every solver in a real pipeline ------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXED)
def test_ddpm_pipeline_runs_with_every_solver(unet, name):
    # Langevin steps need σ > 0 at the end: finish at ᾱ_0 (DDIM's set_alpha_to_one=False)
    sched = DiffcoreScheduler.from_config(DDPMScheduler().config, solver=name, solver_options=SMALL.get(name),
                                          set_alpha_to_one=name != "langevin")
    calls = []
    hook = unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        img = _pipe_images(unet, sched, 4)
    finally:
        hook.remove()
    assert img.shape == (2, 8, 8, 3) and bool(torch.isfinite(img).all())
    plan = sched.make_plan()
    # one network call per entry of timesteps: every stage of every step (+ the discarded call before
    # EDM's churn of the start)
    assert len(calls) == len(sched.timesteps) == plan.nfe + (plan.prelude is not None)
    assert sched.step_index == len(sched.timesteps)


# -- DDIM ---------------------------------------------------------------------------------------------
class _DDIMClippedEps(DDIMScheduler):
    """DDIMScheduler with use_clipped_model_output=True (ε̂ consistent with the clipped x̂0)."""

    def step(self, *args, **kw):
        return super().step(*args, use_clipped_model_output=True, **kw)


DDIM_CONFIGS = [
    dict(clip_sample=False),
    dict(clip_sample=False, steps_offset=1, set_alpha_to_one=False),
    dict(clip_sample=False, set_alpha_to_one=False),  # last step ᾱ_0 → ᾱ_0: zero length
    dict(clip_sample=False, timestep_spacing="trailing"),
    dict(clip_sample=False, prediction_type="v_prediction"),
    dict(clip_sample=False, prediction_type="sample", beta_schedule="scaled_linear"),
    dict(clip_sample=False, beta_schedule="squaredcos_cap_v2", steps_offset=1),
]


@pytest.mark.parametrize("cfg", DDIM_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_ddim_equals_diffusers(unet, cfg):
    ref = DDIMScheduler(**cfg)
    ours = DiffcoreScheduler.from_config(ref.config)
    assert ours.solver.name == "ddim"
    assert _rel(_pipe_images(unet, ours, 10), _pipe_images(unet, ref, 10)) <= 1e-4
    a, b = _loop(unet, ours, 10), _loop(unet, ref, 10)
    # DDIM's last step ᾱ_0 → ᾱ_0 (set_alpha_to_one=False) is listed and called as in diffusers
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    assert _rel(a, b) <= 1e-4


def test_ddim_default_config_clips_like_diffusers(unet):
    """DDIMScheduler's defaults (clip_sample=True): the drop-in clips x̂0 and, as diffusers, keeps the
    unclipped ε̂ unless step(..., use_clipped_model_output=True)."""
    ref = DDIMScheduler()
    ours = DiffcoreScheduler.from_config(DDIMScheduler().config)
    assert ours.config.clip_sample is True
    assert _rel(_pipe_images(unet, ours, 10), _pipe_images(unet, ref, 10)) <= 1e-4
    a, b = _loop(unet, ours, 10), _loop(unet, ref, 10)
    assert _rel(a, b) <= 1e-4
    # the clipping acts: without it the result is different
    assert _rel(_loop(unet, DiffcoreScheduler.from_config(DDIMScheduler(clip_sample=False).config), 10), b) > 1e-2
    # use_clipped_model_output=True: the ε̂ consistent with the clipped x̂0 (_loop's start: seed 0)
    ours.set_timesteps(10)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in ours.timesteps:
            x = ours.step(unet(x, t).sample, t, x, use_clipped_model_output=True).prev_sample
    assert _rel(x, _loop(unet, _DDIMClippedEps(), 10)) <= 1e-4
    assert _rel(x, b) > 1e-3


# -- DPM-Solver++ 2M ----------------------------------------------------------------------------------
DPM_CONFIGS = [
    (dict(), 10),
    (dict(use_karras_sigmas=True), 10),
    (dict(use_exponential_sigmas=True), 10),
    (dict(use_lu_lambdas=True), 10),
    (dict(prediction_type="v_prediction"), 10),
    (dict(prediction_type="sample"), 10),
    (dict(solver_type="heun"), 10),
    (dict(), 16),  # ≥ 15 steps: no lower-order final steps except the last
    (dict(timestep_spacing="trailing", beta_schedule="scaled_linear"), 8),
    (dict(solver_order=3), 10),
    (dict(thresholding=True, sample_max_value=2.0), 10),
]


@pytest.mark.parametrize("cfg,n", DPM_CONFIGS, ids=lambda c: str(c))
def test_dpmpp_2m_equals_diffusers(unet, cfg, n):
    ref = DPMSolverMultistepScheduler(**cfg)
    ours = DiffcoreScheduler.from_config(ref.config)
    a, b = _loop(unet, ours, n), _loop(unet, ref, n)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    assert _rel(a, b) <= 1e-4
    assert _rel(_pipe_images(unet, ours, n), _pipe_images(unet, ref, n)) <= 1e-4


# -- flow matching ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,mu", [(dict(shift=3.0), None),
                                    (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), 0.8),
                                    (dict(use_dynamic_shifting=True, time_shift_type="linear"), 1.7),
                                    (dict(shift=3.0, use_karras_sigmas=True), None)], ids=str)
def test_flow_match_equals_diffusers(unet, cfg, mu):
    ref = FlowMatchEulerDiscreteScheduler(**cfg)
    ours = DiffcoreScheduler.from_config(ref.config)
    assert (ours.solver.name, ours.prediction) == ("euler", "velocity")
    kw = {} if mu is None else {"mu": mu}
    a, b = _loop(unet, ours, 8, **kw), _loop(unet, ref, 8, **kw)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert _rel(a, b) <= 1e-4
    if mu is None:  # DDPMPipeline cannot pass mu
        assert _rel(_pipe_images(unet, ours, 8), _pipe_images(unet, ref, 8)) <= 1e-4


@pytest.mark.parametrize("name", FIXED)
def test_flow_match_every_solver_runs_or_names_alpha_zero(unet, name):
    sched = DiffcoreScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver=name,
                                          solver_options=SMALL.get(name))
    try:
        sched.set_timesteps(3)
    except ValueError as e:
        assert name in str(e)
        if name == "langevin":  # flow matching ends at σ = 0, where a Langevin step is undefined
            assert "σ > 0 at the last time" in str(e)
        else:  # noise-prediction and multi-stage λ solvers cannot start at σ = 1 (α = 0, λ = −∞)
            assert "α = 0" in str(e)
        return
    x = _loop(unet, sched, 3)
    assert x.shape == (2, 3, 8, 8) and bool(torch.isfinite(x).all())


# -- the continuous limit: the drop-in is diffcore.sample on the same grid -------------------------------
CONTINUOUS = ["ddim", "euler", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "deis_3",
              "unipc_3", "ipndm", "ddpm", "ddim_eta", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "edm_churn"]


#: the drop-in runs Euler and Heun in σ/α on VP schedules, as diffusers' EulerDiscrete/HeunDiscrete
RHO = {"euler": {"variable": "rho"}, "heun": {"variable": "rho"}}


@pytest.mark.parametrize("name", CONTINUOUS)
@pytest.mark.parametrize("option", [None])  # sigma options: DDPMScheduler has none (it would raise)
def test_matches_diffcore_sample_in_float64(name, option):
    sched = DiffcoreScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver=name,
                                          solver_options=SMALL.get(name), **({option: True} if option else {}))
    vp = sched.schedule
    gm = oracles.toy_2d_mixture()
    N = sched.config.num_train_timesteps

    def net(x, ts):  # a discrete-time network: integer (or fractional) training index → t = (index + 1)/N
        t = (torch.as_tensor(ts, dtype=torch.float64) + 1) / N
        return gm.predict(x, t.expand(x.shape[0]), vp, "eps")

    if name == "edm_churn" and option:  # the churn raises the first level above the schedule's largest σ
        with pytest.raises(ValueError, match="solver: edm_churn cannot run this grid"):
            sched.set_timesteps(6)
        return
    sched.set_timesteps(6)
    if option:  # the levels fall between training indices: the network gets fractional indices in float64
        assert sched.timesteps.dtype == torch.float64 and sched.timesteps[1] != sched.timesteps[1].round()
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    x = x0
    for t in sched.timesteps:
        x = sched.step(net(x, t), t, x, generator=g).prev_sample
    ref = diffcore.sample(lambda xx, t: gm.predict(xx, t, vp, "eps"), x0, vp, solver=name, steps=sched.diffcore_times,
                          prediction="eps", generator=torch.Generator().manual_seed(7), **SMALL.get(name, {}),
                          **RHO.get(name, {}))
    assert float((x - ref).abs().max()) <= 1e-10 * float(ref.abs().max())


# -- protocol: errors, copy, forward process, begin index ------------------------------------------------
def test_bad_input_raises_clear_errors():
    cfg = DDPMScheduler().config
    with pytest.raises(ValueError, match="solver: unknown solver 'nope'"):
        DiffcoreScheduler.from_config(cfg, solver="nope")
    with pytest.raises(ValueError, match="solver: dpm_adaptive chooses its step sizes"):
        DiffcoreScheduler.from_config(cfg, solver="dpm_adaptive")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffcoreScheduler(prediction_type="score")
    with pytest.raises(ValueError, match="beta_schedule"):
        DiffcoreScheduler(beta_schedule="cubic")
    with pytest.raises(TypeError, match="solver_options"):
        DiffcoreScheduler(solver="ddim", solver_options={"eta": 0.5})
    s = DiffcoreScheduler(solver="dpmpp_2m")
    x = torch.zeros(1, 2)
    with pytest.raises(RuntimeError, match="call set_timesteps before step"):
        s.step(x, 999, x)
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [750, 500, 250, 0]
    with pytest.raises(ValueError, match=r"timestep: expected 750 \(entry 0"):
        s.step(x, 500, x)
    with pytest.raises(ValueError, match=r"timestep: expected 750"):
        s.step(x, torch.tensor(751), x)
    with pytest.raises(ValueError, match="eta: step"):
        s.step(x, 750, x, eta=0.3)
    with pytest.raises(ValueError, match="model_output"):
        s.step(torch.zeros(1, 3), 750, x)
    for t in s.timesteps:
        x = s.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(RuntimeError, match="all 4 entries"):
        s.step(x, 0, x)
    with pytest.raises(ValueError, match="timesteps: DDIMScheduler.set_timesteps does not take it"):
        s.set_timesteps(4, timesteps=[900, 10])
    with pytest.raises(ValueError, match="DDPMScheduler.set_timesteps refused"):
        DiffcoreScheduler.from_config(DDPMScheduler().config).set_timesteps(timesteps=[10, 900])
    with pytest.raises(ValueError, match="mu"):
        DiffcoreScheduler.from_config(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config).set_timesteps(4)


def test_copy_has_independent_state():
    base = DiffcoreScheduler.from_config(DDPMScheduler().config, solver="dpmpp_3m")
    base.set_timesteps(5)
    gm = oracles.toy_2d_mixture()
    vp = base.schedule

    def net(x, ts):
        return gm.predict(x, (ts.double() + 1) / 1000, vp, "eps").float()

    xa = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    xb = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))

    def run(s, x):
        for t in s.timesteps:
            x = s.step(net(x, t), t, x).prev_sample
        return x

    ref_a, ref_b = run(base.copy(), xa), run(base.copy(), xb)
    a, b = base.copy(), base.copy()
    assert a.timesteps is base.timesteps and a.make_plan() is base.make_plan()  # the grid and plan are shared
    ya, yb = xa, xb
    for t in base.timesteps:  # interleaved, as two requests served by two threads
        ya = a.step(net(ya, t), t, ya).prev_sample
        yb = b.step(net(yb, t), t, yb).prev_sample
    assert torch.equal(ya, ref_a) and torch.equal(yb, ref_b)
    assert base.step_index is None and a.step_index == 5
    assert not torch.equal(ref_a, ref_b)


def test_add_noise_matches_diffusers():
    x0, eps = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4)
    ts = torch.tensor([0, 499, 999])
    for cfg in (dict(), dict(beta_schedule="squaredcos_cap_v2")):
        ref = DDIMScheduler(**cfg)
        ours = DiffcoreScheduler.from_config(ref.config)
        torch.testing.assert_close(ours.add_noise(x0, eps, ts), ref.add_noise(x0, eps, ts), rtol=1e-6, atol=1e-6)
    fm = FlowMatchEulerDiscreteScheduler(shift=3.0)
    fm.set_timesteps(6)
    ours = DiffcoreScheduler.from_config(fm.config)
    ours.set_timesteps(6)
    t = fm.timesteps[2:3]
    torch.testing.assert_close(ours.scale_noise(x0, t, eps), fm.scale_noise(x0, t, eps), rtol=1e-6, atol=1e-6)


def test_begin_index_equals_ddim_from_that_step(unet):
    """img2img: start the loop at entry k of timesteps; DDIM has no state, so diffusers' DDIM run over
    timesteps[k:] is the reference."""
    ref = DDIMScheduler(clip_sample=False)
    ours = DiffcoreScheduler.from_config(ref.config)
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    ours.set_begin_index(4)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ya = yb = x
    with torch.no_grad():
        for t in ref.timesteps[4:]:
            out = unet(ya, t).sample
            ya = ours.step(out, t, ya).prev_sample
            yb = ref.step(unet(yb, t).sample, t, yb).prev_sample
    assert _rel(ya, yb) <= 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["dpmpp_3m", "heun", "dpmpp_2m_sde"])
def test_cuda_steps_have_no_host_sync(name):
    """After the first step (which builds the run state), step() launches work without synchronizing."""
    net = torch.nn.Conv2d(3, 3, 3, padding=1).cuda()
    sched = DiffcoreScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver=name)
    sched.set_timesteps(6, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 3, 8, 8, device="cuda", generator=g)
    ts = list(sched.timesteps)
    with torch.no_grad():
        x = sched.step(net(x), ts[0], x, generator=g).prev_sample
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in ts[1:]:
                x = sched.step(net(x), t, x, generator=g).prev_sample
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert bool(torch.isfinite(x).all())
