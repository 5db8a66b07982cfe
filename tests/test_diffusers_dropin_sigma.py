"""diffusers drop-in: the σ-space samplers, LMS, KDPM2 (and its ancestral form), DEIS, PNDM and
stochastic flow matching match the diffusers scheduler they replace step by step (each ``step()``
output given identical model outputs and the same sample, ‖Δ‖∞/‖ref‖∞ ≤ 1e-5; stochastic ones with
generators seeded alike) at 1-25 steps, or raise naming the attribute."""
import inspect
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffcore.integrations.diffusers import FAMILIES, DiffcoreScheduler  # noqa: E402
from test_diffusers_dropin17 import DDPM_HUB, SD_PNDM  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

#: an EDMEulerScheduler config (the hub configs SD_PNDM and DDPM_HUB are shared with the other drop-in tests)
EDM_HUB = {"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5,
           "sigma_schedule": "karras", "num_train_timesteps": 1000, "prediction_type": "epsilon", "rho": 7.0}
SD3_FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0",
            "num_train_timesteps": 1000, "shift": 3.0}
STEPS = (1, 2, 3, 5, 10, 25)


def fake_model(x, t):
    """A fixed analytic network output (the same for the drop-in and the reference)."""
    return 0.1 * x + math.sin(float(t))


def _chain(cls_name, base, **opts):
    ref = getattr(diffusers, cls_name).from_config(base, **opts)
    return ref, DiffcoreScheduler.from_config(ref.config)


def _run(ref, ours, set_kw, shape=(2, 3, 4, 4), seed=0, dtype=torch.float32, step_kw=None, generators=None):
    """Step both with the reference's sample and identical model outputs; the worst relative step error."""
    ref.set_timesteps(**set_kw)
    ours.set_timesteps(**set_kw)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    assert ours.timesteps.dtype == ref.timesteps.dtype
    assert ours.order == ref.order
    takes_gen = "generator" in inspect.signature(ref.step).parameters
    if generators is None:
        gr, go = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    else:
        gr, go = generators
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x = x * float(getattr(ref, "init_noise_sigma", 1.0))
    assert ours.init_noise_sigma == pytest.approx(float(getattr(ref, "init_noise_sigma", 1.0)), rel=1e-7)
    worst = 0.0
    for t in ref.timesteps:
        inp = ref.scale_model_input(x, t) if hasattr(ref, "scale_model_input") else x
        torch.testing.assert_close(ours.scale_model_input(x.clone(), t), inp, rtol=1e-6, atol=0)
        m = fake_model(inp, t)
        a = ref.step(m, t, x, **({"generator": gr} if takes_gen else {}), **(step_kw or {})).prev_sample
        b = ours.step(m.clone(), t, x.clone(), generator=go, **(step_kw or {})).prev_sample
        assert b.dtype == a.dtype and b.shape == a.shape
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
        x = a
    return worst


