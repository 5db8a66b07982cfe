"""``prediction=None`` (the default) means the schedule's own prediction type at every entry point
that takes one: ``"velocity"`` on the flow-matching schedules, ``"eps"`` on the diffusion ones.

Oracle: the exact posterior model of a Gaussian mixture (``diffcore.oracles``) returning the
schedule's own type; each entry point called with the default must give bitwise the result of the
same call with that type passed explicitly. On a flow schedule a velocity model read as ε gives a
different number (or a singular-conversion error), so each flow case fails under an ``"eps"``
default."""
import copy

import pytest
import torch

from diffcore import EMS, schedules, solvers, timesteps
from diffcore.align import diffusion_dpo_loss
from diffcore.control import (DPS, ILVR, ClassifierGuidance, ExactGaussianLikelihood, LossGuidance, Mask,
                              ScoreProjection, loss_guided_ddim, loss_guided_ddim_step, noise_space_term)
from diffcore.convergence import order_study, pinned_starts, reference_mixture, run_plan
from diffcore.distill.progressive import (ProgressiveDistillation, guided_stage1_loss, guided_teacher, pd_loss,
                                          pd_target)
from diffcore.solvers import ddim_step, heun_step

ORACLE = reference_mixture()
# (schedule, its own prediction type); rectified_flow and trig are flow paths, vp_linear diffusion
CASES = [(schedules.get("rectified_flow"), "velocity"), (schedules.get("trig"), "velocity"),
         (schedules.get("vp_linear"), "eps")]
IDS = ["rectified_flow", "trig", "vp_linear"]


def _model(sched, own):
    def model(x, t, **kw):
        return ORACLE.predict(x, t, sched, own)
    return model


