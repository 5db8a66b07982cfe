"""bench/gpu_check.py: the no-GPU path (a child process), the pass/fail rules on made-up timings, the
bundled log-domain Sinkhorn against POT, and the benchmark parts run end to end on the CPU at toy sizes
(a wall-clock timer in place of CUDA events), so that a GPU run does not meet their first bug."""
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import gpu_check as gc  # noqa: E402


def test_without_cuda_every_row_is_skipped_and_the_exit_code_is_zero():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_check.py"), "--quick"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert "CUDA is not available" in p.stdout
    body = [ln for ln in p.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| part")]
    assert len(body) == len(gc.planned_rows(quick=True))
    assert all(ln.rstrip().endswith("| skipped (no CUDA) |") for ln in body)


def test_planned_rows_cover_every_goal():
    rows = gc.planned_rows(quick=False)
    parts = [r.part for r in rows]
    assert parts.count("fused step") == 8  # 1M, 4M, 16M, 64M in float32 and bfloat16
    assert parts.count("Sinkhorn") == 6    # n = 256, 1024, 4096, batch 1 and 32
    assert {"CUDA tests", "sample loop", "Picard"} <= set(parts)


def test_step_rule():
    # 300 MB in 100 µs = 3 TB/s; floor 80 µs (1.25x); eager 200 µs
    assert gc.judge_step(100.0, 80.0, 200.0, 300_000_000)[1] == gc.PASS
    m, res = gc.judge_step(100.0, 60.0, 200.0, 300_000_000)  # 1.67x the floor
    assert res == gc.FAIL and "1.67x" in m
    assert gc.judge_step(100.0, 80.0, 99.0, 300_000_000)[1] == gc.FAIL       # eager faster
    m, res = gc.judge_step(100.0, 80.0, 200.0, 270_000_000)                 # 2.7 TB/s
    assert res == gc.FAIL and "2.70 TB/s" in m


def test_loop_picard_and_tests_rules():
    assert gc.judge_loop(115.0, 100.0)[1] == gc.PASS
    assert gc.judge_loop(116.0, 100.0)[1] == gc.FAIL
    assert gc.judge_picard(30.0, 10.0, 12)[1] == gc.PASS
    assert gc.judge_picard(29.0, 10.0, 12)[1] == gc.FAIL
    assert gc.judge_tests(0, "12 passed in 30s", 150)[1] == gc.PASS
    assert gc.judge_tests(1, "1 failed, 11 passed", 150) == ("1 failed, 11 passed", gc.FAIL)
    assert gc.judge_tests(None, "", 150) == ("timed out after 150 s", gc.FAIL)


def test_sinkhorn_rule():
    ok = gc.judge_sinkhorn(2.0, 20, 8e-7, 29.0, 120, 5e-7, "POT sinkhorn_log", "stopThr 1e-06")
    assert ok[1] == gc.PASS and "14.5x" in ok[0] and "20 it" in ok[0] and "120 it" in ok[0]
    assert gc.judge_sinkhorn(30.0, 20, 8e-7, 29.0, 120, 5e-7, "POT")[1] == gc.FAIL  # slower
    assert gc.judge_sinkhorn(2.0, 20, 2e-6, 29.0, 120, 5e-7, "POT")[1] == gc.FAIL   # plan off the tolerance


def test_exit_code_follows_the_tests_row_only():
    rows = gc.planned_rows(quick=True)
    for r in rows:
        r.result = gc.PASS
    assert gc.exit_code(rows) == 0
    rows[3].result = gc.FAIL  # a benchmark row misses its goal: reported, not an error
    assert gc.exit_code(rows) == 0
    rows[0].result = gc.FAIL
    assert gc.exit_code(rows) == 1
    text = gc.render(rows)
    assert text.splitlines()[0] == "| part | case | measured | goal | result |"
    assert len(text.splitlines()) == len(rows) + 2


def test_bundled_reference_is_pots_sinkhorn_log():
    pot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(4)
    C = torch.rand(40, 30, generator=g, dtype=torch.float64)
    a = torch.rand(40, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(30, generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    for thr in (1e-3, 1e-9):
        P, it = gc.torch_sinkhorn_log(a, b, C, 0.05, stopThr=thr)
        Q, log = pot.bregman.sinkhorn_log(a.numpy(), b.numpy(), C.numpy(), 0.05, stopThr=thr, log=True)
        assert it == log["niter"]
        assert torch.allclose(P, torch.from_numpy(Q), rtol=1e-10, atol=1e-15)


def wall_us(fn, samples=3, min_ms=0.0, warmup=1, max_inner=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(ts)


def test_parts_run_end_to_end_at_toy_sizes(monkeypatch):
    monkeypatch.setattr(gc, "DEVICE", "cpu")
    monkeypatch.setattr(gc, "event_median_us", wall_us)
    monkeypatch.setattr(gc, "STEP_SIZES_QUICK", [1 << 12])
    monkeypatch.setattr(gc, "SINKHORN_SIZES_QUICK", [24])
    monkeypatch.setattr(gc, "SINKHORN_BATCHES", [1, 2])
    monkeypatch.setattr(gc, "PICARD", dict(gc.PICARD, steps=20, dim=8, width=16))
    rows = gc.planned_rows(quick=True)
    gc.step_part(rows, True, 30.0)
    gc.sinkhorn_part(rows, True, 30.0)
    gc.picard_part(rows, True, 30.0)
    done = [r for r in rows if r.part in ("fused step", "Sinkhorn", "Picard")]
    assert len(done) == 2 + 2 + 1
    for r in done:
        assert r.result in (gc.PASS, gc.FAIL), (r.part, r.case, r.result)
        assert r.measured != "—"
    for r in done:
        if r.part == "Sinkhorn":
            assert max(r.values["dc_err"], r.values["ref_err"]) <= gc.SINKHORN_TOL
            assert r.values["dc_iters"] > 0 and r.values["ref_iters"] > 0
        if r.part == "fused step":
            assert r.case.endswith("4,096") and r.values["bytes"] > 4096
