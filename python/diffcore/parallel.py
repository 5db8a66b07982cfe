"""Parallel-in-time sampling: ParaDiGMS Picard iteration over a sliding window (Shih et al. 2023;
book §9.8, Eq. (9.8.3)–(9.8.4), Alg. 8).

Any plan of the plan / execute engine (:mod:`diffcore.solvers.base`) is a chain of *nodes*, one per
model evaluation (a step of a multistep solver, a stage of a single-step multi-stage one). Node ``n``
maps the run state ``S_n = (x_n, y_n)`` — ``y`` only for plans with a second buffer — to
``S_{n+1} = Φ_n(S_n)`` through one coefficient row: the row's conversion of the model output at the
node's input, the history ring of earlier nodes' native outputs, the fixed noise draw of the node.
The sequential solver applies the ``Φ_n`` one after the other. The Picard sampler instead keeps the
whole trajectory ``X_0 … X_N`` and, each *round*,

1. evaluates the model **once**, on the window ``X_ℓ … X_{ℓ+J−1}`` stacked into one batch of
   ``J·B`` samples with per-sample times;
2. forms ``Φ_n(X_n)`` for every window node — the multistep history of node ``n`` is the outputs of
   the previous nodes evaluated in this same round (the "previous Picard iterate" of book Alg. 8), or, before
   the window, their last evaluations;
3. applies :func:`window_update` (the scan of Eq. (9.8.4), the normalized residuals of Shih et al. 2023 and
   the stride of step e) and slides the window by the stride (new nodes: constant extrapolation).

The fixed point of this iteration is the sequential trajectory, so ``tolerance = 0`` reproduces the
sequential sample exactly and ``window = 1`` *is* the sequential solver (the first node of every
window is written as ``Φ_ℓ(X_ℓ)`` itself, bit for bit). Stochastic samplers work
with their noise fixed up front: every draw of the run (Philox under ``seed=``, a generator, a
pre-drawn tensor or a Brownian tree, :mod:`diffcore.noise`) is materialized once before the first
round and added inside its node's increment, so the fixed point is the sequential sample for that
noise.

Host synchronization: exactly one device → host read per round, the stride (an integer), which
decides the next window; nothing else in a round reads back.

The batch shares one window: the stride is the first node at which *any* sample is unconverged.

Single-step multi-stage solvers (Heun, DPM-Solver-2/3, DPM-Solver++(2S), EDM churn) are chains of
stage nodes too, so every round is still one batched model call: a stage's input (the engine's ``y``
buffer) is part of the node state, and its Picard correction follows the buffer it is computed from
(``carry`` of :func:`window_update`): a stage input or UniPC's predicted state is recomputed from the
carried state each step, not integrated, and summing its changes as in Eq. (9.8.4) would amplify them.
The window and the round count are then counted in stage nodes (``plan.nfe`` of them). Only plans
that do not declare ``supports_picard`` (:mod:`diffcore.solvers.protocol`: ``pc``'s Langevin
corrector with its data-dependent Python hooks, DPM-Solver-v3, the adaptive solvers) are refused.

Several devices: ``ParallelConfig(distributed=True)`` splits each round's window across the ranks
of the default ``torch.distributed`` group (one model call per rank on its share, an all-gather,
the same window update everywhere; tested with gloo on the CPU).

The window update is one fused kernel call (csrc/core/picard.h, :func:`window_update`; the pure-torch
:func:`window_update_reference` is its reference and the fallback under autograd or for half types);
the per-node ``Φ`` rows are the engine's ``step_reference`` arithmetic batched over the window,
bit-identical to the fused step. Layering: ``sample`` imports this module (for ``sample(parallel=...)``),
so it sits below ``sample`` and imports only ``_ops``, ``solvers``, ``noise``, ``guidance`` and
``thresholding``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional

import torch

from . import _ops
from .guidance import CFG
from .noise import Noise
from . import _row
from .solvers.base import Plan
from .solvers.protocol import Kind, kind_of
from .thresholding import dynamic_threshold

__all__ = ["ParallelConfig", "PicardResult", "window_update", "window_update_reference", "picard_sample",
           "step_noise_variance", "tile_model_kwargs"]


@dataclass(frozen=True)
class ParallelConfig:
    """Options of the Picard (ParaDiGMS) sampler, ``diffcore.sample(..., parallel=ParallelConfig(...))``.

    Args:
        window: nodes (model evaluations) per round, the batch multiplier ``p`` of Shih et al. 2023
            (default 16; reference defaults 10–20). ``window = 1`` is the sequential solver.
        tolerance: ``τ`` of Shih et al. 2023: node ``j`` counts as converged when
            ``‖X_j^{new} − X_j^{old}‖² / (D·σ̃_j²) ≤ τ²`` for every sample (``D`` features, ``σ̃_j²``
            the DDPM posterior variance of the step leaving ``t_j``, :func:`step_noise_variance`).
            ``0`` demands exact agreement (the sequential sample, bit for bit).
        max_iters: rounds with the full window; if the end is not reached by then, the remaining
            nodes run with a window of one (sequential steps from the last accepted node), so the
            result is always a finished sample. ``None``: no cap (Picard needs at most ``N`` rounds).
        distributed: split each round's window across the ranks of the default ``torch.distributed``
            process group: rank ``r`` evaluates the model on its contiguous share of the window's nodes
            (the window padded to a multiple of the world size by repeating its last node), the
            outputs are all-gathered, and every rank runs the same window update — so every rank
            must call ``sample`` with the same arguments (start, seed) and ends with the same result.
    """

    window: int = 16
    tolerance: float = 0.1
    max_iters: Optional[int] = None
    distributed: bool = False

    def __post_init__(self):
        if not isinstance(self.distributed, bool):
            raise TypeError(f"distributed: expected a bool, got {self.distributed!r}")
        if not isinstance(self.window, int) or isinstance(self.window, bool):
            raise TypeError(f"window: expected an int, got {self.window!r}")
        if self.window < 1:
            raise ValueError(f"window: expected a positive int, got {self.window}")
        if not isinstance(self.tolerance, (int, float)) or isinstance(self.tolerance, bool):
            raise TypeError(f"tolerance: expected a number, got {self.tolerance!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"tolerance: expected a finite number >= 0, got {self.tolerance!r}")
        if self.max_iters is not None:
            if not isinstance(self.max_iters, int) or isinstance(self.max_iters, bool):
                raise TypeError(f"max_iters: expected an int or None, got {self.max_iters!r}")
            if self.max_iters < 1:
                raise ValueError(f"max_iters: expected a positive int, got {self.max_iters}")


class PicardResult(NamedTuple):
    """Output of :func:`picard_sample`: the sample, the trajectory at step boundaries (or None), the
    number of rounds (sequential batched model calls), the model evaluations (samples × nodes,
    divided by the batch size: ``Σ J``) and each round's window start and stride."""

    x: torch.Tensor
    trajectory: Optional[List[torch.Tensor]]
    rounds: int
    nfe: int
    history: List[tuple]


