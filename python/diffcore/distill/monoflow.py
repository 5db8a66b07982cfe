"""MonoFlow: GAN generator training as a particle ODE in training time (Yi et al. 2023,
"MonoFlow: Rethinking divergence GANs via the perspective of Wasserstein gradient flows", ICML).

The Wasserstein gradient flow ``∂_τ q_τ = −∇·(q_τ ∇ log r_τ)``, ``r_τ = p/q_τ``, decreases
``KL(q_τ ‖ p)`` (docs/errata.md D18); its particles follow ``dx/dτ = ∇_x log r_τ(x)``. A logistic
discriminator estimates ``log r`` and the generator is regressed onto particles moved one explicit
Euler step along the field ``∇_x h(D(x))`` for a monotonically increasing ``h``.

Losses (``sg[·]`` = stop-gradient):

* discriminator (logit ``D``): ``L_D = E_p softplus(−D(x)) + E_q softplus(D(x))`` (= −[E_p log σ(D) +
  E_q log(1 − σ(D))]); optimum ``D* = log p/q`` — :func:`discriminator_loss`;
* particle field: ``u(x) = ∇_x h(D(x)) = h'(D(x)) ∇_x D(x)`` (class **R**) — :func:`particle_field`;
* generator, regression form (valid for K ≥ 1 inner steps):
  ``L_G(θ) = E_z ‖G_θ(z) − sg[G_{θ_k}(z) + η u(G_{θ_k}(z))]‖²`` — :func:`regression_loss`; at
  ``θ = θ_k`` its gradient is ``−2η ∇_θ E h(D(G_θ(z)))``;
* generator, direct form (one step only): ``L_G = −E h(D(G_θ(z)))`` — :func:`direct_generator_loss`.

Monotone ``h`` (:data:`H_FUNCTIONS`): ``"log_ratio"`` (``h(d) = d``, i.e. ``h(r) = log r``, the KL flow),
``"ratio"`` (``h(d) = e^d = r``), ``"log_sigmoid"`` (``log σ(d)``, the non-saturating GAN loss),
``"sigmoid"`` (``σ(d)``); any increasing callable is accepted.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["H_FUNCTIONS", "get_h", "discriminator_loss", "particle_field", "particle_step", "regression_loss",
           "direct_generator_loss", "MonoFlowTrainer"]

H_FUNCTIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "log_ratio": lambda d: d,
    "ratio": torch.exp,
    "log_sigmoid": F.logsigmoid,
    "sigmoid": torch.sigmoid,
}

HLike = Union[str, Callable[[torch.Tensor], torch.Tensor]]


def get_h(h: HLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """The monotone map ``h`` by name (:data:`H_FUNCTIONS`) or a callable passed through."""
    if isinstance(h, str):
        try:
            return H_FUNCTIONS[h]
        except KeyError:
            raise ValueError(f"h: unknown name {h!r}; expected one of {sorted(H_FUNCTIONS)} or a callable") from None
    if callable(h):
        return h
    raise TypeError(f"h: expected a name or an increasing callable, got {type(h).__name__}")


def _logits(D, x: torch.Tensor, name: str) -> torch.Tensor:
    if not callable(D):
        raise TypeError(f"{name}: expected a callable discriminator D(x) -> logits, got {type(D).__name__}")
    out = D(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name}: expected D to return a tensor, got {type(out).__name__}")
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.shape != (x.shape[0],):
        raise ValueError(f"{name}: expected D(x) of shape ({x.shape[0]},) or ({x.shape[0]}, 1), got {tuple(out.shape)}")
    return out


def _check_x(x, name):
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor (B, D...), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def discriminator_loss(D, x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    """Logistic density-ratio loss (Yi et al. 2023): ``E_p softplus(−D(x)) + E_q softplus(D(x))``; fakes are detached.
    Its minimiser over all functions is ``D*(x) = log p(x)/q(x)``."""
    _check_x(x_real, "x_real")
    _check_x(x_fake, "x_fake")
    return F.softplus(-_logits(D, x_real, "D")).mean() + F.softplus(_logits(D, x_fake.detach(), "D")).mean()


def particle_field(D, x: torch.Tensor, h: HLike = "log_ratio") -> torch.Tensor:
    """``u(x) = ∇_x h(D(x))`` per sample (Yi et al. 2023): ``h'(D)∇_x D``; with ``D = log p/q`` and
    ``h = id`` the Wasserstein-gradient-flow velocity of ``KL(q‖p)``. Returned detached."""
    _check_x(x, "x")
    hf = get_h(h)
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(hf(_logits(D, xr, "D")).sum(), xr)
    return g.detach()


def particle_step(D, x: torch.Tensor, eta: float, h: HLike = "log_ratio") -> torch.Tensor:
    """One explicit Euler step of the particle ODE ``dx/dτ = ∇_x h(D(x))``: ``x + η u(x)`` (Yi et al. 2023)."""
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not eta > 0:
        raise ValueError(f"eta: expected a positive step size, got {eta!r}")
    return (x.detach() + float(eta) * particle_field(D, x, h)).detach()


def regression_loss(x_gen: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``E ‖G_θ(z) − sg[target]‖²`` (sum over features, mean over the batch), the regression
    form of Yi et al. 2023."""
    _check_x(x_gen, "x_gen")
    if not isinstance(target, torch.Tensor) or target.shape != x_gen.shape:
        raise ValueError(f"target: expected shape {tuple(x_gen.shape)}, got "
                         f"{tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")
    return ((x_gen - target.detach()) ** 2).flatten(1).sum(1).mean()


