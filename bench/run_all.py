"""Run every ``bench/bench_*.py`` script and write ``bench/RESULTS.md`` plus PNG plots in ``bench/plots/``.

One command for the whole benchmark report::

    python bench/run_all.py [--quick] [--device cpu|cuda] [--only step,loop] [--out DIR] [--timeout S]

Each script runs as a subprocess (``sys.executable``, working directory the repository root) with the
command line recorded in the report: ``--quick`` and ``--device`` are passed to the scripts that take
them, and the scripts whose numbers are plotted get ``--json PATH`` (the tables they print, as numbers;
``common.dump_json``). The report (``DIR/RESULTS.md``, default ``bench/``) has a header (date, CPU
model and cores, load average, torch, ``diffcore.build_info()``, GPU, peer versions, the exact
command), then per script: the first paragraph of its module docstring, its ``Notes:`` section (the
commentary that belongs with the numbers), its command, its wall time and its printed output verbatim
(tables unchanged; ``# …`` comment lines set as text blocks and ``##`` headings demoted two levels so
they nest under the script's section). Plots (matplotlib, Agg) go to ``DIR/plots/``:

* ``error_vs_nfe.png`` — bench_error_nfe.py: RMS error vs NFE, one log-log panel per schedule, one
  line per solver;
* ``speed_vs_diffusers.png`` — bench_step.py (one step), bench_loop.py (whole loop with an MLP) and
  bench_sde.py (stochastic steps): diffusers time / diffcore time;
* ``speed_vs_k_diffusion.png`` — bench_sde.py: k-diffusion's ``sample_*`` loops / diffcore;
* ``speed_vs_torchsde.png`` — bench_sde.py: torchsde Brownian sources / diffcore's ``BrownianTree``;
* ``speed_vs_pot.png`` — bench_ot.py: POT (and scipy) Sinkhorn / assignment / diffcore;
* ``overhead.png`` — bench_overhead.py: the fused kernel's time vs its references and the copy floor.

A plot whose script did not run (``--only``) or whose peer is not installed is left out. Raw output
(each script's stdout, stderr and JSON) is kept in ``DIR/out/`` (git-ignored for ``bench/``). A script
that fails is reported in its section with the tail of its stderr; the command then exits with status 1
after writing the report.

Full-run times of the scripts (default options, CPU, the project's 2-core development machine; the
report records each run's own wall time next to these):

=====================  ==========================================================================
bench_overhead.py      ≈ 10 s (5 sizes × 4 entries × 0.3 s; ``--quick`` ≈ 4 s)
bench_step.py          ≈ 3 min, estimated (18 solvers × 4 sizes × 5 entries × 0.3 s plus warm-up)
bench_loop.py          ≈ 1 min, estimated (16 rows × 5 entries × 0.3 s plus the batch-1024 loops)
bench_sde.py           327 s (measured 2026-11-23)
bench_error_nfe.py     a few minutes, estimated (``--quick``: 26 s under load); the orders table
                       (order studies N = 128…1024 of 16 solvers) is most of it
bench_v3.py            ≈ 1 min on a quiet machine (statistics 1.7 s + 17.1 s by quadrature, 3.4 s +
                       10.1 s estimated, 2026-11-23, plus the solves)
bench_adaptive.py      ≈ 1 min, estimated (``--quick``: 44 s under load)
bench_parallel.py      ≈ 20 s (measured 2026-11-23)
bench_ot.py            173 s (measured 2026-11-23, load average 1.3–1.8)
bench_threads.py       ≈ 70 s (measured 2026-12-07, load average ≈ 6; ``--quick`` ≈ 20 s)
bench_distill.py       4 min 18 s wall (measured 2026-11-23; 2000 iterations per method)
=====================  ==========================================================================

``--quick`` runs the whole suite as a smoke test: 18 min wall (6 min of CPU) on 2026-11-23 with three
other engineers' jobs on the 2-core machine (load average ≈ 6); each run prints its total at the end and
writes it into the report's header.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
# report order: kernels, then solvers' speed, then accuracy, then the other subsystems
ORDER = ["overhead", "step", "loop", "sde", "error_nfe", "v3", "adaptive", "parallel", "ot", "threads", "distill"]
PEERS = ["diffusers", "k-diffusion", "torchsde", "POT", "scipy", "numpy", "matplotlib"]


# ---- discovery and commands ---------------------------------------------------------------------

def discover() -> Dict[str, pathlib.Path]:
    """``{short name: path}`` of every ``bench/bench_*.py``, in report order (unknown names last)."""
    found = {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py"))}
    return {k: found[k] for k in sorted(found, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))}


def _flags(src: str) -> set:
    """The ``--option`` names a script's argument parser declares (read from its source, not imported)."""
    return set(re.findall(r"add_argument\(\s*[\"'](--[a-z][a-z-]*)[\"']", src))


