"""Minibatch couplings for flow matching: independent, exact OT, entropic OT, Schrödinger bridge, and
their DDP-aware (globally coupled) form.

Minibatch OT couplings: Tong et al. 2024 (TMLR), Pooladian et al. 2023 (ICML); the static Schrödinger bridge
is entropic OT, book Sec. 7.2.3; book Sec. 5.2.2 / Prop. 5.2.3: flow matching accepts any coupling π of p_src
and p_tgt.

A coupling turns a source batch ``y0 [B, *S]`` and a target batch ``y1 [B', *S]`` into ``B`` pairs:

1. cost ``C_ij = ‖y0_i − y1_j‖²`` over the flattened features, optionally divided by its max or mean
   (``normalize``; this rescales the meaning of ``eps``);
2. plan: *exact* (B = B', uniform weights ⇒ a linear assignment: the pairs ``(i, σ(i))``, no
   resampling; :func:`diffcore.ot.exact_assignment`) or *entropic* (:func:`diffcore.ot.sinkhorn`),
   from whose normalized plan ``B`` index pairs are drawn i.i.d. with replacement;
3. with labels, pairs are formed within each class (the source is drawn independently of the label, so
   any subset of it is a valid source batch for that class).

Drawing pairs from the plan keeps, in expectation, the batch-empirical marginals, so the learned
marginal field still transports p_src to p_tgt; B = 1 is the independent coupling.

Use a coupling through :meth:`Coupling.couple`, which returns the paired tensors (the DDP-aware
:class:`Distributed` gathers every rank's batch, couples the global batch and hands each rank its
share, so it can only return tensors, not local indices).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["Coupling", "Independent", "ExactOT", "EntropicOT", "SchrodingerBridge", "Distributed",
           "pair_cost", "get", "available"]

_NORMALIZE = (None, "max", "mean")


def _check_batches(y0, y1, labels, square: bool):
    for name, y in (("y0", y0), ("y1", y1)):
        if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() < 1:
            raise TypeError(f"{name}: expected a floating-point tensor [B, ...], got "
                            f"{type(y).__name__ if not isinstance(y, torch.Tensor) else (y.dtype, tuple(y.shape))}")
        if y.shape[0] == 0:
            raise ValueError(f"{name}: empty batch")
        if not torch.isfinite(y).all():
            raise ValueError(f"{name}: contains NaN or inf")
    if y0.shape[1:] != y1.shape[1:]:
        raise ValueError(f"y0, y1: feature shapes differ: {tuple(y0.shape[1:])} vs {tuple(y1.shape[1:])}")
    if y0.device != y1.device:
        raise ValueError(f"y0, y1: on different devices ({y0.device} vs {y1.device})")
    if square and y0.shape[0] != y1.shape[0]:
        raise ValueError(f"y0, y1: this coupling needs equal batch sizes, got {y0.shape[0]} and {y1.shape[0]}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != y1.shape[0]:
            raise ValueError(f"labels: expected a 1-D tensor of length {y1.shape[0]} (one per target sample)")


def pair_cost(y0: torch.Tensor, y1: torch.Tensor, normalize: Optional[str] = None) -> torch.Tensor:
    """``C_ij = ‖y0_i − y1_j‖²`` over flattened features ([B, B']), computed in float64
    from the differences (not the ‖a‖² + ‖b‖² − 2ab expansion, which cancels for close points).
    ``normalize="max"|"mean"`` divides by the max or mean entry (a zero cost matrix is left as it is)."""
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize: expected one of {_NORMALIZE}, got {normalize!r}")
    _check_batches(y0, y1, None, False)
    a = y0.reshape(y0.shape[0], -1).double()
    b = y1.reshape(y1.shape[0], -1).double()
    c = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    if normalize is not None:
        scale = c.max() if normalize == "max" else c.mean()
        if scale > 0:
            c = c / scale
    return c


def _pairs(coupling, y0, y1, labels, generator):
    """Index pairs of ``coupling`` on the whole batch, or within each class when labels are given
    (targets of class c with the source samples at the same positions)."""
    if labels is None:
        return coupling.pair(y0, y1, generator)
    i = torch.empty(y0.shape[0], dtype=torch.long, device=y0.device)
    j = torch.empty_like(i)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        ii, jj = coupling.pair(y0[idx], y1[idx], generator)
        i[idx], j[idx] = idx[ii], idx[jj]
    return i, j


class Coupling:
    """Base class: subclasses implement :meth:`pair` on one (class-homogeneous) batch."""

    square = False

    def pair(self, y0: torch.Tensor, y1: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Index pairs ``(i, j)`` (LongTensors of length ``y0.shape[0]``): use ``y0[i]``, ``y1[j]``."""
        raise NotImplementedError(f"{type(self).__name__} does not define pair()")

    def couple(self, y0: torch.Tensor, y1: torch.Tensor, labels: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None):
        """Return the paired batches ``(y0p, y1p, labelsp)`` (``labelsp`` is None without labels).

        With labels (one per target sample), the pairs are formed within each class: the targets of
        class c are coupled with the source samples at the same batch positions."""
        _check_batches(y0, y1, labels, self.square or labels is not None)
        i, j = _pairs(self, y0, y1, labels, generator)
        return y0[i], y1[j], (labels[j] if labels is not None else None)

    def __call__(self, y0, y1, labels=None, generator=None):
        return self.couple(y0, y1, labels, generator)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


class Independent(Coupling):
    """The independent coupling p_src ⊗ p_tgt (I-CFM): pairs ``(k, k)`` of two independent batches."""

    square = True

    def pair(self, y0, y1, generator=None):
        k = torch.arange(y0.shape[0], device=y0.device)
        return k, k


class ExactOT(Coupling):
    """Exact minibatch OT (OT-CFM, Tong et al. 2024): the optimal assignment for ``C = ‖y0_i − y1_j‖²``
    (:func:`diffcore.ot.exact_assignment`); every sample is used once, no resampling."""

    square = True

    def __init__(self, normalize: Optional[str] = None):
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize: expected one of {_NORMALIZE}, got {normalize!r}")
        self.normalize = normalize

    def pair(self, y0, y1, generator=None):
        from . import ot
        perm = ot.exact_assignment(pair_cost(y0, y1, self.normalize).cpu()).perm
        return torch.arange(y0.shape[0], device=y0.device), perm.to(device=y0.device, dtype=torch.long)


class EntropicOT(Coupling):
    """Entropic minibatch OT (Tong et al. 2024): Sinkhorn plan for ``C`` with regularization ``eps``
    (:func:`diffcore.ot.sinkhorn`, objective ⟨P, C⟩ + ε KL(P ‖ abᵀ)), then ``B`` index pairs drawn
    i.i.d. from ``P/ΣP``. Non-square batches are allowed.

    Args:
        eps: regularization, in the units of the (normalized) cost.
        normalize: ``"max"`` (default: ε is then relative to the largest squared distance), ``"mean"``
            or ``None`` (absolute ε).
        tol, max_iters: Sinkhorn stopping rule (‖P1 − a‖₁ ≤ tol). The plan only feeds pair draws, so
            the default 1e-4 is loose; Sinkhorn converges slowly when ε is small against the cost
            range, and then warns.
    """

    def __init__(self, eps: float = 0.05, normalize: Optional[str] = "max", tol: Optional[float] = 1e-4,
                 max_iters: int = 2000):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ValueError(f"eps: expected a finite positive number, got {eps!r}")
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf):
            raise ValueError(f"tol: expected a finite nonnegative number or None, got {tol!r}")
        if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"max_iters: expected a positive int, got {max_iters!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize: expected one of {_NORMALIZE}, got {normalize!r}")
        self.eps = float(eps)
        self.normalize = normalize
        self.tol = tol
        self.max_iters = int(max_iters)

    def plan(self, y0: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
        """The entropic plan ``P [B, B']`` (float64, on y0's device)."""
        from . import ot
        cost = pair_cost(y0, y1, self.normalize)
        res = ot.sinkhorn(None, None, cost, self.eps, tol=self.tol, max_iters=self.max_iters)
        return res.plan

    def pair(self, y0, y1, generator=None):
        p = self.plan(y0, y1)
        m = p.shape[1]
        flat = torch.multinomial(p.flatten() / p.sum(), y0.shape[0], replacement=True, generator=generator)
        return flat // m, flat % m


class SchrodingerBridge(EntropicOT):
    """The static Schrödinger-bridge coupling of SB-CFM (Tong et al. 2024; book §7.2.3): the entropic plan on
    the absolute cost ``‖y0 − y1‖²`` with ``reg = 2σ²``, to be used with the Brownian-bridge path P6 of
    the same σ (``diffcore.losses.get("cfm", path="bridge", sigma=σ, coupling=...)``)."""

    def __init__(self, sigma: float = 0.5, tol: Optional[float] = 1e-4, max_iters: int = 2000):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
            raise ValueError(f"sigma: expected a finite positive number, got {sigma!r}")
        super().__init__(eps=2.0 * float(sigma) ** 2, normalize=None, tol=tol, max_iters=max_iters)
        self.sigma = float(sigma)


class Distributed(Coupling):
    """DDP-aware coupling: gather every rank's ``(y0, y1, labels)`` (``torch.distributed.all_gather``),
    couple the global batch with ``inner``, and give each rank its slice of the global pairs, so the
    pairs are those a single process would form on the concatenated batch (torchcfm couples only within
    each rank's batch). Rank 0's pairs are broadcast, so sampled (entropic) couplings agree on all ranks
    whatever their generators. Every rank must pass the same batch size. Without an initialized process
    group it is ``inner`` itself.
    """

    def __init__(self, inner: Coupling, group=None):
        if not isinstance(inner, Coupling) or isinstance(inner, Distributed):
            raise TypeError("inner: expected a (non-distributed) diffcore.coupling.Coupling")
        self.inner = inner
        self.group = group

    def pair(self, y0, y1, generator=None):
        return self.inner.pair(y0, y1, generator)

    def couple(self, y0, y1, labels=None, generator=None):
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return self.inner.couple(y0, y1, labels, generator)
        _check_batches(y0, y1, labels, True)
        world = dist.get_world_size(self.group)
        rank = dist.get_rank(self.group)
        B = y0.shape[0]
        sizes = [torch.zeros(1, dtype=torch.long, device=y0.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([B], device=y0.device), group=self.group)
        if any(int(s) != B for s in sizes):
            raise ValueError(f"y0: every rank must pass the same batch size, got {[int(s) for s in sizes]}")

        def gather(t):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous(), group=self.group)
            return torch.cat(parts)

        g0, g1 = gather(y0), gather(y1)
        gl = gather(labels) if labels is not None else None
        # broadcast rank 0's pairs so that every rank uses the same ones
        gi, gj = _pairs(self.inner, g0, g1, gl, generator)
        pairs = torch.stack([gi, gj])
        dist.broadcast(pairs, src=dist.get_global_rank(self.group, 0) if self.group is not None else 0,
                       group=self.group)
        sl = slice(rank * B, (rank + 1) * B)
        gi, gj = pairs[0, sl], pairs[1, sl]
        return g0[gi], g1[gj], (gl[gj] if gl is not None else None)


_REGISTRY = {
    "independent": Independent, "none": Independent,
    "exact": ExactOT, "ot": ExactOT, "exact_ot": ExactOT,
    "sinkhorn": EntropicOT, "entropic": EntropicOT,
    "sb": SchrodingerBridge, "schrodinger_bridge": SchrodingerBridge,
}


def available() -> Tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return tuple(_REGISTRY)


def get(name, distributed: bool = False, **options) -> Coupling:
    """A coupling by name (``"independent"``, ``"exact"``, ``"sinkhorn"``, ``"sb"``) or object;
    ``distributed=True`` wraps it in :class:`Distributed`."""
    if isinstance(name, Coupling):
        if options:
            raise TypeError("options: given together with a coupling object")
        c = name
    elif isinstance(name, str):
        key = name.lower()
        if key not in _REGISTRY:
            raise ValueError(f"coupling: unknown name {name!r}; expected one of {sorted(_REGISTRY)}")
        try:
            c = _REGISTRY[key](**options)
        except TypeError as e:
            if "argument" not in str(e):  # a check of ours, already naming its argument
                raise
            raise TypeError(f"options: the {key!r} coupling does not take {sorted(options)} ({e})") from None
    else:
        raise TypeError(f"coupling: expected a name or a Coupling, got {type(name).__name__}")
    if not isinstance(distributed, bool):
        raise TypeError(f"distributed: expected True or False, got {distributed!r}")
    return Distributed(c) if distributed and not isinstance(c, Distributed) else c
