"""Shared by the k-diffusion parity tests: a deterministic noise sampler and the peer's sampling module."""
import pytest
import torch


def keyed(x):
    """A deterministic noise sampler: the normal of a step is a function of (σ, σ_next) only, so any
    caller that asks for the same steps gets the same numbers, in any order."""
    def ns(sigma, sigma_next):
        g = torch.Generator().manual_seed(int(round(float(sigma) * 1e6)) * 7 + int(round(float(sigma_next) * 1e6)))
        return torch.randn(x.shape, generator=g, dtype=x.dtype)
    return ns


def kdiff():
    """k-diffusion's sampling module, or skip the test."""
    from diffcore.integrations._peers import load_k_diffusion
    kds, how = load_k_diffusion()
    if kds is None:
        pytest.skip(f"k-diffusion's sampling module unavailable: {how}")
    return kds