def direct_generator_loss(D, x_gen: torch.Tensor, h: HLike = "log_ratio") -> torch.Tensor:
    """``−E h(D(G_θ(z)))`` (Yi et al. 2023): one optimizer step on it equals one step on the regression form
    (gradients differ by the factor 2η). D's parameters receive gradients only if the caller lets them."""
    _check_x(x_gen, "x_gen")
    return -get_h(h)(_logits(D, x_gen, "D")).mean()


class MonoFlowTrainer:
    """Alternating discriminator / generator training in the MonoFlow form (Yi et al. 2023).

    Args:
        generator: ``G_θ`` mapping ``(B, latent_dim)`` → ``(B, D)``; ``latent_dim`` read from it if not given.
        discriminator: ``D(x)`` → logits ``(B,)`` or ``(B, 1)``.
        data: callable ``data(n, generator) -> (n, D)`` drawing real samples (e.g. ``oracle.sample``).
        h: monotone map (name or callable). eta: particle step size η.
        gen_steps: K inner regression steps per discriminator step. d_steps: discriminator steps per round.
        gen_lr, d_lr: learning rates. gen_optimizer, d_optimizer: optimizer classes (default Adam;
            plain SGD suits the regression form, whose targets are only η·|u| away).
        seed: seed of the trainer's draws.
        ema_decay: decay of an evaluation EMA of the generator weights, :attr:`ema` (``None``: none).
            The adversarial iterate oscillates around the flow's fixed point (the discriminator lags
            the generator); averaging the weights damps this, as in GAN practice.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, data: Callable, *, h: HLike = "log_ratio",
                 eta: float = 0.1, gen_steps: int = 1, d_steps: int = 1, gen_lr: float = 1e-2, d_lr: float = 1e-2,
                 latent_dim: Optional[int] = None, gen_optimizer=torch.optim.Adam, d_optimizer=torch.optim.Adam,
                 seed: int = 0, ema_decay: Optional[float] = None):
        if not isinstance(generator, nn.Module) or not isinstance(discriminator, nn.Module):
            raise TypeError("generator, discriminator: expected torch.nn.Module instances")
        if not callable(data):
            raise TypeError(f"data: expected a callable data(n, generator), got {type(data).__name__}")
        for name, v in (("gen_steps", gen_steps), ("d_steps", d_steps)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not isinstance(eta, (int, float)) or not eta > 0:
            raise ValueError(f"eta: expected a positive step size, got {eta!r}")
        latent_dim = latent_dim if latent_dim is not None else getattr(generator, "latent_dim", None)
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError("latent_dim: expected a positive int (or a generator with a .latent_dim attribute)")
        self.G, self.D, self.data, self.h = generator, discriminator, data, get_h(h)
        self.eta, self.gen_steps, self.d_steps, self.latent_dim = float(eta), gen_steps, d_steps, latent_dim
        self.opt_G = gen_optimizer(generator.parameters(), lr=gen_lr)
        self.opt_D = d_optimizer(discriminator.parameters(), lr=d_lr)
        self.rng = torch.Generator().manual_seed(int(seed))
        p = next(generator.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.history: Dict[str, List[float]] = {"d": [], "g": []}
        if ema_decay is not None and (isinstance(ema_decay, bool) or not 0.0 <= ema_decay < 1.0):
            raise ValueError(f"ema_decay: expected None or a decay in [0, 1), got {ema_decay!r}")
        self.ema_decay = ema_decay
        self.ema = copy.deepcopy(generator).requires_grad_(False) if ema_decay is not None else None

    def _z(self, n):
        return torch.randn(n, self.latent_dim, generator=self.rng, dtype=self.dtype).to(self.device)

    def step(self, batch_size: int) -> None:
        for _ in range(self.d_steps):
            xr = self.data(batch_size, self.rng).to(device=self.device, dtype=self.dtype)
            with torch.no_grad():
                xf = self.G(self._z(batch_size))
            ld = discriminator_loss(self.D, xr, xf)
            self.opt_D.zero_grad(set_to_none=True)
            ld.backward()
            self.opt_D.step()
            self.history["d"].append(float(ld.detach()))
        z = self._z(batch_size)
        with torch.no_grad():
            xk = self.G(z)
        target = particle_step(self.D, xk, self.eta, self.h)  # moved particles, fixed during the K steps
        for _ in range(self.gen_steps):
            lg = regression_loss(self.G(z), target)
            self.opt_G.zero_grad(set_to_none=True)
            lg.backward()
            self.opt_G.step()
        self.history["g"].append(float(lg.detach()))
        if self.ema is not None:
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.G.parameters()):
                    pe.mul_(self.ema_decay).add_(p.detach(), alpha=1.0 - self.ema_decay)
                for be, b in zip(self.ema.buffers(), self.G.buffers()):
                    be.copy_(b)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, use_ema: bool = True) -> torch.Tensor:
        """``n`` one-step samples ``G(z)``, ``z ~ N(0, I)`` — from the evaluation EMA when one is kept
        and ``use_ema``; ``generator`` seeds ``z`` (default: the trainer's stream)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        g = self.rng if generator is None else generator
        z = torch.randn(n, self.latent_dim, generator=g, dtype=self.dtype).to(self.device)
        net = self.ema if (use_ema and self.ema is not None) else self.G
        return net(z)

    def train(self, steps: int, batch_size: int = 256) -> Dict[str, List[float]]:
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        for _ in range(steps):
            self.step(batch_size)
        return self.history
