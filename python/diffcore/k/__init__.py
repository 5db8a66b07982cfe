"""k-diffusion-style sampling functions backed by diffcore's solver plans.

Drop-in replacements for ``k_diffusion.sampling``: the same denoiser convention
(``model(x, sigma, **extra_args) → x̂₀`` with ``x = x₀ + σ ε``), the same ``sigmas`` grids and
callback dict, the same results (``tests/test_k.py`` holds them equal to k-diffusion's functions to
float64 rounding, given the same noise), with every update applied by diffcore's fused step. Like
k-diffusion's, every sampler runs under ``torch.no_grad()``: sampling never builds an autograd graph
through a network's parameters (which would also force the differentiable reference step).

* :mod:`.samplers` — ``sample_euler``, ``sample_euler_ancestral``, ``sample_heun``, ``sample_dpm_2``,
  ``sample_dpmpp_2m``, ``sample_dpmpp_2m_sde``, ``sample_dpmpp_3m_sde`` (k-diffusion's), and
  ``sample_dpmpp_2s``, ``sample_dpm_3``, ``sample_dpmpp_3m``, ``sample_unipc``, ``sample_ddim``,
  ``sample_ddpm``, ``sample_deis``, ``sample_ipndm`` (diffcore's other solvers in the same style).
* :mod:`.kstyle` — ``sample_lms``, ``sample_dpm_2_ancestral``, ``sample_dpmpp_2s_ancestral``,
  ``sample_dpmpp_sde``, ``sample_dpm_fast``, ``sample_dpm_adaptive`` and the helpers ``to_d``,
  ``get_ancestral_step``, ``BrownianTreeNoiseSampler`` (k-diffusion's, in its own step-by-step form
  where no diffcore solver computes the same update).
* :mod:`.sigmas` — ``get_sigmas_karras``, ``get_sigmas_exponential``,
  ``get_sigmas_polyexponential``, ``get_sigmas_vp``.

Example::

    import diffcore.k as K
    sigmas = K.get_sigmas_karras(20, 0.002, 80.0)
    x = K.sample_dpmpp_2m(denoiser, torch.randn(4, 3, 32, 32) * sigmas[0], sigmas)
"""
from .samplers import (sample_ddim, sample_ddpm, sample_deis, sample_dpm_2, sample_dpm_3, sample_dpmpp_2m,
                       sample_dpmpp_2m_sde, sample_dpmpp_2s, sample_dpmpp_3m, sample_dpmpp_3m_sde, sample_euler,
                       sample_euler_ancestral, sample_heun, sample_ipndm, sample_unipc)
from .kstyle import (BrownianTreeNoiseSampler, get_ancestral_step, sample_dpm_2_ancestral, sample_dpm_adaptive,
                     sample_dpm_fast, sample_dpmpp_2s_ancestral, sample_dpmpp_sde, sample_lms, to_d)
from .sigmas import append_zero, get_sigmas_exponential, get_sigmas_karras, get_sigmas_polyexponential, get_sigmas_vp

__all__ = ["sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_dpmpp_2s", "sample_dpm_3", "sample_dpmpp_3m",
           "sample_unipc", "sample_ddim", "sample_ddpm", "sample_deis", "sample_ipndm", "get_sigmas_karras",
           "get_sigmas_exponential", "get_sigmas_polyexponential", "get_sigmas_vp", "append_zero",
           "sample_lms", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde", "sample_dpm_fast",
           "sample_dpm_adaptive", "to_d", "get_ancestral_step", "BrownianTreeNoiseSampler"]
