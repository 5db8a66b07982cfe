"""The GPU check: the CUDA tests and the GPU benchmarks against their goals, in one command and one table.

On a machine with a CUDA build of diffcore (``DIFFCORE_CUDA=ON DIFFCORE_CUDA_ARCHS=90 pip install
--no-build-isolation .``) run ``python bench/gpu_check.py`` (``--quick``: fewer sizes, shorter timings).
It prints one table, a row per measurement with a pass/fail column, and exits non-zero when a CUDA test
fails (the benchmark rows report, they do not change the exit code). Parts, each within its own time
budget (a part or row that would exceed it is skipped with the reason printed; the whole run stays under
five minutes on one GPU):

1. **CUDA tests**: ``pytest -m cuda tests/`` (every test that needs a GPU carries that mark), in a child
   process with a timeout.
2. **Fused step**: ``plan.step`` of DPM-Solver++(2M) (stage 0 of the middle step of a 20-step plan,
   ``VPDiscrete`` linear betas, eps model; ``bench_step.py``) on ``[16, n/16]`` tensors of n = 1M, 4M,
   16M, 64M elements in float32 and bfloat16, against the copy floor (``dst.copy_(src)`` moving the
   bytes the step reads and writes, ``bench_step.traffic``) and eager torch (``torch.mul`` + two
   ``addcmul_`` with per-sample coefficients: the same linear combination in three kernels). Goals: at
   most 1.5x the floor, faster than eager, effective bandwidth (bytes read + written / time) at least
   2.8 TB/s.
3. **Sampling loop under a CUDA graph**: ``diffcore.sample(model, x, ..., cuda_graph=True)`` with the MLP
   3→128→128→2 of ``bench_loop.py`` (B = 16, DPM-Solver++(2M), 10 steps) against the same ten model
   calls (the plan's times) captured alone in a ``torch.cuda.CUDAGraph``. Goal: at most 1.15x.
4. **Sinkhorn**, float64, ε = 0.01, costs = squared distances of 2-D Gaussian clouds divided by their
   max (``bench_ot.clouds_cost``), uniform weights, n = 256, 1024, 4096 (``--quick``: 256, 1024), batch 1 and 32 (where memory
   allows): ``diffcore.ot.sinkhorn(None, None, C, 0.01, tol=1e-6)`` on the batch against POT's
   ``ot.bregman.sinkhorn_log`` on torch CUDA tensors, one call per problem (POT takes one problem per
   call) — or, without POT, the bundled :func:`torch_sinkhorn_log` with POT's ``sinkhorn_log`` updates;
   the table says which ran. Every solver must return plans whose marginal errors ‖P1 − a‖₁ and
   ‖Pᵀ1 − b‖₁, computed here, are at most 1e-6: the reference's ``stopThr`` is lowered tenfold from
   1e-6 (untimed calibration) until its plans meet that. Iteration counts are reported. Goal: diffcore
   faster at every size.
5. **Picard**: ``diffcore.sample(..., parallel=ParallelConfig(16, 0.1))`` with DDIM, 100 steps, batch
   4, the small MLP of ``bench_parallel.py`` (64 features, width 256) against the sequential
   ``diffcore.sample``. Goal: at least 3x.

Timing: CUDA events around blocks of calls (so gaps the host leaves on the GPU count), warm-up first,
the median of several blocks; Sinkhorn entries one call per block.

Without CUDA the script says so, prints every row as ``skipped (no CUDA)`` and exits 0.

Usage: ``python bench/gpu_check.py [--quick] [--skip-tests]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import machine, table  # noqa: E402

# ---- goals ----
STEP_FLOOR_MAX = 1.5        # fused step time / copy floor
STEP_BW_MIN = 2.8           # TB/s, effective bandwidth of the fused step
GRAPH_MAX = 1.15            # sample(cuda_graph=True) / model calls alone in a graph
SINKHORN_TOL = 1e-6         # marginal errors of every returned plan
PICARD_MIN = 3.0            # sequential / Picard
EPS = 0.01

STEP_SIZES = [1 << 20, 1 << 22, 1 << 24, 1 << 26]
STEP_SIZES_QUICK = [1 << 20, 1 << 24]
STEP_DTYPES = ["float32", "bfloat16"]
SINKHORN_SIZES = [256, 1024, 4096]
SINKHORN_SIZES_QUICK = [256, 1024]
SINKHORN_BATCHES = [1, 32]
PICARD = dict(steps=100, batch=4, dim=64, width=256, window=16, tolerance=0.1)

# seconds each part may take (tests: the child's timeout); the whole run stays under five minutes
BUDGET = {"tests": 170.0, "step": 25.0, "loop": 10.0, "sinkhorn": 50.0, "picard": 15.0}
BUDGET_QUICK = {"tests": 170.0, "step": 10.0, "loop": 5.0, "sinkhorn": 25.0, "picard": 8.0}

PASS, FAIL = "pass", "FAIL"
DEVICE = "cuda"  # the parts run here (tests/test_gpu_check.py runs them on the CPU with a wall-clock timer)
NO_CUDA = "skipped (no CUDA)"


@dataclass
class Row:
    part: str
    case: str
    measured: str = "—"
    goal: str = ""
    result: str = NO_CUDA
    params: dict = field(default_factory=dict)  # what the part measures for this row
    values: dict = field(default_factory=dict)  # the numbers behind `measured`


def elements(n: int) -> str:
    return f"{n >> 20}M" if n % (1 << 20) == 0 else f"{n:,}"


def planned_rows(quick: bool) -> List[Row]:
    """Every row the check reports, in order, before anything is measured."""
    rows = [Row("CUDA tests", "pytest -m cuda tests/", goal="all pass")]
    for dt in STEP_DTYPES:
        for n in (STEP_SIZES_QUICK if quick else STEP_SIZES):
            rows.append(Row("fused step", f"dpmpp_2m {dt} {elements(n)}", goal=step_goal(), params=dict(dtype=dt, n=n)))
    rows.append(Row("sample loop", "cuda_graph=True, MLP, B=16, 10 steps", goal=f"≤ {GRAPH_MAX}x graph of model calls"))
    for n in (SINKHORN_SIZES_QUICK if quick else SINKHORN_SIZES):
        for B in SINKHORN_BATCHES:
            rows.append(Row("Sinkhorn", f"n={n} B={B}", goal="faster than reference", params=dict(n=n, B=B)))
    rows.append(Row("Picard", "ddim {steps} steps, B={batch}, window {window}, τ {tolerance}".format(**PICARD),
                    goal=f"≥ {PICARD_MIN}x sequential"))
    return rows


def step_goal() -> str:
    return f"≤ {STEP_FLOOR_MAX}x floor, < eager, ≥ {STEP_BW_MIN} TB/s"


# ---- judging (pure functions of the timings; tests/test_gpu_check.py feeds them fake numbers) ----

def judge_step(t_fused: float, t_floor: float, t_eager: float, nbytes: int) -> Tuple[str, str]:
    """(measured, result) of a fused-step row: times in µs, ``nbytes`` read + written by the step."""
    bw = nbytes / t_fused / 1e6  # bytes per µs → TB/s
    ok = t_fused <= STEP_FLOOR_MAX * t_floor and t_fused < t_eager and bw >= STEP_BW_MIN
    measured = (f"fused {t_fused:.1f} µs, floor {t_floor:.1f} µs ({t_fused / t_floor:.2f}x), eager {t_eager:.1f} µs "
                f"({t_eager / t_fused:.2f}x slower), {bw:.2f} TB/s")
    return measured, PASS if ok else FAIL


def judge_loop(t_loop: float, t_graph: float) -> Tuple[str, str]:
    r = t_loop / t_graph
    return f"sample {t_loop:.1f} µs, model graph {t_graph:.1f} µs ({r:.2f}x)", PASS if r <= GRAPH_MAX else FAIL


def judge_sinkhorn(t_dc: float, it_dc: int, err_dc: float, t_ref: float, it_ref: int, err_ref: float,
                   ref_name: str, ref_note: str = "") -> Tuple[str, str]:
    """Times in ms, iterations (max over the batch) and marginal errors (max over the batch of the two
    marginals' ℓ1 errors). diffcore must be faster and its plans within SINKHORN_TOL; a reference that
    could not reach the tolerance is reported as such."""
    ok = t_dc < t_ref and err_dc <= SINKHORN_TOL
    measured = (f"diffcore {t_dc:.2f} ms ({it_dc} it, err {err_dc:.1e}) vs {ref_name} {t_ref:.2f} ms "
                f"({it_ref} it, err {err_ref:.1e}{', ' + ref_note if ref_note else ''}): {t_ref / t_dc:.1f}x")
    return measured, PASS if ok else FAIL


def judge_picard(t_seq: float, t_par: float, rounds: int) -> Tuple[str, str]:
    r = t_seq / t_par
    return (f"sequential {t_seq:.1f} ms, Picard {t_par:.1f} ms ({rounds} rounds): {r:.2f}x",
            PASS if r >= PICARD_MIN else FAIL)


def judge_tests(rc: Optional[int], summary: str, timeout: float) -> Tuple[str, str]:
    """``rc`` of the pytest child (None: it timed out)."""
    if rc is None:
        return f"timed out after {timeout:.0f} s", FAIL
    return summary or f"exit code {rc}", PASS if rc == 0 else FAIL


def exit_code(rows: Sequence[Row]) -> int:
    """1 when the CUDA tests failed (or timed out), else 0: the benchmark rows only report."""
    return 1 if any(r.part == "CUDA tests" and r.result == FAIL for r in rows) else 0


def render(rows: Sequence[Row]) -> str:
    return table(["part", "case", "measured", "goal", "result"],
                 [[r.part, r.case, r.measured, r.goal, r.result] for r in rows])


def skip_rest(rows: Sequence[Row], part: str, reason: str) -> None:
    for r in rows:
        if r.part == part and r.result == NO_CUDA:
            r.result = f"skipped ({reason})"


# ---- timing ----

def event_median_us(fn: Callable[[], object], samples: int = 5, min_ms: float = 2.0, warmup: int = 3,
                    max_inner: int = 4096) -> float:
    """Median over ``samples`` blocks of the CUDA-event time per call (µs); each block runs enough calls
    to last ``min_ms`` (one call per block for slow calls)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    inner = 1
    while True:
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        if start.elapsed_time(end) >= min_ms or inner >= max_inner:
            break
        inner *= 4
    times = []
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / inner)
    return statistics.median(times)


