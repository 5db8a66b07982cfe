"""diffcore.data: toy samplers' known properties, the mixture oracle dataset, digits, adapters, registry."""
import math

import pytest
import torch

from diffcore import data, oracles
from diffcore.data import Checkerboard, EightGaussians, Spirals, TwoMoons

N = 40000


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_samplers_are_seeded_and_typed():
    for name in ("two_moons", "eight_gaussians", "checkerboard", "spirals", "mixture", "ring"):
        d = data.get(name)
        a, ya = d.sample(100, generator=_g(3), return_labels=True)
        b, yb = d.sample(100, generator=_g(3), return_labels=True)
        assert torch.equal(a, b) and torch.equal(ya, yb)
        assert a.shape == (100, 2) and a.dtype == torch.float32 and ya.dtype == torch.long
        assert d.shape == (2,) and 0 <= int(ya.min()) and int(ya.max()) < d.num_classes
        assert not torch.equal(a, d.sample(100, generator=_g(4)))
        assert d.sample(5, generator=_g(0), dtype=torch.float64).dtype == torch.float64
        assert d.sample(0).shape == (0, 2)


def test_eight_gaussians_component_means_and_std():
    d = EightGaussians(radius=2.0, std=0.2)
    x, y = d.sample(N, generator=_g(1), return_labels=True, dtype=torch.float64)
    for k in range(8):
        xk = x[y == k]
        expect = 2.0 * torch.tensor([math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)], dtype=torch.float64)
        n = xk.shape[0]
        assert abs(n - N / 8) < 5 * math.sqrt(N / 8 * 7 / 8)  # binomial count, 5 SE
        assert float((xk.mean(0) - expect).abs().max()) < 5 * 0.2 / math.sqrt(n)
        # sample std per coordinate: SE of s ≈ σ/√(2n)
        assert float((xk.std(0) - 0.2).abs().max()) < 5 * 0.2 / math.sqrt(2 * n)
    # the oracle is the same distribution: exact log-density of the samples is finite and matches in mean
    assert torch.allclose(d.oracle.means, d.means)


def test_checkerboard_support_and_uniform_marginals():
    d = Checkerboard(size=4, square=1.0)
    x, y = d.sample(N, generator=_g(2), return_labels=True, dtype=torch.float64)
    col, row = torch.floor(x[:, 0]) + 2, torch.floor(x[:, 1]) + 2
    assert bool(((col + row) % 2 == 0).all())              # only black squares carry mass
    assert float(x.abs().max()) <= 2.0
    # each of the 8 black squares gets 1/8 of the mass (multinomial counts within 5 SE)
    counts = torch.bincount(y, minlength=8).double()
    assert float((counts - N / 8).abs().max()) < 5 * math.sqrt(N / 8 * 7 / 8)
    # the label names the square: row-major over black squares
    assert torch.equal(y, (row * 2 + torch.div(col, 2, rounding_mode="floor")).long())
    # marginals uniform on [-2, 2]: mean 0, variance 4/3 (SE of the variance: sqrt((m4 - s^4)/n), m4 = 16/5)
    for j in range(2):
        assert abs(float(x[:, j].mean())) < 5 * math.sqrt(4 / 3 / N)
        assert abs(float(x[:, j].var()) - 4 / 3) < 5 * math.sqrt((16 / 5 - 16 / 9) / N)


def test_two_moons_lie_on_their_circles_without_noise():
    d = TwoMoons(noise=0.0, scale=2.0)
    x, y = d.sample(5000, generator=_g(5), return_labels=True, dtype=torch.float64)
    p = x / 2.0 + torch.tensor([0.5, 0.25], dtype=torch.float64)  # back to unit coordinates
    up, lo = p[y == 0], p[y == 1]
    torch.testing.assert_close(up.norm(dim=1), torch.ones(up.shape[0], dtype=torch.float64))
    assert bool((up[:, 1] >= -1e-12).all())                   # upper half circle around (0, 0)
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close((lo - centre).norm(dim=1), torch.ones(lo.shape[0], dtype=torch.float64))
    assert bool((lo[:, 1] <= 0.5 + 1e-12).all())              # lower half circle around (1, 0.5)
    # with noise: the radial deviation has the noise's std (isotropic noise ⟂ the circle, small curvature bias)
    xn, yn = TwoMoons(noise=0.05).sample(N, generator=_g(6), return_labels=True, dtype=torch.float64)
    pn = xn[yn == 0] / 2.0 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    assert abs(float((pn.norm(dim=1) - 1).std()) - 0.05) < 0.002


