"""Swap diffcore into a diffusers pipeline: ``pipe.scheduler = DiffcoreScheduler.from_config(...)``.

A ``DDPMPipeline`` around a small randomly initialised ``UNet2DModel`` (no weights to download) is run
with diffusers' own DPM-Solver++(2M) scheduler (``DPMSolverMultistepScheduler``, its default midpoint
variant) and with ``diffcore.integrations.diffusers.DiffcoreScheduler`` built from that scheduler's
config — same grid, same method, every update one fused diffcore step — from the same generator
seed. The images must agree to rounding (the figure printed is the largest difference relative to the
image range). Then any other diffcore solver runs in the same pipeline by name (``solver="unipc_3"``,
``"dpmpp_3m"``, the stochastic ``"dpmpp_2m_sde"``, …).

    python examples/diffusers_dropin.py [--quick] [--out DIR]

writes ``figures.json`` and ``images.png`` (one row per scheduler) to ``--out`` (default: a new
temporary folder). Needs diffusers (``pip install diffusers`` without replacing your torch: see the
README's Benchmarks section for the constraint file).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI configuration (8×8 images; measured 8 s on 2 busy cores)")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    ap.add_argument("--steps", type=int, default=None, help="inference steps (default 10 quick, 25 full)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    try:
        from diffusers import DDPMPipeline, DPMSolverMultistepScheduler, UNet2DModel  # noqa: PLC0415
    except ImportError as e:
        raise SystemExit(f"this example needs diffusers ({e})") from e
    from diffcore.integrations.diffusers import DiffcoreScheduler  # noqa: PLC0415
    from diffcore.train.plots import image_grid_png  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="diffusers_dropin_"))
    out.mkdir(parents=True, exist_ok=True)
    size, steps = (8, 10) if args.quick else (32, 25)
    steps = args.steps or steps
    t_begin = time.perf_counter()

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    reference = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")

    def images(scheduler) -> torch.Tensor:
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        res = pipe(batch_size=4, generator=torch.Generator().manual_seed(1), num_inference_steps=steps,
                   output_type="np")
        return torch.from_numpy(res.images).permute(0, 3, 1, 2)  # [B, C, H, W] in [0, 1]

    rows, grids = [], []
    ref_img = images(reference)
    grids.append(ref_img)
    print(f"DDPMPipeline, random UNet2DModel {size}×{size}, {steps} steps, batch 4")
    for label, kw in (("dpmpp_2m (from DPMSolverMultistepScheduler's config)", {}),
                      ("unipc_3", {"solver": "unipc_3"}), ("dpmpp_3m", {"solver": "dpmpp_3m"}),
                      ("dpmpp_2m_sde", {"solver": "dpmpp_2m_sde"})):
        sched = DiffcoreScheduler.from_config(reference.config, **kw)
        img = images(sched)
        grids.append(img)
        diff = float((img - ref_img).abs().max())
        rows.append({"scheduler": label, "solver": sched.solver.name, "max_abs_diff_vs_diffusers_dpmpp_2m": diff})
        print(f"  diffcore {label:<52} max |image − diffusers DPM++(2M) image| = {diff:.2e}")
    image_grid_png(out / "images.png", torch.cat(grids) * 2 - 1, nrow=4)
    figures = {"size": size, "steps": steps, "rows": rows, "seconds": time.perf_counter() - t_begin}
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    print(f"wrote {out / 'images.png'} and {out / 'figures.json'} ({figures['seconds']:.1f} s)")
    return figures


if __name__ == "__main__":
    main()
