"""The README's Quick start is what CI runs (DEVELOPERS.md: `.ci/run` runs that same test command)."""
import pathlib
import re

import torch

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


def test_readme_usage_snippet_runs():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## What is there\n\n```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its usage snippet"
    namespace: dict = {}
    exec(compile(m.group(1), "README.md", "exec"), namespace)
    assert namespace["out"].shape == (4, 2)


def test_readme_sampling_snippets_run():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## Sampling\n\n```python\n(.*?)```.*?```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its sampling snippets"
    namespace: dict = {}
    exec(compile(m.group(1), "README.md", "exec"), namespace)
    assert namespace["x0"].shape == (512, 2) and namespace["z"].shape == (512, 2)
    exec(compile(m.group(2), "README.md", "exec"), namespace)
    assert namespace["x0"].shape == (512, 2)


def test_readme_stochastic_snippet_runs():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## Sampling\n\n```python\n(.*?)```.*?### Stochastic sampling\n.*?```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its stochastic-sampling snippet"
    namespace: dict = {}
    exec(compile(m.group(1), "README.md", "exec"), namespace)
    exec(compile(m.group(2), "README.md", "exec"), namespace)
    assert torch.allclose(namespace["part"], namespace["xs"][100:104], atol=1e-6)
    assert namespace["xb"].shape == (512, 2)
