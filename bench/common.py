"""Shared timing helpers for bench/ scripts: medians of repeated runs, markdown tables."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, List

import torch


def median_us(fn: Callable[[], object], min_time: float = 0.2, min_reps: int = 20, sync: bool = False) -> float:
    """Median wall time of ``fn()`` in microseconds over repeated batches (warm-up first)."""
    for _ in range(3):
        fn()
    if sync:
        torch.cuda.synchronize()
    # choose an inner count so each sample takes ≳ 50 µs (timer resolution), then sample until min_time
    inner = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if sync:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if dt > 5e-5 or inner >= 1 << 16:
            break
        inner *= 2
    samples: List[float] = []
    deadline = time.perf_counter() + min_time
    while len(samples) < min_reps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if sync:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / inner * 1e6)
        if len(samples) > 10000:
            break
    return statistics.median(samples)


def machine() -> str:
    import diffcore

    info = diffcore.build_info()
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"diffcore {info['version']} ({info['compiler']}, OpenMP {info['openmp']}, CUDA {info['cuda']}), "
            f"torch {torch.__version__}")


def table(headers: List[str], rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
