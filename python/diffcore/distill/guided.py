"""Guided progressive distillation end to end (book §10.3.4; Meng et al. 2023).

Stage 1 distils classifier-free guidance into ONE network ``x_{θ1}(x_s, s, c, w)`` that takes the
(shifted, docs/errata.md D1) guidance weight ``w = ω − 1`` as an input and regresses
``x^w_φ = (1 + w) x_φ(x_s, s, c) − w x_φ(x_s, s, ∅)`` for ``w ~ U[w_min, w_max]``
(:func:`~diffcore.distill.progressive.guided_stage1_loss`). Stage 2 is ordinary PD (book §10.3) with the
stage-1 model as the teacher and ``(c, w)`` passed through unchanged; the result is a
:class:`~diffcore.distill.students.PDStudent` that samples any ``w`` in the range with
``diffcore.sample(student, x, schedule, steps=k, model_kwargs={"labels": c, "w": w})``.

* :class:`WConditioned` — adds a guidance-weight embedding to the condition vector of a
  :class:`diffcore.models.MLP` (the FiLM shift of every hidden layer), so ``w`` conditions the network
  exactly as time and label do;
* :class:`ClassMixtureTeacher` — an exact class-conditional Gaussian-mixture teacher (each class owns
  a subset of the components; the null label is the full mixture) with the library's CFG label
  convention (``null_label == num_classes``);
* :class:`GuidedProgressiveDistillation` — the two stages.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ._common import sched as _sched
from ..models.embedding import TimeEmbedding
from ..models.mlp import MLP
from ..oracles import GaussianMixture
from ..param import canonical_prediction
from .progressive import ProgressiveDistillation, guided_stage1_loss, pd_weight
from .students import PDStudent

__all__ = ["WConditioned", "ClassMixtureTeacher", "GuidedProgressiveDistillation"]


class WConditioned(nn.Module):
    """``net(x, t, labels=None, w=...)``: a :class:`diffcore.models.MLP` conditioned on the guidance
    weight ``w`` too (stage-1/2 student of guided PD, book §10.3.4).

    The condition vector of the MLP becomes ``c = MLP_t(emb(t)) + emb_label(c) + MLP_w(emb(w / w_max))``;
    ``MLP_w``'s last layer starts at zero, so the untrained wrapper equals the wrapped MLP for every
    ``w`` (a pretrained conditional model can be the initialisation). The stage-1 target is affine in
    ``w`` (book §10.3.4), hence a low-frequency code (``max_freq``) of ``w / w_max ∈ [0, 1]``.

    Args:
        net: a :class:`diffcore.models.MLP` (usually with ``num_classes``); its modules are shared.
        w_max: scale of the weight code (the top of the training range). max_freq: highest angular
            frequency of the sinusoidal code of ``w / w_max``.
    """

    def __init__(self, net: MLP, w_max: float = 4.0, max_freq: float = 8.0):
        super().__init__()
        if not isinstance(net, MLP):
            raise TypeError(f"net: expected a diffcore.models.MLP, got {type(net).__name__}")
        if not (isinstance(w_max, (int, float)) and not isinstance(w_max, bool) and w_max > 0):
            raise ValueError(f"w_max: expected a positive number, got {w_max!r}")
        width = net.inp.out_features
        self.net, self.w_max = net, float(w_max)
        self.w_embedding = TimeEmbedding(width, "sinusoidal", "identity", max_freq)
        self.w_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.w_mlp[-1].weight)
        nn.init.zeros_(self.w_mlp[-1].bias)

    @property
    def num_classes(self):
        return self.net.num_classes

    @property
    def null_label(self):
        return self.net.null_label

    def forward(self, x: torch.Tensor, t, labels: Optional[torch.Tensor] = None, w=None) -> torch.Tensor:
        net = self.net
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or math.prod(x.shape[1:]) != net.dim:
            raise ValueError(f"x: expected a tensor [B, {net.dim}] (or [B, *S] with {net.dim} features)")
        if w is None:
            raise TypeError("w: required (the shifted guidance weight, a number or a [B] tensor; ω = w + 1)")
        B = x.shape[0]
        t = net._times(x, t)
        if isinstance(w, bool) or not isinstance(w, (int, float, torch.Tensor)):
            raise TypeError(f"w: expected a number or a [B] tensor, got {type(w).__name__}")
        wb = torch.as_tensor(w, dtype=torch.float32, device=x.device)
        wb = wb.expand(B) if wb.dim() == 0 else wb
        if wb.shape != (B,):
            raise ValueError(f"w: expected a number or a [B] = [{B}] tensor, got shape {tuple(wb.shape)}")
        c = net._condition(net.time_mlp(net.time_embedding(t)), labels, B, x.device)
        c = c + self.w_mlp(self.w_embedding(wb / self.w_max)).to(c.dtype)
        shifts = net.cond(torch.nn.functional.silu(c)).chunk(net.depth, dim=1)
        h = net.drop(net.acts[0](net.inp(x.reshape(B, net.dim)) + shifts[0]))
        for i, layer in enumerate(net.hidden):
            h = net.drop(net.acts[i + 1](layer(h) + shifts[i + 1]))
        return net.out(h).reshape(x.shape)


class ClassMixtureTeacher:
    """Exact class-conditional teacher from a Gaussian mixture (:mod:`diffcore.oracles`, extended to
    classes).

    Class ``c`` owns the components ``classes[c]``: ``p(x0 | c)`` is the mixture restricted to them
    (weights renormalised), the class prior is their total weight, and the null label
    ``num_classes`` (CFG's ``∅``) is the full mixture — the exact marginal of the class-conditional
    models, as a perfectly trained condition-dropout model would give.

    ``teacher(x, t, labels)`` returns the ``prediction`` of the label's oracle (float64 computation,
    returned in ``x.dtype``); ``sample(n, generator)`` returns ``(x0, labels)``.
    """

    def __init__(self, mixture: GaussianMixture, classes: Sequence[Sequence[int]], schedule, prediction="x0"):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError("mixture: expected a diffcore.oracles.GaussianMixture")
        K = mixture.weights.numel()
        groups = [sorted(int(k) for k in g) for g in classes]
        flat = [k for g in groups for k in g]
        if len(groups) < 1 or any(not g for g in groups) or sorted(flat) != list(range(K)):
            raise ValueError(f"classes: expected a partition of the component indices 0..{K - 1} into non-empty "
                             f"groups, got {classes!r}")
        self.schedule = _sched(schedule)
        self.prediction = canonical_prediction(prediction, "prediction")
        self.full = mixture
        w, mu, cov = mixture.weights, mixture.means, mixture.covs
        self.components = [GaussianMixture(w[g], mu[g], cov[g]) for g in groups]
        self.prior = torch.stack([w[g].sum() for g in groups]) / w.sum()
        self.num_classes = len(groups)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def oracle(self, label: int) -> GaussianMixture:
        if not 0 <= int(label) <= self.num_classes:
            raise ValueError(f"labels: expected class labels in 0..{self.num_classes} (null), got {label}")
        return self.full if int(label) == self.num_classes else self.components[int(label)]

    def __call__(self, x: torch.Tensor, t, labels: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.shape != (B,):
            raise ValueError(f"labels: expected a [B] = [{B}] tensor of class labels")
        tb = torch.as_tensor(t, dtype=torch.float64).to(x.device)
        tb = tb.expand(B) if tb.dim() == 0 else tb
        out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
        xd = x.double()
        for lab in labels.unique().tolist():
            m = labels == lab
            out[m] = self.oracle(lab).predict(xd[m], tb[m], self.schedule, self.prediction)
        return out.to(x.dtype)

    def sample(self, n: int, generator: Optional[torch.Generator] = None):
        """``(x0 [n, D] float64, labels [n])``: labels from the class prior, then the class's mixture."""
        labels = torch.multinomial(self.prior, n, replacement=True, generator=generator)
        x0 = torch.empty(n, self.full.means.shape[1], dtype=torch.float64)
        for c in range(self.num_classes):
            m = labels == c
            if bool(m.any()):
                x0[m] = self.components[c].sample(int(m.sum()), generator)
        return x0, labels


