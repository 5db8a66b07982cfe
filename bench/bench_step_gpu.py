"""The fused step on a GPU against its memory floor: DPM-Solver++ 2M's ``plan.step`` vs ``copy_`` of the
same bytes vs eager torch, at 1M–64M elements, float32 and bfloat16 (docs/design.md, "Launch geometry").

For each dtype and size (batch ``--batch`` 16, the rest of the elements per sample):

* ``fused``: ``plan.step(state, i, 0, out)`` for stage 0 of the middle step ``i = 10`` of a 20-step
  ``dpmpp_2m`` plan on ``VPDiscrete(betas=linspace(1e-4, 0.02, 1000))``, prediction ``"eps"``, history
  warmed by the steps before; ``out`` a fixed tensor (values do not affect speed).
* ``copy_ floor``: ``dst.copy_(src)`` moving the bytes the step touches: it reads ``out``, ``x`` and the
  ring slot and writes ``x`` and the ring slot, T = 5 tensors of x's size (``bench_step.traffic``), so
  ``src`` and ``dst`` hold T·numel/2 elements each.
* ``eager``: the same update in eager torch as three kernels, ``x.mul(c_x)``, ``addcmul_(ring, c_r)``,
  ``addcmul_(out, c_m)`` with per-sample ``[B, 1]`` coefficients (x' only: no conversion, no ring
  write, so it moves fewer bytes than the fused step).

Timing: CUDA events around ``--inner`` back-to-back calls on the current stream, divided by the count;
the median of ``--reps`` such blocks, the three measurements of a row taken in turn. Effective
bandwidth = T·numel·itemsize / fused time.

Usage: ``python bench/bench_step_gpu.py [--sizes 1,4,16,64] [--dtypes float32,bfloat16] [--batch 16]
[--reps 15] [--inner 20] [--json PATH]`` (sizes in Mi elements; ``--device cpu --sizes 1`` only checks
that the script runs). Without a CUDA device, or with a
diffcore built without CUDA, it prints why and exits 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dump_json, machine, table  # noqa: E402

import diffcore  # noqa: E402
from diffcore import schedules, solvers  # noqa: E402

STEPS = 20
SOLVER = "dpmpp_2m"


def traffic(plan, i: int, s: int) -> int:
    from bench_step import traffic as _traffic  # one definition of the floor's byte count
    return _traffic(plan, i, s)


def step_plan(dev, dtype):
    """The measured plan: ``dpmpp_2m``, 20 steps, VP linear betas, prediction ``"eps"``; its middle step
    ``i`` and the floor's traffic T (tensors of x's size) for stage 0."""
    sch = schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    plan = solvers.get(SOLVER).plan(sch, diffcore.timesteps(sch, STEPS), device=dev, dtype=dtype, prediction="eps")
    i = plan.num_steps // 2
    return plan, i, traffic(plan, i, 0)


class StepWorkload:
    """The three timed callables of one (dtype, size): ``fused`` (stage 0 of step i, history warmed by the
    steps before), ``floor`` (``copy_`` of the step's bytes) and ``eager`` (the x' update as three torch
    kernels), and ``nbytes`` = T·n·itemsize, the bytes the fused step moves."""

    def __init__(self, dev, dtype, n: int, batch: int = 16, plan=None):
        self.plan, self.i, self.T = plan if plan is not None else step_plan(dev, dtype)
        plan, i, T = self.plan, self.i, self.T
        x = torch.randn(batch, n // batch, device=dev, dtype=dtype)
        out = torch.randn_like(x)
        with torch.no_grad():
            st = plan.init_state(x)
            for j in range(i):
                for s in plan.stages(j):
                    plan.step(st, j, s, out)
        src = torch.randn(T * n // 2, device=dev, dtype=dtype)
        dst = torch.empty_like(src)
        xe, re = x.clone(), torch.randn_like(x)
        cx, cr, cm = (torch.rand(batch, 1, device=dev, dtype=dtype) for _ in range(3))
        buf = torch.empty_like(x)

        def eager():
            torch.mul(xe, cx, out=buf)
            buf.addcmul_(re, cr)
            buf.addcmul_(out, cm)

        self.fns = {"fused": lambda: plan.step(st, i, 0, out), "floor": lambda: dst.copy_(src), "eager": eager}
        self.nbytes = T * n * x.element_size()


def event_us(fn, inner: int) -> float:
    if not torch.cuda.is_available():  # --device cpu: a smoke run of the script, wall clock
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) * 1e6 / inner
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / inner


def measure(fns, reps: int, inner: int):
    for fn in fns.values():  # warm-up: allocator, first launches
        event_us(fn, 2)
    samples = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            samples[k].append(event_us(fn, inner))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4,16,64", help="Mi elements (default 1,4,16,64)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only checks that the script runs")
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return
    if dev.type == "cuda" and not diffcore.build_info()["cuda"]:
        print("skipped: diffcore was built without CUDA")
        return
    B = args.batch
    torch.manual_seed(0)
    rows = []
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        for mi in (int(s) for s in args.sizes.split(",")):
            n = mi << 20
            w = StepWorkload(dev, dtype, n, B)
            with torch.no_grad():
                med = measure(w.fns, args.reps, args.inner)
            t_f, t_c, t_e = med["fused"], med["floor"], med["eager"]
            rows.append([dname, f"{mi}Mi", f"{t_f:,.1f}", f"{t_c:,.1f}", f"{t_e:,.1f}", f"{t_f / t_c:.2f}x",
                         f"{t_e / t_f:.2f}x", f"{w.nbytes / t_f / 1e3:,.0f}", f"{w.nbytes / t_c / 1e3:,.0f}"])
            i, T = w.i, w.T
            del w
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    headers = ["dtype", "elements", "fused µs", "copy_ floor µs", "eager µs", "fused/floor", "eager/fused",
               "fused GB/s", "copy_ GB/s"]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (wall clock, not a GPU measurement)"
    print(f"# {SOLVER} step {i} stage 0, batch {B}; {where}; {machine()}")
    print(f"# floor traffic T = {T} tensors of x's size")
    print(table(headers, rows))
    dump_json(args.json, "bench_step_gpu.py", " ".join(sys.argv), {"step_gpu": (headers, rows)})


if __name__ == "__main__":
    main()
