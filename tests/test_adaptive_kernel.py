"""The fused per-sample error control of the adaptive solver (csrc/core/adaptive.h) against its torch
reference :func:`diffcore.solvers.adaptive_control.adaptive_control_reference` on random data.

What is asserted: ``accepted``, ``active``, ``lam_s`` and ``x`` are exactly equal (decisions, and copies
of inputs); ``E``, ``err_prev`` and ``h`` agree to 1e-12 relative (the kernel sums the squared error
terms in float64 in another order than torch's mean, and torch's vectorized pow may round differently
from libm's), with NaN where the reference has NaN; thread counts 1 and 2 give bitwise-equal results."""
import pytest
import torch

import diffcore
from diffcore import _ops
from diffcore.solvers.adaptive_control import adaptive_control_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RTOL = 1e-12
KW = dict(atol=1e-3, rtol=1e-3, order=5)


def _case(B, N, dtype=torch.float64, seed=0, broadcast_end=False):
    """x, x_low, x_high [B, N] and the per-sample state, with a mix of accepted, rejected, inactive and
    finishing samples."""
    g = torch.Generator().manual_seed(seed + 1000 * B + N)
    x = torch.randn(B, N, generator=g, dtype=torch.float64)
    x_high = x + 0.1 * torch.randn(B, N, generator=g, dtype=torch.float64)
    # error scale per sample: log-uniform over [0.01, 30] tolerances -> E from ~0.01 to ~30
    scale = 10 ** (torch.rand(B, 1, generator=g, dtype=torch.float64) * 3.5 - 2)
    tol = 1e-3 + 1e-3 * torch.maximum(x.abs(), x_high.abs())
    x_low = x_high + scale * tol * torch.randn(B, N, generator=g, dtype=torch.float64)
    h = 0.01 + 0.1 * torch.rand(B, generator=g, dtype=torch.float64)
    err_prev = 10 ** (-4 * torch.rand(B, generator=g, dtype=torch.float64))
    lam_s = torch.rand(B, generator=g, dtype=torch.float64)
    lam_t = lam_s + h
    kind = torch.randint(0, 4, (B,), generator=g)
    if broadcast_end:
        lam_end = torch.tensor(1.5, dtype=torch.float64).expand(B)
        lam_t = torch.where(kind == 0, torch.full_like(lam_t, 1.5), lam_t)
    else:
        lam_end = torch.where(kind == 0, lam_t, lam_t + 0.3 * torch.rand(B, generator=g, dtype=torch.float64))
        lam_end = torch.where(kind == 1, lam_t + 1e-13, lam_end)  # within END_TOL: finishes if accepted
    active = torch.rand(B, generator=g) > 0.2
    return dict(x=x.to(dtype), x_low=x_low.to(dtype), x_high=x_high.to(dtype), h=h, err_prev=err_prev,
                lam_s=lam_s, lam_t=lam_t, lam_end=lam_end, active=active)


def _clone(c):
    return {k: (v.clone() if v.stride() != (0,) else v) for k, v in c.items()}


def _to(c, device):
    return {k: v.to(device) for k, v in c.items()}


def _close(a, b):
    assert a.dtype == b.dtype == torch.float64
    assert torch.allclose(a.cpu(), b.cpu(), rtol=RTOL, atol=0, equal_nan=True), (a, b)


def _compare(got, want, cg, cw):
    acc, E = got
    acc_r, E_r = want
    assert acc.dtype == torch.bool and E.dtype == torch.float64
    assert torch.equal(acc.cpu(), acc_r.cpu())
    assert torch.equal(cg["active"].cpu(), cw["active"].cpu())
    assert torch.equal(cg["x"].cpu(), cw["x"].cpu())
    assert torch.equal(cg["lam_s"].cpu(), cw["lam_s"].cpu())
    _close(E, E_r)
    _close(cg["err_prev"], cw["err_prev"])
    _close(cg["h"], cw["h"])


def _run(fn, c, **kw):
    return fn(c["x"], c["x_low"], c["x_high"], c["h"], c["err_prev"], c["lam_s"], c["lam_t"], c["lam_end"],
              c["active"], **{**KW, **kw})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B", [1, 7, 64])
@pytest.mark.parametrize("N", [1, 33, 5000])
@pytest.mark.parametrize("broadcast_end", [False, True])
def test_matches_reference(dtype, B, N, broadcast_end):
    c = _case(B, N, dtype, broadcast_end=broadcast_end)
    cg, cw = _clone(c), _clone(c)
    got = _run(_ops.adaptive_control, cg)
    want = _run(adaptive_control_reference, cw)
    _compare(got, want, cg, cw)
    if B == 64:  # the random mix really covers every branch
        acc, active0 = want[0], c["active"]
        assert acc.any() and (active0 & ~acc).any() and (~active0).any()
        assert (acc & ~cw["active"]).any()  # some finished
        assert not torch.equal(cg["x"], c["x"])


@pytest.mark.parametrize("kw", [dict(order=1), dict(order=2), dict(order=4, theta=0.8, fac_min=0.1, fac_max=10.0),
                                dict(k_i=1.0, k_p=0.0, atol=1e-6, rtol=0.0), dict(atol=0.0, rtol=1e-2)])
def test_controller_options(kw):
    c = _case(64, 40, seed=3)
    cg, cw = _clone(c), _clone(c)
    _compare(_run(_ops.adaptive_control, cg, **kw), _run(adaptive_control_reference, cw, **kw), cg, cw)


