"""The README's Quick start is what CI runs (DEVELOPERS.md: `.ci/run` runs that same test command)."""
import pathlib
import re

import torch

import diffcore

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quick_start_lines():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^#+ .*[Qq]uick[ -]?[Ss]tart.*?\n```bash\n(.*?)```", text, re.S | re.M)
    assert m, "README.md needs a 'Quick start' heading followed by a ```bash block"
    return [ln.strip() for ln in m.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_ci_runs_the_readme_test_command():
    lines = _quick_start_lines()
    assert len(lines) == 2, lines
    install_demo, tests = lines
    assert "diffcore.demo" in install_demo and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci


def _run_readme(pattern: str, what: str) -> dict:
    """Execute the README code blocks captured by ``pattern``'s groups, in order, in one namespace."""
    m = re.search(pattern, (ROOT / "README.md").read_text(), re.S)
    assert m, f"README.md lost its {what} snippet"
    namespace: dict = {}
    for block in m.groups():
        exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_readme_usage_snippet_runs():
    ns = _run_readme(r"## What is there\n\n```python\n(.*?)```", "usage")
    assert ns["x0"].shape == (1000, 2)


def test_readme_step_kernel_snippet_runs():
    ns = _run_readme(r"## The step kernel\n.*?```python\n(.*?)```", "step kernel")
    # out = c0·x + c1·ring[0] + c2·ring[1] with all c = 1, after `new` is written into slot 0
    assert torch.allclose(ns["out"], ns["x"] + ns["m"], atol=1e-15)


def test_readme_opens_with_sampling_a_diffusers_model_and_training_a_flow_model():
    text = (ROOT / "README.md").read_text()
    heads = re.findall(r"^## (.*)$", text, re.M)
    assert heads[:3] == ["Sample a diffusers model", "Train a flow model", "Quick start"], heads[:3]
    for head in heads[:2]:  # "ten lines each": the first code block of each, comments and blanks aside
        block = re.search(rf"## {head}\n\n```python\n(.*?)```", text, re.S).group(1)
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert len(lines) <= 16, (head, len(lines))
    assert "lincomb" not in text[:text.index("## Development install")]


def test_readme_sample_a_diffusers_model_runs(one_thread):
    import pytest  # noqa: PLC0415

    pytest.importorskip("diffusers")
    ns = _run_readme(r"## Sample a diffusers model\n\n```python\n(.*?)```", "sample a diffusers model")
    assert ns["images"].shape == (2, 8, 8, 3)
    assert ns["x"].shape == (2, 3, 8, 8) and bool(torch.isfinite(ns["x"]).all())


def test_readme_train_a_flow_model_runs(tmp_path, monkeypatch, one_thread):
    import shlex  # noqa: PLC0415

    from diffcore import cli  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)
    ns = _run_readme(r"## Train a flow model\n\n```python\n(.*?)```", "train a flow model")
    assert ns["trainer"].step == 300 and ns["xs"].shape == (1000, 2)
    assert (tmp_path / "runs" / "moons_py" / "checkpoint.pt").is_file()  # the final checkpoint
    m = re.search(r"## Train a flow model\n.*?```bash\n(.*?)```\n\n```python\n(.*?)```",
                  (ROOT / "README.md").read_text(), re.S)
    (cmd,) = [ln.split("#")[0] for ln in m.group(1).splitlines() if ln.strip()]
    argv = shlex.split(cmd)[1:]
    argv[argv.index("--steps") + 1] = "20"  # the command as written, cut short
    assert cli.main(argv + ["--no-progress"]) == 0
    ns = {"diffcore": diffcore}
    exec(compile(m.group(2), "README.md", "exec"), ns)
    assert ns["m"].prediction == "velocity" and ns["m"].step == 20 and ns["xs"].shape == (2000, 2)


def test_readme_sampling_snippets_run():
    ns = _run_readme(r"## Sampling\n\n```python\n(.*?)```", "sampling")
    assert ns["x0"].shape == (512, 2) and ns["z"].shape == (512, 2)
    ns = _run_readme(r"## Sampling\n\n```python\n(.*?)```.*?```python\n(.*?)```", "plan / execute")
    assert ns["x0"].shape == (512, 2)


def test_readme_stochastic_snippet_runs():
    ns = _run_readme(r"## Sampling\n\n```python\n(.*?)```.*?### Stochastic sampling\n.*?```python\n(.*?)```",
                     "stochastic-sampling")
    assert torch.allclose(ns["part"], ns["xs"][100:104], atol=1e-6)
    assert ns["xb"].shape == (512, 2)


