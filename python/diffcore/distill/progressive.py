"""Progressive distillation (PD; Salimans & Ho 2022) and guided PD (Meng et al. 2023) (book §10.3,
Lemma 10.3.1, eq. 10.3.1–10.3.2; the halving grid of docs/errata.md D4).

Two deterministic teacher DDIM steps ``s → u → t`` (through :func:`diffcore.solvers.ddim_step`, the
fused kernel) give ``x̃_t``; the student's target is the unique clean estimate ``x̃`` for which ONE DDIM
step ``s → t`` lands on ``x̃_t`` (eq. 10.3.2):

    x̃ = (σ_s x̃_t − σ_t x_s) / (α_t σ_s − α_s σ_t).

Grids: the teacher grid has ``2N + 1`` decreasing times ``g_0 = T > … > g_{2N}``; the student grid is
``g[::2]`` and a training pair uses ``(s, u, t) = (g_{2k}, g_{2k+1}, g_{2k+2})``, ``k ~ U{0..N−1}``
(only even triplets, docs/errata.md D4). After a round the student becomes the teacher and ``N ← N/2``.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ._common import col as _col, sched as _sched
from ..grids import timesteps
from ..param import _batch_times, canonical_prediction, convert, resolve_prediction
from ..solvers.onestep import ddim_step
from .students import PDStudent

__all__ = ["pd_target", "pd_weight", "pd_loss", "guided_teacher", "guided_stage1_loss", "ProgressiveDistillation",
           "WEIGHTINGS"]

#: PD loss weights w(λ_s) (Salimans & Ho 2022): truncated SNR max(SNR_s, 1), SNR_s + 1, or none.
WEIGHTINGS = ("snr_trunc", "snr_plus_one", "none")




def pd_target(teacher: Callable, x_s: torch.Tensor, s, u, t, schedule, prediction=None,
              model_kwargs: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The PD target of book Lemma 10.3.1 / eq. (10.3.2) without gradient.

    Args:
        teacher: ``teacher(x, t, **model_kwargs)`` returning a ``prediction`` (any head; ``None``:
            the schedule's own type, ``"velocity"`` on the flow-matching schedules).
        x_s: states at ``s`` ``[B, ...]``. s, u, t: scalars or per-sample ``[B]`` times, ``s > u > t``
            (``t`` may have σ = 0, e.g. rectified flow's ``t = 0``).
        schedule: the diffusion schedule.

    Returns ``(x̃, x̃_t)``: the student's x-prediction target and the two-step teacher state at ``t``.
    """
    sched = _sched(schedule)
    prediction = resolve_prediction(prediction, sched)
    B = x_s.shape[0]
    sb, ub, tb = (_batch_times(v, B, n).to(torch.float64) for v, n in ((s, "s"), (u, "u"), (t, "t")))
    if not bool(((sb > ub) & (ub > tb)).all()):
        raise ValueError("s, u, t: expected s > u > t for every sample")
    vs, vt = sched.eval(sb), sched.eval(tb)
    den = vt.alpha * vs.sigma - vs.alpha * vt.sigma
    if not bool((den > 0).all()):
        raise ValueError("s, t: α_t σ_s − α_s σ_t must be positive (the SNR must decrease from t to s)")
    with torch.no_grad():
        x_u = ddim_step(teacher, x_s, sb, ub, sched, prediction, model_kwargs)
        x_t = ddim_step(teacher, x_u, ub, tb, sched, prediction, model_kwargs)
        x_tilde = _col(vs.sigma / den, x_s) * x_t - _col(vt.sigma / den, x_s) * x_s
    return x_tilde, x_t


