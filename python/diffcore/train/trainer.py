"""The training loop: AdamW + EMA + gradient clipping + mixed precision + exact resume + DDP.

One step (book Eq. (6.2.5): the loss is a batch mean of ``w(t)·‖pred − target‖²``):

1. draw a batch from the data stream (:mod:`diffcore.train.batches`) and validate it (shape, labels,
   finite values);
2. with class labels, replace each by ``null_label`` with probability ``label_dropout`` (the
   classifier-free-guidance training of Ho & Salimans 2022; book §8.3.2);
3. ``loss(net, x0, labels=..., generator=g)`` under ``torch.autocast`` when mixed precision is on,
   with ``g`` the trainer's ``torch.Generator`` (all the loss's randomness: t, ε, couplings);
4. stop with :class:`NonFiniteLossError` if the (rank-averaged) loss is NaN/inf — nothing is stepped
   or saved, so the last checkpoint on disk stays the last good state;
5. backward (through ``GradScaler`` for fp16), clip the global gradient norm, AdamW step at the
   warmed-up learning rate, EMA update.

Reproducibility. Everything random comes from the seed: model initialisation is the caller's (seed
torch before building the model), data order and the loss's draws come from the trainer's generator
(per rank: :func:`diffcore.train.distributed.rank_seed`) or from seeded permutations
(:func:`~diffcore.train.distributed.shard`). A checkpoint stores the model, EMA, optimizer and
scaler states, every rank's generator and global torch RNG states, the data-stream position, the
step and the history; :meth:`Trainer.load` followed by :meth:`Trainer.fit` reproduces the
uninterrupted run bit for bit on the same machine and thread count. Periodic sampling uses its own
generator, so evaluation never perturbs training.

Data parallel (``torchrun``): the model is wrapped in ``DistributedDataParallel`` and the loss is
called with the wrapper, so it must call the network once per step (as every :mod:`diffcore.losses`
objective does); each rank draws ``batch_size / world_size`` samples from its own generator (or its
shard of a finite dataset), the logged loss is the mean over ranks, and rank 0 writes checkpoints,
metrics and figures. A minibatch coupling of the loss (OT-CFM) is made DDP-aware
(:class:`diffcore.coupling.Distributed`: gather, couple the global batch, scatter) unless
``global_coupling=False``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pathlib
import time
import warnings
from typing import Optional, Union

import torch
from torch import nn

from .. import coupling as _coupling
from .. import data as _data
from .._device import as_device
from ..metrics import sliced_wasserstein
from ..sample import prior_sample, sample as _sample
from . import checkpoint as _ckpt
from . import distributed as _dist
from .batches import make_stream
from .ema import EMA
from . import quality

__all__ = ["Trainer", "NonFiniteLossError", "TrainingInterrupted"]

_CSV_FIELDS = ("step", "loss", "grad_norm", "lr", "ema_decay", "elapsed_s", "steps_per_s")
_SMALL_MODEL_PARAMS = 2_000_000  # num_threads="auto": one CPU thread below this
_HELD_OUT_SEED_OFFSET = 0x5DEECE66D  # held-out draws of samplers: a stream disjoint from training's


class NonFiniteLossError(FloatingPointError):
    """Training stopped at ``step`` (1-based) because the loss or the gradient was NaN/inf.
    ``last_checkpoint`` is the path of the last good checkpoint (``None`` if none was written)."""

    def __init__(self, message: str, step: int, last_checkpoint: Optional[pathlib.Path]):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :meth:`Trainer.fit` between two steps, after ``step`` and after writing
    ``checkpoint`` (``None`` without ``out_dir``): ``Trainer.load(checkpoint)`` and ``fit`` resume the run.
    A ``KeyboardInterrupt``, so code that stops on Ctrl-C still stops."""

    def __init__(self, step: int, checkpoint: Optional[pathlib.Path]):
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint saved to {checkpoint}" if checkpoint is not None else "no out_dir, nothing saved"
        super().__init__(f"interrupted at step {step}; {where}")


