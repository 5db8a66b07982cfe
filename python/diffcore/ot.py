"""Discrete optimal transport: entropic OT by Sinkhorn and exact assignment (book Sec.
7.2.1–7.2.2; Cuturi 2013; Tong et al. 2024 for minibatch couplings).

* :func:`sinkhorn` — batched entropic OT in the compiled core (CPU: OpenMP, CUDA: one block per
  small problem, a large one split over the whole GPU): ``min ⟨P, C⟩ + ε KL(P ‖ a bᵀ)`` over plans with marginals ``a``, ``b``. Stabilized scaling
  form with absorption (Schmitzer 2019), safeguarded adaptive over-relaxation (Thibault et al. 2017,
  Lehmann et al. 2021) and optional ε-scaling; under autograd, ``torch.func`` transforms or
  ``torch.compile`` tracing it runs :func:`sinkhorn_reference` (eager log-domain torch) instead.
* :func:`exact_assignment` — the uniform square problem as a linear assignment (Jonker–Volgenant in
  C++, float64, batched), the exact minibatch coupling of OT-CFM (Tong et al. 2024).
* :func:`emd` — the exact (unregularized) weighted, rectangular problem ``min ⟨P, C⟩`` over plans with
  marginals ``a``, ``b``: the transportation linear program solved by HiGHS' dual simplex through
  :func:`scipy.optimize.linprog`, float64, CPU.
* :func:`squared_euclidean` — the cost ``C_ij = ‖x_i − y_j‖²`` of two point clouds.

Convention (book Sec. 7.2.2): ``P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε)``; potentials are defined up to
``(f + k, g − k)``.
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import NamedTuple, Optional, Union

import numpy as np
import torch

from . import _ops

__all__ = ["SinkhornResult", "AssignmentResult", "EMDResult", "emd", "EMD_MAX_VARIABLES", "ConvergenceWarning", "sinkhorn", "sinkhorn_reference",
           "exact_assignment", "squared_euclidean", "eps_floor", "EPS_FLOOR_RESOLUTIONS"]

# Status codes of the compiled solver (csrc/ot/ot_math.h, enum Status, exported by the core).
_CONVERGED, _MAX_ITERS, _BAD_COST, _BAD_A, _BAD_B, _SUM_A, _SUM_B, _BREAKDOWN = (
    int(getattr(_ops.OTStatus, n)) for n in ("converged", "max_iters", "bad_cost", "bad_a", "bad_b", "sum_a", "sum_b",
                                             "breakdown"))
_SCALE_OFF, _SCALE_ON, _SCALE_AUTO = (int(_ops.EpsScaling.off), int(_ops.EpsScaling.on),
                                      int(_ops.EpsScaling.auto))


class ConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iters`` before the marginal error reached ``tol``."""


class SinkhornResult(NamedTuple):
    """Output of :func:`sinkhorn`; leading batch dims as the cost's.

    Attributes:
        plan: ``[*, n, m]`` transport plan ``P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε)``.
        f, g: ``[*, n]``, ``[*, m]`` potentials in that convention (zero-weight entries get the value a
            Sinkhorn update would give them, the c-transform of the other potential).
        value: ``[*]`` regularized objective ``⟨P, C⟩ + ε KL(P ‖ a bᵀ)`` (= ``Σ_ij P_ij (f_i + g_j)``).
        transport_cost: ``[*]`` ``⟨P, C⟩``.
        iterations: ``[*]`` int64, Sinkhorn iterations (f- and g-update pairs, over all ε stages).
        marginal_error: ``[*]`` ``‖P1 − a‖₁`` of the returned plan (its column sums are exact).
        converged: ``[*]`` bool, ``marginal_error ≤ tol`` reached within ``max_iters``.
    """

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    value: torch.Tensor
    transport_cost: torch.Tensor
    iterations: torch.Tensor
    marginal_error: torch.Tensor
    converged: torch.Tensor


class AssignmentResult(NamedTuple):
    """Output of :func:`exact_assignment`.

    Attributes:
        perm: ``[*, n]`` int64, ``perm[i]`` = the column assigned to row ``i``.
        cost: ``[*]`` total cost ``Σ_i C[i, perm[i]]`` (float64; the input's dtype, differentiable in
            ``C``, when the cost requires grad).
    """

    perm: torch.Tensor
    cost: torch.Tensor


class EMDResult(NamedTuple):
    """Output of :func:`emd` (unpacks as ``plan, cost = emd(a, b, C)``).

    Attributes:
        plan: ``[n, m]`` float64 optimal plan, ``P ≥ 0``, ``P1 = a``, ``Pᵀ1 = b`` (b rescaled to a's total
            mass), on the cost's device.
        cost: ``[]`` float64 optimal value ``⟨P, C⟩`` (``Σ_ij P_ij C_ij`` of the returned plan).
    """

    plan: torch.Tensor
    cost: torch.Tensor