CONFIGS = [
    ("LMSDiscreteScheduler", SD_PNDM, {}),
    ("LMSDiscreteScheduler", SD_PNDM, {"use_karras_sigmas": True}),
    ("LMSDiscreteScheduler", SD_PNDM, {"use_exponential_sigmas": True, "timestep_spacing": "trailing"}),
    ("LMSDiscreteScheduler", SD_PNDM, {"use_beta_sigmas": True, "prediction_type": "v_prediction"}),
    ("LMSDiscreteScheduler", DDPM_HUB, {"timestep_spacing": "linspace", "prediction_type": "sample"}),
    ("KDPM2DiscreteScheduler", SD_PNDM, {}),
    ("KDPM2DiscreteScheduler", SD_PNDM, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    ("KDPM2DiscreteScheduler", SD_PNDM, {"use_exponential_sigmas": True, "timestep_spacing": "linspace"}),
    ("KDPM2DiscreteScheduler", DDPM_HUB, {"use_beta_sigmas": True, "timestep_spacing": "trailing"}),
    ("KDPM2AncestralDiscreteScheduler", SD_PNDM, {}),
    ("KDPM2AncestralDiscreteScheduler", SD_PNDM, {"use_karras_sigmas": True, "timestep_spacing": "trailing"}),
    ("KDPM2AncestralDiscreteScheduler", DDPM_HUB, {"prediction_type": "v_prediction", "timestep_spacing": "linspace"}),
    ("DEISMultistepScheduler", SD_PNDM, {}),
    ("DEISMultistepScheduler", SD_PNDM, {"solver_order": 3, "use_karras_sigmas": True}),
    ("DEISMultistepScheduler", SD_PNDM, {"solver_order": 1, "prediction_type": "v_prediction"}),
    ("DEISMultistepScheduler", DDPM_HUB, {"solver_order": 3, "lower_order_final": False,
                                          "timestep_spacing": "leading"}),
    ("DEISMultistepScheduler", DDPM_HUB, {"use_exponential_sigmas": True, "thresholding": True,
                                          "prediction_type": "sample"}),
    ("DEISMultistepScheduler", SD_PNDM, {"use_beta_sigmas": True, "timestep_spacing": "trailing"}),
    ("PNDMScheduler", SD_PNDM, {}),
    ("PNDMScheduler", SD_PNDM, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}),
    ("PNDMScheduler", DDPM_HUB, {"timestep_spacing": "linspace", "set_alpha_to_one": True}),
    ("FlowMatchEulerDiscreteScheduler", SD3_FLOW, {"stochastic_sampling": True}),
    ("FlowMatchEulerDiscreteScheduler", SD3_FLOW, {"stochastic_sampling": True, "use_karras_sigmas": True}),
    # diffcore's float64 plan was 1e-5-9e-4 off these at 1-3 steps (diffusers' float32 cancellation)
    ("EulerDiscreteScheduler", SD_PNDM, {}),
    ("EulerDiscreteScheduler", SD_PNDM, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    ("HeunDiscreteScheduler", SD_PNDM, {"timestep_spacing": "trailing"}),
    ("EulerAncestralDiscreteScheduler", SD_PNDM, {}),
    ("EulerAncestralDiscreteScheduler", SD_PNDM, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                                  "prediction_type": "v_prediction"}),
    ("EDMEulerScheduler", EDM_HUB, {}),
]


def _ids(v):
    if isinstance(v, str):
        return v.replace("Scheduler", "")
    if isinstance(v, dict) and "_class_name" not in v:
        return ",".join(f"{k}={w}" for k, w in v.items()) or "default"
    return None


#: one configuration per class in the default run (diffusers' KDPM2 classes take ~1 s per construction)
QUICK = {0, 5, 10, 13, 19, 21, 23, 25, 26, 27, 28}


def _check_all_steps(cls_name, base, opts):
    ref, ours = _chain(cls_name, base, **opts)
    for n in STEPS:  # set_timesteps starts a new loop on both
        try:
            ref.set_timesteps(n)
        except ValueError:  # diffusers refuses it (PNDM's Runge–Kutta warm-up below 4 steps)
            with pytest.raises(ValueError, match="num_inference_steps"):
                ours.set_timesteps(n)
            continue
        if not bool(torch.isfinite(ref.timesteps.double()).all()):  # a NaN timestep for the network: named
            with pytest.raises(ValueError, match="num_inference_steps"):
                ours.set_timesteps(n)
            continue
        worst = _run(ref, ours, {"num_inference_steps": n})
        assert worst <= 1e-5, f"{n} steps: {worst:.3g} relative off diffusers"


@pytest.mark.parametrize("cls_name,base,opts", [c for i, c in enumerate(CONFIGS) if i in QUICK], ids=_ids)
def test_every_step_matches_diffusers_at_1_to_25_steps(cls_name, base, opts):
    _check_all_steps(cls_name, base, opts)


@pytest.mark.slow
@pytest.mark.parametrize("cls_name,base,opts", [c for i, c in enumerate(CONFIGS) if i not in QUICK], ids=_ids)
def test_every_step_matches_diffusers_at_1_to_25_steps_more_options(cls_name, base, opts):
    _check_all_steps(cls_name, base, opts)


