"""k-diffusion-style sampler functions (``k_diffusion.sampling.sample_*``: same names, signatures,
defaults and results), each driving a diffcore solver plan (:mod:`._driver`).

Every function has the signature ``sample_*(model, x, sigmas, extra_args=None, callback=None,
disable=None, **options)``:

* ``model(x, sigma, **extra_args)`` — a denoiser returning x̂₀ for ``x = x₀ + σ ε``; ``sigma`` is a
  ``[B]`` tensor (x's dtype and device).
* ``x`` — the start at ``sigmas[0]`` (e.g. ``torch.randn(shape) * sigmas[0]``).
* ``sigmas`` — strictly decreasing noise levels, 1-D, on x's device or the CPU; a final 0 denoises
  completely (:mod:`.sigmas` builds k-diffusion's grids).
* ``callback`` — called once per step, after the step's first model evaluation, with
  ``{'x': the tensor the denoiser saw (a copy), 'i': step, 'sigma': sigmas[i], 'sigma_hat': the
  noise level it was evaluated at (σ̂_i ≠ σ_i only after EDM churn), 'denoised': the denoiser's
  output there}`` — k-diffusion's dict. For UniPC, ``'x'`` is the predictor's output (its
  correction uses this very evaluation).
* ``disable`` — ``tqdm``'s flag, as k-diffusion (None: a bar on a terminal only).

Stochastic samplers take ``noise_sampler(sigma, sigma_next) → N(0, I)`` shaped like ``x``
(k-diffusion's protocol, called at the same steps and in the same order relative to the model calls
as k-diffusion, so a shared sampler, even ``torch.randn_like`` under one ``torch.manual_seed``,
gives the same samples). It may also be a :class:`diffcore.noise.Noise` (``seed=``,
``sample_ids=``, ``brownian=``): noise computed inside the fused step, reproducible per sample in
any batch. Defaults as k-diffusion: ``torch.randn_like(x)`` for the ancestral samplers; for the
DPM-Solver++ SDE samplers a Brownian tree over the σ range — diffcore's in-kernel tree
(:class:`diffcore.noise.BrownianTree`, ``Noise(seed, brownian=True)``) instead of k-diffusion's
``torchsde.BrownianTree``, seeded the same way (``torch.randint`` on the global generator): the
same law and the same refinement property (more steps refine one Brownian path), different numbers;
pass ``k_diffusion.sampling.BrownianTreeNoiseSampler(x, σ_min, σ_max, seed)`` for k-diffusion's.

Where k-diffusion and diffcore's generic solver defaults differ, these functions follow
k-diffusion: multistep methods raise their order with the history alone (``lower_order_final=False``;
diffusers' rule lowers the last steps' order below 15 steps), and the step to σ = 0 is first order
(x ← x̂ for the data-prediction methods, Euler for the others). A k-diffusion option diffcore
cannot honour exactly raises ``ValueError`` (``s_churn`` for Euler and DPM-2).

Every function runs under ``torch.no_grad()``, as k-diffusion's: a network with trainable parameters
builds no autograd graph (memory), and the model outputs reach diffcore's fused step, which an output
that requires grad would route to the differentiable reference step.

Torch's global generator: the deterministic samplers here draw nothing (k-diffusion's
``sample_euler``, ``sample_heun`` and ``sample_dpm_2`` draw and discard one ``randn_like(x)`` per
step), so a script that chains several samplers under one ``torch.manual_seed`` sees different
numbers after a deterministic call; each stochastic call consumes the generator exactly as
k-diffusion's does.
"""
from __future__ import annotations

import torch

from ..noise import Noise, default_seed
from ..solvers import get as _solver
from ._driver import check_inputs, churn_gammas, run

__all__ = ["sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_dpmpp_2s", "sample_dpmpp_3m", "sample_dpm_3",
           "sample_unipc", "sample_ddim", "sample_ddpm", "sample_deis", "sample_ipndm"]


def _noise(noise_sampler, x: torch.Tensor, sigmas: torch.Tensor, calls, default=None):
    """The noise argument of :func:`._driver.run`: a :class:`Noise` passes through; a k-diffusion
    ``noise_sampler`` (default ``default`` or ``torch.randn_like(x)``) becomes ``provider(j)``, called
    exactly where k-diffusion calls it (``calls(j)``)."""
    if isinstance(noise_sampler, Noise):
        return noise_sampler
    if noise_sampler is None:
        if default is not None:
            return default
        noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731 — k's default_noise_sampler
    elif not callable(noise_sampler):
        raise TypeError(f"noise_sampler: expected a callable noise_sampler(sigma, sigma_next), a diffcore.noise.Noise "
                        f"or None, got {type(noise_sampler).__name__}")
    return lambda j: noise_sampler(sigmas[j], sigmas[j + 1]) if calls(j) else None


