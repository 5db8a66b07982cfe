"""The rest of ``k_diffusion.sampling``: its helpers (``to_d``, ``get_ancestral_step``,
``BrownianTreeNoiseSampler``) and the samplers ``sample_lms``, ``sample_dpm_2_ancestral``,
``sample_dpmpp_2s_ancestral``, ``sample_dpmpp_sde``, ``sample_dpm_fast``, ``sample_dpm_adaptive``.

Where a diffcore solver computes the same update it runs as that solver's fused plan:
``sample_lms`` is tAB-DEIS in σ (orders ≤ 4) up to its last positive σ, and deterministic
``sample_dpm_fast`` is the ``dpm_solver_fast`` plan on a grid holding k-diffusion's λ-uniform outer
steps. The rest is written out in k-diffusion's form, because no plan has the step:

* the ancestral samplers step deterministically to ``σ_down`` and then add noise back up to
  ``σ_{i+1}``; a plan on the grid ``sigmas`` has no stage there (Euler ancestral is the one such
  diffcore solver, :func:`diffcore.k.sample_euler_ancestral`);
* ``sample_dpmpp_sde`` draws noise inside its intermediate stage;
* ``sample_lms`` extrapolates its polynomial to σ = 0 on a last step where DEIS steps x ← x̂;
* ``sample_dpm_adaptive`` (Lu et al. 2022, arXiv:2206.00927, App. C) uses k-diffusion's PID
  step-size controller (Söderlind 2003's form with a 1 + atan(x − 1) limiter), not
  :class:`diffcore.solvers.DPMAdaptive`'s ``θ h E^{−1/k}`` rule: the step sequence would differ.

Each function equals k-diffusion's (``tests/test_k_more.py`` compares them in float64 to 1e-12 with
the same noise) and runs under ``torch.no_grad()`` as k-diffusion's do. DPM-Solver's λ-times are
float64 on the host (k-diffusion uses torch's default dtype), so float32 runs are at least as
accurate as k-diffusion's.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..noise import BrownianTree, default_seed
from ..solvers import get as _get_solver
from ._driver import _progress, check_inputs, run

__all__ = ["to_d", "get_ancestral_step", "BrownianTreeNoiseSampler", "sample_lms", "sample_dpm_2_ancestral",
           "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpm_fast", "sample_dpm_adaptive"]


def _append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    if v.dim() > ndim:
        raise ValueError(f"sigma: expected at most {ndim} dims (x's), got {v.dim()}")
    return v[(...,) + (None,) * (ndim - v.dim())]


def to_d(x: torch.Tensor, sigma, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative ``dx/dσ = (x − x̂)/σ`` of a denoiser output (Karras et
    al. 2022, Eq. (3) with σ(t) = t). ``sigma``: a number, a scalar or a per-sample ``[B]`` tensor."""
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return (x - denoised) / _append_dims(sigma, x.dim())


def _eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta < math.inf:
        raise ValueError(f"eta: expected a finite number >= 0, got {eta!r}")
    return float(eta)


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """``(σ_down, σ_up)`` of an ancestral step from ``sigma_from`` to ``sigma_to``: the deterministic
    step goes to σ_down and noise of std σ_up brings the marginal back to σ_to, σ_down² + σ_up² = σ_to²,
    with σ_up = min(σ_to, η √(σ_to² (σ_from² − σ_to²)/σ_from²)) — η = 1 is the DDPM posterior's noise
    (Ho et al. 2020 in σ-space), η = 0 the deterministic step."""
    eta = _eta(eta)
    if not eta:
        return sigma_to, 0.0
    if float(sigma_from) <= 0:
        raise ValueError(f"sigma_from: expected a noise level > 0, got {float(sigma_from)}")
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


