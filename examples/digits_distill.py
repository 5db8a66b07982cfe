"""Progressive distillation of a class-conditional digits model to a 2-step student (Salimans &
Ho 2022; book §10.3, eq. 10.3.1–10.3.2), compared with its teacher.

1. Train a class-conditional teacher (``diffcore.models.MLP``, v-prediction on ``vp_cosine``, label
   dropout 0.1 so it also has the unconditional branch for CFG) on ``Digits("train")``.
2. Halve its DDIM grid by progressive distillation (``diffcore.distill.ProgressiveDistillation``)
   from ``teacher_steps`` (16 with ``--quick``, 64 otherwise) down to 2 steps. v-prediction is the
   head of Salimans & Ho: it stays well conditioned at the pure-noise end of the grid (α ≈ 0), where
   an ε head cannot give x̂ = (x − σ ε̂)/α, so the student starts as a copy of the teacher, same head.
3. Sample the same prior noise and labels (``per_class`` per class) with the teacher at 50 steps
   (DPM-Solver++(2M)), the teacher at 2 steps (DDIM on the student's own grid) and the student at 2
   steps; write image grids (one row per class) and print a table of figures:

   * ``traj``: mean per-sample RMS pixel distance to the 50-step teacher sample from the same noise
     and label — how well the few-step sampler follows the teacher's ODE (the quantity PD trains);
   * ``SW``: pixel-space sliced W2 (fixed directions, :func:`diffcore.train.quality.projections`) to
     ``Digits("test")``;
   * ``FD``, ``acc``, ``conf``: Fréchet feature distance to the test split, class accuracy and mean
     confidence under a digits classifier (:mod:`diffcore.train.digits_quality`). Accuracy does not
     rank few-step samplers: 2 naive steps give blurry class means, which the classifier labels well.

   The ``data`` row is the train split against the test split (the floor of SW and FD; its ``acc``
   is the classifier's test accuracy).

The conditional model is distilled at ω = 1 (one network call per step, NFE = steps).

    python examples/digits_distill.py --quick --out runs/digits_distill

writes ``teacher_50.png``, ``teacher_2.png``, ``student_2.png`` and ``figures.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import time

import diffcore
import torch
from diffcore.data import Digits
from diffcore.distill.progressive import ProgressiveDistillation
from diffcore.metrics import sliced_wasserstein
from diffcore.models import MLP
from diffcore.train import Trainer
from diffcore.train.digits_quality import (
    digits_report,
    feature_distance,
    train_digits_classifier,
)
from diffcore.train.plots import image_grid_png
from diffcore.train.quality import projections

SCHEDULE = "vp_cosine"
PREDICTION = "v"

# quick: measured 57 s on 2 busy cores (one CPU thread); full: a better teacher and longer distillation rounds
CONFIGS = {
    "quick": {"width": 192, "depth": 3, "train_steps": 1200, "teacher_steps": 16, "pd_iters": 300, "per_class": 50},
    "full": {"width": 256, "depth": 3, "train_steps": 4000, "teacher_steps": 64, "pd_iters": 1000, "per_class": 100},
}


def labelled_batches(data: Digits):
    """``data(n, generator) -> (x0, {"labels": y})``: the PD trainer's per-batch conditions."""
    def draw(n, generator):
        idx = torch.randint(0, len(data), (n,), generator=generator)
        return data.x[idx], {"labels": data.labels[idx]}
    return draw


def train_teacher(cfg: dict, seed: int):
    torch.manual_seed(seed)
    net = MLP(64, width=cfg["width"], depth=cfg["depth"], num_classes=10)
    loss = diffcore.losses.get("v", schedule=SCHEDULE)
    trainer = Trainer(net, loss, Digits("train"), batch_size=256, lr=2e-3, label_dropout=0.1, ema_decay=0.995,
                      seed=seed, device="cpu", log_every=None)
    trainer.fit(cfg["train_steps"])
    return trainer.ema.module.eval().requires_grad_(False)


