"""Distribution-level (score) distillation of a one-step generator: VSD / DMD, SiD and FGM
(book §10.2; Zhou et al. 2024, "Score identity Distillation", ICML; Huang et al. 2024, "Flow Generator
Matching").

A one-step generator ``G_θ(z)`` is trained so that its noised marginals ``p^θ_t`` (law of
``x̂_t = α_t G_θ(z) + σ_t ε``) match the teacher's marginals ``p_t``. Three networks take part
(book §10.2): the generator ``G_θ`` (trained), a *fake* denoiser ``ε_ψ`` trained by ε-MSE on generator
samples (trained), and a frozen teacher ``ε_φ`` (any callable, e.g. an exact oracle).

Losses (every stop-gradient ``sg[·]`` marked; ``x_g = G_θ(z)``, ``x_t = α_t x_g + σ_t ε``):

* fake update (book §10.2.1, Zhou et al. 2024):
  ``L_ψ = E w(t) ‖ε_ψ(sg[x_t], t) − ε‖²`` — :func:`fake_score_loss`;
* VSD / DMD generator surrogate (book §10.2.1, Prop. 10.2.1, eq. 10.2.2):
  ``L = E Σ sg[ω(t) α_t (s_ψ(x_t) − s_φ(x_t))] · x_g`` with ``s = −ε̂/σ_t``; its θ-gradient is the
  plug-in VSD gradient ``E ω α_t (s_ψ − s_φ)ᵀ ∂_θ G`` — :func:`vsd_generator_loss`;
* SiD generator loss (Zhou et al. 2024):
  ``L(λ) = E w(t)(⟨ε_φ(x_t) − ε_{sg ψ}(x_t), ε_φ(x_t) − ε⟩ − λ‖ε_φ(x_t) − ε_{sg ψ}(x_t)‖²)`` with the
  gradient flowing through ``x_t`` into *both* networks (class **R**) but into neither network's
  parameters; ``λ = 0.5`` → ``2∇L = ∇L1`` (Fisher divergence incl. the implicit ``ψ*(θ)``),
  ``λ = 1`` → ``2∇L = ∇F⁺`` (outer density frozen), ``λ = 1.2`` the SiD default — :func:`sid_generator_loss`;
* FGM (Huang et al. 2024): ``L4 = E w(t)[‖ε_φ‖² − 2⟨ε_φ, ε⟩ + 2⟨ε_{sg ψ}, ε⟩ − ‖ε_{sg ψ}‖²] = 2L2^{sg} − L1^{sg}``
  — :func:`fgm_generator_loss`.

:class:`ScoreDistillTrainer` alternates fake-score and generator updates (book §10.2.1/Zhou et al. 2024).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .. import schedules as _schedules
from ..param import canonical_prediction, convert
from ._common import per_sample as _as_batch, per_sample_weight

__all__ = ["OneStepGenerator", "add_noise", "sample_times", "fake_score_loss", "vsd_generator_loss",
           "sid_generator_loss", "fgm_generator_loss", "ScoreDistillTrainer", "frozen"]

Model = Callable[..., torch.Tensor]
Weight = Union[None, float, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


# ---- small shared helpers ------------------------------------------------------------------------
def _schedule(schedule) -> _schedules.Schedule:
    if isinstance(schedule, (_schedules.Schedule, str)):
        return _schedules.get(schedule)
    raise TypeError(f"schedule: expected a diffcore Schedule or a schedule name, got {type(schedule).__name__}")


def _check_x(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor of shape (B, D...), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficient (B,) → (B, 1, ...) in x's dtype."""
    return v.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.dim() - 1)))


def _alpha_sigma(schedule, t: torch.Tensor, x: torch.Tensor):
    # evaluate the schedule in float64 (exact ends) then cast, so float64 tests stay exact
    v = schedule.eval(t.detach().to(torch.float64))
    return _bcast(v.alpha, x), _bcast(v.sigma, x)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t, schedule) -> torch.Tensor:
    """``x_t = α_t x0 + σ_t ε`` with per-sample ``t``; differentiable in ``x0``."""
    _check_x(x0, "x0")
    if not isinstance(eps, torch.Tensor) or eps.shape != x0.shape:
        raise ValueError(f"eps: expected a tensor of shape {tuple(x0.shape)}, got "
                         f"{tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__}")
    a, s = _alpha_sigma(_schedule(schedule), _as_batch(t, x0, "t"), x0)
    return a * x0 + s * eps.to(x0.dtype)