def test_pndm_runge_kutta_warm_up_matches_diffusers():
    """skip_prk_steps=False: four evaluations per step for the first three steps (13 repeated or half-step
    timesteps listed), then PLMS; diffusers refuses fewer than 4 steps."""
    ref, ours = _chain("PNDMScheduler", SD_PNDM, skip_prk_steps=False)
    for n in (4, 5, 10, 25):
        assert _run(ref, ours, {"num_inference_steps": n}) <= 1e-5
    with pytest.raises(ValueError, match="num_inference_steps"):
        ours.set_timesteps(3)


#: (class, base, options, steps, diffcore method): where diffcore's float64 plan was measured off diffusers'
#: float32 step by more than 1e-5 (2.4e-5, 8.9e-4, 2.9e-5)
PRECISION = [("EDMEulerScheduler", EDM_HUB, {}, 1, "euler"),
             ("EulerDiscreteScheduler", SD_PNDM, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                                  "prediction_type": "v_prediction"}, 1, "euler"),
             ("HeunDiscreteScheduler", SD_PNDM, {}, 2, "heun")]


@pytest.mark.parametrize("cls_name,base,opts,n,method", PRECISION, ids=lambda v: v if isinstance(v, str) else None)
def test_sigma_space_precision_at_few_steps_is_diffusers_float32_rounding(cls_name, base, opts, n, method):
    """Measured: diffcore's plan on the source's grid (``solver=`` the same method) is more than 1e-5 off
    diffusers. Cause: float32 cancellation of O(σ) terms to an O(1) result at σ = 80 (EDM) or 4096 (zero
    SNR): diffusers' own output is off the same formula evaluated in float64 on its (float32) levels by
    more than 1e-5, and the plan's fused float32 step rounds differently. The drop-in computes in
    diffusers' order and returns diffusers' numbers (≤ 1e-6)."""
    ref, ours = _chain(cls_name, base, **opts)
    plan = DiffcoreScheduler.from_config(ref.config, solver=method)
    for s in (ref, ours, plan):
        s.set_timesteps(n)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * float(ref.init_noise_sigma)
    rel = lambda u, v: float((u.double() - v.double()).abs().max() / v.double().abs().max())  # noqa: E731
    worst_plan = 0.0
    for t in ref.timesteps:
        m = fake_model(ref.scale_model_input(x, t), t)
        a = ref.step(m, t, x).prev_sample
        assert rel(ours.step(m, t, x).prev_sample, a) <= 1e-6
        worst_plan = max(worst_plan, rel(plan.step(m, t, x).prev_sample, a))
        x_prev, x = x, a
    assert worst_plan > 1e-5
    if cls_name == "HeunDiscreteScheduler":
        return
    s0, s1, xd, md = ref.sigmas.double()[0], ref.sigmas.double()[1], x_prev.double(), m.double()
    if cls_name == "EDMEulerScheduler":
        sd = ref.config.sigma_data
        x0 = sd ** 2 / (s0 ** 2 + sd ** 2) * xd + s0 * sd / (s0 ** 2 + sd ** 2) ** 0.5 * md
    else:  # v-prediction on the VP state αx
        x0 = md * (-s0 / (s0 ** 2 + 1) ** 0.5) + xd / (s0 ** 2 + 1)
    exact = xd + (xd - x0) / s0 * (s1 - s0)
    assert rel(a, exact) > 1e-5


def test_float64_samples_take_diffusers_dtype_path():
    """Euler upcasts to float32 internally and returns the model output's dtype; LMS computes in the
    sample's dtype: both as diffusers."""
    for cls in ("EulerDiscreteScheduler", "LMSDiscreteScheduler", "DEISMultistepScheduler"):
        ref, ours = _chain(cls, SD_PNDM)
        # LMS: diffusers integrates its float32 Lagrange polynomial, diffcore the exact one (~1e-8)
        assert _run(ref, ours, {"num_inference_steps": 5}, dtype=torch.float64) <= 1e-7


