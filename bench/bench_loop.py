"""A whole sampling loop with a small MLP: diffcore vs. diffusers' scheduler vs. the model calls alone.

The model is an MLP 3→128→128→2 on ``concat(x, t)`` (x: ``[B, 2]``, t: one time per sample; SiLU
between layers), float32, under ``torch.no_grad``. For each solver (dpmpp_2m, unipc_2, ddim, euler),
batch (16, 1024) and step count (10, 50), measured side by side in one run:

* ``model only``: the same number of model calls with no solver, on a fixed input — once with the
  times diffcore hands the model (``[B]`` float32 tensors) and once with diffusers' (0-d int64
  timesteps), each from a precomputed list, because the model's ``t.to(x.dtype)`` costs a real cast
  for the latter.
* ``diffcore sample()``: ``diffcore.sample(model, x, schedule=VPDiscrete(betas), solver=name, steps=N,
  prediction="eps")`` with ``betas = linspace(1e-4, 0.02, 1000)`` — planning (all coefficients),
  model wrapping and the loop, as a user calls it.
* ``diffcore plan loop``: the bare plan / execute loop with the plan built *outside* the timed
  region: ``plan.init_state(x)``, then per step and stage ``plan.step(state, i, s, model(...))``.
  ``sample() − plan loop`` is sample()'s own cost (planning + wrapping).
* ``diffusers``: the standard loop with ``set_timesteps(N)`` inside the timed region, as a user
  writes it: ``x = x0 * init_noise_sigma; for t in timesteps: out = model(scale_model_input(x, t), t);
  x = step(out, t, x).prev_sample``, scheduler (same betas, ``beta_schedule="linear"``) built once
  outside. ``set_timesteps`` resets the scheduler's history, so every run starts fresh. Peers are
  those of ``bench_step.py``; a peer missing from the installed diffusers is reported as ``skipped``.

Solver overhead per step = (loop − model only with the matching times) / steps, in µs. Every number
is the median of ``--rounds`` (3) block medians (``common.median_us`` with ``min_time / rounds`` each),
the five measurements of a row taken in turn within each round (``bench_step.interleaved``), so a
burst of load from elsewhere does not land on one term of a difference only. On a loaded 2-core
machine any parallel torch op can stall a scheduler tick; ``--threads 1`` sidesteps that.

Usage: ``python bench/bench_loop.py [--device cpu|cuda] [--quick] [--json PATH]`` (``--quick``: batch 16,
10 steps, ``--min-time 0.05``; ``--json``: the table as JSON for ``bench/run_all.py``). Prints a
markdown table of medians (µs) and ratios.

Notes:
The batch-1024 rows are dominated by the model (≈ 350 µs per call on the 2-core CPU machine) and
their overhead differences are within run-to-run noise (one was negative on 2026-11-23).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dump_json, machine, table  # noqa: E402
from bench_step import diffusers_scheduler, interleaved, peer_version  # noqa: E402

import diffcore  # noqa: E402
from diffcore import schedules, solvers  # noqa: E402

SOLVERS = ["dpmpp_2m", "unipc_2", "ddim", "euler"]
BATCHES = [16, 1024]
STEPS = [10, 50]


class MLP(nn.Module):
    """3 → 128 → 128 → 2 on ``concat(x, t)``; ``t`` is ``[B]`` or a scalar (broadcast to the batch)."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per median (default 0.3, quick 0.05)")
    ap.add_argument("--quick", action="store_true", help="batch 16, 10 steps, --min-time 0.05")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per median (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch and diffcore threads (default: as is)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the table as JSON to PATH")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        diffcore.set_num_threads(args.threads)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.3)
    batches = [16] if args.quick else BATCHES
    steps_list = [10] if args.quick else STEPS
    dev = torch.device(args.device)
    dtype = torch.float32
    sync = dev.type == "cuda"

    torch.manual_seed(0)
    model = MLP().to(dev, dtype).eval()
    sch = schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    rows = []
    for name in SOLVERS:
        peer = diffusers_scheduler(name)
        for B in batches:
            x0 = torch.randn(B, 2, device=dev, dtype=dtype)
            for N in steps_list:
                plan = solvers.get(name).plan(sch, diffcore.timesteps(sch, N), device=dev, dtype=dtype,
                                              prediction="eps")
                times = [[plan.model_time(i, s).expand(B) for s in plan.stages(i)] for i in range(plan.num_steps)]
                flat = [t for ts in times for t in ts]

                def model_only_dc():
                    for t in flat:
                        model(x0, t)

                def dc_sample():
                    return diffcore.sample(model, x0, schedule=sch, solver=name, steps=N, prediction="eps")

                def dc_plan_loop():
                    st = plan.init_state(x0)
                    for i in range(plan.num_steps):
                        for s in plan.stages(i):
                            plan.step(st, i, s, model(st.model_input(s), times[i][s]))
                    return st.x

                fns = {"m": (model_only_dc, sync), "s": (dc_sample, sync), "p": (dc_plan_loop, sync)}
                if not isinstance(peer, str):
                    peer.set_timesteps(N, device=dev)
                    dts = list(peer.timesteps)

                    def model_only_df():
                        for t in dts:
                            model(x0, t)

                    def df_loop(p=peer):
                        p.set_timesteps(N, device=dev)
                        x = x0 * p.init_noise_sigma
                        for t in p.timesteps:
                            out = model(p.scale_model_input(x, t), t)
                            x = p.step(out, t, x).prev_sample
                        return x

                    fns["dm"] = (model_only_df, sync)
                    fns["dl"] = (df_loop, sync)
                with torch.no_grad():
                    med = interleaved(fns, min_time, args.rounds)
                t_m, t_s, t_p = med["m"], med["s"], med["p"]
                o_s, o_p = (t_s - t_m) / N, (t_p - t_m) / N
                if isinstance(peer, str):
                    d_m = d_l = o_d = peer
                else:
                    d_m, d_l = med["dm"], med["dl"]
                    o_d = (d_l - d_m) / len(dts)
                f = lambda v: f"{v:.1f}" if isinstance(v, float) else v  # noqa: E731
                r = lambda a, b: f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "—"  # noqa: E731
                rows.append([name, str(B), str(N), f(t_m), f(t_s), f(t_p), f(d_m), f(d_l),
                             f(o_s), f(o_p), f(o_d), r(o_d, o_s), r(o_d, o_p), r(d_l, t_s)])
    cmd = f"python bench/bench_loop.py --device {args.device}"
    if args.quick:
        cmd += " --quick"
    if args.min_time is not None:
        cmd += f" --min-time {args.min_time}"
    if args.rounds != 3:
        cmd += f" --rounds {args.rounds}"
    if args.threads is not None:
        cmd += f" --threads {args.threads}"
    peer_v = peer_version()
    print(f"# sampling loop, MLP 3→128→128→2 — {datetime.date.today()} — {args.device}, float32, "
          f"VPDiscrete linear betas, eps model — {peer_v}")
    print(f"# {machine()}")
    print(f"# command: {cmd}")
    headers = ["solver", "batch", "steps", "model only µs (diffcore t)", "diffcore sample() µs",
               "diffcore plan loop µs", "model only µs (diffusers t)", "diffusers loop µs",
               "sample() overhead/step µs", "plan loop overhead/step µs", "diffusers overhead/step µs",
               "diffusers/sample() overhead", "diffusers/plan loop overhead", "diffusers/sample() loop"]
    print(table(headers, rows))
    dump_json(args.json, "bench_loop.py", cmd, {"loop": (headers, rows)}, peer=peer_v)


if __name__ == "__main__":
    main()