def window_update(x: torch.Tensor, phi: torch.Tensor, sigma2: torch.Tensor, tolerance: float,
                  carry: Optional[torch.Tensor] = None):
    """The window update of one Picard round (spec §8 steps b, c, e; book Eq. (9.8.4), Alg. 8
    lines 7–12): the fused kernel (csrc/core/picard.h) for float32/float64 tensors on the CPU or CUDA
    when nothing needs a gradient or is traced (:func:`diffcore._ops.fast_path_ok`), else
    :func:`window_update_reference`. Same arguments and results; the kernel's ``y`` is bit-identical to
    the reference's in float64 (same operations in the same order), its residuals agree to rounding
    (the squared norms are summed in float64 in tiles, the reference's in the storage dtype), and in
    float32 ``y`` agrees to rounding too (torch's CPU ``cumsum`` accumulates float32 in float64). The
    kernel does not synchronize: ``stride`` stays a device tensor until the caller reads it.
    """
    _check_window(x, phi, tolerance, carry)
    if (x.dtype in (torch.float32, torch.float64) and phi.dtype == x.dtype and phi.device == x.device
            and x.device.type in ("cpu", "cuda") and x.dim() >= 2 and x.shape[1] > 0
            and (carry is None or (isinstance(carry, torch.Tensor) and carry.dtype == torch.int64
                                   and x.dim() >= 3 and 1 <= phi.shape[-1] <= 4))
            and _ops.fast_path_ok(x, phi, sigma2, carry)):
        return _ops.picard_window(x, phi, sigma2, tolerance, carry)
    return window_update_reference(x, phi, sigma2, tolerance, carry)