class BrownianTreeNoiseSampler:
    """k-diffusion's ``BrownianTreeNoiseSampler`` interface backed by :class:`diffcore.noise.BrownianTree`:
    ``ns(sigma, sigma_next)`` is ``(W(τ(σ_next)) − W(τ(σ)))/√|τ(σ_next) − τ(σ)|`` for one Brownian
    path W fixed by ``seed`` (τ = ``transform``), so a finer grid refines the same path (the property
    the SDE samplers need for results that converge as steps are added).

    Same law as k-diffusion's ``torchsde.BrownianTree``, different numbers (a stateless
    counter-based tree, the same on CPU and CUDA and in any query order).

    Args:
        x: the tensor whose shape, dtype and device the noise takes.
        sigma_min, sigma_max: the interval queries may use (after ``transform``).
        seed: an int (default: drawn from torch's global generator, as k-diffusion), or a list of
            ``x.shape[0]`` ints in ``[0, 2**32)``, one path per sample: a sample's noise then depends on
            its seed only, not on its position in the batch.
        transform: maps σ to the tree's time (k-diffusion's argument; identity by default).
    """

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda s: s):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError("x: expected a floating-point torch tensor with a batch dimension")
        if not callable(transform):
            raise TypeError(f"transform: expected a callable sigma -> time, got {type(transform).__name__}")
        self.transform = transform
        t0, t1 = self._time("sigma_min", sigma_min), self._time("sigma_max", sigma_max)
        if t0.numel() != 1 or t1.numel() != 1:
            raise ValueError("sigma_min, sigma_max: expected scalars")
        t0, t1 = sorted((float(t0), float(t1)))
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise ValueError(f"sigma_min, sigma_max: expected two distinct finite noise levels, got {sigma_min}, "
                             f"{sigma_max} (times {t0}, {t1} after transform)")
        # queries at the ends arrive recomputed (e.g. exp(-log σ)) and may fall an ulp outside
        self._slack = 16 * max(np.spacing(np.float32(abs(t0))), np.spacing(np.float32(abs(t1))))
        if isinstance(seed, (list, tuple)):
            if len(seed) != x.shape[0]:
                raise ValueError(f"seed: expected one seed per sample ({x.shape[0]}), got {len(seed)}")
            for s in seed:
                if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2 ** 32:
                    raise ValueError(f"seed: expected a list of ints in [0, 2**32), got {s!r} in it")
            self.tree = BrownianTree(t0, t1, tuple(x.shape), seed=0, sample_ids=list(seed), device=x.device,
                                     dtype=x.dtype)
        else:
            self.tree = BrownianTree(t0, t1, tuple(x.shape), seed=default_seed() if seed is None else seed,
                                     device=x.device, dtype=x.dtype)

    def _time(self, name, sigma) -> torch.Tensor:
        try:
            t = self.transform(torch.as_tensor(sigma))
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: expected a noise level, got {sigma!r} ({e})") from None
        return torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        ta, tb = self._time("sigma", sigma), self._time("sigma_next", sigma_next)
        lo, hi = self.tree.t0, self.tree.t1
        for name, t in (("sigma", ta), ("sigma_next", tb)):
            if bool(((t < lo - self._slack) | (t > hi + self._slack)).any()):
                raise ValueError(f"{name}: expected a noise level inside the sampler's [sigma_min, sigma_max], "
                                 f"got time {t.tolist()} outside [{lo}, {hi}]")
        ta, tb = ta.clamp(lo, hi), tb.clamp(lo, hi)
        if bool((ta == tb).any()):
            raise ValueError("sigma, sigma_next: expected two different noise levels (the increment over an "
                             "empty interval has no normalized value)")
        return self.tree.increment(tb if tb.numel() > 1 else float(tb), ta if ta.numel() > 1 else float(ta))


def _noise_sampler(noise_sampler, x):
    if noise_sampler is None:
        return lambda sigma, sigma_next: torch.randn_like(x)
    if not callable(noise_sampler):
        raise TypeError(f"noise_sampler: expected a callable noise_sampler(sigma, sigma_next) or None, "
                        f"got {type(noise_sampler).__name__}")

    def checked(sigma, sigma_next):
        z = noise_sampler(sigma, sigma_next)
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"noise_sampler: expected a tensor of x's shape {tuple(x.shape)}, got "
                             f"{getattr(z, 'shape', type(z).__name__)}")
        return z
    return checked


