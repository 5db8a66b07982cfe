"""Time-sampling laws ``p_time`` for training (book Sec. 6.2.2 (C)).

Every law draws diffusion times ``t`` (``t = 0`` data, the schedule's own units, e.g. ``t = σ`` on
EDM) for a batch and gives its density ``p_time(t)``. Sampling ``t ~ p_time`` and weighting by
``ω(t)`` are interchangeable (footnote of Sec. 6.2.2):

    E_{t∼p_time}[ ω(t)/p_time(t) · mse(t) ] = ∫ ω(t) mse(t) dt,

which is what a loss's ``importance=True`` option uses. For :class:`Discrete` the "density" is the
probability mass ``1/L``, so the same option turns the mean over levels into their sum
``Σ_i ω(t_i) mse(t_i)`` (the DDPM ELBO, NCSN's ``Σ_i λ(σ_i) L_DSM(σ_i)``).

========================  ================================================================  =====================
name                      law                                                               used by
========================  ================================================================  =====================
``uniform``               ``t ~ U[t_min, t_max]``                                           score SDE, FM/RF, VDM
``discrete``              ``t = t_i``, ``i ~ U{first..L}``                                  DDPM, NCSN
``stratified``            ``t_b = t_min + (t_max − t_min)((u + b/B) mod 1)``, one u/batch   VDM
``lognormal_sigma``       ``λ ~ N(−P_mean, P_std²)``, ``t = t_of_lam(λ)`` (ln(σ/α) ~ N)     EDM
``logit_normal``          ``t = sigmoid(u)``, ``u ~ N(m, s²)``                              SD3-style RF
``uniform_lambda``        ``λ ~ U[λ(t_max), λ(t_min)]``, ``t = t_of_lam(λ)``                likelihood weighting
========================  ================================================================  =====================

Ranges. ``t_min``/``t_max`` default, per schedule, to :func:`training_range` for the laws defined by
a range (uniform, stratified, discrete, uniform_lambda) and to the schedule's whole valid range for
the two normal laws (which are then truncated only where the schedule ends: a truncated normal is
sampled exactly by inverse CDF and its density renormalized). All randomness comes from the
``generator`` (a ``torch.Generator`` on the target device) or torch's global RNG.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from . import schedules as _schedules
from ._device import as_device

__all__ = ["TimeLaw", "Uniform", "Discrete", "Stratified", "LogNormalSigma", "LogitNormal", "UniformLambda",
           "training_range", "get", "available"]

_F64 = torch.float64
_SMALL_T = 1e-5  # Song et al. 2021: default t_min where σ(t_min) = 0 (likelihood / score-SDE training)


def _number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


def _opt_number(v, name: str) -> Optional[float]:
    return None if v is None else _number(v, name)


def training_range(schedule) -> Tuple[float, float]:
    """Default training range ``[t_lo, t_hi]`` of a schedule (weights that diverge at
    an end need a cut): the valid range ``[t_min, t_max]``, except that ``t_lo = 1e-5`` (Song et al. 2021)
    where ``σ(t_min) = 0``, and the sampling range ``[t_end, t_start]`` for schedules whose valid range
    is unbounded (EDM: ``[0.002, 80]``)."""
    sched = _schedules.get(schedule)
    if not math.isfinite(sched.t_max):
        return float(sched.t_end), float(sched.t_start)
    lo = float(sched.t_min)
    if float(sched.sigma(torch.tensor([lo], dtype=_F64))[0]) == 0.0:
        lo = lo + _SMALL_T * (float(sched.t_max) - lo)
    return lo, float(sched.t_max)


def _rand(B: int, generator, device) -> torch.Tensor:
    return torch.rand(B, generator=generator, device=device, dtype=_F64)


def _device(generator, device):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if device is not None:
        return as_device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _count(B, name: str = "B") -> int:
    if isinstance(B, bool) or not isinstance(B, int) or B < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {B!r}")
    return B


class TimeLaw:
    """Base class. Subclasses implement :meth:`sample` and :meth:`density` (float64, diffusion time)."""

    name = "law"

    def __init__(self, t_min: Optional[float] = None, t_max: Optional[float] = None):
        self.t_min = _opt_number(t_min, "t_min")
        self.t_max = _opt_number(t_max, "t_max")
        if self.t_min is not None and self.t_max is not None and not self.t_min < self.t_max:
            raise ValueError(f"t_min, t_max: expected t_min < t_max, got {self.t_min}, {self.t_max}")

    def _default_range(self, sched) -> Tuple[float, float]:
        return training_range(sched)

    def range(self, schedule) -> Tuple[float, float]:
        """``(t_lo, t_hi)`` used with ``schedule``; raises ``ValueError`` if outside its valid range."""
        sched = _schedules.get(schedule)
        lo, hi = self._default_range(sched)
        lo = lo if self.t_min is None else self.t_min
        hi = hi if self.t_max is None else self.t_max
        if not (sched.t_min <= lo < hi <= sched.t_max):
            raise ValueError(f"t_min, t_max: expected {sched.t_min} <= t_min < t_max <= {sched.t_max} for "
                             f"{sched!r}, got [{lo}, {hi}]")
        return lo, hi

    def sample(self, B: int, schedule, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """``B`` times ``(B,)`` float64 on ``device`` (default: the generator's device, else CPU)."""
        raise NotImplementedError

    def density(self, t, schedule) -> torch.Tensor:
        """``p_time(t)`` (float64, shaped like ``t``; the probability mass for :class:`Discrete`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


def _t64(t, name: str = "t") -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        if t.is_complex():  # the cast would drop the imaginary part with only a warning
            raise TypeError(f"{name}: expected real times, got a {t.dtype} tensor")
        t = t.to(_F64)
    else:
        try:
            t = torch.as_tensor(t, dtype=_F64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name}: expected a float, a sequence of floats or a tensor, got {type(t).__name__}") \
                from None
    # p_time(NaN) would read as a zero density; checked on the host only (no device sync)
    if t.device.type == "cpu" and bool(torch.isnan(t).any()):
        raise ValueError(f"{name}: contains NaN")
    return t


def _inside(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return (t >= lo) & (t <= hi)


class Uniform(TimeLaw):
    """``t ~ U[t_min, t_max]``; density ``1/(t_max − t_min)`` (score SDE, FM/RF, VDM; book §6.2.2 (C))."""

    name = "uniform"

    def sample(self, B, schedule, generator=None, device=None):
        lo, hi = self.range(schedule)
        return lo + (hi - lo) * _rand(_count(B), generator, _device(generator, device))

    def density(self, t, schedule):
        lo, hi = self.range(schedule)
        t = _t64(t)
        # full float64 tensors: torch.where of two Python floats computes in the default dtype (float32)
        return torch.where(_inside(t, lo, hi), torch.full_like(t, 1.0 / (hi - lo)), torch.zeros_like(t))


class Stratified(Uniform):
    """Low-discrepancy uniform times (Kingma et al. 2021, VDM): one ``u ~ U[0, 1)`` per batch and
    ``t_b = t_min + (t_max − t_min)·((u + b/B) mod 1)``. Each ``t_b`` is marginally uniform, so the
    density is that of :class:`Uniform`; the batch mean has lower variance."""

    name = "stratified"

    def sample(self, B, schedule, generator=None, device=None):
        lo, hi = self.range(schedule)
        B = _count(B)
        dev = _device(generator, device)
        u = _rand(1, generator, dev)
        frac = torch.remainder(u + torch.arange(B, dtype=_F64, device=dev) / max(B, 1), 1.0)
        return lo + (hi - lo) * frac


class Discrete(TimeLaw):
    """``t = t_i`` with ``i ~ U{first, …, L}`` (DDPM ``L_simple``, NCSN levels; book §6.2.2 (C)).

    The grid ``t_1 < … < t_L`` is ``times`` if given; for :class:`~diffcore.schedules.VPDiscrete` the
    training steps ``t_i = i/N`` (so ``α_{t_i}² = ᾱ_i`` exactly); otherwise ``L`` points spaced
    uniformly over ``[t_min, t_max]`` including both ends (on VE these are the geometric NCSN levels
    ``σ_i = σ_min (σ_max/σ_min)^{(i−1)/(L−1)}``, book §3.4). ``first = 2`` drops the first level (the
    DDPM ELBO's ``i = 1`` term is the reconstruction term, docs/errata.md B5). The grid point before ``t_1`` is
    ``t_0`` = the schedule's data end ``t_min`` (:meth:`previous`)."""

    name = "discrete"

    def __init__(self, L: Optional[int] = None, times=None, first: int = 1, t_min=None, t_max=None):
        super().__init__(t_min, t_max)
        if L is not None and (isinstance(L, bool) or not isinstance(L, int) or L < 1):
            raise ValueError(f"L: expected a positive int, got {L!r}")
        if times is not None:
            tt = torch.as_tensor(times, dtype=_F64).flatten().cpu()
            if tt.numel() < 1 or not bool(torch.isfinite(tt).all()) or \
                    (tt.numel() > 1 and not bool((tt[1:] > tt[:-1]).all())):
                raise ValueError("times: expected a non-empty, finite, strictly increasing sequence of times")
            if L is not None and L != tt.numel():
                raise ValueError(f"L: {L} does not match len(times) = {tt.numel()}")
            if t_min is not None or t_max is not None:
                raise ValueError("t_min, t_max: not used when times= is given")
            self._times = tt
        else:
            self._times = None
        if isinstance(first, bool) or not isinstance(first, int) or first < 1:
            raise ValueError(f"first: expected an int >= 1, got {first!r}")
        self.L, self.first = L, first

    def grid(self, schedule) -> torch.Tensor:
        """``(t_0, t_1, …, t_L)`` float64 (CPU); ``t_0`` is the schedule's data end."""
        sched = _schedules.get(schedule)
        if self._times is not None:
            ts = self._times
        elif isinstance(sched, _schedules.VPDiscrete) and self.t_min is None and self.t_max is None and \
                self.L in (None, sched.num_train_timesteps):
            N = sched.num_train_timesteps
            ts = torch.arange(1, N + 1, dtype=_F64) / N
        else:
            if self.L is None:
                raise ValueError(f"L: required for a discrete law on {sched!r} (no built-in training grid)")
            lo, hi = self.range(sched)
            ts = torch.linspace(lo, hi, self.L, dtype=_F64) if self.L > 1 else torch.tensor([hi], dtype=_F64)
        if not (float(ts[0]) >= sched.t_min and float(ts[-1]) <= sched.t_max):
            raise ValueError(f"times: expected values in [{sched.t_min}, {sched.t_max}] for {sched!r}")
        if self.first > ts.numel():
            raise ValueError(f"first: {self.first} exceeds the number of levels {ts.numel()}")
        t0 = torch.tensor([min(float(sched.t_min), float(ts[0]))], dtype=_F64)
        return torch.cat([t0, ts])

    def levels(self, schedule) -> torch.Tensor:
        """The times that are drawn, ``(t_first, …, t_L)``."""
        return self.grid(schedule)[self.first:]

    def sample(self, B, schedule, generator=None, device=None):
        lv = self.levels(schedule)
        dev = _device(generator, device)
        i = torch.randint(0, lv.numel(), (_count(B),), generator=generator, device=dev)
        return lv.to(dev)[i]

    def index(self, t, schedule) -> torch.Tensor:
        """Grid index ``i`` (LongTensor, ``t_i = t``) of times on the grid; ``ValueError`` otherwise."""
        g = self.grid(schedule).to(_t64(t).device)
        t = _t64(t)
        j = torch.clamp(torch.searchsorted(g, t.contiguous()), 1, g.numel() - 1)
        j = torch.where((t - g[j - 1]).abs() < (t - g[j]).abs(), j - 1, j)
        # a thousandth of the mean spacing: accepts grid times rounded to float32, rejects off-grid ones
        tol = 1e-3 * (g[-1] - g[0]).abs().clamp_min(1e-300) / max(g.numel() - 1, 1)
        if t.numel() and bool(((t - g[j]).abs() > tol).any()):
            raise ValueError(f"t: expected times on the discrete grid of {self!r}")
        return j

    def previous(self, t, schedule) -> torch.Tensor:
        """``t_{i−1}`` for ``t = t_i`` (``t_0`` = the data end for ``i = 1``)."""
        g = self.grid(schedule).to(_t64(t).device)
        return g[self.index(t, schedule) - 1]

    def density(self, t, schedule):
        lv = self.levels(schedule)
        return torch.full_like(_t64(t), 1.0 / lv.numel())


def _ndtr(x: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(x)


def _log_normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * z * z - 0.5 * math.log(2 * math.pi)


def _trunc_normal(B, mean, std, lo, hi, generator, device) -> Tuple[torch.Tensor, float]:
    """Exact draws of ``N(mean, std²)`` truncated to ``[lo, hi]`` (±inf allowed) by inverse CDF, and
    the mass ``Z`` of the interval. Untruncated: plain ``randn``. The lower/upper tails are handled on
    the side where the CDF does not round to 1."""
    a, b = (lo - mean) / std, (hi - mean) / std
    if a == -math.inf and b == math.inf:
        return mean + std * torch.randn(B, generator=generator, device=device, dtype=_F64), 1.0
    u = _rand(B, generator, device)
    tiny = 1e-300
    if a > 0:  # both ends in the upper tail: work with Φ(−z)
        pa, pb = float(_ndtr(torch.tensor(-a, dtype=_F64))), float(_ndtr(torch.tensor(-b, dtype=_F64)))
        z = -torch.special.ndtri(torch.clamp(pa - u * (pa - pb), min=tiny))
        Z = pa - pb
    else:
        pa, pb = float(_ndtr(torch.tensor(a, dtype=_F64))), float(_ndtr(torch.tensor(b, dtype=_F64)))
        z = torch.special.ndtri(torch.clamp(pa + u * (pb - pa), min=tiny, max=1 - 1e-16))
        Z = pb - pa
    if not Z > 0:
        raise ValueError(f"t_min, t_max: the time range has no mass under N({mean}, {std}²) "
                         f"(standardized interval [{a}, {b}])")
    return torch.clamp(mean + std * z, min=lo, max=hi), Z


class LogNormalSigma(TimeLaw):
    """EDM's law (Karras et al. 2022): ``ln(σ_t/α_t) = −λ ~ N(P_mean, P_std²)``, i.e. ``λ ~ N(−P_mean, P_std²)``
    and ``t = t_of_lam(λ)`` (on EDM, ``ln t ~ N(P_mean, P_std²)``). Defaults ``P_mean = −1.2``,
    ``P_std = 1.2``. Truncated to the λ-range of ``[t_min, t_max]`` (default: the schedule's whole range,
    so EDM is untruncated). Density ``p(t) = N(λ(t); −P_mean, P_std²)·|λ'(t)|/Z``."""

    name = "lognormal_sigma"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, t_min=None, t_max=None):
        super().__init__(t_min, t_max)
        self.p_mean = _number(p_mean, "p_mean")
        self.p_std = _number(p_std, "p_std")
        if not self.p_std > 0:
            raise ValueError(f"p_std: expected a positive number, got {p_std!r}")

    def _default_range(self, sched):
        return float(sched.t_min), float(sched.t_max)

    def _lam_range(self, sched):
        lo, hi = self.range(sched)
        v = sched.eval(torch.tensor([hi, lo], dtype=_F64))
        return float(v.lam[0]), float(v.lam[1])

    def sample(self, B, schedule, generator=None, device=None):
        sched = _schedules.get(schedule)
        l_lo, l_hi = self._lam_range(sched)
        lam, _ = _trunc_normal(_count(B), -self.p_mean, self.p_std, l_lo, l_hi, generator,
                               _device(generator, device))
        return sched.t_of_lam(lam).to(_F64)

    def density(self, t, schedule):
        sched = _schedules.get(schedule)
        l_lo, l_hi = self._lam_range(sched)
        a, b = (l_lo + self.p_mean) / self.p_std, (l_hi + self.p_mean) / self.p_std
        Z = 1.0 if (a == -math.inf and b == math.inf) else \
            float(_ndtr(torch.tensor(b, dtype=_F64)) - _ndtr(torch.tensor(a, dtype=_F64)))
        t = _t64(t)
        v = sched.eval(t)
        z = (v.lam + self.p_mean) / self.p_std
        d = torch.exp(_log_normal_pdf(z)) / self.p_std * v.dlam.abs() / Z
        lo, hi = self.range(sched)
        return torch.where(_inside(t, lo, hi), d, torch.zeros_like(d))


class LogitNormal(TimeLaw):
    """SD3-style law on the rectified-flow path (Esser et al. 2024): ``t = sigmoid(u)``,
    ``u ~ N(m, s²)`` (defaults 0, 1), truncated to ``[t_min, t_max]`` when those are given (default:
    the schedule's valid range, within (0, 1)). Density ``N(logit t; m, s²)/(t(1 − t))/Z``."""

    name = "logit_normal"

    def __init__(self, m: float = 0.0, s: float = 1.0, t_min=None, t_max=None):
        super().__init__(t_min, t_max)
        self.m = _number(m, "m")
        self.s = _number(s, "s")
        if not self.s > 0:
            raise ValueError(f"s: expected a positive number, got {s!r}")

    def _default_range(self, sched):
        return float(sched.t_min), float(sched.t_max)

    def _u_range(self, sched):
        lo, hi = self.range(sched)
        if lo < 0 or hi > 1:
            raise ValueError(f"t_min, t_max: logit_normal draws times in (0, 1), got range [{lo}, {hi}]; "
                             "use it with a schedule on [0, 1]")
        logit = lambda p: -math.inf if p <= 0 else (math.inf if p >= 1 else math.log(p / (1 - p)))  # noqa: E731
        return logit(lo), logit(hi)

    def sample(self, B, schedule, generator=None, device=None):
        sched = _schedules.get(schedule)
        u_lo, u_hi = self._u_range(sched)
        u, _ = _trunc_normal(_count(B), self.m, self.s, u_lo, u_hi, generator, _device(generator, device))
        return torch.sigmoid(u)

    def density(self, t, schedule):
        sched = _schedules.get(schedule)
        u_lo, u_hi = self._u_range(sched)
        a, b = (u_lo - self.m) / self.s, (u_hi - self.m) / self.s
        Z = 1.0 if (a == -math.inf and b == math.inf) else \
            float(_ndtr(torch.tensor(b, dtype=_F64)) - _ndtr(torch.tensor(a, dtype=_F64)))
        t = _t64(t)
        z = (torch.log(t) - torch.log1p(-t) - self.m) / self.s
        d = torch.exp(_log_normal_pdf(z)) / (self.s * t * (1 - t)) / Z
        lo, hi = self.range(sched)
        return torch.where(_inside(t, lo, hi), d, torch.zeros_like(d))


class UniformLambda(TimeLaw):
    """Uniform in half log-SNR (Kingma et al. 2021): ``λ ~ U[λ(t_max), λ(t_min)]``, ``t = t_of_lam(λ)``; density
    ``|λ'(t)|/(λ(t_min) − λ(t_max))``. With the likelihood weight ``w_ε = −λ'`` and ``importance=True``
    the per-sample weight is the constant ``λ(t_min) − λ(t_max)``. Needs finite λ at both ends."""

    name = "uniform_lambda"

    def _lam_range(self, sched):
        lo, hi = self.range(sched)
        v = sched.eval(torch.tensor([hi, lo], dtype=_F64))
        l_lo, l_hi = float(v.lam[0]), float(v.lam[1])
        if not (math.isfinite(l_lo) and math.isfinite(l_hi)):
            raise ValueError(f"t_min, t_max: uniform_lambda needs a finite half log-SNR at both ends, got "
                             f"λ({hi}) = {l_lo}, λ({lo}) = {l_hi} on {sched!r}; pass t_min/t_max inside the range")
        return l_lo, l_hi

    def sample(self, B, schedule, generator=None, device=None):
        sched = _schedules.get(schedule)
        l_lo, l_hi = self._lam_range(sched)
        lam = l_lo + (l_hi - l_lo) * _rand(_count(B), generator, _device(generator, device))
        return sched.t_of_lam(torch.clamp(lam, l_lo, l_hi)).to(_F64)

    def density(self, t, schedule):
        sched = _schedules.get(schedule)
        l_lo, l_hi = self._lam_range(sched)
        lo, hi = self.range(sched)
        t = _t64(t)
        d = sched.eval(t).dlam.abs() / (l_hi - l_lo)
        return torch.where(_inside(t, lo, hi), d, torch.zeros_like(d))


_LAWS = {
    "uniform": Uniform,
    "discrete": Discrete,
    "stratified": Stratified,
    "lognormal_sigma": LogNormalSigma, "lognormal": LogNormalSigma, "edm": LogNormalSigma,
    "logit_normal": LogitNormal, "logitnormal": LogitNormal,
    "uniform_lambda": UniformLambda,
}


def available() -> Tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return tuple(_LAWS)


def get(name, **options) -> TimeLaw:
    """A time law by name (``"uniform"``, ``"discrete"``, ``"stratified"``, ``"lognormal_sigma"``,
    ``"logit_normal"``, ``"uniform_lambda"``) with its options; a :class:`TimeLaw` passes through."""
    if isinstance(name, TimeLaw):
        if options:
            raise ValueError(f"time options {sorted(options)}: cannot be given with a TimeLaw instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"time: expected a law name or a TimeLaw, got {type(name).__name__}")
    key = name.lower()
    if key not in _LAWS:
        raise ValueError(f"time: unknown law {name!r}; expected one of {sorted(_LAWS)}")
    cls = _LAWS[key]
    try:
        return cls(**options)
    except TypeError as e:
        raise TypeError(f"time options for {key!r}: {e}") from None