def test_nan_and_inplace_alias():
    c = _case(7, 50, seed=5)
    c["x_high"][2, 3] = float("nan")  # E NaN: rejected, h NaN as in the reference
    cg, cw = _clone(c), _clone(c)
    _compare(_run(_ops.adaptive_control, cg), _run(adaptive_control_reference, cw), cg, cw)
    assert torch.isnan(cg["h"][2]) == bool(c["active"][2])
    # x may be x_high itself
    c = _case(7, 50, seed=6)
    c["x"] = c["x_high"]
    cg, cw = _clone(c), _clone(c)
    cg["x"], cw["x"] = cg["x_high"], cw["x_high"]
    _compare(_run(_ops.adaptive_control, cg), _run(adaptive_control_reference, cw), cg, cw)


def test_multidim_and_strided_batch():
    c = _case(6, 2 * 3 * 40, seed=7)
    base = {k: c[k].reshape(6, 2, 3, 40) for k in ("x", "x_low", "x_high")}
    # a batch slice of a bigger buffer: rows strided, features compact
    big = torch.zeros(12, 2, 3, 40, dtype=torch.float64)
    big[::2] = base["x"]
    cg = _clone(c)
    cw = _clone(c)
    cg["x"] = big[::2]
    cg["x_low"], cg["x_high"] = base["x_low"], base["x_high"].transpose(1, 2).contiguous().transpose(1, 2)
    cw["x"] = base["x"].clone()
    cw["x_low"], cw["x_high"] = base["x_low"], base["x_high"]
    got = _run(_ops.adaptive_control, cg)
    want = _run(adaptive_control_reference, cw)
    assert torch.equal(big[1::2], torch.zeros_like(big[1::2]))  # rows in between untouched
    _compare(got, want, cg, cw)


def test_thread_count_independent():
    c = _case(3, 200_000, torch.float32, seed=9)
    outs = []
    try:
        for n in (1, 2):
            diffcore.set_num_threads(n)
            cg = _clone(c)
            acc, E = _run(_ops.adaptive_control, cg)
            outs.append((acc, E, cg))
    finally:
        diffcore.set_num_threads(None)
    (a1, e1, c1), (a2, e2, c2) = outs
    assert torch.equal(a1, a2) and torch.equal(e1, e2)
    for k in ("x", "h", "err_prev", "lam_s", "active"):
        assert torch.equal(c1[k], c2[k]), k
    cw = _clone(c)
    _compare((a1, e1), _run(adaptive_control_reference, cw), c1, cw)


def test_bad_inputs():
    c = _case(4, 10)
    with pytest.raises(TypeError, match="h: expected float64"):
        _run(_ops.adaptive_control, {**_clone(c), "h": c["h"].float()})
    with pytest.raises(TypeError, match="active: expected bool"):
        _run(_ops.adaptive_control, {**_clone(c), "active": c["active"].to(torch.uint8)})
    with pytest.raises(TypeError, match="x_low: expected dtype float64"):
        _run(_ops.adaptive_control, {**_clone(c), "x_low": c["x_low"].float()})
    with pytest.raises(TypeError, match="x: expected float32 or float64"):
        cc = _clone(c)
        cc.update(x=c["x"].half(), x_low=c["x_low"].half(), x_high=c["x_high"].half())
        _run(_ops.adaptive_control, cc)
    with pytest.raises(ValueError, match="x_high: expected shape"):
        _run(_ops.adaptive_control, {**_clone(c), "x_high": c["x_high"][:, :9]})
    with pytest.raises(ValueError, match=r"err_prev: expected shape \(4,\)"):
        _run(_ops.adaptive_control, {**_clone(c), "err_prev": c["err_prev"][:3]})
    with pytest.raises(ValueError, match="x: its feature dimensions must be contiguous"):
        cc = _clone(c)
        cc["x"] = torch.zeros(4, 20, dtype=torch.float64)[:, ::2]
        _run(_ops.adaptive_control, cc)
    with pytest.raises(ValueError, match="atol"):
        _run(_ops.adaptive_control, _clone(c), atol=-1.0)
    with pytest.raises(ValueError, match="atol, rtol"):
        _run(_ops.adaptive_control, _clone(c), atol=0.0, rtol=0.0)
    with pytest.raises(ValueError, match="order"):
        _run(_ops.adaptive_control, _clone(c), order=0)
    with pytest.raises(ValueError, match="fac_min"):
        _run(_ops.adaptive_control, _clone(c), fac_min=1.5)
    with pytest.raises(ValueError, match="fac_max"):
        _run(_ops.adaptive_control, _clone(c), fac_max=0.5)
    with pytest.raises(ValueError, match="theta"):
        _run(_ops.adaptive_control, _clone(c), theta=0.0)
    with pytest.raises(ValueError, match="overlaps"):
        cc = _clone(c)
        cc["lam_s"] = cc["h"]
        _run(_ops.adaptive_control, cc)
    with pytest.raises(ValueError, match="broadcast"):
        _run(_ops.adaptive_control, {**_clone(c), "h": torch.ones(1, dtype=torch.float64).expand(4)})


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,N", [(1, 1), (7, 33), (64, 5000), (3, 100_000)])
def test_cuda_matches_cpu(dtype, B, N):
    c = _case(B, N, dtype, seed=11)
    cc, cg = _clone(c), _to(c, "cuda")
    want = _run(_ops.adaptive_control, cc)
    got = _run(_ops.adaptive_control, cg)
    assert got[0].device.type == "cuda" and cg["x"].device.type == "cuda"
    _compare(got, want, cg, cc)
    cr = _to(c, "cuda")
    _compare(got, _run(adaptive_control_reference, cr), cg, cr)