def test_euler_churn_draws_from_the_generator_as_diffusers():
    """EulerDiscreteScheduler.step(s_churn > 0): the network's output at σ moves the state raised to
    σ̂ = σ(1 + γ) with noise drawn from the passed generator (was refused naming s_churn)."""
    for cls, base in (("EulerDiscreteScheduler", SD_PNDM), ("EDMEulerScheduler", EDM_HUB)):
        for n in (2, 10):
            ref, ours = _chain(cls, base)
            kw = {"s_churn": 4.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.003}
            assert _run(ref, ours, {"num_inference_steps": n}, step_kw=kw) <= 1e-5


def test_per_sample_generators_match_diffusers():
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    for cls, base, opts in (("KDPM2AncestralDiscreteScheduler", SD_PNDM, {}),
                            ("FlowMatchEulerDiscreteScheduler", SD3_FLOW, {"stochastic_sampling": True})):
        ref, ours = _chain(cls, base, **opts)
        assert _run(ref, ours, {"num_inference_steps": 5}, generators=(gens(), gens())) <= 1e-5


def test_custom_sigmas_and_timesteps_where_the_source_takes_them():
    ref, ours = _chain("FlowMatchEulerDiscreteScheduler", SD3_FLOW, stochastic_sampling=True)
    assert _run(ref, ours, {"sigmas": [1.0, 0.8, 0.5, 0.2]}) <= 1e-5
    ref, ours = _chain("EulerDiscreteScheduler", SD_PNDM)
    assert _run(ref, ours, {"timesteps": [999, 700, 400, 100]}) <= 1e-5
    ref, ours = _chain("EulerDiscreteScheduler", SD_PNDM)
    assert _run(ref, ours, {"sigmas": [14.0, 5.0, 1.0, 0.1]}) <= 1e-5
    for cls in ("LMSDiscreteScheduler", "DEISMultistepScheduler", "PNDMScheduler"):
        _, ours = _chain(cls, SD_PNDM)
        with pytest.raises(ValueError, match="timesteps"):
            ours.set_timesteps(timesteps=[999, 500, 1])
        with pytest.raises(ValueError, match="sigmas"):
            ours.set_timesteps(sigmas=[14.0, 1.0])


def test_hub_pndm_config_is_pndm():
    """Stable Diffusion's hub config (PNDMScheduler) → DiffcoreScheduler directly is now PNDM itself; the
    usual chain through another class keeps that class."""
    ours = DiffcoreScheduler.from_config(SD_PNDM)
    ref = diffusers.PNDMScheduler.from_config(SD_PNDM)
    assert _run(ref, ours, {"num_inference_steps": 10}) <= 1e-5
    for cls in ("LMSDiscreteScheduler", "DEISMultistepScheduler"):
        ref, ours = _chain(cls, SD_PNDM)
        assert ours.config._source_config["_class_name"] == cls
        assert cls in DiffcoreScheduler._compatibles and cls in FAMILIES


def test_add_noise_and_img2img_start_match_diffusers():
    """add_noise looks the timestep up in the source's schedule (σ-space: x0 + σ·noise; PNDM: ᾱ at any
    training index); a loop started with set_begin_index steps as diffusers' from the same entry."""
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    for cls, base, opts in (("LMSDiscreteScheduler", SD_PNDM, {}), ("KDPM2DiscreteScheduler", SD_PNDM, {}),
                            ("EulerDiscreteScheduler", SD_PNDM, {}), ("DEISMultistepScheduler", SD_PNDM, {}),
                            ("FlowMatchEulerDiscreteScheduler", SD3_FLOW, {"stochastic_sampling": True})):
        ref, ours = _chain(cls, base, **opts)
        noise = getattr(ref, "add_noise", None) or (lambda x, z, t: ref.scale_noise(x, t, z))
        # before set_timesteps (training): every training timestep is listed
        t_train = torch.tensor([10, 500]) if cls != "FlowMatchEulerDiscreteScheduler" else ref.timesteps[[10, 500]]
        torch.testing.assert_close(ours.add_noise(x0, eps, t_train), noise(x0, eps, t_train), rtol=1e-6, atol=0)
        ref.set_timesteps(10)
        ours.set_timesteps(10)
        t = ref.timesteps[4:5]
        a, b = noise(x0, eps, t), ours.add_noise(x0, eps, t)
        torch.testing.assert_close(b, a, rtol=1e-6, atol=0)
        ref.set_begin_index(4)
        ours.set_begin_index(4)
        x, worst = a, 0.0
        for tt in ref.timesteps[4:]:
            m = fake_model(ref.scale_model_input(x, tt) if hasattr(ref, "scale_model_input") else x, tt)
            r = ref.step(m, tt, x, generator=torch.Generator().manual_seed(1)).prev_sample \
                if "generator" in inspect.signature(ref.step).parameters else ref.step(m, tt, x).prev_sample
            o = ours.step(m.clone(), tt, x.clone(), generator=torch.Generator().manual_seed(1)).prev_sample
            worst = max(worst, float((r - o).abs().max() / r.abs().max()))
            x = r
        assert worst <= 1e-5, cls
    ref, ours = _chain("PNDMScheduler", SD_PNDM)
    t = torch.tensor([0, 37, 999])
    torch.testing.assert_close(ours.add_noise(x0[:1].expand(3, -1, -1, -1), eps[:1].expand(3, -1, -1, -1), t),
                               ref.add_noise(x0[:1].expand(3, -1, -1, -1), eps[:1].expand(3, -1, -1, -1), t))


