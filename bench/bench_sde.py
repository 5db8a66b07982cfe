"""Stochastic sampler steps and noise sources: diffcore vs. diffusers, k-diffusion, torchsde and eager torch.

Three tables, every entry measured side by side in one run (batch 16, float32, ``torch.no_grad()``):

1. **Sampler step.** Per-step cost of one stochastic step with the model excluded (the model output is
   a fixed precomputed tensor), = median time of a whole ``--steps``-step (20) loop / steps, on
   ``VPDiscrete(betas=linspace(1e-4, 0.02, 1000))``, at 16×1024 and 16×131072 elements:

   * ``diffcore``: ``plan = solvers.get(name).plan(sched, diffcore.timesteps(sched, 20), prediction="eps")``
     (built outside the timed region); timed: ``state = plan.init_state(x, Noise(seed=0))`` and
     ``plan.step(state, i, 0, out)`` for every step (the fused kernel with in-kernel Philox noise).
     ``diffcore brownian``: the same with ``Noise(seed=0, brownian=True)`` (``BrownianTree`` noise,
     depth 20, over the plan's time span, computed inside the kernel).
   * ``diffusers``: ``DDPMScheduler(clip_sample=False)`` / ``EulerAncestralDiscreteScheduler`` /
     ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)`` with 1000
     training steps and the same linear betas, ``set_timesteps(20)`` once outside; timed: ``for t in
     timesteps: x = step(out, t, x, generator=g, return_dict=False)[0]`` (``g`` a torch generator).
     Before each loop the scheduler's mutable attributes (``_step_index``, ``model_outputs``, …) are
     restored from a snapshot taken after ``set_timesteps`` (plain attribute sets, ~1 µs per loop, left
     in); Euler's ``is_scale_input_called`` is set so ``step()`` does not log a warning per call.
   * ``pure torch`` (DDPM): the same posterior update written with torch ops, coefficients as Python
     floats precomputed from the same grid: ``x0 = (x − σ_s·out)/α_s; x = c1·x + c2·x0 +
     c3·torch.randn(..., generator=g)`` (no noise on the last step); it equals diffcore's DDPM step to
     1e-12 in float64 given the same noise.
   * ``k-diffusion``: one call of ``sample_euler_ancestral`` / ``sample_dpmpp_2m_sde(model, x, sigmas,
     disable=True)`` with ``model = lambda x, sigma: out`` (a denoiser returning the fixed tensor),
     ``sigmas`` = ρ = σ/α at the same grid (float32), divided by the steps — k-diffusion's own loop, not
     a reproduction of its arithmetic. For ``dpmpp_2m_sde`` once with
     ``noise_sampler=default_noise_sampler(x)`` (``torch.randn_like``) and once with the sampler's
     default, ``BrownianTreeNoiseSampler(x, σ_min, σ_max)`` (a ``torchsde.BrownianTree``, tol 1e-6,
     built inside the timed call, as in every run of the sampler).

   Ratios are peer / diffcore (``> 1``: diffcore faster); ``k-diffusion BT`` is compared with
   ``diffcore brownian``.
2. **Brownian source.** Time to produce the noise of an N-step (N = 20, 100) sequential pass over
   ``[0, 1]`` in sampler order (from t = 1 down to 0, each query ``(lo, hi)`` with ``lo < hi``, as
   k-diffusion's ``BatchedBrownianTree`` sorts them) for a 16×1024 and a 16×131072 tensor, the source
   built inside the timed region (a fresh tree per run, as a sampler makes): diffcore
   ``BrownianTree(0, 1, shape, seed=0)`` (depth 20: leaf width 9.5e-7) queried with ``.increment(lo, hi)``
   (the normalized increment a sampler uses) and with ``tree(lo, hi)`` (``W(hi) − W(lo)``); torchsde
   ``BrownianInterval(0, 1, size=shape, entropy=0)`` with its own defaults (tol 0, ``halfway_tree=False``:
   the path depends on the query order) and ``torchsde.BrownianTree(0, zeros(shape), 1, entropy=0)``
   with its defaults, which are what k-diffusion's ``BrownianTreeNoiseSampler`` uses (a
   ``BrownianInterval`` with tol 1e-6, ``pool_size=24``, ``halfway_tree=True``).
3. **Plain noise.** One draw: ``diffcore.noise.philox_normal(shape, seed=0)`` vs
   ``torch.randn(shape, generator=g)``.

Timing: entries of one table row are measured in turn within each of ``--rounds`` (3) rounds. An entry
whose first (probe) call takes < 0.1 s gets a ``common.median_us`` block median per round
(``--min-time / rounds`` each, ≥ 5 samples); a slower one gets single timed calls, one per round after
the probe as warm-up, while its calls have taken < ``--slow-budget`` (10) s — a probe of ≥ 2 s counts
as the first sample (no warm-up needed) —, so the slowest entries rest on 1–2 calls; those are marked
``†`` with the count. The number reported is the median over the samples.

Peers: diffusers, torchsde and k-diffusion. k-diffusion 0.1.1's package ``__init__`` imports its
training stack (clip, kornia, skimage, …); when ``import k_diffusion.sampling`` fails, its
``sampling.py`` and ``utils.py`` are loaded from the installed package's files under a private parent
package, with placeholders for the imports they only use in functions this script does not call
(``torchdiffeq``, ``torchvision``, ``scipy``, ``PIL``, ``safetensors``), removed from ``sys.modules``
afterwards (``diffcore.integrations._peers.load_k_diffusion``). A peer that cannot be loaded is
reported as ``skipped``.

Usage: ``python bench/bench_sde.py [--device cpu|cuda] [--quick] [--threads N] [--json PATH]`` (``--quick``:
16×1024 only, ``--min-time 0.05``; ``--device cuda`` prints a note and exits when CUDA is unavailable;
``--json``: the tables as JSON for ``bench/run_all.py``). Full run 327 s on the quiet 2-core CPU machine
(2026-11-23); 586 s (``--threads 1 --rounds 5``) and 1855 s (``--threads 2 --rounds 5``) under a load
average of 11-16 (2026-12-08).

Notes:
Findings of the 2026-12-08 CPU runs (``--rounds 5``, once with ``--threads 1`` and once with
``--threads 2``; 2 cores, float32, batch 16; diffusers 0.42.1, k-diffusion 0.1.1.post1 loaded from its
sampling module, torchsde 0.2.6). The machine was busy: other engineers' test suites kept the load
average at 11-16 on its 2 cores through both runs, so every absolute time is inflated several-fold
(each entry got a fraction of a core, and the 2-thread run mostly one core: the kernel schedules by
autogroup) and the numbers are medians over the 5 rounds in which the entries of a row are measured in
turn. Ratio = peer time / diffcore time (above 1: diffcore faster).

The CPU noise is now the vectorized generator (csrc/cpu/noise_cpu.cpp: 64 Philox counters per
iteration in structure-of-arrays loops, Box–Muller over the word pairs, compiled for baseline x86-64,
AVX2 and AVX-512 and picked from the running CPU; the AVX-512 variant here), bit-identical to the
scalar transform the CUDA kernels use (tests/test_philox_simd.py pins digests recorded from the
scalar code). ``philox_normal`` vs ``torch.randn``: 3.05 vs 3.51 ns/element at 16k (0.87x of randn's
time) and 0.82x at 2M on one thread, 0.88x and 0.66x on two; the scalar generator was 2.0-3.3x slower
than randn (~19 ns/element/thread). Stochastic steps on one thread: diffusers/diffcore 15.5x (DDPM),
21.9x (Euler ancestral), 24.3x (DPM++ 2M SDE) at 16k and 3.0x, 2.9x, 2.5x at 2M; k-diffusion/diffcore
22.5x and 13.0x at 16k, 3.5x and 2.5x at 2M; pure-torch DDPM 9.6x and 2.3x. On two threads:
diffusers 5.2x, 10.6x, 7.8x at 16k and 7.8x, 7.8x, 7.5x at 2M; k-diffusion 13.3x and 4.6x at 16k,
7.6x and 7.2x at 2M; pure torch 2.2x and 7.3x. The large 16k ratios are partly the peers' Python
per-step overhead, which the load inflates more than one short kernel call. The Brownian tree is
drawn over arrays (each visited node's normals for a whole chunk): in-kernel DPM++ 2M SDE with
Brownian noise vs k-diffusion's BrownianTreeNoiseSampler 5.3x / 4.1x (1 thread, 16k / 2M) and 5.7x /
21x (2 threads); the Brownian pass vs torchsde's BrownianTree 1.9-2.9x (1 thread) and 2.9-9.4x (2
threads), was 0.59-1.08x; torchsde's BrownianInterval (tol 0, a cache that depends on the query order,
not a stateless tree) stays faster (0.12-0.50x).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dump_json, machine, measure, table, version  # noqa: E402
from bench_step import _BETA_KW, _MUTABLE, new_scheduler, peer_version  # noqa: E402

import diffcore  # noqa: E402
from diffcore import schedules, solvers  # noqa: E402
from diffcore.noise import BrownianTree, Noise, philox_normal  # noqa: E402
from diffcore.integrations._peers import load_k_diffusion  # noqa: E402

BATCH = 16
SIZES = [16 * 1024, 16 * 131072]
QUICK_SIZES = [16 * 1024]
STEPS = 20
PASS_STEPS = [20, 100]
SEED = 0

# -- peers ------------------------------------------------------------------------------------------

def load_torchsde():
    """The torchsde module, or None."""
    try:
        import torchsde  # noqa: PLC0415
        return torchsde
    except Exception:  # noqa: BLE001 — any import failure means "not available" here
        return None


def diffusers_scheduler(cls_name: str, **opts):
    """A fresh diffusers scheduler with the bench's beta schedule, or ``"skipped"``."""
    return new_scheduler(cls_name, **_BETA_KW, **opts)