class _SigintBetweenSteps:
    """Turn the first SIGINT into a flag read between steps: an interrupt inside ``optimizer.step`` or the
    EMA update would leave weights, optimizer moments and the step counter out of step with each other,
    and the checkpoint written after it would not resume the run it claims to. A second Ctrl-C interrupts
    at once (the default handler is back). Only the main thread can install a handler; elsewhere, and
    under DDP (where ranks would see the flag at different steps and deadlock in the collective save),
    Ctrl-C keeps its default behaviour."""

    def __init__(self, enabled: bool):
        import signal  # noqa: PLC0415
        import threading  # noqa: PLC0415

        self.signal, self.hit, self._old = signal, False, None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame):
        self.hit = True
        self.signal.signal(self.signal.SIGINT, self._old)

    def __enter__(self):
        if self.enabled:
            self._old = self.signal.signal(self.signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled and not self.hit:
            self.signal.signal(self.signal.SIGINT, self._old)
        return False


def _make_coupling_global(loss) -> None:
    """Wrap ``loss.coupling`` (a pairing-dependent coupling) in :class:`diffcore.coupling.Distributed`."""
    c = getattr(loss, "coupling", None)
    if isinstance(c, _coupling.Coupling) and not isinstance(c, (_coupling.Distributed, _coupling.Independent)):
        loss.coupling = _coupling.Distributed(c)


def _precision(precision: str, device: torch.device):
    """(autocast dtype or None, use GradScaler)."""
    p = precision.lower() if isinstance(precision, str) else precision
    if p in ("fp32", "float32", "no", None):
        return None, False
    if p in ("amp", "mixed", "auto"):
        p = "fp16" if device.type == "cuda" else "bf16"
    if p in ("bf16", "bfloat16"):
        return torch.bfloat16, False
    if p in ("fp16", "float16", "half"):
        if device.type != "cuda":
            raise ValueError("precision: fp16 autocast with loss scaling is for CUDA; use 'bf16' (or 'amp') on CPU")
        return torch.float16, True
    raise ValueError(f"precision: expected 'fp32', 'bf16', 'fp16' or 'amp', got {precision!r}")


class Trainer:
    """Train ``model`` with ``loss`` on ``data``.

    Args:
        model: an ``nn.Module`` with the model contract ``net(x, t, labels=None)`` (e.g.
            :mod:`diffcore.models`); moved to ``device``.
        loss: a :mod:`diffcore.losses` object: ``loss(net, x0, labels=None, generator=None)``, with
            ``loss.schedule``, ``loss.prediction`` and ``loss.sampling_model(net)`` for sampling.
        data: anything :func:`diffcore.data.as_data` takes (a dataset name, a diffcore dataset, a
            tensor ``[N, *S]``, a ``GaussianMixture``, a ``DataLoader``).
        batch_size: global batch size (split evenly over DDP ranks). A loader's own batches are used
            as they come.
        lr, betas, weight_decay, eps: AdamW. warmup_steps: linear learning-rate warm-up.
        grad_clip: maximum global gradient norm (``None`` or 0: no clipping; the norm is still logged).
        ema_decay, ema_warmup: :class:`~diffcore.train.ema.EMA`.
        precision: ``"fp32"``; ``"bf16"`` autocast; ``"fp16"`` autocast + ``GradScaler`` (CUDA);
            ``"amp"`` = bf16 on CPU, fp16 on CUDA.
        label_dropout: probability of replacing a label by the model's ``null_label`` (CFG training).
        global_coupling: under ``torchrun``, make the loss's minibatch coupling (``loss.coupling``, e.g.
            OT-CFM's) DDP-aware (:class:`diffcore.coupling.Distributed`: couple the global batch, as one
            process would) instead of coupling each rank's batch alone.
        seed: seeds the trainer's generator (data draws / order and the loss's randomness).
        device: default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        out_dir: where ``checkpoint.pt``, ``metrics.csv``, ``metrics.json``, ``evals.csv`` and
            ``samples/*.png`` go (nothing is written without it, except by explicit :meth:`save` calls).
        ckpt_every, log_every, sample_every: periods in steps (``None``: never; a final checkpoint
            and metrics are always written at the end of :meth:`fit` when ``out_dir`` is set).
        sample_n, sample_solver, sample_steps: periodic sampling (EMA weights, fixed seed) — a scatter
            PNG and the sliced-Wasserstein distance to held-out data for 2-D data, an image grid for
            ``[C, H, W]`` data.
        held_out: reference data for those evaluations (default: fresh draws for samplers, none for
            finite data).
        progress: tqdm bar (rank 0).
        num_threads: torch's CPU thread count while :meth:`fit` runs (restored after). ``"auto"``: one
            thread for a model under 2M parameters on the CPU — its step is many sub-millisecond ops whose
            fork/join across threads costs more than it saves, and on a busy machine a helper thread
            waits for a core at every op (measured on 2 loaded cores, the 116k-parameter MLP of the
            demo: 10 ms/step with one thread, 120 ms/step with two); torch's setting otherwise.
            ``None``: leave torch's setting alone; an int: that many threads.
        tensorboard: also log the ``metrics.csv`` scalars (``train/loss``, ``train/grad_norm``,
            ``train/lr``, ``train/ema_decay``, ``train/steps_per_s``) and the evaluations (``eval/sw``,
            ``eval/sw_floor``) through ``torch.utils.tensorboard`` into ``out_dir/tensorboard``.
            ``None`` (default): when the ``tensorboard`` package is installed (``pip install
            "diffcore[tensorboard]"``) and ``out_dir`` is set, CSV only otherwise; ``True``: required
            (ImportError without the package); ``False``: CSV only; or a writer of your own (anything
            with ``add_scalar(tag, value, step)``, e.g. a ``SummaryWriter`` or a wandb shim).
        config: a JSON-able dict stored in checkpoints (the CLI stores how to rebuild everything).
    """

    def __init__(self, model: nn.Module, loss, data, *, batch_size: int = 256, lr: float = 1e-3,
                 betas=(0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8, warmup_steps: int = 0,
                 grad_clip: Optional[float] = 1.0, ema_decay: float = 0.999, ema_warmup: bool = True,
                 precision: str = "fp32", label_dropout: float = 0.0, global_coupling: bool = True, seed: int = 0,
                 device: Union[str, torch.device, None] = None, out_dir: Union[str, os.PathLike, None] = None,
                 ckpt_every: Optional[int] = None, log_every: Optional[int] = 100, sample_every: Optional[int] = None,
                 sample_n: Optional[int] = None, sample_solver: str = "heun", sample_steps: int = 20,
                 held_out=None, progress: bool = False, config: Optional[dict] = None,
                 num_threads: Union[int, str, None] = "auto", tensorboard=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not callable(loss) or not all(hasattr(loss, a) for a in ("schedule", "prediction", "sampling_model")):
            raise TypeError("loss: expected a diffcore.losses object (callable with .schedule, .prediction and "
                            ".sampling_model)")
        for name, v, lo in (("batch_size", batch_size, 1), ("warmup_steps", warmup_steps, 0), ("seed", seed, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        for name, v in (("ckpt_every", ckpt_every), ("log_every", log_every), ("sample_every", sample_every)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {v!r}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        if grad_clip is not None and not grad_clip >= 0:
            raise ValueError(f"grad_clip: expected a non-negative norm or None, got {grad_clip!r}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout: expected a probability in [0, 1), got {label_dropout!r}")
        if not (num_threads is None or num_threads == "auto"
                or (isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1)):
            raise ValueError(f"num_threads: expected 'auto', None or a positive int, got {num_threads!r}")
        if tensorboard not in (None, True, False) and not callable(getattr(tensorboard, "add_scalar", None)):
            raise TypeError(f"tensorboard: expected None, True, False or a writer with add_scalar(tag, value, step), "
                            f"got {type(tensorboard).__name__}")
        if tensorboard is True:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401, PLC0415
            except ImportError:
                raise ImportError("tensorboard: torch.utils.tensorboard needs the tensorboard package: "
                                  "pip install 'diffcore[tensorboard]' (or tensorboard=None for CSV only)") from None

        if device is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = as_device(device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.dist = _dist.setup(self.device)
        if batch_size % self.dist.world_size:
            raise ValueError(f"batch_size: {batch_size} is not divisible by the world size {self.dist.world_size}")
        self.batch_size = batch_size
        self.local_batch = batch_size // self.dist.world_size
        # described before the DDP wrapping of its coupling, so a resume under another world size compares alike
        self._loss_desc = _ckpt.describe(loss)
        if self.dist.enabled and global_coupling:
            _make_coupling_global(loss)
        self.seed = seed

        self.model = model.to(self.device)
        self.loss = loss
        self.data = _data.as_data(data)
        self.data_shape = tuple(self.data.shape)
        self._check_model_input()
        cond = getattr(model, "num_classes", None) is not None
        if cond and not self.data.has_labels:
            raise ValueError("data: the model is class-conditional (num_classes set) but the dataset has no labels")
        if cond and self.data.num_classes is not None and self.data.num_classes > model.num_classes:
            raise ValueError(f"data: {self.data.num_classes} classes do not fit the model's num_classes = "
                             f"{model.num_classes}")
        if label_dropout > 0 and not cond:
            raise ValueError("label_dropout: needs a class-conditional model (with num_classes and null_label)")
        self.use_labels = cond
        self.label_dropout = float(label_dropout)

        self.net = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

            self.net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                               else None)
        self.lr, self.warmup_steps = float(lr), warmup_steps
        # foreach: one multi-tensor kernel per update instead of a Python loop over parameters (torch's
        # default only on CUDA); tiny models on the CPU spend most of a step in that loop otherwise
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas), eps=eps,
                                           weight_decay=weight_decay, foreach=True)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.grad_clip = grad_clip
        self.ema = EMA(model, ema_decay, ema_warmup)
        self.precision = precision
        self.amp_dtype, use_scaler = _precision(precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None

        self.generator = torch.Generator(self.device).manual_seed(_dist.rank_seed(seed, self.dist.rank))
        self.stream = make_stream(self.data, self.local_batch, self.generator, seed, self.dist.rank,
                                  self.dist.world_size, self.device, self.use_labels)

        self.out_dir = None if out_dir is None else pathlib.Path(out_dir)
        self.ckpt_every, self.log_every, self.sample_every = ckpt_every, log_every, sample_every
        self.sample_n, self.sample_solver, self.sample_steps = sample_n, sample_solver, sample_steps
        self._held_out = held_out
        self.progress = progress
        self.num_threads = num_threads
        self._tb_choice, self._tb_writer = tensorboard, None
        self.config = dict(config or {})
        self.step = 0
        self.history = {"loss": [], "grad_norm": [], "lr": [], "records": [], "evals": []}
        self.last_checkpoint: Optional[pathlib.Path] = None
        self._last_ckpt_step = -1
        self._t0 = None
        self._log_start = (0, time.perf_counter())

    # -- checks --------------------------------------------------------------------------------------
    def _check_model_input(self):
        m, shape = self.model, self.data_shape
        if isinstance(getattr(m, "dim", None), int) and math.prod(shape) != m.dim:
            raise ValueError(f"data: samples of shape {shape} ({math.prod(shape)} features) do not match the model's "
                             f"input dim = {m.dim}")
        if isinstance(getattr(m, "in_channels", None), int) and (len(shape) != 3 or shape[0] != m.in_channels):
            raise ValueError(f"data: samples of shape {shape} do not match the model's input "
                             f"[{m.in_channels}, H, W]")

    def _check_batch(self, x, labels, step: int):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"data: the batch for step {step} is not a floating-point tensor "
                            f"({getattr(x, 'dtype', type(x).__name__)})")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"data: empty batch for step {step}")
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"data: the batch for step {step} has samples of shape {tuple(x.shape[1:])}, expected "
                             f"{self.data_shape}")
        if labels is not None and (labels.shape != (x.shape[0],) or labels.dtype.is_floating_point):
            raise ValueError(f"data: the labels for step {step} must be an integer tensor of shape ({x.shape[0]},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"data: the batch for step {step} contains NaN or infinite values")

    # -- one step ------------------------------------------------------------------------------------
    def _lr_at(self, step: int) -> float:
        return self.lr * min(1.0, step / self.warmup_steps) if self.warmup_steps else self.lr

    def _stop(self, what: str, value: float, step: int):
        where = (f"the last good checkpoint is {self.last_checkpoint} (step {self._last_ckpt_step})"
                 if self.last_checkpoint is not None else "no checkpoint had been written")
        raise NonFiniteLossError(f"{what} is {value} at step {step}: training stopped before updating the weights; "
                                 f"{where}", step, self.last_checkpoint)

    def train_step(self) -> float:
        """One optimizer step; returns the (rank-averaged) loss."""
        step = self.step + 1
        x, labels = self.stream.next()
        self._check_batch(x, labels, step)
        if labels is not None and self.label_dropout > 0:
            g = self.generator
            drop = torch.rand(labels.shape[0], generator=g, device=g.device) < self.label_dropout
            labels = torch.where(drop.to(labels.device), torch.full_like(labels, self.model.null_label), labels)
        if not self.model.training:
            self.model.train()
        lr = self._lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        kwargs = {"generator": self.generator}
        if labels is not None:
            kwargs["labels"] = labels
        amp = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        with amp:
            value = self.loss(self.net, x, **kwargs)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError(f"loss: expected a scalar tensor, got {getattr(value, 'shape', type(value).__name__)}")
        value = value.float().reshape(())
        mean = float(_dist.all_mean(value.detach()))
        if not math.isfinite(mean):
            self._stop("the loss", mean, step)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(value) if self.scaler is not None else value).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self._params if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else float("inf")))
        if not math.isfinite(norm) and self.scaler is None:
            self._stop("the gradient norm", norm, step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update itself when fp16 gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.model)
        self.step = step
        self.history["loss"].append(mean)
        self.history["grad_norm"].append(norm)
        self.history["lr"].append(lr)
        return mean

    # -- the loop --------------------------------------------------------------------------------------
    def fit(self, steps: int) -> dict:
        """Train until ``self.step == steps`` (a total, so a resumed trainer is given the same number).
        Returns the history (per-step ``loss``, ``grad_norm``, ``lr``; logged ``records``; ``evals``)."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
        bar = None
        if self.progress and self.dist.is_main and steps > self.step:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=steps, initial=self.step, desc="train", dynamic_ncols=True)
        self._log_start = (self.step, time.perf_counter())
        if self._t0 is None:
            self._t0 = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self._fit_threads())
            with _SigintBetweenSteps(not self.dist.enabled) as sigint:
                while self.step < steps and not sigint.hit:
                    value = self._fit_step(steps, bar)
        finally:
            torch.set_num_threads(threads)
            if bar is not None:
                bar.close()
            if callable(getattr(self._tb_writer, "flush", None)):
                self._tb_writer.flush()
        # the final checkpoint: at the end, and on Ctrl-C (then the interrupt goes on to the caller)
        if self.out_dir is not None and self.step > 0:
            if self.log_every and self.step % self.log_every:
                self._log()
            if self._last_ckpt_step != self.step:
                self.save()
            else:
                self._write_metrics()
        if sigint.hit:
            raise TrainingInterrupted(self.step, self.last_checkpoint if self.out_dir is not None else None)
        return self.history

    def _fit_threads(self) -> int:
        if self.num_threads is None:
            return torch.get_num_threads()
        if self.num_threads == "auto":
            small = sum(p.numel() for p in self.model.parameters()) < _SMALL_MODEL_PARAMS
            return 1 if small and self.device.type == "cpu" else torch.get_num_threads()
        return self.num_threads

    def _fit_step(self, steps: int, bar) -> float:
        value = self.train_step()
        if bar is not None:
            bar.update(1)
            if self.step % 10 == 0 or self.step == steps:
                bar.set_postfix(loss=f"{value:.4f}")
        if self.log_every and self.step % self.log_every == 0:
            self._log()
        if self.sample_every and self.step % self.sample_every == 0:
            self.evaluate()
        if self.ckpt_every and self.step % self.ckpt_every == 0 and self.out_dir is not None:
            self.save()
        return value

    # -- metrics ---------------------------------------------------------------------------------------
    def _log(self):
        s0, t0 = self._log_start
        now = time.perf_counter()
        n = self.step - s0
        if n <= 0:
            return
        rec = {"step": self.step, "loss": sum(self.history["loss"][-n:]) / n,
               "grad_norm": sum(self.history["grad_norm"][-n:]) / n, "lr": self.history["lr"][-1],
               "ema_decay": self.ema.current_decay(), "elapsed_s": round(now - self._t0, 3),
               "steps_per_s": round(n / max(now - t0, 1e-9), 2)}
        self.history["records"].append(rec)
        self._log_start = (self.step, now)
        if self.out_dir is not None and self.dist.is_main:
            path = self.out_dir / "metrics.csv"
            new = not path.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
                if new:
                    w.writeheader()
                w.writerow(rec)
        self._scalars("train", rec, ("loss", "grad_norm", "lr", "ema_decay", "steps_per_s"))

    def _tensorboard(self):
        """The TensorBoard writer (rank 0), made at the first use; ``None`` for CSV only."""
        if self._tb_writer is None and self._tb_choice is not False and self.dist.is_main:
            if self._tb_choice not in (None, True):
                self._tb_writer = self._tb_choice
            elif self.out_dir is not None:
                try:
                    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
                except ImportError:  # not installed: CSV only (True was checked at construction)
                    self._tb_choice = False
                    return None
                self._tb_writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        return self._tb_writer

    def _scalars(self, group: str, rec: dict, keys) -> None:
        writer = self._tensorboard()
        if writer is not None:
            for k in keys:
                if rec.get(k) is not None:
                    writer.add_scalar(f"{group}/{k}", rec[k], self.step)

    def _write_metrics(self):
        """Rewrite metrics.csv / evals.csv / metrics.json from the in-memory history (after a resume this
        drops rows the interrupted run wrote past its checkpoint)."""
        if self.out_dir is None or not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, rows, fields in (("metrics.csv", self.history["records"], _CSV_FIELDS),
                                   ("evals.csv", self.history["evals"], ("step", "sw", "sw_floor", "png"))):
            tmp = self.out_dir / f".{name}.tmp{os.getpid()}"
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, self.out_dir / name)
        summary = {"step": self.step, "final_loss": self.history["loss"][-1] if self.history["loss"] else None,
                   "records": self.history["records"], "evals": self.history["evals"], "config": self.config}
        tmp = self.out_dir / f".metrics.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, self.out_dir / "metrics.json")

    # -- sampling and evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, solver: Optional[str] = None, steps: Optional[int] = None, seed: int = 0,
               labels: Optional[torch.Tensor] = None, use_ema: bool = True, guidance=None, **solver_options):
        """``n`` samples of the (EMA) model through ``diffcore.sample`` on the loss's schedule and
        prediction type, from a prior draw seeded by ``seed`` (training RNG untouched)."""
        net = self.ema.module if use_ema else self.model
        was_training = net.training
        net.eval()
        try:
            g = torch.Generator(self.device).manual_seed(int(seed))
            shape = (n, *self.data_shape)
            if callable(getattr(self.loss, "prior_sample", None)):  # losses with their own prior (Poisson flow)
                x = self.loss.prior_sample(shape, generator=g, device=self.device)
            else:
                x = prior_sample(self.loss.schedule, shape, generator=g, device=self.device)
            kwargs = None if labels is None else {"labels": labels.to(self.device)}
            return _sample(self.loss.sampling_model(net), x, schedule=self.loss.schedule,
                           solver=solver or self.sample_solver, steps=steps or self.sample_steps,
                           prediction=self.loss.prediction, model_kwargs=kwargs, guidance=guidance, seed=int(seed),
                           **solver_options)
        finally:
            net.train(was_training)

    def held_out(self, n: int) -> Optional[torch.Tensor]:
        """Reference data for evaluation: ``held_out`` if given, else ``n`` draws of a sampler from a
        stream disjoint from training's (``None`` for finite data without ``held_out``)."""
        if self._held_out is not None:
            return torch.as_tensor(self._held_out)[:n]
        if self.data.kind == "sampler":
            return quality.held_out(self.data, n, self._eval_seed)
        return None

    @property
    def _eval_seed(self) -> int:
        return (self.seed + _HELD_OUT_SEED_OFFSET) % 2 ** 63

    def evaluate(self) -> Optional[dict]:
        """Sample with the EMA weights and write ``samples/step_XXXXXXX.png`` (rank 0). For 2-D data,
        also the sliced-Wasserstein distance to held-out data and the data-vs-data floor at that size
        (:func:`diffcore.train.quality.sw_report`; with a user ``held_out`` of at least ``2n`` points,
        its two halves give the floor)."""
        if not self.dist.is_main or self.out_dir is None:
            return None
        from . import plots  # noqa: PLC0415

        two_d = self.data_shape == (2,)
        image = len(self.data_shape) == 3 and self.data_shape[0] in (1, 3)
        if not (two_d or image):
            return None
        n = self.sample_n or (2000 if two_d else 64)
        xs = self.sample(n).float().cpu()
        png = self.out_dir / "samples" / f"step_{self.step:07d}.png"
        rec = {"step": self.step, "png": str(png.relative_to(self.out_dir))}
        if two_d:
            ref = None
            if self._held_out is None and self.data.kind == "sampler":
                rep = quality.sw_report(xs, self.data, seed=self._eval_seed)
                rec["sw"], rec["sw_floor"] = rep["sw"], rep["sw_floor"]
                ref = self.held_out(n)
            elif self._held_out is not None:
                ref = torch.as_tensor(self._held_out).to("cpu", torch.float64)
                if ref.shape[0] >= 2 * n:
                    proj = quality.projections(2)
                    rec["sw"] = float(sliced_wasserstein(xs, ref[:n], projections=proj))
                    rec["sw_floor"] = float(sliced_wasserstein(ref[n:2 * n], ref[:n], projections=proj))
                ref = ref[:n]
            title = f"step {self.step}"
            if "sw" in rec:
                title += f"   SW to held-out data {rec['sw']:.4f} (data vs data {rec['sw_floor']:.4f})"
            plots.scatter_png(png, xs, ref, title=title)
        else:
            plots.image_grid_png(png, xs, title=f"step {self.step}")
        self.history["evals"].append(rec)
        self._scalars("eval", rec, ("sw", "sw_floor"))
        self._write_metrics()
        return rec

    # -- checkpoints -------------------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        return {"generator": self.generator.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "stream": self.stream.state_dict()}

    def state_dict(self) -> dict:
        """Everything needed to resume exactly (collective under DDP: call it on every rank)."""
        return {"format": _ckpt.FORMAT, "step": self.step, "world_size": self.dist.world_size,
                "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": None if self.scaler is None else self.scaler.state_dict(),
                "ranks": _dist.gather_objects(self._rank_state()),
                "history": self.history, "config": self.config,
                "model_config": getattr(self.model, "config", None),
                "trainer": _ckpt.trainer_config(self)}

    def load_state_dict(self, state: dict, allow_config_change: bool = False, *, _source="state") -> None:
        """Restore :meth:`state_dict` output. All or nothing: the whole state is checked against this
        trainer (keys, shapes, dtypes, generator states, counters) before anything is assigned, and a
        state written under another training configuration (loss and its options, optimizer
        hyperparameters, batch size, seed, EMA decay, precision, label dropout, model config) is refused
        with each differing field listed, unless ``allow_config_change=True`` (then this trainer's
        settings apply from here on). :class:`~diffcore.train.CheckpointError` otherwise."""
        _ckpt.check_trainer_state(self, state, _source, allow_config_change)
        # torch's own loaders first: should one still object, nothing of this trainer has changed yet
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the current hyperparameters (equal unless allow_config_change)
            for k in ("betas", "eps", "weight_decay"):
                group[k] = self.optimizer.defaults[k]
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        ranks = state["ranks"]
        if len(ranks) == self.dist.world_size:
            r = ranks[self.dist.rank]
            self.generator.set_state(r["generator"])
            torch.set_rng_state(r["torch"])
            if r.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(r["cuda"], self.device)
            self.stream.load_state_dict(r["stream"])
        else:
            warnings.warn(f"checkpoint: written by {len(ranks)} process(es), resumed by {self.dist.world_size}: "
                          "the data order and random draws are reseeded from (seed, step), so the run continues "
                          "validly but not bit for bit", RuntimeWarning, stacklevel=2)
            self.generator.manual_seed(_dist.rank_seed(self.seed + self.step, self.dist.rank))
            self.stream.load_state_dict({"epoch": self.step, "pos": 0})
        self._last_ckpt_step = self.step

    def _check_finite_weights(self):
        for name, module in (("model", self.model), ("EMA", self.ema.module)):
            for pname, p in module.state_dict().items():
                if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                    raise NonFiniteLossError(f"{name} weight {pname!r} is not finite at step {self.step}: refusing "
                                             f"to overwrite the last good checkpoint", self.step, self.last_checkpoint)

    def save(self, path: Union[str, os.PathLike, None] = None) -> Optional[pathlib.Path]:
        """Write a checkpoint atomically (default ``out_dir/checkpoint.pt``); refuses non-finite weights.
        Collective under DDP (rank 0 writes); returns the path on rank 0."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("path: no out_dir was given to the Trainer; pass a path")
            path = self.out_dir / "checkpoint.pt"
        self._check_finite_weights()
        state = self.state_dict()
        out = None
        if self.dist.is_main:
            out = _ckpt.save(state, path)
            self.last_checkpoint, self._last_ckpt_step = out, self.step
            self._write_metrics()
        _dist.barrier()
        return out

    def load(self, path: Union[str, os.PathLike], allow_config_change: bool = False) -> "Trainer":
        """Restore a checkpoint written by :meth:`save` (every rank reads the file). The file's checksum,
        structure and training configuration are checked before anything is assigned (see
        :meth:`load_state_dict`); :class:`~diffcore.train.CheckpointError` names the file and the defect."""
        # on the CPU: RNG states must stay CPU byte tensors; load_state_dict moves the rest
        state = _ckpt.load(path, map_location="cpu")
        self.load_state_dict(state, allow_config_change, _source=pathlib.Path(path))
        self.last_checkpoint = pathlib.Path(path)
        self._write_metrics()
        return self
