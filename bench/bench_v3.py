"""DPM-Solver-v3 (Zheng et al. 2023; book §9.7) against DPM-Solver++(3M) and UniPC-3 at NFE 5, 8, 10 (and 15, 20).

Configuration: exact Gaussian-mixture models (:mod:`diffcore.oracles`) as the network, float64,
``VPLinear`` from t = 1 to t_end = 1e-3 (σ > 0; no final denoising step), λ-uniform grids,
``lower_order_final`` on for every solver. Error: RMS over the samples against the PF-ODE solution
(DOP853, ~1e-12). Problems: the 1-D reference mixture of diffcore.convergence (pinned starts) and a 2-D ring of 8
Gaussians (std 0.2, radius 2; 256 prior draws, seed 0). v3 uses order 3, the full-order predictor,
corrector on and off, with statistics from ``EMS.from_oracle`` (K = 1200, quadrature) and from
``EMS.estimate`` on 4000 data samples (K = 240), and DPM-Solver++(3M) runs with the reference weight
w = 1 (its default; w = 2 in brackets).

Usage: ``python bench/bench_v3.py [--quick]`` (``--quick``: the 1-D problem at NFE 5 and 10 only, statistics
with K = 300 by quadrature and K = 120 from 1000 samples).

Notes:
Last column of each table: the best of DPM-Solver++(3M) w = 1, w = 2 and UniPC-3, divided by v3 +C
with the oracle statistics (``> 1``: v3 more accurate). v3 snaps the λ-uniform grid to its
statistics grid; the peers use the snapped times.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from diffcore import EMS, oracles, schedules, solvers, timesteps  # noqa: E402
from diffcore.convergence import pinned_starts, reference_mixture, run_plan  # noqa: E402

NFES = (5, 8, 10, 15, 20)
SCHED = schedules.VPLinear()


def rms(plan, model, x, ref):
    return float(((run_plan(plan, model, x) - ref) ** 2).mean().sqrt())


def problem(name, oracle, x, nfes=NFES, k_orc=1200, k_est=240, n_data=4000):
    model = lambda xx, t: oracle.predict(xx, t, SCHED, "eps")  # noqa: E731
    ref = oracles.reference_ode(oracle, x, SCHED.t_start, SCHED.t_end, SCHED)
    t0 = time.perf_counter()
    orc = EMS.from_oracle(oracle, SCHED, K=k_orc)
    t_orc = time.perf_counter() - t0
    data = oracle.sample(n_data, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    est = EMS.estimate(model, SCHED, data=data, K=k_est, chunk=k_est + 1)
    t_est = time.perf_counter() - t0
    rows = []
    for n in nfes:
        ts = timesteps(SCHED, n, spacing="uniform_lambda", dtype=torch.float64)
        cells = []
        for stats in (orc, est):
            for corr in (True, False):
                p = solvers.get("dpm_solver_v3", statistics=stats, order=3, corrector=corr).plan(
                    SCHED, ts, dtype=torch.float64)
                cells.append(rms(p, model, x, ref))
        tsv = p.timesteps[0]  # v3 snaps to its grid; the others use the same times
        e3m = rms(solvers.get("dpmpp_3m").plan(SCHED, tsv, dtype=torch.float64), model, x, ref)
        e3m2 = rms(solvers.get("dpmpp_3m", w=2.0).plan(SCHED, tsv, dtype=torch.float64), model, x, ref)
        eu = rms(solvers.get("unipc_3").plan(SCHED, tsv, dtype=torch.float64), model, x, ref)
        best_peer = min(e3m, e3m2, eu)
        rows.append([str(n)] + [f"{c:.3g}" for c in cells] + [f"{e3m:.3g} ({e3m2:.3g})", f"{eu:.3g}",
                                                              f"{best_peer / cells[0]:.2f}"])
    print(f"\n### {name}\n")
    print(f"statistics: oracle quadrature K={k_orc} in {t_orc:.1f} s; estimated from {n_data} samples K={k_est} in "
          f"{t_est:.1f} s\n")
    print(common.table(["NFE", "v3 oracle +C", "v3 oracle", "v3 est +C", "v3 est", "DPM++3M w=1 (w=2)", "UniPC-3",
                        "best peer / v3 oracle +C"], rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 1-D problem at NFE 5 and 10 only")
    args = ap.parse_args()
    print(f"# DPM-Solver-v3 vs DPM-Solver++(3M) and UniPC-3 — {common.machine()}")
    print("# command: python bench/bench_v3.py" + (" --quick" if args.quick else ""))
    o1 = reference_mixture()
    problem("1-D reference mixture, pinned starts", o1, pinned_starts(o1, SCHED, SCHED.t_start, SCHED.t_end),
            *(((5, 10), 300, 120, 1000) if args.quick else ()))
    if args.quick:
        return
    o2 = oracles.GaussianMixture.ring2d(8, 2.0, 0.2)
    x2 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    problem("2-D ring of 8 Gaussians, 256 prior draws", o2, x2)


if __name__ == "__main__":
    main()
