"""Bad inputs at the boundary of the compiled kernels (issue 16, items 3, 5 and 7): NumPy arrays with
negative strides or read-only flags, thread counts past what the system can create, hand-made DLPack
capsules that lie about their memory, written buffers whose elements alias, lincomb coefficient
shapes, and Sinkhorn's smallest ε. Crash classes (abort, segfault) run in a child interpreter
(tests/isolated.py), so a regression fails one test instead of ending the run."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import diffcore
from diffcore import ot
from diffcore._ops import lincomb_reference
from isolated import expect_error, expect_ok

# ---------------------------------------------------------------------------------------------------
# 1. negative strides: accepted, equal to the contiguous copy (torch aborted the interpreter on them)


def test_lincomb_negative_strides_equal_contiguous_copy():
    expect_ok("""
        import numpy as np, torch, diffcore
        rng = np.random.default_rng(0)
        B, S, K = 5, (3, 4), 2
        x = rng.standard_normal((B,) + S)[::-1]            # reversed batch axis
        ring = rng.standard_normal((K, B) + S)[:, :, ::-1]  # reversed feature axis
        coefs = rng.standard_normal((1 + K, B)).T[::-1]    # transposed and reversed
        want = np.ascontiguousarray(coefs)[:, 0, None, None] * x.copy()
        for k in range(K):
            want = want + np.ascontiguousarray(coefs)[:, k + 1, None, None] * ring[k].copy()
        got = diffcore.lincomb(x, coefs, ring)
        ref = diffcore.lincomb(x.copy(), np.ascontiguousarray(coefs), ring.copy())
        assert torch.equal(got, ref), (got - ref).abs().max()
        assert np.allclose(got.numpy(), want, rtol=1e-14, atol=1e-14)
        # written arrays with negative strides: the batch axis (in place) and a feature axis (copied back)
        for out in (np.zeros((B,) + S)[::-1], np.zeros((B,) + S)[:, :, ::-1]):
            r = diffcore.lincomb(x, coefs, ring, out=out)
            assert r is out and np.array_equal(out, ref.numpy())
        # the history write ring[slot] <- new into a ring with a reversed slot axis
        new = rng.standard_normal((B,) + S)
        ring2 = rng.standard_normal((K, B) + S)[::-1]
        expect = ring2.copy(); expect[1] = new
        diffcore.lincomb(x, coefs, ring2, new, 1)
        assert np.array_equal(ring2, expect)
    """)


def test_ot_negative_strides_equal_contiguous_copy():
    expect_ok("""
        import numpy as np, torch
        from diffcore import ot
        rng = np.random.default_rng(1)
        C = rng.random((7, 6))[::-1, ::-1]
        a = rng.random(7)[::-1]; a = a / a.sum()
        b = rng.random(6)[::-1]; b = b / b.sum()
        r = ot.sinkhorn(a, b, C, 0.05)
        r0 = ot.sinkhorn(a.copy(), b.copy(), C.copy(), 0.05)
        assert torch.equal(r.plan, r0.plan) and torch.equal(r.f, r0.f) and bool(r.converged)
        S = rng.random((6, 6))[::-1]
        p = ot.exact_assignment(S)
        p0 = ot.exact_assignment(S.copy())
        assert torch.equal(p.perm, p0.perm) and torch.equal(p.cost, p0.cost)
        xs, ys = rng.random((5, 3))[::-1], rng.random((4, 3))[:, ::-1]
        assert torch.equal(ot.squared_euclidean(xs, ys), ot.squared_euclidean(xs.copy(), ys.copy()))
        # big-endian input: converted, not misread
        assert torch.equal(ot.exact_assignment(S.astype(">f8")).perm, p0.perm)
    """)


# ---------------------------------------------------------------------------------------------------
# 2. read-only NumPy arrays: accepted where only read, refused by name where written


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a


def test_readonly_numpy_inputs_are_read():
    rng = np.random.default_rng(2)
    x, ring = _readonly(rng.standard_normal((4, 6))), _readonly(rng.standard_normal((2, 4, 6)))
    coefs = _readonly(rng.standard_normal((4, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable" warning from torch either
        got = diffcore.lincomb(x, coefs, ring)
        C = _readonly(rng.random((5, 5)))
        w = _readonly(np.full(5, 0.2))
        r = ot.sinkhorn(w, w, C, 0.1)
        p = ot.exact_assignment(C)
    want = coefs[:, :1] * x + coefs[:, 1:2] * ring[0] + coefs[:, 2:3] * ring[1]
    assert np.allclose(got.numpy(), want, rtol=1e-14, atol=1e-14)
    r0 = ot.sinkhorn(w.copy(), w.copy(), C.copy(), 0.1)
    assert torch.equal(r.plan, r0.plan)
    assert torch.equal(p.perm, ot.exact_assignment(C.copy()).perm)


def test_readonly_numpy_written_is_refused_by_name():
    rng = np.random.default_rng(3)
    x, coefs = rng.standard_normal((4, 6)), rng.standard_normal((4, 3))
    ring, new = rng.standard_normal((2, 4, 6)), rng.standard_normal((4, 6))
    with pytest.raises(ValueError, match="out: .*read-only"):
        diffcore.lincomb(x, coefs, ring, out=_readonly(np.zeros((4, 6))))
    with pytest.raises(ValueError, match="ring: .*read-only"):
        diffcore.lincomb(x, coefs, _readonly(ring), new, 0)
    # the autograd (reference) path refuses the same
    xt = torch.tensor(x, requires_grad=True)
    with pytest.raises(ValueError, match="out: .*read-only"):
        diffcore.lincomb(xt, torch.tensor(coefs), torch.tensor(ring), out=_readonly(np.zeros((4, 6))))


# ---------------------------------------------------------------------------------------------------
# 3. thread counts: bounded (32768 aborted the process at the next kernel call, 100000 segfaulted)


def test_set_num_threads_huge_is_refused():
    # 32768 threads: the process was killed at the next kernel call (subprocess: a regression crashes)
    expect_error("""
        import torch, diffcore
        diffcore.set_num_threads(32768)
        diffcore.lincomb(torch.randn(64, 4096), torch.ones(64, 1, dtype=torch.float64))
    """, "ValueError", "n:", str(diffcore._ops.MAX_THREADS))


def test_set_num_threads_bounds():
    top = diffcore._ops.MAX_THREADS
    assert top >= 64
    for bad in (0, -1, top + 1, 100000, True, 2.0, "4"):
        with pytest.raises(ValueError, match="n: expected a positive int"):
            diffcore.set_num_threads(bad)
    try:
        diffcore.set_num_threads(top)
        assert diffcore.get_num_threads() == top
    finally:
        diffcore.set_num_threads(None)


# ---------------------------------------------------------------------------------------------------
# 4. hand-made DLPack capsules: what can be checked is checked before torch or a kernel reads them

_CAPSULE = r"""
import ctypes, numpy as np, torch, diffcore
from diffcore import ot

