"""Sample an exact model with several solvers and measure each one's error (``diffcore.sample``).

The model is the closed-form ε-prediction of a 2-D Gaussian mixture (``oracles.toy_2d_mixture()``,
``vp_linear`` schedule), so there is no training and the truth is known twice over:

1. **Solver error.** The same prior draws are integrated by the float64 DOP853 reference of the
   probability-flow ODE (``oracles.reference_ode``, ~1e-11 accurate) and by each deterministic solver
   at a given number of model evaluations (NFE; Heun spends two per step, so it gets NFE/2 steps) on
   the schedule's default grid. The figure is the RMS distance to the reference — the discretisation
   error alone (``bench/bench_error_nfe.py`` does the same on the 1-D mixture of ``diffcore.convergence``).
2. **Distribution.** A larger batch through DPM-Solver++(3M) at 50 steps and through the stochastic
   DPM-Solver++(2M) SDE (seeded Philox noise) must have the mixture's mean: the script prints the
   distance of each sample mean to the exact ``oracle.mean`` in units of its standard error
   ``sqrt(trace(Cov)/n)`` and the sliced Wasserstein distance to fresh data next to the data-vs-data
   noise floor (``diffcore.metrics.sliced_wasserstein``).

    python examples/sample_oracle.py [--quick] [--out DIR]

writes ``figures.json`` (every printed number) and ``samples.png`` (the NFE-10 DPM-Solver++(2M)
samples beside data) to ``--out`` (default: a new temporary folder).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import torch

import diffcore
from diffcore import metrics, oracles, schedules
from diffcore.train.plots import scatter_png

SOLVERS = ["euler", "ddim", "heun", "dpmpp_2m", "unipc_2", "dpmpp_3m", "deis_3", "ipndm"]
CONFIGS = {"quick": {"n_ref": 32, "nfes": [10, 20], "n_dist": 2000},
           "full": {"n_ref": 256, "nfes": [5, 10, 20, 50], "n_dist": 8000}}


class Counted:
    """Counts model evaluations (the NFE a solver spent)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI configuration (measured 4 s on 2 busy cores)")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: these tiny batches gain nothing from more)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = CONFIGS["quick" if args.quick else "full"]
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="sample_oracle_"))
    out.mkdir(parents=True, exist_ok=True)
    t_begin = time.perf_counter()

    data = oracles.toy_2d_mixture()
    sched = schedules.get("vp_linear")
    eps = lambda x, t: data.predict(x, t, sched, "eps")  # noqa: E731 — the exact ε(x, t)
    grid = diffcore.timesteps(sched, 10)
    t_start, t_end = float(grid[0]), float(grid[-1])  # every default vp_linear grid spans the same times

    # 1. discretisation error against the reference flow of the same starts
    x = diffcore.prior_sample(sched, (cfg["n_ref"], 2), seed=0, dtype=torch.float64)
    ref = oracles.reference_ode(data, x, t_start, t_end, sched)
    rows = []
    print(f"{'solver':<10}{'NFE':>5}{'RMS error':>12}")
    for name in SOLVERS:
        stages = 2 if name == "heun" else 1
        for nfe in cfg["nfes"]:
            model = Counted(eps)
            y = diffcore.sample(model, x, sched, solver=name, steps=nfe // stages, prediction="eps")
            err = float((y - ref).pow(2).sum(1).mean().sqrt())
            rows.append({"solver": name, "nfe": model.calls, "rms_error": err})
            print(f"{name:<10}{model.calls:>5}{err:>12.3e}")

    # 2. distribution: sample means against the exact mean, sliced W2 against fresh data
    n = cfg["n_dist"]
    xT = diffcore.prior_sample(sched, (n, 2), seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    fresh, fresh2 = data.sample(n, g), data.sample(n, g)
    se = float((torch.trace(data.cov) / n).sqrt())
    floor = float(metrics.sliced_wasserstein(fresh, fresh2, generator=torch.Generator().manual_seed(3)))
    dist = {"n": n, "mean_standard_error": se, "sw_floor": floor}
    print(f"\nn = {n}: standard error of a sample mean {se:.4f}; SW2 data vs data (noise floor) {floor:.4f}")
    for label, kw in (("dpmpp_3m (50 steps)", dict(solver="dpmpp_3m", steps=50)),
                      ("dpmpp_2m_sde (50 steps)", dict(solver="dpmpp_2m_sde", steps=50, seed=4))):
        s = diffcore.sample(eps, xT, sched, prediction="eps", **kw)
        dmean = float((s.mean(0) - data.mean).norm())
        sw = float(metrics.sliced_wasserstein(s, fresh, generator=torch.Generator().manual_seed(3)))
        dist[label] = {"mean_error": dmean, "mean_error_in_se": dmean / se, "sw": sw}
        print(f"{label:<24} |mean − exact mean| = {dmean:.4f} ({dmean / se:.2f} SE)   SW2 to data {sw:.4f}")

    y10 = diffcore.sample(eps, xT, sched, solver="dpmpp_2m", steps=10, prediction="eps")
    scatter_png(out / "samples.png", y10, fresh, title="DPM-Solver++(2M), NFE 10, exact mixture model",
                labels=("dpmpp_2m NFE 10", "data"))
    figures = {"errors": rows, "distribution": dist, "seconds": time.perf_counter() - t_begin}
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    print(f"\nwrote {out / 'figures.json'} and {out / 'samples.png'} ({figures['seconds']:.1f} s)")
    return figures


if __name__ == "__main__":
    main()
