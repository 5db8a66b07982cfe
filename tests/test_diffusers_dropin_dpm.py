"""The diffusers drop-in for the whole DPM-Solver family: DPMSolverMultistepScheduler with every
algorithm_type ("dpmsolver" 2M/3M, "sde-dpmsolver" 1/2M, "sde-dpmsolver++" 1/2M/3M),
DPMSolverSinglestepScheduler (orders 1-3, its order list with stages on listed levels) and the inverse
schedulers (DDIMInverseScheduler, DPMSolverMultistepInverseScheduler). Each step() output, given the
same model outputs, matches the diffusers scheduler built by the usual chain within ‖Δ‖∞/‖ref‖∞ ≤ 1e-5
(stochastic ones with generators seeded alike), or the configuration raises naming the attribute.
The diffcore solvers behind them have their convergence orders checked on the float64 oracle."""
import inspect
import logging

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffcore import schedules, solvers  # noqa: E402
from diffcore.convergence import order_study, pinned_starts, reference_mixture  # noqa: E402
from diffcore.integrations.diffusers import DiffcoreScheduler  # noqa: E402
from diffcore.solvers.grid_singlestep import order_schedule  # noqa: E402
from test_diffusers_dropin17 import (DDPM_HUB, EDM_HUB, SD_PNDM, _chain, _compare,  # noqa: E402
                                     _compare_with_sample_generators, fake_model)

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = (1, 2, 3, 5, 10, 25)
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}  # diffusers' noise-form algorithms refuse a final σ = 0

MATCH = [
    # DPMSolverMultistepScheduler, noise-prediction DPM-Solver (multistep 2M / 3M) and the SDE variants
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "solver_type": "heun", **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "solver_order": 3, **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "solver_order": 3,
                                              "lower_order_final": False, **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "prediction_type": "v_prediction",
                                              "timestep_spacing": "trailing", **SIGMA_MIN}, STEPS[1:]),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "prediction_type": "sample",
                                              "timestep_spacing": "leading", **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver", **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver", "solver_order": 1, **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver", "solver_type": "heun",
                                              "prediction_type": "v_prediction", **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 1}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                              "euler_at_final": True}),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                              "use_karras_sigmas": True}),
    ("EDMDPMSolverMultistepScheduler", EDM_HUB, {"algorithm_type": "sde-dpmsolver++", "solver_order": 1}),
    # DPMSolverSinglestepScheduler: its order list [1, 2, 3, 1, 2, 3, ...], stages on listed levels
    ("DPMSolverSinglestepScheduler", SD_PNDM, {}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 1}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 3}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 3, "solver_type": "heun"}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 3, "lower_order_final": False, **SIGMA_MIN}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 2, "use_karras_sigmas": True}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 3, "prediction_type": "v_prediction",
                                               "timestep_spacing": "trailing"}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 3, "algorithm_type": "dpmsolver", **SIGMA_MIN}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 3, "algorithm_type": "dpmsolver",
                                               "solver_type": "heun", "prediction_type": "v_prediction", **SIGMA_MIN},
     STEPS[1:]),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"solver_order": 2, "algorithm_type": "sde-dpmsolver++",
                                               "solver_type": "heun", **SIGMA_MIN}),
    ("DPMSolverSinglestepScheduler", DDPM_HUB, {"solver_order": 3, "thresholding": True, "sample_max_value": 2.0}),
    # the inverse schedulers (data → noise)
    ("DDIMInverseScheduler", SD_PNDM, {}),
    ("DDIMInverseScheduler", SD_PNDM, {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
     (1, 2, 4, 5, 10, 25)),  # trailing with n not dividing 1000 raises (below)
    ("DDIMInverseScheduler", DDPM_HUB, {}),  # clip_sample=True: clipped x̂0 with the unclipped ε̂
    ("DDIMInverseScheduler", DDPM_HUB, {"set_alpha_to_one": False, "prediction_type": "v_prediction"}),
    ("DDIMInverseScheduler", SD_PNDM, {"prediction_type": "sample"}),
    ("DPMSolverMultistepInverseScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "solver_order": 3}),
    ("DPMSolverMultistepInverseScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "solver_type": "heun",
                                                     "prediction_type": "v_prediction"}),
    # the last level listed twice (trailing spacing, Karras sigmas): diffusers' zero-length last step returns
    # the sample and counts in its order rules
    ("DPMSolverMultistepInverseScheduler", SD_PNDM, {"timestep_spacing": "trailing", "solver_order": 3},
     (2, 3, 5, 10, 16, 25)),
    ("DPMSolverMultistepInverseScheduler", SD_PNDM, {"use_karras_sigmas": True, "algorithm_type": "dpmsolver",
                                                     "solver_order": 3}, (2, 3, 5, 10, 16, 25)),
]