def _den(model, kw, x, sigma, s_in):
    d = model(x, sigma * s_in, **kw)
    if not isinstance(d, torch.Tensor) or d.shape != x.shape:
        raise ValueError(f"model: expected the denoised sample, a tensor of shape {tuple(x.shape)}, got "
                         f"{getattr(d, 'shape', type(d).__name__)}")
    return d


def _lms_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """∫_{t_i}^{t_{i+1}} ℓ_j(τ) dτ for the Lagrange basis polynomial ℓ_j through t_i, …, t_{i−order+1}
    (exactly; k-diffusion integrates the same polynomial with scipy's adaptive quadrature, which is
    exact for these degrees up to rounding)."""
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly = poly * np.polynomial.Polynomial([-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    anti = poly.integ()
    return float(anti(t[i + 1]) - anti(t[i]))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep in σ (Karras et al. 2022's LMS baseline): the last ``order`` derivatives
    (x − x̂)/σ interpolated by a polynomial in σ, integrated exactly over each step, the step to σ = 0
    included. With α = 1 the steps between positive σ are diffcore's tAB-DEIS of the same order
    (Zhang & Chen 2023: the Lagrange polynomial of ε̂ = (x − x̂)/σ integrated in ρ = σ), run as its
    fused plan for ``order`` ≤ 4; a final step to σ = 0, where DEIS would step x ← x̂, and orders
    above 4 take k-diffusion's form."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order: expected a positive int, got {order!r}")
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    kw = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    t = grid.numpy()
    n = len(sigmas) - 1
    ds = []
    with _progress_bar(n, disable) as pbar:
        first = 0
        fused = n - 1 if grid[-1] == 0 else n  # steps the DEIS plan takes
        if order <= 4 and fused >= 1:
            from ..solvers.adams import DEIS  # noqa: PLC0415

            def keep(info):  # the derivatives the final step's polynomial needs
                ds.append(to_d(info["x"], info["sigma"], info["denoised"]))
                if len(ds) > order:
                    ds.pop(0)
                if callback is not None:
                    callback(info)
            sub = sigmas[:fused + 1]
            x = run(DEIS(order=order, lower_order_final=False), model, x, sub, grid[:fused + 1], extra_args,
                    keep if fused < n else callback, disable, pbar=pbar)
            first = fused
        for i in range(first, n):
            denoised = _den(model, kw, x, sigmas[i], s_in)
            ds.append(to_d(x, sigmas[i], denoised))
            if len(ds) > order:
                ds.pop(0)
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
            cur = min(i + 1, order)
            coeffs = [_lms_coeff(cur, t, i, j) for j in range(cur)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
            pbar.update(1)
    return x


def _progress_bar(n: int, disable):
    from tqdm.auto import tqdm  # noqa: PLC0415 — as k-diffusion: a bar unless disable

    return tqdm(total=n, disable=disable)


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """DPM-Solver-2 (log-midpoint) steps to σ_down, then noise s_noise·σ_up (see
    :func:`get_ancestral_step`); Euler when σ_down = 0."""
    check_inputs(model, x, sigmas, extra_args, callback)
    _eta(eta)
    kw = extra_args or {}
    ns = _noise_sampler(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in _progress(len(sigmas) - 1, disable):
        denoised = _den(model, kw, x, sigmas[i], s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(torch.as_tensor(sigma_down).log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, _den(model, kw, x_2, sigma_mid, s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                              s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S) (Lu et al. 2022b, stage at the λ-midpoint) to σ_down, then noise s_noise·σ_up;
    Euler when σ_down = 0. ``eta=0`` is :func:`diffcore.k.sample_dpmpp_2s` (diffcore's fused solver)."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    _eta(eta)
    kw = extra_args or {}
    ns = _noise_sampler(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    for i in _progress(len(sigmas) - 1, disable):
        denoised = _den(model, kw, x, sigmas[i], s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), torch.as_tensor(sigma_down).log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = _den(model, kw, x_2, s.neg().exp(), s_in)
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if grid[i + 1] > 0:
            x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                     noise_sampler=None, r=1 / 2):
    """DPM-Solver++ SDE (k-diffusion's two-stage stochastic DPM-Solver++, stage at fraction ``r`` of
    each λ-step, each stage an ancestral step). Default noise: :class:`BrownianTreeNoiseSampler` over
    the grid's positive σ range (diffcore's tree, seeded from torch's global generator)."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    _eta(eta)
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
        raise ValueError(f"r: expected the stage's fraction of the step, 0 < r <= 1, got {r!r}")
    kw = extra_args or {}
    if noise_sampler is None:
        pos = grid[grid > 0]
        if pos.numel() > 1:
            noise_sampler = BrownianTreeNoiseSampler(x, float(pos.min()), float(pos.max()))
        else:  # a single step to σ = 0 is an Euler step: no noise is drawn, and no tree spans one point
            noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
    ns = _noise_sampler(noise_sampler, x)
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()  # noqa: E731
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731
    fac = 1 / (2 * r)
    for i in _progress(len(sigmas) - 1, disable):
        denoised = _den(model, kw, x, sigmas[i], s_in)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if grid[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta)
        s_ = t_fn(torch.as_tensor(sd))
        x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + ns(sigma_fn(t), sigma_fn(s)) * s_noise * su
        denoised_2 = _den(model, kw, x_2, sigma_fn(s), s_in)
        sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
        t_next_ = t_fn(torch.as_tensor(sd))
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + ns(sigma_fn(t), sigma_fn(t_next)) * s_noise * su
    return x


class _PID:
    """k-diffusion's PID step-size controller (Söderlind 2003, with the limiter 1 + atan(x − 1)):
    ``h ← h · limiter(Π ε_k^{β_k})`` over the last three inverse errors; a step is accepted when the
    factor is at least ``accept_safety``."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class _DPM:
    """DPM-Solver-1/2/3 steps on ε = (x − x̂)/σ in λ-time t = −log σ (Lu et al. 2022, Alg. 1 and
    DPM-Solver-3 of App. B, with α = 1), as k-diffusion's ``DPMSolver``. Times are float64 scalars."""

    def __init__(self, model, extra_args, eps_callback, info_callback):
        self.model, self.kw = model, extra_args or {}
        self.eps_callback, self.info_callback = eps_callback, info_callback

    @staticmethod
    def t(sigma):
        return sigma.log().neg()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache, key, x, t):
        if key in cache:
            return cache[key], cache
        sig = self.sigma(t)
        den = _den(self.model, self.kw, x, sig, x.new_ones([x.shape[0]]))
        e = (x - den) / sig
        if self.eps_callback is not None:
            self.eps_callback()
        return e, {key: e, **cache}

    def step1(self, x, t, t_next, cache):
        h = t_next - t
        e, cache = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * e, cache

    def step2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        e, cache = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * e
        e1, cache = self.eps(cache, "eps_r1", u1, s1)
        x2 = x - self.sigma(t_next) * h.expm1() * e - self.sigma(t_next) / (2 * r1) * h.expm1() * (e1 - e)
        return x2, cache

    def step3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        e, cache = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * e
        e1, cache = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * e
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (e1 - e))
        e2, cache = self.eps(cache, "eps_r2", u2, s2)
        x3 = x - self.sigma(t_next) * h.expm1() * e - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (e2 - e)
        return x3, cache

    def ancestral(self, t, t_next, t_end, eta, forward):
        if not eta:
            return t_next, 0.0
        sd, _ = get_ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_next_ = torch.minimum(t_end, self.t(sd)) if forward else t_next
        return t_next_, (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5

    def fast(self, x, t_start, t_end, nfe, eta, s_noise, ns):
        m = nfe // 3 + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1, dtype=torch.float64)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, p in enumerate(orders):
            cache = {}
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self.ancestral(t, t_next, t_end, eta, True)
            e, cache = self.eps(cache, "eps", x, t)
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": i, "t": ts[i], "t_up": t, "denoised": x - self.sigma(t) * e})
            step = {1: self.step1, 2: self.step2, 3: self.step3}[p]
            x, cache = step(x, t, t_next_, cache)
            x = x + su * s_noise * ns(self.sigma(t), self.sigma(t_next))
        return x

    def adaptive(self, x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety, eta,
                 s_noise, ns):
        forward = bool(t_end > t_start)
        h_init = abs(h_init) * (1 if forward else -1)
        atol_t = torch.tensor(atol, dtype=x.dtype, device=x.device)
        s, x_prev = t_start, x
        pid = _PID(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
        info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        streak = 0
        while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
            cache = {}
            t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
            t_, su = self.ancestral(s, t, t_end, eta, forward)
            e, cache = self.eps(cache, "eps", x, s)
            denoised = x - self.sigma(s) * e
            if order == 2:
                x_low, cache = self.step1(x, s, t_, cache)
                x_high, cache = self.step2(x, s, t_, cache)
            else:
                x_low, cache = self.step2(x, s, t_, cache, r1=1 / 3)
                x_high, cache = self.step3(x, s, t_, cache)
            delta = torch.maximum(atol_t, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
            err = float(error)
            if not math.isfinite(err):
                # a NaN error would leave h NaN and the loop spinning forever
                raise ValueError(f"model: the error estimate is not finite at sigma={float(self.sigma(s)):.6g} "
                                 "(the model returned NaN/inf, or x overflowed)")
            accept = pid.propose_step(err)
            if accept:
                x_prev = x_low
                x = x_high + su * s_noise * ns(self.sigma(s), self.sigma(t))
                s = t
                info["n_accept"] += 1
                streak = 0
            else:
                info["n_reject"] += 1
                streak += 1
                if streak >= _MAX_REJECTIONS or not math.isfinite(pid.h) or pid.h == 0:
                    raise RuntimeError(f"rtol, atol: sample_dpm_adaptive rejected {streak} steps in a row at "
                                       f"sigma={float(self.sigma(s)):.6g} (h={pid.h:.3g}); loosen rtol/atol")
            info["nfe"] += order
            info["steps"] += 1
            if self.info_callback is not None:
                self.info_callback({"x": x, "i": info["steps"] - 1, "t": s, "t_up": s, "denoised": denoised,
                                    "error": error, "h": pid.h, **info})
        return x, info


_MAX_REJECTIONS = 1000


def _positive(name, v) -> float:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise ValueError(f"{name}: expected a finite number > 0, got {v!r}")
    return float(v)


def _dpm_common(model, x, sigma_min, sigma_max, extra_args, callback, eta, noise_sampler):
    if not callable(model):
        raise TypeError(f"model: expected a callable denoiser model(x, sigma, **extra_args), got "
                        f"{type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point torch tensor with a batch dimension")
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args: expected a dict of model keyword arguments, got {type(extra_args).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")
    smin, smax = _positive("sigma_min", sigma_min), _positive("sigma_max", sigma_max)
    if smin == smax:
        raise ValueError(f"sigma_min, sigma_max: expected two different noise levels, got {smin} twice")
    eta = _eta(eta)
    if eta and smin > smax:
        raise ValueError("eta: expected 0 for reverse sampling (sigma_min > sigma_max)")
    t_start = torch.tensor(smax, dtype=torch.float64).log().neg()
    t_end = torch.tensor(smin, dtype=torch.float64).log().neg()
    return t_start, t_end, eta, _noise_sampler(noise_sampler, x)


def _info_callback(dpm, callback):
    if callback is None:
        return None
    return lambda info: callback({"sigma": dpm.sigma(info["t"]), "sigma_hat": dpm.sigma(info["t_up"]), **info})


@torch.no_grad()
def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0,
                    s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2022, §3.4): ``n`` model calls over ⌊n/3⌋ + 1 steps uniform in
    λ = −log σ from ``sigma_max`` to ``sigma_min``, orders 3, …, 3 then 2/1 so the calls add up to
    ``n``; ``eta > 0`` makes each step ancestral. (diffcore's ``dpm_solver_fast`` solver is the same
    method on a given grid of ``n + 1`` points.)"""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int number of model calls, got {n!r}")
    t_start, t_end, eta, ns = _dpm_common(model, x, sigma_min, sigma_max, extra_args, callback, eta, noise_sampler)
    from tqdm.auto import tqdm  # noqa: PLC0415 — as k-diffusion: a bar unless disable

    with tqdm(total=n, disable=disable) as pbar:
        dpm = _DPM(model, extra_args, pbar.update, None)
        dpm.info_callback = _info_callback(dpm, callback)
        if eta or t_end < t_start:  # ancestral or reverse: k-diffusion's form
            return dpm.fast(x, t_start, t_end, n, eta, s_noise, ns)
        return _dpm_fast_plan(model, x, t_start, t_end, n, extra_args, dpm, pbar)


class _NoBar:
    @staticmethod
    def update(_n=1):
        pass


def _dpm_fast_plan(model, x, t_start, t_end, n, extra_args, dpm, pbar):
    """Deterministic DPM-Solver-fast as diffcore's fused ``dpm_solver_fast`` plan: its outer steps
    are the points of the given grid at cumulative-order indices and its stages sit at the standard
    λ-fractions, so a grid holding k-diffusion's λ-uniform outer points there (and, in between,
    points that only count the stages) is the same method."""
    from ..solvers.exponential import fast_orders  # noqa: PLC0415

    orders = fast_orders(n, 3)
    lam = torch.linspace(float(t_start), float(t_end), len(orders) + 1, dtype=torch.float64)
    fine = [lam[i] + (lam[i + 1] - lam[i]) * (k / p) for i, p in enumerate(orders) for k in range(p)]
    grid = torch.stack(fine + [lam[-1]]).neg().exp()
    cb = None
    if dpm.info_callback is not None:
        def cb(info):
            i = info["i"]
            dpm.info_callback({"x": info["x"], "i": i, "t": lam[i], "t_up": lam[i], "denoised": info["denoised"]})

    def counted(xx, sigma, **kw):
        out = model(xx, sigma, **kw)
        pbar.update(1)
        return out
    return run(_get_solver("dpm_solver_fast"), counted, x, grid, check_inputs(model, x, grid, extra_args, None),
               extra_args, cb, True, pbar=_NoBar())


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False):
    """Adaptive DPM-Solver-12 (``order=2``) / -23 (``order=3``) (Lu et al. 2022, App. C) from
    ``sigma_max`` to ``sigma_min`` with k-diffusion's PID step-size control: the error is the RMS of
    (x_low − x_high)/max(atol, rtol·max(|x_low|, |x_prev|)) over the whole batch. Returns ``x``, or
    ``(x, info)`` with ``return_info`` (``steps``, ``nfe``, ``n_accept``, ``n_reject``). Raises
    ``RuntimeError`` after 1000 consecutive rejections rather than looping."""
    if isinstance(order, bool) or order not in (2, 3):
        raise ValueError(f"order: expected 2 or 3, got {order!r}")
    rtol, atol = _positive("rtol", rtol), _positive("atol", atol)
    h_init = _positive("h_init", abs(h_init) if isinstance(h_init, (int, float)) else h_init)
    _positive("accept_safety", accept_safety)
    for name, v in (("pcoeff", pcoeff), ("icoeff", icoeff), ("dcoeff", dcoeff)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    t_start, t_end, eta, ns = _dpm_common(model, x, sigma_min, sigma_max, extra_args, callback, eta, noise_sampler)
    from tqdm.auto import tqdm  # noqa: PLC0415

    with tqdm(disable=disable) as pbar:
        dpm = _DPM(model, extra_args, pbar.update, None)
        dpm.info_callback = _info_callback(dpm, callback)
        x, info = dpm.adaptive(x, t_start, t_end, order, rtol, atol, h_init, pcoeff, icoeff, dcoeff, accept_safety,
                               eta, s_noise, ns)
    return (x, info) if return_info else x