def test_spirals_radius_matches_angle_without_noise():
    d = Spirals(turns=1.5, radius=3.0, noise=0.0)
    x, y = d.sample(5000, generator=_g(7), return_labels=True, dtype=torch.float64)
    r = x.norm(dim=1)
    theta = r / 3.0 * (2 * math.pi * 1.5)                     # invert r = radius·θ/(2π·turns)
    ang = theta + math.pi * y.double()
    torch.testing.assert_close(x, torch.stack([r * torch.cos(ang), r * torch.sin(ang)], 1), atol=1e-9, rtol=0)
    assert float(r.max()) <= 3.0 + 1e-12


def test_mixture_dataset_matches_the_oracle_moments():
    gm = oracles.toy_2d_mixture()
    d = data.as_data(gm)
    assert d.oracle is gm and d.num_classes == 4
    x, y = d.sample(N, generator=_g(8), return_labels=True, dtype=torch.float64)
    cov = gm.cov
    se = torch.sqrt(torch.diagonal(cov) / N)
    assert float(((x.mean(0) - gm.mean).abs() / se).max()) < 5
    counts = torch.bincount(y, minlength=4).double() / N
    w = gm.weights
    assert float(((counts - w).abs() / torch.sqrt(w * (1 - w) / N)).max()) < 5
    k = 1  # one component's covariance, SE of a sample variance ≈ sqrt(2/n)·σ²
    xk = x[y == k]
    ck = torch.cov(xk.T)
    assert float(((ck - gm.covs[k]).abs() / (math.sqrt(2 / xk.shape[0]) * gm.covs[k].diagonal().max())).max()) < 5


def test_tensor_and_loader_adapters_and_errors():
    x = torch.randn(10, 3)
    d = data.as_data(x, labels=torch.arange(10) % 4)
    assert d.kind == "tensor" and len(d) == 10 and d.shape == (3,) and d.num_classes == 4 and d.has_labels
    xb, yb = d.batch(torch.tensor([2, 5]))
    assert torch.equal(xb, x[[2, 5]]) and yb.tolist() == [2, 1]
    with pytest.raises(ValueError, match="NaN"):
        data.as_data(torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(ValueError, match="empty"):
        data.as_data(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="x: expected a tensor"):
        data.as_data(torch.zeros(5))
    with pytest.raises(TypeError, match="floating"):
        data.as_data(torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels: expected shape"):
        data.as_data(x, labels=torch.zeros(9, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        data.as_data(x, labels=torch.zeros(10))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(10)), batch_size=4)
    ld = data.as_data(loader, num_classes=10)
    assert ld.kind == "loader" and ld.shape == (3,) and ld.has_labels
    with pytest.raises(ValueError, match="empty"):
        _ = data.as_data([]).shape
    with pytest.raises(ValueError, match="unknown dataset"):
        data.get("swiss_cheese")
    with pytest.raises(ValueError, match="noise"):
        TwoMoons(noise=-1.0)
    with pytest.raises(ValueError, match="size"):
        Checkerboard(size=3)
    with pytest.raises(ValueError, match="n: expected"):
        EightGaussians().sample(-1)


def test_digits_shape_range_labels_and_split():
    pytest.importorskip("sklearn")
    d = data.get("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.shape == (1, 8, 8) and d.num_classes == 10
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
    # ink counts 0..16 map to k/8 - 1: every value is a multiple of 1/8
    assert torch.equal(torch.round((d.x + 1) * 8), (d.x + 1) * 8)
    assert sorted(torch.unique(d.labels).tolist()) == list(range(10))
    tr, te = data.Digits("train"), data.Digits("test")
    assert len(tr) + len(te) == 1797 and abs(len(te) - 0.2 * 1797) <= 1
    # the split partitions the images (no image in both): compare as multisets via sorted row sums
    allsum = torch.sort(d.x.flatten(1).double() @ torch.arange(64, dtype=torch.float64)).values
    both = torch.sort(torch.cat([tr.x, te.x]).flatten(1).double() @ torch.arange(64, dtype=torch.float64)).values
    assert torch.equal(allsum, both)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.Digits()
