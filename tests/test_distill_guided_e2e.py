"""Guided progressive distillation end to end on 2-D data (issue 7 criterion;
book §10.3.4, Meng et al. 2023): the exact class-conditional Gaussian-mixture teacher
(:class:`~diffcore.distill.guided.ClassMixtureTeacher`, toy_2d_mixture components grouped into three
classes, null label = the full mixture) under CFG with shifted weight w (ω = w + 1).

A guided distribution has no closed form, so the reference is the guided teacher's own ODE solved
finely (200 DPM-Solver++(2M) steps); as in tests/test_distill_e2e.py the bound is
2 × (SW of the teacher with a 50-step solver + the held-out-vs-held-out floor of the reference), and
the teacher run with DDIM at the student's NFE must miss it. Slow (≈ 2 min on one CPU thread).
"""
import pytest
import torch

import diffcore
from diffcore import metrics, models, oracles, schedules
from diffcore.distill.guided import ClassMixtureTeacher, GuidedProgressiveDistillation, WConditioned

F64 = torch.float64
N_EVAL = 4000


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sw(x, ref):
    p = torch.randn(256, 2, generator=_gen(5), dtype=F64)
    return float(metrics.sliced_wasserstein(x.double(), ref, projections=p / p.norm(dim=1, keepdim=True)))


@pytest.mark.slow
def test_guided_pd_two_step_student_end_to_end():
    """Stage 1: a WConditioned MLP (v-prediction) regresses the guided teacher over w ∈ [0, 4]
    (2000 iterations, cosine step decay); stage 2: PD rounds 32 → 16 → 8 → 4 → 2 DDIM steps with
    (labels, w) drawn per batch. The 2-step student, sampled through diffcore.sample with
    model_kwargs={"labels", "w"}, is within the bound at w = 0 (conditional model) and w = 2."""
    vp = schedules.get("vp_cosine")
    T = ClassMixtureTeacher(oracles.toy_2d_mixture(), [[0], [1, 3], [2]], vp, "x0")
    labels = T.sample(N_EVAL, _gen(20))[1]
    null = torch.full_like(labels, T.null_label)

    def teacher_samples(w, seed, steps, solver="dpmpp_2m"):
        xT = diffcore.prior_sample(vp, (N_EVAL, 2), seed=seed, dtype=F64)
        return diffcore.sample(T, xT, vp, solver=solver, steps=steps, prediction="x0", model_kwargs={"labels": labels},
                               guidance=diffcore.CFG.from_w(w, uncond={"labels": null}))

    torch.manual_seed(0)
    net = WConditioned(models.MLP(2, 128, 3, num_classes=T.num_classes), w_max=4.0)
    gpd = GuidedProgressiveDistillation(T, net, vp, 32, T.null_label, (0.0, 4.0), "x0", "v",
                                        weighting="snr_plus_one", lr=2e-3, stage1_iters=2000, iters=800,
                                        batch_size=256)
    st = gpd.run(lambda n, g: (lambda o: (o[0].float(), o[1]))(T.sample(n, g)), 2, _gen(0))
    assert st.steps == 2
    xT = diffcore.prior_sample(vp, (N_EVAL, 2), seed=3, dtype=F64)
    for w in (0.0, 2.0):
        ref = teacher_samples(w, 1, 200)
        floor = _sw(teacher_samples(w, 2, 200), ref)
        bound = 2 * (_sw(teacher_samples(w, 3, 50), ref) + floor)
        naive = _sw(teacher_samples(w, 3, 2, "ddim"), ref)
        sw = _sw(diffcore.sample(st, xT.float(), vp, steps=2, model_kwargs={"labels": labels, "w": w}), ref)
        print(f"guided PD w={w}: sw2={sw:.4f} bound={bound:.4f} floor={floor:.4f} ddim2={naive:.4f}")
        assert naive > bound
        assert sw <= bound, (w, sw, bound)
