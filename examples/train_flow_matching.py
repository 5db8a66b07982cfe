"""Train a small flow-matching model on two moons with ``diffcore.train`` and sample it
(book §5.2; Lipman et al. 2023).

1. ``losses.get("cfm")``: conditional flow matching on the rectified-flow path ``x_t = (1 − t)·x0 + t·ε``
   with the velocity target ``ε − x0`` (Lipman et al. 2023; Liu et al. 2023), an MLP
   (``models.MLP``, time as a Fourier feature), AdamW with warm-up, EMA weights, all randomness from
   the trainer's seeded generator.
2. Training stops halfway, writes a checkpoint (``Trainer.save``) and a *fresh* trainer resumes it
   (``Trainer.load(...).fit(total)``): the resumed run is the same run (exact resume), which the
   script checks by comparing the final loss history with an uninterrupted run of the same seed
   when ``--check-resume`` is given.
3. The EMA model is sampled with Heun (10 steps, NFE 19) and DPM-Solver++(2M) (NFE 10), the quality
   being the sliced Wasserstein distance to held-out data (``train.quality.sw_report``) next to the
   data-vs-data noise floor and the prior's distance (what the untrained model scores).

    python examples/train_flow_matching.py [--quick] [--out DIR]

writes ``checkpoint.pt``, ``samples.png`` and ``figures.json`` to ``--out`` (default: a new temporary
folder).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import torch

import diffcore
from diffcore import data, losses, models, train
from diffcore.train.quality import held_out, sw_report

CONFIGS = {"quick": {"steps": 800, "width": 64, "depth": 3, "n": 1000},
           "full": {"steps": 6000, "width": 128, "depth": 3, "n": 2000}}


def make_trainer(cfg: dict, seed: int, out_dir=None) -> train.Trainer:
    torch.manual_seed(seed)  # the network's initialisation is part of the seeded run
    net = models.MLP(2, width=cfg["width"], depth=cfg["depth"])
    return train.Trainer(net, losses.get("cfm"), data.get("two_moons"), batch_size=256, lr=2e-3, warmup_steps=100,
                         ema_decay=0.995, seed=seed, log_every=None, device="cpu", out_dir=out_dir)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI configuration (800 steps; measured 9 s on 2 busy cores)")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-resume", action="store_true",
                    help="also train without interruption and compare the loss histories")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = CONFIGS["quick" if args.quick else "full"]
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="train_flow_matching_"))
    out.mkdir(parents=True, exist_ok=True)
    total = cfg["steps"]

    t0 = time.perf_counter()
    first = make_trainer(cfg, args.seed, out_dir=out)
    first.fit(total // 2)
    ckpt = first.save(out / "checkpoint.pt")
    trainer = make_trainer(cfg, args.seed, out_dir=out).load(ckpt)  # a new process would do exactly this
    trainer.fit(total)
    train_s = time.perf_counter() - t0
    losses_seen = trainer.history["loss"]
    print(f"trained {total} steps (checkpoint at {total // 2}, resumed) in {train_s:.1f} s; "
          f"mean loss first 100 steps {sum(losses_seen[:100]) / 100:.4f}, last 100 {sum(losses_seen[-100:]) / 100:.4f}")

    figures = {"steps": total, "train_seconds": train_s, "loss_first100": sum(losses_seen[:100]) / 100,
               "loss_last100": sum(losses_seen[-100:]) / 100}
    if args.check_resume:
        straight = make_trainer(cfg, args.seed)
        straight.fit(total)
        same = straight.history["loss"] == losses_seen
        figures["resume_identical"] = same
        print(f"uninterrupted run has the identical loss history: {same}")

    n, eval_seed = cfg["n"], args.seed + 1
    moons = data.get("two_moons")
    sched = trainer.loss.schedule
    prior = diffcore.prior_sample(sched, (n, 2), seed=eval_seed)  # the start trainer.sample(seed=…) uses
    for solver, steps in (("heun", 10), ("dpmpp_2m", 10)):
        xs = trainer.sample(n, solver=solver, steps=steps, seed=eval_seed)
        rep = sw_report(xs, moons, seed=eval_seed + 1, prior=prior)
        figures[solver] = {"steps": steps, **rep}
        print(f"{solver:>8} {steps} steps: SW2 to held-out data {rep['sw']:.4f}   (data vs data {rep['sw_floor']:.4f}; "
              f"the prior {rep['sw_prior']:.4f})")
        if solver == "heun":
            train.plots.scatter_png(out / "samples.png", xs, held_out(moons, n, eval_seed + 1),
                                    title=f"two moons, CFM MLP, {total} steps; Heun {steps} steps; SW {rep['sw']:.3f}")
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    print(f"wrote {out / 'checkpoint.pt'}, {out / 'samples.png'} and {out / 'figures.json'}")
    return figures


if __name__ == "__main__":
    main()