@functools.lru_cache(maxsize=None)
def _core_has_cuda() -> bool:
    return bool(_ops.build_info()["cuda"])


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-6


def _weight_tol(dtype: torch.dtype) -> float:
    """How far Σa may be from 1 (weights are then renormalized): a few float32 roundings of a long sum."""
    return 1e-8 if dtype == torch.float64 else 1e-4


def _as_cost(cost, name: str = "cost") -> torch.Tensor:
    if not isinstance(cost, torch.Tensor):
        if hasattr(cost, "__dlpack__"):  # validated import; its errors name the argument
            return _ops._as_torch(cost, name)
        try:
            cost = torch.as_tensor(cost)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: expected a tensor or array, got {type(cost).__name__}") from e
    return cost


def _check_cost(cost: torch.Tensor) -> None:
    if cost.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"cost: expected float32 or float64, got {cost.dtype}")
    if cost.dim() < 2:
        raise ValueError(f"cost: expected shape (n, m) or (*batch, n, m), got {tuple(cost.shape)}")
    if cost.numel() == 0:
        raise ValueError(f"cost: expected a non-empty cost, got shape {tuple(cost.shape)}")


def _weights(w, name: str, length: int, batch: tuple, cost: torch.Tensor) -> Optional[torch.Tensor]:
    """None, or the weights as a [*batch, length] tensor in the cost's dtype (a 1-D vector broadcasts)."""
    if w is None:
        return None
    w = _as_cost(w, name)
    if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name}: expected real weights, got {w.dtype}")
    if w.device != cost.device:
        raise ValueError(f"{name}: expected a tensor on {cost.device} (as cost), got {w.device}")
    if w.dim() == 0 or w.shape[-1] != length or (w.dim() > 1 and tuple(w.shape[:-1]) != batch):
        want = f"({length},)" + (f" or {batch + (length,)}" if batch else "")
        raise ValueError(f"{name}: expected shape {want}, got {tuple(w.shape)}")
    return w.to(cost.dtype).expand(batch + (length,))


def _check_values(cost: torch.Tensor, a: Optional[torch.Tensor], b: Optional[torch.Tensor], wtol: float) -> None:
    """The input checks of the compiled solver, in torch (reference path outside transforms)."""
    if not bool(torch.isfinite(cost).all()):
        raise ValueError("cost: contains NaN or infinite entries")
    for w, name in ((a, "a"), (b, "b")):
        if w is None:
            continue
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"{name}: expected nonnegative finite weights")
        s = w.sum(-1)
        if bool(((s - 1).abs() > wtol).any()):
            raise ValueError(f"{name}: expected weights summing to 1 (within {wtol:g}), got sums "
                             f"{s.detach().flatten()[:4].tolist()}")


#: The smallest ε Sinkhorn accepts, in units of the arithmetic's resolution (torch.finfo(dtype).eps)
#: times the cost's magnitude max|C|: the potentials f, g are of the cost's magnitude, so
#: (f_i + g_j − C_ij)/ε carries a rounding error of about finfo.eps·max|C|/ε, and at ε = 64·finfo.eps·max|C|
#: the Gibbs kernel exp((f + g − C)/ε) is still accurate to a few percent; far below it the potentials
#: cannot move by an ε-sized step at all (float64, max|C| = 1: plans of total mass 1e305 at ε = 1e-20).
EPS_FLOOR_RESOLUTIONS = 64.0


def eps_floor(cost, dtype: torch.dtype = torch.float64) -> float:
    """The smallest ``eps`` :func:`sinkhorn` accepts for ``cost`` (the largest over a batch) when its
    arithmetic is ``dtype``: ``EPS_FLOOR_RESOLUTIONS · torch.finfo(dtype).eps · max|C|``. The compiled
    solver computes in float64 for both cost dtypes; :func:`sinkhorn_reference` in the cost's dtype.
    Adding a constant to the cost leaves the plan unchanged, so subtracting ``cost.min()`` lowers it."""
    cost = _as_cost(cost)
    if cost.numel() == 0:
        return 0.0
    c = cost.detach()
    if c.device.type == "cpu" and c.dtype in (torch.float32, torch.float64):
        # NumPy's single-threaded reduction: torch's intra-op pool costs milliseconds on a busy machine
        # (measured 16 ms for a 256x256 cost against a 0.7 ms solve), a check must not cost more than the solve
        a = c.numpy()
        mag = float(max(-a.min(), a.max()))
    else:
        lo, hi = torch.aminmax(c)
        mag = float(torch.maximum(-lo, hi))  # one host read (synchronizes a CUDA stream)
    return EPS_FLOOR_RESOLUTIONS * torch.finfo(dtype).eps * mag


