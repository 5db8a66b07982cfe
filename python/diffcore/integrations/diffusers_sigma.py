"""The diffusers methods the drop-in runs step by step in diffusers' own arithmetic (one class per method).

:class:`~diffcore.integrations.diffusers.DiffcoreScheduler` runs most sources on a diffcore coefficient
plan (float64 coefficients, one fused step). The methods here are the ones where that is not enough to
reproduce what diffusers returns within 1e-5 of the output:

* the σ-space samplers of Karras et al. 2022 (EDM, Alg. 1-2; "The Principles of Diffusion Models"
  §9.2) as diffusers writes them — Euler (with its churn), Heun, Euler ancestral, EDM Euler, linear
  multistep (LMS), DPM-Solver-2 with a log-σ midpoint (KDPM2, k-diffusion's ``sample_dpm_2``) and its
  ancestral form. Their state is ``x/α`` and diffusers computes ``x̂0 = x/α − σ·ε̂`` and then
  ``(x/α − x̂0)/σ`` in float32: at σ in the tens to thousands (the first of 1-3 steps, zero-SNR
  grids) that cancellation costs diffusers up to ~1e-3 of the output, which a float64 plan does not
  lose, so the difference is diffusers' rounding and is reproduced by computing in the same order;
* DEIS in its log-ρ form (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
  Integrator", §4, with the Lagrange polynomial in log ρ and ρ = σ/α), whose coefficients diffusers
  evaluates in float32 from differences of antiderivatives (diffcore's float64 version is the
  ``deis_logrho`` solver);
* PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds", eq. 9-12):
  PLMS with its Runge–Kutta warm-up, whose protocol calls the network at repeated timesteps and
  combines the outputs before its DDIM-like transfer ``φ``;
* stochastic flow matching (re-noising x̂0 to the next level with fresh noise).

Every stochastic method draws its noise from the ``generator`` given to ``step`` with diffusers'
``randn_tensor`` at the same points, shapes and dtypes as diffusers, so a seeded run reproduces
diffusers' run. Each stepper reads the grid the source scheduler computed in its own
``set_timesteps`` (``sigmas``, ``timesteps``, ``alphas_cumprod`` and the method's auxiliary levels)
and indexes it by ``step_index``, the entry of ``timesteps`` being stepped.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import numpy as np
import torch

from diffusers.utils.torch_utils import randn_tensor

__all__ = ["Stepper", "STEPPERS"]


def _denoised(pred: str, x: torch.Tensor, out: torch.Tensor, sigma, sigma_v=None) -> torch.Tensor:
    """x̂0 of a σ-space state x = x0 + σ·ε (Karras et al. 2022, Table 1 with α = 1): ε-prediction
    ``x − σ·ε̂``; v-prediction on the VP state ``αx`` (``c_skip = 1/(σ²+1)``, ``c_out = −σ/√(σ²+1)``
    at ``sigma_v``, which diffusers' Euler takes before its churn); a data prediction as is."""
    if pred == "epsilon":
        return x - sigma * out
    if pred == "v_prediction":
        s = sigma if sigma_v is None else sigma_v
        return out * (-s / (s ** 2 + 1) ** 0.5) + (x / (s ** 2 + 1))
    if pred in ("sample", "original_sample"):
        return out
    raise ValueError(f"prediction_type: expected 'epsilon', 'v_prediction' or 'sample', got {pred!r}")


def _noise(like: torch.Tensor, generator, dtype=None) -> torch.Tensor:
    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=dtype or like.dtype)