def _check_window(x, phi, tolerance, carry) -> None:
    """The argument checks shared by :func:`window_update` and its reference."""
    if not isinstance(x, torch.Tensor) or not isinstance(phi, torch.Tensor):
        raise TypeError("x, phi: expected torch tensors")
    J = phi.shape[0]
    if x.shape[0] != J + 1 or x.shape[1:] != phi.shape[1:]:
        raise ValueError(f"x: expected shape {(J + 1,) + tuple(phi.shape[1:])} for phi of shape {tuple(phi.shape)}, "
                         f"got {tuple(x.shape)}")
    if J < 1:
        raise ValueError("phi: expected a window of at least one node")
    if not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance: expected a number >= 0, got {tolerance!r}")
    if carry is not None and tuple(carry.shape) != (J, phi.shape[-1]):
        raise ValueError(f"carry: expected shape {(J, phi.shape[-1])}, got {tuple(carry.shape)}")


def window_update_reference(x: torch.Tensor, phi: torch.Tensor, sigma2: torch.Tensor, tolerance: float,
                            carry: Optional[torch.Tensor] = None):
    """The window update of one Picard round (spec §8 steps b, c, e; book Eq. (9.8.4), Alg. 8
    lines 7–12) — the pure-torch reference of the fused kernel (differentiable; any dtype).

    Args:
        x: ``[J + 1, B, *S]`` the current iterate at the window's nodes ``ℓ … ℓ+J`` (node ``ℓ`` is the
            accepted anchor).
        phi: ``[J, B, *S]`` the one-node maps ``Φ_{ℓ+j}(X_{ℓ+j})``, i.e. ``X_{ℓ+j} + Δ_{ℓ+j}``.
        sigma2: ``[J, B]`` (or broadcastable) normalizers ``σ̃²`` of the nodes ``ℓ … ℓ+J−1``.
        tolerance: ``τ ≥ 0``.
        carry: for states made of several buffers (a trailing axis of ``nb``: the engine's ``x`` and
            ``y``), ``[J, nb]`` int: the buffer of node ``ℓ+j`` that buffer ``b`` of node ``ℓ+j+1``
            continues, or −1 for a buffer that is recomputed from scratch. The correction then
            follows the chain: ``G_j[b] = C_j[carry[j, b]]`` (0 for −1), ``Y_{ℓ+j+1} = Φ_{ℓ+j}(X_{ℓ+j}) + G_j``,
            ``C_{j+1} = Y_{ℓ+j+1} − X_{ℓ+j+1} = (Φ_{ℓ+j}(X_{ℓ+j}) − X_{ℓ+j+1}) + G_j``:
            a buffer that is overwritten each step (a stage input, UniPC's predicted state) must
            not be summed as if it were integrated, or the prefix sum amplifies its changes.
            ``None``: one buffer continuing itself (Eq. (9.8.4) as written).

    Returns ``(y, residual, stride)``:
        * ``y`` ``[J, B, *S]``: the new values of nodes ``ℓ+1 … ℓ+J``,
          ``Y_{ℓ+j+1} = X_ℓ + Σ_{i≤j} Δ_{ℓ+i}``, evaluated as ``Φ_{ℓ+j}(X_{ℓ+j}) + C_j`` with the
          exclusive prefix sum ``C_j = Σ_{i<j} (Φ_{ℓ+i}(X_{ℓ+i}) − X_{ℓ+i+1})`` of the per-node defects
          (algebraically Eq. (9.8.4); written this way ``Y_{ℓ+1} = Φ_ℓ(X_ℓ)`` exactly);
        * ``residual`` ``[J, B]``: ``e_j = ‖Y_{ℓ+j} − X_{ℓ+j}‖² / (D·σ̃²_{ℓ+j}) = ‖C_j‖² / (D·σ̃²_{ℓ+j})``,
          ``D`` the elements of one sample's node state (both buffers when there are two)
          (row 0 is the anchor, always 0; ``0/0 = 0``, ``r/0 = ∞``);
        * ``stride`` 0-d int64 tensor on the device: ``min({j ≥ 1 : max_b e_j > τ²} ∪ {J})``.
    """
    _check_window(x, phi, tolerance, carry)
    J = phi.shape[0]
    defect = phi - x[1:]                                   # Φ(X_{ℓ+j}) − X_{ℓ+j+1}
    corr = torch.zeros_like(phi)
    if carry is None:
        if J > 1:
            corr[1:] = torch.cumsum(defect[:-1], 0)        # C_j, j = 1 … J−1
        y = phi + corr
    else:
        table = carry.tolist()                             # one read, even for a device table
        carried = torch.zeros_like(phi)                    # G_j[b] = C_j[carry[j, b]]
        for j in range(J):
            for b in range(phi.shape[-1]):
                src = int(table[j][b])
                if src >= 0:
                    carried[j, ..., b] = corr[j, ..., src]
            if j + 1 < J:
                corr[j + 1] = defect[j] + carried[j]
        y = phi + carried
    B = phi.shape[1]
    D = max(1, phi[0, 0].numel())
    sq = corr.reshape(J, B, -1).to(torch.float64 if phi.dtype == torch.float64 else torch.float32)
    num = (sq * sq).sum(-1)
    den = D * torch.as_tensor(sigma2, dtype=num.dtype, device=num.device).expand(J, B)
    residual = torch.where(num == 0, torch.zeros_like(num), num / den)
    bad = (residual.amax(1) > float(tolerance) ** 2)
    bad[0] = False
    idx = torch.arange(J, device=phi.device)
    stride = torch.where(bad, idx, torch.full_like(idx, J)).min()
    return y, residual, stride