#: below these step counts diffusers' own float32 arithmetic (not the drop-in's) is off the float64 method
#: by more than 1e-5: the data form of a one-step inversion from σ/α ≈ 0.01 weights x by σ_t/σ_s ≈ 700 and
#: cancels it against x̂0; thresholding in the noise form re-reads ε̂ = (x − α x̂0)/σ at σ/α ≈ 150; a
#: one-step noise-form update from t = 999 (trailing) weights x by α_t/α_s ≈ 156 with e^h rounded in float32
FLOAT32_LIMITED = {
    ("DPMSolverMultistepInverseScheduler", "dpmsolver++"): (2, 3, 5, 10, 25),
    ("DPMSolverMultistepScheduler", "thresholding"): (3, 5, 10, 25),
}


def _ids(v):
    if isinstance(v, str):
        return v.replace("Scheduler", "")
    if "_class_name" in v:
        return v["_class_name"]
    return ",".join(f"{k}={w}" for k, w in v.items())


@pytest.mark.parametrize("case", MATCH, ids=lambda c: "-".join(_ids(v) for v in c[:3]))
def test_every_step_matches_diffusers_at_every_step_count(case):
    cls_name, base, opts = case[:3]
    for n in (case[3] if len(case) > 3 else STEPS):
        ref, ours = _chain(cls_name, base, **opts)
        worst = _compare(ref, ours, n)
        assert worst <= 1e-5, (n, worst)


@pytest.mark.parametrize("opts", [{}, {"solver_order": 3}, {"solver_type": "heun"}], ids=str)
def test_multistep_inverse_data_form_matches_diffusers_from_two_steps(opts):
    for n in FLOAT32_LIMITED[("DPMSolverMultistepInverseScheduler", "dpmsolver++")]:
        ref, ours = _chain("DPMSolverMultistepInverseScheduler", SD_PNDM, **opts)
        assert _compare(ref, ours, n) <= 1e-5, n


def test_noise_form_thresholding_matches_diffusers_from_three_steps():
    for n in FLOAT32_LIMITED[("DPMSolverMultistepScheduler", "thresholding")]:
        ref, ours = _chain("DPMSolverMultistepScheduler", DDPM_HUB, algorithm_type="dpmsolver", solver_order=3,
                           thresholding=True, **SIGMA_MIN)
        assert _compare(ref, ours, n) <= 1e-5, n


@pytest.mark.parametrize("cls_name,opts", [
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver", **SIGMA_MIN}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
], ids=str)
def test_stochastic_configs_draw_from_per_sample_generators_as_diffusers(cls_name, opts):
    ref, ours = _chain(cls_name, SD_PNDM, **opts)
    assert _compare_with_sample_generators(ref, ours, 7, seed=20) <= 1e-5


def test_stochastic_config_differs_with_another_generator():
    """The noise is the generator's: the same loop with another seed is a different sample."""
    ref, ours = _chain("DPMSolverSinglestepScheduler", SD_PNDM, algorithm_type="sde-dpmsolver++", solver_order=3)
    assert _compare(ref, ours, 6, seed=0) <= 1e-5
    a, b = _chain("DPMSolverSinglestepScheduler", SD_PNDM, algorithm_type="sde-dpmsolver++", solver_order=3)
    a.set_timesteps(6)
    b.set_timesteps(6)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ya, yb = x, x
    for t in a.timesteps:
        ya = a.step(fake_model(ya, t), t, ya, generator=torch.Generator().manual_seed(1)).prev_sample
        yb = b.step(fake_model(yb, t), t, yb, generator=torch.Generator().manual_seed(2)).prev_sample
    assert float((ya - yb).abs().max()) > 1e-2


@pytest.mark.parametrize("n", [4, 6, 7, 9, 10, 20])
@pytest.mark.parametrize("order,lof,final_zero", [(1, True, True), (2, True, True), (2, False, False),
                                                   (3, True, True), (3, True, False), (3, False, False),
                                                   (3, False, True)])
