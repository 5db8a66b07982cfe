"""Empirical model statistics (EMS) of DPM-Solver-v3 (book §9.7, Eq. (9.7.1)–(9.7.8);
Zheng et al. 2023).

In λ-time (λ = log α − log σ) the PF-ODE is ``dx/dλ = (d log α/dλ) x − σ ε̂``. DPM-Solver-v3 moves a
per-dimension part ``ℓ_λ ⊙ x`` of the model into the linear term and rewrites the rest,
``f = (σ ε̂ − ℓ ⊙ x)/α``, through ``(s_λ, b_λ)`` so that what the solver extrapolates changes slowly:

* ``ℓ*_λ = σ_λ E[diag ∇_x ε̂(x_λ, λ)]`` (Eq. 9.7.3, the minimizer of ``E‖∇_x(σ ε̂ − ℓ x)‖²_F``);
* ``s*_λ = Cov(f′, f)/Var(f)``, ``b*_λ = E f′ − s* E f`` (Eq. 9.7.8, least squares of ``f′ ≈ s f + b``),
  with ``f′ = df/dλ`` along the ODE,

every expectation over ``x_λ`` distributed as the model's marginal, one number per dimension and per
λ of a uniform grid ``λ_T = λ⁽⁰⁾ < … < λ⁽ᴷ⁾ = λ_end``. :class:`EMS` holds the three arrays
``[K + 1, *shape]`` and makes them three ways:

* :meth:`EMS.from_oracle`: for Gaussian-mixture data (:mod:`diffcore.oracles`) the expectations are
  computed by Gauss–Hermite quadrature of each component of ``p_λ`` (dimension ≤ 3) or over fixed
  draws, with the exact Jacobian diagonal;
* :meth:`EMS.estimate`: from a model and data (``x_λ = α x0 + σ z``, fixed ``z``) or from noise (the
  model's own trajectories, a DPM-Solver++(2M) run over the grid), with ``f′`` and the Jacobian
  diagonal by Jacobian-vector products (``torch.func.jvp``, or central differences);
* :meth:`EMS.constant`: the degenerate statistics — ``(ℓ, s, b) = (1, 0, 0)`` is DPM-Solver++ and
  ``(0, −1, 0)`` is DPM-Solver (book §9.7.6).

How the moments combine. With ``u = σε̂/α`` and ``w = x/α`` one has ``f = u − ℓw`` and, along the ODE,
``w′ = −u`` and ``u′ = (σ/α)(ε̂′ − ε̂)`` (as σ/α = e^{−λ}), so ``f′ = r − ℓ′w`` with ``r = u′ + ℓu``.
At each λ the per-dimension moments ``Var f``, ``Cov(r, f)``, ``Cov(w, f)``, ``E f``, ``E r``, ``E w`` are
reduced from per-sample values of ``f`` (never by expanding ``Var(u − ℓw)``: at high noise ``Var f`` is
10⁻⁹ of the terms that would cancel); ``ℓ′`` (fourth-order differences of ``ℓ`` on the grid,
:func:`grid_derivative`) enters only afterwards, so one pass over the grid suffices.

Statistics are saved with :meth:`EMS.save` (one small checksummed file per model and schedule, with
the schedule's description) and read back with :meth:`EMS.load`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from .param import convert, resolve_prediction
from .schedules import Schedule

__all__ = ["EMS", "grid_derivative"]

_EXACT_DIAG_MAX = 16      # dimensions up to which the Jacobian diagonal is computed exactly (one JVP each)
_QUAD_NODES = {1: 48, 2: 20, 3: 10}
_RIDGE = 1e-16
_FORMAT = "diffcore.ems/2"  # the header format of the statistics file (diffcore.train.checkpoint)


def _lam_grid(schedule: Schedule, K: int, t_start, t_end):
    t_start = float(schedule.t_start if t_start is None else t_start)
    t_end = float(schedule.t_end if t_end is None else t_end)
    if not isinstance(K, int) or isinstance(K, bool) or K < 2:
        raise ValueError(f"K: expected an integer number of grid intervals >= 2, got {K!r}")
    v = schedule.eval(torch.tensor([t_start, t_end], dtype=torch.float64))
    lam0, lam1 = float(v.lam[0]), float(v.lam[1])
    if not (math.isfinite(lam0) and math.isfinite(lam1)):
        raise ValueError(f"t_start, t_end: DPM-Solver-v3 needs finite λ at both ends (0 < σ, 0 < α), got "
                         f"λ = {lam0}, {lam1} at t = {t_start}, {t_end}")
    if not lam1 > lam0:
        raise ValueError(f"t_start, t_end: expected λ to increase from t_start to t_end (sampling direction), "
                         f"got λ = {lam0} → {lam1}")
    lam = torch.linspace(lam0, lam1, K + 1, dtype=torch.float64)
    t = schedule.t_of_lam(lam)
    t[0], t[-1] = t_start, t_end
    return lam, t


class EMS:
    """DPM-Solver-v3's statistics ``(ℓ, s, b)`` on a uniform λ grid (module docstring).

    Args:
        lam: ``[K + 1]`` strictly increasing, uniformly spaced λ values (float64).
        l, s, b: ``[K + 1, *shape]`` statistics per grid point and dimension.
        schedule: description of the schedule they belong to (``repr(schedule)``), checked by
            :meth:`load` and by the solver.
        info: free-form metadata (how they were computed).
    """

    def __init__(self, lam, l, s, b, schedule: Optional[str] = None, info: Optional[dict] = None):
        lam = torch.as_tensor(lam, dtype=torch.float64).detach().cpu()
        if lam.dim() != 1 or lam.numel() < 3:
            raise ValueError(f"lam: expected a 1-D grid of at least 3 points, got shape {tuple(lam.shape)}")
        d = lam[1:] - lam[:-1]
        if not bool(torch.isfinite(lam).all()) or not bool((d > 0).all()):
            raise ValueError("lam: expected finite, strictly increasing values")
        if float((d - d.mean()).abs().max()) > 1e-9 * max(1.0, float(lam.abs().max())):
            raise ValueError("lam: expected a uniform grid")
        arrs = []
        for name, a in (("l", l), ("s", s), ("b", b)):
            a = torch.as_tensor(a, dtype=torch.float64).detach().cpu()
            if a.dim() < 2 or a.shape[0] != lam.numel():
                raise ValueError(f"{name}: expected shape [K + 1 = {lam.numel()}, *shape], got {tuple(a.shape)}")
            if not bool(torch.isfinite(a).all()):
                raise ValueError(f"{name}: contains non-finite values")
            arrs.append(a.contiguous())
        if not (arrs[0].shape == arrs[1].shape == arrs[2].shape):
            raise ValueError(f"l, s, b: shapes differ: {[tuple(a.shape) for a in arrs]}")
        self.lam = lam
        self.l, self.s, self.b = arrs
        self.schedule = schedule
        self.info = dict(info or {})

    # -- properties ----------------------------------------------------------------------------------
    @property
    def K(self) -> int:
        """Number of grid intervals."""
        return self.lam.numel() - 1

    @property
    def shape(self) -> tuple:
        """The per-sample shape the statistics are for."""
        return tuple(self.l.shape[1:])

    @property
    def dlam(self) -> float:
        """Grid spacing in λ."""
        return float(self.lam[1] - self.lam[0])

    def __repr__(self) -> str:
        return (f"EMS(K={self.K}, shape={self.shape}, lam=[{float(self.lam[0]):.4g}, {float(self.lam[-1]):.4g}], "
                f"schedule={self.schedule})")

    def index(self, lam) -> torch.Tensor:
        """Nearest grid indices of λ values (the λ grid of the statistics, Zheng et al. 2023)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        return torch.round((lam - self.lam[0]) / self.dlam).to(torch.int64)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the statistics to ``path``: plain tensors and strings in the checksummed, atomically
        written file format of :mod:`diffcore.train.checkpoint` (format ``diffcore.ems/2``)."""
        from .train import checkpoint as _ckpt  # noqa: PLC0415 - diffcore.train imports the samplers, which import this

        _ckpt.save({"lam": self.lam, "l": self.l, "s": self.s, "b": self.b, "schedule": self.schedule,
                    "info": {k: str(v) for k, v in self.info.items()}}, path, format=_FORMAT)

    @classmethod
    def load(cls, path, schedule: Optional[Schedule] = None) -> "EMS":
        """Read statistics written by :meth:`save`; with ``schedule`` given, check they were computed
        for it (``ValueError`` otherwise). A truncated, damaged (checksum) or foreign file, or one whose
        arrays do not form valid statistics, raises :class:`diffcore.train.CheckpointError` naming the file."""
        from .train import checkpoint as _ckpt  # noqa: PLC0415

        d = _ckpt.read(path, _FORMAT)
        if not isinstance(d, dict):
            raise _ckpt.CheckpointError(path, f"the payload is a {type(d).__name__}, expected a dict")
        for k in ("lam", "l", "s", "b"):
            if not isinstance(d.get(k), torch.Tensor):
                raise _ckpt.CheckpointError(path, f"missing key {k!r}" if k not in d else
                                            f"{k!r} is a {type(d[k]).__name__}, expected a tensor")
        if not isinstance(d.get("schedule"), (str, type(None))) or not isinstance(d.get("info", {}), dict):
            raise _ckpt.CheckpointError(path, "'schedule' must be a string or None and 'info' a dict")
        try:
            ems = cls(d["lam"], d["l"], d["s"], d["b"], d.get("schedule"), d.get("info"))
        except ValueError as e:
            raise _ckpt.CheckpointError(path, f"invalid statistics: {e}") from None
        if schedule is not None:
            ems.check_schedule(schedule)
        return ems

    def check_schedule(self, schedule: Schedule) -> None:
        if self.schedule is not None and self.schedule != repr(schedule):
            raise ValueError(f"statistics: computed for {self.schedule}, used with {schedule!r}")

    # -- constructors --------------------------------------------------------------------------------
    @classmethod
    def constant(cls, schedule: Schedule, shape, l: float = 1.0, s: float = 0.0, b: float = 0.0, K: int = 1000,
                 t_start: Optional[float] = None, t_end: Optional[float] = None) -> "EMS":
        """Statistics equal to constants everywhere: ``(1, 0, 0)`` makes DPM-Solver-v3 DPM-Solver++
        (data prediction), ``(0, −1, 0)`` DPM-Solver (noise prediction), book §9.7.6."""
        lam, _ = _lam_grid(schedule, K, t_start, t_end)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        full = lambda v: torch.full((K + 1,) + shape, float(v), dtype=torch.float64)  # noqa: E731
        return cls(lam, full(l), full(s), full(b), repr(schedule), {"source": f"constant ({l}, {s}, {b})"})

    @classmethod
    def from_oracle(cls, oracle, schedule: Schedule, K: int = 1000, t_start: Optional[float] = None,
                    t_end: Optional[float] = None, nodes: Optional[int] = None, samples: int = 4096,
                    seed: int = 0) -> "EMS":
        """Statistics of the exact model of Gaussian-mixture data (:class:`~diffcore.oracles.GaussianMixture`).

        Each expectation over ``p_λ = Σ_c π_c N(α μ_c, α²Σ_c + σ²I)`` is a Gauss–Hermite quadrature with
        ``nodes`` points per dimension and component (default 48 / 20 / 10 for dimension 1 / 2 / 3); in
        higher dimensions it is an average over ``samples`` fixed standard-normal draws per component
        (the same draws at every λ, so the statistics stay smooth in λ). The Jacobian diagonal is exact
        (one forward-mode product per dimension up to 16 dimensions, else 8 Rademacher probes)."""
        lam, t = _lam_grid(schedule, K, t_start, t_end)
        p = oracle._p(torch.device("cpu"))
        D = oracle.dim
        if D <= 3:
            n = int(nodes or _QUAD_NODES[D])
            z1, w1 = np.polynomial.hermite_e.hermegauss(n)
            grids = np.meshgrid(*([z1] * D), indexing="ij")
            z = torch.tensor(np.stack([g.ravel() for g in grids], 1), dtype=torch.float64)
            wz = torch.tensor(np.prod(np.meshgrid(*([w1] * D), indexing="ij"), 0).ravel(), dtype=torch.float64)
            wz = wz / wz.sum()
        else:
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(samples, D, generator=g, dtype=torch.float64)
            wz = torch.full((samples,), 1.0 / samples, dtype=torch.float64)
        weights = (p.w[:, None] * wz[None]).reshape(-1)            # [C·n]
        eps_fn = lambda x, tt: oracle.eps(x, tt, schedule)  # noqa: E731

        def points(k):
            a, sg = float(_alpha(schedule, t[k])), float(_sigma(schedule, t[k]))
            scale = torch.sqrt(a * a * p.kappa + sg * sg)             # [C, D]
            y = z[None] * scale[:, None, :]                           # [C, n, D] eigen-coordinates
            if p.U is not None:
                y = torch.einsum("cde,cne->cnd", p.U, y)
            return (a * p.mu[:, None, :] + y).reshape(-1, D)

        probes = None if D <= _EXACT_DIAG_MAX else 8
        return cls._reduce(lam, t, schedule, (D,), points, lambda k, x: weights, eps_fn, probes, "autograd", seed,
                           {"source": f"oracle {oracle!r}", "quadrature": f"{'Gauss-Hermite' if D <= 3 else 'draws'}"},
                           chunk=max(1, 2 ** 17 // max(1, weights.numel() * D)))

    @classmethod
    def estimate(cls, model: Callable, schedule: Schedule, *, data: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None, K: int = 250, prediction: Optional[str] = None,
                 model_kwargs: Optional[dict] = None, t_start: Optional[float] = None,
                 t_end: Optional[float] = None, probes: int = 4, jvp: str = "autograd", fd_step: float = 1e-3,
                 batch_size: Optional[int] = None, chunk: int = 1, seed: int = 0) -> "EMS":
        """Estimate the statistics of a trained model (book §9.7.5).

        Args:
            model: ``model(x, t, **model_kwargs)`` returning ``prediction`` (converted to ε̂ here;
                ``None``: the schedule's own type, ``"velocity"`` on the flow-matching schedules).
            data: ``[n, *shape]`` data samples; ``x_λ = α x0 + σ z`` with one fixed ``z`` per sample
                (the exact marginal of a perfect model). Or
            noise: ``[n, *shape]`` starts at ``t_start``; ``x_λ`` are the model's own PF-ODE trajectories
                (DPM-Solver++(2M) over the statistics grid), as in the book (1K–4K samples).
            K: grid intervals (the book uses 250–1200; sampling grids whose step count divides K
                land on grid points exactly).
            probes: Rademacher probes ``E[v ⊙ (∇ε̂ v)]`` per point for the Jacobian diagonal (exact
                with one product per dimension when the sample has at most 16 dimensions).
            jvp: ``"autograd"`` (``torch.func.jvp``; the model must be differentiable in x and t) or
                ``"fd"`` (central differences with step ``fd_step`` in λ and along the tangent).
            batch_size: model batch size (default: all samples at once).
            chunk: grid points evaluated per model call with ``data`` (per-sample times); the noise
                source walks the grid one point at a time.
            seed: seed of the noise ``z`` and of the probes.

        Returns the statistics in float64.
        """
        if (data is None) == (noise is None):
            raise ValueError("data, noise: give exactly one of them")
        if jvp not in ("autograd", "fd"):
            raise ValueError(f"jvp: expected 'autograd' or 'fd', got {jvp!r}")
        if not isinstance(probes, int) or probes < 1:
            raise ValueError(f"probes: expected a positive integer, got {probes!r}")
        src = data if data is not None else noise
        if not isinstance(src, torch.Tensor) or not src.is_floating_point() or src.dim() < 2 or src.shape[0] < 2:
            raise TypeError("data/noise: expected a floating tensor [n >= 2, *shape]")
        prediction = resolve_prediction(prediction, schedule)
        lam, t = _lam_grid(schedule, K, t_start, t_end)
        shape = tuple(src.shape[1:])
        n = src.shape[0]
        dev, dt = src.device, src.dtype
        kw = model_kwargs or {}
        bs = int(batch_size or n)

        def eps_fn(x, tt):
            outs = []
            for i in range(0, x.shape[0], bs):
                xi, ti = x[i:i + bs], tt[i:i + bs]
                m = model(xi, ti.to(dt), **kw)
                outs.append(convert(m, xi, ti, schedule, prediction, "eps").to(xi.dtype))
            return torch.cat(outs)

        w = torch.full((n,), 1.0 / n, dtype=torch.float64)
        if data is not None:
            g = torch.Generator(device="cpu").manual_seed(seed)
            z = torch.randn(src.shape, generator=g, dtype=torch.float64).to(dev, dt)
            x0 = src.detach()

            def points(k):
                a, sg = _alpha(schedule, t[k]), _sigma(schedule, t[k])
                return a * x0 + sg * z
        else:
            from .solvers import get as _get_solver
            plan = _get_solver("dpmpp_2m", lower_order_final=False).plan(schedule, t, device=dev, dtype=dt,
                                                                         prediction="eps")  # eps_fn is ε̂
            traj = {"k": 0, "state": plan.init_state(noise.detach().clone())}

            def points(k):
                st = traj["state"]
                while traj["k"] < k:  # advance the trajectories to grid point k
                    i = traj["k"]
                    with torch.no_grad():
                        plan.step(st, i, 0, eps_fn(st.x, plan.model_time(i, 0).expand(n).double()))
                    traj["k"] += 1
                return st.x.clone()

        probes_arg = None if math.prod(shape) <= _EXACT_DIAG_MAX else probes
        info = {"source": "data" if data is not None else "noise (model trajectories)", "samples": n,
                "jvp": jvp, "probes": probes_arg or "exact"}
        return cls._reduce(lam, t, schedule, shape, points, lambda k, x: w, eps_fn, probes_arg, jvp, seed, info,
                           fd_step, chunk=chunk if data is not None else 1)

    # -- the reduction shared by the constructors ----------------------------------------------------
    @classmethod
    def _reduce(cls, lam, t, schedule, shape, points, weights, eps_fn, probes, jvp, seed, info, fd_step=1e-3,
                chunk: int = 1):
        """One pass over the grid, ``chunk`` grid points per model call (per-sample times)."""
        K = lam.numel() - 1
        N = math.prod(shape)
        gen = torch.Generator().manual_seed(seed + 1)
        keep = {k: torch.empty(K + 1, N, dtype=torch.float64) for k in ("l", "var", "scale", "P", "Q", "Ef", "R", "Ew")}
        v = schedule.eval(t)
        dloga_all = v.dalpha / v.alpha / v.dlam                          # d log α / dλ
        for k0 in range(0, K + 1, chunk):
            ks = list(range(k0, min(K + 1, k0 + chunk)))
            xs = [points(k) for k in ks]
            n = xs[0].shape[0]
            x = torch.cat(xs)
            dev = x.device
            rep = lambda q: q[ks].repeat_interleave(n).to(dev)  # noqa: E731  per-sample values
            tt = rep(t)
            sg, dloga, dlam = rep(v.sigma), rep(dloga_all), rep(v.dlam)
            bx = lambda q: q.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)  # noqa: E731
            with torch.no_grad():
                eps = eps_fn(x, tt)
            xdot = bx(dloga) * x - bx(sg) * eps                          # dx/dλ along the PF-ODE
            # finite differences in λ step inward at the two ends of the grid (the schedule's domain ends)
            side = torch.tensor([1 if k == 0 else (-1 if k == K else 0) for k in ks]).repeat_interleave(n).to(dev)
            epsdot = _directional(eps_fn, x, tt, xdot, 1.0 / dlam, eps, jvp, fd_step, side)
            diag = _jac_diag(eps_fn, x, tt, eps, probes, jvp, fd_step, gen)
            for c, k in enumerate(ks):
                sl = slice(c * n, (c + 1) * n)
                X, E, Ed, Dg = (q[sl].detach().to("cpu", torch.float64).reshape(n, N) for q in (x, eps, epsdot, diag))
                ak, sk = float(v.alpha[k]), float(v.sigma[k])
                wt = weights(k, X).to(torch.float64)
                u, ww, up = sk * E / ak, X / ak, (sk / ak) * (Ed - E)  # (σ/α)′ = −σ/α
                mean = lambda q: wt @ q  # noqa: E731
                lk = sk * mean(Dg)
                f, r = u - lk * ww, up + lk * u                 # f′ = r − ℓ′ w (ℓ′ known after the pass)
                Ef, Er, Ew = mean(f), mean(r), mean(ww)
                cf = f - Ef
                keep["l"][k] = lk
                keep["var"][k] = mean(cf * cf)                  # per sample, so no cancellation
                keep["scale"][k] = mean(u * u) + lk * lk * mean(ww * ww)
                keep["P"][k] = mean((r - Er) * cf)              # Cov(f′, f) = P − ℓ′ Q
                keep["Q"][k] = mean((ww - Ew) * cf)
                keep["Ef"][k] = Ef
                keep["R"][k] = Er                               # E f′ = R − ℓ′ E w
                keep["Ew"][k] = Ew
        l = keep["l"]
        dl = torch.from_numpy(grid_derivative(l.numpy(), float(lam[1] - lam[0])))
        var = keep["var"].clamp_min(0.0)
        # Where f is deterministic to rounding — Gaussian data — the slope is meaningless; the ridge,
        # relative to the terms that cancel in f = u − ℓw, keeps s bounded there. Any bounded s is exact
        # then: with b = E f′ − s E f the transformed model is constant along the ODE whatever s is.
        ridge = _RIDGE * keep["scale"] + 1e-300
        s = (keep["P"] - dl * keep["Q"]) / (var + ridge)
        b = keep["R"] - dl * keep["Ew"] - s * keep["Ef"]
        rs = lambda q: q.reshape((K + 1,) + tuple(shape))  # noqa: E731
        return cls(lam, rs(l), rs(s), rs(b), repr(schedule), info)


def grid_derivative(y: np.ndarray, h: float) -> np.ndarray:
    """d/dλ of grid values (first axis, spacing ``h``) by fourth-order finite differences: central
    five-point in the interior, one-sided five-point at the two nodes nearest each end (≥ 5 nodes)."""
    y = np.asarray(y, dtype=np.float64)
    if y.shape[0] < 5:
        return np.gradient(y, h, axis=0, edge_order=2)
    d = np.empty_like(y)
    d[2:-2] = (y[:-4] - 8 * y[1:-3] + 8 * y[3:-1] - y[4:]) / (12 * h)
    d[0] = (-25 * y[0] + 48 * y[1] - 36 * y[2] + 16 * y[3] - 3 * y[4]) / (12 * h)
    d[1] = (-3 * y[0] - 10 * y[1] + 18 * y[2] - 6 * y[3] + y[4]) / (12 * h)
    d[-1] = (25 * y[-1] - 48 * y[-2] + 36 * y[-3] - 16 * y[-4] + 3 * y[-5]) / (12 * h)
    d[-2] = (3 * y[-1] + 10 * y[-2] - 18 * y[-3] + 6 * y[-4] - y[-5]) / (12 * h)
    return d


def _alpha(schedule, t):
    return schedule.eval(torch.tensor([float(t)], dtype=torch.float64)).alpha[0]


def _sigma(schedule, t):
    return schedule.eval(torch.tensor([float(t)], dtype=torch.float64)).sigma[0]


def _directional(fn, x, t, dx, dt, f0, jvp, h, side=None):
    """Derivative of ``fn`` at ``(x, t)`` along ``(dx, dt)``: forward mode, or central differences
    (second-order one-sided ones, towards ``side`` = ±1, where given)."""
    if jvp == "autograd":
        return torch.func.jvp(fn, (x, t), (dx.to(x.dtype), dt.to(t.dtype)))[1]
    mid = side is None or not bool(side.any())
    if mid:
        return (fn(x + h * dx, t + h * dt) - fn(x - h * dx, t - h * dt)) / (2 * h)
    out = torch.empty_like(f0)
    c = side == 0
    if bool(c.any()):
        out[c] = _directional(fn, x[c], t[c], dx[c], dt[c], f0[c], jvp, h)
    for sgn in (1, -1):
        m = side == sgn
        if bool(m.any()):
            hh = sgn * h
            f1 = fn(x[m] + hh * dx[m], t[m] + hh * dt[m])
            f2 = fn(x[m] + 2 * hh * dx[m], t[m] + 2 * hh * dt[m])
            out[m] = (-3 * f0[m] + 4 * f1 - f2) / (2 * hh)
    return out


def _jac_diag(fn, x, t, f0, probes, jvp, h, gen):
    """``diag ∇_x fn`` per sample: exactly (one product per dimension) or by Rademacher probes."""
    B = x.shape[0]
    flat = x.reshape(B, -1)
    N = flat.shape[1]
    zt = torch.zeros_like(t)
    out = torch.zeros_like(flat, dtype=torch.float64)
    if probes is None:
        for j in range(N):
            e = torch.zeros_like(flat)
            e[:, j] = 1
            out[:, j] = _directional(fn, x, t, e.reshape(x.shape), zt, f0, jvp, h).reshape(B, N)[:, j].double()
        return out
    for _ in range(probes):
        v = (torch.randint(0, 2, flat.shape, generator=gen) * 2 - 1).to(x.device, x.dtype)
        jv = _directional(fn, x, t, v.reshape(x.shape), zt, f0, jvp, h).reshape(B, N)
        out += (v * jv).double()
    return out / probes
