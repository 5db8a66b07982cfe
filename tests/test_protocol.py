"""One sampler protocol (:mod:`diffcore.solvers.protocol`) and one step-size controller
(:class:`diffcore.solvers.adaptive_control.StepController`).

Pinned: the accepted-step sequences and outputs of ``dpm_adaptive``, ``dpm_adaptive_ps`` (per-sample
and shared steps), ``dopri5`` (per-sample and batch control) and the likelihood's Dormand–Prince
integrator, recorded before these solvers shared the controller, on the reference mixture of
:mod:`diffcore.convergence` in float64. Step counts, rejections and NFE must be equal; the outputs
of ``dpm_adaptive_ps``, ``dopri5`` and the likelihood are unchanged to rounding (the controller law
and its arithmetic are the same operations). ``dpm_adaptive`` now multiplies ``h`` by the controller's factor,
``h·(θ·E^{−1/k})``, where it formed ``(θ·h)·E^{−1/k}``: the step sizes differ by rounding in
the last bits (measured: accepted times within 2e-12, outputs within 8e-15), bounded here by 1e-10
and 1e-12.
"""
import math
import re
from pathlib import Path

import pytest
import torch

import diffcore
from diffcore import _ops, schedules, solvers
from diffcore.convergence import reference_mixture
from diffcore.solvers import DPMAdaptive, DPMAdaptivePS, Dopri5
from diffcore.solvers.adaptive_control import MAX_REJECTIONS, StepController, pi_control
from diffcore.solvers.protocol import (CAPABILITIES, AdaptiveSolver, GridPlan, GridSolver, Kind, Sampler, Student,
                                       capabilities, kind_of)

SCHED = schedules.VPLinear()
ORACLE = reference_mixture()
EPS = lambda x, t: ORACLE.predict(x, t, SCHED, "eps")  # noqa: E731
VEL = lambda x, t: ORACLE.predict(x, t, SCHED, "velocity")  # noqa: E731
X = torch.linspace(-2.5, 2.5, 7, dtype=torch.float64)[:, None]

PINS = {'dopriFalse': {'info': {'nfe': 128,
                         'nfe_per_sample': [98, 92, 98, 128, 98, 74, 86],
                         'rejected': [6, 5, 5, 7, 6, 3, 5],
                         'steps': [10, 10, 11, 14, 10, 9, 9]},
                'x': [-2.112448831504998, -1.7996775477436289, -1.3649569834007373, 0.34873450740105527,
                      0.8665445106319072, 2.3539815484934477, 2.9322081546081114]},
 'dopriTrue': {'info': {'nfe': 152,
                        'nfe_per_sample': [152, 152, 152, 152, 152, 152, 152],
                        'rejected': [9, 9, 9, 9, 9, 9, 9],
                        'steps': [16, 16, 16, 16, 16, 16, 16]},
               'x': [-2.112449002932284, -1.7996787707508046, -1.3649521463181489, 0.34873442411484595,
                     0.8665624176138271, 2.3539783786310924, 2.9322071566728427]},
 'dpm_adaptive2': {'info': {'nfe': 140, 'rejected': 14, 'steps': 63},
                   't': [0.9949877284679373, 0.7688651390414055, 0.5460890269972087, 0.4157348282263329,
                         0.3191599247970226, 0.24691860582184447, 0.1944504256865109, 0.14643501563179515,
                         0.07953818420036264, 0.029503723984509914, 0.00469786537323588],
                   'x': [-2.1136249896805537, -1.8004592213274375, -1.3653275351991372, 0.3486668198247891,
                         0.8685145356206041, 2.3550622128327023, 2.9337338588225053]},
 'dpm_adaptive3': {'info': {'nfe': 111, 'rejected': 15, 'steps': 27},
                   't': [0.9949877284679373, 0.7248087976327253, 0.2967979973794859, 0.10573408387544149,
                         0.005229938686535916],
                   'x': [-2.1123615535907194, -1.79965438817342, -1.3650703584075359, 0.3487599523357872,
                         0.8668169611913425, 2.3540952528410175, 2.932162435170476]},
 'll': {'info': {'nfe': 104, 'rejected': [0, 0, 2, 2, 0, 2, 1], 'steps': [9, 9, 15, 15, 11, 12, 9]},
        'x': [-6.466344885988312, -1.072449869947218, -3.384766678380704, -1.9976041909900344, -2.2420565289017427,
              -2.058412449320138, -2.337344975122726]},
 'ps2False': {'info': {'model_calls': 118,
                       'nfe': [118, 118, 118, 118, 118, 118, 118],
                       'rejected': [2, 2, 2, 2, 2, 2, 2],
                       'rounds': 60,
                       'steps': [58, 58, 58, 58, 58, 58, 58]},
              'x': [-2.1137552986162014, -1.800638133051268, -1.3655740693474854, 0.34869174971730343,
                    0.8695949542844652, 2.3554903681231423, 2.9341516842563315]},
 'ps2True': {'info': {'model_calls': 106,
                      'nfe': [96, 95, 102, 61, 90, 94, 98],
                      'rejected': [2, 3, 4, 1, 4, 2, 2],
                      'rounds': 53,
                      'steps': [47, 46, 49, 30, 43, 46, 48]},
             'x': [-2.114165113803621, -1.8009996456382718, -1.3655072303715565, 0.34839566996696053,
                   0.8710467078407061, 2.3559765343776804, 2.9346466439879393]},
 'ps3False': {'info': {'model_calls': 73,
                       'nfe': [73, 73, 73, 73, 73, 73, 73],
                       'rejected': [2, 2, 2, 2, 2, 2, 2],
                       'rounds': 25,
                       'steps': [23, 23, 23, 23, 23, 23, 23]},
              'x': [-2.1125865613426877, -1.799853416688269, -1.3652900180025347, 0.34875152753626415,
                    0.867759194965942, 2.354534468384152, 2.932608175223278]},
 'ps3True': {'info': {'model_calls': 66,
                      'nfe': [61, 59, 61, 57, 65, 61, 61],
                      'rejected': [2, 1, 2, 3, 1, 2, 2],
                      'rounds': 22,
                      'steps': [19, 19, 19, 17, 21, 19, 19]},
             'x': [-2.1126039677892967, -1.7998954678126047, -1.3661443805962368, 0.34861153183352683,
                   0.8686489416891521, 2.3546275607500107, 2.932615315335018]}}