def pd_weight(values, weighting: str = "snr_trunc") -> torch.Tensor:
    """``w(λ_s)`` of the x-space PD loss (book §10.3): ``max(SNR, 1)``, ``SNR + 1`` or ``1``."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {weighting!r}")
    snr = (values.alpha / values.sigma) ** 2
    if weighting == "snr_trunc":
        return torch.clamp(snr, min=1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    return torch.ones_like(snr)


def _check_grid(grid) -> torch.Tensor:
    g = torch.as_tensor(grid, dtype=torch.float64)
    if g.dim() != 1 or g.numel() < 3 or g.numel() % 2 != 1:
        raise ValueError(f"teacher_grid: expected 2N + 1 (odd, >= 3) times, got shape {tuple(g.shape)}")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError("teacher_grid: expected strictly decreasing times (noise → data)")
    return g


def pd_loss(student: Callable, teacher: Callable, x0: torch.Tensor, teacher_grid, schedule, teacher_prediction=None,
            student_prediction="x0", weighting: str = "snr_trunc", model_kwargs: Optional[dict] = None,
            generator: Optional[torch.Generator] = None, k: Optional[torch.Tensor] = None,
            noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """PD loss ``E_{k, x_s}[w(λ_s) ‖x_θ(x_s, s) − sg[x̃]‖²]`` (book eq. 10.3.1; per-sample mean over features).

    Args:
        student, teacher: ``net(x, t, **model_kwargs)`` with heads ``student_prediction`` /
            ``teacher_prediction``; the student output is converted to x-prediction (exact affine map).
        x0: a data batch. teacher_grid: ``2N + 1`` decreasing times (student grid = ``teacher_grid[::2]``).
        k: optional ``[B]`` interval indices in ``0..N−1`` (default uniform). noise: optional ε.
    """
    sched = _sched(schedule)
    g = _check_grid(teacher_grid)
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
        raise TypeError("x0: expected a data tensor [B, ...]")
    B, N = x0.shape[0], (g.numel() - 1) // 2
    if k is None:
        k = torch.randint(0, N, (B,), generator=generator, device=generator.device if generator else "cpu")
    k = torch.as_tensor(k).to("cpu", torch.long)
    if k.shape != (B,) or bool((k < 0).any() | (k >= N).any()):
        raise ValueError(f"k: expected [B] = [{B}] interval indices in 0..{N - 1}")
    s, u, t = g[2 * k], g[2 * k + 1], g[2 * k + 2]
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    if eps.shape != x0.shape:
        raise ValueError(f"noise: expected shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    vs = sched.eval(s)
    x_s = _col(vs.alpha, x0) * x0 + _col(vs.sigma, x0) * eps
    teacher_prediction = resolve_prediction(teacher_prediction, sched, "teacher_prediction")
    x_tilde, _ = pd_target(teacher, x_s, s, u, t, sched, teacher_prediction, model_kwargs)
    sp = canonical_prediction(student_prediction, "student_prediction")
    out = student(x_s, s.to(device=x0.device, dtype=x0.dtype), **(model_kwargs or {}))
    x_hat = convert(out, x_s, s, sched, sp, "x0")
    err = ((x_hat - x_tilde) ** 2).flatten(1).mean(1)
    return (pd_weight(vs, weighting).to(err) * err).mean()


# ---- guided PD, book §10.3.4 ---------------------------------------------------------------------
def guided_teacher(teacher: Callable, x: torch.Tensor, t, schedule, labels: torch.Tensor, w, null_label: int,
                   prediction=None) -> torch.Tensor:
    """Stage-1 target of guided PD (book §10.3.4): ``x^w = (1 + w) x_φ(x, t, c) − w x_φ(x, t, ∅)``.

    ``w`` is the SHIFTED guidance weight (w = 0: conditional model); the library's CFG scale is
    ``ω = w + 1`` (``diffcore.CFG.from_w``, docs/errata.md D1). Returned in x-prediction, without gradient.
    The teacher is called ``teacher(x, t, labels=...)``; ``null_label`` is its unconditional token.
    """
    sched = _sched(schedule)
    prediction = resolve_prediction(prediction, sched)
    B = x.shape[0]
    wb = _batch_times(w, B, "w").to(torch.float64)
    tb = _batch_times(t, B, "t")
    if not isinstance(labels, torch.Tensor) or labels.shape != (B,):
        raise ValueError(f"labels: expected a [B] = [{B}] tensor of class labels")
    with torch.no_grad():
        tt = tb.to(device=x.device, dtype=x.dtype)
        xc = convert(teacher(x, tt, labels=labels), x, tb, sched, prediction, "x0")
        xu = convert(teacher(x, tt, labels=torch.full_like(labels, int(null_label))), x, tb, sched, prediction, "x0")
        return _col(1.0 + wb, x) * xc - _col(wb, x) * xu


def guided_stage1_loss(student: Callable, teacher: Callable, x0: torch.Tensor, labels: torch.Tensor, schedule,
                       null_label: int, w_range=(0.0, 4.0), teacher_prediction=None, student_prediction="x0",
                       weighting: str = "snr_trunc", t=None, w=None, noise=None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Stage 1 of guided PD (book §10.3.4): ``E λ(s)‖x_{θ1}(x_s, s, c, w) − sg[x^w_φ(x_s, s, c)]‖²`` with
    ``w ~ U[w_range]`` and ``s`` uniform on the schedule's sampling range. The student is called
    ``student(x, s, labels=..., w=...)`` (e.g. :class:`~diffcore.distill.guided.WConditioned`, an MLP
    with a ``w`` embedding; :class:`~diffcore.distill.guided.GuidedProgressiveDistillation` runs both
    stages). Stage 2 is :func:`pd_loss` with the stage-1 model as the
    teacher and ``model_kwargs={"labels": c, "w": w}``.
    """
    sched = _sched(schedule)
    B = x0.shape[0]
    dev = generator.device if generator is not None else "cpu"
    lo, hi = float(w_range[0]), float(w_range[1])
    if not hi >= lo:
        raise ValueError(f"w_range: expected (w_min, w_max) with w_min <= w_max, got {w_range!r}")
    if w is None:
        w = lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64, device=dev)
    if t is None:
        t_lo, t_hi = float(sched.t_end), float(sched.t_start)
        t = t_lo + (t_hi - t_lo) * torch.rand(B, generator=generator, dtype=torch.float64, device=dev)
    tb = _batch_times(t, B, "t").to(torch.float64).cpu()
    wb = _batch_times(w, B, "w").to(torch.float64).cpu()
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    v = sched.eval(tb)
    x_s = _col(v.alpha, x0) * x0 + _col(v.sigma, x0) * eps
    teacher_prediction = resolve_prediction(teacher_prediction, sched, "teacher_prediction")
    target = guided_teacher(teacher, x_s, tb, sched, labels, wb, null_label, teacher_prediction)
    out = student(x_s, tb.to(x0), labels=labels, w=wb.to(x0))
    x_hat = convert(out, x_s, tb, sched, student_prediction, "x0")
    err = ((x_hat - target) ** 2).flatten(1).mean(1)
    return (pd_weight(v, weighting).to(err) * err).mean()


