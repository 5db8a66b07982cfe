"""Shared timing helpers for bench/ scripts: medians of repeated runs, markdown tables."""
from __future__ import annotations

import importlib.metadata
import platform
import statistics
import time
from typing import Callable, Dict, List, Tuple

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


def version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``"?"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


SLOW_S = 0.1      # probe time from which an entry is timed by single calls
NO_WARMUP_S = 2.0  # probe time from which the probe itself is a sample


def once(fn: Callable[[], object], sync: bool) -> float:
    t0 = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(fns: Dict[str, Callable[[], object]], sync: bool, min_time: float, rounds: int,
            slow_budget: float) -> Dict[str, Tuple[float, int]]:
    """``{key: (median µs, samples)}`` of the entries, taken in turn within each round so that load
    drifts hit all of them alike. An entry whose first (probe) call takes ≥ ``SLOW_S`` is timed by
    single calls within ``slow_budget`` seconds (fewer than ``rounds`` samples then); a probe of
    ≥ ``NO_WARMUP_S`` counts as a sample. An entry whose probe raises is reported as
    ``(error text, 0)``."""
    probe: Dict[str, float] = {}
    res: Dict[str, List[float]] = {k: [] for k in fns}
    spent: Dict[str, float] = {k: 0.0 for k in fns}
    errors: Dict[str, str] = {}
    for k, fn in fns.items():
        try:
            probe[k] = once(fn, sync)
        except Exception as e:  # noqa: BLE001 — a peer failing at run time is reported, not fatal
            errors[k] = f"error ({type(e).__name__})"
            continue
        if probe[k] >= NO_WARMUP_S:
            res[k].append(probe[k] * 1e6)
            spent[k] = probe[k]
    for _ in range(rounds):
        for k, fn in fns.items():
            if k in errors:
                continue
            if probe[k] < SLOW_S:
                res[k].append(median_us(fn, min_time / rounds, min_reps=5, sync=sync))
            elif len(res[k]) < rounds and spent[k] < slow_budget:
                t = once(fn, sync)
                res[k].append(t * 1e6)
                spent[k] += t
    out: Dict[str, Tuple[float, int]] = {k: (statistics.median(v), len(v)) for k, v in res.items() if v}
    out.update({k: (e, 0) for k, e in errors.items()})
    return out


# ---- machine-readable output (``--json PATH`` of the scripts whose numbers bench/run_all.py plots) ----

def cell_value(cell: str):
    """The number a table cell shows, as a float (thousands separators, a ratio's trailing ``x`` and the
    ``†n`` sample-count mark dropped), or ``None`` for a cell that is not a number (``—``, ``skipped``,
    ``error (…)``)."""
    s = cell.split("†")[0].strip().replace(",", "")
    if s.endswith("x"):
        s = s[:-1]
    try:
        return float(s)
    except ValueError:
        return None


def dump_json(path, script: str, command: str, tables: Dict[str, Tuple[List[str], List[List[str]]]],
              **extra) -> None:
    """Write the printed tables to ``path`` (no-op for ``None``): per table its headers, the cells as
    printed and ``records`` (one dict per row, header → ``cell_value`` or the text where not a number).
    The numbers are those of the markdown tables, so the JSON and the printed report cannot disagree."""
    if path is None:
        return
    import datetime  # noqa: PLC0415
    import json  # noqa: PLC0415

    out = {"script": script, "command": command, "date": datetime.date.today().isoformat(), "machine": machine(),
           "tables": {}}
    for name, (headers, rows) in tables.items():
        recs = [{h: (v if (v := cell_value(c)) is not None else c) for h, c in zip(headers, r)} for r in rows]
        out["tables"][name] = {"headers": list(headers), "rows": [list(r) for r in rows], "records": recs}
    out.update(extra)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
