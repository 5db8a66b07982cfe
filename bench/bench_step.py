"""One step of every solver: diffcore's fused step vs. the same method in diffusers and vs. eager torch.

For each plan-based diffcore solver and each size (2k, 16k, 262k and 4M elements, batch 16, float32),
measured side by side in one run:

* ``diffcore fused``: ``plan.step(state, i, 0, out)`` — one fused kernel call — for stage 0 of the
  middle step ``i = num_steps // 2`` (10) of a 20-step plan (``dpm_solver_fast`` spends the 20 as NFE on
  7 steps: step 3) on ``VPDiscrete(betas=linspace(1e-4, 0.02, 1000))``,
  prediction ``"eps"``, after running steps ``0 … i-1`` so the history ring is warm. ``out`` is a
  fixed precomputed tensor; repeated calls update the state in place (values do not affect speed).
* ``eager torch``: ``plan.step_reference`` on a second, identically warmed state (same row, eager ops).
* ``diffusers``: ``scheduler.step(out, t, sample, return_dict=False)`` of the same method (table
  ``PEERS``), ``beta_schedule="linear"``, 1000 training steps, the same betas, ``set_timesteps(20)``,
  history warmed by stepping through the earlier timesteps. The timed call is the one matching
  diffcore's stage 0 of a middle step (multistep: index 10; Heun: index 20, a first-order half;
  single-step order 2: index 10, the order-1 half that opens a pair). ``step()`` mutates the
  scheduler (``_step_index``, ``model_outputs``, ``lower_order_nums``, ``ets``, …), so before every
  timed call the mutable attributes are restored from a snapshot (plain attribute sets and list
  copies, no tensor work; a restored call returns bit-for-bit what the un-restored call would). That
  restore is timed alone in the same run and *subtracted* from the diffusers median, so the column is
  the step itself (the restore costs about 0.2–1 µs; ``--keep-restore`` reports the raw restore+step
  median instead). Euler's ``is_scale_input_called`` is set as after ``scale_model_input()`` so
  ``step()`` does not log a warning on every call.
  A peer missing from the installed diffusers is reported as ``skipped``; a method without one as ``—``.
  (``dpm_solver_2``'s peer, singlestep ``algorithm_type="dpmsolver"``, is deprecated in diffusers and
  needs ``final_sigmas_type="sigma_min"``; that only changes the last step, not the timed one.)
* ``copy_ floor``: ``dst.copy_(src)`` moving the bytes the fused step nominally touches. For the
  timed row the kernel reads ``out``, ``x``, ``y`` (when the solver has a second buffer) and the
  ``K = plan.solver.history`` ring slots, and writes ``x`` / ``y`` / one ring slot as the row's layout
  says: ``T`` tensors of x's size in all (listed under the table). A copy of ``n`` elements reads
  ``n`` and writes ``n``, so ``src`` / ``dst`` hold ``T·numel(x)/2`` elements each (the same
  convention as ``bench_overhead.py``, whose floor is K + 2 tensors' worth).

Every number is the median of ``--rounds`` (3) block medians (``common.median_us`` with
``min_time / rounds`` each), the four measurements of a row taken in turn within each round.

Usage: ``python bench/bench_step.py [--device cpu|cuda] [--quick] [--solvers a,b] [--threads N] [--json PATH]``
(``--quick``: 2k and 16k only, ``--min-time 0.05``; ``--json``: the table as JSON for
``bench/run_all.py``). Prints a markdown table of medians (µs) and ratios.

Threads: diffcore's step goes parallel from 65,536 elements, torch's ``copy_`` from 32,768. On a
loaded 2-core machine a parallel ``copy_`` can wait a scheduler tick (≈ 8 ms) for its worker thread,
which shows as an absurd floor; rerun on a quiet machine or compare with ``--threads 1``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import warnings
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dump_json, machine, median_us, table  # noqa: E402

import diffcore  # noqa: E402
from diffcore import _row, schedules, solvers  # noqa: E402

SIZES = [2048, 16384, 262144, 4194304]
QUICK_SIZES = [2048, 16384]
STEPS = 20
MID = 10

# diffcore solver -> (diffusers class name, constructor options, index of the timed step() call)
PEERS = {
    "ddim": ("DDIMScheduler", dict(set_alpha_to_one=False, clip_sample=False), MID),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2), MID),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=3), MID),
    "dpm_solver_2": ("DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver", solver_order=2,
                                                          lower_order_final=True,
                                                          final_sigmas_type="sigma_min"), MID),
    "dpmpp_2s": ("DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2,
                                                      lower_order_final=True), MID),
    "deis_2": ("DEISMultistepScheduler", dict(solver_order=2), MID),
    "deis_3": ("DEISMultistepScheduler", dict(solver_order=3), MID),
    "unipc_2": ("UniPCMultistepScheduler", dict(solver_order=2), MID),
    "unipc_3": ("UniPCMultistepScheduler", dict(solver_order=3), MID),
    "euler": ("EulerDiscreteScheduler", {}, MID),
    "heun": ("HeunDiscreteScheduler", {}, 2 * MID),
    "ipndm": ("IPNDMScheduler", {}, MID),
}
# schedulers that take the DDPM beta schedule (IPNDM has its own fixed schedule)
_BETA_KW = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
# attributes step() mutates; restored before each timed call
_MUTABLE = ("_step_index", "lower_order_nums", "model_outputs", "timestep_list", "last_sample", "this_order",
            "sample", "ets", "prev_derivative", "dt")


def _betas() -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)


def interleaved(fns: Dict[str, Tuple[Callable[[], object], bool]], min_time: float, rounds: int) -> Dict[str, float]:
    """Median over ``rounds`` rounds of ``median_us(fn, min_time / rounds)`` per entry ``(fn, sync)``, the
    entries taken in turn within each round, so a burst of load from elsewhere on a shared machine
    spoils one round of every entry rather than every round of one entry."""
    res: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, (fn, sync) in fns.items():
            res[k].append(median_us(fn, min_time / rounds, sync=sync))
    return {k: statistics.median(v) for k, v in res.items()}


def peer_version() -> str:
    """``"diffusers X.Y.Z"`` or ``"diffusers not installed"`` for the table headers."""
    try:
        import diffusers  # noqa: PLC0415
        return f"diffusers {diffusers.__version__}"
    except Exception:  # noqa: BLE001 — any import failure means "not installed" here
        return "diffusers not installed"


def diffusers_scheduler(name: str):
    """The diffusers peer of ``name`` (a fresh scheduler), or the string ``"skipped"`` / ``"—"``."""
    if name not in PEERS:
        return "—"
    cls_name, opts, _ = PEERS[name]
    kw = dict(opts)
    if cls_name != "IPNDMScheduler":
        kw.update(_BETA_KW)
    return new_scheduler(cls_name, **kw)


def new_scheduler(cls_name: str, **kw):
    """A fresh diffusers scheduler ``cls_name(**kw)``, or ``"skipped"`` when diffusers (or the class)
    is not installed."""
    try:
        import diffusers  # noqa: PLC0415
    except Exception:  # noqa: BLE001 — any import failure means "not installed" here
        return "skipped"
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        return "skipped"
    with warnings.catch_warnings():  # algorithm_type="dpmsolver" is deprecated in recent diffusers
        warnings.simplefilter("ignore", FutureWarning)
        return cls(**kw)


def diffusers_peer(name: str, x: torch.Tensor, out: torch.Tensor):
    """``(step, restore)`` callables for the diffusers step matching ``name`` (``step`` restores the
    warmed state, then steps), or the string ``"—"`` / ``"skipped"``."""
    sch = diffusers_scheduler(name)
    if isinstance(sch, str):
        return sch
    k = PEERS[name][2]
    sch.set_timesteps(STEPS, device=x.device)
    if hasattr(sch, "is_scale_input_called"):  # Euler: as after the loop's scale_model_input(); no warning
        sch.is_scale_input_called = True
    ts = sch.timesteps
    with torch.no_grad():
        for j in range(k):  # warm the history
            sch.step(out, ts[j], x, return_dict=False)
    snap = {a: getattr(sch, a) for a in _MUTABLE if hasattr(sch, a)}
    snap = {a: (list(v) if isinstance(v, list) else v) for a, v in snap.items()}
    lists = [a for a, v in snap.items() if isinstance(v, list)]
    plain = [(a, v) for a, v in snap.items() if a not in lists]
    t = ts[k]

    def restore():
        for a, v in plain:
            setattr(sch, a, v)
        for a in lists:
            setattr(sch, a, list(snap[a]))

    def step():
        restore()
        sch.step(out, t, x, return_dict=False)

    return step, restore


def default_solvers() -> List[str]:
    """The deterministic fixed-grid solvers whose plan needs no extra input: the adaptive ones have no
    plan, stochastic steps are timed by bench_sde.py, and DPM-Solver-v3 needs model statistics."""
    names = []
    for n in solvers.available():
        if n in solvers.STOCHASTIC:
            continue
        try:
            s = solvers.get(n)
        except (TypeError, ValueError):  # a required option (v3's statistics)
            continue
        if hasattr(s, "plan"):
            names.append(n)
    return names


def traffic(plan, i: int, s: int) -> int:
    """Tensors of x's size the fused step reads + writes for row (i, s) (see the module docstring)."""
    sol = plan.solver
    rec = _row.stage(plan.layout, i * sol.stages + s)
    has_y = 1 if sol.second_buffer else 0
    reads = 2 + has_y + sol.history          # out, x, y, ring
    writes = int(rec.write_x) + int(rec.write_y) + int(rec.slot >= 0)
    return reads + writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-time", type=float, default=None, help="seconds per median (default 0.3, quick 0.05)")
    ap.add_argument("--quick", action="store_true", help="2k and 16k elements only, --min-time 0.05")
    ap.add_argument("--solvers", default=None, help="comma-separated subset (default: every plan-based solver)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per median (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch and diffcore threads (default: as is)")
    ap.add_argument("--keep-restore", action="store_true",
                    help="report diffusers' restore+step median (default: restore cost subtracted)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the table as JSON to PATH")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        diffcore.set_num_threads(args.threads)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.3)
    sizes = QUICK_SIZES if args.quick else SIZES
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = dev.type == "cuda"
    B = args.batch

    names = args.solvers.split(",") if args.solvers else default_solvers()
    sch = schedules.VPDiscrete(betas=_betas())
    ts = diffcore.timesteps(sch, STEPS)
    torch.manual_seed(0)
    rows, floors = [], {}
    for name in names:
        solver = solvers.get(name)
        plan = solver.plan(sch, ts, device=dev, dtype=dtype, prediction="eps")
        i = plan.num_steps // 2  # MID for a 20-step plan; dpm_solver_fast spends 20 NFE on 7 steps
        T = traffic(plan, i, 0)
        floors[name] = T
        for n in sizes:
            x = torch.randn(B, n // B, device=dev, dtype=dtype)
            out = torch.randn_like(x)
            states = []
            with torch.no_grad():
                for _ in range(2):
                    st = plan.init_state(x)
                    for j in range(i):
                        for s in plan.stages(j):
                            plan.step(st, j, s, out)
                    states.append(st)
            st_f, st_r = states
            src = torch.empty(T * n // 2, device=dev, dtype=dtype).normal_()
            dst = torch.empty_like(src)

            def fused():
                plan.step(st_f, i, 0, out)

            def eager():
                plan.step_reference(st_r, i, 0, out)

            def floor():
                dst.copy_(src)

            fns = {"fused": (fused, sync), "eager": (eager, sync), "floor": (floor, sync)}
            peer = diffusers_peer(name, x, out)
            if not isinstance(peer, str):
                fns["diffusers"] = (peer[0], sync)
                if not args.keep_restore:
                    fns["restore"] = (peer[1], False)
            with torch.no_grad():
                med = interleaved(fns, min_time, args.rounds)
            t_f, t_e, t_c = med["fused"], med["eager"], med["floor"]
            t_d = peer if isinstance(peer, str) else med["diffusers"] - med.get("restore", 0.0)
            d_cell = f"{t_d:.2f}" if isinstance(t_d, float) else t_d
            d_ratio = f"{t_d / t_f:.2f}x" if isinstance(t_d, float) else "—"
            rows.append([name, f"{n:,}", f"{t_f:.2f}", f"{t_e:.2f}", d_cell, f"{t_c:.2f}",
                         d_ratio, f"{t_e / t_f:.2f}x", f"{t_f / t_c:.2f}x"])
    cmd = f"python bench/bench_step.py --device {args.device} --dtype {args.dtype}"
    if args.quick:
        cmd += " --quick"
    if args.min_time is not None:
        cmd += f" --min-time {args.min_time}"
    if args.solvers:
        cmd += f" --solvers {args.solvers}"
    if args.rounds != 3:
        cmd += f" --rounds {args.rounds}"
    if args.threads is not None:
        cmd += f" --threads {args.threads}"
    if args.keep_restore:
        cmd += " --keep-restore"
    peer = peer_version()
    print(f"# solver step — {datetime.date.today()} — {args.device}, {args.dtype}, batch {B}, "
          f"stage 0 of the middle step of a {STEPS}-step plan, VPDiscrete linear betas, eps model — {peer}")
    print(f"# {machine()}")
    print(f"# command: {cmd}")
    headers = ["solver", "elements", "diffcore fused µs", "eager torch µs", "diffusers µs", "copy_ floor µs",
               "diffusers/fused", "eager/fused", "fused/floor"]
    print(table(headers, rows))
    dump_json(args.json, "bench_step.py", cmd, {"step": (headers, rows)}, peer=peer)
    print()
    print("# copy_ floor traffic T (tensors of x's size read + written by the timed row): "
          + ", ".join(f"{k} {v}" for k, v in floors.items()))
    if not args.keep_restore:
        print("# diffusers: median of (state restore + step) minus the median of the restore alone")


if __name__ == "__main__":
    main()
