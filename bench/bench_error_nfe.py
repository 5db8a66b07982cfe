"""Error vs NFE of every deterministic solver on every schedule family (a report, not a gate).

The model is the exact Gaussian-mixture oracle of ``diffcore.convergence`` (its ε̂, x̂ or velocity), the
error the RMS over pinned start points (normal quantiles, near-separatrix points dropped) against
the float64 DOP853 reference, with each schedule's default grid (spacing, t_start, t_end, final
σ = 0 step where the schedule has one; rectified flow starts at t = 0.999, since noise-form and
single-step solvers cannot start where α = 0) and the solvers' defaults (lower_order_final on). A solver
with k model calls per step gets ⌊NFE/k⌋ steps; the NFE column of each cell is what it used.

Usage: ``python bench/bench_error_nfe.py [--nfe 5 10 15 20 50] [--schedules vp_linear edm rf] [--no-orders]
[--quick] [--json PATH]`` (``--quick``: NFE 5, 10, 20 on vp_linear and rf, no orders table; ``--json``:
every cell's error and NFE as JSON for ``bench/run_all.py``'s error-vs-NFE plot). Also prints the
orders table (warm-up and exact history) of the order tests. Full run ≈ 2 min (2-core CPU).

Notes:
A report, not a gate. DPM-Solver++(3M)'s default weight ``w = 1`` was chosen from the NFE 5–20
columns of the 2026-11-23 run: it has the lower error in 13 of the 16 NFE 5–20 cells (all four
families at NFE 10 and 15, three at NFE 5, two at NFE 20); ``w = 2`` wins at NFE 50 on three families
and asymptotically (order 3.07 vs 2.01).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dump_json, machine, table  # noqa: E402

import diffcore  # noqa: E402
from diffcore import oracles, schedules, solvers  # noqa: E402
from diffcore.convergence import order_study, pinned_starts, reference_mixture, run_plan  # noqa: E402

SOLVERS = [("euler", {}), ("heun", {}), ("ddim", {}), ("dpm_solver_2", {}), ("dpm_solver_3", {}),
           ("dpm_solver_fast", {}), ("dpmpp_2s", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {"w": 2.0}),
           ("dpmpp_3m", {"w": 1.0}), ("deis_2", {}), ("deis_3", {}), ("unipc_1", {}), ("unipc_2", {}),
           ("unipc_3", {}), ("ipndm", {})]


def _label(name, opts):
    return name + ("" if not opts else "(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")")


def error_table(sched_name, nfes):
    sched = schedules.get(sched_name)
    oracle = reference_mixture()
    ts0 = diffcore.timesteps(sched, 4)
    t0, t1 = float(ts0[0]), float(ts0[-1])
    if float(sched.alpha(torch.tensor([t0], dtype=torch.float64))[0]) == 0.0:
        t0 = 0.999  # α = 0 at t = 1 (rectified flow): noise-form and single-step solvers start inside
    x0 = pinned_starts(oracle, sched, t0, t1)
    ref = oracles.reference_ode(oracle, x0, t0, t1, sched)
    pred = "velocity" if sched_name == "rf" else "eps"
    model = lambda x, t: oracle.predict(x, t, sched, pred)  # noqa: E731
    rows, data = [], {}
    for name, opts in SOLVERS:
        s = solvers.get(name, **opts)
        row = [_label(name, opts)]
        cells = data[row[0]] = []
        for nfe in nfes:
            steps = nfe if name == "dpm_solver_fast" else max(1, nfe // s.stages)
            try:
                grid = diffcore.timesteps(sched, steps, t_start=t0)
                plan = s.plan(sched, grid, dtype=torch.float64, prediction=pred)
                err = float(((run_plan(plan, model, x0) - ref) ** 2).mean().sqrt())
                row.append(f"{err:.2e} ({plan.nfe})")
                cells.append({"nfe_budget": nfe, "nfe": plan.nfe, "error": err})
            except ValueError as e:  # e.g. a noise-form solver at α = 0
                row.append("n/a: " + str(e).split(";")[0][:40])
                cells.append({"nfe_budget": nfe, "nfe": None, "error": None})
        rows.append(row)
    return table(["solver"] + [f"NFE {n}" for n in nfes], rows), data


def orders_table():
    sched = schedules.VPLinear()
    oracle = reference_mixture()
    starts = pinned_starts(oracle, sched, sched.t_start, sched.t_end)
    rows = []
    for name, opts in SOLVERS:
        s = solvers.get(name, **opts)
        if getattr(s, "multistep", False):
            s = solvers.get(name, lower_order_final=False, **opts)
        r = order_study(s, sched, oracle, starts=starts)
        ex = order_study(s, sched, oracle, starts=starts, exact_history=True) if s.multistep and s.history else None
        rows.append([_label(name, opts), str(s.order), f"{r['order']:.2f}", f"{ex['order']:.2f}" if ex else "—",
                     f"{r['errors'][-1]:.1e}"])
    headers = ["solver", "nominal", "LSQ order (warm-up)", "LSQ order (exact history)", "RMS error N=1024"]
    return headers, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 15, 20, 50])
    ap.add_argument("--schedules", nargs="+", default=["vp_linear", "vp_cosine", "edm", "rf"])
    ap.add_argument("--no-orders", action="store_true")
    ap.add_argument("--quick", action="store_true", help="NFE 5 10 20 on vp_linear and rf, no orders table")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the errors as JSON to PATH")
    args = ap.parse_args()
    argv = sys.argv[1:]
    if "--json" in argv:  # the command line as recorded: without the output path
        k = argv.index("--json")
        argv = argv[:k] + argv[k + 2:]
    if args.quick:
        args.nfe, args.schedules, args.no_orders = [5, 10, 20], ["vp_linear", "rf"], True
    cmd = f"python bench/bench_error_nfe.py {' '.join(argv)}".rstrip()
    print(f"# error vs NFE — {datetime.date.today()} — float64, GMM oracle of diffcore.convergence")
    print(f"# {machine()}")
    print(f"# command: {cmd}")
    errors = {}
    for name in args.schedules:
        print(f"\n## {name}\n")
        text, errors[name] = error_table(name, args.nfe)
        print(text)
    tables = {}
    if not args.no_orders:
        print("\n## observed orders (VP-linear, λ-uniform, t_end = 1e-3, N = 128…1024, lower_order_final off)\n")
        headers, rows = orders_table()
        print(table(headers, rows))
        tables["orders"] = (headers, rows)
    dump_json(args.json, "bench_error_nfe.py", cmd, tables, errors=errors)


if __name__ == "__main__":
    main()