class Stepper:
    """One diffusers method on the source's grid. ``src`` is the source scheduler after its
    ``set_timesteps``; ``k`` is the entry of ``src.timesteps`` (diffusers' ``step_index``).

    Subclasses implement :meth:`step` and, where the network input is scaled, :meth:`scale`."""

    #: whether the source class starts a loop at ``set_begin_index`` (img2img)
    begin_index = True
    #: the prediction types diffusers' step takes for this method
    predictions = ("epsilon", "v_prediction", "sample")

    def __init__(self, src):
        self.src = src
        self.pred = src.config.get("prediction_type", "flow_prediction")
        if self.pred not in self.predictions:
            raise ValueError(f"prediction_type: {type(src).__name__}.step takes {list(self.predictions)}, got "
                             f"{self.pred!r}")
        self.reset()

    def reset(self) -> None:
        """Forget the run state (a new loop)."""

    def scale(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return x

    def step(self, out: torch.Tensor, x: torch.Tensor, k: int, generator, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    # -- the forward process at a listed level ------------------------------------------------------
    def _index(self, t, listed: torch.Tensor) -> int:
        hits = (listed == t).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timesteps: {float(t)} is not an entry of the scheduler's timesteps "
                             f"{listed.tolist()}; {type(self.src).__name__}.add_noise looks the timestep up in its "
                             "own schedule (pass one of scheduler.timesteps)")
        return int(hits[1 if len(hits) > 1 else 0])

    def _indices(self, timesteps: torch.Tensor, begin: Optional[int], k: Optional[int]):
        if begin is None:
            listed = self.src.timesteps.to(timesteps.device)
            return [self._index(t, listed) for t in timesteps]
        return [k if k is not None else begin] * timesteps.shape[0]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, begin, k) -> torch.Tensor:
        """σ-space: ``x0 + σ·noise`` at the level of each listed timestep (at the loop's current entry
        after a begin index, as diffusers)."""
        sigmas = self.src.sigmas.to(device=x0.device, dtype=x0.dtype)
        sigma = sigmas[self._indices(timesteps, begin, k)].flatten()
        sigma = sigma.reshape((-1,) + (1,) * (x0.dim() - 1))
        return x0 + noise * sigma


class Euler(Stepper):
    """Euler in σ (Karras et al. 2022, Alg. 2 with churn γ = min(S_churn/N, √2 − 1) on
    ``[s_tmin, s_tmax]``): the network is evaluated at σ, the state is raised to σ̂ = σ(1 + γ) with
    fresh noise, and the step goes from σ̂ to the next level with the derivative ``(x − x̂0)/σ̂``."""

    def scale(self, x, k):
        return x / ((self.src.sigmas[k] ** 2 + 1) ** 0.5)

    def _x0(self, x, out, sigma_hat, sigma):
        return _denoised(self.pred, x, out, sigma_hat, sigma)

    def step(self, out, x, k, generator, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
        sigmas = self.src.sigmas
        x = x.to(torch.float32)
        sigma = sigmas[k]
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + _noise(out, generator) * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
        d = (x - self._x0(x, out, sigma_hat, sigma)) / sigma_hat
        return (x + d * (sigmas[k + 1] - sigma_hat)).to(out.dtype)


class EDMEuler(Euler):
    """Euler on EDM's σ-space with the network preconditioned (Karras et al. 2022, Table 1):
    input ``c_in·x``, x̂0 = ``c_skip·x + c_out·F``."""

    predictions = ("epsilon", "v_prediction")

    def scale(self, x, k):  # c_in = 1/√(σ² + σ_data²)
        return x * (1 / ((self.src.sigmas[k] ** 2 + self.src.config.sigma_data ** 2) ** 0.5))

    def _x0(self, x, out, sigma_hat, sigma):
        sd = self.src.config.sigma_data
        c_skip = sd ** 2 / (sigma_hat ** 2 + sd ** 2)
        sign = -1 if self.pred == "v_prediction" else 1
        c_out = sign * sigma_hat * sd / (sigma_hat ** 2 + sd ** 2) ** 0.5
        return c_skip * x + c_out * out


class EulerAncestral(Euler):
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``; Karras et al. 2022 §4 with the DDPM
    split of σ → σ' into a deterministic step to σ_down and noise of σ_up, σ_down² + σ_up² = σ'²)."""

    predictions = ("epsilon", "v_prediction")

    def step(self, out, x, k, generator, **churn):
        sigmas = self.src.sigmas
        sigma, sigma_to = sigmas[k], sigmas[k + 1]
        x = x.to(torch.float32)
        x0 = _denoised(self.pred, x, out, sigma)
        sigma_up = (sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2) ** 0.5
        sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
        prev = x + (x - x0) / sigma * (sigma_down - sigma)
        prev = prev + _noise(out, generator) * sigma_up
        return prev.to(out.dtype)


class _TwoStage(Stepper):
    """A two-stage σ-space method listed as interleaved entries (diffusers' ``sigmas`` repeat every inner
    level): the first stage keeps the step's start, the second finishes the step from it."""

    def reset(self):
        self.start = None  # the step's starting state while its second stage is pending

    @property
    def first(self) -> bool:
        return self.start is None


