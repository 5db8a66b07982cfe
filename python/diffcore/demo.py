"""The README's first demo: train a flow-matching MLP on a 2-D toy, sample it with the compiled solvers.

``python -m diffcore.demo`` trains :class:`diffcore.models.MLP` with the conditional-flow-matching loss
(``diffcore.losses.get("cfm")``: rectified-flow path, velocity target; book §5.2, Eq. (5.2.9)) on two moons
(``--data`` for the other bundled toys; measured on a 2-core CPU shared with other jobs: 6000 steps in
58 s on one torch thread, see ``--threads``, 72 s for the whole demo), then draws ``-n`` samples
from the EMA weights with ``--solver`` (``diffcore.solvers.available()``; default Heun, 10 steps),
writes a scatter plot of samples next to held-out data (``--out``, PNG), and prints the
sliced-Wasserstein distance to held-out data next to the distance between two independent data draws
of the same size (the noise floor) and that of the prior (what the untrained network, the zero
velocity, produces). The same starting noise is then pushed through a few other solvers for comparison.

``python -m diffcore.demo --oracle`` runs the exact demo instead: a 2-D Gaussian mixture sampled by
integrating its closed-form probability-flow ODE (``diffcore.oracles.reference_ode``) and by the
compiled solvers with the oracle's ε̂ as the model — no training.
"""
from __future__ import annotations

import argparse
import time

import torch