def _check_eps_floor(cost: torch.Tensor, eps: float, dtype: torch.dtype) -> None:
    if _ops.in_transform():  # values cannot be read inside torch.func transforms
        return
    floor = eps_floor(cost, dtype)
    if math.isfinite(floor) and eps < floor:  # a non-finite cost is reported as such later
        raise ValueError(f"eps: expected eps >= {floor:.3g} for this cost, got {eps!r}: below "
                         f"{EPS_FLOOR_RESOLUTIONS:g} x {torch.finfo(dtype).eps:.3g} ({str(dtype).replace('torch.', '')} "
                         f"resolution) x max|C| the Gibbs kernel exp((f + g - C)/eps) cannot be represented. "
                         "Subtract cost.min() (the plan does not change) or, for the unregularized problem, use "
                         "exact_assignment")


def _raise_status(codes, a, b) -> None:
    """Turn the compiled solver's per-problem input errors (a list of status codes) into exceptions
    naming the argument."""
    bad = [i for i, c in enumerate(codes) if c not in (_CONVERGED, _MAX_ITERS)]
    if not bad:
        return
    idx = bad[0]
    code = codes[idx]
    where = f" (problem {idx} of the batch)" if len(codes) > 1 else ""
    if code == _BAD_COST:
        raise ValueError(f"cost: contains NaN or infinite entries{where}")
    if code in (_BAD_A, _BAD_B):
        raise ValueError(f"{'a' if code == _BAD_A else 'b'}: expected nonnegative finite weights{where}")
    if code in (_SUM_A, _SUM_B):
        name, w = ("a", a) if code == _SUM_A else ("b", b)
        s = float(w.reshape(-1, w.shape[-1])[idx].double().sum())
        raise ValueError(f"{name}: expected weights summing to 1, got {s!r}{where}")
    raise RuntimeError(f"sinkhorn: numerical breakdown{where} (non-finite scalings after the log-domain "
                       "repair); please report this input")


def _warn_unconverged(converged: torch.Tensor, err: torch.Tensor, tol: float, max_iters: int) -> None:
    if bool(converged.all()):
        return
    k = int((~converged).sum())
    worst = float(err[~converged].max())
    warnings.warn(f"sinkhorn: {k} of {converged.numel()} problem(s) did not reach tol={tol:g} within "
                  f"max_iters={max_iters} (marginal error up to {worst:.3g}); returning converged=False. "
                  "Raise max_iters or eps.", ConvergenceWarning, stacklevel=3)