class Heun(_TwoStage):
    """Heun's method in σ (Karras et al. 2022, Alg. 1): Euler to the next level, then the trapezoid
    of the two derivatives; the step into σ = 0 is Euler alone."""

    def reset(self):
        super().reset()
        self.d0 = self.dt = None

    def scale(self, x, k):
        return x / ((self.src.sigmas[k] ** 2 + 1) ** 0.5)

    def step(self, out, x, k, generator, **churn):
        sigmas = self.src.sigmas
        sigma, sigma_next = (sigmas[k], sigmas[k + 1]) if self.first else (sigmas[k - 1], sigmas[k])
        x0 = _denoised(self.pred, x, out, sigma if self.first else sigma_next)
        if self.src.config.clip_sample:
            r = self.src.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        if self.first:
            d = (x - x0) / sigma
            self.d0, self.dt, self.start = d, sigma_next - sigma, x
            return x + d * self.dt
        d = (self.d0 + (x - x0) / sigma_next) / 2
        x, dt = self.start, self.dt
        self.reset()
        return x + d * dt


class KDPM2(_TwoStage):
    """DPM-Solver-2 in σ with the midpoint at the geometric mean of the levels (k-diffusion's
    ``sample_dpm_2``; Lu et al. 2022, DPM-Solver, Alg. 1 with r = ½ in log σ): Euler to the
    midpoint σ_m = √(σ·σ'), then the full step with the midpoint's derivative."""

    predictions = ("epsilon", "v_prediction")

    ancestral = False

    def scale(self, x, k):
        sigma = self.src.sigmas[k] if self.first else self.src.sigmas_interpol[k]
        return x / ((sigma ** 2 + 1) ** 0.5)

    def _levels(self, k):
        s = self.src
        if self.first:
            return s.sigmas[k], s.sigmas_interpol[k + 1], s.sigmas[k + 1]
        return s.sigmas[k - 1], s.sigmas_interpol[k], s.sigmas[k]

    def step(self, out, x, k, generator, **churn):
        sigma, sigma_mid, sigma_next = self._levels(k)
        x0 = _denoised(self.pred, x, out, sigma if self.first else sigma_mid)
        if self.first:
            self.start = x
            return x + (x - x0) / sigma * (sigma_mid - sigma)
        d = (x - x0) / sigma_mid
        x, self.start = self.start, None
        return self._finish(x, d, sigma, sigma_next, k, out, generator)

    def _finish(self, x, d, sigma, sigma_next, k, out, generator):
        return x + d * (sigma_next - sigma)


class KDPM2Ancestral(KDPM2):
    """KDPM2 to σ_down with σ_up noise after the full step (k-diffusion's ``sample_dpm_2_ancestral``);
    the midpoint is √(σ·σ_down)."""

    def scale(self, x, k):
        sigma = self.src.sigmas[k] if self.first else self.src.sigmas_interpol[k - 1]
        return x / ((sigma ** 2 + 1) ** 0.5)

    def _levels(self, k):
        s = self.src
        if self.first:
            return s.sigmas[k], s.sigmas_interpol[k], None
        return s.sigmas[k - 1], s.sigmas_interpol[k - 1], None

    def _finish(self, x, d, sigma, sigma_next, k, out, generator):
        s = self.src
        prev = x + d * (s.sigmas_down[k - 1] - sigma)
        return prev + _noise(out, generator) * s.sigmas_up[k - 1]