def _no_churn(fn: str, s_churn) -> None:
    if s_churn != 0:
        raise ValueError(f"s_churn: {fn} with churn (k-diffusion's noise injection before each step) has no diffcore "
                         "solver; use sample_heun(s_churn=...) (EDM's stochastic sampler) or s_churn=0")


# -- k-diffusion's samplers -------------------------------------------------------------------------

@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler steps on the PF-ODE ``dx/dσ = (x − x̂)/σ`` (Karras et al. 2022, Alg. 2 without churn):
    diffcore ``euler`` with ``variable="rho"``. ``s_churn`` must be 0 (``s_tmin``, ``s_tmax``,
    ``s_noise`` then have no effect, as in k-diffusion)."""
    _no_churn("sample_euler", s_churn)
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    return run(_solver("euler", variable="rho"), model, x, sigmas, grid, extra_args, callback, disable)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Euler ancestral: an Euler step to σ_down, then noise back up to σ_{i+1} (k-diffusion's
    ``get_ancestral_step``: σ_up = min(σ_{i+1}, η √(σ_{i+1}²(σ_i² − σ_{i+1}²)/σ_i²)),
    σ_down = √(σ_{i+1}² − σ_up²)): diffcore ``euler_ancestral``. No noise on a step to σ = 0."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    solver = _solver("euler_ancestral", eta=eta, s_noise=s_noise)
    noise = _noise(noise_sampler, x, sigmas, lambda j: grid[j + 1] > 0)
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable, noise)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun steps (Karras et al. 2022, Alg. 2; Euler on a step to σ = 0): diffcore ``heun`` with
    ``variable="rho"``; with ``s_churn > 0`` EDM's stochastic sampler ``edm_churn``
    (γ_i = min(s_churn/M, √2 − 1) on s_tmin ≤ σ_i ≤ s_tmax, x̂ = x + √(σ̂² − σ²) s_noise ε).

    The churn noise ε is ``torch.randn_like(x)``, one draw per step, churned or not, in
    k-diffusion's order: under the same ``torch.manual_seed`` the samples equal k-diffusion's."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    if s_churn == 0:
        return run(_solver("heun", variable="rho"), model, x, sigmas, grid, extra_args, callback, disable)
    solver = _solver("edm_churn", s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    gammas = churn_gammas(grid, float(s_churn), float(s_tmin), float(s_tmax))
    # draw (i, 1) carries the churn of step i + 1 (fused into step i's last stage); the prelude is step 0
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable,
               noise=lambda j: torch.randn_like(x), noise_step=lambda i, s: i + 1,
               sigma_hat=lambda i: sigmas[i] * (gammas[i] + 1))


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """k-diffusion's DPM-Solver-2 steps: Euler to the log-midpoint σ_mid = √(σ_i σ_{i+1}), then the
    full step with the derivative there (Euler on a step to σ = 0) — diffcore ``dpm_solver_2``
    (variant A, r₁ = ½; in σ-space these are the same update). ``s_churn`` must be 0."""
    _no_churn("sample_dpm_2", s_churn)
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    return run(_solver("dpm_solver_2", solver_type="midpoint"), model, x, sigmas, grid, extra_args, callback, disable)


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022b): diffcore ``dpmpp_2m`` (midpoint variant) with
    ``lower_order_final=False`` — first step and a step to σ = 0 first order, every other step
    second order, as k-diffusion."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    return run(_solver("dpmpp_2m", lower_order_final=False), model, x, sigmas, grid, extra_args, callback, disable)


def _sde_noise(noise_sampler, x, sigmas, grid, eta):
    default = None if noise_sampler is not None else Noise(seed=default_seed(), brownian=True)
    return _noise(noise_sampler, x, sigmas, lambda j: bool(eta) and grid[j + 1] > 0, default)


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE: diffcore ``dpmpp_2m_sde`` (``solver_type`` ``"midpoint"`` or ``"heun"``)
    with ``lower_order_final=False``; x ← x̂ on a step to σ = 0. Default noise: a Brownian tree (see
    the module docstring)."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type: expected 'heun' or 'midpoint', got {solver_type!r}")
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    solver = _solver("dpmpp_2m_sde", solver_type=solver_type, eta=eta, s_noise=s_noise, lower_order_final=False)
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable,
               _sde_noise(noise_sampler, x, sigmas, grid, eta))


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None):
    """DPM-Solver++(3M) SDE: diffcore ``dpmpp_3m_sde`` with ``lower_order_final=False`` (orders 1, 2,
    then 3; x ← x̂ on a step to σ = 0). ``eta=0`` is k-diffusion's deterministic 3M (the φ-function
    form, which is not :func:`sample_dpmpp_3m`). Default noise: a Brownian tree (module docstring)."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    solver = _solver("dpmpp_3m_sde", eta=eta, s_noise=s_noise, lower_order_final=False)
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable,
               _sde_noise(noise_sampler, x, sigmas, grid, eta))