def free_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.device(DEVICE).type == "cuda" else 1 << 40


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


# ---- parts ----

def run_tests(rows: List[Row], timeout: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    rows[0].measured, rows[0].result = judge_tests(rc, summary, timeout)
    if rc != 0:
        print(out[-6000:], file=sys.stderr)


def step_part(rows: List[Row], quick: bool, budget: float) -> None:
    from bench_step_gpu import StepWorkload, step_plan  # noqa: PLC0415

    dl = Deadline(budget)
    dev = torch.device(DEVICE)
    for r in rows:
        if r.part != "fused step":
            continue
        if dl.left() <= 0:
            r.result = "skipped (time budget)"
            continue
        dtype, n = getattr(torch, r.params["dtype"]), r.params["n"]
        plan = step_plan(dev, dtype)
        if (plan[2] + 6) * n * dtype.itemsize > 0.8 * free_bytes():
            r.result = "skipped (GPU memory)"
            continue
        w = StepWorkload(dev, dtype, n, 16, plan=plan)
        samples = 3 if quick else 5
        with torch.no_grad():
            t_f, t_c, t_e = (event_median_us(w.fns[k], samples) for k in ("fused", "floor", "eager"))
        r.measured, r.result = judge_step(t_f, t_c, t_e, w.nbytes)
        r.values = dict(fused_us=t_f, floor_us=t_c, eager_us=t_e, bytes=w.nbytes)
        del w
        empty_cache()


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def loop_part(rows: List[Row], quick: bool, budget: float) -> None:
    from bench_loop import MLP  # noqa: PLC0415

    import diffcore  # noqa: PLC0415
    from diffcore import schedules, solvers  # noqa: PLC0415

    r = next(r for r in rows if r.part == "sample loop")
    dev, B, N = torch.device("cuda"), 16, 10
    torch.manual_seed(0)
    model = MLP().to(dev).eval()
    sch = schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    x = torch.randn(B, 2, device=dev)
    plan = solvers.get("dpmpp_2m").plan(sch, diffcore.timesteps(sch, N), device=dev, dtype=torch.float32,
                                        prediction="eps")
    times = [plan.model_time(i, s).expand(B).contiguous() for i in range(plan.num_steps) for s in plan.stages(i)]
    with torch.no_grad():
        def loop():
            return diffcore.sample(model, x, schedule=sch, solver="dpmpp_2m", steps=N, prediction="eps",
                                   cuda_graph=True)

        xs = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for t in times:  # warm-up outside the capture
                model(xs, t)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for t in times:
                model(xs, t)
        samples = 3 if quick else 7
        t_loop = event_median_us(loop, samples)
        t_graph = event_median_us(graph.replay, samples)
    r.measured, r.result = judge_loop(t_loop, t_graph)
    r.values = dict(loop_us=t_loop, graph_us=t_graph)


def torch_sinkhorn_log(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, reg: float, stopThr: float = 1e-9,
                       numItermax: int = 1000) -> Tuple[torch.Tensor, int]:
    """The updates of POT's ``ot.bregman.sinkhorn_log`` in torch (used when POT is not installed): from
    u = v = 0, ``v ← log b − logsumexp(−M/reg + u, rows)``, ``u ← log a − logsumexp(−M/reg + v, columns)``;
    every tenth iteration (from the first) the 2-norm of the column-marginal error is compared to
    ``stopThr``. Returns ``(plan, iteration index at exit)`` as POT's log["niter"]."""
    Mr = -M / reg
    u = torch.zeros_like(a)
    v = torch.zeros_like(b)
    la, lb = a.log(), b.log()
    ii = 0
    for ii in range(numItermax):
        v = lb - torch.logsumexp(Mr + u[:, None], 0)
        u = la - torch.logsumexp(Mr + v[None, :], 1)
        if ii % 10 == 0:
            err = torch.linalg.vector_norm(torch.exp(Mr + u[:, None] + v[None, :]).sum(0) - b)
            if float(err) < stopThr:
                break
    return torch.exp(Mr + u[:, None] + v[None, :]), ii


def marginal_error(P: torch.Tensor) -> float:
    """max over the batch of max(‖P1 − a‖₁, ‖Pᵀ1 − b‖₁) for uniform a, b."""
    P = P.reshape(-1, P.shape[-2], P.shape[-1])
    n, m = P.shape[-2:]
    row = (P.sum(-1) - 1.0 / n).abs().sum(-1)
    col = (P.sum(-2) - 1.0 / m).abs().sum(-1)
    return float(torch.maximum(row, col).max())


def sinkhorn_part(rows: List[Row], quick: bool, budget: float) -> None:
    from bench_ot import clouds_cost  # noqa: PLC0415

    from diffcore import ot  # noqa: PLC0415

    try:
        import ot as pot  # noqa: PLC0415

        ref_name = "POT sinkhorn_log"

        def ref_solve(a, b, C, thr):
            P, log = pot.bregman.sinkhorn_log(a, b, C, EPS, stopThr=thr, numItermax=5000, log=True, warn=False)
            return P, int(log["niter"])
    except ImportError:
        ref_name = "torch sinkhorn_log (POT's updates)"

        def ref_solve(a, b, C, thr):
            return torch_sinkhorn_log(a, b, C, EPS, stopThr=thr, numItermax=5000)

    dl = Deadline(budget)
    for r in rows:
        if r.part != "Sinkhorn":
            continue
        n, B = r.params["n"], r.params["B"]
        if dl.left() <= 0:
            r.result = "skipped (time budget)"
            continue
        if 8 * B * n * n * 5 > 0.8 * free_bytes():
            r.result = "skipped (GPU memory)"
            continue
        C = clouds_cost(B, n, 2, seed=n + B, normalize=True, device=DEVICE)  # bench_ot.py's problems
        a = torch.full((n,), 1.0 / n, device=DEVICE, dtype=torch.float64)

        def dc():
            return ot.sinkhorn(None, None, C, EPS, tol=SINKHORN_TOL, warn=False)

        res = dc()
        err_dc, it_dc = marginal_error(res.plan), int(res.iterations.max())
        del res
        # reference: the largest stopThr (from 1e-6 down) whose plans meet the tolerance
        note, thr = "", 1e-6
        while True:
            out = [ref_solve(a, a, C[k], thr) for k in range(B)]
            err_ref = max(marginal_error(P) for P, _ in out)
            it_ref = max(it for _, it in out)
            del out
            if err_ref <= SINKHORN_TOL or thr <= 1e-12 or dl.left() < 0:
                break
            thr /= 10
        note = f"stopThr {thr:g}" + ("" if err_ref <= SINKHORN_TOL else ", above the tolerance")

        def ref():
            for k in range(B):
                ref_solve(a, a, C[k], thr)

        slow = B * n >= 32 * 1024
        t_dc = event_median_us(dc, 3 if slow or quick else 5, warmup=1) / 1e3
        t_ref = event_median_us(ref, 1 if slow else 3, min_ms=0.0, warmup=0 if slow else 1) / 1e3
        r.measured, r.result = judge_sinkhorn(t_dc, it_dc, err_dc, t_ref, it_ref, err_ref, ref_name, note)
        r.values = dict(dc_ms=t_dc, dc_iters=it_dc, dc_err=err_dc, ref_ms=t_ref, ref_iters=it_ref, ref_err=err_ref,
                        ref=ref_name, stop_thr=thr)
        del C
        empty_cache()


def picard_part(rows: List[Row], quick: bool, budget: float) -> None:
    from bench_parallel import TimeMLP  # noqa: PLC0415

    import diffcore  # noqa: PLC0415
    from diffcore import schedules  # noqa: PLC0415

    r = next(r for r in rows if r.part == "Picard")
    torch.manual_seed(0)
    sched = schedules.VPLinear()
    net = TimeMLP(PICARD["dim"], PICARD["width"], sched).to(DEVICE)
    x = diffcore.prior_sample(sched, (PICARD["batch"], PICARD["dim"]), seed=0, device=DEVICE)
    kw = dict(schedule=sched, solver="ddim", steps=PICARD["steps"], seed=1)
    cfg = diffcore.ParallelConfig(PICARD["window"], PICARD["tolerance"])
    with torch.no_grad():
        log: list = []
        diffcore.sample(net, x, parallel=cfg, callback=log.append, **kw)
        samples = 3 if quick else 5
        t_seq = event_median_us(lambda: diffcore.sample(net, x, **kw), samples, min_ms=0.0, warmup=1) / 1e3
        t_par = event_median_us(lambda: diffcore.sample(net, x, parallel=cfg, **kw), samples, min_ms=0.0,
                                warmup=1) / 1e3
    r.measured, r.result = judge_picard(t_seq, t_par, len(log))
    r.values = dict(sequential_ms=t_seq, picard_ms=t_par, rounds=len(log))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and shorter timings")
    ap.add_argument("--skip-tests", action="store_true", help="benchmarks only (the tests row is skipped)")
    args = ap.parse_args(argv)
    rows = planned_rows(args.quick)
    import diffcore  # noqa: PLC0415

    cmd = "python bench/gpu_check.py" + (" --quick" if args.quick else "") + (" --skip-tests" if args.skip_tests else "")
    print(f"# GPU check — {time.strftime('%Y-%m-%d')} — command: {cmd}")
    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: nothing to check (every row skipped).")
        print(render(rows))
        return 0
    if not diffcore.build_info()["cuda"]:
        print("diffcore was built without CUDA: rebuild with "
              "DIFFCORE_CUDA=ON DIFFCORE_CUDA_ARCHS=90 pip install --no-build-isolation .")
        for r in rows:
            r.result = "skipped (diffcore built without CUDA)"
        print(render(rows))
        return 2
    print(f"# {machine()}; {torch.cuda.get_device_name()}")
    budgets = BUDGET_QUICK if args.quick else BUDGET
    t0 = time.perf_counter()
    if args.skip_tests:
        rows[0].result = "skipped (--skip-tests)"
    else:
        run_tests(rows, budgets["tests"])
    for part, fn in (("fused step", step_part), ("sample loop", loop_part), ("Sinkhorn", sinkhorn_part),
                     ("Picard", picard_part)):
        key = {"fused step": "step", "sample loop": "loop", "Sinkhorn": "sinkhorn", "Picard": "picard"}[part]
        try:
            fn(rows, args.quick, budgets[key])
        except Exception as e:  # noqa: BLE001 — one broken part is reported, the others still run
            print(f"{part}: {type(e).__name__}: {e}", file=sys.stderr)
            for r in rows:
                if r.part == part and r.result == NO_CUDA:
                    r.result, r.measured = FAIL, f"error: {type(e).__name__}: {str(e)[:120]}"
        skip_rest(rows, part, "time budget")
        torch.cuda.empty_cache()
    print(render(rows))
    print(f"# {time.perf_counter() - t0:.0f} s")
    return exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