def test_off_grid_add_noise_raises_naming_timesteps():
    """diffusers' σ-space add_noise finds no level for a timestep not in its schedule (an IndexError in
    diffusers): the drop-in names the argument."""
    x0 = torch.zeros(1, 2, 2)
    for cls, base in (("LMSDiscreteScheduler", SD_PNDM), ("EulerDiscreteScheduler", SD_PNDM),
                      ("DEISMultistepScheduler", SD_PNDM)):
        _, ours = _chain(cls, base)
        ours.set_timesteps(10)
        with pytest.raises(ValueError, match="timesteps"):
            ours.add_noise(x0, x0, torch.tensor([123]))
    _, ours = _chain("EulerDiscreteScheduler", SD_PNDM)
    ours = DiffcoreScheduler.from_config(ours.config, solver="dpmpp_2m")  # a diffcore plan on Euler's grid
    ours.set_timesteps(10)
    with pytest.raises(ValueError, match="timesteps"):
        ours.add_noise(x0, x0, torch.tensor([123]))
    _, ours = _chain("PNDMScheduler", SD_PNDM)
    with pytest.raises(ValueError, match="timesteps"):
        ours.add_noise(x0, x0, torch.tensor([1000]))
    with pytest.raises(ValueError, match="timesteps"):
        ours.add_noise(x0, x0, torch.tensor([10.5]))


def test_bad_inputs_are_named():
    ref, ours = _chain("LMSDiscreteScheduler", SD_PNDM)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        ours.step(x, 999, x)
    ours.set_timesteps(5)
    t = ours.timesteps[0]
    with pytest.raises(ValueError, match="timestep"):
        ours.step(x, ours.timesteps[1], x)
    with pytest.raises(ValueError, match="model_output"):
        ours.step(torch.zeros(1, 3, 4, 5), t, x)
    with pytest.raises(TypeError, match="model_output"):
        ours.step(x.numpy(), t, x)
    with pytest.raises(TypeError, match="s_churn"):
        ours.step(x, t, x, s_churn=1.0)  # LMS's step has no churn
    with pytest.raises(ValueError, match="eta"):
        ours.step(x, t, x, eta=0.5)
    with pytest.raises(ValueError, match="solver"):
        ours.make_plan()
    ours.step(x, t, x, order=2)  # LMS's own step option
    for _ in range(4):
        ours.step(x, ours.timesteps[ours.step_index], x)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        ours.step(x, t, x)
    _, pndm = _chain("PNDMScheduler", SD_PNDM)
    pndm.set_timesteps(5)
    with pytest.raises(ValueError, match="begin_index"):
        pndm.set_begin_index(2)
    with pytest.raises(ValueError, match="prediction_type"):
        _chain("EulerAncestralDiscreteScheduler", SD_PNDM, prediction_type="sample")
    with pytest.raises(ValueError, match="solver"):
        DiffcoreScheduler(solver="euler", _source_config=dict(ref.config, _class_name="LMSDiscreteScheduler"))