class Dev(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

class DType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", Dev), ("ndim", ctypes.c_int32), ("dtype", DType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]

class Managed(ctypes.Structure):
    pass

Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(Managed))
Managed._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", Deleter)]
_noop = Deleter(lambda p: None)
ctypes.pythonapi.PyCapsule_New.restype = ctypes.py_object
ctypes.pythonapi.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_keep = []

class Handmade:
    '''A float64 CPU array exposing only __dlpack__: whatever data pointer, shape, strides and byte
    offset the test gives it.'''
    def __init__(self, data, shape, strides=None, byte_offset=0):
        self.data, self.shape_, self.strides_, self.offset = data, shape, strides, byte_offset
    def __dlpack_device__(self):
        return (1, 0)
    def __dlpack__(self, stream=None, max_version=None, **kw):
        nd = len(self.shape_)
        shape = (ctypes.c_int64 * nd)(*self.shape_)
        strides = None if self.strides_ is None else (ctypes.c_int64 * nd)(*self.strides_)
        m = Managed()
        m.dl_tensor = DLTensor(self.data, Dev(1, 0), nd, DType(2, 64, 1), shape,
                               ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64)), self.offset)
        m.deleter = _noop
        _keep.extend([shape, strides, m])
        return ctypes.pythonapi.PyCapsule_New(ctypes.addressof(m), b"dltensor", None)