def restorer(sch) -> Callable[[], None]:
    """A function restoring the scheduler's mutable attributes to their current values."""
    snap = {a: getattr(sch, a) for a in _MUTABLE if hasattr(sch, a)}
    lists = {a: list(v) for a, v in snap.items() if isinstance(v, list)}
    plain = [(a, v) for a, v in snap.items() if a not in lists]

    def restore():
        for a, v in plain:
            setattr(sch, a, v)
        for a, v in lists.items():
            setattr(sch, a, list(v))
    return restore


# -- timing -----------------------------------------------------------------------------------------

class Cells:
    """Formats medians (scaled by ``div``) and ratios; marks entries with fewer than ``rounds`` samples."""

    def __init__(self, med: Dict[str, Tuple[object, int]], rounds: int, div: float = 1.0, fmt: str = "{:.1f}"):
        self.med, self.rounds, self.div, self.fmt = med, rounds, div, fmt
        self.marked = False

    def value(self, k: str):
        v = self.med.get(k)
        return v[0] / self.div if v is not None and isinstance(v[0], float) else None

    def cell(self, k: str, missing: str = "—") -> str:
        if k not in self.med:
            return missing
        v, n = self.med[k]
        if not isinstance(v, float):
            return v
        s = self.fmt.format(v / self.div)
        if n < self.rounds:
            self.marked = True
            s += f" †{n}"
        return s

    def ratio(self, a: str, b: str) -> str:
        va, vb = self.value(a), self.value(b)
        return f"{va / vb:.2f}x" if va is not None and vb is not None else "—"