def test_readme_likelihood_snippet_runs():
    ns = _run_readme(r"## Likelihood\n\n```python\n(.*?)```", "likelihood")
    assert ns["logp"].shape == (64,) and ns["bpd"].shape == (64,)


def test_readme_training_snippet_runs():
    ns = _run_readme(r"## Training\n\n```python\n(.*?)```", "training")
    assert ns["xs"].shape == (1000, 2)
    assert ns["trainer"].step == 200


def test_readme_ot_snippet_runs():
    ns = _run_readme(r"### Optimal transport\n\n```python\n(.*?)```", "optimal transport")
    assert bool(ns["res"].converged) and float(ns["res"].marginal_error) <= 1e-9
    assert ns["perm"].shape == (256,) and ns["y1p"].shape == (256, 2)


def test_readme_parallel_snippet_runs():
    ns = _run_readme(r"### Parallel-in-time sampling \(Picard\)\n\n```python\n(.*?)```", "parallel sampling")
    assert 0 < len(ns["rounds"]) < 100
    assert float((ns["par"] - ns["seq"]).pow(2).mean().sqrt()) < 1e-2


def test_readme_v3_and_adaptive_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = _run_readme(r"### DPM-Solver-v3 \(empirical model statistics\)\n\n```python\n(.*?)```.*?"
                     r"### Adaptive steps per sample\n\n```python\n(.*?)```", "v3 / adaptive")
    assert ns["x0"].shape == (256, 2) and ns["info"]["nfe"].shape == (256,)
    assert int(ns["info"]["nfe"].min()) < int(ns["info"]["nfe"].max())


def test_readme_guidance_distillation_snippet_runs():
    ns = _run_readme(r"## Guidance and distillation\n\n```python\n(.*?)```", "guidance / distillation")
    assert ns["post"].shape == (256, 2) and ns["x0"].shape == (256, 2)
    # the measured coordinate moves to the observation (measured: mean |error| 0.22 vs 1.66 unguided)
    unc = diffcore.sample(ns["teacher"], ns["xT"], ns["sched"], solver="ddim", steps=50)
    err = lambda x: (x[:, 0] - ns["x_true"][0, 0]).abs().mean()  # noqa: E731
    assert err(ns["post"]) < 0.3 * err(unc)


def test_readme_diffusers_dropin_snippet_runs():
    import pytest  # noqa: PLC0415

    pytest.importorskip("diffusers")
    ns = _run_readme(r"### diffusers schedulers\n\n```python\n(.*?)```", "diffusers drop-in")
    assert ns["images"].shape == (2, 8, 8, 3)
    sched, worker = ns["pipe"].scheduler, ns["worker"]
    assert worker is not sched and worker.config.solver == sched.config.solver == "dpmpp_3m"
    assert torch.equal(torch.as_tensor(worker.timesteps), torch.as_tensor(sched.timesteps))


def test_readme_k_diffusion_snippet_runs():
    ns = _run_readme(r"### k-diffusion-style functions\n\n```python\n(.*?)```", "k-diffusion-style")
    assert torch.equal(ns["out"], ns["same"])
    assert ns["noisy"].shape == (16, 2) and not torch.equal(ns["noisy"], ns["out"])


def test_stated_times_are_measured_figures():
    """Times in the README, the examples' help and the demo are measured on 2 cores, not estimates."""
    files = [ROOT / "README.md", ROOT / "python" / "diffcore" / "demo.py", ROOT / "python" / "diffcore" / "cli.py",
             *sorted((ROOT / "examples").glob("*.py"))]
    for f in files:
        text = " ".join(f.read_text().lower().split())
        for vague in ("a few seconds", "about a minute", "a few minutes"):
            assert vague not in text, (f.name, vague)
    readme = (ROOT / "README.md").read_text()
    for cmd in ("python -m diffcore.demo", "diffcore train --data two_moons --steps 3000",
                "diffcore train --data digits"):
        assert cmd in readme, cmd
    from diffcore import cli  # noqa: PLC0415

    for cmd, what in cli.EXAMPLES:  # --help's examples: a time given is a measured one
        assert "~" not in what and ("measured" in what or not any(u in what for u in (" s)", " min", " h)"))), what
    # each training command of the README says how long it took on 2 cores (or per step, for the GPU-sized one)
    for line in re.findall(r"^diffcore train --data (?:two_moons --steps 3000|digits).*$", readme, re.M):
        i = readme.index(line)
        assert "measured" in readme[max(0, i - 120):i + len(line) + 120], line