def _ints(info):
    return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in info.items()}


def _close(got, want, rel):
    got = [float(v) for v in got]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert abs(g - w) <= rel * max(1.0, abs(w)), (g, w)


@pytest.mark.parametrize("order", [2, 3])
def test_pinned_dpm_adaptive(order):
    ts = []
    out, info = DPMAdaptive(order=order, rtol=1e-3, atol=1e-3).solve(EPS, X, SCHED, SCHED.t_start, SCHED.t_end,
                                                                      lambda d: ts.append(d["t"]))
    pin = PINS[f"dpm_adaptive{order}"]
    assert info == pin["info"]
    _close(ts[::6], pin["t"], 1e-10)
    _close(out.flatten(), pin["x"], 1e-12)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("per_sample", [True, False])
def test_pinned_dpm_adaptive_ps(order, per_sample):
    out, info = DPMAdaptivePS(order=order, rtol=1e-3, atol=1e-3, per_sample=per_sample).solve(
        EPS, X, SCHED, SCHED.t_start, SCHED.t_end)
    pin = PINS[f"ps{order}{per_sample}"]
    assert _ints(info) == pin["info"]
    _close(out.flatten(), pin["x"], 1e-13)


@pytest.mark.parametrize("batch_control", [False, True])
def test_pinned_dopri5(batch_control):
    out, info = Dopri5(rtol=1e-6, atol=1e-6, batch_control=batch_control).solve(VEL, X, SCHED, SCHED.t_start,
                                                                                SCHED.t_end)
    pin = PINS[f"dopri{batch_control}"]
    assert _ints(info) == pin["info"]
    _close(out.flatten(), pin["x"], 1e-13)


def test_pinned_likelihood():
    lp, st = diffcore.log_likelihood(EPS, X, SCHED, return_stats=True)
    pin = PINS["ll"]
    assert {"steps": st["steps"].tolist(), "rejected": st["rejected"].tolist(), "nfe": st["nfe"]} == pin["info"]
    _close(lp, pin["x"], 1e-12)


# -- the controller -----------------------------------------------------------------------------------