# -- table 1: sampler steps -------------------------------------------------------------------------

def ddpm_torch_coefs(sched, grid: torch.Tensor) -> List[Tuple[float, float, float, float, float]]:
    """Per step ``(α_s, σ_s, c1, c2, c3)`` of the DDPM posterior step (variance β̃) on ``grid``."""
    v = sched.eval(grid)
    a, s = v.alpha.to(torch.float64).tolist(), v.sigma.to(torch.float64).tolist()
    rows = []
    for i in range(len(a) - 1):
        emh = (a[i] * s[i + 1]) / (s[i] * a[i + 1])  # e^{-h}, h = λ_t − λ_s
        c3 = s[i + 1] * math.sqrt(1.0 - emh * emh) if i < len(a) - 2 else 0.0
        rows.append((a[i], s[i], s[i + 1] / s[i] * emh, a[i + 1] * (1.0 - emh * emh), c3))
    return rows


def sampler_rows(args, sizes, dev, dtype, sync, min_time, kds) -> Tuple[List[List[str]], bool]:
    sched = schedules.VPDiscrete(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    N = args.steps
    grid = diffcore.timesteps(sched, N)
    ev = sched.eval(grid)
    sigmas = (ev.sigma.to(torch.float64) / ev.alpha.to(torch.float64)).to(dev, dtype)  # k-diffusion's ρ grid
    coefs = ddpm_torch_coefs(sched, grid)
    specs = [  # (diffcore solver, diffusers class, diffusers options)
        ("ddpm", "DDPMScheduler", dict(clip_sample=False)),
        ("euler_ancestral", "EulerAncestralDiscreteScheduler", {}),
        ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=2)),
    ]
    rows: List[List[str]] = []
    marked = False
    torch.manual_seed(0)
    for name, cls_name, opts in specs:
        plan = solvers.get(name).plan(sched, grid, device=dev, dtype=dtype, prediction="eps")
        sch = diffusers_scheduler(cls_name, **opts)
        for n in sizes:
            x = torch.randn(BATCH, n // BATCH, device=dev, dtype=dtype)
            out = torch.randn_like(x)
            g = torch.Generator(device=dev).manual_seed(SEED)
            fns: Dict[str, Callable[[], object]] = {}

            def dc_loop(noise, plan=plan, x=x, out=out):
                st = plan.init_state(x, noise)
                for i in range(plan.num_steps):
                    plan.step(st, i, 0, out)

            fns["dc"] = lambda f=dc_loop: f(Noise(seed=SEED))
            if name == "dpmpp_2m_sde":
                fns["dcb"] = lambda f=dc_loop: f(Noise(seed=SEED, brownian=True))
            if not isinstance(sch, str):
                sch.set_timesteps(N, device=dev)
                if hasattr(sch, "is_scale_input_called"):
                    sch.is_scale_input_called = True
                restore = restorer(sch)
                tsteps = list(sch.timesteps)

                def df_loop(sch=sch, restore=restore, tsteps=tsteps, x=x, out=out, g=g):
                    restore()
                    s = x
                    for t in tsteps:
                        s = sch.step(out, t, s, generator=g, return_dict=False)[0]
                    return s

                fns["df"] = df_loop
            if name == "ddpm":
                def torch_loop(x=x, out=out, g=g):
                    for a_s, s_s, c1, c2, c3 in coefs:
                        x0 = (x - s_s * out) / a_s
                        x = c1 * x + c2 * x0
                        if c3:
                            x = x + c3 * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
                    return x

                fns["pt"] = torch_loop
            if kds is not None and name == "euler_ancestral":
                fns["kd"] = lambda x=x, out=out: kds.sample_euler_ancestral(lambda z, s: out, x, sigmas, disable=True)
            if kds is not None and name == "dpmpp_2m_sde":
                fns["kd"] = lambda x=x, out=out: kds.sample_dpmpp_2m_sde(
                    lambda z, s: out, x, sigmas, disable=True, noise_sampler=kds.default_noise_sampler(x))
                fns["kdb"] = lambda x=x, out=out: kds.sample_dpmpp_2m_sde(lambda z, s: out, x, sigmas, disable=True)
            with torch.no_grad():
                med = measure(fns, sync, min_time, args.rounds, args.slow_budget)
            if isinstance(sch, str):
                med["df"] = (sch, 0)
            if kds is None and name != "ddpm":
                med["kd"] = ("skipped", 0)
                if name == "dpmpp_2m_sde":
                    med["kdb"] = ("skipped", 0)
            c = Cells(med, args.rounds, div=N)
            rows.append([name, f"{n:,}", c.cell("dc"), c.cell("dcb"), c.cell("df"), c.cell("pt"), c.cell("kd"),
                         c.cell("kdb"), c.ratio("df", "dc"), c.ratio("pt", "dc"), c.ratio("kd", "dc"),
                         c.ratio("kdb", "dcb"), c.ratio("dcb", "dc")])
            marked |= c.marked
    return rows, marked


# -- table 2: Brownian sources; table 3: plain noise ------------------------------------------------

def brownian_rows(args, sizes, dev, dtype, sync, min_time, tsde) -> Tuple[List[List[str]], bool]:
    rows: List[List[str]] = []
    marked = False
    for n in sizes:
        shape = (BATCH, n // BATCH)
        for N in PASS_STEPS:
            pts = torch.linspace(0.0, 1.0, N + 1, dtype=torch.float64).tolist()
            pts[0], pts[-1] = 0.0, 1.0
            queries = [(pts[k], pts[k + 1]) for k in reversed(range(N))]  # sampler order: t = 1 → 0

            def dc_inc(shape=shape, queries=queries):
                tree = BrownianTree(0.0, 1.0, shape, seed=SEED, device=dev, dtype=dtype)
                for lo, hi in queries:
                    tree.increment(lo, hi)

            def dc_call(shape=shape, queries=queries):
                tree = BrownianTree(0.0, 1.0, shape, seed=SEED, device=dev, dtype=dtype)
                for lo, hi in queries:
                    tree(lo, hi)

            fns: Dict[str, Callable[[], object]] = {"inc": dc_inc, "call": dc_call}
            if tsde is not None:
                def bi(shape=shape, queries=queries):
                    bm = tsde.BrownianInterval(0.0, 1.0, size=shape, dtype=dtype, device=dev, entropy=SEED)
                    for lo, hi in queries:
                        bm(lo, hi)

                def bt(shape=shape, queries=queries):
                    bm = tsde.BrownianTree(0.0, torch.zeros(shape, device=dev, dtype=dtype), 1.0, entropy=SEED)
                    for lo, hi in queries:
                        bm(lo, hi)

                fns["bi"], fns["bt"] = bi, bt
            with torch.no_grad():
                med = measure(fns, sync, min_time, args.rounds, args.slow_budget)
            if tsde is None:
                med["bi"] = med["bt"] = ("skipped", 0)
            c = Cells(med, args.rounds, div=1e3, fmt="{:.2f}")
            rows.append([f"{n:,}", str(N), c.cell("inc"), c.cell("call"), c.cell("bi"), c.cell("bt"),
                         c.ratio("bi", "inc"), c.ratio("bt", "inc"), c.ratio("call", "inc")])
            marked |= c.marked
    return rows, marked


def plain_rows(args, sizes, dev, dtype, sync, min_time) -> List[List[str]]:
    rows = []
    for n in sizes:
        shape = (BATCH, n // BATCH)
        g = torch.Generator(device=dev).manual_seed(SEED)
        fns = {"ph": lambda shape=shape: philox_normal(shape, SEED, device=dev, dtype=dtype),
               "rn": lambda shape=shape, g=g: torch.randn(shape, generator=g, device=dev, dtype=dtype)}
        med = measure(fns, sync, min_time, args.rounds, args.slow_budget)
        c = Cells(med, args.rounds)
        rows.append([f"{n:,}", c.cell("ph"), c.cell("rn"), c.ratio("ph", "rn"),
                     f"{c.value('ph') * 1e3 / n:.2f}", f"{c.value('rn') * 1e3 / n:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="16×1024 only, --min-time 0.05")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"steps of the sampler loops (default {STEPS})")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per median (default 0.3, quick 0.05)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per median (default 3)")
    ap.add_argument("--slow-budget", type=float, default=10.0,
                    help="seconds of timed calls after which a slow entry takes no more samples (default 10)")
    ap.add_argument("--threads", type=int, default=None, help="torch and diffcore threads (default: as is)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the tables as JSON to PATH")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"# bench_sde: device {args.device} requested but CUDA is not available — skipped")
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        diffcore.set_num_threads(args.threads)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.3)
    sizes = QUICK_SIZES if args.quick else SIZES
    dtype = torch.float32
    sync = dev.type == "cuda"

    t_start = time.perf_counter()
    tsde = load_torchsde()
    kds, kd_how = load_k_diffusion()
    rows1, marked1 = sampler_rows(args, sizes, dev, dtype, sync, min_time, kds)
    rows2, marked2 = brownian_rows(args, sizes, dev, dtype, sync, min_time, tsde)
    rows3 = plain_rows(args, sizes, dev, dtype, sync, min_time)

    cmd = f"python bench/bench_sde.py --device {args.device}"
    for flag, val, default in (("--steps", args.steps, STEPS), ("--min-time", args.min_time, None),
                               ("--rounds", args.rounds, 3), ("--slow-budget", args.slow_budget, 10.0),
                               ("--threads", args.threads, None)):
        if val != default:
            cmd += f" {flag} {val}"
    if args.quick:
        cmd += " --quick"
    tsde_v = f"torchsde {version('torchsde')}" if tsde is not None else "torchsde not installed (skipped)"
    kd_v = f"k-diffusion {version('k-diffusion')} ({kd_how})" if kds is not None else f"k-diffusion skipped ({kd_how})"
    today = datetime.date.today()
    print(f"# stochastic sampler step — {today} — {args.device}, float32, batch {BATCH}, whole {args.steps}-step "
          f"loop / steps, model excluded (fixed output), VPDiscrete linear betas, eps model — {peer_version()}, {kd_v}")
    print(f"# {machine()}")
    print(f"# command: {cmd}")
    h1 = ["sampler", "elements", "diffcore µs/step", "diffcore brownian µs/step", "diffusers µs/step",
          "pure torch µs/step", "k-diffusion µs/step", "k-diffusion BT µs/step", "diffusers/diffcore",
          "torch/diffcore", "k-diffusion/diffcore", "k-diffusion BT/diffcore brownian", "diffcore brownian/diffcore"]
    print(table(h1, rows1))
    print("# diffcore: plan.init_state + plan.step per step (Philox in the kernel); brownian: "
          "Noise(seed, brownian=True), BrownianTree depth 20 over the plan's span")
    print("# k-diffusion: one sample_* call (its own loop, trivial model returning the fixed tensor) / steps; "
          "k-diffusion = noise_sampler=default_noise_sampler (torch.randn_like), BT = the default "
          "BrownianTreeNoiseSampler (torchsde.BrownianTree, tol 1e-6 over [σ_min, σ_max], built per call)")
    print("# diffusers: step(out, t, x, generator=g) over set_timesteps(N), state restored per loop (restore included)")
    if marked1:
        print("# †n: median of n < rounds timed calls (slow entry, see --slow-budget)")
    print()
    print(f"# Brownian noise for an N-step pass over [0, 1] (source built + N sequential queries, t = 1 → 0) — "
          f"{today} — {args.device}, float32, batch {BATCH} — {tsde_v}")
    print(f"# command: {cmd}")
    h2 = ["elements", "N", "diffcore .increment ms", "diffcore tree(ta, tb) ms", "torchsde BrownianInterval ms",
          "torchsde BrownianTree ms", "BrownianInterval/diffcore", "BrownianTree/diffcore", "tree()/increment"]
    print(table(h2, rows2))
    print("# diffcore BrownianTree depth 20 (leaf 9.5e-7); BrownianInterval: torchsde defaults (tol 0, halfway_tree=False);"
          " BrownianTree: torchsde defaults = k-diffusion's (tol 1e-6, pool_size 24, halfway_tree=True); "
          "ratios vs diffcore .increment")
    if marked2:
        print("# †n: median of n < rounds timed calls (slow entry, see --slow-budget)")
    print()
    isas = getattr(diffcore._ops._core, "noise_isas", None)
    isa = f", CPU generator variant {isas()[1]}" if isas is not None and dev.type == "cpu" else ""
    print(f"# plain normal noise, one draw — {today} — {args.device}, float32, batch {BATCH}{isa}")
    print(f"# command: {cmd}")
    h3 = ["elements", "diffcore philox_normal µs", "torch.randn µs", "philox/randn", "philox ns/element",
          "randn ns/element"]
    print(table(h3, rows3))
    print(f"# total run time {time.perf_counter() - t_start:.0f} s")
    dump_json(args.json, "bench_sde.py", cmd, {"sampler": (h1, rows1), "brownian": (h2, rows2), "noise": (h3, rows3)},
              peers={"diffusers": peer_version(), "k-diffusion": kd_v, "torchsde": tsde_v})


if __name__ == "__main__":
    main()
