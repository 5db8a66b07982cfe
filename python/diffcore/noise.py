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
from typing import Optional, Sequence

import torch

from . import _ops

__all__ = ["philox_normal", "BrownianTree", "Noise", "philox4x32", "philox4x32_reference",
           "philox_normal_reference", "DOMAIN_STEP", "DOMAIN_PRIOR", "DOMAIN_BROWNIAN", "default_seed"]

#: Counter domains (csrc/core/philox.h): one seed drives independent streams for the sampler's steps,
#: the prior draw and the Brownian tree.
DOMAIN_STEP, DOMAIN_PRIOR, DOMAIN_BROWNIAN = 0, 1, 2
_MAX_DEPTH = 30

philox4x32 = _ops.philox4x32


def default_seed(generator: Optional[torch.Generator] = None) -> int:
    """A 63-bit seed drawn from ``generator`` (default: torch's global generator), so that
    ``torch.manual_seed`` makes seedless runs reproducible too."""
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, dtype=torch.int64))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
    return seed


def _check_ids(sample_ids, B: int, device) -> Optional[torch.Tensor]:
    if sample_ids is None:
        return None
    ids = torch.as_tensor(sample_ids)
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"sample_ids: expected integer ids, got {ids.dtype}")
    if ids.dim() != 1 or ids.shape[0] != B:
        raise ValueError(f"sample_ids: expected shape ({B},), one id per sample, got {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= 2 ** 32):
        raise ValueError("sample_ids: expected ids in [0, 2**32)")
    return ids.to(device=device, dtype=torch.int64).contiguous()


def _check_shape(shape) -> tuple:
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)))
    if len(shape) < 1 or any(s < 0 for s in shape):
        raise ValueError(f"shape: expected a (batch, ...) shape of non-negative sizes, got {shape}")
    return shape


def philox_normal(shape: Sequence[int], seed: int, sample_ids=None, draw: int = 0, domain: int = DOMAIN_STEP,
                  device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals of shape ``(B, ...)``: element ``n`` of sample ``b`` is the Philox normal of
    ``(seed, sample_ids[b], draw, n)`` (``sample_ids`` default ``arange(B)``)."""
    shape = _check_shape(shape)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    out = torch.empty(shape, device=device, dtype=dtype)
    ids = _check_ids(sample_ids, shape[0], out.device)
    if not 0 <= int(draw) < 2 ** 32:
        raise ValueError(f"draw: expected 0 <= draw < 2**32, got {draw!r}")
    return _ops.noise_fill(out, _check_seed(seed), ids, int(draw), int(domain))


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
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise ValueError(f"t0, t1: expected finite t0 < t1, got {t0}, {t1}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= _MAX_DEPTH:
            raise ValueError(f"depth: expected an int in [0, {_MAX_DEPTH}], got {depth!r}")
        self.t0, self.t1, self.depth = t0, t1, depth
        self.shape = _check_shape(shape)
        self.seed = _check_seed(default_seed() if seed is None else seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.sample_ids = _check_ids(sample_ids, self.shape[0], self.device)

    def increment(self, ta, tb, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The normalized increment ``(W(ta) − W(tb))/√|ta − tb|`` (standard normal per element).
        ``ta``, ``tb``: floats or per-sample ``[B]`` tensors inside ``[t0, t1]``, ``ta ≠ tb``."""
        B = self.shape[0]
        iv = torch.stack(torch.broadcast_tensors(torch.as_tensor(ta, dtype=torch.float64),
                                                 torch.as_tensor(tb, dtype=torch.float64)), -1).reshape(-1, 2)
        if iv.shape[0] not in (1, B):
            raise ValueError(f"ta, tb: expected scalars or ({B},) tensors")
        if not bool(((iv >= self.t0) & (iv <= self.t1)).all()):
            raise ValueError(f"ta, tb: expected times inside [{self.t0}, {self.t1}]")
        if bool((iv[:, 0] == iv[:, 1]).any()):
            raise ValueError("ta, tb: expected ta != tb")
        if out is None:
            out = torch.empty(self.shape, device=self.device, dtype=self.dtype)
        return _ops.noise_fill(out, self.seed, self.sample_ids, 0, DOMAIN_BROWNIAN, iv.to(self.device).contiguous(),
                               (self.t0, self.t1), self.depth)

    def __call__(self, ta, tb) -> torch.Tensor:
        """``W(tb) − W(ta)``."""
        dt = torch.as_tensor(tb, dtype=torch.float64) - torch.as_tensor(ta, dtype=torch.float64)
        z = self.increment(ta, tb)
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
    steps and EDM's churn, keep their Philox draws). ``sample_ids`` (default ``arange(B)``) key the
    Philox and Brownian streams per sample.
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
            ids = self._ids[key] = _check_ids(self.sample_ids, B, device)
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