class LMS(Stepper):
    """Linear multistep in σ (k-diffusion's ``sample_lms``; "The Principles of Diffusion Models" §9.3):
    the derivatives ``d_j = (x_j − x̂0_j)/σ_j`` of up to ``order`` levels, each weighted by the
    integral over [σ_k, σ_{k+1}] of its Lagrange basis polynomial through those levels. The integral
    is exact (Gauss–Legendre with more nodes than the degree); diffusers integrates the same
    polynomial adaptively, to float64 rounding."""

    order = 4

    def reset(self):
        self.ds = []

    def scale(self, x, k):
        return x / ((self.src.sigmas[k] ** 2 + 1) ** 0.5)

    def coefficients(self, k: int, order: int):
        s = self.src.sigmas[max(k - order + 1, 0):k + 2].double().tolist()
        nodes = {j: s[k - j - max(k - order + 1, 0)] for j in range(order)}  # σ_{k−j}
        a, b = s[-2], s[-1]
        xg, wg = np.polynomial.legendre.leggauss(4)
        tau = 0.5 * (a + b) + 0.5 * (b - a) * xg
        coefs = []
        for j in range(order):
            ell = np.ones_like(tau)
            for m in range(order):
                if m != j:
                    ell *= (tau - nodes[m]) / (nodes[j] - nodes[m])
            coefs.append(float(0.5 * (b - a) * np.dot(wg, ell)))
        return coefs

    def step(self, out, x, k, generator, order: int = 4, **churn):
        sigma = self.src.sigmas[k]
        x0 = _denoised(self.pred, x, out, sigma)
        self.ds.append((x - x0) / sigma)
        if len(self.ds) > order:
            self.ds.pop(0)
        # diffusers takes min(step_index + 1, order) coefficients (after a begin index, more than the
        # derivatives it holds; the pairing below stops at the shorter list, as its zip does)
        coefs = self.coefficients(k, min(k + 1, order))
        acc = 0
        for c, d in zip(coefs, reversed(self.ds)):
            acc = acc + c * d
        return x + acc


class DEIS(Stepper):
    """DEIS with the log-ρ Lagrange polynomial (Zhang & Chen 2023, §4; ρ = σ/α): ε̂ at the last 1-3
    levels is interpolated by a polynomial in log ρ and integrated exactly in ρ, so
    ``x'/α' = x/α + Σ_j C_j ε̂_j`` with ``C_j = ∫_{ρ}^{ρ'} ℓ_j(log r) dr``. The antiderivatives in
    closed form (of ``t·P(log t)``) are evaluated in float32 as diffusers does; orders are lowered
    during warm-up and, below 15 steps, at the last two steps."""

    predictions = ("epsilon", "v_prediction", "sample", "flow_prediction")

    def reset(self):
        n = int(self.src.config.solver_order)
        self.outs = [None] * n
        self.lower = 0

    def _alpha_sigma(self, sigma):
        if self.src.config.use_flow_sigmas:
            return 1 - sigma, sigma
        a = 1 / ((sigma ** 2 + 1) ** 0.5)
        return a, sigma * a

    def _eps(self, out, x, k):
        a, s = self._alpha_sigma(self.src.sigmas[k])
        p = self.pred
        if p == "epsilon":
            x0 = (x - s * out) / a
        elif p == "sample":
            x0 = out
        elif p == "v_prediction":
            x0 = a * x - s * out
        elif p == "flow_prediction":
            x0 = x - self.src.sigmas[k] * out
        else:
            raise ValueError(f"prediction_type: unknown {p!r}")
        if self.src.config.thresholding:
            x0 = self.src._threshold_sample(x0)
        return (x - a * x0) / s

    def step(self, out, x, k, generator, **churn):
        cfg, sig = self.src.config, self.src.sigmas
        n = len(self.src.timesteps)
        low = cfg.lower_order_final and n < 15
        eps = self._eps(out, x, k)
        self.outs = self.outs[1:] + [eps]
        order = int(cfg.solver_order)
        if order == 1 or self.lower < 1 or (low and k == n - 1):
            use = 1
        elif order == 2 or self.lower < 2 or (low and k == n - 2):
            use = 2
        else:
            use = 3
        self.lower = min(self.lower + 1, order)
        a_t, s_t = self._alpha_sigma(sig[k + 1])
        a_0, s_0 = self._alpha_sigma(sig[k])
        if use == 1:  # DDIM in ε form: x' = (α'/α)x − σ'(e^h − 1)ε̂
            h = (torch.log(a_t) - torch.log(s_t)) - (torch.log(a_0) - torch.log(s_0))
            return (a_t / a_0) * x - (s_t * (torch.exp(h) - 1.0)) * eps
        rhos = [s_t / a_t] + [s / a for a, s in (self._alpha_sigma(sig[k - j]) for j in range(use))]
        coefs = [torch.tensor(float(c), dtype=torch.float32)
                 for c in _deis_logrho_coefficients([np.float32(r.item()) for r in rhos])]
        acc = x / a_0
        for j in range(use):
            acc = acc + coefs[j] * self.outs[-1 - j]
        return a_t * acc

    def add_noise(self, x0, noise, timesteps, begin, k):
        sigmas = self.src.sigmas.to(device=x0.device, dtype=x0.dtype)
        sigma = sigmas[self._indices(timesteps, begin, k)].flatten().reshape((-1,) + (1,) * (x0.dim() - 1))
        a, s = self._alpha_sigma(sigma)
        return a * x0 + s * noise