def distill(teacher, cfg: dict, seed: int):
    pd = ProgressiveDistillation(teacher, SCHEDULE, cfg["teacher_steps"], student=copy.deepcopy(teacher),
                                 teacher_prediction=PREDICTION, student_prediction=PREDICTION, lr=1e-3,
                                 iters=cfg["pd_iters"], batch_size=256)
    return pd.run(labelled_batches(Digits("train")), 2, generator=torch.Generator().manual_seed(seed + 1))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small configuration (measured 57 s on 2 busy cores)")
    ap.add_argument("--out", default="runs/digits_distill", help="output folder for the PNGs and figures.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads: expected a positive int, got {args.threads}")
    torch.set_num_threads(args.threads)
    cfg = CONFIGS["quick" if args.quick else "full"]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    clf = train_digits_classifier(args.seed)
    test = Digits("test")
    clf_acc = float((clf(test.x).argmax(1) == test.labels).double().mean())
    teacher = train_teacher(cfg, args.seed)
    t_teacher = time.perf_counter() - t0
    student = distill(teacher, cfg, args.seed)
    t_distill = time.perf_counter() - t0 - t_teacher

    n = cfg["per_class"]
    labels = torch.arange(10).repeat_interleave(n)
    x_T = diffcore.prior_sample(SCHEDULE, (10 * n, 1, 8, 8), seed=args.seed + 2)
    kw = {"model_kwargs": {"labels": labels}, "prediction": PREDICTION}
    runs = {
        ("teacher", "dpmpp_2m", 50): lambda: diffcore.sample(teacher, x_T, SCHEDULE, solver="dpmpp_2m", steps=50, **kw),
        ("teacher", "ddim", 2): lambda: diffcore.sample(teacher, x_T, SCHEDULE, solver="ddim", steps=student.grid, **kw),
        ("student (PD)", "ddim", 2): lambda: diffcore.sample(student, x_T, SCHEDULE, steps=2,
                                                            model_kwargs={"labels": labels}),
    }
    # pixel-space sliced W2 needs equal sizes: a fixed class-balanced-in-expectation subset of the samples
    sub = torch.randperm(10 * n, generator=torch.Generator().manual_seed(args.seed + 3))[:min(10 * n, len(test))]
    ref = test.x[: sub.numel()].reshape(sub.numel(), 64).double()
    proj = projections(64)
    train_x = Digits("train").x
    rows = [{"method": "data (train vs test)", "solver": "-", "nfe": 0, "acc": clf_acc, "conf": float("nan"),
             "fd": feature_distance(train_x, test.x, clf), "traj": float("nan"),
             "sw": float(sliced_wasserstein(train_x[: sub.numel()].reshape(-1, 64).double(), ref, projections=proj))}]
    reference = None
    show = torch.arange(10)[:, None] * n + torch.arange(10)[None, :]  # the first 10 of each class, a row per class
    for (method, solver, steps), run in runs.items():
        with torch.no_grad():
            x = run()
        if reference is None:
            reference = x  # the 50-step teacher, first in ``runs``
        rows.append({"method": method, "solver": solver, "nfe": steps, **digits_report(x, labels, clf, test.x),
                     "traj": float((x - reference).flatten(1).pow(2).mean(1).sqrt().mean()),
                     "sw": float(sliced_wasserstein(x[sub].reshape(-1, 64).double().clamp(-1, 1), ref,
                                                    projections=proj))})
        name = {("teacher", "dpmpp_2m", 50): "teacher_50", ("teacher", "ddim", 2): "teacher_2",
                ("student (PD)", "ddim", 2): "student_2"}.get((method, solver, steps))
        if name:
            image_grid_png(out / f"{name}.png", x[show.reshape(-1)], nrow=10,
                           title=f"{method}, {solver}, {steps} steps")

    print(f"{'method':<22}{'solver':<10}{'NFE':>4}{'traj':>8}{'SW':>8}{'FD':>9}{'acc':>8}{'conf':>8}")
    for r in rows:
        print(f"{r['method']:<22}{r['solver']:<10}{r['nfe']:>4}{r['traj']:>8.3f}{r['sw']:>8.3f}{r['fd']:>9.3f}"
              f"{r['acc']:>8.3f}{r['conf']:>8.3f}")
    total = time.perf_counter() - t0
    print(f"classifier test accuracy {clf_acc:.3f}; teacher training {t_teacher:.1f} s, distillation "
          f"{t_distill:.1f} s, total {total:.1f} s")
    figures = {"config": cfg, "classifier_test_acc": clf_acc, "rows": rows,
               "times_s": {"teacher": t_teacher, "distill": t_distill, "total": total}}
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