def sinkhorn(a, b, cost, eps: float, tol: Optional[float] = None, max_iters: int = 1000, check_every: int = 10,
             eps_scaling: Union[bool, float, str] = "auto", eps0: Optional[float] = None, overrelax: bool = True,
             warn: bool = True) -> SinkhornResult:
    """Entropic optimal transport between discrete measures by Sinkhorn iterations (book Sec.
    7.2.2, eq. 7.2.5; Cuturi 2013; log-domain stabilization, Schmitzer 2019).

    Solves ``min_{P ≥ 0, P1 = a, Pᵀ1 = b} ⟨P, C⟩ + ε Σ_ij P_ij log(P_ij / (a_i b_j))``, whose optimum has
    the Gibbs form ``P_ij = a_i b_j exp((f_i + g_j − C_ij)/ε)``. Iterates f- and g-updates (after a
    g-update the column sums are exact) and stops when the row-marginal error ``‖P1 − a‖₁ ≤ tol``,
    checked every ``check_every`` iterations; at ``max_iters`` it warns and returns ``converged=False``.

    The compiled solver keeps the kernel ``K̃ = exp((f̂ + ĝ − C)/ε)`` with absorbed potentials and
    iterates on scalings (two fused mat-vecs per iteration instead of 2nm exponentials), absorbing them
    into the potentials whenever they grow (Schmitzer's stabilization), so any ε down to
    :func:`eps_floor` (64 float64 resolutions times ``max|C|``, about ``1.4e-14·max|C|``, for both
    cost dtypes) is safe; smaller ε raise a ValueError, since the potentials, of the cost's magnitude,
    cannot resolve an ε-sized change. Underflowed rows/columns are repaired by exact log-domain
    updates. With ``overrelax`` (default) each update is over-relaxed by an ω chosen from the
    observed convergence rate (SOR theory) and accepted only when it increases the dual objective by at least 5 % of what the plain
    update would (otherwise backtracked towards ω = 1): a monotone dual ascent with the same unique
    fixed point, typically 2–10x fewer iterations at small ε. ``overrelax=False`` gives the plain
    Sinkhorn iterates. On CUDA one thread block solves each problem of a batch, and a problem of 2^20
    entries or more, when the batch leaves most of the GPU idle, is split over many blocks that meet at
    a barrier after each half-iteration (csrc/ot/sinkhorn_blocks.h); all iterations run on the device,
    on the current stream, and reading the per-problem status afterwards synchronizes the stream. Under
    autograd, ``torch.func`` transforms or ``torch.compile`` tracing (and for tensors the compiled core
    cannot take) it runs :func:`sinkhorn_reference`, plain iterations without ``eps_scaling`` or
    ``overrelax``; gradients then flow through the unrolled iterations.

    Args:
        a: ``[n]`` or ``[*batch, n]`` source weights (nonnegative, summing to 1 up to 1e-8 in float64 /
            1e-4 in float32, renormalized exactly); ``None`` = uniform. Zero weights are allowed: those
            rows get no mass and do not enter any sum.
        b: ``[m]`` or ``[*batch, m]`` target weights, likewise.
        cost: ``[n, m]`` or ``[*batch, n, m]`` float32/float64 cost (CPU or CUDA). Use
            :func:`squared_euclidean` for point clouds.
        eps: ε > 0, absolute (in the cost's units; scale the cost, e.g. by its max, for a relative ε),
            at least :func:`eps_floor` of the cost.
        tol: marginal-error tolerance; default 1e-9 (float64) / 1e-6 (float32).
        max_iters: iteration cap (≥ 1), counted over all ε stages.
        check_every: how often the stopping rule is evaluated (≥ 1).
        eps_scaling: ``"auto"`` (default), ``True``, ``False`` or a factor ``q`` in (0, 1): solve for
            ``ε_k = max(ε, ε0 qᵏ)`` (q = 0.5 unless given), each stage warm-started from the last and
            ended at marginal error 1e-3. ``"auto"`` turns it on only for ε below 1e-4 times the
            problem's cost range ``max C − min C``, where a cold start barely moves; above that, with
            over-relaxation, it costs iterations (bench/RESULTS.md).
        eps0: first ε of ε-scaling; default each problem's cost range ``max C − min C``.
        overrelax: safeguarded adaptive over-relaxation (see above); ``False`` for plain Sinkhorn.
        warn: emit a :class:`ConvergenceWarning` for problems that did not converge (reading the flag
            synchronizes a CUDA stream).

    Returns:
        :class:`SinkhornResult`; ``plan``, ``f``, ``g``, ``value``, ``transport_cost`` and
        ``marginal_error`` in the cost's dtype, on its device.

    Raises:
        TypeError / ValueError naming the argument: non-float cost, bad shapes, empty cost, ε ≤ 0 or
        below :func:`eps_floor`, NaN/infinite cost, negative weights, weights not summing to 1.
    """
    cost = _as_cost(cost)
    _check_cost(cost)
    n, m = cost.shape[-2], cost.shape[-1]
    batch = tuple(cost.shape[:-2])
    if isinstance(eps, torch.Tensor) and eps.numel() == 1:
        eps = float(eps)
    if not isinstance(eps, numbers.Real) or not (eps > 0) or not math.isfinite(eps):
        raise ValueError(f"eps: expected a positive finite number, got {eps!r}")
    if tol is None:
        tol = _default_tol(cost.dtype)
    if not isinstance(tol, numbers.Real) or not (tol >= 0):
        raise ValueError(f"tol: expected a nonnegative number or None, got {tol!r}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters: expected a positive int, got {max_iters!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every: expected a positive int, got {check_every!r}")
    if isinstance(eps_scaling, str) and eps_scaling == "auto":
        mode, q = _SCALE_AUTO, 0.5
    elif eps_scaling is True:
        mode, q = _SCALE_ON, 0.5
    elif eps_scaling is False or eps_scaling is None:
        mode, q = _SCALE_OFF, 0.5
    elif isinstance(eps_scaling, float) and 0 < eps_scaling < 1:
        mode, q = _SCALE_ON, float(eps_scaling)
    else:
        raise ValueError(f"eps_scaling: expected 'auto', a bool or a factor in (0, 1), got {eps_scaling!r}")
    if eps0 is not None and (not isinstance(eps0, numbers.Real) or not (eps0 > 0) or not math.isfinite(eps0)):
        raise ValueError(f"eps0: expected a positive finite number or None, got {eps0!r}")
    a = _weights(a, "a", n, batch, cost)
    b = _weights(b, "b", m, batch, cost)

    core_ok = _ops.fast_path_ok(cost, a, b) and (cost.device.type == "cpu" or
                                                 (cost.device.type == "cuda" and _core_has_cuda()))
    if not core_ok:
        return sinkhorn_reference(a, b, cost, eps, tol=tol, max_iters=max_iters, check_every=check_every,
                                  warn=warn)

    _check_eps_floor(cost, eps, torch.float64)  # the compiled solver's arithmetic is float64 for both dtypes
    C = cost.reshape((-1, n, m))
    if C.stride(-1) != 1:
        C = C.contiguous()
    B = C.shape[0]
    A = None if a is None else a.reshape(B, n).contiguous()
    Bw = None if b is None else b.reshape(B, m).contiguous()
    plan, f, g, stats, iters = _ops.sinkhorn(
        C, A, Bw, eps, tol, max_iters, check_every, mode, 0.0 if eps0 is None else float(eps0), q, 1e-3,
        overrelax, _weight_tol(cost.dtype))
    codes = [int(c) for c in stats[:, 3].tolist()]  # one host read (synchronizes a CUDA stream)
    _raise_status(codes, A, Bw)
    ok = [c == _CONVERGED for c in codes]
    err = stats[:, 2]
    if warn and not all(ok):
        _warn_unconverged(torch.tensor(ok), err.cpu(), tol, max_iters)
    converged = torch.tensor(ok, device=cost.device)
    dt = cost.dtype
    value, transport = stats[:, 0], stats[:, 1]
    if dt != torch.float64:
        value, transport, err = value.to(dt), transport.to(dt), err.to(dt)
    if batch == (B,):
        return SinkhornResult(plan, f, g, value, transport, iters, err, converged)
    return SinkhornResult(plan.reshape(batch + (n, m)), f.reshape(batch + (n,)), g.reshape(batch + (m,)),
                          value.reshape(batch), transport.reshape(batch), iters.reshape(batch), err.reshape(batch),
                          converged.reshape(batch))


