"""The fused Picard window update (csrc/core/picard.h; book Eq. (9.8.4))
against its pure-torch reference :func:`diffcore.parallel.window_update_reference` on random data."""
import pytest
import torch

from diffcore import _ops
from diffcore.parallel import window_update, window_update_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# residuals: the kernel sums squares in float64 per tile, the reference in the storage dtype (pairwise)
RTOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _case(J=7, B=3, S=(4, 33), carry=False, dtype=torch.float64, device="cpu", seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    shape = (B,) + tuple(S) + ((2,) if carry else ())
    x = torch.randn((J + 1,) + shape, generator=g, dtype=torch.float64)
    phi = x[:-1] + scale * torch.randn((J,) + shape, generator=g, dtype=torch.float64)
    sig2 = torch.rand(J, B, generator=g, dtype=torch.float64) + 0.5
    c = None
    if carry:  # the engine's shapes: a buffer continues itself, the other, or is recomputed (−1)
        c = torch.randint(-1, 2, (J, 2), generator=g)
        c[0] = torch.tensor([0, 1])
    return x.to(dtype).to(device), phi.to(dtype).to(device), sig2.to(device), c


def _compare(got, want, dtype):
    y, r, s = got
    yr, rr, sr = want
    assert y.dtype == yr.dtype and r.dtype == rr.dtype and s.dtype == torch.int64 and s.dim() == 0
    if dtype == torch.float64:
        assert torch.equal(y, yr)  # same operations in the same order
    else:
        scale = yr.abs().max().item()
        assert (y - yr).abs().max().item() <= 8 * torch.finfo(dtype).eps * scale
    assert torch.allclose(r, rr, rtol=RTOL[dtype], atol=0)
    assert (r[0] == 0).all()
    assert int(s) == int(sr)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("carry", [False, True])
@pytest.mark.parametrize("J", [1, 2, 9])
def test_matches_reference(dtype, carry, J):
    x, phi, sig2, c = _case(J=J, carry=carry, dtype=dtype)
    for tau in (0.0, 0.02, 0.05, 1e3):
        _compare(window_update(x, phi, sig2, tau, c), window_update_reference(x, phi, sig2, tau, c), dtype)
    y = window_update(x, phi, sig2, 0.0, c)[0]
    assert torch.equal(y[0], phi[0])  # spec §8 oracle (c): the first new node is Φ_ℓ(X_ℓ) exactly


def test_stride_at_every_position():
    """The first unconverged node (max over the batch) is found wherever it is, on a large state
    (several CPU tiles, the threaded path)."""
    J, B, D = 8, 3, 5000
    x = torch.zeros(J + 1, B, D, dtype=torch.float64)
    sig2 = torch.ones(J, B, dtype=torch.float64)
    for k in range(J):
        phi = torch.zeros(J, B, D, dtype=torch.float64)
        phi[k, 1, 4321] = 1.0   # node ℓ+k+1 of sample 1 moves: C_{k+1} = 1, residual 1/D
        y, r, s = window_update(x, phi, sig2, 0.5 / D ** 0.5)
        assert int(s) == (k + 1 if k + 1 < J else J)
        yr, rr, sr = window_update_reference(x, phi, sig2, 0.5 / D ** 0.5)
        assert torch.equal(y, yr) and int(s) == int(sr)
        assert torch.allclose(r, rr, rtol=1e-12, atol=0)


def test_zero_variance_and_non_contiguous_inputs():
    x, phi, sig2, _ = _case(J=5, B=4, S=(6, 7))
    sig2[2, 1] = 0.0                       # r/0 = ∞ (unconverged), 0/0 = 0
    phi[3, 2] = x[4, 2]                    # a node that did not move: zero defect
    y, r, s = window_update(x, phi, sig2, 0.1)
    assert torch.isinf(r[2, 1])
    _compare((y, r, s), window_update_reference(x, phi, sig2, 0.1), torch.float64)
    # a window that is a strided slice of a larger trajectory buffer, a transposed state, σ̃² broadcast
    big = torch.randn(20, 4, 6, 7, dtype=torch.float64)
    xs, ph = big[3:9], big[10:15].transpose(2, 3).contiguous().transpose(2, 3)
    s2 = torch.tensor([[0.7]], dtype=torch.float64)
    _compare(window_update(xs, ph, s2, 0.3), window_update_reference(xs, ph, s2, 0.3), torch.float64)
    _compare(window_update(xs, ph, 0.7, 0.3), window_update_reference(xs, ph, 0.7, 0.3), torch.float64)


def test_thread_count_does_not_change_results():
    x, phi, sig2, c = _case(J=6, B=5, S=(3, 4000), carry=True)
    old = _ops.get_num_threads()
    try:
        _ops.set_num_threads(1)
        a = window_update(x, phi, sig2, 0.05, c)
        _ops.set_num_threads(2)
        b = window_update(x, phi, sig2, 0.05, c)
    finally:
        _ops.set_num_threads(old)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_falls_back_under_autograd_and_for_half():
    x, phi, sig2, _ = _case(J=4)
    phi.requires_grad_(True)
    y, r, s = window_update(x, phi, sig2, 0.1)
    assert y.requires_grad  # the reference ran (differentiable)
    y.sum().backward()
    assert phi.grad is not None
    xh, ph = x.to(torch.bfloat16), phi.detach().to(torch.bfloat16)
    yh, rh, sh = window_update(xh, ph, sig2, 0.1)
    assert yh.dtype == torch.bfloat16 and rh.dtype == torch.float32


def test_argument_errors():
    x, phi, sig2, c = _case(J=4, carry=True)
    with pytest.raises(ValueError, match="x: expected shape"):
        window_update(x[:-1], phi, sig2, 0.1, c)
    with pytest.raises(ValueError, match="tolerance"):
        window_update(x, phi, sig2, -1.0, c)
    with pytest.raises(ValueError, match="carry: expected shape"):
        window_update(x, phi, sig2, 0.1, c[:2])
    # the compiled op's own checks, each naming its argument
    J, B = phi.shape[0], phi.shape[1]
    with pytest.raises(ValueError, match=r"carry: entries must lie in \[-1, 2\)"):
        _ops.picard_window(x, phi, sig2, 0.1, torch.full((J, 2), 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="carry: expected int64"):
        _ops.picard_window(x, phi, sig2, 0.1, c.to(torch.int32))
    with pytest.raises(TypeError, match="phi: expected dtype float64"):
        _ops.picard_window(x, phi.float(), sig2, 0.1)
    with pytest.raises(TypeError, match="x: expected float32 or float64"):
        _ops.picard_window(x.half(), phi.half(), sig2, 0.1)
    with pytest.raises(ValueError, match="sigma2: expected shape"):
        _core_call(x, phi, torch.ones(J + 1, B, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: its feature dimensions must be contiguous"):
        _core_call(x.transpose(2, 3), phi.transpose(2, 3), sig2)
    with pytest.raises(ValueError, match="y: output overlaps input 'x'"):
        _core_call(x, phi, sig2, y=x[1:])
    with pytest.raises(ValueError, match="tau2"):
        _core_call(x, phi, sig2, tau2=float("nan"))
    with pytest.raises(ValueError, match="carry: at most 4 buffers"):
        xb = torch.zeros(J + 1, B, 5, dtype=torch.float64)
        _ops.picard_window(xb, xb[1:].clone(), sig2, 0.1, torch.zeros(J, 5, dtype=torch.int64))


def _core_call(x, phi, sig2, y=None, tau2=0.01):
    from torch.utils.dlpack import to_dlpack

    J, B = phi.shape[0], phi.shape[1]
    y = torch.empty(phi.shape, dtype=x.dtype) if y is None else y
    r = torch.empty(J, B, dtype=x.dtype)
    s = torch.empty((), dtype=torch.int64)
    _ops._core.picard_window(to_dlpack(x), to_dlpack(phi), to_dlpack(sig2), None, to_dlpack(y), to_dlpack(r),
                             to_dlpack(s), None, tau2, 1, 0)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("carry", [False, True])
def test_cuda_matches_reference(dtype, carry):
    # several blocks per sample (positions > 256) and a partial last tile
    x, phi, sig2, c = _case(J=9, B=3, S=(5, 301), carry=carry, dtype=dtype, device="cuda")
    if c is not None:
        c = c.cuda()
    for tau in (0.0, 0.03, 0.06, 1e3):
        got = window_update(x, phi, sig2, tau, c)
        assert got[2].device.type == "cuda"
        want = window_update_reference(x.cpu(), phi.cpu(), sig2.cpu(), tau, None if c is None else c.cpu())
        _compare(tuple(t.cpu() for t in got), want, dtype)
    # the carry table may live on the CPU (moved once), the CPU kernel agrees bit for bit in float64
    if carry:
        a = window_update(x, phi, sig2, 0.03, c.cpu())
        b = window_update(x.cpu(), phi.cpu(), sig2.cpu(), 0.03, c.cpu())
        assert torch.equal(a[0].cpu(), b[0]) and int(a[2]) == int(b[2])
