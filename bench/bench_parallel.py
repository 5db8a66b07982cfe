"""Picard / ParaDiGMS parallel-in-time sampling (Shih et al. 2023; book §9.8): rounds, model evaluations, error, and
wall clock against the sequential solver.

Two tables:

1. **Rounds and error** on the 1-D Gaussian-mixture oracle of ``diffcore.convergence`` (exact ε, float64,
   ``VPLinear``, 64 prior samples, ``--steps`` steps, default 100): for each solver, window ``p`` and
   tolerance ``τ``: rounds (sequential batched model calls), model evaluations per sample (``Σ J``)
   next to the sequential count, RMS(Picard − sequential) and the measured ``C = RMS/τ``.
2. **Wall clock** with a small time-conditioned MLP (``--dim`` features, 3 hidden layers of
   ``--width``, random weights; batch ``--batch``, float32): median time of
   ``diffcore.sample(..., parallel=ParallelConfig(p, τ))`` vs the sequential ``diffcore.sample`` with
   the same solver and grid; ratio = sequential / Picard (``> 1``: Picard faster). Picard trades
   ``Σ J / M`` times the model work for ``rounds / M`` times the sequential latency, so it pays off
   when one model call on ``p·B`` samples costs little more than on ``B`` (small batches: a GPU, or on
   the CPU a small network whose per-call overhead dominates).

3. **Window update**: one round's :func:`diffcore.parallel.window_update` (the fused kernel,
   csrc/core/picard.h) against :func:`~diffcore.parallel.window_update_reference` (eager torch) on
   random float32 data, window ``J``, batch ``B``, ``D`` features per sample (one buffer, or the
   engine's two with a carry table): median µs and ratio = torch / fused.

Usage: ``python bench/bench_parallel.py [--device cpu|cuda] [--quick]`` (full run about 20 s on the
2-core CPU machine, 2026-11-23).

Notes:
On the CPU the wall clock reflects the per-call overhead of a small model at batch 4, not GPU
parallelism; the window-update reference handles the carry with a Python loop.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import diffcore  # noqa: E402
from diffcore import schedules  # noqa: E402
from diffcore.convergence import reference_mixture  # noqa: E402


class TimeMLP(torch.nn.Module):
    """``net(x, t)``: the exact ε of a ``dim``-D Gaussian (diffcore.oracles, keeps the trajectory sane)
    plus ``0.1·tanh`` of an MLP on ``[x, sin/cos features of t]`` with random weights (the compute)."""

    def __init__(self, dim: int, width: int, sched):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.oracle = diffcore.oracles.Gaussian(torch.randn(dim, generator=g) * 0.5,
                                                torch.diag(torch.rand(dim, generator=g) * 0.5 + 0.1))
        self.sched = sched
        self.freq = torch.nn.Parameter(torch.randn(16) * 4, requires_grad=False)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 32, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, dim))
        for p in self.net.parameters():
            torch.nn.init.normal_(p, std=0.5 / p.shape[-1] ** 0.5)

    def forward(self, x, t):
        ang = t[:, None].to(x.dtype) * self.freq.to(x.dtype)
        eps = self.oracle.eps(x, t, self.sched).to(x.dtype)
        return eps + 0.1 * torch.tanh(self.net(torch.cat([x, ang.sin(), ang.cos()], 1)))


def rounds_table(steps: int, quick: bool) -> str:
    oracle, sched = reference_mixture(), schedules.VPLinear()
    model = lambda x, t: oracle.predict(x, t, sched, "eps")  # noqa: E731
    x = diffcore.prior_sample(sched, (64, 1), seed=0, dtype=torch.float64)
    rows = []
    solvers = ["ddim", "dpmpp_2m", "ddpm"] if quick else ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc_3", "ddpm", "heun"]
    windows = [10, 16] if quick else [10, 16, 32]
    taus = [1e-1, 1e-3] if quick else [1e-1, 1e-2, 1e-3, 1e-4]
    for name in solvers:
        seq = diffcore.sample(model, x, schedule=sched, solver=name, steps=steps, seed=1)
        nfe_seq = diffcore.solvers.get(name).plan(sched, diffcore.timesteps(sched, steps)).nfe
        for p in windows:
            for tau in taus:
                log, evals = [], [0]

                def counted(u, t):
                    evals[0] += u.shape[0]
                    return model(u, t)

                out = diffcore.sample(counted, x, schedule=sched, solver=name, steps=steps, seed=1,
                                      parallel=diffcore.ParallelConfig(p, tau), callback=log.append)
                rms = (out - seq).pow(2).mean().sqrt().item()
                rows.append([name, str(p), f"{tau:g}", str(len(log)), str(evals[0] // x.shape[0]), str(nfe_seq),
                             f"{rms:.2e}", f"{rms / tau:.3f}"])
    return common.table(["solver", "window", "τ", "rounds", "model evals / sample", "sequential NFE", "RMS err",
                         "C = RMS/τ"], rows)


def _median_s(fn, reps: int, sync: bool) -> float:
    fn()
    ts = []
    for _ in range(reps):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def wallclock_table(device: str, steps: int, dim: int, width: int, batch: int, quick: bool) -> str:
    torch.manual_seed(0)
    sched = schedules.VPLinear()
    net = TimeMLP(dim, width, sched).to(device)
    x = diffcore.prior_sample(sched, (batch, dim), seed=0, device=device)
    sync = device.startswith("cuda")
    reps = 3 if quick else 7
    rows = []
    with torch.no_grad():
        for name in (["ddim"] if quick else ["ddim", "dpmpp_2m", "ddpm"]):
            kw = dict(schedule=sched, solver=name, steps=steps, seed=1)
            seq = diffcore.sample(net, x, **kw)
            for p in ([16] if quick else [8, 16, 32]):
                for tau in [1e-1, 1e-3]:
                    cfg = diffcore.ParallelConfig(p, tau)
                    log = []
                    out = diffcore.sample(net, x, parallel=cfg, callback=log.append, **kw)
                    t_seq = _median_s(lambda: diffcore.sample(net, x, **kw), reps, sync)  # next to each entry
                    t_par = _median_s(lambda: diffcore.sample(net, x, parallel=cfg, **kw), reps, sync)
                    rms = (out - seq).double().pow(2).mean().sqrt().item()
                    rows.append([name, str(p), f"{tau:g}", str(len(log)), f"{t_seq * 1e3:.1f}", f"{t_par * 1e3:.1f}",
                                 f"{t_seq / t_par:.2f}x", f"{rms:.1e}"])
    return common.table(["solver", "window", "τ", "rounds", "sequential ms", "Picard ms", "speedup", "RMS err"], rows)


def window_update_table(device: str, quick: bool) -> str:
    from diffcore.parallel import window_update, window_update_reference  # noqa: PLC0415

    sync = device.startswith("cuda")
    reps = 5 if quick else 21
    g = torch.Generator().manual_seed(0)
    rows = []
    shapes = [(16, 4, 64), (16, 4, 3 * 32 * 32)] + ([] if quick else [(32, 8, 3 * 64 * 64)])
    for J, B, D in shapes:
        for two in (False, True):
            S = (D // 2, 2) if two else (D,)
            x = torch.randn((J + 1, B) + S, generator=g).to(device)
            phi = (x[:-1] + 0.01 * torch.randn((J, B) + S, generator=g).to(device)).contiguous()
            sig2 = torch.full((J, B), 0.5, device=device)
            carry = torch.tensor([[0, 1]] * J, device=device) if two else None
            t_ref = _median_s(lambda: window_update_reference(x, phi, sig2, 0.1, carry), reps, sync)
            t_fused = _median_s(lambda: window_update(x, phi, sig2, 0.1, carry), reps, sync)
            rows.append([str(J), str(B), str(D), "x, y + carry" if two else "x", f"{t_ref * 1e6:.0f}",
                         f"{t_fused * 1e6:.0f}", f"{t_ref / t_fused:.1f}x"])
    return common.table(["J", "B", "D", "state", "torch µs", "fused µs", "ratio"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    print(f"machine: {common.machine()}; device {a.device}; {time.strftime('%Y-%m-%d')}\n")
    print(f"Rounds and error, oracle, {a.steps} steps, float64, CPU:\n")
    print(rounds_table(a.steps, a.quick))
    print(f"\nWall clock, MLP dim {a.dim} width {a.width}, batch {a.batch}, {a.steps} steps, float32, {a.device}:\n")
    print(wallclock_table(a.device, a.steps, a.dim, a.width, a.batch, a.quick))
    print(f"\nWindow update (one round), float32, {a.device}, threads {torch.get_num_threads()}:\n")
    print(window_update_table(a.device, a.quick))


if __name__ == "__main__":
    main()