def sinkhorn_reference(a, b, cost, eps: float, tol: Optional[float] = None, max_iters: int = 1000,
                       check_every: int = 10, warn: bool = True) -> SinkhornResult:
    """Eager log-domain Sinkhorn in torch (Peyré & Cuturi 2019, §4.4): the reference for :func:`sinkhorn`
    and its path under autograd (gradients flow through the unrolled iterations), ``torch.func``
    transforms and ``torch.compile``, and for tensors the compiled core cannot take.

    ``f_i ← −ε logsumexp_j(log b_j + (g_j − C_ij)/ε)``, ``g_j ← −ε logsumexp_i(log a_i + (f_i − C_ij)/ε)``
    from ``f = g = 0``, plain (no relaxation, no ε-scaling); the stopping rule, outputs and conventions
    are those of :func:`sinkhorn`, and a batch stops problem by problem (converged problems are frozen),
    so batched results equal one-at-a-time results. Its arithmetic is the cost's dtype, so ε must be at
    least ``eps_floor(cost, cost.dtype)`` (for float32 about ``7.6e-6·max|C|``).
    """
    cost = _as_cost(cost)
    _check_cost(cost)
    n, m = cost.shape[-2], cost.shape[-1]
    batch = tuple(cost.shape[:-2])
    eps = float(eps)
    if not (eps > 0) or not math.isfinite(eps):
        raise ValueError(f"eps: expected a positive finite number, got {eps!r}")
    tol = _default_tol(cost.dtype) if tol is None else float(tol)
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters: expected a positive int, got {max_iters!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every: expected a positive int, got {check_every!r}")
    if a is not None and not (isinstance(a, torch.Tensor) and a.shape == batch + (n,)):
        a = _weights(a, "a", n, batch, cost)
    if b is not None and not (isinstance(b, torch.Tensor) and b.shape == batch + (m,)):
        b = _weights(b, "b", m, batch, cost)
    checks = not _ops.in_transform()
    if checks:
        _check_values(cost, a, b, _weight_tol(cost.dtype))
        _check_eps_floor(cost, eps, cost.dtype)  # these iterations compute in the cost's dtype
    dt = cost.dtype
    aw = torch.full(batch + (n,), 1.0 / n, dtype=dt, device=cost.device) if a is None else a / a.sum(-1, keepdim=True)
    bw = torch.full(batch + (m,), 1.0 / m, dtype=dt, device=cost.device) if b is None else b / b.sum(-1, keepdim=True)
    neg_inf = torch.tensor(-math.inf, dtype=dt, device=cost.device)
    la = torch.where(aw > 0, torch.log(torch.where(aw > 0, aw, 1.0)), neg_inf)
    lb = torch.where(bw > 0, torch.log(torch.where(bw > 0, bw, 1.0)), neg_inf)
    f = torch.zeros(batch + (n,), dtype=dt, device=cost.device)
    g = torch.zeros(batch + (m,), dtype=dt, device=cost.device)
    done = torch.zeros(batch, dtype=torch.bool, device=cost.device)
    iters = torch.zeros(batch, dtype=torch.int64, device=cost.device)
    err = torch.full(batch, math.inf, dtype=dt, device=cost.device)

    def f_update(g):
        return -eps * torch.logsumexp(lb[..., None, :] + (g[..., None, :] - cost) / eps, dim=-1)

    def g_update(f):
        return -eps * torch.logsumexp(la[..., :, None] + (f[..., :, None] - cost) / eps, dim=-2)

    def plan_of(f, g):
        return torch.exp(la[..., :, None] + lb[..., None, :] + (f[..., :, None] + g[..., None, :] - cost) / eps)

    for it in range(1, max_iters + 1):
        live = ~done
        f = torch.where(live[..., None], f_update(g), f)
        g = torch.where(live[..., None], g_update(f), g)
        iters = torch.where(live, torch.full_like(iters, it), iters)
        if it % check_every == 0 or it == max_iters:
            e = (plan_of(f, g).sum(-1) - aw).abs().sum(-1)
            err = torch.where(live, e.detach(), err)
            done = done | (live & (e.detach() <= tol))
            if checks and bool(done.all()):
                break
    P = plan_of(f, g)
    converged = err <= tol
    if checks and warn:
        _warn_unconverged(converged.reshape(-1), err.reshape(-1), tol, max_iters)
    value = (P * (f[..., :, None] + g[..., None, :])).sum((-2, -1))
    transport = (P * cost).sum((-2, -1))
    return SinkhornResult(P, f, g, value, transport, iters, (P.sum(-1) - aw).abs().sum(-1), converged)


def exact_assignment(cost) -> AssignmentResult:
    """Exact optimal assignment ``min_σ Σ_i C[i, σ(i)]`` of a square cost, batched over leading dims:
    the uniform square OT problem (book Sec. 7.2.1; its optimal plan is a permutation matrix / n) and
    the exact minibatch coupling of OT-CFM (Tong et al. 2024).

    Jonker–Volgenant (column reduction, reduction transfer, augmenting row reduction, then shortest
    augmenting paths by Dijkstra on reduced costs) in C++, float64, one problem per OpenMP thread.
    Always runs on the CPU: a CUDA (or float32) input is copied to the host as float64, and the result
    is returned on the input's device. The total equals any exact solver's optimum (e.g.
    ``scipy.optimize.linear_sum_assignment``) up to float64 rounding; with ties any optimal permutation
    may be returned.

    Args:
        cost: ``[n, n]`` or ``[*batch, n, n]`` real cost matrix (finite).

    Returns:
        :class:`AssignmentResult` ``(perm, cost)``: ``perm[..., i]`` is the column of row ``i`` (int64),
        ``cost`` the total ``Σ_i C[i, perm[i]]`` (float64; computed from the input by ``gather``, so in
        its dtype and differentiable, when the input requires grad).
    """
    cost = _as_cost(cost)
    if not (cost.is_floating_point() or cost.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"cost: expected a real cost matrix, got {cost.dtype}")
    if cost.dim() < 2 or cost.shape[-1] != cost.shape[-2]:
        raise ValueError(f"cost: expected a square (n, n) or (*batch, n, n) matrix, got {tuple(cost.shape)} "
                         "(use sinkhorn for non-square or weighted problems)")
    if cost.numel() == 0:
        raise ValueError(f"cost: expected a non-empty cost, got shape {tuple(cost.shape)}")
    n = cost.shape[-1]
    batch = tuple(cost.shape[:-2])
    C = cost.detach().to("cpu", torch.float64).reshape(-1, n, n)
    if C.stride(-1) != 1:
        C = C.contiguous()
    perm, total = _ops.linear_assignment(C)
    perm = perm.reshape(batch + (n,)).to(cost.device)
    if cost.requires_grad and torch.is_grad_enabled():
        total = cost.gather(-1, perm[..., None]).squeeze(-1).sum(-1)
    else:
        total = total.reshape(batch).to(cost.device)
    return AssignmentResult(perm, total)


def squared_euclidean(x, y) -> torch.Tensor:
    """Cost ``C_ij = ‖x_i − y_j‖²`` of point clouds ``x [*, n, d]``, ``y [*, m, d]`` → ``[*, n, m]``
    (book Sec. 7.2.2). Exact differences for moderate sizes; for large ones
    ``‖x‖² + ‖y‖² − 2xyᵀ`` (a matmul, clamped at 0), which loses relative accuracy for near points."""
    x = _as_cost(x, "x")
    y = _as_cost(y, "y")
    if x.dim() < 2 or y.dim() < 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x, y: expected shapes (*, n, d) and (*, m, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    x, y = x.to(dtype), y.to(dtype)
    work = x.shape[-2] * y.shape[-2] * x.shape[-1] * max(1, math.prod(torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])))
    if work <= 1 << 24:
        return ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)
    xx = (x * x).sum(-1)[..., :, None]
    yy = (y * y).sum(-1)[..., None, :]
    return (xx + yy - 2.0 * (x @ y.transpose(-1, -2))).clamp_min(0.0)