def test_singlestep_order_schedule_is_diffusers_order_list(order, lof, final_zero, n):
    ref = diffusers.DPMSolverSinglestepScheduler(solver_order=order, lower_order_final=lof,
                                                 final_sigmas_type="zero" if final_zero else "sigma_min")
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # its warning when it switches lower_order_final on
    ref.set_timesteps(n)
    assert order_schedule(n, order, lof, final_zero) == list(ref.order_list)


def test_singlestep_model_calls_are_the_listed_timesteps_one_per_step():
    ref, ours = _chain("DPMSolverSinglestepScheduler", SD_PNDM, solver_order=3)
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    assert ours.order == ref.order == 1
    plan = ours.make_plan()
    assert plan.nfe == 10 and plan.orders == [3, 3, 3, 1]


# -- pipelines -----------------------------------------------------------------------------------------
def _unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


@pytest.mark.parametrize("cls_name,opts", [
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver", **SIGMA_MIN}),
], ids=str)
def test_ddpm_pipeline_with_the_drop_in_equals_the_diffusers_scheduler(cls_name, opts):
    unet = _unet()
    ref = getattr(diffusers, cls_name).from_config(SD_PNDM, **opts)
    images = []
    for sched in (ref, DiffcoreScheduler.from_config(ref.config)):
        pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            out = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=6,
                       output_type="np").images
        images.append(torch.from_numpy(out))
    assert float((images[0] - images[1]).abs().max()) <= 1e-5


def test_ddim_inversion_loop_with_the_drop_in_equals_diffusers():
    """The inversion loop of the editing pipelines (DDIM inversion: Mokady et al. 2023): a pipeline's DDIM
    config → DDIMInverseScheduler.from_config → ours, the UNet called at each listed timestep."""
    unet = _unet()
    ddim = diffusers.DDIMScheduler.from_config(SD_PNDM)
    ref = diffusers.DDIMInverseScheduler.from_config(ddim.config)
    ours = DiffcoreScheduler.from_config(ref.config)
    x0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    outs = []
    for sched in (ref, ours):
        sched.set_timesteps(8)
        x = x0.clone()
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
        outs.append(x)
    assert float((outs[0] - outs[1]).abs().max() / outs[0].abs().max()) <= 1e-5


def test_ddim_inversion_then_ddim_sampling_returns_the_data_on_a_gaussian_oracle():
    """An independent check of the inverse grid's direction and levels: with the exact denoiser of Gaussian
    data and many steps, inverting then sampling on the same grid returns the start (DDIM is the
    probability-flow ODE's first-order solver both ways)."""
    from diffcore import oracles

    ddim = diffusers.DDIMScheduler.from_config(SD_PNDM, set_alpha_to_one=False, steps_offset=0, timestep_spacing="trailing")
    inv = DiffcoreScheduler.from_config(diffusers.DDIMInverseScheduler.from_config(ddim.config).config)
    fwd = DiffcoreScheduler.from_config(ddim.config)
    oracle = oracles.Gaussian(mean=torch.tensor([0.3, -0.2]), cov=torch.tensor([0.04, 0.09]))
    x0 = torch.tensor([[0.35, -0.1], [0.2, -0.3]], dtype=torch.float64)

    def eps(sched, x, t):  # the network at listed timestep t: diffusion time (t + 1)/N
        tt = torch.full((x.shape[0],), (int(t) + 1) / 1000, dtype=torch.float64)
        return oracle.predict(x, tt, sched.schedule, "eps")

    inv.set_timesteps(200)
    x = x0.clone()
    for t in inv.timesteps:
        x = inv.step(eps(inv, x, t), t, x).prev_sample
    fwd.set_timesteps(200)
    for t in fwd.timesteps:
        x = fwd.step(eps(fwd, x, t), t, x).prev_sample
    assert float((x - x0).abs().max()) <= 2e-2


# -- refusals -------------------------------------------------------------------------------------------
RAISE = [
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver", "solver_order": 3, **SIGMA_MIN},
     "solver_order"),  # diffusers' third-order update has no sde-dpmsolver branch (UnboundLocalError at step 3)
    ("EDMDPMSolverMultistepScheduler", EDM_HUB, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
     "solver_order"),
    ("DPMSolverMultistepInverseScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ("DPMSolverMultistepInverseScheduler", SD_PNDM, {"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),
    ("DPMSolverMultistepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver"}, "final_sigmas_type"),  # diffusers'
    # diffusers' own step fails there (its noise-form thresholding indexes α by an undefined timestep)
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"algorithm_type": "dpmsolver", "thresholding": True, **SIGMA_MIN},
     "thresholding"),
]