buf = np.zeros(64)
ptr = buf.ctypes.data
coefs = torch.ones(4, 1, dtype=torch.float64)
"""


_BAD_CAPSULES = [  # (call, words its ValueError must contain)
    ("diffcore.lincomb(Handmade(None, (4, 3)), coefs)", ("x:", "null data pointer")),
    ("diffcore.lincomb(Handmade(ptr, (4, 3), (2**61, 1)), coefs)", ("x:", "strides overflow")),
    ("diffcore.lincomb(Handmade(ptr, (4, 3), (-2**61, 1)), coefs)", ("x:", "overflow")),
    ("diffcore.lincomb(Handmade(ptr, (4, 3), None, 2**63 + 8), coefs)", ("x:", "byte offset overflow")),
    ("diffcore.lincomb(Handmade(ptr, (4, 3), None, 2**64 - 8), coefs)", ("x:", "overflow")),
    ("diffcore.lincomb(Handmade(ptr, (2**40, 2**40)), coefs)", ("x:", "shape overflow")),
    ("diffcore.lincomb(Handmade(ptr, (4, -3)), coefs)", ("x:", "negative extent")),
    ("diffcore.lincomb(Handmade(ptr + 4, (4, 3)), coefs)", ("x:", "not aligned")),
    ("diffcore.lincomb(Handmade(ptr, (4, 3), (-3, 1), 9 * 8), coefs)", ("x:", "negative strides")),
    ("diffcore.lincomb(ones, coefs, ring=Handmade(None, (2, 4, 3)))", ("ring:", "null data pointer")),
    ("ot.sinkhorn(None, None, Handmade(None, (4, 3)), 0.1)", ("cost:", "null data pointer")),
    ("ot.exact_assignment(Handmade(ptr, (3, 3), (2**62, 1)))", ("cost:", "overflow")),
    # an out= buffer whose rows alias is smaller than the result it should hold
    ("diffcore.lincomb(ones, coefs, out=Handmade(ptr, (4, 3), (0, 1)))", ("out:", "overlap")),
    ("diffcore.lincomb(ones, coefs, out=Handmade(ptr, (4, 3), (1, 1)))", ("out:", "overlap")),
    ("diffcore.lincomb(ones, coefs, out=Handmade(ptr, (3, 3)))", ("out:", "expected shape")),
]


def test_handmade_capsules_are_checked():
    """Each lying capsule raises a ValueError naming its argument (one child interpreter for all: a
    crash, the behaviour before these checks, fails this test with the output of the case that did it)."""
    checks = "".join(f"""
print({call!r}, flush=True)
try:
    {call}
except ValueError as e:
    low = str(e).lower()
    assert all(w.lower() in low for w in {words!r}), ({call!r}, str(e))
else:
    raise AssertionError("accepted: " + {call!r})
""" for call, words in _BAD_CAPSULES)
    expect_ok(_CAPSULE + "ones = torch.ones(4, 3, dtype=torch.float64)\n" + checks)


def test_handmade_capsules_that_are_valid_still_work():
    expect_ok(_CAPSULE + """
