"""The quality figure of the demo, the CLI and the trainer's evaluations for 2-D data: the
sliced-Wasserstein distance (exact 1-D W2 per direction by sorted matching) of
samples to held-out data, next to the same distance between two independent data draws of that size
(the noise floor a perfect sampler would show) and of the prior (what an untrained flow gives).

The distance between two finite samples fluctuates (at n = 2000 with 256 directions, the floor ranges
over ≈ 0.04–0.08 for the 2-D toys between seeds), so the floor is the median over ``floor_draws``
fresh draws, each compared with the same held-out set as the samples.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..metrics import sliced_wasserstein

__all__ = ["projections", "held_out", "sw_report"]


def projections(dim: int, n: int = 256, seed: int = 12345) -> torch.Tensor:
    """``n`` fixed unit directions in ``dim`` dimensions (the same for every evaluation)."""
    theta = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def held_out(data, n: int, seed: int) -> torch.Tensor:
    """The held-out set of :func:`sw_report`: the first ``n`` draws of ``data`` from ``seed``."""
    return data.sample(n, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)


def sw_report(samples: torch.Tensor, data, seed: int = 0, prior: Optional[torch.Tensor] = None,
              floor_draws: int = 5) -> dict:
    """``{"sw", "sw_floor", "sw_prior"?, "n"}`` for ``samples [n, D]`` against a sampler ``data``
    (:mod:`diffcore.data`): the held-out set (:func:`held_out`) and the floor draws come from a
    generator seeded by ``seed`` — a stream disjoint from training's when the seeds differ.
    ``prior``: the sampler's start (same size), whose distance is what an untrained flow scores."""
    samples = samples.detach().to("cpu", torch.float64)
    n, dim = samples.shape
    g = torch.Generator().manual_seed(int(seed))
    held = data.sample(n, generator=g, dtype=torch.float64)
    proj = projections(dim)
    floors = sorted(float(sliced_wasserstein(data.sample(n, generator=g, dtype=torch.float64), held, projections=proj))
                    for _ in range(floor_draws))
    out = {"n": n, "sw": float(sliced_wasserstein(samples, held, projections=proj)),
           "sw_floor": floors[len(floors) // 2]}
    if prior is not None:
        out["sw_prior"] = float(sliced_wasserstein(prior.detach().to("cpu", torch.float64), held, projections=proj))
    return out