def test_explicit_solver_on_a_stepped_config_keeps_the_shared_grid():
    """solver= on an LMS / KDPM2 / DEIS / PNDM config is a deliberate diffcore method on the grid of the class
    sharing their grid code, as before."""
    for cls, grid in (("LMSDiscreteScheduler", "EulerDiscreteScheduler"), ("PNDMScheduler", "DDIMScheduler"),
                      ("KDPM2AncestralDiscreteScheduler", "EulerDiscreteScheduler")):
        ref = getattr(diffusers, cls).from_config(SD_PNDM)
        ours = DiffcoreScheduler.from_config(ref.config, solver="dpmpp_2m")
        assert ours.config._source_config["_class_name"] == grid
        ours.set_timesteps(10)
        assert ours.make_plan().num_steps == 10


def test_copy_replays_the_grid_with_a_fresh_run_state():
    ref, ours = _chain("EulerAncestralDiscreteScheduler", SD_PNDM)
    ours.set_timesteps(5)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * ours.init_noise_sigma
    t = ours.timesteps[0]
    ours.step(fake_model(x, t), t, x)
    twin = ours.copy()
    assert twin.timesteps.tolist() == ours.timesteps.tolist() and twin.step_index is None
    ref.set_timesteps(5)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for tt in twin.timesteps:
        m = fake_model(twin.scale_model_input(x, tt), tt)
        a = ref.step(m, tt, x, generator=g1).prev_sample
        b = twin.step(m, tt, x, generator=g2).prev_sample
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-6
        x = a


def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).eval()


@pytest.mark.parametrize("cls_name", ["PNDMScheduler", "DEISMultistepScheduler"])
def test_unconditional_pipeline_matches_diffusers(cls_name):
    """A tiny random UNet2DModel in diffusers' PNDMPipeline (DDPMPipeline passes a generator these
    schedulers' step does not take): the drop-in's images equal diffusers'."""
    unet = _tiny_unet()
    ref = getattr(diffusers, cls_name).from_config(SD_PNDM)
    out = []
    for sched in (ref, DiffcoreScheduler.from_config(ref.config)):
        pipe = diffusers.PNDMPipeline(unet=unet, scheduler=diffusers.PNDMScheduler())
        pipe.scheduler = sched  # PNDMPipeline converts what it is given to PNDMScheduler
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            out.append(pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                            output_type="np").images)
    assert abs(out[0] - out[1]).max() <= 1e-5


@pytest.mark.parametrize("cls_name", ["LMSDiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_sigma_space_denoising_loop_with_a_unet_matches_diffusers(cls_name):
    """The Stable Diffusion loop (init_noise_sigma, scale_model_input, step with a generator, scheduler.order
    entries per step) with a tiny random UNet2DModel."""
    unet = _tiny_unet()
    ref = getattr(diffusers, cls_name).from_config(SD_PNDM)
    out = []
    for sched in (ref, DiffcoreScheduler.from_config(ref.config)):
        sched.set_timesteps(3)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, 8, 8, generator=g) * sched.init_noise_sigma
        kw = {"generator": g} if "generator" in inspect.signature(ref.step).parameters else {}
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x, **kw).prev_sample
        out.append(x)
    assert float((out[0] - out[1]).abs().max() / out[0].abs().max()) <= 1e-5


