"""Schrödinger bridges and dynamic optimal transport (book Ch. 7: §7.2.1 Benamou–Brenier, §7.2.3 the
Schrödinger bridge, §7.3 its equivalence with entropic OT, §7.4 diffusion models as half-bridges, §7.5 the
PF-ODE map versus the OT map).

Reference process throughout: Brownian motion ``dx_t = σ dw_t`` on ``[0, 1]`` (book eq. 7.2.9 with ε = σ²,
T = 1). Its bridge problem ``min KL(P ‖ R^σ)`` with ``P_0 = p_src``, ``P_1 = p_tgt`` has the static form
(book §7.3) of entropic OT with cost ``‖x − y‖²`` and regularization ``2σ²`` (equivalently cost ``‖x − y‖²/2``
and ``σ²``), and its optimal path law is the mixture of Brownian bridges over that coupling.

* Closed forms between Gaussians (the test oracles; derivations in docs/bridges.md):
  :func:`gaussian_sb` (Bunne et al. 2023, "The Schrödinger Bridge between Gaussian Measures has a Closed
  Form", Thm. 3: coupling, time marginals, forward and backward drifts, the Schrödinger potentials),
  :func:`gaussian_ot_map` (the Brenier
  map and W2², book eq. 7.2.1), :func:`gaussian_ot_velocity` (the Benamou–Brenier minimizer, book eq. 7.2.3),
  :func:`gaussian_linear_flow_map` (the flow map of the marginal velocity of linear interpolation with the
  independent coupling, book §5.2 / §7.5: not the OT map when the covariances do not commute).
* Iterative proportional fitting (IPF, the Sinkhorn iteration on path space; book §7.2.3, De Bortoli et al.
  2021): :func:`gaussian_ipf` runs it exactly within the Gaussian family (each half step keeps the conditional
  of the other endpoint and imposes one marginal); :func:`static_bridge` runs it on weighted point clouds
  (discrete IPF is Sinkhorn, :func:`diffcore.ot.sinkhorn`) and returns the plan and the Schrödinger potentials.
* :class:`DSB`: the diffusion Schrödinger bridge (De Bortoli et al. 2021, Alg. 1): IPF with neural forward and
  backward drifts of an Euler–Maruyama chain, each fitted by mean matching on trajectories of the other.
* :func:`kinetic_energy`: the Benamou–Brenier action ``∫₀¹ E‖v_t(x_t)‖² dt`` of a velocity field along its own
  flow (RK4 on particles), ``= W2²`` exactly for the OT flow and larger for any other flow between the same
  marginals (book eq. 7.2.3).

All closed forms are float64 torch; covariances must be symmetric positive definite.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch

__all__ = ["GaussianSB", "gaussian_sb", "gaussian_ot_map", "gaussian_ot_velocity", "gaussian_linear_flow_map",
           "gaussian_ipf", "IPFStep", "static_bridge", "StaticBridge", "kinetic_energy", "DSB"]

_F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# input checks and matrix functions


def _vec(v, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(v, dtype=_F64) if not isinstance(v, torch.Tensor) else v.detach().to(_F64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected a (D,) tensor or sequence of numbers, got {type(v).__name__}") from e
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name}: expected shape (D,), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values")
    return t.cpu()


def _spd(c, name: str, D: int) -> torch.Tensor:
    try:
        t = torch.as_tensor(c, dtype=_F64) if not isinstance(c, torch.Tensor) else c.detach().to(_F64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected a (D, D) matrix, got {type(c).__name__}") from e
    t = t.cpu()
    if t.dim() == 0:
        t = t * torch.eye(D, dtype=_F64)
    elif t.dim() == 1 and t.shape[0] == D:
        t = torch.diag(t)
    if tuple(t.shape) != (D, D):
        raise ValueError(f"{name}: expected a ({D}, {D}) covariance (or a scalar / (D,) diagonal), got "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values")
    if not torch.allclose(t, t.T, rtol=1e-10, atol=1e-12 * float(t.abs().max())):
        raise ValueError(f"{name}: expected a symmetric matrix")
    if float(torch.linalg.eigvalsh(t).min()) <= 0:
        raise ValueError(f"{name}: expected a positive definite matrix")
    return 0.5 * (t + t.T)


def _positive(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")
    return float(v)


def _count(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return int(v)


def _sqrtm(S: torch.Tensor) -> torch.Tensor:
    w, U = torch.linalg.eigh(S)
    return (U * w.clamp_min(0).sqrt()) @ U.T


def _inv_sqrtm(S: torch.Tensor) -> torch.Tensor:
    w, U = torch.linalg.eigh(S)
    return (U * w.rsqrt()) @ U.T


def _gaussians(mean0, cov0, mean1, cov1):
    m0 = _vec(mean0, "mean0")
    m1 = _vec(mean1, "mean1")
    if m1.shape != m0.shape:
        raise ValueError(f"mean1: expected shape {tuple(m0.shape)} (as mean0), got {tuple(m1.shape)}")
    D = m0.shape[0]
    return m0, _spd(cov0, "cov0", D), m1, _spd(cov1, "cov1", D)


def _points(x, name: str, D: Optional[int] = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a (B, D) tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] == 0 or (D is not None and x.shape[1] != D):
        want = f"(B, {D})" if D is not None else "(B, D)"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    return x


# ------------------------------------------------------------------------------------------------
# Gaussian closed forms


def gaussian_ot_map(mean0, cov0, mean1, cov1) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """The Brenier (quadratic-cost OT) map between ``N(m0, Σ0)`` and ``N(m1, Σ1)`` and the squared
    Wasserstein-2 distance (book eq. 7.2.1–7.2.2; Dowson & Landau 1982, Takatsu 2011):

        T(x) = m1 + A (x − m0),   A = Σ0^{-1/2} (Σ0^{1/2} Σ1 Σ0^{1/2})^{1/2} Σ0^{-1/2}  (symmetric PD),
        W2² = ‖m0 − m1‖² + tr Σ0 + tr Σ1 − 2 tr (Σ0^{1/2} Σ1 Σ0^{1/2})^{1/2}.

    Returns ``(A [D, D], m1 − A m0 [D], W2²)`` (float64; ``T(x) = A x + b``)."""
    m0, S0, m1, S1 = _gaussians(mean0, cov0, mean1, cov1)
    r0 = _sqrtm(S0)
    ri = _inv_sqrtm(S0)
    M = _sqrtm(r0 @ S1 @ r0)
    A = ri @ M @ ri
    A = 0.5 * (A + A.T)
    w2 = float(((m0 - m1) ** 2).sum() + torch.trace(S0) + torch.trace(S1) - 2 * torch.trace(M))
    return A, m1 - A @ m0, max(w2, 0.0)


def gaussian_ot_velocity(mean0, cov0, mean1, cov1) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The minimizing velocity of the Benamou–Brenier problem (book eq. 7.2.3) between two Gaussians: along
    McCann's displacement interpolation ``x_t = (1 − t) x + t T(x)`` the velocity at ``x_t`` is
    ``T(x) − x``, i.e. ``v_t(y) = (A − I) M_t^{-1} (y − m_t) + m1 − m0`` with ``M_t = (1 − t) I + t A`` and
    ``m_t = (1 − t) m0 + t m1``. Returns ``v(y [B, D], t float) → [B, D]``; its action
    (:func:`kinetic_energy`) is W2²."""
    m0, S0, m1, S1 = _gaussians(mean0, cov0, mean1, cov1)
    A, _, _ = gaussian_ot_map(m0, S0, m1, S1)
    D = m0.shape[0]
    eye = torch.eye(D, dtype=_F64)

    def v(y: torch.Tensor, t: float) -> torch.Tensor:
        Mt = (1 - t) * eye + t * A
        mt = (1 - t) * m0 + t * m1
        K = (A - eye) @ torch.linalg.inv(Mt)
        return (y.to(_F64) - mt) @ K.T + (m1 - m0)
    return v


