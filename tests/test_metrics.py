import pytest
import torch

from diffcore.metrics import sliced_wasserstein


def test_shifted_cloud_has_exact_sliced_distance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64)
    m = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    theta = torch.randn(64, 3, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    # projections of a shifted copy sort identically, so each 1-D W2 is exactly |θ·m|
    expect = ((theta @ m) ** 2).mean().sqrt()
    assert torch.allclose(sliced_wasserstein(x, x + m, projections=theta), expect, rtol=1e-12)
    assert sliced_wasserstein(x, x[torch.randperm(500, generator=g)], projections=theta).item() == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="x, y"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="projections"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), projections=torch.ones(4, 3))