# ------------------------------------------------------------------------------------------------
# exact weighted OT (the transportation linear program)

#: Largest ``n·m`` (variables of the transportation LP) :func:`emd` accepts: memory grows as ``~60·n·m``
#: bytes (sparse constraint matrix and HiGHS' copies) and the dual simplex's time faster than ``n·m``
#: (bench/bench_emd.py).
EMD_MAX_VARIABLES = 4_000_000


def _emd_input(x, name: str) -> torch.Tensor:
    """A tensor or array as it is; a (nested) sequence of numbers as float64 (torch would make it float32)."""
    if isinstance(x, torch.Tensor) or hasattr(x, "__dlpack__"):
        return _as_cost(x, name)
    try:
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a tensor, array or sequence of numbers, got {type(x).__name__}") from e


def _emd_weights(w, name: str, length: int) -> Optional[tuple]:
    if w is None:
        return None
    w = _emd_input(w, name)
    if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name}: expected real weights, got {w.dtype}")
    if w.dim() != 1 or w.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},) (one weight per {'row' if name == 'a' else 'column'} "
                         f"of cost), got {tuple(w.shape)}")
    tol = _weight_tol(w.dtype if w.is_floating_point() else torch.float64)
    w = w.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name}: expected nonnegative finite weights")
    if not w.sum() > 0:
        raise ValueError(f"{name}: expected a positive total mass, got weights summing to {float(w.sum())!r}")
    return w, tol