# -- diffcore's other solvers in the same style ------------------------------------------------------

@torch.no_grad()
def sample_dpmpp_2s(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2S), single-step, stage at the λ-midpoint (two model calls per step; one on a step
    to σ = 0): diffcore ``dpmpp_2s``. Equals k-diffusion's ``sample_dpmpp_2s_ancestral(eta=0)``."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    return run(_solver("dpmpp_2s"), model, x, sigmas, grid, extra_args, callback, disable)


@torch.no_grad()
def sample_dpm_3(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Single-step DPM-Solver-3 (Lu et al. 2022, stages at ⅓ and ⅔ of each λ-step; three model calls
    per step, one on a step to σ = 0): diffcore ``dpm_solver_3``."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    return run(_solver("dpm_solver_3"), model, x, sigmas, grid, extra_args, callback, disable)


@torch.no_grad()
def sample_dpmpp_3m(model, x, sigmas, extra_args=None, callback=None, disable=None, w: float = 1.0,
                    lower_order_final: bool = False):
    """DPM-Solver++(3M): diffcore ``dpmpp_3m`` (``w`` = 1: the DPM-Solver reference / diffusers update,
    ``w = 2``: the consistent third-order weighting; see :class:`diffcore.solvers.DPMSolverPPMulti`).
    Not the same update as k-diffusion's ``sample_dpmpp_3m_sde(eta=0)``."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    solver = _solver("dpmpp_3m", w=w, lower_order_final=lower_order_final)
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable)


@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, order: int = 2,
                 variant: str = "bh2", corrector: bool = True, lower_order_final: bool = False):
    """UniPC-``order`` (Zhao et al. 2023; data prediction): diffcore ``unipc_{order}``. The corrector
    reuses the next step's evaluation (one model call per step); the last step is not corrected."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order: expected 1, 2 or 3, got {order!r}")
    solver = _solver(f"unipc_{order}", variant=variant, corrector=corrector, lower_order_final=lower_order_final)
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable)


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta: float = 0.0,
                noise_sampler=None):
    """DDIM: diffcore ``ddim`` (η = 0; with α = 1 the same update as :func:`sample_euler`) or
    ``ddim_eta`` (η > 0: x ← x̂ + √(σ_{i+1}² − c²) ε̂ + c z, c = η σ_{i+1} √(1 − σ_{i+1}²/σ_i²), which
    with α = 1 is Euler ancestral without its ``min`` clamp; no noise on a step to σ = 0)."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    if eta == 0:
        return run(_solver("ddim"), model, x, sigmas, grid, extra_args, callback, disable)
    noise = _noise(noise_sampler, x, sigmas, lambda j: grid[j + 1] > 0)
    return run(_solver("ddim_eta", eta=eta), model, x, sigmas, grid, extra_args, callback, disable, noise)


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, variance: str = "posterior",
                noise_sampler=None):
    """Ancestral DDPM: each step samples the Gaussian posterior q(x_{σ_{i+1}} | x_{σ_i}, x̂) —
    diffcore ``ddpm`` (``variance`` ``"posterior"`` β̃ or ``"beta"``). No noise on the last step."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    noise = _noise(noise_sampler, x, sigmas, lambda j: grid[j + 1] > 0)
    return run(_solver("ddpm", variance=variance), model, x, sigmas, grid, extra_args, callback, disable, noise)


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, order: int = 3,
                lower_order_final: bool = False):
    """tAB-DEIS with ``order`` outputs: diffcore ``deis_{order}``. With α = 1 (t = σ) this is
    k-diffusion's ``sample_lms(order=order)`` — a Lagrange polynomial in σ through the last
    derivatives (x − x̂)/σ, integrated exactly — except that a step to σ = 0 is first order here
    (x ← x̂), where ``sample_lms`` extrapolates the polynomial to σ = 0."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order: expected 1, 2 or 3, got {order!r}")
    solver = _solver(f"deis_{order}", lower_order_final=lower_order_final)
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable)


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order: int = 4,
                 lower_order_final: bool = False):
    """Improved PNDM (Zhang & Chen 2023): fixed Adams–Bashforth weights of order min(max_order,
    outputs so far) on (x − x̂)/σ — diffcore ``ipndm`` (a step to σ = 0 is first order)."""
    grid = check_inputs(model, x, sigmas, extra_args, callback)
    solver = _solver("ipndm", max_order=max_order, lower_order_final=lower_order_final)
    return run(solver, model, x, sigmas, grid, extra_args, callback, disable)