def sample_times(n: int, schedule, t_range: Sequence[float] = (0.02, 0.98), generator=None,
                 device=None, dtype=torch.float32) -> torch.Tensor:
    """``t ~ U[t_lo, t_hi]`` with ``(t_lo, t_hi)`` given as fractions of the schedule's range
    ``[t_end, t_start]`` (strictly inside the range)."""
    sched = _schedule(schedule)
    lo, hi = (float(v) for v in t_range)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"t_range: expected fractions 0 <= lo < hi <= 1, got {t_range!r}")
    t0, t1 = float(sched.t_end), float(sched.t_start)
    if not math.isfinite(t1):
        raise ValueError("schedule: uniform time sampling needs a finite t_start")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (t0 + (lo + (hi - lo) * u) * (t1 - t0)).to(device=device, dtype=dtype)


def _reduce(per_sample: torch.Tensor, sample_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Batch mean, or ``Σ_b sample_weight_b · ℓ_b`` (e.g. quadrature weights summing to 1)."""
    if sample_weight is None:
        return per_sample.mean()
    sw = torch.as_tensor(sample_weight, dtype=per_sample.dtype, device=per_sample.device)
    if sw.shape != per_sample.shape:
        raise ValueError(f"sample_weight: expected shape {tuple(per_sample.shape)}, got {tuple(sw.shape)}")
    return (sw * per_sample).sum()


def _eps(model: Model, x: torch.Tensor, t: torch.Tensor, schedule, prediction: str, name: str,
         model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """ε-prediction of ``model`` at ``(x, t)`` (converted from its native ``prediction``, book Prop. 6.3.1)."""
    if not callable(model):
        raise TypeError(f"{name}: expected a callable model(x, t), got {type(model).__name__}")
    out = model(x, t, **(model_kwargs or {}))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"{name}: expected an output of shape {tuple(x.shape)}, got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    out = out.to(x.dtype)
    if prediction == "eps":
        return out
    return convert(out, x, t, schedule, prediction, "eps")


@contextlib.contextmanager
def frozen(*modules):
    """Temporarily ``requires_grad_(False)`` on the parameters of every ``nn.Module`` given (others are
    ignored): the network's *parameters* get no gradient while gradients still flow through its input
    (the stop-gradient network ``net_{sg θ}(x)``). Flags are restored on exit."""
    saved = []
    for m in modules:
        if isinstance(m, nn.Module):
            for p in m.parameters():
                saved.append((p, p.requires_grad))
                p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _prep(x_g, t, eps, schedule):
    _check_x(x_g, "x_g")
    sched = _schedule(schedule)
    tb = _as_batch(t, x_g, "t")
    if not isinstance(eps, torch.Tensor) or eps.shape != x_g.shape:
        raise ValueError(f"eps: expected a tensor of shape {tuple(x_g.shape)}, got "
                         f"{tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__}")
    eps = eps.detach().to(x_g.dtype)
    a, s = _alpha_sigma(sched, tb, x_g)
    return sched, tb, eps, a, s


# ---- networks ------------------------------------------------------------------------------------
class OneStepGenerator(nn.Module):
    """One-step generator ``G_θ(z)``: a small MLP from latent ``z ∈ R^latent_dim`` to ``x ∈ R^dim``.
    A linear skip ``x = Az + MLP(z)`` keeps the initial map close to a Gaussian push-forward, which makes early
    fake-score targets well conditioned."""

    def __init__(self, dim: int, latent_dim: Optional[int] = None, width: int = 64, depth: int = 2):
        latent_dim = dim if latent_dim is None else latent_dim
        for name, v in (("dim", dim), ("latent_dim", latent_dim), ("width", width), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        super().__init__()
        self.dim, self.latent_dim = dim, latent_dim
        layers: List[nn.Module] = [nn.Linear(latent_dim, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        self.skip = nn.Linear(latent_dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z: expected a tensor (B, {self.latent_dim}), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        return self.skip(z) + self.mlp(z)


# ---- losses --------------------------------------------------------------------------------------
def fake_score_loss(fake: Model, x_g: torch.Tensor, t, eps: torch.Tensor, schedule, *,
                    fake_prediction: str = "eps", weight: Weight = None,
                    sample_weight: Optional[torch.Tensor] = None, model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """Fake-score (student denoiser) DSM loss on generator samples (book §10.2.1; Zhou et al.
    2024): ``L_ψ = E w(t) ‖ε_ψ(sg[α_t x_g + σ_t ε], t) − ε‖²`` (sum over features, mean over
    the batch). ``x_g`` is detached: only ``ψ`` is trained."""
    sched, tb, eps, a, s = _prep(x_g, t, eps, schedule)
    xt = a * x_g.detach() + s * eps
    pred = _eps(fake, xt, tb, sched, canonical_prediction(fake_prediction, "fake_prediction"), "fake", model_kwargs)
    per = ((pred - eps) ** 2).flatten(1).sum(1) * per_sample_weight(weight, tb, x_g)
    return _reduce(per, sample_weight)


def vsd_generator_loss(x_g: torch.Tensor, t, eps: torch.Tensor, teacher: Model, fake: Model, schedule, *,
                       omega: Weight = None, teacher_prediction: str = "eps", fake_prediction: str = "eps",
                       sample_weight: Optional[torch.Tensor] = None, model_kwargs: Optional[dict] = None,
                       dmd_normalize: bool = False) -> torch.Tensor:
    """VSD / DMD generator surrogate (book Prop. 10.2.1, eq. 10.2.2, docs/errata.md D3).

    ``g = sg[ω(t) α_t (s_ψ(x_t,t) − s_φ(x_t,t))]`` with ``s − s = (ε_φ − ε_ψ)/σ_t`` and
    ``x_t = α_t sg[x_g] + σ_t ε``; the loss is ``E Σ g · x_g``, whose θ-gradient is exactly the plug-in
    VSD gradient ``E ω α_t (s_ψ − s_φ)ᵀ ∂_θ G_θ(z)`` (the score difference is detached: class **F**).
    ``dmd_normalize=True`` divides ``g`` per sample by ``mean|x_g − x̂_φ|`` (DMD's normaliser, Yin et al. 2024).
    """
    sched, tb, eps, a, s = _prep(x_g, t, eps, schedule)
    with torch.no_grad():
        xt = a * x_g.detach() + s * eps
        e_phi = _eps(teacher, xt, tb, sched, canonical_prediction(teacher_prediction, "teacher_prediction"),
                     "teacher", model_kwargs)
        e_psi = _eps(fake, xt, tb, sched, canonical_prediction(fake_prediction, "fake_prediction"),
                     "fake", model_kwargs)
        g = _bcast(per_sample_weight(omega, tb, x_g), x_g) * a * (e_phi - e_psi) / s
        if dmd_normalize:
            x_phi = (xt - s * e_phi) / a
            norm = (x_g.detach() - x_phi).abs().flatten(1).mean(1).clamp_min(1e-8)
            g = g / _bcast(norm, x_g)
    return _reduce((g * x_g).flatten(1).sum(1), sample_weight)


def _sid_terms(x_g, t, eps, teacher, fake, schedule, teacher_prediction, fake_prediction, model_kwargs):
    sched, tb, eps, a, s = _prep(x_g, t, eps, schedule)
    xt = a * x_g + s * eps  # carries the generator gradient
    # φ and ψ parameters frozen; gradients still flow through xt (class R, Zhou et al. 2024)
    with frozen(teacher, fake):
        e_phi = _eps(teacher, xt, tb, sched, canonical_prediction(teacher_prediction, "teacher_prediction"),
                     "teacher", model_kwargs)
        e_psi = _eps(fake, xt, tb, sched, canonical_prediction(fake_prediction, "fake_prediction"),
                     "fake", model_kwargs)
    return tb, eps, e_phi, e_psi


def sid_generator_loss(x_g: torch.Tensor, t, eps: torch.Tensor, teacher: Model, fake: Model, schedule, *,
                       lam: float = 1.2, weight: Weight = None, teacher_prediction: str = "eps",
                       fake_prediction: str = "eps", sample_weight: Optional[torch.Tensor] = None,
                       model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """SiD generator loss (Zhou et al. 2024; ``L2 − λ L1``):

    ``L(θ; λ) = E w(t)(⟨ε_φ(x_t) − ε_{sg ψ}(x_t), ε_φ(x_t) − ε⟩ − λ ‖ε_φ(x_t) − ε_{sg ψ}(x_t)‖²)``,
    ``x_t = α_t G_θ(z) + σ_t ε`` **with** gradient. Stop-gradients exactly as in the seed: the teacher
    ``φ`` and the fake ``ψ`` *parameters* are frozen (``requires_grad_(False)`` while evaluating), but
    both networks are differentiated through their input ``x_t``; ``ε`` is a fixed sample.

    * ``lam = 0.5``: ``2∇L`` equals the true gradient of the Fisher divergence ``L1`` (FGM);
    * ``lam = 1``: ``2∇L`` equals the gradient of ``F⁺`` (outer density frozen);
    * ``lam = 1.2``: SiD's empirical default.

    ``x_g``: generator output ``G_θ(z)`` (B, D...); ``t``: scalar or (B,); ``eps``: the noise of ``x_t``.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lam: expected a finite number (0.5, 1 or 1.2 are the documented choices), got {lam!r}")
    tb, eps, e_phi, e_psi = _sid_terms(x_g, t, eps, teacher, fake, schedule, teacher_prediction,
                                       fake_prediction, model_kwargs)
    A = (e_phi - e_psi).flatten(1)
    per = (A * (e_phi - eps).flatten(1)).sum(1) - float(lam) * (A * A).sum(1)
    return _reduce(per_sample_weight(weight, tb, x_g) * per, sample_weight)


def fgm_generator_loss(x_g: torch.Tensor, t, eps: torch.Tensor, teacher: Model, fake: Model, schedule, *,
                       weight: Weight = None, teacher_prediction: str = "eps", fake_prediction: str = "eps",
                       sample_weight: Optional[torch.Tensor] = None, model_kwargs: Optional[dict] = None) -> torch.Tensor:
    """FGM generator loss ``L4^{(sg)}`` (Huang et al. 2024, FGM):

    ``L4 = E w(t)[‖ε_φ‖² − 2⟨ε_φ, ε⟩ + 2⟨ε_{sg ψ}, ε⟩ − ‖ε_{sg ψ}‖²]`` at ``x_t = α_t G_θ(z) + σ_t ε``
    (same stop-gradients as :func:`sid_generator_loss`). Pointwise ``L4 = 2L2^{sg} − L1^{sg}``, i.e.
    ``2·L_SiD(λ = 0.5)``; its gradient is the unbiased gradient of the Fisher divergence ``L1``
    including the implicit dependence ``ψ*(θ)``.
    """
    tb, eps, e_phi, e_psi = _sid_terms(x_g, t, eps, teacher, fake, schedule, teacher_prediction,
                                       fake_prediction, model_kwargs)
    ep, es, e = e_phi.flatten(1), e_psi.flatten(1), eps.flatten(1)
    per = (ep * ep).sum(1) - 2 * (ep * e).sum(1) + 2 * (es * e).sum(1) - (es * es).sum(1)
    return _reduce(per_sample_weight(weight, tb, x_g) * per, sample_weight)


# ---- trainer ---------------------------------------------------------------------------------------
class ScoreDistillTrainer:
    """Alternating fake-score / generator training of a one-step generator with a frozen teacher
    (book §10.2.1; Zhou et al. 2024; data-free: only the teacher is queried).

    Args:
        generator: ``G_θ`` mapping ``(B, latent_dim)`` → ``(B, D)`` (e.g. :class:`OneStepGenerator`).
        fake: fake denoiser ``ε_ψ(x, t)`` (e.g. ``diffcore.models.MLP``), predicting ``fake_prediction``.
        teacher: frozen callable ``teacher(x, t)`` predicting ``teacher_prediction`` (an oracle works).
        schedule: the diffusion schedule of the teacher.
        method: ``"sid"`` (uses ``lam``), ``"fgm"`` or ``"vsd"``.
        lam: SiD's λ (0.5, 1, 1.2 ...). latent_dim: dimension of ``z ~ N(0, I)``.
        t_range: time fractions for :func:`sample_times`. weight: w(t) of the generator loss (ω(t) for VSD).
        fake_steps: fake-score updates per generator update.
        gen_lr, fake_lr: Adam learning rates. betas: Adam betas (GAN-style (0, 0.99) by default, as in the SiD code).
        ema_decay: if set, an evaluation EMA copy of the generator (distinct from any target
            network) is updated after each generator step and used by :meth:`sample`.
        seed: seed of the trainer's own torch.Generator (z, t, ε draws).
    """

    METHODS = ("sid", "fgm", "vsd")

    def __init__(self, generator: nn.Module, fake: nn.Module, teacher: Model, schedule, *, method: str = "sid",
                 lam: float = 1.2, latent_dim: Optional[int] = None, t_range=(0.02, 0.98), weight: Weight = None,
                 fake_steps: int = 1, gen_lr: float = 1e-3, fake_lr: float = 1e-3, betas=(0.0, 0.99),
                 teacher_prediction: str = "eps", fake_prediction: str = "eps", ema_decay: Optional[float] = None,
                 seed: int = 0):
        if method not in self.METHODS:
            raise ValueError(f"method: expected one of {self.METHODS}, got {method!r}")
        if not isinstance(generator, nn.Module) or not isinstance(fake, nn.Module):
            raise TypeError("generator, fake: expected torch.nn.Module instances")
        if not callable(teacher):
            raise TypeError(f"teacher: expected a callable teacher(x, t), got {type(teacher).__name__}")
        if not isinstance(fake_steps, int) or fake_steps < 1:
            raise ValueError(f"fake_steps: expected a positive int, got {fake_steps!r}")
        latent_dim = latent_dim if latent_dim is not None else getattr(generator, "latent_dim", None)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError("latent_dim: expected a positive int (or a generator with a .latent_dim attribute)")
        self.G, self.fake, self.teacher = generator, fake, teacher
        self.schedule = _schedule(schedule)
        self.method, self.lam, self.latent_dim = method, lam, latent_dim
        self.t_range, self.weight, self.fake_steps = tuple(t_range), weight, fake_steps
        self.teacher_prediction, self.fake_prediction = teacher_prediction, fake_prediction
        self.opt_G = torch.optim.Adam(generator.parameters(), lr=gen_lr, betas=betas)
        self.opt_fake = torch.optim.Adam(fake.parameters(), lr=fake_lr, betas=betas)
        self.rng = torch.Generator().manual_seed(int(seed))
        p = next(generator.parameters())
        self.device, self.dtype = p.device, p.dtype
        if ema_decay is not None and not (isinstance(ema_decay, float) and 0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay: expected None or a float in [0, 1), got {ema_decay!r}")
        self.ema_decay = ema_decay
        self.G_ema = None
        if ema_decay is not None:
            self.G_ema = copy.deepcopy(generator).requires_grad_(False)
        self.history: Dict[str, List[float]] = {"fake": [], "gen": []}

    def _draw(self, batch_size: int):
        z = torch.randn(batch_size, self.latent_dim, generator=self.rng, dtype=self.dtype).to(self.device)
        t = sample_times(batch_size, self.schedule, self.t_range, self.rng, self.device, self.dtype)
        return z, t

    def fake_step(self, batch_size: int) -> float:
        """One fake-denoiser update on fresh generator samples (θ fixed)."""
        z, t = self._draw(batch_size)
        with torch.no_grad():
            xg = self.G(z)
        eps = torch.randn(xg.shape, generator=self.rng, dtype=self.dtype).to(self.device)
        loss = fake_score_loss(self.fake, xg, t, eps, self.schedule, fake_prediction=self.fake_prediction)
        self.opt_fake.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_fake.step()
        return float(loss.detach())

    def generator_step(self, batch_size: int) -> float:
        """One generator update with the fake network's parameters frozen."""
        z, t = self._draw(batch_size)
        xg = self.G(z)
        eps = torch.randn(xg.shape, generator=self.rng, dtype=self.dtype).to(self.device)
        kw = dict(teacher_prediction=self.teacher_prediction, fake_prediction=self.fake_prediction)
        if self.method == "sid":
            loss = sid_generator_loss(xg, t, eps, self.teacher, self.fake, self.schedule, lam=self.lam,
                                      weight=self.weight, **kw)
        elif self.method == "fgm":
            loss = fgm_generator_loss(xg, t, eps, self.teacher, self.fake, self.schedule, weight=self.weight, **kw)
        else:
            loss = vsd_generator_loss(xg, t, eps, self.teacher, self.fake, self.schedule, omega=self.weight, **kw)
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_fake.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_G.step()
        if self.G_ema is not None:
            with torch.no_grad():
                for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
                    pe.lerp_(p, 1.0 - self.ema_decay)
        return float(loss.detach())

    def train(self, steps: int, batch_size: int = 256) -> Dict[str, List[float]]:
        """``steps`` rounds of (``fake_steps`` fake updates, one generator update); returns the loss history."""
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        for _ in range(steps):
            for _ in range(self.fake_steps):
                self.history["fake"].append(self.fake_step(batch_size))
            self.history["gen"].append(self.generator_step(batch_size))
        return self.history

    @torch.no_grad()
    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        """``n`` one-step samples ``G_θ(z)`` with a fixed seed (from the EMA generator when kept)."""
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.latent_dim, generator=g, dtype=self.dtype).to(self.device)
        return (self.G_ema if self.G_ema is not None else self.G)(z)

