"""MeanFlow (Geng et al. 2025; book §11.5, eq. 11.5.2–11.5.3, with the one-step sign fix of
docs/errata.md D8).

Book notation throughout: ``h(x_s, s, t)`` is the AVERAGE velocity from the start ``s`` (noisier) to the
end ``t ≤ s``; the MeanFlow paper's ``u(z_t, r, t)`` is ``h(z, s = t_paper, t = r_paper)``.

    Ψ_{s→t}(x) = x − (s − t) h*(x, s, t),   h*(x, s, s) = v*(x, s),
    h^tgt = sg[v − (s − t)(∂_x h_{θ⁻} · v + ∂_s h_{θ⁻})]      (one JVP along (v, 1, 0)),
    L_MF = E[w ‖h_θ(x_s, s, t) − h^tgt‖²],  w = sg[1/(‖Δ‖² + c)^p]  (adaptive weight, Geng et al. 2025).

With θ⁻ = sg[θ] the primal output of the same JVP call is the prediction (its graph to θ is kept).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from ._common import StepLoop, col as _col
from .. import schedules as _schedules
from ..models.base import Network
from ..models.embedding import activation as make_activation
from ..param import _batch_times, convert
from .consistency import ema_update
from .jvp import jvp

__all__ = ["TwoTimeMLP", "meanflow_target", "meanflow_times", "meanflow_loss", "meanflow_sample", "MeanFlowTrainer"]


class _Sinusoidal(nn.Module):
    """``[sin(ω_k c), cos(ω_k c)]`` computed in the input's dtype (unlike
    :class:`diffcore.models.embedding.TimeEmbedding`, which casts to float32): float64 networks then
    give float64-exact JVPs in the time direction."""

    def __init__(self, dim: int, max_freq: float):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2,
                                                               dtype=torch.float64)), persistent=True)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c[:, None] * self.freqs.to(c.dtype)[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class TwoTimeMLP(Network):
    """``h(x, s, t, labels=None)``: an MLP with two scalar conditions (MeanFlow's average velocity).

    Same architecture as :class:`diffcore.models.MLP` (FiLM shift of every hidden layer by a condition
    vector; zero-initialised output), with the condition ``MLP(emb_s(s) + emb_Δ(s − t))`` (the MeanFlow
    paper embeds ``(t, t − r)``). Also usable as a guidance-weight-conditioned student for guided PD
    (second scalar = ``w``).

    Args: dim, width, depth, activation, num_classes as :class:`diffcore.models.MLP`; ``max_freq`` of
    the sinusoidal codes (times in [0, 1]); ``time_scale`` multiplies both times before the code.
    """

    name = "two_time_mlp"

    def __init__(self, dim: int, width: int = 128, depth: int = 3, activation: Union[str, Callable] = "silu",
                 max_freq: float = 100.0, time_scale: float = 1.0, num_classes: Optional[int] = None):
        for name, v, lo in (("dim", dim, 1), ("width", width, 2), ("depth", depth, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if width % 2:
            raise ValueError(f"width: expected an even int, got {width}")
        super().__init__(num_classes, width)
        self.dim, self.depth, self.time_scale = dim, depth, float(time_scale)
        self.emb_s, self.emb_d = _Sinusoidal(width, max_freq), _Sinusoidal(width, max_freq)
        self.time_mlp = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Linear(dim, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.cond = nn.Linear(width, width * depth)
        self.acts = nn.ModuleList(make_activation(activation) for _ in range(depth))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, s, t, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x: expected a tensor [B, {self.dim}] (or [B, *S] with {self.dim} features)")
        B = x.shape[0]
        s, t = self._times(x, s).to(x.dtype), self._times(x, t).to(x.dtype)
        code = torch.cat([self.emb_s(self.time_scale * s), self.emb_d(self.time_scale * (s - t))], dim=1)
        c = self._condition(self.time_mlp(code), labels, B, x.device)
        shifts = self.cond(torch.nn.functional.silu(c)).chunk(self.depth, dim=1)
        h = self.acts[0](self.inp(x.reshape(B, self.dim)) + shifts[0])
        for i, layer in enumerate(self.hidden):
            h = self.acts[i + 1](layer(h) + shifts[i + 1])
        return self.out(h).reshape(x.shape)




def meanflow_target(net: Callable, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
                    method: str = "autograd", h: Optional[float] = None,
                    model_kwargs: Optional[dict] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(h_θ(x, s, t), h^tgt)`` of book eq. (11.5.3): one JVP of ``h`` at ``(x, s, t)`` along ``(v, 1, 0)``.

    The prediction (first output) keeps its graph to θ; the target is detached. ``method``/``h``:
    :func:`diffcore.distill.jvp.jvp` (``"fd"`` is the central-difference fallback, bias O(h²)).
    Under DDP wrap the network with ``broadcast_buffers=False`` (DDP's in-place buffer broadcast is not
    allowed inside ``torch.func.jvp``); the gradients of the loss are all-reduced as usual.
    """
    B = x.shape[0]
    sb = _batch_times(s, B, "s").to(x)
    tb = _batch_times(t, B, "t").to(x)
    if v.shape != x.shape:
        raise ValueError(f"v: expected shape {tuple(x.shape)}, got {tuple(v.shape)}")
    if method == "autograd" and isinstance(net, nn.parallel.DistributedDataParallel) and net.broadcast_buffers \
            and any(True for _ in net.buffers()):
        # DDP copies buffers in place at the start of forward; torch.func.jvp forbids mutating captured tensors
        raise ValueError("net: wrap the model as DistributedDataParallel(..., broadcast_buffers=False) for JVP "
                         "losses (its buffers are constants); gradients are still all-reduced in backward")
    kw = model_kwargs or {}
    pred, dh = jvp(lambda xx, ss, tt: net(xx, ss, tt, **kw), (x, sb, tb),
                   (v.to(x), torch.ones_like(sb), torch.zeros_like(tb)), method=method, h=h)
    tgt = (v - _col(sb - tb, x) * dh).detach()
    return pred, tgt


def meanflow_times(B: int, frac_equal: float = 0.75, mean: float = -0.4, std: float = 1.0,
                   generator: Optional[torch.Generator] = None, dtype=torch.float32, law: str = "logit_normal"):
    """``(s, t)`` with ``s ≥ t`` (book §11.5): two draws of ``law`` — ``"logit_normal"`` (mean, std; the
    default of Geng et al. 2025) or ``"uniform"`` on [0, 1] (covers the one-step pair (1, 0) better on small data) —
    ``s = max``, ``t = min``; a fraction ``frac_equal`` of the batch gets ``t = s`` (flow matching)."""
    if not 0.0 <= frac_equal <= 1.0:
        raise ValueError(f"frac_equal: expected a fraction in [0, 1], got {frac_equal!r}")
    if not std > 0:
        raise ValueError(f"std: expected a positive std, got {std!r}")
    if law not in ("logit_normal", "uniform"):
        raise ValueError(f"law: expected 'logit_normal' or 'uniform', got {law!r}")
    dev = generator.device if generator is not None else "cpu"

    def draw():
        if law == "uniform":
            return torch.rand(B, generator=generator, device=dev, dtype=torch.float64)
        return torch.sigmoid(mean + std * torch.randn(B, generator=generator, device=dev, dtype=torch.float64))

    a, b = draw(), draw()
    s, t = torch.maximum(a, b), torch.minimum(a, b)
    eq = torch.rand(B, generator=generator, device=dev, dtype=torch.float64) < frac_equal
    return s.to(dtype), torch.where(eq, s, t).to(dtype)


def meanflow_loss(net: Callable, x0: torch.Tensor, schedule="rf", s=None, t=None, frac_equal: float = 0.75,
                  p: float = 1.0, c: float = 1e-3, teacher: Optional[Callable] = None,
                  teacher_prediction="velocity", noise: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None, jvp_method: str = "autograd",
                  h: Optional[float] = None, model_kwargs: Optional[dict] = None,
                  reduction: str = "mean", time_law: str = "logit_normal") -> torch.Tensor:
    """MeanFlow loss (book §11.5, eq. 11.5.3): ``x_s = α_s x0 + σ_s ε``, ``v = α'_s x0 + σ'_s ε`` (``ε − x0``
    for ``rf``) or the teacher's velocity (distillation, no gradient), target by :func:`meanflow_target`,
    per-sample squared error summed over features, adaptive weight ``sg[1/(err + c)^p]`` (``p = 0``:
    plain L2, which at ``t = s`` is exactly the flow-matching loss of ``diffcore.losses.get("cfm")``).

    Args:
        net: ``h(x, s, t, **model_kwargs)``. s, t: optional per-sample times (default
            :func:`meanflow_times` with ``frac_equal`` and ``time_law``).
        reduction: ``"mean"`` (a scalar) or ``"none"`` (per-sample weighted errors ``[B]``).
    """
    sched = _schedules.get(schedule)
    if not isinstance(x0, torch.Tensor) or x0.dim() < 2 or not x0.is_floating_point():
        raise TypeError("x0: expected a floating data tensor [B, ...]")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    if not p >= 0 or not c > 0:
        raise ValueError(f"p, c: expected p >= 0 and c > 0, got {p!r}, {c!r}")
    B = x0.shape[0]
    if (s is None) != (t is None):
        raise ValueError("s, t: give both or neither")
    if s is None:
        s, t = meanflow_times(B, frac_equal, generator=generator, dtype=torch.float64, law=time_law)
    sb = _batch_times(s, B, "s").to(torch.float64).to(x0.device)
    tb = _batch_times(t, B, "t").to(torch.float64).to(x0.device)
    if bool((tb > sb).any()):
        raise ValueError("s, t: expected t <= s (t is the end time, nearer the data)")
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if noise is None else noise
    if eps.shape != x0.shape:
        raise ValueError(f"noise: expected shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    val = sched.eval(sb)
    x_s = _col(val.alpha, x0) * x0 + _col(val.sigma, x0) * eps
    if teacher is None:
        v = _col(val.dalpha, x0) * x0 + _col(val.dsigma, x0) * eps
    else:
        with torch.no_grad():
            v = convert(teacher(x_s, sb.to(x0), **(model_kwargs or {})), x_s, sb, sched, teacher_prediction,
                        "velocity")
    pred, tgt = meanflow_target(net, x_s, sb, tb, v, jvp_method, h, model_kwargs)
    err = ((pred - tgt) ** 2).flatten(1).sum(1)
    weighted = err / (err.detach() + c) ** p if p > 0 else err
    return weighted.mean() if reduction == "mean" else weighted


@torch.no_grad()
def meanflow_sample(net: Callable, x: torch.Tensor, times, model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Few-step MeanFlow sampling (book §11.5.2, docs/errata.md D8):
    ``x ← x − (τ_k − τ_{k+1}) h(x, τ_k, τ_{k+1})``
    on decreasing ``times`` ``τ_0 = T > … > τ_M`` (one step: ``x0 = x_T − T h(x_T, T, 0)``)."""
    ts = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    if ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("times: expected at least two strictly decreasing times")
    B = x.shape[0]
    kw = model_kwargs or {}
    for k in range(ts.numel() - 1):
        a, b = ts[k].expand(B).to(x), ts[k + 1].expand(B).to(x)
        x = x - float(ts[k] - ts[k + 1]) * net(x, a, b, **kw)
    return x


class MeanFlowTrainer(StepLoop):
    """MeanFlow training loop (book §11.5): Adam on ``h_θ`` with :func:`meanflow_loss` (from scratch with
    ``v = ε − x0``, or distilled from ``teacher``), an optional cosine decay of the step to 0, and an
    evaluation EMA of the weights (the MeanFlow target uses ``θ⁻ = sg[θ]``, no target EMA) that
    :meth:`student` samples with.

    Args:
        net: ``h(x, s, t)`` (e.g. :class:`TwoTimeMLP`). data: ``data(batch_size, generator) -> x0``.
        schedule: the path (``"rf"`` in the paper). teacher, teacher_prediction: as :func:`meanflow_loss`.
        lr: Adam step. decay_iters: cosine decay ``lr·½(1 + cos(π·min(k, K)/K))`` over ``K`` iterations
            (``None``: constant step). ema_decay: evaluation-EMA decay.
        frac_equal, p, c, time_law, jvp_method: as :func:`meanflow_loss` (the paper's defaults). On the
            2-D mixture (tests/test_distill_e2e.py) ``p = 1`` diverged (SW 0.46 / 0.56 at 1 / 2 steps after
            3000 iterations): with a summed 2-D error far below 1, ``1/(err + c)`` turns the loss into
            ``≈ Σ log err`` and lets the best-fit samples dominate; ``p = 0.5`` (or 0) and the
            ``"uniform"`` time law (more (s, t) pairs near (1, 0)) reach the e2e bound at 1 and 2 steps.
        seed: seed of the trainer's generator (data, times and noise draws).
    """

    def __init__(self, net: nn.Module, data: Callable, schedule="rf", teacher: Optional[Callable] = None, *,
                 teacher_prediction="velocity", lr: float = 1e-3, decay_iters: Optional[int] = None,
                 ema_decay: float = 0.999, frac_equal: float = 0.75, p: float = 1.0, c: float = 1e-3,
                 time_law: str = "logit_normal", jvp_method: str = "autograd", seed: int = 0):
        if not isinstance(net, nn.Module):
            raise TypeError("net: expected an nn.Module h(x, s, t)")
        if not callable(data):
            raise TypeError("data: expected a callable data(batch_size, generator) -> tensor")
        if not (isinstance(ema_decay, float) and 0.0 <= ema_decay <= 1.0):
            raise ValueError(f"ema_decay: expected a float in [0, 1], got {ema_decay!r}")
        if decay_iters is not None and (isinstance(decay_iters, bool) or not isinstance(decay_iters, int)
                                        or decay_iters < 1):
            raise ValueError(f"decay_iters: expected None or a positive int, got {decay_iters!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr: expected a positive step, got {lr!r}")
        meanflow_times(1, frac_equal, law=time_law)  # validates frac_equal and time_law early
        self.net, self.data, self.schedule, self.teacher = net, data, _schedules.get(schedule), teacher
        self.teacher_prediction = teacher_prediction
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.lr, self.decay_iters = float(lr), decay_iters
        self.opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        self.ema_decay, self.frac_equal, self.p, self.c = ema_decay, frac_equal, p, c
        self.time_law, self.jvp_method = time_law, jvp_method
        self.rng = torch.Generator().manual_seed(int(seed))
        self.iteration = 0
        self.history: List[float] = []

    def current_lr(self) -> float:
        if self.decay_iters is None:
            return self.lr
        k = min(self.iteration, self.decay_iters)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * k / self.decay_iters))

    def step(self, batch_size: int) -> float:
        """One update on a fresh batch; returns the loss value."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        for group in self.opt.param_groups:
            group["lr"] = self.current_lr()
        x0 = self.data(batch_size, self.rng)
        loss = meanflow_loss(self.net, x0, self.schedule, frac_equal=self.frac_equal, p=self.p, c=self.c,
                             teacher=self.teacher, teacher_prediction=self.teacher_prediction, generator=self.rng,
                             jvp_method=self.jvp_method, time_law=self.time_law)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        ema_update(self.ema, self.net, self.ema_decay)
        self.iteration += 1
        self.history.append(float(loss.detach()))
        return self.history[-1]

    def student(self, T: float = 1.0):
        """The evaluation EMA as a :class:`~diffcore.distill.students.MeanFlowStudent` (``diffcore.sample``-able)."""
        from .students import MeanFlowStudent  # students imports this module
        return MeanFlowStudent(self.ema, self.schedule, T)