@pytest.mark.parametrize("cls_name,base,opts,attr", RAISE, ids=str)
def test_unreproducible_configs_raise_naming_the_attribute(cls_name, base, opts, attr):
    with pytest.raises(ValueError, match=attr):
        try:
            ref = getattr(diffusers, cls_name).from_config(base, **opts)
        except ValueError as e:  # diffusers itself refuses: the chain stops there, naming it
            raise ValueError(str(e)) from e
        DiffcoreScheduler.from_config(ref.config)


@pytest.mark.parametrize("cls_name,base,opts,n,attr", [
    ("DDIMInverseScheduler", SD_PNDM, {"timestep_spacing": "trailing"}, 3, "timestep_spacing"),  # t − 333 ≠ 332
    ("DDIMInverseScheduler", SD_PNDM, {"prediction_type": "sample", "set_alpha_to_one": True}, 4, "prediction_type"),
    # diffusers' zero-length last step (trailing: the noisiest level listed twice) is 0/0 in the heun forms
    ("DPMSolverMultistepInverseScheduler", SD_PNDM, {"timestep_spacing": "trailing", "solver_type": "heun"}, 16,
     "solver_type"),
    ("DPMSolverSinglestepScheduler", SD_PNDM, {"use_karras_sigmas": True, **SIGMA_MIN}, 5, "final_sigmas_type"),
], ids=str)
def test_unreproducible_grids_raise_at_set_timesteps(cls_name, base, opts, n, attr):
    ref, ours = _chain(cls_name, base, **opts)
    with pytest.raises(ValueError, match=attr):
        ours.set_timesteps(n)


@pytest.mark.parametrize("cls_name,opts", [
    ("DDIMInverseScheduler", {}),  # its first step from ᾱ = 1, outside the plan
    ("DPMSolverMultistepInverseScheduler", {"timestep_spacing": "trailing", "solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "lower_order_final": False, **SIGMA_MIN}),
], ids=str)
def test_copy_runs_the_same_loop(cls_name, opts):
    ref, ours = _chain(cls_name, SD_PNDM, **opts)
    ref.set_timesteps(7)
    ours.set_timesteps(7)
    twin = ours.copy()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in ref.timesteps:
        m = fake_model(x, t)
        a = ref.step(m, t, x).prev_sample
        b = twin.step(m.clone(), t, x.clone()).prev_sample
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-5
        x = a


@pytest.mark.parametrize("cls_name,opts,begin", [
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}, 3),  # a step of order k starts k levels further on
    ("DPMSolverSinglestepScheduler", {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}, 4),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 3, **SIGMA_MIN}, 4),
], ids=str)
def test_set_begin_index_matches_diffusers(cls_name, opts, begin):
    """img2img pipelines start the loop at a later entry of timesteps (set_begin_index)."""
    ref, ours = _chain(cls_name, SD_PNDM, **opts)
    ref.set_timesteps(10)
    ours.set_timesteps(10)
    ref.set_begin_index(begin)
    ours.set_begin_index(begin)
    gr, go = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in ref.timesteps[begin:]:
        m = fake_model(x, t)
        a = ref.step(m, t, x, generator=gr).prev_sample
        b = ours.step(m.clone(), t, x.clone(), generator=go).prev_sample
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-5
        x = a


def test_singlestep_begin_inside_a_step_raises_naming_begin_index():
    ref, ours = _chain("DPMSolverSinglestepScheduler", SD_PNDM, solver_order=3)
    ours.set_timesteps(10)
    with pytest.raises(ValueError, match="begin_index"):
        ours.set_begin_index(4)  # the second level of the second third-order step


def test_inverse_scheduler_checks_the_timestep_and_shapes():
    ref, ours = _chain("DDIMInverseScheduler", SD_PNDM)
    ours.set_timesteps(4)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="timestep"):
        ours.step(x, 999, x)
    with pytest.raises(ValueError, match="model_output"):
        ours.step(x[:, :2], ours.timesteps[0], x)
    out = ours.step(x, ours.timesteps[0], x).prev_sample
    assert out.shape == x.shape and torch.isfinite(out).all()