def _forest_flows(support: np.ndarray, a: np.ndarray, b: np.ndarray) -> Optional[np.ndarray]:
    """Recompute the flows on the support edges ``(i, j)`` of a basic solution from the marginals alone,
    when the support is a forest of the bipartite graph (a simplex vertex's is): peeling leaves fixes
    each edge's flow to the leaf's remaining mass, so the marginals hold to the rounding of these sums
    (the solver's own values satisfy them only to its feasibility tolerance). None if not a forest."""
    n, m = a.shape[0], b.shape[0]
    E = support.shape[0]
    if E > n + m - 1:
        return None
    nodes_of = [[] for _ in range(n + m)]
    for e, (i, j) in enumerate(support):
        nodes_of[i].append(e)
        nodes_of[n + j].append(e)
    rest = np.concatenate([a, b])
    degree = np.array([len(x) for x in nodes_of])
    flow = np.zeros(E)
    done = np.zeros(E, dtype=bool)
    stack = [v for v in range(n + m) if degree[v] == 1]
    fixed = 0
    while stack:
        v = stack.pop()
        if degree[v] != 1:
            continue
        e = next(k for k in nodes_of[v] if not done[k])
        i, j = support[e]
        other = n + j if v == i else i
        flow[e] = max(rest[v], 0.0)
        rest[v] -= flow[e]
        rest[other] -= flow[e]
        done[e] = True
        fixed += 1
        degree[v] -= 1
        degree[other] -= 1
        if degree[other] == 1:
            stack.append(other)
    return flow if fixed == E else None  # edges left over lie on a cycle