#: option values a hub config may carry, per class, for the randomized sweep below
_SWEEP = {
    "LMSDiscreteScheduler": dict(use_karras_sigmas=[True, False], use_exponential_sigmas=[True, False],
                                 use_beta_sigmas=[True, False], timestep_spacing=["leading", "trailing", "linspace"],
                                 prediction_type=["epsilon", "v_prediction", "sample"], steps_offset=[0, 1]),
    "KDPM2DiscreteScheduler": dict(use_karras_sigmas=[True, False], use_exponential_sigmas=[True, False],
                                   timestep_spacing=["leading", "trailing", "linspace"],
                                   prediction_type=["epsilon", "v_prediction", "sample"]),
    "KDPM2AncestralDiscreteScheduler": dict(use_karras_sigmas=[True, False], use_beta_sigmas=[True, False],
                                            timestep_spacing=["leading", "trailing", "linspace"],
                                            prediction_type=["epsilon", "v_prediction"]),
    "DEISMultistepScheduler": dict(solver_order=[1, 2, 3], use_karras_sigmas=[True, False],
                                   use_exponential_sigmas=[True, False], lower_order_final=[True, False],
                                   timestep_spacing=["leading", "trailing", "linspace"], thresholding=[True, False],
                                   prediction_type=["epsilon", "v_prediction", "sample"]),
    "PNDMScheduler": dict(skip_prk_steps=[True, False], timestep_spacing=["leading", "trailing", "linspace"],
                          prediction_type=["epsilon", "v_prediction", "sample"], set_alpha_to_one=[True, False]),
    "EulerDiscreteScheduler": dict(use_karras_sigmas=[True, False], rescale_betas_zero_snr=[True, False],
                                   timestep_spacing=["leading", "trailing", "linspace"],
                                   prediction_type=["epsilon", "v_prediction"],
                                   final_sigmas_type=["zero", "sigma_min"]),
    "EulerAncestralDiscreteScheduler": dict(timestep_spacing=["leading", "trailing"],
                                            rescale_betas_zero_snr=[True, False],
                                            prediction_type=["epsilon", "v_prediction"]),
    "HeunDiscreteScheduler": dict(use_karras_sigmas=[True, False], timestep_spacing=["leading", "trailing"],
                                  prediction_type=["epsilon", "v_prediction", "sample"], clip_sample=[True, False]),
    "FlowMatchEulerDiscreteScheduler": dict(shift=[1.0, 3.0], use_karras_sigmas=[True, False],
                                            shift_terminal=[None, 0.1], stochastic_sampling=[True]),
}


def _sweep(classes, draws, seed, least):
    """A seeded sweep of option combinations at 1-25 steps: each either matches diffusers step by step
    within 1e-5 or raises a ValueError naming a config attribute or argument."""
    import random
    rng = random.Random(seed)
    matched = named = 0
    for _ in range(draws):
        cls = rng.choice(classes)
        opts = {k: rng.choice(v) for k, v in _SWEEP[cls].items() if rng.random() < 0.5}
        base = SD3_FLOW if cls.startswith("FlowMatch") else rng.choice([SD_PNDM, DDPM_HUB])
        n = rng.choice(STEPS)
        try:  # diffusers itself refuses some combinations (several sigma types, PRK below 4 steps, ...)
            ref = getattr(diffusers, cls).from_config(base, **opts)
            ref.set_timesteps(n)
            x = torch.zeros(1, 1, 2, 2)
            ref.step(x, ref.timesteps[0], x)
        except Exception:
            continue
        ref = getattr(diffusers, cls).from_config(base, **opts)
        try:
            ours = DiffcoreScheduler.from_config(ref.config)
            worst = _run(ref, ours, {"num_inference_steps": n}, shape=(1, 2, 4, 4))
        except ValueError as e:
            assert str(e).split(":")[0].replace(", ", "").replace("_", "").isalnum(), e
            named += 1
            continue
        assert worst <= 1e-5, f"{cls} {opts} n={n}: {worst:.3g} relative off diffusers"
        matched += 1
    assert matched >= least, (matched, named)


def test_randomized_hub_configs_match_or_name_the_attribute():
    """The sweep over the classes whose diffusers construction is quick (KDPM2's takes ~1 s: below)."""
    _sweep(sorted(c for c in _SWEEP if not c.startswith("KDPM2")), 40, 7, 25)


@pytest.mark.slow
def test_randomized_hub_configs_match_or_name_the_attribute_all_classes():
    _sweep(sorted(_SWEEP), 80, 11, 40)