def test_controller_law_closed_form():
    """fac = θ E^{-(k_I+k_P)/k} E_prev^{k_P/k} after acceptance, θ E^{-1/k} after rejection, clipped."""
    c = StepController(3)
    E = torch.tensor([0.5, 2.0, 1e-12, 1e6], dtype=torch.float64)
    acc = E <= 1
    ep = torch.tensor([0.8, 0.8, 0.8, 0.8], dtype=torch.float64)
    want = [min(5.0, max(0.2, 0.9 * 0.5 ** (-0.7 / 3) * 0.8 ** (0.4 / 3))), min(5.0, max(0.2, 0.9 * 2.0 ** (-1 / 3))),
            5.0, 0.2]
    _close(c.factor(E, acc, ep), want, 1e-15)
    i = StepController.integral(5, fac_max=10.0, hold_after_reject=True)
    after = torch.tensor([True, False, True, False])
    want = [min(1.0, 0.9 * 0.5 ** -0.2), 0.9 * 2.0 ** -0.2, 1.0, 0.2]
    _close(i.factor(E, acc, after_reject=after), want, 1e-15)
    u = StepController.integral(2, fac_min=0.0, fac_max=math.inf)  # dpm_adaptive's unclipped law
    assert u.scalar_factor(1e6) == pytest.approx(0.9 * 1e-3, rel=1e-14)
    assert u.scalar_factor(0.0) == pytest.approx(0.9 * 1e5, rel=1e-14)  # E floored at 1e-10


@pytest.mark.parametrize("ctrl", [StepController(3), StepController.integral(5, fac_max=10.0, hold_after_reject=True),
                                  StepController.integral(2, fac_min=0.0, fac_max=math.inf)])
def test_controller_scalar_path_is_the_tensor_path(ctrl):
    """The host-float factor of a shared step equals the tensor one (same operations, libm's pow)."""
    for E in (0.0, 1e-12, 0.3, 1.0, 1.0000001, 7.5, 1e8):
        for after, ep in ((False, 1.0), (True, 0.02)):
            t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
            want = float(ctrl.factor(t(E), t(E) <= 1, t(ep), torch.tensor([after]))[0])
            assert ctrl.scalar_factor(E, after, ep) == pytest.approx(want, rel=1e-15, abs=0)


def test_controller_constants_come_from_the_core():
    """One declaration (csrc/core/adaptive.h), exported: the Python defaults are the kernel's."""
    c = _ops.ADAPTIVE_CONTROL
    assert MAX_REJECTIONS == c["max_rejections"] == 50
    d = StepController(2)
    assert (d.theta, d.fac_min, d.fac_max, d.k_i, d.k_p) == (c["theta"], c["fac_min"], c["fac_max"], c["k_i"],
                                                             c["k_p"]) == (0.9, 0.2, 5.0, 0.3, 0.4)
    assert DPMAdaptivePS().controller.kernel_options() == dict(order=3, **{k: c[k] for k in (
        "theta", "fac_min", "fac_max", "k_i", "k_p")})


def test_controller_fused_equals_reference_unclipped():
    """fac_min = 0, fac_max = inf (no limits) runs in the fused kernel as in the torch reference."""
    g = torch.Generator().manual_seed(0)
    B, N = 16, 30
    x = torch.randn(B, N, generator=g, dtype=torch.float64)
    scale = torch.logspace(-4, -1.5, B, dtype=torch.float64)[:, None]  # errors E from ~0.05 to ~20
    lo = x + scale * torch.randn(B, N, generator=g, dtype=torch.float64)
    hi = x + scale * torch.randn(B, N, generator=g, dtype=torch.float64)
    ctrl = StepController.integral(2, fac_min=0.0, fac_max=math.inf)
    args = lambda: dict(h=torch.full((B,), 0.1, dtype=torch.float64), err_prev=torch.ones(B, dtype=torch.float64),  # noqa: E731
                        lam_s=torch.zeros(B, dtype=torch.float64), active=torch.ones(B, dtype=torch.bool))
    a, b = args(), args()
    xa, xb = x.clone(), x.clone()
    lt = torch.full((B,), 0.1, dtype=torch.float64)
    le = torch.full((B,), 5.0, dtype=torch.float64)
    acc_a, E_a = _ops.adaptive_control(xa, lo, hi, a["h"], a["err_prev"], a["lam_s"], lt, le, a["active"], atol=1e-3,
                                       rtol=1e-3, **ctrl.kernel_options())
    E_b = diffcore.solvers.adaptive_control.rms_error(x, lo, hi, 1e-3, 1e-3)
    acc_b = pi_control(xb, hi, E_b, b["h"], b["err_prev"], b["lam_s"], lt, le, b["active"], order=2, controller=ctrl)
    assert torch.equal(acc_a, acc_b) and acc_a.any() and (~acc_a).any()
    torch.testing.assert_close(a["h"], b["h"], rtol=1e-14, atol=0)
    torch.testing.assert_close(a["h"], 0.1 * 0.9 * E_b.clamp_min(1e-10) ** -0.5, rtol=1e-14, atol=0)


