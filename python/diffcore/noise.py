"""Reproducible noise (docs/design.md, "One fused kernel family"): counter-based Philox normals and a
seed-stable Brownian tree, both computed in the compiled core and inside the fused sampler step.

* :func:`philox_normal` — the normal of (seed, sample id, draw, element) is a pure function of those
  four numbers (Philox-4x32-10, Salmon et al. 2011, checked against the Random123 known-answer
  vectors; Box–Muller in IEEE double with the library's own log/sin/cos, so CPU and CUDA give the same
  bits). A sample's noise does not depend on the batch it is drawn in: give each sample a stable
  ``sample_ids`` entry and any batch split reproduces it.
* :class:`BrownianTree` — the virtual Brownian tree (Li et al. 2020, §4): W(t) for every element is
  a pure function of (seed, sample id, element, t), so a sampler with 2N steps sees a refinement of
  the path the N-step sampler saw (samples converge as the step count grows).
* :class:`Noise` — the noise source of one sampling run (what :func:`diffcore.sample` builds from its
  ``seed``, ``sample_ids``, ``generator``, ``noise`` and ``brownian`` arguments).

The pure-torch :func:`philox4x32_reference` and :func:`philox_normal_reference` are the tests'
independent references for the compiled generator.
"""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence

import torch

from . import _ops
from ._device import as_device

__all__ = ["philox_normal", "BrownianTree", "Noise", "philox4x32", "philox4x32_reference",
           "philox_normal_reference", "DOMAIN_STEP", "DOMAIN_PRIOR", "DOMAIN_BROWNIAN", "default_seed"]

#: Counter domains (csrc/core/philox.h, enum NoiseDomain, exported by the core): one seed drives
#: independent streams for the sampler's steps, the prior draw and the Brownian tree.
DOMAIN_STEP, DOMAIN_PRIOR, DOMAIN_BROWNIAN = (int(_ops.NoiseDomain.step), int(_ops.NoiseDomain.prior),
                                              int(_ops.NoiseDomain.brownian))
_MAX_DEPTH = 30



def _check_int(name: str, v, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi)``; floats (``draw=1.5`` would silently become draw 1), bools and
    NaN are refused rather than truncated."""
    try:
        if isinstance(v, bool):
            raise TypeError
        iv = operator.index(v)
    except TypeError:
        raise TypeError(f"{name}: expected an int in [{lo}, {hi}), got {v!r}") from None
    if not lo <= iv < hi:
        raise ValueError(f"{name}: expected an int in [{lo}, {hi}), got {iv}")
    return iv


def philox4x32(counter: Sequence[int], key: Sequence[int]) -> tuple:
    """Philox-4x32-10 of one counter block (four uint32 words) under a two-word key (the compiled
    bijection; its known-answer vectors are the Random123 ones)."""
    if isinstance(counter, (str, bytes)) or not hasattr(counter, "__len__") or len(counter) != 4:
        raise ValueError(f"counter: expected 4 uint32 words, got {counter!r}")
    if isinstance(key, (str, bytes)) or not hasattr(key, "__len__") or len(key) != 2:
        raise ValueError(f"key: expected 2 uint32 words, got {key!r}")
    return _ops.philox4x32([_check_int("counter", c, 0, 2 ** 32) for c in counter],
                           [_check_int("key", k, 0, 2 ** 32) for k in key])


def default_seed(generator: Optional[torch.Generator] = None) -> int:
    """A 63-bit seed drawn from ``generator`` (default: torch's global generator), so that
    ``torch.manual_seed`` makes seedless runs reproducible too."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, dtype=torch.int64))


def _check_seed(seed) -> int:
    try:
        return _check_int("seed", seed, 0, 2 ** 64)
    except TypeError as e:  # a seed of the wrong type has always been a ValueError
        raise ValueError(str(e)) from None


_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _as_ids(sample_ids) -> Optional[torch.Tensor]:
    """``sample_ids`` as a 1-D int64 CPU tensor of ids in ``[0, 2**32)`` (the Philox counter word
    that holds the id), before the batch size is known."""
    if sample_ids is None:
        return None
    try:
        ids = sample_ids.detach() if isinstance(sample_ids, torch.Tensor) else torch.as_tensor(sample_ids)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"sample_ids: expected a 1-D sequence or tensor of integer ids, got {sample_ids!r}") from None
    if ids.dtype not in _ID_DTYPES:
        raise TypeError(f"sample_ids: expected integer ids, got {ids.dtype}")
    if ids.dim() != 1:
        raise ValueError(f"sample_ids: expected a 1-D tensor, one id per sample, got shape {tuple(ids.shape)}")
    ids = ids.to("cpu", torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 2 ** 32):
        raise ValueError(f"sample_ids: expected ids in [0, 2**32), got ids in [{int(ids.min())}, {int(ids.max())}]")
    return ids


