"""Call overhead and bandwidth of the fused linear-combination kernel (issue: foundation).

One sampler step ``out = c0·x + c1·D1 + c2·D2`` with per-sample coefficients (four torch tensor
arguments: out, x, coefs, ring), measured side by side in one run against:

* ``torch ref``: diffcore's pure-torch reference of the same op (what runs under autograd);
* ``eager``: the best hand-written eager torch (in-place ``mul_`` + ``addcmul_``);
* ``copy_``: a ``copy_`` moving the same number of bytes (K + 2 tensors' worth) — the memory floor.

Usage: ``python bench/bench_overhead.py [--device cpu|cuda] [--dtype float32] [--quick] [--json PATH]``
(``--quick``: 16, 2k and 16k elements, ``--min-time 0.05``; ``--json``: the table as JSON for
``bench/run_all.py``). Prints a markdown table of medians (µs) and ratios.

Notes:
On the project's 2-core CPU development machine (AMD EPYC, no GPU), quiet (load average ≈ 1),
repeated runs vary by about ±20% at the small sizes (2026-11-22).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import dump_json, machine, median_us, table  # noqa: E402

from diffcore._ops import lincomb, lincomb_reference  # noqa: E402

SIZES = [16, 2048, 16384, 262144, 4194304]
QUICK_SIZES = [16, 2048, 16384]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-time", type=float, default=None, help="seconds per median (default 0.3, quick 0.05)")
    ap.add_argument("--quick", action="store_true", help="16, 2k and 16k elements, --min-time 0.05")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the table as JSON to PATH")
    args = ap.parse_args()
    if args.min_time is None:
        args.min_time = 0.05 if args.quick else 0.3
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = dev.type == "cuda"
    K = 2
    rows = []
    for n in (QUICK_SIZES if args.quick else SIZES):
        B = min(args.batch, n)
        x = torch.randn(B, n // B, device=dev, dtype=dtype)
        ring = torch.randn(K, B, n // B, device=dev, dtype=dtype)
        coefs = torch.randn(B, K + 1, device=dev, dtype=torch.float64)
        ccol = coefs.to(dtype)
        c0, c1, c2 = (ccol[:, k : k + 1] for k in range(3))
        out = torch.empty_like(x)
        src = torch.empty((K + 2) * n // 2, device=dev, dtype=dtype)
        dst = torch.empty_like(src)

        def fused():
            lincomb(x, coefs, ring, out=out)

        def ref():
            lincomb_reference(x, coefs, ring, out=out)

        def eager():
            torch.mul(x, c0, out=out)
            out.addcmul_(ring[0], c1)
            out.addcmul_(ring[1], c2)

        def floor():
            dst.copy_(src)

        with torch.no_grad():
            t_f = median_us(fused, args.min_time, sync=sync)
            t_r = median_us(ref, args.min_time, sync=sync)
            t_e = median_us(eager, args.min_time, sync=sync)
            t_c = median_us(floor, args.min_time, sync=sync)
        rows.append([f"{n:,}", f"{t_f:.2f}", f"{t_r:.2f}", f"{t_e:.2f}", f"{t_c:.2f}",
                     f"{t_r / t_f:.2f}x", f"{t_e / t_f:.2f}x", f"{t_f / t_c:.2f}x"])
    print(f"# lincomb call overhead — {datetime.date.today()} — {args.device}, {args.dtype}, batch {args.batch}, K = {K}")
    print(f"# {machine()}")
    cmd = f"python bench/bench_overhead.py --device {args.device} --dtype {args.dtype}" + (" --quick" if args.quick else "")
    print(f"# command: {cmd}")
    headers = ["elements", "fused µs", "torch ref µs", "eager µs", "copy_ floor µs", "ref/fused", "eager/fused",
               "fused/floor"]
    print(table(headers, rows))
    dump_json(args.json, "bench_overhead.py", cmd, {"overhead": (headers, rows)})


if __name__ == "__main__":
    main()
