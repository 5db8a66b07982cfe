"""diffcore.models: the net(x, t, labels=None) contract, time/label embeddings, MLP and UNet shapes."""
import math

import pytest
import torch

from diffcore import models, schedules
from diffcore.models import MLP, UNet, TimeEmbedding


def _perturb(net, seed=0, scale=0.2):
    """Models start as the zero map (zero-initialised output layers); give every weight a random value
    so that the outputs depend on all inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


# ---- time embedding ----------------------------------------------------------------------------------
def test_sinusoidal_embedding_closed_form():
    emb = TimeEmbedding(8, "sinusoidal", "identity", max_freq=1000.0)
    t = torch.tensor([0.0, 0.3, 1.0])
    freqs = torch.tensor([1000.0 ** (k / 3) for k in range(4)], dtype=torch.float64)  # geometric 1 .. 1000
    arg = t.double()[:, None] * freqs
    expect = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    torch.testing.assert_close(emb(t).double(), expect, atol=2e-4, rtol=0)


def test_log_transform_is_edm_c_noise_and_spans_edm_range():
    emb = TimeEmbedding(4, "sinusoidal", "log")
    sigma = torch.tensor([0.002, 1.0, 80.0])
    c = emb.transform(sigma)
    torch.testing.assert_close(c, 0.25 * torch.log(sigma))
    assert -1.56 < float(c[0]) < -1.55 and abs(float(c[1])) < 1e-7 and 1.09 < float(c[2]) < 1.10
    assert torch.isfinite(emb(torch.zeros(2))).all()  # σ = 0 (a sampler's last time) is clamped, not -inf


@pytest.mark.parametrize("transform, lo, hi", [("identity", 0.0, 1.0), ("log", 0.002, 80.0)])
def test_embedding_separates_nearby_times_over_the_whole_range(transform, lo, hi):
    # times 0.1 % of the (log-)range apart must map to clearly different codes everywhere in the range
    emb = TimeEmbedding(64, "sinusoidal", transform)
    if transform == "identity":
        t = torch.linspace(lo, hi, 200)
        t2 = t + 1e-3
    else:
        t = torch.exp(torch.linspace(math.log(lo), math.log(hi), 200))
        t2 = t * math.exp(1e-3 * math.log(hi / lo))
    d = (emb(t) - emb(t2)).norm(dim=1)
    assert float(d.min()) > 0.3


def test_fourier_embedding_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = TimeEmbedding(16, "fourier", seed=3), TimeEmbedding(16, "fourier", seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a.freqs, b.freqs) and not torch.equal(a.freqs, TimeEmbedding(16, "fourier", seed=4).freqs)


def test_time_transform_for_schedules():
    assert models.time_transform_for(schedules.EDM()) == "log"
    for name in ("rectified_flow", "vp_linear", "ve", "trig"):
        assert models.time_transform_for(name) == "identity"


def test_embedding_argument_errors():
    with pytest.raises(ValueError, match="dim"):
        TimeEmbedding(7)
    with pytest.raises(ValueError, match="kind"):
        TimeEmbedding(8, "wavelet")
    with pytest.raises(ValueError, match="time_transform"):
        TimeEmbedding(8, time_transform="sqrt")
    with pytest.raises(ValueError, match="activation"):
        MLP(2, activation="swishy")


# ---- MLP ---------------------------------------------------------------------------------------------
def test_mlp_shapes_zero_init_and_time_broadcast():
    net = MLP(2, width=32, depth=3)
    x, t = torch.randn(5, 2), torch.rand(5)
    assert net(x, t).shape == (5, 2)
    assert torch.equal(net(x, t), torch.zeros(5, 2))  # zero output layer: the untrained net predicts 0
    _perturb(net)
    assert torch.equal(net(x, torch.tensor(0.4)), net(x, torch.full((5,), 0.4)))
    assert torch.equal(net(x, 0.4), net(x, torch.full((5,), 0.4)))
    flat = MLP(6, width=16, depth=2)
    _perturb(flat)
    xi = torch.randn(3, 1, 2, 3)
    assert flat(xi, torch.rand(3)).shape == (3, 1, 2, 3)
    torch.testing.assert_close(flat(xi, torch.full((3,), 0.5)).reshape(3, 6), flat(xi.reshape(3, 6), 0.5))
    with pytest.raises(ValueError, match="t: expected shape"):
        net(x, torch.rand(4))
    with pytest.raises(ValueError, match="x: expected"):
        net(torch.randn(5, 3), t)


@pytest.mark.parametrize("act", ["silu", "relu", "gelu", "tanh"])
def test_mlp_samples_are_independent_of_the_batch(act):
    net = _perturb(MLP(2, width=32, depth=2, activation=act, time_embedding="fourier"))
    x, t = torch.randn(6, 2), torch.rand(6)
    torch.testing.assert_close(net(x, t)[2:3], net(x[2:3], t[2:3]), rtol=1e-6, atol=1e-6)


def test_mlp_class_conditioning_and_null_label():
    net = _perturb(MLP(2, width=32, depth=2, num_classes=3))
    assert net.num_classes == 3 and net.null_label == 3
    assert net.label_embedding.table.num_embeddings == 4  # num_classes + 1 rows: the last is the null label
    x, t = torch.randn(4, 2), torch.rand(4)
    null = torch.full((4,), 3)
    assert torch.equal(net(x, t), net(x, t, labels=null))  # labels=None means "unconditional"
    y0, y1 = net(x, t, labels=torch.zeros(4, dtype=torch.long)), net(x, t, labels=torch.ones(4, dtype=torch.long))
    assert (y0 - y1).abs().min() > 0
    mixed = torch.tensor([0, 1, 3, 0])
    torch.testing.assert_close(net(x, t, labels=mixed)[1], y1[1])
    with pytest.raises(ValueError, match="labels"):
        net(x, t, labels=torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match="labels"):
        net(x, t, labels=torch.tensor([0, 1, -1, 0]))
    with pytest.raises(TypeError, match="labels"):
        net(x, t, labels=torch.zeros(4))
    with pytest.raises(ValueError, match="labels: expected shape"):
        net(x, t, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        MLP(2, width=8, depth=1)(x, t, labels=torch.zeros(4, dtype=torch.long))
    assert MLP(2, width=8, depth=1).num_classes is None and MLP(2, width=8, depth=1).null_label is None


def test_from_config_round_trip():
    net = _perturb(MLP(2, width=24, depth=2, activation="gelu", time_transform="log", num_classes=5))
    again = models.from_config(net.config)
    again.load_state_dict(net.state_dict())
    x, t, y = torch.randn(3, 2), torch.rand(3) * 80, torch.tensor([0, 5, 2])
    assert torch.equal(net(x, t, labels=y), again(x, t, labels=y))
    u = _perturb(UNet(1, channels=8, channel_mult=(1, 2), num_res_blocks=1, num_classes=2))
    u2 = models.get("unet", **{k: v for k, v in u.config.items() if k != "name"})
    u2.load_state_dict(u.state_dict())
    xi, ti = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9])
    assert torch.equal(u(xi, ti), u2(xi, ti))
    with pytest.raises(ValueError, match="unknown model"):
        models.get("transformer")


# ---- UNet --------------------------------------------------------------------------------------------
def test_unet_8x8_conditional_with_attention():
    net = UNet(1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_classes=10)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    assert torch.equal(net(x, t), torch.zeros(3, 1, 8, 8))  # zero-initialised output conv
    _perturb(net, scale=0.05)
    out = net(x, t, labels=torch.tensor([1, 10, 3]))
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()
    assert net.null_label == 10
    assert torch.equal(net(x, t), net(x, t, labels=torch.full((3,), 10)))
    assert not torch.allclose(net(x, t, labels=torch.zeros(3, dtype=torch.long)), net(x, t))
    # GroupNorm and attention act within a sample: a sample's output does not depend on its batch
    torch.testing.assert_close(net(x, t)[1:2], net(x[1:2], t[1:2]), rtol=1e-5, atol=1e-6)
    # every parameter receives a gradient (no dead branch)
    net(x, t, labels=torch.tensor([1, 2, 3])).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_unet_32x32_rgb_and_shape_errors():
    net = UNet(3, channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_levels=(2,),
               time_transform="log")
    _perturb(net, scale=0.02)
    out = net(torch.randn(2, 3, 32, 32), torch.tensor([0.002, 80.0]))
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 3, 20, 20), torch.rand(1))
    with pytest.raises(ValueError, match=r"x: expected images \[B, 3"):
        net(torch.randn(1, 1, 32, 32), torch.rand(1))
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(1, channel_mult=(1, 2), attention_levels=(2,))


def test_time_embedding_follows_model_dtype():
    """A model converted with .double() computes its time code in float64 (JVPs in t need it)."""
    net = _perturb(MLP(2, width=16, depth=1)).double()
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    emb = net.time_embedding
    arg = t[:, None] * emb.freqs[None, :]
    want = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
    got = emb(t)
    assert got.dtype == torch.float64 and (got - want).abs().max().item() < 1e-14
    jv = torch.func.jvp(emb, (t,), (torch.ones_like(t),))[1]
    dwant = torch.cat([emb.freqs * torch.cos(arg), -emb.freqs * torch.sin(arg)], 1)
    assert (jv - dwant).abs().max().item() < 1e-12 * float(emb.freqs.max())