import diffcore
from diffcore import oracles
from diffcore.metrics import sliced_wasserstein


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train a flow-matching MLP on a 2-D toy and sample it "
                                             "(--oracle: exact PF-ODE sampling of a Gaussian mixture).")
    ap.add_argument("--data", default="two_moons", choices=["two_moons", "eight_gaussians", "checkerboard", "spirals"])
    ap.add_argument("--steps", type=int, default=6000, help="training steps (6000: about 70 s on 2 cores)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for training; 1 is fastest for this small MLP (see train_demo)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--solver", default="heun", help="sampler (diffcore.solvers.available())")
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("-n", type=int, default=2000, help="number of samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="diffcore_demo.png", help="scatter plot of samples vs held-out data")
    ap.add_argument("--oracle", action="store_true", help="exact-oracle demo instead (no training)")
    ap.add_argument("--schedule", default="vp_linear", help="--oracle only: schedule name")
    args = ap.parse_args(argv)

    info = diffcore.build_info()
    print(f"diffcore {info['version']}  (CUDA kernels: {info['cuda']}, OpenMP threads: {info['num_threads']})")
    if args.oracle:
        oracle_demo(args.n, args.schedule, args.seed)
    else:
        train_demo(args)


def train_demo(args) -> None:
    from diffcore import data, losses, models, train  # noqa: PLC0415
    from diffcore.train.quality import held_out, sw_report  # noqa: PLC0415

    if args.solver not in diffcore.solvers.available():
        raise SystemExit(f"--solver: unknown solver {args.solver!r}; available: {diffcore.solvers.available()}")
    dataset = data.get(args.data)
    loss = losses.get("cfm")  # x_t = (1 − t)·x0 + t·ε, the net regresses the velocity ε − x0
    if args.threads < 1:
        raise SystemExit(f"--threads: expected a positive thread count, got {args.threads}")
    # A 2x128 MLP step is ~1 ms of arithmetic split into dozens of tiny ops: each op's intra-op fork/join
    # costs more than it saves, and on a busy 2-core machine a second thread waits for a core at every
    # op (measured on 2 cores: 10 ms/step with one thread, 120 ms/step with two under load).
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = models.MLP(2, width=args.width, depth=3)
    trainer = train.Trainer(net, loss, dataset, batch_size=args.batch, lr=args.lr, warmup_steps=100,
                            ema_decay=0.999, seed=args.seed, log_every=None, device="cpu", progress=True)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"training a {n_params:,}-parameter MLP on {args.data} with conditional flow matching "
          f"(rectified-flow path, velocity target): {args.steps} steps of batch {args.batch}")
    t0 = time.perf_counter()
    trainer.fit(args.steps)  # a tqdm bar from the first step: the run is visibly alive at once
    train_s = time.perf_counter() - t0
    chunk = max(1, args.steps // 5)
    for end in range(chunk, args.steps + 1, chunk):
        recent = trainer.history["loss"][end - chunk:end]
        print(f"  steps {end - chunk + 1:5d}-{end:5d}: mean loss {sum(recent) / len(recent):.4f}")

    eval_seed = args.seed + 1
    g = torch.Generator().manual_seed(eval_seed)
    x_T = diffcore.prior_sample(loss.schedule, (args.n, 2), generator=g)
    t0 = time.perf_counter()
    xs = trainer.sample(args.n, solver=args.solver, steps=args.sample_steps, seed=eval_seed)
    sample_ms = (time.perf_counter() - t0) * 1e3
    rep = sw_report(xs, dataset, seed=eval_seed + 1, prior=x_T)
    print(f"trained in {train_s:.1f} s; sampled {args.n} points with {args.solver} in {args.sample_steps} steps "
          f"({sample_ms:.0f} ms)")
    print(f"sliced-Wasserstein distance to held-out data: {rep['sw']:.4f}   (data vs data, median of 5 draws: "
          f"{rep['sw_floor']:.4f}; the prior, i.e. the untrained model: {rep['sw_prior']:.4f})")
    for solver, steps in (("euler", 20), ("dpmpp_2m", 20), ("heun", 20)):
        if (solver, steps) == (args.solver, args.sample_steps):
            continue
        ys = trainer.sample(args.n, solver=solver, steps=steps, seed=eval_seed)
        print(f"  same noise, {solver:>8} {steps:2d} steps: sliced-Wasserstein "
              f"{sw_report(ys, dataset, seed=eval_seed + 1, floor_draws=1)['sw']:.4f}")
    train.plots.scatter_png(args.out, xs, held_out(dataset, args.n, eval_seed + 1),
                            title=f"{args.data}: flow-matching MLP, {args.steps} steps; {args.solver} "
                                  f"{args.sample_steps} steps; SW {rep['sw']:.3f} (data vs data {rep['sw_floor']:.3f})")
    print(f"wrote {args.out}")


def oracle_demo(n: int = 2000, schedule: str = "vp_linear", seed: int = 0) -> None:
    """Sample a 2-D Gaussian mixture through its exact PF-ODE and with the compiled solvers, and print
    each result's sliced-Wasserstein distance to fresh data next to the data-vs-data noise floor."""
    sched = diffcore.schedules.get(schedule)
    mixture = oracles.toy_2d_mixture()
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    x_T = mixture.sample_marginal(n, sched.t_start, sched, generator=g)
    # t_min is the clean end of every schedule's valid range (σ = 0 where the schedule reaches it)
    x_0 = oracles.reference_ode(mixture, x_T, sched.t_start, sched.t_min, sched, rtol=1e-9, atol=1e-9)
    dt = time.perf_counter() - t0
    held_out = mixture.sample(n, generator=g)
    proj = torch.randn(256, 2, generator=g, dtype=torch.float64)
    proj = proj / proj.norm(dim=1, keepdim=True)
    sw = sliced_wasserstein(x_0, held_out, projections=proj).item()
    # the distance between finite samples fluctuates a lot: compare with the median over fresh data draws
    floors = [sliced_wasserstein(mixture.sample(n, generator=g), held_out, projections=proj).item() for _ in range(9)]
    sw_floor = sorted(floors)[len(floors) // 2]
    print(f"schedule {sched!r}: {n} samples from t = {sched.t_start:g} to t = 0 through the exact PF-ODE "
          f"in {dt:.2f} s")
    print(f"sliced-Wasserstein distance to held-out data: {sw:.4f}   (fresh data vs the same held-out data, "
          f"median of 9 draws: {sw_floor:.4f})")
    # the exact prediction of the schedule's own type as the "network" (velocity on flows, ε̂ otherwise)
    model = lambda x, t: mixture.predict(x, t, sched, sched.prediction)  # noqa: E731
    for solver, steps in (("dpmpp_2m", 10), ("unipc_2", 10), ("dpmpp_3m", 20)):
        t0 = time.perf_counter()
        xs = diffcore.sample(model, x_T, schedule=sched, solver=solver, steps=steps)
        dt = time.perf_counter() - t0
        err = (xs - x_0).pow(2).mean().sqrt().item()
        sw_s = sliced_wasserstein(xs, held_out, projections=proj).item()
        print(f"diffcore.sample(solver={solver!r}, steps={steps}): {dt * 1e3:.0f} ms, RMS distance to the exact "
              f"ODE solution {err:.2e}, sliced-Wasserstein {sw_s:.4f}")


if __name__ == "__main__":
    main()