def _marginal_error(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float(max(np.abs(x.sum(1) - a).max(), np.abs(x.sum(0) - b).max()))


def emd(a, b, cost) -> EMDResult:
    """Exact discrete optimal transport between weighted measures (Kantorovich's problem, book Sec.
    7.2.1, eq. 7.2.2, for discrete measures): ``min ⟨P, C⟩`` over ``P ≥ 0`` with ``P1 = a``, ``Pᵀ1 = b``.

    The transportation linear program (``n·m`` variables, ``n + m`` equality constraints, a sparse
    constraint matrix with two ones per column) is solved by HiGHS' dual simplex
    (:func:`scipy.optimize.linprog` with ``method="highs-ds"``, feasibility tolerances 1e-10), in float64 on
    the CPU. The simplex returns a vertex, whose support is a forest of at most ``n + m − 1`` edges; its
    flows are then recomputed from ``a`` and ``b`` by peeling leaves, so the marginals hold to float64
    rounding (about 1e-16 of the mass). Rows and columns of zero weight are removed before solving (their
    plan entries are 0). With ties any optimal plan may be returned; where the optimum is unique it is
    the plan of any exact solver (e.g. POT's network simplex, ``ot.emd``).

    Complexity and limits: the dual simplex has no polynomial bound; measured on random costs its time
    grows as ``(n·m)^0.7``–``(n·m)^1.3``, about 45x POT's network simplex (bench/bench_emd.py, table in
    docs/bridges.md). Problems with ``n·m`` above
    :data:`EMD_MAX_VARIABLES` (4e6) are refused; for uniform square problems :func:`exact_assignment` is
    much faster, and for large or batched problems use the entropic :func:`sinkhorn`.

    Args:
        a: ``[n]`` nonnegative finite source weights (torch tensor, NumPy array or sequence); ``None`` =
            uniform ``1/n``. Any positive total mass.
        b: ``[m]`` target weights, likewise; their total must equal ``a``'s within a relative 1e-8
            (1e-4 when either is float32), and ``b`` is then rescaled to ``a``'s total exactly.
        cost: ``[n, m]`` finite real cost (any device; solved on the CPU).

    Returns:
        :class:`EMDResult` ``(plan, cost)``: torch float64 tensors on the cost's device (also for NumPy
        input); ``cost`` is a 0-dim tensor.

    Raises:
        TypeError / ValueError naming the argument: non-real or non-2-D cost, NaN/infinite cost, weights
        of the wrong shape, negative or non-finite weights, zero total mass, totals of ``a`` and ``b``
        differing beyond the tolerance, a problem above :data:`EMD_MAX_VARIABLES`.
    """
    import scipy.sparse as _sparse
    from scipy.optimize import linprog

    cost = _emd_input(cost, "cost")
    if not (cost.is_floating_point() or cost.dtype in (torch.int32, torch.int64)) or cost.is_complex():
        raise TypeError(f"cost: expected a real cost matrix, got {cost.dtype}")
    if cost.dim() != 2:
        raise ValueError(f"cost: expected shape (n, m), got {tuple(cost.shape)}")
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError(f"cost: expected a non-empty cost, got shape {tuple(cost.shape)}")
    if n * m > EMD_MAX_VARIABLES:
        raise ValueError(f"cost: {n}x{m} = {n * m} transport variables exceed EMD_MAX_VARIABLES = "
                         f"{EMD_MAX_VARIABLES}; use sinkhorn (entropic) or exact_assignment (uniform square)")
    C = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(C).all():
        raise ValueError("cost: contains NaN or infinite entries")
    wa = _emd_weights(a, "a", n)
    wb = _emd_weights(b, "b", m)
    a_np, tol_a = wa if wa is not None else (np.full(n, 1.0 / n), _weight_tol(torch.float64))
    b_np, tol_b = wb if wb is not None else (np.full(m, 1.0 / m), _weight_tol(torch.float64))
    sa, sb = float(a_np.sum()), float(b_np.sum())
    tol = max(tol_a, tol_b)
    if abs(sa - sb) > tol * max(sa, sb):
        raise ValueError(f"b: expected the same total mass as a (within a relative {tol:g}), got sum(a) = {sa!r}, "
                         f"sum(b) = {sb!r}")
    b_np = b_np * (sa / sb)

    rows, cols = np.flatnonzero(a_np > 0), np.flatnonzero(b_np > 0)
    ar, br, Cr = a_np[rows], b_np[cols], C[np.ix_(rows, cols)]
    nr, mr = rows.size, cols.size
    # column k = (i, j) of the constraint matrix has a one in row i (row sum) and in row nr + j (column sum)
    k = np.arange(nr * mr)
    A = _sparse.csc_matrix((np.ones(2 * nr * mr), np.stack([k // mr, nr + k % mr], 1).ravel(),
                            np.arange(0, 2 * nr * mr + 1, 2)), shape=(nr + mr, nr * mr))
    res = linprog(Cr.ravel(), A_eq=A, b_eq=np.concatenate([ar, br]), bounds=(0, None), method="highs-ds",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status != 0 or res.x is None:  # a transportation problem with equal masses is always feasible and bounded
        raise RuntimeError(f"emd: the LP solver stopped with status {res.status} ({res.message}); please report "
                           "this input")
    x = res.x.reshape(nr, mr)
    support = np.argwhere(x > 1e-14 * sa)
    x = np.maximum(x, 0.0)
    flows = _forest_flows(support, ar, br)
    if flows is not None:
        y = np.zeros((nr, mr))
        y[support[:, 0], support[:, 1]] = flows
        if _marginal_error(y, ar, br) <= _marginal_error(x, ar, br):
            x = y
    P = np.zeros((n, m))
    P[np.ix_(rows, cols)] = x
    plan = torch.from_numpy(P)
    total = torch.tensor(float((x * Cr).sum()), dtype=torch.float64)
    return EMDResult(plan.to(cost.device), total.to(cost.device))
