"""Few-step students vs the teacher's solvers: quality against NFE and training cost (a report, not a gate).

Configuration (the exact Gaussian-mixture oracle of ``diffcore.oracles`` is the teacher, so every
student is compared with a perfectly trained diffusion model):

* data: ``oracles.toy_2d_mixture()`` (2-D, four anisotropic components); quality = sliced Wasserstein
  SW₂ (``diffcore.metrics.sliced_wasserstein``, 256 fixed directions of
  ``diffcore.train.quality.projections``) of 4000 samples (fixed start noise) to 4000 held-out data
  points; the noise floor is SW between two independent held-out draws of that size.
* teacher rows: the exact ε of the mixture on ``vp_linear`` with DDIM, DPM-Solver++(2M), Heun and
  UniPC(2) at NFE 1, 2, 4, 8, 50 (NFE = model calls counted by a wrapper; Heun spends two per step, so
  it gets NFE/2 steps and has no NFE-1 row).
* students, one network size for all: MLP width 128, depth 3 (``models.MLP``, ``TwoTimeMLP`` for
  two-time students, ``OneStepGenerator(2, 2, 128, 3)`` + an MLP fake score for score distillation),
  Adam, batch 256, ``--iters`` optimizer iterations each (default 2000, ``--quick`` 300):
  - PD (book §10.3): exact x0 teacher on 32 DDIM steps (vp_cosine) → 16 → 8 → 4 → 2 → 1 steps, v-prediction
    student, ``--iters``/5 iterations per halving round (students at 4, 2, 1 steps reported; a PD
    student inherits its teacher's discretisation error, so the 32-step DDIM teacher is a row too);
  - CD (book §11.2): edm, Heun steps of the exact teacher on an 18-point Karras grid, EMA target μ = 0.95;
  - sCD (book §11.3): TrigFlow (``trig``, σ_d = 1) with the exact teacher velocity as ``F_pre``, sCM tangent
    normalisation c = 0.1, no adaptive weighting, lr 1e-3, sampled from an evaluation EMA (0.99);
  - CTM (book §11.4): edm, local consistency (one Heun step of the exact teacher from s to the previous
    Karras point u, N = 18), t drawn on the grid below u, + DSM term, EMA target μ = 0.95, lr 2e-3,
    γ = 0 sampling;
  - MeanFlow (book §11.5, teacher-velocity variant): rf, exact velocity as v, 50 % of pairs with t = s;
  - SiD (λ = 1), FGM, VSD/DMD (book §10.2): vp_linear, one-step ``OneStepGenerator``, 2 fake-score updates
    per generator update (Adam lr 2e-3), generator lr 5e-4, evaluation EMA of the generator with
    decay 1 − 10/iters; FGM with time weight w(t) = σ_t² and generator lr 1e-3 (unweighted FGM
    stalled at SW ≈ 0.35 in 3000 iterations: its generator gradient through ε_φ(x_t) carries
    ∂ε/∂x ~ 1/σ_t, so small-t draws dominate its variance).
  - CT (book §11.2, no teacher, improved-CT recipe): edm, θ⁻ = sg[θ], doubling curriculum s₀ = 10 capped at
    s₁ = 160, lognormal index law, pseudo-Huber distance, 1/Δs weight, Adam lr 2e-4 (β₂ = 0.99),
    sampled from an evaluation EMA (decay 1 − 10/iters);
  - MonoFlow (Yi et al. 2023, data only, no teacher): one-step ``OneStepGenerator``, logistic density-ratio
    discriminator (MLP width 128, depth 3, SiLU; 2 updates per generator update), h(d) = e^d (the
    forward-KL flow, mass covering; h = id, the reverse-KL flow, starved a mode in the tests' runs),
    Adam lr 1e-3 with β = (0.5, 0.9) for both, evaluation EMA 0.99 of the generator.
* timing: median ms per training iteration of each method, measured side by side
  (``common.measure``: the methods alternate within each round) on fresh copies of the networks, plus
  the wall time each method's training took in this run. A score-distillation iteration is the two
  fake-score updates and one generator update. Teachers are the exact oracle, so the teacher's share of
  a step is an oracle evaluation (cheap next to a real teacher network).

Usage: ``python bench/bench_distill.py [--quick] [--iters N] [--n 4000]``. One torch thread.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, measure, table  # noqa: E402

import diffcore  # noqa: E402
from diffcore import metrics, models, oracles, schedules  # noqa: E402
from diffcore.distill.consistency import ConsistencyFunction, ConsistencyTrainer, ema_update, karras_grid  # noqa: E402
from diffcore.distill.ctm import CTMModel, ctm_consistency_loss, ctm_dsm_loss, teacher_solver  # noqa: E402
from diffcore.distill.meanflow import TwoTimeMLP, meanflow_loss  # noqa: E402
from diffcore.distill.monoflow import MonoFlowTrainer  # noqa: E402
from diffcore.distill.progressive import ProgressiveDistillation, pd_loss  # noqa: E402
from diffcore.distill.scm import TrigConsistency, scm_loss, scm_sample  # noqa: E402
from diffcore.distill.score_distill import OneStepGenerator, ScoreDistillTrainer  # noqa: E402
from diffcore.distill.students import ConsistencyStudent, CTMStudent, MeanFlowStudent  # noqa: E402
from diffcore.train.quality import projections  # noqa: E402

GM = oracles.toy_2d_mixture()
F64 = torch.float64
WIDTH, DEPTH, BATCH = 128, 3, 256
PD_TEACHER_STEPS = 32
SD_TRIG = 1.0  # σ_d of the TrigFlow path (the mixture's per-axis std is ≈ 1.5 and 0.9)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _data(k, g):
    return GM.sample(k, g).float()


class _Counted:
    """Counts model calls (the NFE of a sampler run)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t, **kw):
        self.calls += 1
        return self.fn(x, t, **kw)