def _call(make_fn, fns: dict, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One batched model call on the nodes ``u`` ``[n, B, *S]`` at times ``t`` ``[n, B]``."""
    n, B = u.shape[0], u.shape[1]
    fn = fns.get(n)
    if fn is None:
        fn = fns[n] = make_fn(n)
    want = (n * B,) + tuple(u.shape[2:])
    out = fn(u.reshape(want), t.reshape(n * B))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        raise ValueError(f"model: expected an output of shape {want}, got {getattr(out, 'shape', type(out).__name__)}")
    return out.reshape(u.shape)


def _evaluate(make_fn, fns: dict, u: torch.Tensor, t: torch.Tensor, distributed: bool) -> torch.Tensor:
    """The model on every window node: one call, or on several ranks one call each on a contiguous
    share of the nodes followed by an all-gather (``ParallelConfig.distributed``)."""
    if not distributed:
        return _call(make_fn, fns, u, t)
    import torch.distributed as dist  # noqa: PLC0415

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("parallel: distributed=True needs an initialized torch.distributed process group")
    world, rank = dist.get_world_size(), dist.get_rank()
    J = u.shape[0]
    share = -(-J // world)
    pad = share * world - J
    if pad:  # repeat the last node so that every rank gets the same number
        u = torch.cat([u, u[-1:].expand((pad,) + tuple(u.shape[1:]))])
        t = torch.cat([t, t[-1:].expand(pad, t.shape[1])])
    mine = _call(make_fn, fns, u[rank * share:(rank + 1) * share], t[rank * share:(rank + 1) * share])
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine.contiguous())
    return torch.cat(parts)[:J]


def step_noise_variance(plan: Plan) -> torch.Tensor:
    """``σ̃²_i`` ``[M, B or 1]`` (float64, CPU): the DDPM posterior variance of the step ``t_i → t_{i+1}``,
    ``σ_{i+1}²·(1 − e^{2(λ_i − λ_{i+1})})`` (the normalizer for every base solver);
    for an increasing (inversion) grid its magnitude ``σ_{i+1}²·|e^{2(λ_i − λ_{i+1})} − 1|``. It is 0 for
    a final step to σ = 0, so the last node must agree exactly (at most one extra round)."""
    t = plan.timesteps
    v = plan.schedule.eval(t)
    a, s = v.alpha.to(torch.float64), v.sigma.to(torch.float64)
    lam = torch.where(s > 0, torch.log(a) - torch.log(s), torch.full_like(s, math.inf))
    h = lam[:, :-1] - lam[:, 1:]
    h = torch.where(torch.isnan(h), torch.zeros_like(h), h)  # ∞ − ∞ cannot occur (only the last σ may be 0)
    var = s[:, 1:] ** 2 * torch.expm1(2 * h).abs()
    return var.t().contiguous()


def tile_model_kwargs(kwargs: Optional[dict], batch: int, reps: int) -> dict:
    """``kwargs`` for a window of ``reps`` stacked copies of the batch: every tensor whose first
    dimension is the batch size is repeated ``reps`` times along it (per-sample conditioning);
    other values pass through."""
    out = {}
    for k, v in (kwargs or {}).items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == batch:
            v = v.repeat((reps,) + (1,) * (v.dim() - 1))
        out[k] = v
    return out


def tile_guidance(guidance: Optional[CFG], batch: int, reps: int) -> Optional[CFG]:
    """The same guidance with its unconditional tensors tiled like :func:`tile_model_kwargs`."""
    if guidance is None or not isinstance(guidance, CFG):
        return guidance
    return CFG(guidance.omega, tile_model_kwargs(guidance.uncond, batch, reps))


class _Nodes:
    """The plan flattened into nodes (one per model evaluation): rows, times, layout flags, ring
    sources (the node whose native output ring slot k holds when node n runs) and noise draws."""

    def __init__(self, plan: Plan, compute: torch.dtype):
        if not plan.supports_picard:
            raise ValueError(plan.refusal("supports_picard"))
        S, K = plan.solver.stages, plan.solver.history
        steps, stages = [], []
        for i in range(plan.num_steps):
            for s in plan.stages(i):
                steps.append(i)
                stages.append(s)
        N = len(steps)
        self.N, self.K = N, K
        self.step_of, self.stage_of = steps, stages
        dev = plan.device
        i_t = torch.tensor(steps, device=dev)
        s_t = torch.tensor(stages, device=dev)
        self.rows = plan.coefs[:, i_t, s_t].transpose(0, 1).to(compute).contiguous()     # [N, Bc, C]
        self.times = plan.model_times[:, i_t, s_t].transpose(0, 1).contiguous()           # [N, Bc]
        lay = [_row.stage(plan.layout, i * S + s) for i, s in zip(steps, stages)]
        self.inp = torch.tensor([r.input == 1 for r in lay], device=dev)
        self.wx = torch.tensor([r.write_x for r in lay], device=dev)
        self.wy = torch.tensor([r.write_y for r in lay], device=dev)
        self.draw = [r.draw for r in lay]
        self.has_draw = torch.tensor([d >= 0 for d in self.draw], device=dev)
        self.any_draw = any(d >= 0 for d in self.draw)
        self.any_y = any(r.input == 1 or r.write_y for r in lay)
        last = [N] * K  # index N: the all-zero slot (ring before any write)
        src = []
        for r in lay:
            src.append(list(last))
            if r.slot >= 0:
                last[r.slot] = len(src) - 1
        self.src = torch.tensor(src, dtype=torch.long, device=dev).reshape(N, K)
        # which buffer each written buffer continues (largest weight >= 1/2, from the first sample's row)
        carry = []
        first = plan.coefs[0, i_t, s_t].cpu()  # one device read at setup
        L = _row.layout(K)
        for n, r in enumerate(lay):
            row = first[n]
            pair = []
            for b, (write, cx, cy) in enumerate(((r.write_x, L.ax, L.ay), (r.write_y, L.bx, L.by))):
                if not write:
                    pair.append(b)
                    continue
                wxv, wyv = abs(float(row[cx])), abs(float(row[cy]))
                pair.append(-1 if max(wxv, wyv) < 0.5 else (0 if wxv >= wyv else 1))
            carry.append(pair)
        # on the device: the fused window update reads it there, so a round copies nothing to the device
        self.carry = torch.tensor(carry, dtype=torch.long, device=dev).reshape(N, 2)
        self.last_node = [0] * (plan.num_steps + 1)  # node index at which each step starts
        for n, i in enumerate(steps):
            if stages[n] == 0:
                self.last_node[i] = n
        self.last_node[plan.num_steps] = N


def picard_sample(plan: Plan, make_fn: Callable[[int], Callable], x: torch.Tensor, config: ParallelConfig,
                  noise: Optional[Noise] = None, return_trajectory: bool = False,
                  callback: Optional[Callable] = None) -> PicardResult:
    """Run ``plan`` from ``x`` by Picard iteration over a sliding window (module docstring).

    Args:
        plan: a plan of the plan / execute engine.
        make_fn: ``make_fn(reps)`` returns the model ``fn(x, t)`` for a batch of ``reps`` stacked copies
            of the batch (model kwargs and guidance tiled), returning the plan's ``prediction``.
        x: ``[B, *S]`` start on the plan's device.
        config: :class:`ParallelConfig`.
        noise: the :class:`~diffcore.noise.Noise` source of a stochastic plan (materialized up front).
        return_trajectory: also return the states at the step boundaries (``M + 1`` tensors).
        callback: called after every round with ``{"round", "start", "stride", "residual"}``
            (``residual`` ``[J, B]`` as returned by :func:`window_update`).
    """
    if kind_of(plan) is not Kind.GRID:
        raise TypeError(f"plan: expected a diffcore Plan, got {type(plan).__name__}")
    if not plan.supports_picard:
        raise ValueError(plan.refusal("supports_picard"))
    if not isinstance(config, ParallelConfig):
        raise TypeError(f"parallel: expected a diffcore.ParallelConfig, got {type(config).__name__}")
    state = plan.init_state(x, noise)  # validates x, draws the EDM prelude, sets up the noise source
    x0 = state.x
    B = x0.shape[0]
    dt = x0.dtype
    compute = torch.float64 if dt == torch.float64 else torch.float32
    nodes = _Nodes(plan, compute)
    N, K = nodes.N, nodes.K
    bshape = (1, B) + (1,) * (x0.dim() - 1)
    ones = (1,) * x0.dim()
    Bc = plan.batch

    # every noise draw of the run, fixed before the first round (book Alg. 8: Δ_j += ξ_j)
    Z = None
    if nodes.any_draw:
        Z = torch.zeros((N,) + tuple(x0.shape), dtype=dt, device=x0.device)
        for n, d in enumerate(nodes.draw):
            if d >= 0:
                Z[n] = state.noise_value(d, plan.coefs[:, nodes.step_of[n], nodes.stage_of[n]])

    sig2 = step_noise_variance(plan)                                   # [M, Bc]
    sig2 = sig2[torch.tensor(nodes.step_of)].to(x0.device)             # [N, Bc]

    X = x0.unsqueeze(0).repeat((N + 1,) + (1,) * x0.dim())              # trajectory buffer, constant start
    Y = X.clone() if nodes.any_y else None  # second buffer (stage inputs, corrected states): guess x_T too
    if Y is not None:
        Y[0] = state.y if state.y is not None else 0
    Mbuf = torch.zeros_like(X) if K else None                           # native outputs; row N stays 0
    fns = {}
    ell, rounds, nfe, hist = 0, 0, 0, []
    cap = config.max_iters
    while ell < N:
        p = config.window if cap is None or rounds < cap else 1
        J = min(p, N - ell)
        win = slice(ell, ell + J)
        xw = X[win]
        yw = Y[win] if Y is not None else torch.zeros_like(xw)
        w = _row.Weights(nodes.rows[win], K, (J, Bc) + bshape[2:])      # rows [J, Bc, C]
        inpm = nodes.inp[win].reshape((J,) + ones)
        u = torch.where(inpm, yw, xw)
        t = nodes.times[win].expand(J, B)
        out = _evaluate(make_fn, fns, u, t, config.distributed)
        out = out.reshape(xw.shape).to(dt)
        rounds += 1
        nfe += J
        if plan._thresholding:
            m = dynamic_threshold((w.cu.to(dt) * u + w.co.to(dt) * out).reshape(J * B, *x0.shape[1:]),
                                  plan.solver.dynamic_thresholding_ratio, plan.solver.sample_max_value)
            m = m.reshape(xw.shape).to(compute)
        else:
            m = w.cu * u.to(compute) + w.co * out.to(compute)
        if K:
            Mbuf[win] = m.to(dt)
        xv, yv = xw.to(compute), yw.to(compute)
        accx = w.ax * xv + w.ay * yv
        accy = w.bx * xv + w.by * yv
        if K:
            ring = Mbuf[nodes.src[win]].to(compute)                     # [J, K, B, *S]
            for k in range(K):
                accx = accx + w.ar[k] * ring[:, k]
                accy = accy + w.br[k] * ring[:, k]
        accx = accx + w.am * m
        accy = accy + w.bm * m
        if Z is not None:
            hd = nodes.has_draw[win].reshape((J,) + ones)
            z = Z[win].to(compute)
            accx = torch.where(hd, accx + w.zx * z, accx)
            accy = torch.where(hd, accy + w.zy * z, accy)
        phix = torch.where(nodes.wx[win].reshape((J,) + ones), accx.to(dt), xw)
        if Y is not None:  # (x, y) as one state: a trailing axis of two
            phiy = torch.where(nodes.wy[win].reshape((J,) + ones), accy.to(dt), yw)
            xs = torch.stack([X[ell:ell + J + 1], Y[ell:ell + J + 1]], -1)
            new, res, stride = window_update(xs, torch.stack([phix, phiy], -1), sig2[win].expand(J, B),
                                             config.tolerance, nodes.carry[win])
            X[ell + 1:ell + J + 1], Y[ell + 1:ell + J + 1] = new[..., 0], new[..., 1]
        else:
            new, res, stride = window_update(X[ell:ell + J + 1], phix, sig2[win].expand(J, B), config.tolerance)
            X[ell + 1:ell + J + 1] = new
        stride = int(stride)  # the round's one host read
        hist.append((ell, stride))
        if callback is not None:
            callback({"round": rounds, "start": ell, "stride": stride, "residual": res})
        # newly exposed nodes start from the window's last value (constant extrapolation)
        lo, hi = ell + J + 1, min(ell + J + stride, N) + 1
        if lo < hi:
            X[lo:hi] = X[ell + J]
            if Y is not None:
                Y[lo:hi] = Y[ell + J]
        ell += stride
    traj = [X[nodes.last_node[i]].clone() for i in range(plan.num_steps + 1)] if return_trajectory else None
    return PicardResult(X[N].clone(), traj, rounds, nfe, hist)
