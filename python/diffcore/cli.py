"""The ``diffcore`` command: ``diffcore train ...`` and ``diffcore sample ...``.

``diffcore train`` builds a dataset (:mod:`diffcore.data`), a network (:mod:`diffcore.models`) and a
loss (:mod:`diffcore.losses`) from flags, trains them with :class:`diffcore.train.Trainer` and
stores how it built them in the checkpoint, so ``diffcore sample --checkpoint ...`` needs nothing
else. Launched by ``torchrun --nproc_per_node N -m diffcore.cli train ...`` it trains data-parallel.

Examples (``diffcore train --help`` and ``diffcore sample --help`` show them too, with every default;
the times are measured on a busy 2-core CPU)::

{examples}
Ctrl-C during ``diffcore train`` finishes the current step, writes ``OUT/checkpoint.pt`` and exits with
status 130 and one line saying where; ``--resume auto`` continues from it.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import pathlib
import sys
import time
from typing import Optional

import torch

from ._device import as_device

__all__ = ["main", "build_data", "build_model", "build_loss", "EXAMPLES"]

# (command, what it does): shown by --help and run by the tests (tests/test_first_hour.py, with --steps cut)
EXAMPLES = (
    ("diffcore train --data two_moons --steps 3000 --out runs/moons --sample-every 1000",
     "flow matching on two moons (measured 128 s on 2 busy cores)"),
    ("diffcore train --data two_moons --steps 6000 --out runs/moons --resume auto",
     "continue that run to 6000 steps"),
    ("diffcore sample --checkpoint runs/moons/checkpoint.pt --solver heun --steps 10 --out moons.png",
     "2000 samples and their scatter plot"),
    ("diffcore train --data two_moons --loss eps --schedule vp_linear --steps 3000 --out runs/moons_vp",
     "an ε-prediction diffusion model instead"),
    ("diffcore train --data digits --model unet --loss eps --schedule vp_cosine --conditional --out runs/digits",
     "class-conditional 8x8 digits UNet (measured 13 s/step on 2 busy cores: a GPU job)"),
)


def _examples_text(sub: Optional[str] = None) -> str:
    rows = [(c, w) for c, w in EXAMPLES if sub is None or c.split()[1] == sub]
    return "\n".join(f"  {c}\n      {w}" for c, w in rows)


__doc__ = __doc__.replace("{examples}", _examples_text())



def _options(pairs, flag: str) -> dict:
    """``["k=v", ...]`` → dict; values are Python literals when they parse as one, else strings."""
    out = {}
    for item in pairs or []:
        if "=" not in item:
            raise ValueError(f"{flag}: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _ints(text: Optional[str], flag: str):
    if text is None or text == "":
        return None if text is None else ()
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def build_data(name: str, options: Optional[dict] = None):
    from . import data  # noqa: PLC0415

    return data.get(name, **(options or {}))


def build_loss(name: str, schedule: Optional[str] = None, options: Optional[dict] = None):
    """A loss preset; ``schedule`` goes to the preset's ``schedule=`` or, for flow-matching losses, its
    ``path=`` (``"rectified_flow"`` = the linear path)."""
    from . import losses  # noqa: PLC0415

    opts = dict(options or {})
    key = None
    if schedule is not None:
        params = inspect.signature(type(losses.get(name)).__init__).parameters
        key = "schedule" if "schedule" in params else "path" if "path" in params else None
        if key is None:
            raise ValueError(f"--schedule: the {name!r} loss takes no schedule")
        opts[key] = schedule
    try:
        return losses.get(name, **opts)
    except ValueError as e:
        if key == "path" and str(e).startswith("path:"):  # a diffusion schedule given to a flow-matching loss
            raise ValueError(f"--schedule: the {name!r} loss takes a flow-matching path, not {schedule!r} ({e}); "
                             f"for a diffusion model on that schedule use e.g. --loss eps --schedule {schedule}") \
                from None
        raise


def build_model(name: str, data_shape, num_classes, time_transform: str, options: dict):
    """``mlp`` for vector data, ``unet`` for ``[C, H, W]`` images (``auto`` picks by the data shape)."""
    from . import models  # noqa: PLC0415

    if name == "auto":
        name = "unet" if len(data_shape) == 3 else "mlp"
    kw = dict(options)
    kw.setdefault("num_classes", num_classes)
    kw.setdefault("time_transform", time_transform)
    if name == "mlp":
        kw.setdefault("dim", int(torch.Size(data_shape).numel()))
    elif name == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"--model unet: needs image data [C, H, W], the data has samples of shape {data_shape}")
        kw.setdefault("in_channels", data_shape[0])
    return models.get(name, **kw)


def _train(args) -> int:
    from . import models  # noqa: PLC0415
    from .train import Trainer  # noqa: PLC0415

    data_opts = _options(args.data_option, "--data-option")
    loss_opts = _options(args.loss_option, "--loss-option")
    model_opts = _options(args.model_option, "--model-option")
    for key, value in (("width", args.width), ("depth", args.depth), ("channels", args.channels),
                       ("channel_mult", _ints(args.channel_mult, "--channel-mult")),
                       ("attention_levels", _ints(args.attention_levels, "--attention-levels"))):
        if value is not None:
            model_opts[key] = list(value) if isinstance(value, tuple) else value
    dataset = build_data(args.data, data_opts)
    loss = build_loss(args.loss, args.schedule, loss_opts)
    num_classes = dataset.num_classes if args.conditional else None
    if args.conditional and num_classes is None:
        raise ValueError(f"--conditional: the dataset {args.data!r} has no labels")
    transform = args.time_transform
    if transform == "auto":
        # EDM preconditioning already feeds the network c_noise = ¼ ln σ: embed it as it is
        transform = "identity" if getattr(loss, "edm", False) else models.time_transform_for(loss.schedule)
    torch.manual_seed(args.seed)  # model initialisation is part of the seeded run
    net = build_model(args.model, tuple(dataset.shape), num_classes, transform, model_opts)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected a positive thread count, got {args.threads}")
    label_dropout = args.label_dropout if args.label_dropout is not None else (0.1 if args.conditional else 0.0)
    config = {"data": {"name": args.data, "options": data_opts},
              "loss": {"name": args.loss, "schedule": args.schedule, "options": loss_opts},
              "model": net.config, "seed": args.seed}
    out = pathlib.Path(args.out)
    trainer = Trainer(net, loss, dataset, batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                      warmup_steps=args.warmup, grad_clip=args.grad_clip or None, ema_decay=args.ema,
                      precision=args.precision, label_dropout=label_dropout, seed=args.seed, device=args.device,
                      out_dir=out, ckpt_every=args.ckpt_every, log_every=args.log_every,
                      sample_every=args.sample_every, sample_solver=args.sample_solver,
                      sample_steps=args.sample_steps, progress=not args.no_progress, config=config,
                      num_threads="auto" if args.threads is None else args.threads)
    resume = args.resume
    if resume == "auto":
        resume = out / "checkpoint.pt" if (out / "checkpoint.pt").is_file() else None
    if resume is not None:
        trainer.load(resume, allow_config_change=args.allow_config_change)
        _say(trainer, f"resumed from {resume} at step {trainer.step}")
    t0 = time.perf_counter()
    trainer.fit(args.steps)
    dt = time.perf_counter() - t0
    last = trainer.history["loss"][-min(100, len(trainer.history["loss"])):] or [float("nan")]
    _say(trainer, f"trained to step {trainer.step} in {dt:.1f} s; mean loss of the last {len(last)} steps "
                  f"{sum(last) / len(last):.4f}; checkpoint {out / 'checkpoint.pt'}")
    for rec in trainer.history["evals"][-1:]:
        if "sw" in rec:
            _say(trainer, f"step {rec['step']}: sliced-Wasserstein to held-out data {rec['sw']:.4f} "
                          f"(data vs data: {rec['sw_floor']:.4f}); samples in {out / rec['png']}")
    return 0


def _say(trainer, msg: str) -> None:
    if trainer.dist.is_main:
        print(msg, flush=True)


def _sample(args) -> int:
    from .guidance import CFG  # noqa: PLC0415
    from .loading import load  # noqa: PLC0415
    from .sample import sample  # noqa: PLC0415
    from .train import plots  # noqa: PLC0415
    from .train.quality import held_out, sw_report  # noqa: PLC0415

    if args.n < 1:  # checked before the checkpoint is read: an empty batch has nothing to sample
        raise ValueError(f"-n: expected a positive number of samples, got {args.n}")
    device = as_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), "--device")
    m = load(args.checkpoint, ema=not args.no_ema, device=device)
    net, loss, state = m.net, m.loss, {"step": m.step}
    dataset = build_data(m.config["data"]["name"], m.config["data"].get("options"))
    x = m.prior_sample(args.n, args.seed)
    kwargs, guidance = None, None
    if args.label is not None:
        if getattr(net, "num_classes", None) is None:
            raise ValueError("--label: the model is unconditional")
        kwargs = {"labels": torch.full((args.n,), args.label, dtype=torch.long, device=device)}
        if args.cfg is not None:
            guidance = CFG(args.cfg, uncond={"labels": torch.full((args.n,), net.null_label, device=device)})
    elif args.cfg is not None:
        raise ValueError("--cfg: needs --label")
    t0 = time.perf_counter()
    with torch.no_grad():
        xs = sample(loss.sampling_model(net), x, schedule=loss.schedule, solver=args.solver, steps=args.steps,
                    prediction=loss.prediction, model_kwargs=kwargs, guidance=guidance, seed=args.seed)
    dt = time.perf_counter() - t0
    print(f"{args.n} samples with {args.solver} in {args.steps} steps: {dt:.2f} s (step {state['step']}, "
          f"{'raw' if args.no_ema else 'EMA'} weights)")
    out = pathlib.Path(args.out)
    if tuple(dataset.shape) == (2,):
        rep = sw_report(xs, dataset, seed=args.seed + 1, prior=x) if dataset.kind == "sampler" else None
        ref = held_out(dataset, args.n, args.seed + 1) if rep else None
        title = (f"{args.solver}, {args.steps} steps: SW {rep['sw']:.4f} (data vs data {rep['sw_floor']:.4f})"
                 if rep else f"{args.solver}, {args.steps} steps")
        plots.scatter_png(out, xs, ref, title=title)
        if rep:
            print(f"sliced-Wasserstein distance to held-out data: {rep['sw']:.4f}   (data vs data at n = {args.n}: "
                  f"{rep['sw_floor']:.4f}; the prior: {rep['sw_prior']:.4f})")
    elif len(dataset.shape) == 3 and dataset.shape[0] in (1, 3):
        plots.image_grid_png(out, xs[:256], title=f"{args.solver}, {args.steps} steps")
    else:
        out = out.with_suffix(".pt")
        torch.save(xs.cpu(), out)
    print(f"wrote {out}")
    if args.save_tensor:
        torch.save(xs.cpu(), args.save_tensor)
        print(f"wrote {args.save_tensor}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffcore", description="Train and sample diffusion / flow models.",
                                formatter_class=_HelpFormatter, epilog="examples:\n" + _examples_text())
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (torchrun-aware)", formatter_class=_HelpFormatter,
                       epilog="examples:\n" + _examples_text("train") + "\n\nCtrl-C: finishes the step, saves "
                              "OUT/checkpoint.pt and exits (status 130); --resume auto continues.")
    t.add_argument("--data", default="two_moons", help="dataset name (diffcore.data.available())")
    t.add_argument("--data-option", action="append", metavar="K=V", help="dataset keyword argument (repeatable)")
    t.add_argument("--model", default="auto", choices=["auto", "mlp", "unet"])
    t.add_argument("--model-option", action="append", metavar="K=V", help="model keyword argument (repeatable)")
    t.add_argument("--width", type=int, help="MLP width")
    t.add_argument("--depth", type=int, help="MLP hidden layers")
    t.add_argument("--channels", type=int, help="UNet base channels")
    t.add_argument("--channel-mult", help="UNet channel multipliers, e.g. 1,2,2")
    t.add_argument("--attention-levels", help="UNet levels with attention, e.g. 1")
    t.add_argument("--time-transform", default="auto", choices=["auto", "identity", "log"],
                   help="time embedding input: auto = log for σ-time schedules (EDM) unless the loss "
                        "preconditions (then the net already gets ¼ ln σ), else identity")
    t.add_argument("--conditional", action="store_true", help="class-conditional model (dataset labels)")
    t.add_argument("--label-dropout", type=float, help="CFG label dropout (unset: 0.1 when --conditional, else 0)")
    t.add_argument("--loss", default="cfm", help="loss preset (diffcore.losses.available())")
    t.add_argument("--schedule", help="for --loss cfm the flow-matching path (linear = rectified_flow, ot, vp, ve, "
                                      "trig, bridge); for diffusion losses (eps, x0, v, edm, ...) the schedule "
                                      "(vp_linear, vp_cosine, edm, ...); unset: the loss's own")
    t.add_argument("--loss-option", action="append", metavar="K=V", help="loss keyword argument (repeatable)")
    t.add_argument("--steps", type=int, default=2000, help="total optimizer steps (resume continues to it)")
    t.add_argument("--batch", type=int, default=256, help="global batch size")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    t.add_argument("--ema", type=float, default=0.999, help="EMA decay")
    t.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "amp"])
    t.add_argument("--out", default="runs/diffcore", help="output directory")
    t.add_argument("--resume", help="checkpoint to resume from, or 'auto' (OUT/checkpoint.pt if present)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue with the current flags where they differ from the checkpoint's "
                        "training configuration (refused otherwise)")
    t.add_argument("--ckpt-every", type=int, default=1000)
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--sample-every", type=int, help="write a sample figure (PNG) every N steps")
    t.add_argument("--sample-solver", default="heun")
    t.add_argument("--sample-steps", type=int, default=20)
    t.add_argument("--device", help="cpu, cuda, cuda:1 (unset: cuda:LOCAL_RANK if available, else cpu)")
    t.add_argument("--threads", type=int, help="torch CPU threads (unset: 1 for models under 2M parameters on the "
                                               "CPU, where more threads only wait on each other; torch's default "
                                               "otherwise)")
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")

    s = sub.add_parser("sample", help="sample a checkpoint written by `diffcore train`", formatter_class=_HelpFormatter,
                       epilog="examples:\n" + _examples_text("sample"))
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--solver", default="heun", help="diffcore.solvers.available()")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("-n", "--n", type=int, default=2000, help="number of samples")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png", help="output PNG (scatter for 2-D data, grid for images)")
    s.add_argument("--save-tensor", help="also save the samples as a .pt tensor")
    s.add_argument("--label", type=int, help="class label for a conditional model")
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale ω (needs --label)")
    s.add_argument("--no-ema", action="store_true", help="sample the raw weights instead of the EMA")
    s.add_argument("--device", help="unset: cuda if available, else cpu")
    for parser in (t, s):  # argparse prints no line at all for an option without help: give those their default
        for action in parser._actions:
            if action.help is None and action.default is not None:
                action.help = "(default: %(default)s)"
    return p


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help (of every option with a value, with or without a help text; an unset option's
    help says what happens), and the examples epilog kept as written (one command per line)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "%(default)" not in text):
            text += (" " if text else "") + "(default: %(default)s)"
        return text


def main(argv=None) -> int:
    """Entry point of the ``diffcore`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from .train import CheckpointError, NonFiniteLossError  # noqa: PLC0415
    from .train.trainer import TrainingInterrupted  # noqa: PLC0415

    try:
        return _train(args) if args.command == "train" else _sample(args)
    except TrainingInterrupted as e:  # Ctrl-C: the checkpoint is written; one line, no traceback
        print(f"diffcore {args.command}: {e}" + ("; continue with --resume auto" if e.checkpoint else ""),
              file=sys.stderr)
        return 130
    except (CheckpointError, OSError) as e:  # a file that cannot be used: status 2, as for a bad argument
        print(f"diffcore {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, ImportError, NonFiniteLossError) as e:
        print(f"diffcore {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