def _deis_logrho_coefficients(rho):
    """``C_j = ∫_{ρ_0}^{ρ'} ℓ_j(log r) dr`` for ``rho = [ρ', ρ_0, ρ_1(, ρ_2)]`` (the target level, then
    the levels of the outputs, newest first), in float32 like diffusers. With u = log r the
    antiderivatives of ``r·(u − c)/(b − c)`` and ``r·(u − c)(u − d)/((b − c)(b − d))`` are
    ``r(u − c − 1)/(b − c)`` and ``r((u − c)(u − d) − (2u − c − d) + 2)/((b − c)(b − d))``, expanded
    as diffusers expands them."""
    log = np.log
    t, r = rho[0], rho[1:]
    if len(r) == 2:
        def F(x, b, c):
            return x * (-log(c) + log(x) - 1) / (log(b) - log(c))
        return [F(t, r[0], r[1]) - F(r[0], r[0], r[1]), F(t, r[1], r[0]) - F(r[0], r[1], r[0])]

    def G(x, b, c, d):
        num = x * (log(c) * (log(d) - log(x) + 1) - log(d) * log(x) + log(d) + log(x) ** 2 - 2 * log(x) + 2)
        return num / ((log(b) - log(c)) * (log(b) - log(d)))
    b0, b1, b2 = r
    return [G(t, b0, b1, b2) - G(b0, b0, b1, b2), G(t, b1, b2, b0) - G(b0, b1, b2, b0),
            G(t, b2, b0, b1) - G(b0, b2, b0, b1)]


