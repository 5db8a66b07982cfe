"""The CUDA launch geometry of lincomb, the fused step and the Picard window, run on the host.

``diffcore._core._emulate_cuda(True)`` makes the CPU entry points run the grid the CUDA launchers use
(csrc/core/block_geometry.h; docs/design.md, "Launch geometry"): every (block, thread) in turn through
the same per-block functions the kernels call, with the 16-byte vector loads done through a portable
struct. Each test compares that against the CPU loops (csrc/cpu), which are separate code, bit for bit:
odd sizes (N not a multiple of 4 or 8), rows at different 16-byte alignments (scalar path) and at a
shared misalignment (scalar head, vectors, scalar tail), B = 1 and many small samples (packed blocks),
every history size K and every dtype.
"""
from contextlib import contextmanager

import pytest
import torch

from diffcore import _core
from diffcore._ops import lincomb

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}
# elements of a block's chunk in row mode (256 threads x 4 vectors x 16 bytes), per dtype
_CHUNK = {torch.float16: 8192, torch.bfloat16: 8192, torch.float32: 4096, torch.float64: 2048}


@contextmanager
def emulated():
    prev = _core._emulate_cuda(True)
    try:
        yield
    finally:
        _core._emulate_cuda(prev)


def bits(t):
    return t.contiguous().view(_BITS[t.dtype])


def assert_bitwise(a, b, what):
    assert a.shape == b.shape and a.dtype == b.dtype, what
    eq = bits(a) == bits(b)
    assert bool(eq.all()), f"{what}: {int((~eq).sum())} of {eq.numel()} elements differ, first at " \
                           f"{tuple(int(i) for i in (~eq).nonzero()[0])}"


def at_offset(t, off):
    """A copy of t whose storage starts `off` elements into a fresh buffer (misaligned by off elements)."""
    buf = torch.empty(t.numel() + off + 8, dtype=t.dtype)
    v = buf[off:off + t.numel()].view(t.shape)
    v.copy_(t)
    return v


def rand(shape, dtype, g):
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------------------------- lincomb

def _lincomb_both(x, coefs, ring, new, slot, feat=None, out_is_x=False):
    """(CPU result, emulated CUDA result, CPU ring, emulated ring) on private copies."""
    res = []
    for emulate in (False, True):
        xx = x.clone() if not out_is_x else at_offset(x, x.storage_offset() % 8)
        rr = None if ring is None else at_offset(ring, ring.storage_offset() % 8)
        out = xx if out_is_x else None
        if emulate:
            with emulated():
                o = lincomb(xx, coefs, rr, new, slot, feat, out=out)
        else:
            o = lincomb(xx, coefs, rr, new, slot, feat, out=out)
        res.append((o.clone(), None if rr is None else rr.clone()))
    return res


