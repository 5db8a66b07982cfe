"""Adaptive solvers with per-sample steps (``dpm_adaptive_ps``) against shared-step integration.

Table 1 — **NFE and error** on the 1-D reference mixture of ``diffcore.convergence`` (exact ε, float64,
``VPLinear`` from t = 1 to 1e-3; the 24 pinned starts plus 40 evenly spread ones, whose paths range
from easy to near a separatrix): for order 2 and 3 and rtol = atol = tol, the model evaluations summed
over the samples (per-sample counts) for per-sample steps, the shared-step baseline (same pair, norm
and PI controller, one step for the batch) and the reference-style ``dpm_adaptive`` (DPM-Solver's own
norm and I-controller), the max error, and the ratio shared / per-sample.

Table 2 — **wall clock** of the same runs (median), and of the fused control kernel
(``csrc/core/adaptive.h``) against its torch reference on random float32 data [B, D].

Usage: ``python bench/bench_adaptive.py [--device cpu|cuda] [--quick]`` (``--quick``: tol 1e-2 and
1e-3 only, the two smaller kernel shapes, shorter timing).

Notes:
NFE is summed over the samples (each sample's own count; shared-step runs charge every sample every
evaluation). The wall clock uses the exact 1-D mixture as the model, so it is dominated by per-round
overhead, not by model cost; the control kernel table times one fused call against its torch
reference.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from diffcore import _ops, oracles, schedules  # noqa: E402
from diffcore.convergence import pinned_starts, reference_mixture  # noqa: E402
from diffcore.solvers import DPMAdaptive, DPMAdaptivePS  # noqa: E402
from diffcore.solvers.adaptive_control import adaptive_control_reference  # noqa: E402

SCHED = schedules.VPLinear()


def nfe_table(quick=False):
    o = reference_mixture()
    x = torch.cat([pinned_starts(o, SCHED, SCHED.t_start, SCHED.t_end),
                   torch.linspace(-3, 3, 40, dtype=torch.float64)[:, None]])
    ref = oracles.reference_ode(o, x, SCHED.t_start, SCHED.t_end, SCHED)
    model = lambda xx, t: o.predict(xx, t, SCHED, "eps")  # noqa: E731
    rows, trows = [], []
    for order in (2, 3):
        for tol in ((1e-2, 1e-3) if quick else (1e-2, 1e-3, 1e-4)):
            ps = DPMAdaptivePS(order=order, rtol=tol, atol=tol)
            sh = DPMAdaptivePS(order=order, rtol=tol, atol=tol, per_sample=False)
            dpm = DPMAdaptive(order=order, rtol=tol, atol=tol)
            out_p, ip = ps.solve(model, x, SCHED, SCHED.t_start, SCHED.t_end)
            out_s, is_ = sh.solve(model, x, SCHED, SCHED.t_start, SCHED.t_end)
            out_d, id_ = dpm.solve(model, x, SCHED, SCHED.t_start, SCHED.t_end)
            n_p, n_s, n_d = int(ip["nfe"].sum()), int(is_["nfe"].sum()), id_["nfe"] * x.shape[0]
            e = [(q - ref).abs().max().item() for q in (out_p, out_s, out_d)]
            rows.append([str(order), f"{tol:g}", str(n_p), f"{int(ip['nfe'].min())}–{int(ip['nfe'].max())}",
                         str(n_s), str(n_d), f"{e[0]:.2e}", f"{e[1]:.2e}", f"{e[2]:.2e}", f"{n_s / n_p:.2f}"])
            t = common.measure({"ps": lambda: ps.solve(model, x, SCHED, SCHED.t_start, SCHED.t_end),
                                "shared": lambda: sh.solve(model, x, SCHED, SCHED.t_start, SCHED.t_end),
                                "dpm": lambda: dpm.solve(model, x, SCHED, SCHED.t_start, SCHED.t_end)},
                               sync=False, min_time=0.05 if quick else 0.2, rounds=3, slow_budget=5.0)
            t = {k: v[0] for k, v in t.items()}
            trows.append([str(order), f"{tol:g}", f"{t['ps'] / 1e3:.1f}", f"{t['shared'] / 1e3:.1f}",
                          f"{t['dpm'] / 1e3:.1f}", f"{t['shared'] / t['ps']:.2f}"])
    print(f"\n### NFE and error, {x.shape[0]} samples (NFE summed over samples)\n")
    print(common.table(["order", "tol", "per-sample NFE", "per sample min–max", "shared NFE", "dpm_adaptive NFE",
                        "max err ps", "max err shared", "max err dpm", "shared / ps"], rows))
    print("\n### Wall clock (ms, median; the exact mixture as the model)\n")
    print(common.table(["order", "tol", "per-sample", "shared", "dpm_adaptive", "shared / ps"], trows))


def kernel_table(device, quick=False):
    rows = []
    sync = device == "cuda"
    for B, D in ((64, 2), (256, 3 * 32 * 32)) + (() if quick else ((64, 3 * 64 * 64),)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, D, generator=g).to(device)
        lo = x + 1e-3 * torch.randn(B, D, generator=g).to(device)
        hi = x + 1e-3 * torch.randn(B, D, generator=g).to(device)
        f64 = dict(dtype=torch.float64, device=device)

        def state():
            return (torch.full((B,), 0.1, **f64), torch.ones(B, **f64), torch.zeros(B, **f64),
                    torch.full((B,), 0.1, **f64), torch.full((B,), 5.0, **f64),
                    torch.ones(B, dtype=torch.bool, device=device))

        def run(fn):
            xx = x.clone()
            h, ep, ls, lt, le, act = state()
            return lambda: fn(xx, lo, hi, h, ep, ls, lt, le, act, atol=1e-3, rtol=1e-3, order=3)
        t = common.measure({"fused": run(_ops.adaptive_control), "torch": run(adaptive_control_reference)},
                           sync=sync, min_time=0.05 if quick else 0.2, rounds=3, slow_budget=5.0)
        t = {k: v[0] for k, v in t.items()}
        rows.append([str(B), str(D), f"{t['fused']:.1f}", f"{t['torch']:.1f}", f"{t['torch'] / t['fused']:.2f}"])
    print(f"\n### Control kernel ({device}, float32 states): µs, median\n")
    print(common.table(["B", "D", "fused", "torch reference", "torch / fused"], rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tol 1e-2, 1e-3; two kernel shapes; shorter timing")
    args = ap.parse_args()
    print(f"# Per-sample adaptive steps — {common.machine()}")
    print("# command: python bench/bench_adaptive.py" + (f" --device {args.device}" if args.device != "cpu" else "")
          + (" --quick" if args.quick else ""))
    if args.device == "cpu":
        nfe_table(args.quick)
    kernel_table(args.device, args.quick)


if __name__ == "__main__":
    main()