# -- the diffcore solvers behind them -----------------------------------------------------------------------
SCHED = schedules.VPLinear()
ORACLE = reference_mixture()
STARTS = pinned_starts(ORACLE, SCHED, SCHED.t_start, SCHED.t_end)


@pytest.mark.parametrize("name,opts,lo,hi", [
    ("dpm_solver_2m", {}, 1.7, 2.3), ("dpm_solver_2m", {"solver_type": "heun"}, 1.7, 2.3),
    ("dpm_solver_3m", {"w": 2.0}, 2.7, 3.3), ("dpm_solver_3m", {}, 1.7, 2.5),  # w = 1: diffusers' weight, order 2
    ("dpmpp_singlestep", {"order": 2}, 1.7, 2.3), ("dpmpp_singlestep", {"order": 3}, 2.6, 3.3),
    ("dpm_solver_singlestep", {"order": 3}, 2.7, 3.3),
    ("dpm_solver_singlestep", {"order": 3, "solver_type": "heun"}, 2.6, 3.3),
], ids=str)
def test_convergence_order_on_the_float64_oracle(name, opts, lo, hi):
    s = solvers.get(name, lower_order_final=False, **opts)
    r = order_study(s, SCHED, ORACLE, starts=STARTS, steps=(48, 96, 192, 384))
    assert lo <= r["order"] <= hi, r