def gaussian_linear_flow_map(mean0, cov0, mean1, cov1, rtol: float = 1e-11) -> Tuple[torch.Tensor, torch.Tensor]:
    """The flow map ``x ↦ M x + c`` of the marginal velocity of linear interpolation ``x_t = (1 − t) x0 + t x1``
    with the independent coupling ``x0 ~ N(m0, Σ0) ⊥ x1 ~ N(m1, Σ1)`` (flow matching / the first
    rectified flow, book §5.2; the PF-ODE of book §7.5 between these endpoints):

        v_t(x) = E[x1 − x0 | x_t = x] = m1 − m0 + (t Σ1 − (1 − t) Σ0) Σ_t^{-1} (x − m_t),
        Σ_t = (1 − t)² Σ0 + t² Σ1,

    so ``dM/dt = (t Σ1 − (1 − t) Σ0) Σ_t^{-1} M``, ``M(0) = I``, integrated by SciPy's DOP853 to ``rtol``.
    It pushes ``N(m0, Σ0)`` to ``N(m1, Σ1)`` (``M Σ0 Mᵀ = Σ1``) but ``M`` is not symmetric, hence not the
    Brenier map (:func:`gaussian_ot_map`), unless Σ0 and Σ1 commute (book §7.5.1). Returns ``(M, c)``."""
    import numpy as np
    from scipy.integrate import solve_ivp
    m0, S0, m1, S1 = _gaussians(mean0, cov0, mean1, cov1)
    rtol = _positive(rtol, "rtol")
    D = m0.shape[0]
    S0n, S1n = S0.numpy(), S1.numpy()

    def rhs(t, y):
        St = (1 - t) ** 2 * S0n + t ** 2 * S1n
        K = np.linalg.solve(St.T, (t * S1n - (1 - t) * S0n).T).T  # (tΣ1 − (1−t)Σ0) Σ_t^{-1}
        return (K @ y.reshape(D, D)).ravel()
    sol = solve_ivp(rhs, (0.0, 1.0), np.eye(D).ravel(), method="DOP853", rtol=rtol, atol=rtol * 1e-2)
    M = torch.from_numpy(sol.y[:, -1].reshape(D, D).copy())
    # the mean moves with the map too: x1 = m1 + M (x0 − m0)
    return M, m1 - M @ m0