# -- diffusers' log-ρ DEIS as a diffcore method ---------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_logrho_plan_is_diffusers_deis(order):
    """``deis_k`` with ``basis="logrho"`` (a float64 diffcore plan) is DEISMultistepScheduler's method: run by
    the drop-in with ``solver=`` on DEIS' grid it matches diffusers' steps within 1e-5 (diffusers' float32
    coefficients; at one step from σ = 14.6 and at 25 third-order steps their rounding exceeds that, so
    the default drop-in keeps diffusers' arithmetic). The t-basis tAB-DEIS is another method (≥ 1e-3 off)."""
    for n in (2, 3, 5, 10):
        ref = diffusers.DEISMultistepScheduler.from_config(SD_PNDM, solver_order=order)
        ours = DiffcoreScheduler.from_config(ref.config, solver=f"deis_{order}", solver_options={"basis": "logrho"})
        assert ours.config._source_config["final_sigmas_type"] == "sigma_min"  # DEIS' last level
        assert _run(ref, ours, {"num_inference_steps": n}) <= 1e-5
    if order > 1:
        ref = diffusers.DEISMultistepScheduler.from_config(SD_PNDM, solver_order=order)
        ours = DiffcoreScheduler.from_config(ref.config, solver=f"deis_{order}")
        assert _run(ref, ours, {"num_inference_steps": 10}) > 1e-3


def test_deis_basis_is_checked():
    from diffcore import solvers
    with pytest.raises(ValueError, match="basis"):
        solvers.get("deis_2", basis="log")
    assert repr(solvers.get("deis_2", basis="logrho")) == "deis_2(basis='logrho')"


@pytest.mark.slow
@pytest.mark.parametrize("order", [2, 3])
def test_deis_logrho_order_against_the_float64_oracle(order):
    """Observed global order on diffcore.convergence's reference problem (the Gaussian-mixture oracle of
    diffcore.oracles as the model, float64; as tests/test_solver_orders.py): slope ≥ order − 0.3, with the
    warm-up and with an exact starting history."""
    from diffcore import schedules, solvers
    from diffcore.convergence import order_study, pinned_starts, reference_mixture
    sched, oracle = schedules.VPLinear(), reference_mixture()
    starts = pinned_starts(oracle, sched, sched.t_start, sched.t_end)
    s = solvers.get(f"deis_{order}", basis="logrho", lower_order_final=False)
    r = order_study(s, sched, oracle, starts=starts)
    assert r["order"] >= order - 0.3, r
    r2 = order_study(s, sched, oracle, starts=starts, exact_history=True)
    assert r2["order"] >= order - 0.3, r2


@pytest.mark.parametrize("shape", [(6,), (3, 5)], ids=["1d", "2d"])
def test_one_and_two_dimensional_data(shape):
    """The steppers act elementwise: a batch of scalars or of vectors steps as diffusers does."""
    for cls, base, opts in (("EulerAncestralDiscreteScheduler", SD_PNDM, {}), ("PNDMScheduler", SD_PNDM, {}),
                            ("LMSDiscreteScheduler", SD_PNDM, {"use_karras_sigmas": True})):
        ref, ours = _chain(cls, base, **opts)
        assert _run(ref, ours, {"num_inference_steps": 4, "device": "cpu"}, shape=shape) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sample_with_device_string_matches_diffusers():
    for cls, base, opts in (("KDPM2AncestralDiscreteScheduler", SD_PNDM, {}), ("DEISMultistepScheduler", SD_PNDM, {}),
                            ("EulerDiscreteScheduler", SD_PNDM, {"use_karras_sigmas": True})):
        ref, ours = _chain(cls, base, **opts)
        ref.set_timesteps(5, device="cuda")
        ours.set_timesteps(5, device="cuda")
        assert ours.timesteps.device.type == "cuda"
        x = torch.randn(2, 3, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        x = x * float(ref.init_noise_sigma)
        gr, go = torch.Generator("cuda").manual_seed(1), torch.Generator("cuda").manual_seed(1)
        for t in ref.timesteps:
            m = 0.1 * ref.scale_model_input(x, t) + 0.3
            kw = {"generator": gr} if "generator" in inspect.signature(ref.step).parameters else {}
            a = ref.step(m, t, x, **kw).prev_sample
            b = ours.step(m, t, x, generator=go).prev_sample
            assert b.device == a.device and float((a - b).abs().max() / a.abs().max()) <= 1e-5
            x = a