def _check_ids(sample_ids, B: int, device) -> Optional[torch.Tensor]:
    ids = _as_ids(sample_ids)
    if ids is None:
        return None
    if ids.shape[0] != B:
        raise ValueError(f"sample_ids: expected shape ({B},), one id per sample, got {tuple(ids.shape)}")
    return ids.to(device=device).contiguous()


def _check_shape(shape) -> tuple:
    dims = shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)
    try:
        if any(isinstance(s, bool) for s in dims):
            raise TypeError
        shape = tuple(operator.index(s) for s in dims)
    except TypeError:
        raise TypeError(f"shape: expected a (batch, ...) shape of ints, got {shape!r}") from None
    if len(shape) < 1 or any(s < 0 for s in shape):
        raise ValueError(f"shape: expected a (batch, ...) shape of non-negative sizes, got {shape}")
    return shape


def _check_dtype(dtype) -> torch.dtype:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    return dtype


def philox_normal(shape: Sequence[int], seed: int, sample_ids=None, draw: int = 0, domain: int = DOMAIN_STEP,
                  device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals of shape ``(B, ...)``: element ``n`` of sample ``b`` is the Philox normal of
    ``(seed, sample_ids[b], draw, n)`` (``sample_ids`` default ``arange(B)``)."""
    shape = _check_shape(shape)
    _check_dtype(dtype)
    seed = _check_seed(seed)
    draw = _check_int("draw", draw, 0, 2 ** 32)
    domain = _check_int("domain", domain, 0, DOMAIN_BROWNIAN + 1)
    ids = _as_ids(sample_ids)
    out = torch.empty(shape, device=as_device(device, default=None), dtype=dtype)
    ids = _check_ids(ids, shape[0], out.device)
    return _ops.noise_fill(out, seed, ids, draw, domain)


class BrownianTree:
    """A virtual Brownian tree over ``[t0, t1]`` (csrc/core/brownian.h): ``tree(ta, tb)`` is
    ``W(tb) − W(ta)`` for every element of a ``shape = (B, ...)`` tensor, with W a Brownian motion
    fixed by ``seed`` and the sample ids. Values are exact Brownian-bridge draws at the dyadic points
    of depth ``depth`` and linear in between (leaf width ``(t1 − t0)/2**depth``).

    Same contract as ``torchsde.BrownianInterval(t0, t1, size)``'s ``bm(ta, tb)``, but stateless: no
    cache, any query order, the same numbers on CPU and CUDA and in any batch split.
    """

    def __init__(self, t0: float, t1: float, shape: Sequence[int], seed: Optional[int] = None, sample_ids=None,
                 depth: int = 20, device=None, dtype: torch.dtype = torch.float32):
        try:
            t0, t1 = float(t0), float(t1)
        except (TypeError, ValueError):
            raise TypeError(f"t0, t1: expected real times, got {t0!r}, {t1!r}") from None
        # the span's width must be finite too: the root value is √(t1 − t0)·N₀
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1 and math.isfinite(t1 - t0)):
            raise ValueError(f"t0, t1: expected finite t0 < t1 with a finite t1 - t0, got {t0}, {t1}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= _MAX_DEPTH:
            raise ValueError(f"depth: expected an int in [0, {_MAX_DEPTH}], got {depth!r}")
        leaf = (t1 - t0) * 2.0 ** -depth
        if not leaf >= max(math.ulp(t0), math.ulp(t1)):
            # below this the dyadic midpoints round onto their ends and the walk down the tree
            # stops shrinking its interval: the increments would come out far from N(0, 1)
            raise ValueError(f"depth: the leaf width (t1 - t0)/2**depth = {leaf:.3g} is below the float64 "
                             f"resolution of times in [{t0}, {t1}]; use a smaller depth or a wider span")
        self.t0, self.t1, self.depth = t0, t1, depth
        self.shape = _check_shape(shape)
        self.seed = _check_seed(default_seed() if seed is None else seed)
        self.device = as_device(device)
        self.dtype = _check_dtype(dtype)
        self.sample_ids = _check_ids(sample_ids, self.shape[0], self.device)

    def _times(self, name: str, t) -> torch.Tensor:
        B = self.shape[0]
        try:
            if isinstance(t, torch.Tensor) and t.is_complex():
                raise TypeError
            v = (t.detach().to("cpu", torch.float64) if isinstance(t, torch.Tensor)
                 else torch.as_tensor(t, dtype=torch.float64))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name}: expected a real time or a ({B},) tensor of times, got {t!r}") from None
        if v.dim() > 1 or (v.dim() == 1 and v.shape[0] not in (1, B)):
            raise ValueError(f"{name}: expected a scalar or a ({B},) tensor, one time per sample, "
                             f"got shape {tuple(v.shape)}")
        return v.reshape(-1)

    def increment(self, ta, tb, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The normalized increment ``(W(ta) − W(tb))/√|ta − tb|`` (standard normal per element).
        ``ta``, ``tb``: floats or per-sample ``[B]`` tensors inside ``[t0, t1]``, ``ta ≠ tb``."""
        B = self.shape[0]
        iv = torch.stack(torch.broadcast_tensors(self._times("ta", ta), self._times("tb", tb)), -1)
        if not bool(((iv >= self.t0) & (iv <= self.t1)).all()):
            raise ValueError(f"ta, tb: expected times inside [{self.t0}, {self.t1}]")
        if bool((iv[:, 0] == iv[:, 1]).any()):
            raise ValueError("ta, tb: expected ta != tb")
        if out is None:
            out = torch.empty(self.shape, device=self.device, dtype=self.dtype)
        else:
            self._check_out(out)
        return _ops.noise_fill(out, self.seed, self.sample_ids, 0, DOMAIN_BROWNIAN, iv.to(self.device).contiguous(),
                               (self.t0, self.t1), self.depth)

    def _check_out(self, out) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out: expected a tensor of shape {self.shape}, got {type(out).__name__}")
        if tuple(out.shape) != self.shape:
            raise ValueError(f"out: expected shape {self.shape} (the tree's shape), got {tuple(out.shape)}")
        if not out.is_floating_point():
            raise TypeError(f"out: expected a floating tensor, got {out.dtype}")
        if out.device != self.device:
            raise ValueError(f"out: expected a tensor on {self.device} (the tree's device), got {out.device}")
        N = out[0].numel() if out.shape[0] else 0
        if out.shape[0] > 1 and N > 0 and out.stride(0) < N:
            # rows that share memory would each be written with another sample's noise
            raise ValueError(f"out: expected distinct rows (stride(0) >= {N}), got stride(0) = {out.stride(0)}")

    def __call__(self, ta, tb) -> torch.Tensor:
        """``W(tb) − W(ta)``."""
        z = self.increment(ta, tb)
        dt = self._times("tb", tb) - self._times("ta", ta)
        scale = (-dt.sign() * dt.abs().sqrt()).to(self.device, z.dtype)
        return z * scale.reshape((-1,) + (1,) * (z.dim() - 1))

    def __repr__(self) -> str:
        return f"BrownianTree(t0={self.t0}, t1={self.t1}, shape={self.shape}, depth={self.depth})"


class Noise:
    """The noise source of one sampling run.

    Exactly one of:
        seed: Philox normals of (seed, sample id, draw, element) — computed inside the fused step;
        generator: a ``torch.Generator``; each draw is ``torch.randn`` from it, handed to the step;
        noise: pre-drawn noise ``[draws, B, ...]`` (``plan.noise_draws`` draws), e.g. for parallel
            sampling or variance-reduction studies;
        provider: ``provider(draw) → tensor | None``, called once per draw when the draw is reached
            (None: zeros, for a draw whose coefficient is 0): noise from another library's convention,
            e.g. a k-diffusion ``noise_sampler`` (:mod:`diffcore.k`).
    ``brownian=True`` (with a seed) replaces each step's noise by the normalized increment of a
    :class:`BrownianTree` over the step's time interval (rows without an interval, such as Langevin
    steps and EDM's churn, keep their Philox draws). Each sample's tree spans its own grid's time
    range, so with per-sample grids a sample's Brownian path does not depend on the other samples'
    grids. ``sample_ids`` (default ``arange(B)``) key the Philox and Brownian streams per sample;
    they are validated here (integers in ``[0, 2**32)``, 1-D) and their count against the batch when
    a run starts, for every solver.
    """

    def __init__(self, seed: Optional[int] = None, sample_ids=None, generator: Optional[torch.Generator] = None,
                 noise: Optional[torch.Tensor] = None, brownian: bool = False, brownian_depth: int = 20,
                 provider=None):
        given = [n for n, v in (("seed", seed), ("generator", generator), ("noise", noise), ("provider", provider))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"noise: give at most one of seed=, generator=, noise=, provider= (got {', '.join(given)})")
        if provider is not None and not callable(provider):
            raise TypeError(f"provider: expected a callable draw -> tensor, got {type(provider).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        if noise is not None and not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise: expected a tensor [draws, B, ...], got {type(noise).__name__}")
        if not isinstance(brownian, bool):
            raise TypeError(f"brownian: expected a bool, got {brownian!r}")
        if brownian and (generator is not None or noise is not None or provider is not None):
            raise ValueError("brownian: the Brownian tree is keyed by seed=; it cannot use generator=, noise= or provider=")
        if isinstance(brownian_depth, bool) or not isinstance(brownian_depth, int) or not 0 <= brownian_depth <= _MAX_DEPTH:
            raise ValueError(f"brownian_depth: expected an int in [0, {_MAX_DEPTH}], got {brownian_depth!r}")
        if sample_ids is not None and (generator is not None or noise is not None or provider is not None):
            raise ValueError("sample_ids: only meaningful with seed= (Philox or Brownian noise)")
        self.seed = None if seed is None else _check_seed(seed)
        self.sample_ids = sample_ids
        self._id_tensor = _as_ids(sample_ids)
        self._ids = {}
        self.generator = generator
        self.tensor = noise
        self.provider = provider
        self.brownian = brownian
        self.depth = brownian_depth

    def ids(self, B: int, device) -> Optional[torch.Tensor]:
        """The validated int64 sample ids on ``device`` (None: ``arange(B)``), cached so that a
        CUDA-graph capture replays without host synchronization."""
        if self.sample_ids is None:
            return None
        key = (B, str(device))
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = _check_ids(self._id_tensor, B, device)
        return ids

    @property
    def kind(self) -> str:
        if self.tensor is not None:
            return "tensor"
        if self.generator is not None:
            return "generator"
        if self.provider is not None:
            return "provider"
        return "brownian" if self.brownian else "philox"


# -- pure-torch references (tests) ----------------------------------------------------------------

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def philox4x32_reference(counter: torch.Tensor, key: Sequence[int]) -> torch.Tensor:
    """Philox-4x32-10 in int64 torch arithmetic: ``counter`` ``[..., 4]`` of uint32 values → ``[..., 4]``."""
    c = [counter[..., j].to(torch.int64) for j in range(4)]
    k0, k1 = int(key[0]), int(key[1])
    for _ in range(10):
        p0 = c[0] * _M0  # < 2^64: exact as uint64, and the int64 wrap-around keeps the low bits
        p1 = c[2] * _M1
        hi0, lo0 = (p0 >> 32) & _MASK, p0 & _MASK
        hi1, lo1 = (p1 >> 32) & _MASK, p1 & _MASK
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return torch.stack(c, -1)


def philox_normal_reference(n: int, seed: int, sample_id: int = 0, draw: int = 0, domain: int = DOMAIN_STEP):
    """The first ``n`` normals of one stream, float64, with ``torch.log``/``cos``/``sin`` (within a few
    ulp of the compiled transform, which uses its own polynomials)."""
    n = _check_int("n", n, 0, 2 ** 54)
    seed = _check_seed(seed)
    sample_id = _check_int("sample_id", sample_id, 0, 2 ** 32)
    draw = _check_int("draw", draw, 0, 2 ** 32)
    domain = _check_int("domain", domain, 0, DOMAIN_BROWNIAN + 1)
    q = torch.arange((n + 3) // 4, dtype=torch.int64)
    ctr = torch.stack([q & _MASK, torch.full_like(q, sample_id), torch.full_like(q, draw),
                       torch.full_like(q, domain) ^ ((q >> 32) << 8)], -1)
    w = philox4x32_reference(ctr, (seed & _MASK, seed >> 32)).to(torch.float64)
    u = (w + 0.5) * 2.0 ** -32
    r = torch.sqrt(-2.0 * torch.log(u[:, 0::2]))
    th = 2 * math.pi * u[:, 1::2]
    out = torch.stack([r[:, 0] * torch.cos(th[:, 0]), r[:, 0] * torch.sin(th[:, 0]),
                       r[:, 1] * torch.cos(th[:, 1]), r[:, 1] * torch.sin(th[:, 1])], -1)
    return out.reshape(-1)[:n]