# (B, N): packed blocks (N small), one block per sample, several blocks per sample with a ragged end
def _sizes(dtype):
    c = _CHUNK[dtype]
    return [(1, 1), (37, 3), (300, 2), (2, c // 2 + 3), (3, c + 1)]


_OFFSETS = [(0, 0, 0), (1, 1, 1), (0, 1, 3), (3, 0, 2)]  # element offsets of x, ring, new
_COEFS = [(torch.float64, True), (torch.float32, False), (torch.float32, True), (torch.float64, False)]


def _lincomb_grid_case(dtype, K, full):
    g = torch.Generator().manual_seed(100 + K)
    for (B, N) in _sizes(dtype):
        for q, offs in enumerate(_OFFSETS):
            x = at_offset(rand((B, N), dtype, g), offs[0])
            ring = at_offset(rand((K, B, N), dtype, g), offs[1]) if K else None
            slot = (K - 1) // 2 if K else -1
            new = at_offset(rand((B, N), dtype, g), offs[2]) if K else None
            for coef_dtype, per_sample in (_COEFS if full else _COEFS[q:q + 1]):
                cb = B if per_sample else 1
                coefs = torch.randn(cb, 1 + K, generator=g, dtype=torch.float64).to(coef_dtype)
                (o_cpu, r_cpu), (o_emu, r_emu) = _lincomb_both(x, coefs, ring, new, slot)
                what = f"{dtype} K={K} B={B} N={N} offsets={offs} coefs {coef_dtype} [{cb}]"
                assert_bitwise(o_emu, o_cpu, what)
                if ring is not None:
                    assert_bitwise(r_emu, r_cpu, what + " ring")
        # the result is the combination itself (not two equal wrong answers)
        terms = [x] + [new if k == slot else ring[k] for k in range(K)]
        ref = sum(coefs[:, k:k + 1].double() * terms[k].double() for k in range(K + 1))
        tol = 1e-12 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 3e-2)
        assert (o_emu.double() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [0, 2, 5])
def test_lincomb_grid_matches_cpu(dtype, K):
    _lincomb_grid_case(dtype, K, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [0, 1, 2, 3, 4, 5, 6])
def test_lincomb_grid_matches_cpu_all_coefficient_layouts(dtype, K):
    _lincomb_grid_case(dtype, K, full=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lincomb_grid_in_place_and_features(dtype):
    g = torch.Generator().manual_seed(7)
    for (B, N) in [(3, _CHUNK[dtype] + 5), (40, 5)]:
        K = 2
        x = at_offset(rand((B, N), dtype, g), 1)
        ring = at_offset(rand((K, B, N), dtype, g), 1)
        new = at_offset(rand((B, N), dtype, g), 1)
        coefs = torch.randn(B, 1 + K, generator=g, dtype=torch.float64)
        (o_cpu, r_cpu), (o_emu, r_emu) = _lincomb_both(x, coefs, ring, new, 1, out_is_x=True)
        assert_bitwise(o_emu, o_cpu, f"in place {dtype} B={B} N={N}")
        assert_bitwise(r_emu, r_cpu, f"in place ring {dtype} B={B} N={N}")
        feat = torch.rand(B, 1 + K, N, generator=g, dtype=torch.float64)
        (o_cpu, r_cpu), (o_emu, r_emu) = _lincomb_both(x, coefs, ring, new, 0, feat=feat)
        assert_bitwise(o_emu, o_cpu, f"features {dtype} B={B} N={N}")
        assert_bitwise(r_emu, r_cpu, f"features ring {dtype} B={B} N={N}")


def test_emulation_switch_restores():
    assert _core._emulate_cuda(False) is False
    with emulated():
        assert _core._emulate_cuda(True) is True
    assert _core._emulate_cuda(False) is False


# ------------------------------------------------------------------------------------------- fused step

from diffcore import _ops  # noqa: E402
from diffcore._ops import _to_dlpack  # noqa: E402

_NOISE_NONE, _NOISE_PHILOX, _NOISE_TENSOR, _NOISE_BROWNIAN = 0, 1, 2, 3


def _step_once(emulate, x, y, ring, o, z, coefs, rec, noise, raw, seed=11):
    """One fused step on private copies of the state (at their own storage offsets); returns them."""
    xs = at_offset(x, x.storage_offset() % 8)
    ys = None if y is None else at_offset(y, y.storage_offset() % 8)
    rs = None if ring is None else at_offset(ring, ring.storage_offset() % 8)
    ids = torch.arange(100, 100 + x.shape[0], dtype=torch.int64)
    st = _ops.make_stepper(xs, ys, rs, coefs, list(rec), noise, seed, ids, (0.0, 1.0), 6)
    zc = None if z is None else _to_dlpack(z)
    prev = _core._emulate_cuda(emulate)
    try:
        st.step(0, 0, _to_dlpack(o), raw, 1, 0, zc)
    finally:
        _core._emulate_cuda(prev)
    return xs, ys, rs


def _step_case(dtype, K, B, N, second, noise, rec, raw, offs, g, per_sample=True, interval=(0.2, 0.7)):
    x = at_offset(rand((B, N), dtype, g), offs[0])
    y = at_offset(rand((B, N), dtype, g), offs[1]) if second else None
    ring = at_offset(rand((K, B, N), dtype, g), offs[2]) if K else None
    o = at_offset(rand((B, N), dtype, g), offs[3])
    z = at_offset(rand((B, N), dtype, g), offs[1]) if noise == _NOISE_TENSOR else None
    nc = 12 + 2 * K
    coefs = torch.randn(B if per_sample else 1, 1, 1, nc, generator=g, dtype=torch.float64)
    coefs[..., -2], coefs[..., -1] = interval
    cpu = _step_once(False, x, y, ring, o, z, coefs, rec, noise, raw)
    emu = _step_once(True, x, y, ring, o, z, coefs, rec, noise, raw)
    what = f"{dtype} K={K} B={B} N={N} y={second} noise={noise} record={rec} raw={raw} offsets={offs}"
    for name, a, b in zip(("x", "y", "ring"), emu, cpu):
        if a is not None:
            assert_bitwise(a, b, f"{what}: {name}")
    return (x, y, ring, o, z, coefs), cpu


def _step_reference(x, y, ring, o, z, coefs, rec, raw, K):
    """x', y', ring[slot] of the step in float64 from the row's columns (csrc/core/row_layout.h)."""
    c = coefs[:, 0, 0].double()
    col = lambda j: c[:, j:j + 1]  # noqa: E731
    xd = x.double()
    yd = y.double() if y is not None else xd
    u = yd if rec[0] == 1 else xd
    m = o.double() if raw else col(0) * u + col(1) * o.double()
    zd = z.double() if z is not None else torch.zeros_like(xd)
    out = []
    for blk in (2, 5 + K):
        acc = col(blk) * xd + col(blk + 1) * yd + col(blk + 2 + K) * m
        for k in range(K):
            acc = acc + col(blk + 2 + k) * ring[k].double()
        out.append(acc + col(8 + 2 * K + (0 if blk == 2 else 1)) * zd)
    return out[0], out[1], m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [0, 1, 2, 3, 4, 5])
def test_step_grid_matches_cpu(dtype, K):
    g = torch.Generator().manual_seed(200 + K)
    slot = K - 1 if K else -1
    cases = [  # (second buffer, noise, stage record, raw)
        (False, _NOISE_NONE, (0, slot, 1, 0, -1), False),
        (True, _NOISE_PHILOX, (1, slot, 1, 1, 3), False),
        (True, _NOISE_TENSOR, (0, -1, 0, 1, 0), True),
        (False, _NOISE_PHILOX, (0, slot, 0, 0, 2), False),  # ring only: no noise enters
    ]
    for q, (B, N) in enumerate(_sizes(dtype)):
        for second, noise, rec, raw in cases:
            offs = [(0, 0, 0, 0), (1, 1, 1, 1), (0, 3, 1, 2), (2, 2, 2, 2), (1, 0, 0, 1)][q]
            (x, y, ring, o, z, coefs), (xs, ys, rs) = _step_case(dtype, K, B, N, second, noise, rec, raw, offs, g,
                                                                 per_sample=(q % 2 == 0))
            if noise == _NOISE_PHILOX and rec[4] >= 0:
                ids = torch.arange(100, 100 + B, dtype=torch.int64)
                z = _ops.noise_fill(torch.empty((B, N), dtype=torch.float64), 11, ids, rec[4], 0).to(dtype)
            coefs = coefs.expand(B, -1, -1, -1)
            if rec[4] < 0:
                z = None
            xr, yr, m = _step_reference(x, y, ring, o, z, coefs, rec, raw, K)
            tol = 1e-11 if dtype == torch.float64 else (2e-5 if dtype == torch.float32 else 6e-2)
            scale = max(1.0, xr.abs().max().item())
            if rec[2]:
                assert (xs.double() - xr).abs().max().item() <= tol * scale, "x' against the float64 formula"
            if rec[3] and y is not None:
                assert (ys.double() - yr).abs().max().item() <= tol * scale, "y' against the float64 formula"
            if rec[1] >= 0:
                assert (rs[rec[1]].double() - m).abs().max().item() <= tol * max(1.0, m.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_step_grid_brownian_matches_cpu(dtype):
    g = torch.Generator().manual_seed(300)
    c = _CHUNK[dtype]
    for (B, N) in [(3, 5), (2, c // 2 + 3)]:
        for interval in [(0.25, 0.6), (0.4, 0.4)]:  # a Brownian increment; ta == tb: plain Philox
            _step_case(dtype, 2, B, N, True, _NOISE_BROWNIAN, (0, 1, 1, 1, 1), False, (1, 1, 1, 1), g,
                       interval=interval)


def test_step_grid_aliased_output():
    """The model may return x itself (an identity model): every element is read before it is written."""
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float16):
        B, N, K = 2, _CHUNK[dtype] + 9, 2
        res = []
        for emulate in (False, True):
            x = at_offset(rand((B, N), dtype, torch.Generator().manual_seed(1)), 1)
            ring = at_offset(rand((K, B, N), dtype, torch.Generator().manual_seed(2)), 1)
            coefs = torch.randn(1, 1, 1, 12 + 2 * K, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            st = _ops.make_stepper(x, None, ring, coefs, [0, 1, 1, 0, -1])
            prev = _core._emulate_cuda(emulate)
            try:
                st.step(0, 0, _to_dlpack(x), False, 1, 0, None)
            finally:
                _core._emulate_cuda(prev)
            res.append((x.clone(), ring.clone()))
        assert_bitwise(res[1][0], res[0][0], f"{dtype} x aliased as the model output")
        assert_bitwise(res[1][1], res[0][1], f"{dtype} ring with x aliased as the model output")
    del g


# ------------------------------------------------------------------------------------- Picard window

from diffcore.parallel import window_update_reference  # noqa: E402


def _picard_both(x, phi, sig2, tol, carry):
    out = []
    for emulate in (False, True):
        prev = _core._emulate_cuda(emulate)
        try:
            out.append(_ops.picard_window(x, phi, sig2, tol, carry))
        finally:
            _core._emulate_cuda(prev)
    return out


# (P positions per sample, buffers per position): one tile, several tiles with a ragged end, odd sizes
_PICARD_SHAPES = [(1, 1), (37, 1), (1500, 1), (5001, 1), (3, 2), (2050, 2), (333, 3), (1031, 3), (517, 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("misaligned", [False, True])
def test_picard_grid_matches_cpu(dtype, misaligned):
    g = torch.Generator().manual_seed(400 + misaligned)
    for q, (P, nb) in enumerate(_PICARD_SHAPES):
        J, B = (1, 3, 6)[q % 3], (1, 3)[q % 2]
        S = (P, nb) if nb > 1 else (P,)
        x = rand((J + 1, B) + S, torch.float64, g)
        phi = (x[:-1] + 0.1 * rand((J, B) + S, torch.float64, g)).to(dtype)
        x = x.to(dtype)
        if misaligned:  # the trajectory buffer's rows start one element past a 16-byte boundary
            x, phi = at_offset(x, 1), at_offset(phi, 3)
        sig2 = torch.rand(J, B, generator=g, dtype=torch.float64) + 0.5
        carry = None
        if nb > 1:
            carry = torch.randint(-1, nb, (J, nb), generator=g)
            carry[0] = torch.arange(nb)
        (y0, r0, s0), (y1, r1, s1) = _picard_both(x, phi, sig2, 0.05, carry)
        what = f"{dtype} P={P} nb={nb} J={J} B={B} misaligned={misaligned}"
        assert_bitwise(y1, y0, what + ": y")
        # the squared norms are summed in another order (per thread, then a tree): rounding only
        assert torch.allclose(r1, r0, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0), what
        yr, rr, sr = window_update_reference(x, phi, sig2, 0.05, carry)
        assert torch.allclose(r1, rr, rtol=1e-11 if dtype == torch.float64 else 2e-5, atol=0), what
        for tol in (0.0, 1e9, float(rr[1:].max().sqrt()) * 0.999 if J > 1 else 1.0):
            (_, _, s0), (_, _, s1) = _picard_both(x, phi, sig2, tol, carry)
            assert int(s1) == int(s0) == int(window_update_reference(x, phi, sig2, tol, carry)[2]), what


# ------------------------------------------------------------------ the same grids on a CUDA device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def at_offset_on(t, off, device):
    buf = torch.empty(t.numel() + off + 8, dtype=t.dtype, device=device)
    v = buf[off:off + t.numel()].view(t.shape)
    v.copy_(t)
    return v


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_lincomb_matches_cpu(dtype):
    g = torch.Generator().manual_seed(500)
    for (B, N) in _sizes(dtype) + [(16, 1 << 16)]:
        for K in (0, 1, 2, 5, 6):
            for offs in _OFFSETS:
                x = rand((B, N), dtype, g)
                ring = rand((K, B, N), dtype, g) if K else None
                new = rand((B, N), dtype, g) if K else None
                slot = K // 2 if K else -1
                coefs = torch.randn(B, 1 + K, generator=g, dtype=torch.float64)
                rc = None if ring is None else at_offset(ring, offs[1])
                want = lincomb(at_offset(x, offs[0]), coefs, rc, None if new is None else at_offset(new, offs[2]), slot)
                rg = None if ring is None else at_offset_on(ring, offs[1], "cuda")
                got = lincomb(at_offset_on(x, offs[0], "cuda"), coefs.to("cuda"), rg,
                              None if new is None else at_offset_on(new, offs[2], "cuda"), slot)
                what = f"cuda lincomb {dtype} K={K} B={B} N={N} offsets={offs}"
                assert_bitwise(got.cpu(), want, what)
                if ring is not None:
                    assert_bitwise(rg.cpu(), rc, what + " ring")


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_step_matches_cpu(dtype):
    g = torch.Generator().manual_seed(600)
    for (B, N) in _sizes(dtype) + [(16, 1 << 16)]:
        for K in (0, 1, 2, 5):
            slot = K - 1 if K else -1
            for second, noise, rec, raw in [(False, _NOISE_NONE, (0, slot, 1, 0, -1), False),
                                            (True, _NOISE_PHILOX, (1, slot, 1, 1, 3), False),
                                            (True, _NOISE_TENSOR, (0, -1, 0, 1, 0), True)]:
                for offs in [(0, 0, 0, 0), (1, 1, 1, 1), (0, 3, 1, 2)]:
                    x, o = rand((B, N), dtype, g), rand((B, N), dtype, g)
                    y = rand((B, N), dtype, g) if second else None
                    ring = rand((K, B, N), dtype, g) if K else None
                    z = rand((B, N), dtype, g) if noise == _NOISE_TENSOR else None
                    coefs = torch.randn(B, 1, 1, 12 + 2 * K, generator=g, dtype=torch.float64)
                    res = []
                    for dev in ("cpu", "cuda"):
                        xs = at_offset_on(x, offs[0], dev)
                        ys = None if y is None else at_offset_on(y, offs[1], dev)
                        rs = None if ring is None else at_offset_on(ring, offs[2], dev)
                        ids = torch.arange(100, 100 + B, dtype=torch.int64, device=dev)
                        st = _ops.make_stepper(xs, ys, rs, coefs.to(dev), list(rec), noise, 11, ids)
                        zc = None if z is None else _to_dlpack(z.to(dev))
                        stream = torch.cuda.current_stream().cuda_stream if dev == "cuda" else 0
                        st.step(0, 0, _to_dlpack(at_offset_on(o, offs[3], dev)), raw, 1, stream, zc)
                        res.append([None if t is None else t.cpu() for t in (xs, ys, rs)])
                    what = f"cuda step {dtype} K={K} B={B} N={N} noise={noise} offsets={offs}"
                    for name, a, b in zip(("x", "y", "ring"), res[1], res[0]):
                        if a is not None:
                            assert_bitwise(a, b, f"{what}: {name}")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_picard_matches_cpu(dtype):
    g = torch.Generator().manual_seed(700)
    for q, (P, nb) in enumerate(_PICARD_SHAPES + [(1 << 16, 2)]):
        J, B = (1, 3, 6)[q % 3], (1, 3)[q % 2]
        S = (P, nb) if nb > 1 else (P,)
        x = rand((J + 1, B) + S, torch.float64, g)
        phi = (x[:-1] + 0.1 * rand((J, B) + S, torch.float64, g)).to(dtype)
        x = x.to(dtype)
        sig2 = torch.rand(J, B, generator=g, dtype=torch.float64) + 0.5
        carry = None
        if nb > 1:
            carry = torch.randint(-1, nb, (J, nb), generator=g)
            carry[0] = torch.arange(nb)
        y0, r0, s0 = _ops.picard_window(x, phi, sig2, 0.05, carry)
        y1, r1, s1 = _ops.picard_window(x.cuda(), phi.cuda(), sig2.cuda(), 0.05,
                                        None if carry is None else carry.cuda())
        what = f"cuda picard {dtype} P={P} nb={nb} J={J} B={B}"
        assert_bitwise(y1.cpu(), y0, what + ": y")
        assert torch.allclose(r1.cpu(), r0, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0), what
        assert int(s1) == int(s0), what
