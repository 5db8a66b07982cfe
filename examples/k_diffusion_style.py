"""k-diffusion-style sampling with ``diffcore.k``: a denoiser ``model(x, sigma)`` and a ``sigmas`` grid.

``diffcore.k`` keeps k-diffusion's conventions (``x = x0 + σ·ε``, the denoiser returns x̂0, ``sigmas``
decreasing and ending at 0, ``extra_args`` / ``callback``) and runs every update through diffcore's
fused step, so code written against ``k_diffusion.sampling`` swaps its import. The denoiser here is
the exact one of a 2-D Gaussian mixture (``oracles.toy_2d_mixture()`` on the ``edm`` schedule, whose
σ(t) = t is k-diffusion's σ), so the error of each sampler against the float64 reference
probability-flow ODE (``oracles.reference_ode`` from σ_max to 0) is its discretisation error alone.
Each function is also compared with ``diffcore.sample`` on the same grid (the same method, so the
two agree to rounding), and with k-diffusion's own function where ``k_diffusion.sampling`` imports.

    python examples/k_diffusion_style.py [--quick] [--out DIR]

writes ``figures.json`` to ``--out`` (default: a new temporary folder).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import torch

import diffcore
import diffcore.k as K
from diffcore import oracles, schedules

# diffcore.k function → the diffcore solver name and options it runs (module docstrings of diffcore.k)
SAMPLERS = {"sample_euler": ("euler", {"variable": "rho"}), "sample_heun": ("heun", {"variable": "rho"}),
            "sample_dpmpp_2m": ("dpmpp_2m", {"lower_order_final": False})}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI configuration (measured 4 s on 2 busy cores)")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="k_diffusion_style_"))
    out.mkdir(parents=True, exist_ok=True)
    t_begin = time.perf_counter()
    n, steps_list = (32, [10, 20]) if args.quick else (256, [10, 20, 50])

    data, edm = oracles.toy_2d_mixture(), schedules.get("edm")
    denoiser = lambda x, sigma: data.predict(x, sigma, edm, "x0")  # noqa: E731 — k-diffusion's D(x; σ)
    sigma_min, sigma_max = 0.002, 80.0
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma_max
    ref = oracles.reference_ode(data, x, sigma_max, 0.0, edm)

    try:
        from diffcore.integrations._peers import load_k_diffusion  # noqa: PLC0415

        kds, how = load_k_diffusion()
    except ImportError:
        kds, how = None, "loader not available"
    print(f"k-diffusion's own sampling module: {'loaded (' + how.split(';')[0] + ')' if kds else 'not available'}")
    rows = []
    print(f"{'function':<18}{'steps':>6}{'RMS error':>12}{'vs diffcore.sample':>20}{'vs k-diffusion':>16}")
    for steps in steps_list:
        sigmas = K.get_sigmas_karras(steps, sigma_min, sigma_max, rho=7.0, dtype=torch.float64)
        for fn_name, (solver, opts) in SAMPLERS.items():
            y = getattr(K, fn_name)(denoiser, x, sigmas)
            err = float((y - ref).pow(2).sum(1).mean().sqrt())
            same = diffcore.sample(denoiser, x, edm, solver=diffcore.solvers.get(solver, **opts), steps=sigmas,
                                   prediction="x0")
            d_same = float((y - same).abs().max())
            d_k = None
            if kds is not None:
                d_k = float((y - getattr(kds, fn_name)(denoiser, x, sigmas, disable=True)).abs().max())
            rows.append({"function": fn_name, "steps": steps, "rms_error": err, "max_diff_sample": d_same,
                         "max_diff_k_diffusion": d_k})
            print(f"{fn_name:<18}{steps:>6}{err:>12.3e}{d_same:>20.1e}{'—' if d_k is None else f'{d_k:.1e}':>16}")
    figures = {"n": n, "rows": rows, "seconds": time.perf_counter() - t_begin}
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    print(f"wrote {out / 'figures.json'} ({figures['seconds']:.1f} s)")
    return figures


if __name__ == "__main__":
    main()