def test_controller_bad_inputs():
    with pytest.raises(ValueError, match="order"):
        StepController(0)
    with pytest.raises(ValueError, match="theta"):
        StepController(2, theta=0.0)
    with pytest.raises(ValueError, match="fac_min, fac_max"):
        StepController(2, fac_min=1.5)
    with pytest.raises(ValueError, match="fac_min, fac_max"):
        StepController(2, fac_max=0.5)
    with pytest.raises(ValueError, match="k_p"):
        StepController(2, k_p=float("nan"))
    with pytest.raises(ValueError, match="max_rejections"):
        StepController(2, max_rejections=0)
    with pytest.raises(TypeError, match="hold_after_reject"):
        StepController(2, hold_after_reject=1)
    with pytest.raises(ValueError, match="hold_after_reject"):
        StepController.integral(5, hold_after_reject=True).kernel_options()
    with pytest.raises(AttributeError):
        StepController(2).theta = 0.5
    with pytest.raises(ValueError, match="max_rejections"):
        Dopri5(max_rejections=0)


def _jump(x, t):
    """A velocity discontinuous in t: no step across t = 0.5 is accepted at tight tolerances."""
    return torch.where(t[:, None] > 0.5, 0.0, 1e3) + 0 * x


@pytest.mark.parametrize("make", [lambda: Dopri5(rtol=1e-9, atol=1e-9, max_rejections=3),
                                  lambda: Dopri5(rtol=1e-9, atol=1e-9, max_rejections=3, batch_control=True)])
def test_dopri5_rejection_cap(make):
    with pytest.raises(RuntimeError, match=r"rtol, atol: .*3 consecutive rejected steps \(max_rejections=3"):
        make().solve(_jump, X.clone(), SCHED, 1.0, 0.0)


# -- the protocol -------------------------------------------------------------------------------------

def _solver(name):
    if name == "dpm_solver_v3":
        return solvers.get(name, statistics=diffcore.EMS.constant(SCHED, (1,)))
    return solvers.get(name)


def test_every_registered_solver_declares_its_kind():
    for name in solvers.available():
        s = _solver(name)
        assert isinstance(s, Sampler) and s.kind in (Kind.GRID, Kind.ADAPTIVE), name
        assert isinstance(s, GridSolver if s.kind is Kind.GRID else AdaptiveSolver), name
        assert set(capabilities(s)) == set(CAPABILITIES)
    assert set(solvers.ADAPTIVE) == {"dpm_adaptive", "dpm_adaptive_ps", "dopri5"}
    assert solvers.get("dpm_adaptive_ps", per_sample=False).per_sample_control is False
    assert solvers.get("dopri5").per_sample_control is True
    assert solvers.get("pc", corrector="none").supports_picard and not solvers.get("pc").supports_picard


@pytest.mark.parametrize("name", [n for n in solvers.available() if n not in solvers.ADAPTIVE
                                  and n not in ("dpm_solver_v3", "langevin")])
def test_stochastic_flag_matches_the_plans_noise(name):
    """A solver declares stochastic exactly when its plans draw noise (checked on the plan itself)."""
    s = solvers.get(name, s_churn=2.0, s_tmax=5.0) if name == "edm_churn" else _solver(name)  # s_churn = 0: no churn
    plan = s.plan(SCHED, diffcore.timesteps(SCHED, 6, t_end=1e-3, final_zero=False))
    assert isinstance(plan, GridPlan) and plan.kind is Kind.GRID and plan.name == s.name
    assert (plan.noise_draws > 0) == s.stochastic == plan.stochastic == (name in solvers.STOCHASTIC), name
    assert plan.supports_picard == s.supports_picard