def _x(n=6, seed=0):
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _same(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    else:
        assert torch.equal(a, b), (a, b)


def _loss(x0, cond):
    return ((x0 - 0.3) ** 2).sum(dim=1)


def _classifier(x, t):
    return torch.cat([x, -x], dim=1)


# each entry: f(sched, model, **kw) -> tensor(s); kw is {} (default) or {prediction-arg: own}
ENTRY = {
    "plan_dpmpp_2m": lambda s, m, **kw: run_plan(
        solvers.get("dpmpp_2m").plan(s, timesteps(s, 6, dtype=torch.float64), dtype=torch.float64, **kw), m, _x()),
    "plan_ddim": lambda s, m, **kw: run_plan(
        solvers.get("ddim").plan(s, timesteps(s, 5, dtype=torch.float64), dtype=torch.float64, **kw), m, _x()),
    "plan_rk4": lambda s, m, **kw: run_plan(
        solvers.get("rk4").plan(s, timesteps(s, 4, dtype=torch.float64), dtype=torch.float64, **kw), m, _x()),
    "ems_estimate_noise": lambda s, m, **kw: (lambda e: (e.l, e.s, e.b))(EMS.estimate(
        m, s, noise=_x(16, 4), K=4, t_start=0.9, t_end=0.1, **kw)),
    "ddim_step": lambda s, m, **kw: ddim_step(m, _x(), 0.6, 0.4, s, **kw),
    "heun_step": lambda s, m, **kw: heun_step(m, _x(), 0.6, 0.4, s, **kw),
    "order_study": lambda s, m, **kw: torch.tensor(order_study(
        solvers.get("dpmpp_2m"), s, ORACLE, steps=(8, 16), t_start=0.9, t_end=0.1,
        spacing="uniform_t", **kw)["errors"]),
    "ems_estimate": lambda s, m, **kw: (lambda e: (e.l, e.s, e.b))(EMS.estimate(
        m, s, data=ORACLE.sample(64, generator=torch.Generator().manual_seed(3)), K=8, chunk=9,
        t_start=0.9, t_end=0.1, **kw)),
    "dpo_loss": lambda s, m, **kw: diffusion_dpo_loss(
        m, lambda x, t: 0.9 * m(x, t), _x(4, 1), _x(4, 2), s, 1.0, t=torch.full((4,), 0.5, dtype=torch.float64),
        eps=_x(4, 3), **kw),
    "LossGuidance": lambda s, m, **kw: LossGuidance(m, _loss, s, **kw)(_x(), torch.full((6,), 0.5)),
    "ClassifierGuidance": lambda s, m, **kw: ClassifierGuidance(m, _classifier, 1.0, 0, s, **kw)(
        _x(), torch.full((6,), 0.5)),
    "ScoreProjection": lambda s, m, **kw: ScoreProjection(m, Mask(torch.ones(1)), torch.zeros(1), s, noise=False,
                                                          **kw)(_x(), torch.full((6,), 0.5)),
    "ILVR": lambda s, m, **kw: ILVR(m, Mask(torch.ones(1)), torch.zeros(1), s, noise=False, **kw)(
        _x(), torch.full((6,), 0.5)),
    "DPS": lambda s, m, **kw: DPS(m, Mask(torch.ones(1)), torch.zeros(1), s, sigma_y=0.5, **kw)(
        _x(), torch.full((6,), 0.5)),
    "ExactGaussianLikelihood": lambda s, m, **kw: ExactGaussianLikelihood(
        m, Mask(torch.ones(1)), torch.zeros(1), 0.5, torch.zeros(1), 1.0, s, **kw)(_x(), torch.full((6,), 0.5)),
    "noise_space_term": lambda s, m, **kw: noise_space_term(m, _x(), 0.5, _loss, None, s, **kw),
    "loss_guided_ddim_step": lambda s, m, **kw: loss_guided_ddim_step(
        m, _x(), 0.6, 0.4, s, _loss, None, eta_latent=0.5, **kw),
    "loss_guided_ddim": lambda s, m, **kw: loss_guided_ddim(m, _x(), s, _loss, None, steps=3, eta_data=0.5,
                                                            **kw),
    "pd_target": lambda s, m, **kw: pd_target(m, _x(), 0.8, 0.6, 0.4, s, **kw),
    "guided_teacher": lambda s, m, **kw: guided_teacher(m, _x(), 0.5, s, torch.zeros(6, dtype=torch.long), 1.5,
                                                        1, **kw),
}
# entry points whose argument is called teacher_prediction
TEACHER = {
    "pd_loss": lambda s, m, **kw: pd_loss(
        lambda x, t: torch.zeros_like(x), m, _x(), torch.tensor([0.9, 0.7, 0.5], dtype=torch.float64), s,
        generator=torch.Generator().manual_seed(5), **kw),
    "guided_stage1_loss": lambda s, m, **kw: guided_stage1_loss(
        lambda x, t, labels=None, w=None: torch.zeros_like(x), m, _x(), torch.zeros(6, dtype=torch.long), s, 1,
        generator=torch.Generator().manual_seed(6), **kw),
}


@pytest.mark.parametrize("sched,own", CASES, ids=IDS)
@pytest.mark.parametrize("name", sorted(ENTRY))
def test_default_is_schedule_prediction(name, sched, own):
    m = _model(sched, own)
    _same(ENTRY[name](sched, m), ENTRY[name](sched, m, prediction=own))


@pytest.mark.parametrize("sched,own", CASES, ids=IDS)
@pytest.mark.parametrize("name", sorted(TEACHER))
def test_default_teacher_prediction(name, sched, own):
    m = _model(sched, own)
    _same(TEACHER[name](sched, m), TEACHER[name](sched, m, teacher_prediction=own))


@pytest.mark.parametrize("sched,own", CASES, ids=IDS)
def test_default_resolved_on_objects(sched, own):
    """The resolved type is what the objects carry (a plan, a guided model, a PD run)."""
    m = _model(sched, own)
    assert solvers.get("dpmpp_2m").plan(sched, timesteps(sched, 4)).prediction == own
    assert LossGuidance(m, _loss, sched).prediction == own
    pd = ProgressiveDistillation(m, sched, 4, student=torch.nn.Linear(1, 1), iters=1)
    assert pd.teacher_prediction == own


@pytest.mark.parametrize("sched,own", CASES, ids=IDS)
def test_order_study_hands_default_to_oracle(sched, own):
    """order_study's model is the oracle's head of the resolved type (the errors alone cannot tell:
    every head of the exact model gives the same ODE)."""
    seen = []

    class Recording(type(ORACLE)):
        def predict(self, x, t, schedule, prediction):
            seen.append(prediction)
            return super().predict(x, t, schedule, prediction)

    rec = copy.copy(ORACLE)
    rec.__class__ = Recording
    order_study(solvers.get("ddim"), sched, rec, steps=(4,), t_start=0.9, t_end=0.1, spacing="uniform_t")
    assert seen and set(seen) == {own}


def test_ems_noise_trajectories_read_eps(monkeypatch):
    """EMS.estimate's noise source advances its trajectories with ε̂ (the model output converted to
    ε), so its internal plan must read ε whatever the schedule's default type is."""
    from diffcore.solvers import base
    seen = []
    orig = base.Solver.plan

    def recording(self, *a, **k):
        p = orig(self, *a, **k)
        seen.append(p.prediction)
        return p

    monkeypatch.setattr(base.Solver, "plan", recording)
    sched = schedules.get("rectified_flow")
    EMS.estimate(_model(sched, "velocity"), sched, noise=_x(16, 4), K=4, t_start=0.9, t_end=0.1)
    assert seen == ["eps"]


def test_v3_plan_default_on_flow():
    """DPM-Solver-v3's plan takes the same default (statistics of the exact model on the flow path)."""
    sched = schedules.get("rectified_flow")
    ems = EMS.from_oracle(ORACLE, sched, K=64, t_start=0.95, t_end=0.05, nodes=16)
    grid = torch.linspace(0.95, 0.05, 5, dtype=torch.float64)
    v3 = solvers.get("dpm_solver_v3", statistics=ems, corrector=False)
    m = _model(sched, "velocity")
    x = pinned_starts(ORACLE, sched, 0.95, 0.05)
    plan = v3.plan(sched, grid, dtype=torch.float64)
    assert plan.prediction == "velocity"
    _same(run_plan(plan, m, x), run_plan(v3.plan(sched, grid, dtype=torch.float64, prediction="velocity"), m, x))


def test_bad_prediction_names_argument():
    sched = schedules.get("rectified_flow")
    with pytest.raises(ValueError, match="prediction"):
        solvers.get("ddim").plan(sched, timesteps(sched, 4), prediction="banana")
    with pytest.raises(ValueError, match="teacher_prediction"):
        ProgressiveDistillation(_model(sched, "velocity"), sched, 4, student=torch.nn.Linear(1, 1),
                                teacher_prediction="banana")


def test_ddim_step_singular_error_suggests_velocity():
    """An ε reading of a flow model at α = 0 names the argument and suggests the flow default."""
    sched = schedules.get("rectified_flow")
    with pytest.raises(ValueError, match=r"did you mean prediction='velocity'"):
        ddim_step(_model(sched, "velocity"), _x(), 1.0, 0.5, sched, prediction="eps")
