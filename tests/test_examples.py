"""Every ``examples/*.py`` runs in its CI configuration (``--quick --out DIR``) as a user runs it (a
subprocess of this interpreter), and one figure of each is held to a bound derived outside the example
(closed form, a peer library, or a convergence property). Also ``bench/run_all.py`` on a tiny subset.

An example without a check below fails ``test_every_example_has_a_check``: adding one means adding its
check here.
"""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest
import torch

from diffcore import data, metrics, oracles
from diffcore.train.quality import held_out, projections

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
PNG = b"\x89PNG\r\n\x1a\n"


def _run(args, tmp_path, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def _example(name, tmp_path):
    out = tmp_path / "out"
    stdout = _run([str(ROOT / "examples" / f"{name}.py"), "--quick", "--out", str(out)], tmp_path)
    print(stdout)
    return out, (json.loads((out / "figures.json").read_text()) if (out / "figures.json").exists() else None)


def _png(path: pathlib.Path):
    import matplotlib.image as mpimg  # noqa: PLC0415

    assert path.is_file() and path.read_bytes()[:8] == PNG, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    return img


def check_sample_oracle(out, fig):
    _png(out / "samples.png")
    err = {(r["solver"], r["nfe"]): r["rms_error"] for r in fig["errors"]}
    # convergence: doubling the NFE at least halves the error of every solver of order ≥ 2 (ratio 4 ideal;
    # measured 4.6–13.5 at NFE 10 → 20), and each beats first-order Euler at NFE 20 (6.4e-2)
    for s in ("heun", "dpmpp_2m", "unipc_2", "dpmpp_3m", "deis_3", "ipndm"):
        assert err[(s, 20)] < 0.5 * err[(s, 10)], (s, err[(s, 10)], err[(s, 20)])
        assert err[(s, 20)] < err[("euler", 20)], s
    # the exact flow carries the prior to the mixture: the sample mean of n draws is within 4 standard
    # errors sqrt(tr Cov / n) of the closed-form mean (measured 1.06 SE for 50-step DPM-Solver++(3M))
    mix = oracles.toy_2d_mixture()
    d = fig["distribution"]
    se = math.sqrt(float(torch.trace(mix.cov)) / d["n"])
    assert d["mean_standard_error"] == pytest.approx(se, rel=1e-12)
    for label in ("dpmpp_3m (50 steps)", "dpmpp_2m_sde (50 steps)"):
        assert d[label]["mean_error"] < 4 * se, (label, d[label])


def check_train_flow_matching(out, fig):
    _png(out / "samples.png")
    assert (out / "checkpoint.pt").is_file()
    assert fig["loss_last100"] < fig["loss_first100"]
    # the prior N(0, I) against held-out moons, computed here: what an untrained model scores (≈ 0.55);
    # 800 training steps must cut it by more than 2.5x (measured 0.11 / 0.10 for Heun / DPM-Solver++(2M))
    moons = data.get("two_moons")
    n = fig["heun"]["n"]
    prior = torch.randn(n, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sw_prior = float(metrics.sliced_wasserstein(prior, held_out(moons, n, 123), projections=projections(2)))
    for solver in ("heun", "dpmpp_2m"):
        assert fig[solver]["sw"] < 0.4 * sw_prior, (solver, fig[solver]["sw"], sw_prior)


def check_ot_coupling(out, fig):
    _png(out / "pairs.png")
    # the optimal total, recomputed here with scipy on the example's own (seeded) minibatch
    scipy_opt = pytest.importorskip("scipy.optimize")
    from diffcore import ot  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    n = fig["n"]
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = data.get("two_moons").sample(n, generator=g, dtype=torch.float64)
    C = ot.squared_euclidean(x, y).numpy()
    r, c = scipy_opt.linear_sum_assignment(C)
    assert fig["assignment_cost"] == pytest.approx(float(C[r, c].sum()), rel=1e-12)
    pc = fig["pair_cost"]
    assert pc["exact OT (OT-CFM)"] == pytest.approx(fig["assignment_cost"] / n, rel=1e-12)
    # an entropic plan cannot transport more cheaply than the optimum; independent pairs cost E‖x − y‖²
    assert fig["sinkhorn"]["transport_cost"] >= fig["assignment_cost"] / n - 1e-12
    assert fig["sinkhorn"]["marginal_error"] < 1e-8
    assert pc["independent (I-CFM)"] > 3 * pc["exact OT (OT-CFM)"]
    # straighter OT-CFM flows: 2 Euler steps land far closer to the data (measured SW 0.11 vs 0.67)
    assert fig["sw"]["OT-CFM"]["euler_2"] < 0.5 * fig["sw"]["I-CFM"]["euler_2"]


def check_k_diffusion_style(out, fig):
    rows = {(r["function"], r["steps"]): r for r in fig["rows"]}
    for r in fig["rows"]:
        assert r["max_diff_sample"] <= 1e-12, r  # the same method as diffcore.sample on the same sigmas
        if r["max_diff_k_diffusion"] is not None:
            assert r["max_diff_k_diffusion"] <= 1e-10, r  # k-diffusion's own function, float64
    # second-order methods: 10 → 20 steps cuts the error more than 3x (measured 5.1x, 4.9x); Euler ~2x
    for f in ("sample_heun", "sample_dpmpp_2m"):
        assert rows[(f, 20)]["rms_error"] < rows[(f, 10)]["rms_error"] / 3, f
        assert rows[(f, 20)]["rms_error"] < rows[("sample_euler", 20)]["rms_error"], f


def check_diffusers_dropin(out, fig):
    pytest.importorskip("diffusers")
    _png(out / "images.png")
    first = fig["rows"][0]
    assert first["solver"] == "dpmpp_2m"
    # the issue's bound against diffusers' own DPMSolverMultistepScheduler (images in [0, 1]; measured 1.1e-6)
    assert first["max_abs_diff_vs_diffusers_dpmpp_2m"] <= 1e-4


def check_schrodinger_bridge(out, fig):
    _png(out / "bridge.png")
    # exact Gaussian IPF: linear convergence to the closed-form coupling (test_bridge checks the closed form
    # against the Schrödinger product form); DSB ends far closer to the target than the reference chain
    # (mean error |m1 − m0| = 1.41); the §7.5 flow map is a non-symmetric matrix costing more than W2²
    e = fig["ipf_errors"]
    assert e[0] > 0.5 and e[-1] < 1e-12 and all(b < a or a < 1e-13 for a, b in zip(e, e[1:]))
    last = fig["dsb"][-1]
    assert last["mean_error"] < fig["reference_mean_error"] / 3, last
    assert last["cov_error"] < 0.3 and last["cross_error"] < 0.25, last
    assert fig["flow_cost"] > fig["w2"] + 1e-3 and fig["flow_asymmetry"] > 0.05 and fig["ot_map_asymmetry"] < 1e-12


def check_digits_distill(out, fig):
    for name in ("teacher_50.png", "teacher_2.png", "student_2.png"):
        _png(out / name)
    rows = {(r["method"], r["nfe"]): r for r in fig["rows"]}
    t50, t2, s2 = rows[("teacher", 50)], rows[("teacher", 2)], rows[("student (PD)", 2)]
    assert fig["classifier_test_acc"] > 0.9
    assert t50["traj"] == 0.0  # the reference of the trajectory error is the 50-step teacher itself
    # the 2-step student follows the teacher's 50-step ODE solution far better than 2 naive teacher
    # steps on the same grid (measured 0.129 vs 0.228 RMS per pixel) ...
    assert s2["traj"] < 0.75 * t2["traj"]
    # ... and is closer to held-out digits in pixel-space sliced W2 (measured 0.134 vs 0.159)
    assert s2["sw"] < t2["sw"]


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_example_has_a_check():
    assert set(EXAMPLES) <= set(CHECKS), sorted(set(EXAMPLES) - set(CHECKS))


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_quick(name, tmp_path):
    if name == "diffusers_dropin" and importlib.util.find_spec("diffusers") is None:
        pytest.skip("diffusers is not installed")
    out, fig = _example(name, tmp_path)
    CHECKS[name](out, fig)


def test_run_all_writes_report_and_plots(tmp_path):
    """``bench/run_all.py --only overhead --quick``: the report carries the script's table verbatim, its
    description and command, the machine header; the JSON numbers equal the printed ones; the plot is a
    readable PNG."""
    out = tmp_path / "report"
    _run([str(ROOT / "bench" / "run_all.py"), "--only", "overhead", "--quick", "--out", str(out)], tmp_path)
    md = (out / "RESULTS.md").read_text()
    header = "| elements | fused µs | torch ref µs | eager µs | copy_ floor µs | ref/fused | eager/fused | fused/floor |"
    assert header in md
    assert "## bench_overhead.py" in md and "Call overhead and bandwidth of the fused linear-combination kernel" in md
    assert "Command: `python bench/bench_overhead.py --quick`" in md
    assert f"torch {torch.__version__}" in md and "diffcore build_info(): version=" in md
    lines = md[md.index(header):].splitlines()[2:5]
    assert [ln.split(" | ")[0] for ln in lines] == ["| 16", "| 2,048", "| 16,384"]  # the --quick sizes
    rec = json.loads((out / "out" / "bench_overhead.json").read_text())["tables"]["overhead"]["records"]
    for line, r in zip(lines, rec):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[1]) == r["fused µs"] and float(cells[2]) == r["torch ref µs"]
        # the printed ratio is the ratio of the printed medians (to their 2-decimal rounding)
        assert r["ref/fused"] == pytest.approx(r["torch ref µs"] / r["fused µs"], rel=0.01, abs=0.01)
    img = _png(out / "plots" / "overhead.png")
    assert img.shape[1] > img.shape[0]  # a landscape figure
    assert "![overhead.png](plots/overhead.png)" in md