def docstring_parts(src: str) -> tuple:
    """``(first paragraph, notes)`` of a module docstring; ``notes`` is the text after a line ``Notes:``
    (to the end of the docstring), ``""`` when there is none."""
    doc = ast.get_docstring(ast.parse(src)) or ""
    first = doc.split("\n\n")[0].strip()
    m = re.search(r"^Notes:\s*\n(.*)", doc, re.S | re.M)
    return first, (m.group(1).strip() if m else "")


def command(path: pathlib.Path, quick: bool, device: Optional[str], json_path: Optional[pathlib.Path]) -> List[str]:
    """The argument list for one script: only the options its parser declares are passed."""
    flags = _flags(path.read_text(encoding="utf-8"))
    cmd = [sys.executable, str(path.relative_to(ROOT))]
    if device is not None and "--device" in flags:
        cmd += ["--device", device]
    if quick and "--quick" in flags:
        cmd.append("--quick")
    if json_path is not None and "--json" in flags:
        cmd += ["--json", str(json_path)]
    return cmd


def shown(cmd: List[str]) -> str:
    """The command as a user types it: ``python`` for the interpreter, no ``--json`` output path."""
    out, skip = ["python"], False
    for a in cmd[1:]:
        if skip:
            skip = False
            continue
        if a == "--json":
            skip = True
            continue
        out.append(shlex.quote(a))
    return " ".join(out)