class PNDM(Stepper):
    """PNDM (Liu et al. 2022, eq. 9-12): the pseudo-numerical transfer
    ``φ(x, ε, t → t') = √(ᾱ'/ᾱ)·x − (ᾱ' − ᾱ)·ε / (ᾱ√(1 − ᾱ') + √(ᾱ(1 − ᾱ)ᾱ'))`` applied to a
    linear-multistep combination of ε̂ (PLMS, weights 1, (3, −1)/2, (23, −16, 5)/12,
    (55, −59, 37, −9)/24). The first steps are pseudo Runge–Kutta (four evaluations: at t, twice at
    the half step, at t') or, with ``skip_prk_steps``, one pseudo-improved-Euler step that evaluates
    the network twice at t' (the repeated timestep diffusers lists)."""

    predictions = ("epsilon", "v_prediction")

    begin_index = False

    def reset(self):
        self.ets, self.n, self.acc, self.start = [], 0, 0, None

    def _phi(self, x, t, t_prev, eps):
        s = self.src
        a = s.alphas_cumprod[t]
        a_prev = s.alphas_cumprod[t_prev] if t_prev >= 0 else s.final_alpha_cumprod
        if self.pred == "v_prediction":
            eps = (a ** 0.5) * eps + ((1 - a) ** 0.5) * x
        denom = a * (1 - a_prev) ** 0.5 + (a * (1 - a) * a_prev) ** 0.5
        return (a_prev / a) ** 0.5 * x - (a_prev - a) * eps / denom

    def step(self, out, x, k, generator, **churn):
        s = self.src
        t = int(s.timesteps[k])
        N, n = s.config.num_train_timesteps, s.num_inference_steps
        if not s.config.skip_prk_steps and self.n < len(s.prk_timesteps):
            return self._prk(out, x, t, N // n // 2)
        return self._plms(out, x, t, N // n)

    def _prk(self, out, x, t, half):
        s, c = self.src, self.n
        t_prev = t - (0 if c % 2 else half)
        t0 = int(s.prk_timesteps[c // 4 * 4])
        if c % 4 == 0:  # RK4 weights 1/6, 1/3, 1/3, 1/6 on the four ε̂
            self.acc += 1 / 6 * out
            self.ets.append(out)
            self.start = x
        elif c % 4 in (1, 2):
            self.acc += 1 / 3 * out
        else:
            out = self.acc + 1 / 6 * out
            self.acc = 0
        self.n += 1
        return self._phi(self.start if self.start is not None else x, t0, t_prev, out)

    def _plms(self, out, x, t, dt):
        t_prev = t - dt
        if self.n != 1:
            self.ets = self.ets[-3:] + [out]
        else:  # the second evaluation at t' of the warm-up: φ from t to t' with the mean ε̂
            t_prev, t = t, t + dt
        e = self.ets
        if len(e) == 1 and self.n == 0:
            self.start = x
        elif len(e) == 1 and self.n == 1:
            out = (out + e[-1]) / 2
            x, self.start = self.start, None
        elif len(e) == 2:
            out = (3 * e[-1] - e[-2]) / 2
        elif len(e) == 3:
            out = (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
        else:
            out = (1 / 24) * (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4])
        self.n += 1
        return self._phi(x, t, t_prev, out)

    def add_noise(self, x0, noise, timesteps, begin, k):
        """VP: ``√ᾱ_t·x0 + √(1 − ᾱ_t)·noise`` at any integer training timestep (PNDM indexes ᾱ)."""
        if timesteps.is_floating_point() and not bool((timesteps == timesteps.round()).all()):
            raise ValueError(f"timesteps: expected integer training timesteps, got {timesteps.tolist()}")
        N = self.src.config.num_train_timesteps
        if bool(((timesteps < 0) | (timesteps >= N)).any()):
            raise ValueError(f"timesteps: expected training timesteps in [0, {N - 1}], got {timesteps.tolist()}")
        acp = self.src.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[timesteps.long().to(x0.device)]
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return (acp ** 0.5).flatten().reshape(shape) * x0 + ((1 - acp) ** 0.5).flatten().reshape(shape) * noise


class FlowMatchStochastic(Stepper):
    """Flow matching with re-noising (``stochastic_sampling``): x̂0 = x − σ·v̂, then
    ``x' = (1 − σ')·x̂0 + σ'·z`` with fresh noise z at every step (the forward process at σ')."""

    predictions = ("flow_prediction",)

    def step(self, out, x, k, generator, **churn):
        sigmas = self.src.sigmas
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        x = x.to(torch.float32)
        x0 = x - sigma * out
        z = _noise(x, generator)
        return ((1.0 - sigma_next) * x0 + sigma_next * z).to(out.dtype)

    def add_noise(self, x0, noise, timesteps, begin, k):
        sigmas = self.src.sigmas.to(device=x0.device, dtype=x0.dtype)
        sigma = sigmas[self._indices(timesteps, begin, k)].flatten().reshape((-1,) + (1,) * (x0.dim() - 1))
        return sigma * noise + (1.0 - sigma) * x0


#: diffusers class → its stepper
STEPPERS: Dict[str, Type[Stepper]] = {
    "EulerDiscreteScheduler": Euler, "EDMEulerScheduler": EDMEuler, "EulerAncestralDiscreteScheduler": EulerAncestral,
    "HeunDiscreteScheduler": Heun, "KDPM2DiscreteScheduler": KDPM2, "KDPM2AncestralDiscreteScheduler": KDPM2Ancestral,
    "LMSDiscreteScheduler": LMS, "DEISMultistepScheduler": DEIS, "PNDMScheduler": PNDM,
    "FlowMatchEulerDiscreteScheduler": FlowMatchStochastic,
}