def test_sample_refuses_undeclared_capabilities():
    x = X.float()
    for solver in ("dpm_adaptive", "dpm_adaptive_ps", "dopri5"):
        with pytest.raises(ValueError, match="parallel: .*Picard needs a fixed grid"):
            diffcore.sample(EPS, x, SCHED, solver=solver, parallel=diffcore.ParallelConfig())
        for kw in (dict(cuda_graph=True), dict(return_trajectory=True)):
            with pytest.raises(ValueError, match="solver: .*syncs with the host"):
                diffcore.sample(EPS, x, SCHED, solver=solver, **kw)
    with pytest.raises(ValueError, match="solver: pc has data-dependent"):
        diffcore.sample(EPS, x, SCHED, solver="pc", steps=4, seed=0, parallel=diffcore.ParallelConfig())
    v3 = _solver("dpm_solver_v3")
    with pytest.raises(ValueError, match="parallel: dpm_solver_v3"):
        diffcore.sample(EPS, x, SCHED, solver=v3, steps=4, parallel=diffcore.ParallelConfig())


class _EulerAdaptive(AdaptiveSolver):
    """One Euler step in t on the velocity: a new engine declared by the protocol alone."""

    name = "one_euler"
    native = "velocity"

    def __init__(self):
        self.calls = []

    def solve(self, fn, x, schedule, t_start, t_end, callback=None):
        self.calls.append((t_start, t_end))
        t = torch.full((x.shape[0],), t_start, dtype=x.dtype)
        return x + (t_end - t_start) * fn(x, t), {}


def test_sample_runs_a_new_adaptive_solver():
    s = _EulerAdaptive()
    assert solvers.get(s) is s
    out = diffcore.sample(EPS, X, SCHED, solver=s, t_start=0.9, t_end=0.2)
    assert s.calls == [(0.9, 0.2)]
    t = torch.full((X.shape[0],), 0.9, dtype=torch.float64)
    torch.testing.assert_close(out, X - 0.7 * VEL(X, t), rtol=1e-12, atol=1e-12)


class _HalvingStudent(Student):
    """A student whose k-step sampler halves x k times."""

    name = "halving"

    def few_step_sample(self, x, schedule=None, steps=1, model_kwargs=None, generator=None):
        return x * 0.5 ** steps

    def __call__(self, x, t):
        raise AssertionError("a student is not run as a model")


def test_sample_dispatches_students():
    st = _HalvingStudent()
    assert kind_of(st) is Kind.STUDENT and not st.needs_grid
    torch.testing.assert_close(diffcore.sample(st, X, steps=3), X / 8)
    assert kind_of(EPS) is None
    with pytest.raises(TypeError, match="obj: expected a diffcore sampler"):
        capabilities(EPS)


def test_no_attribute_dispatch_left():
    """sample(), the k-diffusion functions and the diffusers drop-in choose engines by the protocol."""
    root = Path(diffcore.__file__).parent
    files = [root / "sample.py", *sorted((root / "k").glob("*.py"))]
    pat = re.compile(r"hasattr\(|isinstance\(.*Plan|few_step_sample\"\)|[\"'.]adaptive\b(?!\()")
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            assert not pat.search(line), f"{f.name}:{n}: {line.strip()}"
    dropin = (root / "integrations" / "diffusers.py").read_text()
    assert "V3Plan" not in dropin and 'hasattr(solver, "plan")' not in dropin


def test_picard_and_k_driver_check_the_kind():
    """The Picard sampler and the k-diffusion loop take fixed-grid plans only, by the declared kind."""
    from diffcore.k._driver import run
    from diffcore.parallel import picard_sample

    x = torch.zeros(2, 1)
    cfg = diffcore.ParallelConfig()
    with pytest.raises(TypeError, match="plan: expected a diffcore Plan"):
        picard_sample(DPMAdaptive(), lambda reps: EPS, x, cfg)
    v3 = _solver("dpm_solver_v3").plan(SCHED, diffcore.timesteps(SCHED, 4, t_end=1e-2, final_zero=False))
    with pytest.raises(ValueError, match="parallel: dpm_solver_v3"):
        picard_sample(v3, lambda reps: EPS, x, cfg)
    pc = solvers.get("pc").plan(SCHED, diffcore.timesteps(SCHED, 4))
    with pytest.raises(ValueError, match="solver: pc has data-dependent"):
        picard_sample(pc, lambda reps: EPS, x, cfg)
    sig = torch.tensor([2.0, 1.0, 0.0])
    with pytest.raises(TypeError, match="solver: expected a fixed-grid diffcore solver"):
        run(Dopri5(), lambda x, s: x, x, sig, sig.double(), None, None, True)