# ---- machine description ------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device: Optional[str]) -> List[str]:
    import importlib.metadata  # noqa: PLC0415

    import torch  # noqa: PLC0415

    import diffcore  # noqa: PLC0415

    info = diffcore.build_info()
    lines = [f"CPU: {cpu_model()}, {os.cpu_count()} logical cores ({platform.system()} {platform.machine()}, "
             f"Python {platform.python_version()})"]
    if hasattr(os, "getloadavg"):
        lines.append("load average at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"GPU: {names} (CUDA {torch.version.cuda})")
    else:
        lines.append("GPU: none")
    lines.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    lines.append("diffcore build_info(): " + ", ".join(f"{k}={v}" for k, v in info.items()))
    vers = []
    for dist in PEERS:
        try:
            vers.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            vers.append(f"{dist} not installed")
    lines.append("peers: " + ", ".join(vers))
    lines.append(f"device requested: {device or 'each script’s default'}")
    return lines


# ---- the report ---------------------------------------------------------------------------------

def as_markdown(stdout: str) -> str:
    """A script's output for the report: table and text lines unchanged, runs of ``# …`` comment lines
    in a text block (they are not headings), ``##``+ headings two levels deeper, a blank line before each
    table so that every markdown renderer starts one there."""
    out: List[str] = []
    comments: List[str] = []

    def flush():
        if comments:
            out.extend(["", "```text", *comments, "```", ""])
            comments.clear()

    for line in stdout.rstrip().splitlines():
        if line.startswith("# ") or line == "#":
            comments.append(line)
            continue
        flush()
        if re.match(r"^#{2,4} ", line):
            out.append("##" + line)
        elif line.startswith("|") and out and out[-1].strip() and not out[-1].startswith("|"):
            out.extend(["", line])
        else:
            out.append(line)
    flush()
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def write_report(path: pathlib.Path, argv_cmd: str, header: List[str], results: List[dict], plots: List[str],
                 total_s: float) -> None:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = ["# Benchmark results", "",
          f"Generated by `{argv_cmd}` on {now} (total {total_s:.0f} s). Do not edit by hand: the commentary "
          "belongs in each script's module docstring (its first paragraph and its `Notes:` section are "
          "copied here), the numbers come from the run.", "", "## Machine", ""]
    md += [f"- {ln}" for ln in header]
    md += ["", "## Contents", "", "| script | wall time | status |", "|---|---|---|"]
    for r in results:
        anchor = r["name"].replace(".", "")
        md.append(f"| [{r['name']}](#{anchor}) | {r['wall']:.1f} s | {r['status']} |")
    if plots:
        md += ["", "## Plots", ""]
        for p in plots:
            md += [f"![{p}](plots/{p})", ""]
    for r in results:
        md += ["", f"## {r['name']}", "", r["description"], ""]
        if r["notes"]:
            md += ["Notes (from the script's docstring): " + r["notes"], ""]
        md += [f"Command: `{r['command']}` — wall time {r['wall']:.1f} s — {r['status']}", ""]
        if r["stdout"].strip():
            md += [as_markdown(r["stdout"]), ""]
        if r["status"] != "ok":
            md += ["stderr (tail):", "", "```text", r["stderr"][-3000:].rstrip(), "```", ""]
    path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")


# ---- plots --------------------------------------------------------------------------------------

def _records(data: dict, script: str, table: str) -> List[dict]:
    return data.get(script, {}).get("tables", {}).get(table, {}).get("records", [])


def _num(v) -> Optional[float]:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _bars(ax, groups: List[str], series: Dict[str, List[Optional[float]]], title: str) -> bool:
    """Grouped bars of peer/diffcore ratios on a log axis with the parity line; False when all are missing."""
    import numpy as np  # noqa: PLC0415

    series = {k: v for k, v in series.items() if any(_num(x) is not None and x > 0 for x in v)}
    if not series:
        return False
    x = np.arange(len(groups))
    w = 0.8 / len(series)
    for j, (label, vals) in enumerate(series.items()):
        ys = [v if _num(v) is not None and v > 0 else np.nan for v in vals]
        ax.bar(x - 0.4 + w * (j + 0.5), ys, w, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("peer time / diffcore time\n(> 1: diffcore faster)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", which="both", alpha=0.3)
    return True


def _by_size(recs: List[dict], key: str, size_key: str, col: str, label: str) -> tuple:
    """Groups = values of ``key``; one series per value of ``size_key`` with the ratio ``col``."""
    groups = list(dict.fromkeys(str(r[key]) for r in recs))
    sizes = list(dict.fromkeys(r[size_key] for r in recs))
    series = {}
    for s in sizes:
        vals = {str(r[key]): r.get(col) for r in recs if r[size_key] == s}
        name = f"{int(s):,}" if _num(s) is not None else str(s)
        series[f"{label} {name}"] = [vals.get(g) for g in groups]
    return groups, series


def _save(fig, path: pathlib.Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def make_plots(data: dict, plot_dir: pathlib.Path) -> List[str]:
    """Write every plot the available data supports; returns the file names written."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plot_dir.mkdir(parents=True, exist_ok=True)
    made: List[str] = []

    def panels(specs, name, ncols=1, size=(9.0, 3.6)):
        specs = [s for s in specs if s is not None]
        if not specs:
            return
        nrows = (len(specs) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(size[0], size[1] * nrows), squeeze=False)
        drawn = 0
        for ax, (groups, series, title) in zip(axes.flat, specs):
            drawn += _bars(ax, groups, series, title)
        for ax in list(axes.flat)[len(specs):]:
            ax.set_visible(False)
        if drawn:
            _save(fig, plot_dir / name)
            made.append(name)
        plt.close(fig)

    # error vs NFE
    errors = data.get("error_nfe", {}).get("errors")
    if errors:
        n = len(errors)
        ncols = 2 if n > 1 else 1
        nrows = (n + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), squeeze=False)
        cmap = plt.get_cmap("tab20")
        markers = "os^vD<>ph*XP"
        for ax, (sched, solvers) in zip(axes.flat, errors.items()):
            for k, (solver, cells) in enumerate(solvers.items()):
                pts = [(c["nfe"], c["error"]) for c in cells if c.get("nfe") and c.get("error")]
                if pts:
                    ax.plot(*zip(*pts), marker=markers[k % len(markers)], ms=4, lw=1.2, color=cmap(k % 20),
                            label=solver)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE (model evaluations)")
            ax.set_ylabel("RMS error vs reference flow")
            ax.set_title(sched, fontsize=10)
            ax.grid(which="both", alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center right", fontsize=7)
        fig.tight_layout(rect=(0, 0, 0.83, 1))
        fig.savefig(plot_dir / "error_vs_nfe.png", dpi=110)
        plt.close(fig)
        made.append("error_vs_nfe.png")

    step = _records(data, "step", "step")
    loop = _records(data, "loop", "loop")
    sde = _records(data, "sde", "sampler")
    brown = _records(data, "sde", "brownian")
    sink = _records(data, "ot", "sinkhorn")
    assign = _records(data, "ot", "assignment")

    specs = []
    if step:
        g, s = _by_size(step, "solver", "elements", "diffusers/fused", "elements")
        specs.append((g, s, "one solver step: diffusers scheduler.step / diffcore fused step (bench_step.py)"))
    if loop:
        groups = [f"{r['solver']} B={int(r['batch'])} N={int(r['steps'])}" for r in loop]
        specs.append((groups, {"whole loop": [r.get("diffusers/sample() loop") for r in loop],
                               "overhead per step": [r.get("diffusers/sample() overhead") for r in loop]},
                      "sampling loop with an MLP: diffusers / diffcore.sample (bench_loop.py)"))
    if sde:
        g, s = _by_size(sde, "sampler", "elements", "diffusers/diffcore", "elements")
        specs.append((g, s, "stochastic step: diffusers / diffcore (bench_sde.py)"))
    panels(specs, "speed_vs_diffusers.png")

    if sde:
        g, s1 = _by_size(sde, "sampler", "elements", "k-diffusion/diffcore", "randn noise,")
        _, s2 = _by_size(sde, "sampler", "elements", "k-diffusion BT/diffcore brownian", "Brownian tree,")
        panels([(g, {**s1, **s2}, "stochastic samplers: k-diffusion sample_* loop / diffcore (bench_sde.py)")],
               "speed_vs_k_diffusion.png")
    if brown:
        groups = [f"{int(r['elements']):,} el., N={int(r['N'])}" for r in brown]
        panels([(groups, {"torchsde BrownianInterval": [r.get("BrownianInterval/diffcore") for r in brown],
                          "torchsde BrownianTree": [r.get("BrownianTree/diffcore") for r in brown]},
                 "Brownian noise for an N-step pass: torchsde / diffcore BrownianTree (bench_sde.py)")],
               "speed_vs_torchsde.png")
    specs = []
    if sink:
        groups = [f"n={int(r['n'])} B={int(r['B'])}" for r in sink]
        specs.append((groups, {"POT sinkhorn": [r.get("POT sinkhorn / dc") for r in sink],
                               "POT sinkhorn_log": [r.get("POT log / dc") for r in sink]},
                      "Sinkhorn, ε = 0.01: POT / diffcore (bench_ot.py)"))
    if assign:
        groups = [f"{r['cost']} n={int(r['n'])} B={int(r['B'])}" for r in assign]
        specs.append((groups, {"POT emd": [r.get("POT emd / dc") for r in assign],
                               "scipy linear_sum_assignment": [r.get("scipy / dc") for r in assign]},
                      "exact assignment: POT emd and scipy / diffcore (bench_ot.py)"))
    panels(specs, "speed_vs_pot.png")

    ov = _records(data, "overhead", "overhead")
    if ov:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        xs = [r["elements"] for r in ov]
        for col, label in (("fused µs", "diffcore fused lincomb"), ("torch ref µs", "diffcore torch reference"),
                           ("eager µs", "best eager torch"), ("copy_ floor µs", "copy_ of the same bytes")):
            ys = [r.get(col) for r in ov]
            if all(_num(y) is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel("µs per call (median)")
        ax.set_title("fused linear-combination step (bench_overhead.py)", fontsize=9)
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, plot_dir / "overhead.png")
        plt.close(fig)
        made.append("overhead.png")
    return made


# ---- main ---------------------------------------------------------------------------------------

def parse_only(value: Optional[str], available: Dict[str, pathlib.Path]) -> List[str]:
    if not value:
        return list(available)
    names = []
    for tok in re.split(r"[,\s]+", value.strip()):
        if not tok:
            continue
        key = tok.removesuffix(".py").removeprefix("bench/").removeprefix("bench_")
        if key not in available:
            raise SystemExit(f"run_all.py: --only: unknown script {tok!r}; expected names from "
                             f"{', '.join(available)} (comma-separated)")
        names.append(key)
    return names


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script that has it")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="pass --device to the scripts that take it (default: each script's own default)")
    ap.add_argument("--only", default=None, help="comma-separated subset, e.g. overhead,step (default: all)")
    ap.add_argument("--out", default=str(HERE), help="folder for RESULTS.md, plots/ and out/ (default: bench/)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per script (default: none)")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            raise SystemExit("run_all.py: --device cuda: no CUDA device is available to torch on this machine")
    scripts = discover()
    names = parse_only(args.only, scripts)
    out = pathlib.Path(args.out).resolve()
    raw = out / "out"
    raw.mkdir(parents=True, exist_ok=True)
    shown_argv = "python bench/run_all.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                    else argv))
    header = machine_lines(args.device) + [f"command: `{shown_argv}`"]
    results, data = [], {}
    t_all = time.perf_counter()
    for k, name in enumerate(names, 1):
        path = scripts[name]
        src = path.read_text(encoding="utf-8")
        description, notes = docstring_parts(src)
        json_path = raw / f"{path.stem}.json"
        json_path.unlink(missing_ok=True)
        cmd = command(path, args.quick, args.device, json_path)
        print(f"[{k}/{len(names)}] {shown(cmd)} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout, check=False)
            stdout, stderr, status = proc.stdout, proc.stderr, ("ok" if proc.returncode == 0
                                                                else f"failed (exit code {proc.returncode})")
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            status = f"timed out after {args.timeout:g} s"
        wall = time.perf_counter() - t0
        print(f"      {wall:.1f} s, {status}", file=sys.stderr, flush=True)
        (raw / f"{path.stem}.stdout.txt").write_text(stdout, encoding="utf-8")
        (raw / f"{path.stem}.stderr.txt").write_text(stderr, encoding="utf-8")
        if status == "ok" and json_path.exists():
            data[name] = json.loads(json_path.read_text(encoding="utf-8"))
        results.append({"name": path.name, "description": description, "notes": notes, "command": shown(cmd),
                        "wall": wall, "status": status, "stdout": stdout, "stderr": stderr})
    total = time.perf_counter() - t_all
    plots = make_plots(data, out / "plots")
    write_report(out / "RESULTS.md", shown_argv, header, results, plots, total)
    print(f"wrote {out / 'RESULTS.md'} and {len(plots)} plots in {out / 'plots'} ({total:.0f} s)", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
