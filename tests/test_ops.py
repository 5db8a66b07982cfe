"""The fused linear-combination kernel: equality with its torch reference, interop, autograd
fallback and input validation (docs/design.md "The one idea", "Arrays across the boundary")."""
import numpy as np
import pytest
import torch

import diffcore
from diffcore import _ops
from diffcore._ops import lincomb, lincomb_reference

TOL = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _case(B=5, S=(3, 7), K=3, dtype=torch.float64, coef_dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *S, generator=g, dtype=torch.float64).to(dtype)
    ring = torch.randn(K, B, *S, generator=g, dtype=torch.float64).to(dtype)
    new = torch.randn(B, *S, generator=g, dtype=torch.float64).to(dtype)
    coefs = torch.randn(B, 1 + K, generator=g, dtype=torch.float64).to(coef_dtype)
    return x, ring, new, coefs


def _close(a, b, dtype):
    scale = max(1.0, b.double().abs().max().item())
    assert (a.double() - b.double()).abs().max().item() <= TOL[dtype] * scale * 4


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("coef_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("slot", [-1, 0, 2])
def test_matches_reference(dtype, coef_dtype, slot):
    x, ring, new, coefs = _case(dtype=dtype, coef_dtype=coef_dtype)
    r1, r2 = ring.clone(), ring.clone()
    nw = new if slot >= 0 else None
    a = lincomb(x, coefs, r1, nw, slot)
    b = lincomb_reference(x, coefs, r2, nw, slot)
    _close(a, b, dtype)
    assert torch.equal(r1, r2)  # the history write is an exact copy
    if slot >= 0:
        assert torch.equal(r1[slot], new)
    # against an independent float64 formula
    terms = [x.double()] + [(new if k == slot else ring[k]).double() for k in range(ring.shape[0])]
    c = coefs.double().to(torch.float64)
    expect = sum(c[:, k].reshape(-1, 1, 1) * terms[k] for k in range(len(terms)))
    _close(a, expect.to(dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_feature_coefficients_and_broadcast(dtype):
    x, ring, new, coefs = _case(dtype=dtype, K=2)
    N = x[0].numel()
    feat = torch.rand(1, 3, N, dtype=torch.float64)
    a = lincomb(x, coefs, ring, feat=feat)
    expect = coefs[:, 0].reshape(-1, 1, 1) * feat[0, 0].reshape(x.shape[1:]) * x.double()
    for k in range(2):
        expect = expect + coefs[:, k + 1].reshape(-1, 1, 1) * feat[0, k + 1].reshape(x.shape[1:]) * ring[k].double()
    _close(a, expect.to(dtype), dtype)
    featb = torch.rand(x.shape[0], 3, N, dtype=torch.float64)
    _close(lincomb(x, coefs, ring, feat=featb), lincomb_reference(x, coefs, ring, feat=featb), dtype)
    c1 = coefs[:1]
    _close(lincomb(x, c1, ring), lincomb_reference(x, c1, ring), dtype)


def test_scale_only_without_ring():
    x = torch.randn(4, 10, dtype=torch.float64)
    c = torch.tensor([[2.5]], dtype=torch.float64)
    assert torch.equal(lincomb(x, c), 2.5 * x)


def test_in_place_and_slot_aliases():
    x, ring, new, coefs = _case(K=2)
    expect = lincomb_reference(x, coefs, ring.clone(), new, 1)
    xi = x.clone()
    out = lincomb(xi, coefs, ring.clone(), new, 1, out=xi)  # in-place state update
    assert out is xi and torch.allclose(xi, expect, rtol=1e-14, atol=1e-14)
    ring2 = ring.clone()
    expect0 = lincomb_reference(x, coefs, ring.clone(), new, 1)
    lincomb(x, coefs, ring2, new, 1, out=ring2[0])  # output into a slot not being written
    assert torch.allclose(ring2[0], expect0, rtol=1e-14, atol=1e-14)
    for dtype in (torch.float64, torch.float32):
        xs, rs, ns, cs = _case(K=2, dtype=dtype)
        expect1 = lincomb_reference(xs, cs, rs.clone(), ns, 1)
        new3, ring3 = ns.clone(), rs.clone()
        lincomb(xs, cs, ring3, new3, 1, out=new3)  # output over the new model output itself
        assert torch.equal(ring3[1], ns) and torch.allclose(new3, expect1, rtol=1e-6, atol=1e-6)
        ring4 = rs.clone()
        x4 = ring4[1]  # state stored in the slot being overwritten: read before written
        expect4 = lincomb_reference(x4.clone(), cs, rs.clone(), ns, 1)
        out4 = lincomb(x4, cs, ring4, ns, 1)
        assert torch.allclose(out4, expect4, rtol=1e-6, atol=1e-6) and torch.equal(ring4[1], ns)


def test_large_parallel_equals_single_thread():
    x, ring, new, coefs = _case(B=3, S=(70000,), K=2, dtype=torch.float32)
    try:
        diffcore.set_num_threads(1)
        a = lincomb(x, coefs, ring)
        diffcore.set_num_threads(2)
        b = lincomb(x, coefs, ring)
    finally:
        diffcore.set_num_threads(None)
    assert torch.equal(a, b)


def test_half_conversions_are_exact_round_to_nearest_even():
    # every float16 bit pattern survives x -> 1.0*x (subnormals, infinities, signed zeros)
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    h = bits.view(torch.float16).reshape(256, 256)
    finite = ~torch.isnan(h)
    one = torch.ones(1, 1, dtype=torch.float64)
    out = lincomb(h, one)
    assert torch.equal(out.view(torch.int16)[finite], h.view(torch.int16)[finite])
    assert bool(torch.isnan(out[~finite]).all())
    b = bits.view(torch.bfloat16).reshape(256, 256)
    fin = ~torch.isnan(b)
    assert torch.equal(lincomb(b, one).view(torch.int16)[fin], b.view(torch.int16)[fin])
    # float32 -> half rounding matches torch's (RNE), across normal, subnormal and overflow ranges
    g = torch.Generator().manual_seed(1)
    mag = torch.exp(torch.empty(200000).uniform_(-20, 12, generator=g))
    v = (mag * torch.sign(torch.randn(200000, generator=g))).reshape(400, 500)
    c = torch.full((1, 1), 1 / 3, dtype=torch.float32)
    for dt in (torch.float16, torch.bfloat16):
        src = v.to(dt)
        got = lincomb(src, c)
        ref = (src.float() * c[0, 0]).to(dt)
        assert torch.equal(got.view(torch.int16), ref.view(torch.int16))


def test_numpy_interop():
    x, ring, new, coefs = _case()
    out = lincomb(x.numpy(), coefs.numpy(), ring.numpy())
    assert isinstance(out, torch.Tensor)
    assert torch.allclose(out, lincomb_reference(x, coefs, ring), rtol=1e-14, atol=1e-14)
    x32 = x.float().numpy()
    out32 = lincomb(x32, coefs.numpy(), ring.float().numpy())
    assert out32.dtype == torch.float32


def test_jax_interop_read_only():
    jnp = pytest.importorskip("jax.numpy")
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    out = lincomb(jnp.asarray(x), np.full((1, 1), 2.0))
    assert np.allclose(out.numpy(), 2 * x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_autograd_uses_reference_and_is_exact(dtype, monkeypatch):
    x, ring, new, coefs = _case(B=2, S=(3,), K=2, dtype=torch.float64)
    x.requires_grad_(True)
    ring.requires_grad_(True)
    coefs.requires_grad_(True)
    assert not _ops.fast_path_ok(x, coefs, ring)
    assert torch.autograd.gradcheck(lambda a, r, c: lincomb(a, c, r), (x, ring, coefs))

    class Boom:
        def lincomb(self, *a):
            raise AssertionError("compiled kernel used although a gradient is needed")

    monkeypatch.setattr(_ops, "_core", Boom())
    y = lincomb(x, coefs, ring)
    y.sum().backward()
    assert x.grad is not None
    with torch.no_grad():  # under no_grad the fast path is allowed again
        with pytest.raises(AssertionError, match="compiled kernel"):
            lincomb(x, coefs, ring)


def test_jvp_and_vmap_use_reference():
    x, ring, new, coefs = _case(B=2, S=(4,), K=1)
    dx = torch.randn_like(x)
    dr = torch.randn_like(ring)
    y, dy = torch.func.jvp(lambda a, r: lincomb(a, coefs, r), (x, ring), (dx, dr))
    expect = coefs[:, 0].reshape(-1, 1) * dx + coefs[:, 1].reshape(-1, 1) * dr[0]
    assert torch.allclose(dy, expect, rtol=1e-14, atol=1e-14)
    assert torch.allclose(y, lincomb(x, coefs, ring), rtol=1e-14, atol=1e-14)


def test_torch_compile_traces_reference():
    x, ring, new, coefs = _case(B=2, S=(4,), K=1)
    f = torch.compile(lambda a: lincomb(a, coefs, ring) * 2, backend="eager", fullgraph=False)
    assert torch.allclose(f(x), 2 * lincomb(x, coefs, ring), rtol=1e-14, atol=1e-14)


def _err(exc, match, *args, **kw):
    with pytest.raises(exc, match=match):
        lincomb(*args, **kw)


def test_bad_inputs_raise_named_errors():
    x, ring, new, coefs = _case(K=2)
    _err(TypeError, "x: expected float16", x.to(torch.int64), coefs[:, :1])
    _err(TypeError, "coefs: expected float32 or float64", x, coefs.to(torch.float16), ring)
    _err(TypeError, "ring: expected dtype float64", x, coefs, ring.float())
    _err(ValueError, "coefs: expected shape", x, coefs[:, :2], ring)
    _err(ValueError, "ring: expected shape", x, coefs, ring[:, :, :2])
    _err(ValueError, "x: its feature dimensions must be contiguous", x.transpose(1, 2), coefs, ring.transpose(2, 3))
    _err(ValueError, "out: expected shape", x, coefs, ring, out=torch.empty(5, 3, dtype=torch.float64))
    _err(TypeError, "out: expected dtype float64", x, coefs, ring, out=torch.empty_like(x, dtype=torch.float32))
    _err(ValueError, "slot: expected 0 <= slot < K", x, coefs, ring, new, 5)
    _err(ValueError, "new: a new model output and a ring slot", x, coefs, ring, new)
    _err(ValueError, "must not overlap the ring slot", x, coefs, ring, new, 1, out=ring[1])
    _err(ValueError, "feat: expected shape", x, coefs, ring, feat=torch.ones(1, 3, 5, dtype=torch.float64))
    _err(TypeError, "feat: expected dtype float64", x, coefs, ring, feat=torch.ones(1, 3, 21, dtype=torch.float32))
    flat = torch.randn(2 * 5 * 21, dtype=torch.float64)
    xa = flat[: 5 * 21].view(5, 3, 7)
    outa = flat[3 : 3 + 5 * 21].view(5, 3, 7)
    _err(ValueError, "out: output partially overlaps input 'x'", xa, coefs[:, :1], out=outa)
    _err(TypeError, "x: expected a torch tensor or an array exposing __dlpack__", [1.0, 2.0], coefs[:, :1])


def test_build_info_and_threads():
    info = diffcore.build_info()
    for key in ("version", "compiler", "cuda", "cuda_archs", "openmp", "num_threads"):
        assert key in info
    assert info["version"] == diffcore.__version__
    diffcore.set_num_threads(1)
    assert diffcore.get_num_threads() == 1 and diffcore.build_info()["num_threads"] == 1
    diffcore.set_num_threads(None)
    assert diffcore.get_num_threads() == torch.get_num_threads()
    with pytest.raises(ValueError, match="n: expected a positive int"):
        diffcore.set_num_threads(0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(TOL))
def test_cuda_matches_cpu(dtype):
    x, ring, new, coefs = _case(B=7, S=(33, 65), K=3, dtype=dtype)
    rc = ring.clone().cuda()
    a = lincomb(x.cuda(), coefs.cuda(), rc, new.cuda(), 2)
    b = lincomb_reference(x, coefs, ring.clone(), new, 2)
    _close(a.cpu(), b, dtype)
    assert torch.equal(rc[2].cpu(), new)


@cuda
@pytest.mark.cuda
def test_cuda_device_mismatch_and_stream():
    x, ring, new, coefs = _case()
    with pytest.raises(ValueError, match="coefs: expected a tensor on cuda"):
        lincomb(x.cuda(), coefs, ring.cuda())
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = lincomb(x.cuda(), coefs.cuda(), ring.cuda())
    s.synchronize()
    assert torch.allclose(out.cpu(), lincomb_reference(x, coefs, ring), rtol=1e-13, atol=1e-13)


@cuda
@pytest.mark.cuda
def test_cupy_interop():
    cp = pytest.importorskip("cupy")
    x = cp.random.standard_normal((4, 8))
    out = lincomb(x, cp.full((1, 1), 3.0))
    assert torch.allclose(out.cpu(), 3 * torch.as_tensor(cp.asnumpy(x)))