# ---- teacher rows -----------------------------------------------------------------------------------
def teacher_rows(n, sw, nfes=(1, 2, 4, 8, 50)):
    sched = schedules.get("vp_linear")
    xT = diffcore.prior_sample(sched, (n, 2), seed=3, dtype=F64)
    rows = []
    for label, solver in (("DDIM", "ddim"), ("DPM-Solver++(2M)", "dpmpp_2m"), ("Heun", "heun"), ("UniPC(2)", "unipc_2")):
        for nfe in nfes:
            steps = nfe // 2 if solver == "heun" else nfe
            if steps == 0:  # Heun cannot run on one model call
                continue
            model = _Counted(lambda x, t: GM.predict(x, t, sched, "eps"))
            x = diffcore.sample(model, xT, sched, solver=solver, steps=steps, prediction="eps")
            rows.append((f"teacher {label}", model.calls, sw(x)))
    vp = schedules.get("vp_cosine")  # the PD teacher: DDIM on its 32-step grid
    model = _Counted(lambda x, t: GM.predict(x, t, vp, "x0"))
    x = diffcore.sample(model, diffcore.prior_sample(vp, (n, 2), seed=3, dtype=F64), vp, solver="ddim",
                        steps=PD_TEACHER_STEPS, prediction="x0")
    rows.append(("PD teacher: DDIM on vp_cosine", model.calls, sw(x)))
    return rows


# ---- students ---------------------------------------------------------------------------------------
def _mlp(**kw):
    return models.MLP(2, WIDTH, DEPTH, **kw)