class GuidedProgressiveDistillation:
    """Guided PD (book §10.3.4): stage 1 trains a ``w``-conditioned model on the guided teacher, stage 2 halves
    its DDIM step count by PD rounds with ``(c, w)`` passed through.

    Args:
        teacher: the class-conditional teacher ``teacher(x, t, labels=...)`` with head
            ``teacher_prediction`` and unconditional token ``null_label``.
        student: the stage-1 network ``student(x, t, labels=..., w=...)`` (e.g. :class:`WConditioned`)
            with head ``student_prediction``; stage 2 starts from copies of it.
        schedule, teacher_steps, spacing: stage 2's first teacher grid (as :class:`ProgressiveDistillation`).
        w_range: ``(w_min, w_max)`` of the shifted weight, drawn uniformly in both stages.
        weighting: the x-space loss weight of both stages (:func:`~diffcore.distill.progressive.pd_weight`).
        lr, stage1_iters, iters, batch_size: Adam step, stage-1 iterations, iterations per PD round,
            batch size.
    """

    def __init__(self, teacher: Callable, student: nn.Module, schedule, teacher_steps, null_label: int,
                 w_range=(0.0, 4.0), teacher_prediction="x0", student_prediction="x0", spacing: Optional[str] = None,
                 weighting: str = "snr_trunc", lr: float = 1e-3, stage1_iters: int = 1000, iters: int = 500,
                 batch_size: int = 256, stage1_cosine: bool = True):
        if not isinstance(student, nn.Module):
            raise TypeError("student: expected an nn.Module taking (x, t, labels=..., w=...)")
        lo, hi = (float(v) for v in w_range)
        if not 0.0 <= lo <= hi:
            raise ValueError(f"w_range: expected (w_min, w_max) with 0 <= w_min <= w_max, got {w_range!r}")
        self.schedule = _sched(schedule)
        self.teacher, self.student, self.null_label = teacher, student, int(null_label)
        self.w_range = (lo, hi)
        self.teacher_prediction = canonical_prediction(teacher_prediction, "teacher_prediction")
        self.student_prediction = canonical_prediction(student_prediction, "student_prediction")
        pd_weight(self.schedule.eval(torch.tensor([0.5 * (self.schedule.t_start + self.schedule.t_end)],
                                                  dtype=torch.float64)), weighting)
        self.weighting, self.lr, self.stage1_iters = weighting, float(lr), int(stage1_iters)
        self.iters, self.batch_size, self.stage1_cosine = int(iters), int(batch_size), bool(stage1_cosine)
        self.teacher_steps, self.spacing = teacher_steps, spacing
        self.history = {"stage1": [], "stage2": None}

    def _draw_w(self, n: int, generator) -> torch.Tensor:
        lo, hi = self.w_range
        dev = generator.device if generator is not None else "cpu"
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64, device=dev)

    @staticmethod
    def _labelled(data, n: int, generator):
        out = data(n, generator)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], torch.Tensor)):
            raise TypeError("data: expected a callable data(n, generator) -> (x0 [n, ...], labels [n])")
        return out

    def stage1(self, data: Callable, generator: Optional[torch.Generator] = None) -> nn.Module:
        """Trains ``student`` on the guided teacher (book §10.3.4 stage 1); returns it (eval, frozen)."""
        st = self.student.train()
        st.requires_grad_(True)
        opt = torch.optim.Adam(st.parameters(), lr=self.lr)
        # cosine decay to 0: the stage-1 regression error bounds every later round, and a constant step
        # leaves Adam's parameter noise in it (measured: 1.4x larger SW of the 50-step stage-1 sampler)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(self.stage1_iters, 1)) if self.stage1_cosine \
            else None
        for _ in range(self.stage1_iters):
            x0, labels = self._labelled(data, self.batch_size, generator)
            loss = guided_stage1_loss(st, self.teacher, x0, labels, self.schedule, self.null_label, self.w_range,
                                      self.teacher_prediction, self.student_prediction, self.weighting,
                                      generator=generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if decay is not None:
                decay.step()
            self.history["stage1"].append(loss.item())
        st.eval().requires_grad_(False)
        return st

    def stage2(self, data: Callable, target_steps: int, generator: Optional[torch.Generator] = None) -> PDStudent:
        """PD rounds from the stage-1 model (book §10.3.4 stage 2), ``(labels, w)`` drawn per batch."""
        def conditioned(n, g):
            x0, labels = self._labelled(data, n, g)
            return x0, {"labels": labels, "w": self._draw_w(n, g).to(x0)}

        stage1 = self.student
        pd = ProgressiveDistillation(stage1, self.schedule, self.teacher_steps, student=copy.deepcopy(stage1),
                                     teacher_prediction=self.student_prediction,
                                     student_prediction=self.student_prediction, spacing=self.spacing,
                                     weighting=self.weighting, lr=self.lr, iters=self.iters,
                                     batch_size=self.batch_size)
        out = pd.run(conditioned, target_steps, generator)
        self.history["stage2"] = pd.history
        return out

    def run(self, data: Callable, target_steps: int, generator: Optional[torch.Generator] = None) -> PDStudent:
        """Both stages; returns the ``target_steps``-step student (a :class:`PDStudent` whose network takes
        ``labels`` and ``w``)."""
        self.stage1(data, generator)
        return self.stage2(data, target_steps, generator)
