"""Exact weighted OT: ``diffcore.ot.emd`` (HiGHS dual simplex on the transportation LP, via scipy) vs. POT's
network simplex ``ot.emd``, side by side on the same problems.

Problems: ``n × m`` random weights (uniform draws + 0.05, normalized) and i.i.d. uniform costs on [0, 3),
``(n, m)`` = (32, 48), (64, 96), (128, 192), (256, 384), (512, 512); median of ``--reps`` (3) single timed
calls per entry, float64, one process, CPU. ``Δcost`` is the relative difference of the optimal values, the
exponent column the slope of log(time) against log(n·m) between consecutive rows.

Usage: ``nice python bench/bench_emd.py [--reps 3] [--quick]`` (``--quick``: the first three sizes).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from common import machine, table


def _time(fn, reps):
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import ot as pot
    from diffcore import ot

    sizes = [(32, 48), (64, 96), (128, 192), (256, 384), (512, 512)]
    if args.quick:
        sizes = sizes[:3]
    rows, prev = [], None
    for n, m in sizes:
        rng = np.random.default_rng(n)
        a, b = rng.random(n) + 0.05, rng.random(m) + 0.05
        a, b = a / a.sum(), b / b.sum()
        C = rng.random((n, m)) * 3
        t_dc = _time(lambda: ot.emd(a, b, C), args.reps)
        t_pot = _time(lambda: pot.emd(a, b, C), args.reps)
        d = abs(float(ot.emd(a, b, C).cost) - pot.emd2(a, b, C)) / pot.emd2(a, b, C)
        slope = "" if prev is None else f"{math.log(t_dc / prev[1]) / math.log(n * m / prev[0]):.2f}"
        prev = (n * m, t_dc)
        rows.append([f"{n}x{m}", f"{t_dc * 1e3:.1f}", f"{t_pot * 1e3:.2f}", f"{t_dc / t_pot:.0f}", f"{d:.1e}", slope])
    print(machine())
    print(table(["n x m", "diffcore emd (ms)", "POT ot.emd (ms)", "ratio", "Δcost", "time exponent in n·m"], rows))


if __name__ == "__main__":
    main()