# ---- trainer ---------------------------------------------------------------------------------------
def _batch(data, n: int, generator, model_kwargs):
    """``(x0, model_kwargs)``: a callable may return ``x0`` or ``(x0, kwargs)`` (per-batch conditions,
    e.g. ``{"labels": c, "w": w}`` for stage 2 of guided PD)."""
    if callable(data):
        out = data(n, generator)
        if isinstance(out, tuple):
            if len(out) != 2 or not isinstance(out[1], dict):
                raise TypeError("data: a callable must return x0 or (x0, model_kwargs dict)")
            return out
        return out, model_kwargs
    if isinstance(data, torch.Tensor):
        idx = torch.randint(0, data.shape[0], (n,), generator=generator)
        return data[idx], model_kwargs
    raise TypeError("data: expected a tensor dataset [M, ...] or a callable data(n, generator) -> x0 | (x0, kwargs)")


class ProgressiveDistillation:
    """Halving rounds of PD (book §10.3): ``2N``-step teacher → ``N``-step student → … → ``target_steps``.

    Args:
        teacher: ``teacher(x, t, **model_kwargs)`` (an ``nn.Module`` or any callable, e.g. an oracle).
        schedule: the schedule. teacher_steps: ``2N`` (even) or an explicit ``2N + 1`` decreasing grid.
        student: the round-1 student network; default a deep copy of ``teacher`` (which then must be
            an ``nn.Module`` with ``student_prediction == teacher_prediction``). Every later round
            starts from a copy of the previous student (which is also its teacher).
        spacing: grid spacing for an int ``teacher_steps`` (:func:`diffcore.timesteps`).
        lr, iters, batch_size: Adam learning rate, iterations per round, batch size.
    """

    def __init__(self, teacher: Callable, schedule, teacher_steps, student: Optional[nn.Module] = None,
                 teacher_prediction=None, student_prediction="x0", spacing: Optional[str] = None,
                 weighting: str = "snr_trunc", lr: float = 1e-3, iters: int = 500, batch_size: int = 256,
                 model_kwargs: Optional[dict] = None):
        self.schedule = _sched(schedule)
        if isinstance(teacher_steps, int) and not isinstance(teacher_steps, bool):
            if teacher_steps < 2 or teacher_steps % 2:
                raise ValueError(f"teacher_steps: expected an even int >= 2, got {teacher_steps}")
            self.grid = timesteps(self.schedule, teacher_steps, spacing=spacing)
        else:
            self.grid = _check_grid(teacher_steps)
        self.teacher_prediction = resolve_prediction(teacher_prediction, self.schedule, "teacher_prediction")
        self.student_prediction = canonical_prediction(student_prediction, "student_prediction")
        if student is None:
            if not isinstance(teacher, nn.Module) or self.teacher_prediction != self.student_prediction:
                raise ValueError("student: required unless the teacher is an nn.Module with the student's prediction")
            student = teacher
        if not isinstance(student, nn.Module):
            raise TypeError("student: expected an nn.Module")
        pd_weight(self.schedule.eval(self.grid[:1]), weighting)  # validates the name early
        self.teacher, self._init, self.weighting = teacher, student, weighting
        self.lr, self.iters, self.batch_size = float(lr), int(iters), int(batch_size)
        self.model_kwargs = model_kwargs
        self.history = []

    @property
    def student_steps(self) -> int:
        return (self.grid.numel() - 1) // 2

    def train_round(self, data, generator: Optional[torch.Generator] = None) -> nn.Module:
        """One round on the current grid; returns the trained student (the next round's teacher)."""
        student = copy.deepcopy(self._init).train()
        for p in student.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(student.parameters(), lr=self.lr)
        losses = []
        for _ in range(self.iters):
            x0, kw = _batch(data, self.batch_size, generator, self.model_kwargs)
            loss = pd_loss(student, self.teacher, x0, self.grid, self.schedule, self.teacher_prediction,
                           self.student_prediction, self.weighting, kw, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.history.append({"student_steps": self.student_steps, "loss": losses})
        student.eval().requires_grad_(False)
        return student

    def run(self, data, target_steps: int, generator: Optional[torch.Generator] = None):
        """Rounds until the student takes ``target_steps`` DDIM steps; returns a
        :class:`~diffcore.distill.students.PDStudent` sampler on its own grid."""
        if not isinstance(target_steps, int) or target_steps < 1 or target_steps > self.student_steps:
            raise ValueError(f"target_steps: expected an int in 1..{self.student_steps}, got {target_steps!r}")
        while True:
            student = self.train_round(data, generator)
            grid = self.grid[::2]
            if grid.numel() - 1 == target_steps:
                return PDStudent(student, self.schedule, grid, self.student_prediction)
            if (grid.numel() - 1) % 2:
                raise ValueError(f"target_steps: {target_steps} is not reachable by halving "
                                 f"{self.student_steps * 2} teacher steps")
            self.teacher, self._init, self.grid = student, student, grid
            self.teacher_prediction = self.student_prediction