buf[:12] = np.arange(12.0)
y = diffcore.lincomb(Handmade(ptr, (4, 3)), 2 * coefs)
assert torch.equal(y, 2 * torch.arange(12.0, dtype=torch.float64).reshape(4, 3))
out = Handmade(ptr + 16 * 8, (4, 3))
r = diffcore.lincomb(torch.ones(4, 3, dtype=torch.float64), 3 * coefs, out=out)
assert r is out and np.array_equal(buf[16:28], np.full(12, 3.0))
empty = Handmade(None, (0, 3))  # no elements: a null pointer is fine
assert diffcore.lincomb(empty, coefs[:0]).shape == (0, 3)
""")


def test_out_with_aliased_rows_is_refused():
    x = torch.randn(4, 5, dtype=torch.float64)
    coefs = torch.ones(4, 1, dtype=torch.float64)
    for out in (torch.zeros(1, 5, dtype=torch.float64).expand(4, 5),
                torch.zeros(4, 1, dtype=torch.float64).expand(4, 5),
                torch.zeros(8, dtype=torch.float64).as_strided((4, 5), (1, 1))):
        with pytest.raises(ValueError, match="out: is written but its elements overlap"):
            diffcore.lincomb(x, coefs, out=out)
    ring = torch.zeros(2, 1, 5, dtype=torch.float64).expand(2, 4, 5)
    with pytest.raises(ValueError, match="ring: is written but its elements overlap"):
        diffcore.lincomb(x, torch.ones(4, 3, dtype=torch.float64), ring, x.clone(), 0)


# ---------------------------------------------------------------------------------------------------
# 5. lincomb: the kernel and the autograd (reference) path accept and refuse the same calls


def _both_paths(args, kwargs):
    """The exception (type, message) of the kernel path and of the reference path, or None."""
    seen = []
    for grad in (False, True):
        a = [t.clone().requires_grad_(grad and t.is_floating_point()) if isinstance(t, torch.Tensor) else t
             for t in args]
        try:
            diffcore.lincomb(*a, **kwargs)
            seen.append(None)
        except (TypeError, ValueError) as e:
            seen.append((type(e), str(e)))
    return seen


@pytest.mark.parametrize("case", ["extra column", "3-d coefs", "1-d coefs", "wrong batch", "int coefs",
                                  "new without slot", "ring dtype", "feat shape", "out dtype"])
def test_lincomb_paths_agree_on_bad_arguments(case):
    B, K = 3, 2
    x = torch.randn(B, 4, dtype=torch.float64)
    ring = torch.randn(K, B, 4, dtype=torch.float64)
    c = torch.randn(B, 1 + K, dtype=torch.float64)
    kw = {}
    args = {"extra column": (x, torch.randn(B, 2 + K, dtype=torch.float64), ring),
            "3-d coefs": (x, c[..., None], ring),
            "1-d coefs": (x, c[0], ring),
            "wrong batch": (x, torch.randn(B + 1, 1 + K, dtype=torch.float64), ring),
            "int coefs": (x, c.to(torch.int64), ring),
            "new without slot": (x, c, ring, x.clone()),
            "ring dtype": (x, c, ring.float()),
            "feat shape": (x, c, ring),
            "out dtype": (x, c, ring)}[case]
    if case == "feat shape":
        kw = {"feat": torch.ones(B, 1 + K, 5, dtype=torch.float64)}
    if case == "out dtype":
        kw = {"out": torch.empty(B, 4, dtype=torch.float32)}
    kernel, reference = _both_paths(args, kw)
    word = {"new without slot": "new:", "ring dtype": "ring:", "feat shape": "feat:", "out dtype": "out:"}.get(
        case, "coefs:")
    assert kernel is not None and reference is not None, (kernel, reference)
    assert kernel == reference
    assert kernel[1].startswith(word), kernel


def test_lincomb_paths_agree_on_good_arguments():
    B, K = 3, 2
    x = torch.randn(B, 2, 3, dtype=torch.float64)
    ring = torch.randn(K, B, 2, 3, dtype=torch.float64)
    for c in (torch.randn(B, 1 + K, dtype=torch.float64), torch.randn(1, 1 + K, dtype=torch.float32)):
        for feat in (None, torch.rand(1, 1 + K, 6, dtype=c.dtype)):
            got = diffcore.lincomb(x, c, ring, feat=feat)
            ref = lincomb_reference(x, c, ring, feat=feat)
            assert torch.allclose(got, ref, rtol=1e-6 if c.dtype == torch.float32 else 1e-14, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# 6. Sinkhorn at tiny ε: a plan with the right marginals, or an error naming eps; never absurd mass


def _cost(dtype, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(20, 30, dtype=torch.float64, generator=g) + offset).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_sinkhorn_tiny_eps_refused_or_right(dtype, offset):
    C = _cost(dtype, offset)
    M = float(C.abs().max())
    floor = ot.eps_floor(C)
    assert floor == pytest.approx(64 * 2.0 ** -52 * M, rel=1e-12)
    tol = 1e-9 if dtype == torch.float64 else 1e-6
    for rel in (1e-12, 1.01 * 64 * 2.0 ** -52, 1e-16, 1e-19, 1e-20, 1e-30, 1e-300):
        eps = rel * M
        if eps < floor:
            with pytest.raises(ValueError, match=r"eps: expected eps >= .* got"):
                ot.sinkhorn(None, None, C, eps)
            continue
        r = ot.sinkhorn(None, None, C, eps, max_iters=20000)
        assert bool(r.converged), (rel, float(r.marginal_error))
        P = r.plan.double()
        assert (P.sum(1) - 1 / 20).abs().sum() <= 2 * tol
        assert (P.sum(0) - 1 / 30).abs().sum() <= 2 * tol
        assert abs(float(P.sum()) - 1) <= 2 * tol


def test_sinkhorn_reference_tiny_eps_refused():
    C = _cost(torch.float32)
    assert ot.eps_floor(C, torch.float32) == pytest.approx(64 * 2.0 ** -23 * float(C.max()), rel=1e-6)
    with pytest.raises(ValueError, match="eps: expected eps >="):  # its mass was 0.6 here, unflagged
        ot.sinkhorn_reference(None, None, C, 1e-10)
    with pytest.raises(ValueError, match="eps: expected eps >="):  # the autograd path is the reference
        ot.sinkhorn(None, None, C.clone().requires_grad_(), 1e-10)
    C64 = _cost(torch.float64)
    with pytest.raises(ValueError, match="eps: expected eps >="):  # mass 0.41 at 1e-18
        ot.sinkhorn_reference(None, None, C64, 1e-18)