def train_pd(iters):
    """32-step exact teacher → 16 → 8 → 4 → 2 → 1 (five halving rounds); students kept at 4, 2, 1 steps."""
    vp = schedules.get("vp_cosine")
    teacher = lambda x, t: GM.predict(x, t, vp, "x0").to(x.dtype)  # noqa: E731
    torch.manual_seed(0)
    per_round = max(1, iters // 5)
    pd = ProgressiveDistillation(teacher, vp, PD_TEACHER_STEPS, student=_mlp(), teacher_prediction="x0",
                                 student_prediction="v", weighting="snr_plus_one", lr=2e-3, iters=per_round,
                                 batch_size=BATCH)
    g = _gen(0)
    chain = [pd.run(_data, PD_TEACHER_STEPS // 2, generator=g)]
    while chain[-1].steps > 1:  # each later round: the previous student is the teacher and the initial student
        prev = chain[-1]
        pd = ProgressiveDistillation(prev.net, vp, prev.grid, student=prev.net, teacher_prediction="v",
                                     student_prediction="v", weighting="snr_plus_one", lr=2e-3, iters=per_round,
                                     batch_size=BATCH)
        chain.append(pd.run(_data, prev.steps // 2, generator=g))
    students = [s for s in chain if s.steps <= 4]

    def step_fn():  # one round-1 iteration (exact teacher on the full grid → half-step student)
        torch.manual_seed(0)
        net = _mlp()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        grid, gg = diffcore.timesteps(vp, PD_TEACHER_STEPS), _gen(9)

        def step():
            loss = pd_loss(net, teacher, _data(BATCH, gg), grid, vp, "x0", "v", "snr_plus_one", None, gg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def samplers(xT):
        return [(s.steps, diffcore.sample(s, xT.float(), vp, steps=s.steps)) for s in students]

    return samplers, step_fn


def train_cd(iters):
    edm = schedules.get("edm")
    teacher = lambda x, t: GM.predict(x, t, edm, "eps").to(x.dtype)  # noqa: E731

    def make():
        torch.manual_seed(0)
        f = ConsistencyFunction(_mlp(time_transform="log"), edm, t_min=0.002)
        return ConsistencyTrainer(f, edm, teacher=teacher, N=18, mu=0.95, lr=2e-3)

    tr, g = make(), _gen(1)
    for _ in range(iters):
        tr.step(_data(BATCH, g), generator=g)
    cm = ConsistencyStudent(tr.target)

    def step_fn():
        t2, gg = make(), _gen(9)
        return lambda: t2.step(_data(BATCH, gg), generator=gg)

    def samplers(xT):
        return [(k, diffcore.sample(cm, xT.float() * 80, edm, steps=k, generator=_gen(3))) for k in (1, 2, 4)]

    return samplers, step_fn


def _scd_teacher(u, s):
    """``F_pre(u, s) = (dx/ds)/σ_d`` with ``dx/ds = (2/π)·v(x, t = 2s/π)`` of the trig schedule (exact)."""
    trig = schedules.get("trig", sigma_data=SD_TRIG)
    v = GM.predict((SD_TRIG * u).double(), (2 / math.pi) * s.double(), trig, "velocity")
    return ((2 / math.pi) * v / SD_TRIG).to(u.dtype)


def train_scd(iters):
    def make():
        torch.manual_seed(0)
        f = TrigConsistency(_mlp(max_freq=1.0), SD_TRIG)  # low max_freq: bounded dF/ds (sCM stabiliser)
        return f, torch.optim.Adam(f.parameters(), lr=1e-3)

    def step(f, opt, g):
        loss = scm_loss(f, _data(BATCH, g), teacher=_scd_teacher, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    f, opt = make()
    ema = copy.deepcopy(f).requires_grad_(False)  # evaluation EMA (the sCM loss itself uses θ⁻ = sg[θ])
    g = _gen(1)
    for _ in range(iters):
        step(f, opt, g)
        ema_update(ema, f, 0.99)

    def step_fn():
        f2, o2 = make()
        gg = _gen(9)
        return lambda: step(f2, o2, gg)

    def samplers(xT):
        z = SD_TRIG * xT.float()
        times = {1: [math.pi / 2], 2: [math.pi / 2, 1.1], 4: [math.pi / 2, 1.3, 1.0, 0.6]}
        return [(k, scm_sample(ema, z, times[k], generator=_gen(4))) for k in (1, 2, 4)]

    return samplers, step_fn


def train_ctm(iters):
    edm = schedules.get("edm")
    teacher = lambda x, t: GM.predict(x.double(), t.double(), edm, "eps").to(x.dtype)  # noqa: E731
    solver = teacher_solver(teacher, "eps", 1)
    N = 18
    grid = torch.cat([torch.zeros(1, dtype=F64), karras_grid(N, 0.002, 80.0)]).float()

    def make():
        torch.manual_seed(0)
        G = CTMModel(TwoTimeMLP(2, WIDTH, DEPTH, time_scale=1 / 80))
        return G, copy.deepcopy(G).requires_grad_(False), torch.optim.Adam(G.parameters(), lr=2e-3)

    def step(G, tgt, opt, g):
        x0 = _data(BATCH, g)
        i = torch.randint(2, N + 1, (BATCH,), generator=g)  # s = grid[i], local u = grid[i − 1] > 0
        j = (torch.rand(BATCH, generator=g) * i).long()  # t = grid[j] ≤ u (t = 0 included)
        s, u, t = grid[i], grid[i - 1], grid[j]
        sig = torch.exp(-1.2 + 1.2 * torch.randn(BATCH, generator=g))  # EDM log-normal σ of the DSM term
        loss = ctm_consistency_loss(G, tgt, x0, s, t, u, solver, generator=g) + ctm_dsm_loss(G, x0, sig, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(tgt, G, 0.95)

    G, tgt, opt = make()
    g = _gen(1)
    for _ in range(iters):
        step(G, tgt, opt, g)
    st = CTMStudent(tgt)

    def step_fn():
        G2, t2, o2 = make()
        gg = _gen(9)
        return lambda: step(G2, t2, o2, gg)

    def samplers(xT):
        return [(k, diffcore.sample(st, xT.float() * 80, edm, steps=k)) for k in (1, 2, 4)]

    return samplers, step_fn


def train_meanflow(iters):
    rf = schedules.get("rf")
    teacher = lambda x, t: GM.predict(x, t, rf, "velocity").to(x.dtype)  # noqa: E731

    def make():
        torch.manual_seed(0)
        h = TwoTimeMLP(2, WIDTH, DEPTH)
        return h, torch.optim.Adam(h.parameters(), lr=2e-3)

    def step(h, opt, g):
        loss = meanflow_loss(h, _data(BATCH, g), rf, frac_equal=0.5, generator=g, teacher=teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    h, opt = make()
    g = _gen(2)
    for _ in range(iters):
        step(h, opt, g)
    mfs = MeanFlowStudent(h)

    def step_fn():
        h2, o2 = make()
        gg = _gen(9)
        return lambda: step(h2, o2, gg)

    def samplers(xT):
        return [(k, diffcore.sample(mfs, xT.float(), rf, steps=k)) for k in (1, 2, 4)]

    return samplers, step_fn


def _score_distill(method, lam=1.0, sigma2_weight=False):
    sched = schedules.get("vp_linear")
    teacher = lambda x, t: GM.eps(x, t, sched).to(x.dtype)  # noqa: E731
    weight = (lambda t: sched.sigma(t) ** 2) if sigma2_weight else None

    def make(iters=2000):
        torch.manual_seed(0)
        return ScoreDistillTrainer(OneStepGenerator(2, 2, WIDTH, DEPTH), _mlp(), teacher, sched, method=method,
                                   lam=lam, gen_lr=1e-3 if sigma2_weight else 5e-4, fake_lr=2e-3, fake_steps=2,
                                   ema_decay=1 - 10 / max(iters, 20), weight=weight, seed=0)

    def train(iters):
        tr = make(iters)
        tr.train(iters, BATCH)

        def step_fn():
            t2 = make()
            return lambda: t2.train(1, BATCH)

        def samplers(xT):
            return [(1, tr.sample(xT.shape[0], seed=3))]

        return samplers, step_fn

    return train


def train_ct(iters):
    edm = schedules.get("edm")

    def make():
        torch.manual_seed(0)
        f = ConsistencyFunction(_mlp(time_transform="log"), edm, t_min=0.002)
        return ConsistencyTrainer(f, edm, curriculum="ict", metric="pseudo_huber", weighting="inv_dt", lr=2e-4,
                                  curriculum_kwargs={"s1": 160}, ema_decay=ema_decay, betas=(0.9, 0.99))

    ema_decay = 1 - 10 / max(iters, 20)  # 0.995 at the default 2000 iterations
    tr, g = make(), _gen(1)
    for k in range(iters):
        tr.step(_data(BATCH, g), k, iters, generator=g)
    cm = ConsistencyStudent(tr.ema)

    def step_fn():  # an iteration at the final N (161): the cost does not depend on N
        t2, gg = make(), _gen(9)
        return lambda: t2.step(_data(BATCH, gg), iters, iters, generator=gg)

    def samplers(xT):
        return [(k, diffcore.sample(cm, xT.float() * 80, edm, steps=k, generator=_gen(3))) for k in (1, 2, 4)]

    return samplers, step_fn


def _gan_adam(params, lr):
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))


def train_monoflow(iters):
    def make():
        torch.manual_seed(0)
        D = torch.nn.Sequential(torch.nn.Linear(2, WIDTH), torch.nn.SiLU(), torch.nn.Linear(WIDTH, WIDTH),
                                torch.nn.SiLU(), torch.nn.Linear(WIDTH, WIDTH), torch.nn.SiLU(),
                                torch.nn.Linear(WIDTH, 1))
        return MonoFlowTrainer(OneStepGenerator(2, 2, WIDTH, DEPTH), D, _data, h="ratio", eta=0.1, d_steps=2,
                               gen_lr=1e-3, d_lr=1e-3, gen_optimizer=_gan_adam, d_optimizer=_gan_adam, seed=0,
                               ema_decay=0.99)

    tr = make()
    tr.train(iters, BATCH)

    def step_fn():
        t2 = make()
        return lambda: t2.step(BATCH)

    def samplers(xT):
        return [(1, tr.sample(xT.shape[0], _gen(3)))]

    return samplers, step_fn


METHODS = [("PD (32→…→1)", train_pd), ("CD", train_cd), ("sCD (TrigFlow)", train_scd), ("CTM", train_ctm),
           ("MeanFlow (teacher v)", train_meanflow), ("SiD (λ=1)", _score_distill("sid", 1.0)),
           ("FGM (w = σ²)", _score_distill("fgm", sigma2_weight=True)), ("VSD/DMD", _score_distill("vsd")),
           ("CT (iCT, no teacher)", train_ct), ("MonoFlow (h = e^d, data only)", train_monoflow)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small budget (300 iterations per method)")
    ap.add_argument("--iters", type=int, default=None, help="training iterations per method (default 2000)")
    ap.add_argument("--n", type=int, default=4000, help="evaluation sample size")
    args = ap.parse_args()
    torch.set_num_threads(1)
    iters = args.iters if args.iters is not None else (300 if args.quick else 2000)
    n = args.n
    proj = projections(2)
    ref = GM.sample(n, _gen(11))

    def sw(x):
        return float(metrics.sliced_wasserstein(x.detach().double(), ref, projections=proj))

    floor = sw(GM.sample(n, _gen(12)))
    print(f"# bench_distill — {datetime.date.today()}\n\n{machine()}\n")
    print(f"toy_2d_mixture, n = {n}, 256 fixed directions; {iters} training iterations per method, batch {BATCH}, "
          f"width {WIDTH}, depth {DEPTH}\n")
    rows = [(label, nfe, v) for label, nfe, v in teacher_rows(n, sw)]
    step_fns, train_s = {}, {}
    xT = torch.randn(n, 2, generator=_gen(3), dtype=F64)
    for label, fn in METHODS:
        t0 = time.perf_counter()
        samplers, step_fn = fn(iters)
        train_s[label] = time.perf_counter() - t0
        for nfe, x in samplers(xT):
            rows.append((label, nfe, sw(x)))
        step_fns[label] = step_fn
        print(f"  trained {label} in {train_s[label]:.1f} s", file=sys.stderr, flush=True)

    print("## Quality vs NFE (SW₂ to held-out data; lower is better)\n")
    body = [[label, str(nfe), f"{v:.4f}", f"{v / floor:.2f}"] for label, nfe, v in rows]
    body.append(["held-out vs held-out (noise floor)", "—", f"{floor:.4f}", "1.00"])
    print(table(["sampler", "NFE", "SW₂", "SW₂ / floor"], body))

    fns = {label: make() for label, make in step_fns.items()}
    res = measure(fns, sync=False, min_time=1.0 if args.quick else 3.0, rounds=3, slow_budget=2.0)
    print("\n## Training cost (median ms per iteration, measured side by side; batch "
          f"{BATCH}, width {WIDTH}, depth {DEPTH})\n")
    trows = []
    for label, _ in METHODS:
        med, k = res[label]
        cell = med if isinstance(med, str) else f"{med / 1000:.2f}"
        trows.append([label, cell, str(k), f"{train_s[label]:.1f}"])
    print(table(["method", "ms / iteration", "samples", f"training time (s, {iters} iterations)"], trows))
    print(f"\ntotal training time: {sum(train_s.values()):.1f} s")


if __name__ == "__main__":
    main()