class GaussianSB(NamedTuple):
    """The Schrödinger bridge between ``N(m0, Σ0)`` and ``N(m1, Σ1)`` for the reference ``σ w_t`` on ``[0, 1]``
    (:func:`gaussian_sb`). ``cross_cov`` is ``C = Cov(x0, x1)``; the methods give the time marginals and
    drifts of the bridge process."""

    mean0: torch.Tensor
    cov0: torch.Tensor
    mean1: torch.Tensor
    cov1: torch.Tensor
    sigma: float
    cross_cov: torch.Tensor

    @property
    def coupling_cov(self) -> torch.Tensor:
        """Covariance ``[[Σ0, C], [Cᵀ, Σ1]]`` of the optimal coupling ``(x0, x1)`` (``[2D, 2D]``)."""
        return torch.cat([torch.cat([self.cov0, self.cross_cov], 1), torch.cat([self.cross_cov.T, self.cov1], 1)], 0)

    def marginal(self, t: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of ``x_t``: ``(1 − t) m0 + t m1`` and
        ``(1 − t)² Σ0 + t² Σ1 + t(1 − t)(C + Cᵀ + σ² I)`` (a Brownian bridge over the coupling)."""
        t = float(t)
        if not 0 <= t <= 1:
            raise ValueError(f"t: expected a time in [0, 1], got {t}")
        D = self.mean0.shape[0]
        C = self.cross_cov
        cov = ((1 - t) ** 2 * self.cov0 + t ** 2 * self.cov1
               + t * (1 - t) * (C + C.T + self.sigma ** 2 * torch.eye(D, dtype=_F64)))
        return (1 - t) * self.mean0 + t * self.mean1, cov

    def forward_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Drift of the bridge SDE ``dx = b_t(x) dt + σ dw`` (book eq. 7.2.13 with f = 0, g = σ):
        ``b_t(x) = (E[x1 | x_t = x] − x)/(1 − t)`` (the Brownian-bridge drift averaged over the coupling),
        linear in x, for ``t ∈ [0, 1)``."""
        t = float(t)
        if not 0 <= t < 1:
            raise ValueError(f"t: expected a time in [0, 1), got {t}")
        x = _points(x, "x", self.mean0.shape[0]).to(_F64)
        mt, St = self.marginal(t)
        cov_1t = (1 - t) * self.cross_cov.T + t * self.cov1  # Cov(x1, x_t)
        e1 = self.mean1 + (x - mt) @ torch.linalg.solve(St, cov_1t.T)
        return (e1 - x) / (1 - t)

    def backward_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Drift of the time-reversed bridge, ``dx = b̂_t(x) dt + σ dw̄`` run from ``t = 1`` to 0 (book eq. 7.2.14
        in reversed time, eq. 7.2.15): ``b̂_t(x) = (E[x0 | x_t = x] − x)/t``, for ``t ∈ (0, 1]``."""
        t = float(t)
        if not 0 < t <= 1:
            raise ValueError(f"t: expected a time in (0, 1], got {t}")
        x = _points(x, "x", self.mean0.shape[0]).to(_F64)
        mt, St = self.marginal(t)
        cov_0t = (1 - t) * self.cov0 + t * self.cross_cov  # Cov(x0, x_t)
        e0 = self.mean0 + (x - mt) @ torch.linalg.solve(St, cov_0t.T)
        return (e0 - x) / t

    def log_potentials(self, x: torch.Tensor, t: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """The Schrödinger potentials ``(log Ψ_t(x), log Ψ̂_t(x))`` ``[B]`` (book eq. 7.2.11–7.2.14 with f = 0,
        g = σ): ``p_t = Ψ_t Ψ̂_t``, forward drift ``σ²∇log Ψ_t``, backward drift ``σ²∇log Ψ̂_t``. Both are
        quadratic; ``log Ψ_t`` is normalized to 0 at the mean ``m_t`` (the pair is defined up to
        ``(log Ψ + c_t, log Ψ̂ − c_t)``), for ``t ∈ (0, 1)``."""
        t = float(t)
        if not 0 < t < 1:
            raise ValueError(f"t: expected a time in (0, 1), got {t}")
        x = _points(x, "x", self.mean0.shape[0]).to(_F64)
        D = self.mean0.shape[0]
        mt, St = self.marginal(t)
        pts = torch.cat([mt[None], mt[None] + torch.eye(D, dtype=_F64)])
        bf = self.forward_drift(pts, t)
        K = (bf[1:] - bf[:1]).T  # symmetric: the forward drift is a gradient field
        K = 0.5 * (K + K.T)
        d = x - mt
        log_psi = (0.5 * ((d @ K) * d).sum(1) + d @ bf[0]) / self.sigma ** 2
        L = torch.linalg.cholesky(St)
        z = torch.linalg.solve_triangular(L, d.T, upper=False).T
        log_p = -0.5 * ((z * z).sum(1) + D * math.log(2 * math.pi)) - torch.log(torch.diagonal(L)).sum()
        return log_psi, log_p - log_psi

    def sample_coupling(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws of ``(x0, x1)`` from the optimal coupling (float64, ``[n, D]`` each)."""
        n = _count(n, "n")
        D = self.mean0.shape[0]
        L = torch.linalg.cholesky(self.coupling_cov)
        z = torch.randn(n, 2 * D, generator=generator, dtype=_F64) @ L.T
        return self.mean0 + z[:, :D], self.mean1 + z[:, D:]


def gaussian_sb(mean0, cov0, mean1, cov1, sigma: float) -> GaussianSB:
    """Closed-form Schrödinger bridge between ``N(m0, Σ0)`` and ``N(m1, Σ1)`` with reference ``dx = σ dw`` on
    ``[0, 1]`` (Bunne et al. 2023, Thm. 3; equivalently entropic OT between Gaussians with cost ``‖x − y‖²/2``
    and regularization σ², Janati et al. 2020, Mallasto et al. 2022; book §7.2.3, §7.3):

        D_σ = (4 Σ0^{1/2} Σ1 Σ0^{1/2} + σ⁴ I)^{1/2},   C = Cov(x0, x1) = ½ (Σ0^{1/2} D_σ Σ0^{-1/2} − σ² I).

    ``C → Σ0 A`` (the OT coupling, A of :func:`gaussian_ot_map`) as σ → 0 and ``C → 0`` (independence) as
    σ → ∞. Derivation in docs/bridges.md."""
    m0, S0, m1, S1 = _gaussians(mean0, cov0, mean1, cov1)
    sigma = _positive(sigma, "sigma")
    D = m0.shape[0]
    eye = torch.eye(D, dtype=_F64)
    r0, ri = _sqrtm(S0), _inv_sqrtm(S0)
    Ds = _sqrtm(4 * r0 @ S1 @ r0 + sigma ** 4 * eye)
    C = 0.5 * (r0 @ Ds @ ri - sigma ** 2 * eye)
    return GaussianSB(m0, S0, m1, S1, sigma, C)


class IPFStep(NamedTuple):
    """One iterate of :func:`gaussian_ipf`: the joint law ``N(mean, cov)`` of ``(x0, x1)`` (``[2D]``, ``[2D, 2D]``)."""

    mean: torch.Tensor
    cov: torch.Tensor


def gaussian_ipf(mean0, cov0, mean1, cov1, sigma: float, iterations: int = 20) -> List[IPFStep]:
    """Iterative proportional fitting (IPF; book §7.2.3, De Bortoli et al. 2021 Sec. 3.1) for the Schrödinger
    bridge between two Gaussians, run exactly in the Gaussian family on the endpoint law (the path law is the
    Brownian-bridge mixture over it; book §7.3: the path KL reduces to the endpoint KL).

    Start from the reference ``x0 ~ N(m0, Σ0)``, ``x1 = x0 + σ z``; each iteration makes two half steps,
    ``P ← argmin KL(P ‖ P_prev)`` with the ``t = 1`` marginal imposed (keep ``x0 | x1``, set ``x1 ~ N(m1, Σ1)``),
    then with the ``t = 0`` marginal imposed. Returns the ``iterations + 1`` joint laws after each full
    iteration (entry 0: the reference); they converge to :func:`gaussian_sb`'s coupling (linearly)."""
    m0, S0, m1, S1 = _gaussians(mean0, cov0, mean1, cov1)
    sigma = _positive(sigma, "sigma")
    iterations = _count(iterations, "iterations", 0)
    D = m0.shape[0]
    eye = torch.eye(D, dtype=_F64)
    mean = torch.cat([m0, m0])
    cov = torch.cat([torch.cat([S0, S0], 1), torch.cat([S0, S0 + sigma ** 2 * eye], 1)], 0)
    out = [IPFStep(mean.clone(), cov.clone())]

    def impose(mean, cov, keep: slice, new: slice, m_new, S_new):
        # keep the conditional law of the `keep` block given the `new` block, set the `new` block's marginal
        Skn, Snn = cov[keep, new], cov[new, new]
        Bm = torch.linalg.solve(Snn, Skn.T).T  # Cov(keep, new) Cov(new)^{-1}
        cond = cov[keep, keep] - Bm @ Skn.T
        mean2 = mean.clone()
        mean2[keep] = mean[keep] + Bm @ (m_new - mean[new])
        mean2[new] = m_new
        cov2 = cov.clone()
        cov2[new, new] = S_new
        cov2[keep, new] = Bm @ S_new
        cov2[new, keep] = (Bm @ S_new).T
        cov2[keep, keep] = cond + Bm @ S_new @ Bm.T
        return mean2, 0.5 * (cov2 + cov2.T)

    a, b = slice(0, D), slice(D, 2 * D)
    for _ in range(iterations):
        mean, cov = impose(mean, cov, a, b, m1, S1)
        mean, cov = impose(mean, cov, b, a, m0, S0)
        out.append(IPFStep(mean.clone(), cov.clone()))
    return out


# ------------------------------------------------------------------------------------------------
# discrete IPF (Sinkhorn) on point clouds


class StaticBridge(NamedTuple):
    """Output of :func:`static_bridge`.

    Attributes:
        plan: ``[n, m]`` coupling of the weighted clouds (float64).
        phi, psi: ``[n]``, ``[m]`` Schrödinger potentials in log form: ``plan_ij = a_i b_j exp(φ_i + ψ_j −
            ‖x_i − y_j‖²/(2σ²))`` (the discrete form of ``P = Ψ̂(x0) K(x0, x1) Ψ(x1)``, book eq. 7.2.11–7.2.12,
            with the weights absorbed); defined up to ``(φ + k, ψ − k)``.
        iterations: Sinkhorn (= IPF) iterations used.
        marginal_error: ``‖P1 − a‖₁`` at the end.
    """

    plan: torch.Tensor
    phi: torch.Tensor
    psi: torch.Tensor
    iterations: int
    marginal_error: float


def static_bridge(x, y, sigma: float, a=None, b=None, tol: float = 1e-10, max_iters: int = 10000) -> StaticBridge:
    """The static Schrödinger bridge between weighted point clouds ``Σ a_i δ_{x_i}`` and ``Σ b_j δ_{y_j}`` for the
    reference ``σ w_t`` on ``[0, 1]``: discrete IPF, i.e. Sinkhorn on the Brownian kernel
    ``exp(−‖x − y‖²/(2σ²))`` (book §7.2.3, §7.3: entropic OT with cost ``‖x − y‖²`` and ε = 2σ²), solved by
    :func:`diffcore.ot.sinkhorn` in float64. Its plan is what :class:`diffcore.coupling.SchrodingerBridge`
    resamples for SB-CFM."""
    from . import ot
    sigma = _positive(sigma, "sigma")
    x = _points(x, "x")
    y = _points(y, "y", x.shape[1])
    eps = 2.0 * sigma ** 2
    C = ot.squared_euclidean(x.detach().to(_F64), y.detach().to(_F64))
    res = ot.sinkhorn(a, b, C, eps, tol=tol, max_iters=max_iters)
    return StaticBridge(res.plan, res.f / eps, res.g / eps, int(res.iterations), float(res.marginal_error))


# ------------------------------------------------------------------------------------------------
# Benamou–Brenier action


def kinetic_energy(velocity: Callable, x0: torch.Tensor, steps: int = 100) -> float:
    """The Benamou–Brenier action ``∫₀¹ E‖v_t(x_t)‖² dt`` (book eq. 7.2.3) of the flow of ``velocity`` started
    from the samples ``x0 [B, D]``: particles moved by classical RK4 with ``steps`` steps, the time integral
    by Simpson's rule on the RK4 stages (error O(1/steps⁴) for smooth fields). For the OT velocity
    (:func:`gaussian_ot_velocity`) it is W2² up to the sampling error of ``x0``; for any other velocity
    transporting the same marginals it is larger. ``velocity(x [B, D], t float) → [B, D]``."""
    x = _points(x0, "x0").to(_F64)
    steps = _count(steps, "steps")
    if not callable(velocity):
        raise TypeError(f"velocity: expected a callable v(x, t), got {type(velocity).__name__}")
    h = 1.0 / steps
    total = 0.0
    for k in range(steps):
        t = k * h
        k1 = velocity(x, t)
        k2 = velocity(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = velocity(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = velocity(x + h * k3, t + h)
        x_next = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        v_next = velocity(x_next, t + h)
        # Simpson on [t, t + h]; the midpoint state from the cubic Hermite interpolant of the step
        xm = 0.5 * (x + x_next) + h / 8 * (k1 - v_next)
        e_mid = (velocity(xm, t + 0.5 * h) ** 2).sum(1)
        total += float((h / 6 * ((k1 * k1).sum(1) + 4 * e_mid + (v_next * v_next).sum(1))).mean())
        x = x_next
    return total


# ------------------------------------------------------------------------------------------------
# diffusion Schrödinger bridge (neural IPF)


class _Drift(torch.nn.Module):
    """A small MLP drift ``(x [B, D], t [B]) → [B, D]``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], 1))


class _AffineDrift(torch.nn.Module):
    """A drift affine in x with its own coefficients at each of the N + 1 grid times,
    ``(x, t_k) → A_k x + c_k``, fitted by exact least squares per step (the family of the Gaussian bridge's
    drifts, so mean matching is then exact up to Monte Carlo)."""

    def __init__(self, dim: int, num_steps: int):
        super().__init__()
        self.num_steps = num_steps
        self.A = torch.nn.Parameter(torch.zeros(num_steps + 1, dim, dim), requires_grad=False)
        self.c = torch.nn.Parameter(torch.zeros(num_steps + 1, dim), requires_grad=False)

    def _index(self, t: torch.Tensor) -> torch.Tensor:
        return torch.round(t * self.num_steps).long().clamp(0, self.num_steps)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = self._index(t)
        return torch.einsum("bij,bj->bi", self.A[k], x) + self.c[k]

    @torch.no_grad()
    def solve(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> float:
        k = self._index(t)
        err = 0.0
        for j in torch.unique(k).tolist():
            sel = k == j
            X = torch.cat([x[sel], torch.ones_like(x[sel, :1])], 1).double()
            W = torch.linalg.lstsq(X, y[sel].double()).solution  # [D + 1, D]
            self.A[j] = W[:-1].T.to(self.A.dtype)
            self.c[j] = W[-1].to(self.c.dtype)
            err += float(((X @ W - y[sel].double()) ** 2).sum())
        return err / x.shape[0]


class DSB:
    """Diffusion Schrödinger bridge (De Bortoli et al. 2021, "Diffusion Schrödinger Bridge with Applications
    to Score-Based Generative Modeling", Alg. 1; book §7.2.3, the IPF half-bridges of §7.4): IPF on path
    space with the reference ``dx = σ dw`` on ``[0, 1]``, discretized as the Euler–Maruyama chains

        forward:   x_{k+1} = x_k + γ f(x_k, t_k) + σ√γ z,        x_0 ~ p_src,
        backward:  x_k = x_{k+1} + γ b(x_{k+1}, t_{k+1}) + σ√γ z,  x_N ~ p_tgt,

    ``γ = 1/N``, ``t_k = kγ``. IPF iteration n fits the backward drift b on trajectories of the current
    forward chain (the time reversal of that chain: the half bridge that imposes p_tgt at t = 1), then the
    forward drift f on trajectories of the new backward chain (imposing p_src at t = 0), each by DSB's mean
    matching: ``b(x_{k+1}, t_{k+1}) ≈ (x_k − x_{k+1})/γ + f(x_k, t_k) − f(x_{k+1}, t_k)`` and
    ``f(x_k, t_k) ≈ (x_{k+1} − x_k)/γ + b(x_{k+1}, t_{k+1}) − b(x_k, t_{k+1})`` in mean square. The first forward
    chain is the reference (f = 0), so iteration 1's backward chain is the score-based diffusion model of
    p_tgt with prior ``p_src * N(0, σ²)`` (book §7.4.2). Drifts are small MLPs (``drift="mlp"``: ``hidden``
    units, two hidden layers, time as an input, Adam, warm-started from one iteration to the next) or
    ``drift="affine"``: per-step affine maps ``A_k x + c_k`` fitted by exact least squares — the family of
    the Gaussian bridge's drifts (:meth:`GaussianSB.forward_drift`), so between Gaussians the iterates are
    IPF's up to Monte Carlo and the O(γ) time discretization.

    Args:
        dim: data dimension D.
        sigma: reference noise level σ (the SB's entropic regularization is 2σ² on the cost ‖x − y‖²).
        num_steps: N, steps of the chains.
        drift: ``"mlp"`` or ``"affine"`` (above).
        hidden: MLP width.
        lr: Adam learning rate (MLP drifts).
        dtype, device: of the networks and chains.
    """

    def __init__(self, dim: int, sigma: float = 1.0, num_steps: int = 20, drift: str = "mlp", hidden: int = 64,
                 lr: float = 1e-3, dtype: torch.dtype = torch.float32, device="cpu"):
        self.dim = _count(dim, "dim")
        self.sigma = _positive(sigma, "sigma")
        self.num_steps = _count(num_steps, "num_steps")
        hidden = _count(hidden, "hidden")
        self.lr = _positive(lr, "lr")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
        self.dtype, self.device = dtype, torch.device(device)
        if drift not in ("mlp", "affine"):
            raise ValueError(f"drift: expected 'mlp' or 'affine', got {drift!r}")
        self.drift = drift

        def make():
            net = _Drift(self.dim, hidden) if drift == "mlp" else _AffineDrift(self.dim, self.num_steps)
            return net.to(self.device, dtype)
        self.forward_net, self.backward_net = make(), make()
        self.forward_is_reference = True  # before the first forward fit the forward chain is σ w_t
        self.iterations_done = 0

    # -- chains --------------------------------------------------------------------------------------
    def _check_start(self, x, name):
        x = _points(x, name, self.dim)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: expected finite values")
        return x.to(self.device, self.dtype)

    def _f(self, x, k):
        if self.forward_is_reference:
            return torch.zeros_like(x)
        return self.forward_net(x, torch.full((x.shape[0],), k / self.num_steps, device=x.device))

    def _b(self, x, k):
        return self.backward_net(x, torch.full((x.shape[0],), k / self.num_steps, device=x.device))

    @torch.no_grad()
    def sample_forward(self, x0: torch.Tensor, generator: Optional[torch.Generator] = None,
                       return_path: bool = False) -> torch.Tensor:
        """Run the forward chain from ``x0 [B, D]`` (samples of p_src); returns ``x_N`` or the path
        ``[N + 1, B, D]``."""
        x = self._check_start(x0, "x0")
        g, s = 1.0 / self.num_steps, self.sigma * math.sqrt(1.0 / self.num_steps)
        path = [x]
        for k in range(self.num_steps):
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + g * self._f(x, k) + s * z
            path.append(x)
        return torch.stack(path) if return_path else x

    @torch.no_grad()
    def sample_backward(self, x1: torch.Tensor, generator: Optional[torch.Generator] = None,
                        return_path: bool = False) -> torch.Tensor:
        """Run the backward chain from ``x1 [B, D]`` (samples of p_tgt); returns ``x_0`` or the path
        ``[N + 1, B, D]`` indexed by time (entry k is ``x_k``)."""
        if self.iterations_done == 0:
            raise RuntimeError("sample_backward: the backward drift is not fitted yet; call fit() first")
        x = self._check_start(x1, "x1")
        g, s = 1.0 / self.num_steps, self.sigma * math.sqrt(1.0 / self.num_steps)
        path = [x]
        for k in range(self.num_steps, 0, -1):
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + g * self._b(x, k) + s * z
            path.append(x)
        path.reverse()
        return torch.stack(path) if return_path else x

    # -- fitting -------------------------------------------------------------------------------------
    def _fit(self, net, inputs, targets, t_in, steps, batch, generator):
        if isinstance(net, _AffineDrift):
            return net.solve(inputs, targets, t_in)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        n = inputs.shape[0]
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch, n),), generator=generator, device=inputs.device)
            loss = ((net(inputs[idx], t_in[idx]) - targets[idx]) ** 2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss.detach())

    def fit(self, x_src: torch.Tensor, x_tgt: torch.Tensor, iterations: int = 5, train_steps: int = 500,
            batch_size: int = 256, num_paths: int = 1024, generator: Optional[torch.Generator] = None,
            callback: Optional[Callable] = None) -> "DSB":
        """Run ``iterations`` IPF iterations (each a backward then a forward fit of ``train_steps`` Adam steps on
        ``batch_size`` (state, step) pairs drawn from ``num_paths`` simulated trajectories; affine drifts are
        solved exactly on all of them instead). ``x_src [Ns, D]``,
        ``x_tgt [Nt, D]``: samples of the two marginals (paths start from random rows). ``callback(i, self)``
        is called after iteration i (1-based). ``generator`` (for the starting rows, the chains' noise and the
        minibatches) must live on the DSB's device. Returns ``self``."""
        xs = self._check_start(x_src, "x_src")
        xt = self._check_start(x_tgt, "x_tgt")
        iterations = _count(iterations, "iterations")
        train_steps = _count(train_steps, "train_steps")
        batch_size = _count(batch_size, "batch_size")
        num_paths = _count(num_paths, "num_paths")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable (iteration, dsb) or None, got {type(callback).__name__}")
        N, g = self.num_steps, 1.0 / self.num_steps
        ks = torch.arange(N, device=self.device)
        for _ in range(iterations):
            # backward drift from forward trajectories
            start = xs[torch.randint(0, xs.shape[0], (num_paths,), generator=generator, device=self.device)]
            path = self.sample_forward(start, generator=generator, return_path=True)  # [N+1, P, D]
            with torch.no_grad():
                xk, xk1 = path[:-1].reshape(-1, self.dim), path[1:].reshape(-1, self.dim)
                kk = ks.repeat_interleave(num_paths)
                fk = self._f_batch(xk, kk) - self._f_batch(xk1, kk)
                target = (xk - xk1) / g + fk
            self._fit(self.backward_net, xk1, target, (kk + 1).to(self.dtype) * g, train_steps, batch_size, generator)
            self.iterations_done += 1
            # forward drift from backward trajectories
            start = xt[torch.randint(0, xt.shape[0], (num_paths,), generator=generator, device=self.device)]
            path = self.sample_backward(start, generator=generator, return_path=True)
            with torch.no_grad():
                xk, xk1 = path[:-1].reshape(-1, self.dim), path[1:].reshape(-1, self.dim)
                kk = ks.repeat_interleave(num_paths)
                tb = (kk + 1).to(self.dtype) * g
                target = (xk1 - xk) / g + self.backward_net(xk1, tb) - self.backward_net(xk, tb)
            self.forward_is_reference = False
            self._fit(self.forward_net, xk, target, kk.to(self.dtype) * g, train_steps, batch_size, generator)
            if callback is not None:
                callback(self.iterations_done, self)
        return self

    def _f_batch(self, x, k):
        if self.forward_is_reference:
            return torch.zeros_like(x)
        return self.forward_net(x, k.to(self.dtype) / self.num_steps)