def test_noise_form_multistep_is_the_data_form_for_the_first_order():
    """One noise-form step equals one data-form step (both DDIM; Lu et al. 2022b, §3) and the 2M solvers
    differ by the form they extrapolate in."""
    ts = torch.linspace(0.9, 0.05, 6, dtype=torch.float64)
    x = torch.randn(3, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = lambda x, t: ORACLE.predict(x, t.expand(x.shape[0]), SCHED, "eps")  # noqa: E731
    outs = {}
    for name in ("dpm_solver_1", "dpmpp_1", "dpm_solver_2m", "dpmpp_2m"):
        plan = solvers.get(name).plan(SCHED, ts, dtype=torch.float64, prediction="eps")
        st = plan.init_state(x)
        for i in range(plan.num_steps):
            for s in plan.stages(i):
                plan.step(st, i, s, model(st.model_input(s), plan.model_time(i, s)))
        outs[name] = st.x
    assert float((outs["dpm_solver_1"] - outs["dpmpp_1"]).abs().max()) <= 1e-12
    assert float((outs["dpm_solver_2m"] - outs["dpmpp_2m"]).abs().max()) > 1e-6


@pytest.mark.parametrize("name", ["sde_dpm_solver", "sde_dpmpp"])
def test_sde_solvers_sample_the_data_distribution(name):
    """An independent check of the SDE coefficients (drift weights and noise scale): 20000 samples from
    N(0.5, 0.3²) data with its exact noise predictor, 50 steps of the 2M SDE solvers, have the data's mean
    and standard deviation (standard errors 0.0021 and 0.0015; the discretization bias measured ≤ 0.004)."""
    from diffcore import oracles, sample

    oracle = oracles.Gaussian(mean=torch.tensor([0.5]), cov=torch.tensor([[0.09]]))
    x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample(lambda x, t: oracle.predict(x, t, SCHED, "eps"), x, SCHED, solver=solvers.get(name, order=2),
                 steps=50, seed=10)
    assert abs(out.mean().item() - 0.5) <= 0.012
    assert abs(out.std().item() - 0.3) <= 0.012


@pytest.mark.parametrize("name,opts,attr", [
    ("sde_dpm_solver", {"order": 3}, "order"),
    ("sde_dpmpp", {"order": 4}, "order"),
    ("dpmpp_singlestep", {"order": 0}, "order"),
    ("dpm_solver_singlestep", {"thresholding": True}, "thresholding"),
    ("dpm_solver_2m", {"thresholding": True}, "thresholding"),
    ("sde_dpm_solver", {"thresholding": True}, "thresholding"),
    ("sde_dpmpp_singlestep", {"solver_type": "rk4"}, "solver_type"),
    ("dpm_solver_3m", {"w": "2"}, "w"),
], ids=str)
def test_new_solvers_bad_options_name_the_argument(name, opts, attr):
    with pytest.raises((ValueError, TypeError), match=attr):
        solvers.get(name, **opts)


@pytest.mark.parametrize("name", ["sde_dpm_solver", "sde_dpmpp", "sde_dpmpp_singlestep"])
def test_stochastic_solvers_refuse_an_increasing_grid(name):
    with pytest.raises(ValueError, match="timesteps"):
        solvers.get(name).plan(SCHED, torch.tensor([0.1, 0.5, 0.9]))


def test_noise_form_sde_steps_to_zero_noise_with_finite_coefficients():
    """A noise-form step to σ = 0 has a finite limit; the plan builds, and the last step is first order."""
    plan = solvers.get("sde_dpm_solver").plan(SCHED, torch.tensor([0.9, 0.5, 0.0]))
    assert plan.orders[-1] == 1 and torch.isfinite(plan.coefs).all()


# -- randomized sweep --------------------------------------------------------------------------------------
_SWEEP = {
    "DPMSolverMultistepScheduler": dict(
        solver_order=[1, 2, 3], algorithm_type=["dpmsolver", "sde-dpmsolver", "sde-dpmsolver++"],
        solver_type=["midpoint", "heun"], use_karras_sigmas=[True, False], final_sigmas_type=["zero", "sigma_min"],
        timestep_spacing=["leading", "trailing", "linspace"], prediction_type=["epsilon", "v_prediction", "sample"],
        lower_order_final=[True, False], euler_at_final=[True, False], thresholding=[True, False]),
    "DPMSolverSinglestepScheduler": dict(
        solver_order=[1, 2, 3], algorithm_type=["dpmsolver++", "dpmsolver", "sde-dpmsolver++"],
        solver_type=["midpoint", "heun"], use_karras_sigmas=[True, False], final_sigmas_type=["zero", "sigma_min"],
        timestep_spacing=["leading", "trailing", "linspace"], prediction_type=["epsilon", "v_prediction", "sample"],
        lower_order_final=[True, False], thresholding=[True, False]),
    "DDIMInverseScheduler": dict(timestep_spacing=["leading", "trailing"], set_alpha_to_one=[True, False],
                                 prediction_type=["epsilon", "v_prediction", "sample"], clip_sample=[True, False],
                                 steps_offset=[0, 1]),
    "DPMSolverMultistepInverseScheduler": dict(
        solver_order=[1, 2, 3], algorithm_type=["dpmsolver++", "dpmsolver", "sde-dpmsolver++"],
        solver_type=["midpoint", "heun"], timestep_spacing=["leading", "trailing", "linspace"],
        prediction_type=["epsilon", "v_prediction"], lower_order_final=[True, False], thresholding=[True, False]),
}


def _diffusers_loop(ref, n):
    ref.set_timesteps(n)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    takes_gen = "generator" in inspect.signature(ref.step).parameters
    for t in ref.timesteps:
        x = ref.step(fake_model(x, t), t, x, **({"generator": torch.Generator().manual_seed(1)} if takes_gen
                                                 else {})).prev_sample


def test_randomized_configs_of_the_dpm_family_match_or_name_the_attribute():
    """A seeded sweep of option combinations of these classes at 5 and 10 steps: each matches diffusers step
    by step within 1e-5 or raises a ValueError (diffusers' own refusals are skipped)."""
    import random
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    rng = random.Random(17)
    matched = named = 0
    for _ in range(80):
        cls = rng.choice(sorted(_SWEEP))
        opts = {k: rng.choice(v) for k, v in _SWEEP[cls].items() if rng.random() < 0.5}
        base = rng.choice([SD_PNDM, DDPM_HUB])
        n = rng.choice([5, 10])
        try:
            _diffusers_loop(getattr(diffusers, cls).from_config(base, **opts), n)
        except Exception:  # diffusers itself refuses (or fails on) the combination
            continue
        ref = getattr(diffusers, cls).from_config(base, **opts)
        try:
            ours = DiffcoreScheduler.from_config(ref.config)
            worst = _compare(ref, ours, n)
        except ValueError as e:
            assert any(a in str(e) for a in list(_SWEEP[cls]) + ["_class_name", "num_inference_steps"]), str(e)
            named += 1
            continue
        assert worst <= 1e-5, f"{cls} {opts} n={n}: {worst:.3g} relative off diffusers"
        matched += 1
    assert matched >= 30, (matched, named)

