"""Schrödinger bridges between two 2-D Gaussians with ``diffcore.bridge`` (book §7.2–7.5).

1. **Closed form** (Bunne et al. 2023): the bridge for the reference ``σ w_t`` on [0, 1], its coupling
   covariance ``C = Cov(x0, x1)``.
2. **Exact IPF** in the Gaussian family (``bridge.gaussian_ipf``): the distance of each iterate's coupling to
   the closed form, falling linearly to float64 rounding.
3. **DSB** (De Bortoli et al. 2021) with small MLP drifts: per IPF iteration, the forward chain's terminal
   mean/covariance against the target and its (x0, x1) cross-covariance against ``C``.
4. **§7.5**: the flow of linear interpolation with the independent coupling pushes one Gaussian onto the
   other but is not the Brenier map (its matrix is not symmetric) and costs more than W2².

    python examples/schrodinger_bridge.py [--quick] [--out DIR]

writes ``bridge.png`` (DSB forward paths) and ``figures.json`` to ``--out`` (default: a new temporary folder).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import torch

from diffcore import bridge

CONFIGS = {"quick": {"iterations": 3, "train_steps": 200, "num_steps": 20, "paths": 512, "n": 2000},
           "full": {"iterations": 8, "train_steps": 1500, "num_steps": 40, "paths": 4096, "n": 20000}}
F64 = torch.float64
M0, M1 = torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([1.0, 1.0], dtype=F64)
S0 = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=F64)
S1 = torch.tensor([[0.3, -0.1], [-0.1, 0.6]], dtype=F64)
SIGMA = 0.8


def paths_png(path: pathlib.Path, traj: torch.Tensor) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 5))
    for b in range(min(64, traj.shape[1])):
        ax.plot(traj[:, b, 0], traj[:, b, 1], color="0.6", lw=0.5)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=2, label="x0 ~ source")
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, label="x1 (forward chain)")
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    ax.set_title("DSB forward paths", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args()
    cfg = CONFIGS["quick" if args.quick else "full"]
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="diffcore_sb_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # 64-wide MLPs on 2-D data: extra intra-op threads only add hand-offs
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    t_start = time.perf_counter()

    sb = bridge.gaussian_sb(M0, S0, M1, S1, SIGMA)
    C = sb.cross_cov
    print(f"closed-form cross-covariance C:\n{C}")

    steps = bridge.gaussian_ipf(M0, S0, M1, S1, SIGMA, iterations=30)
    ipf_err = [float((s.cov[:2, 2:] - C).abs().max()) for s in steps]
    print("exact IPF, max |C_n - C|:", " ".join(f"{e:.1e}" for e in ipf_err[:8]), "...", f"{ipf_err[-1]:.1e}")

    L0, L1 = torch.linalg.cholesky(S0), torch.linalg.cholesky(S1)
    xs = (M0 + torch.randn(cfg["n"], 2, generator=gen, dtype=F64) @ L0.T).float()
    xt = (M1 + torch.randn(cfg["n"], 2, generator=gen, dtype=F64) @ L1.T).float()
    dsb = bridge.DSB(2, sigma=SIGMA, num_steps=cfg["num_steps"], hidden=64, lr=2e-3)
    history = []

    def report(i, d):
        x1 = d.sample_forward(xs, generator=gen).double()
        x0 = xs.double()
        cross = ((x0 - x0.mean(0)).T @ (x1 - x1.mean(0))) / x0.shape[0]
        row = {"iteration": i, "mean_error": float((x1.mean(0) - M1).norm()),
               "cov_error": float((torch.cov(x1.T) - S1).abs().max()), "cross_error": float((cross - C).abs().max())}
        history.append(row)
        print(f"DSB iteration {i}: |mean - m1| = {row['mean_error']:.3f}, max|cov - S1| = {row['cov_error']:.3f}, "
              f"max|Cov(x0, x1) - C| = {row['cross_error']:.3f}")

    dsb.fit(xs, xt, iterations=cfg["iterations"], train_steps=cfg["train_steps"], batch_size=512,
            num_paths=cfg["paths"], generator=gen, callback=report)
    paths_png(out / "bridge.png", dsb.sample_forward(xs[:512], generator=gen, return_path=True))

    A, _, w2 = bridge.gaussian_ot_map(M0, S0, M1, S1)
    M, _ = bridge.gaussian_linear_flow_map(M0, S0, M1, S1)
    E = M - torch.eye(2, dtype=F64)
    flow_cost = float(torch.trace(E @ S0 @ E.T) + ((M1 - M0) ** 2).sum())
    print(f"W2^2 = {w2:.4f}; linear-interpolation flow map cost = {flow_cost:.4f}; "
          f"asymmetry of its matrix = {float((M - M.T).abs().max()):.3f}")

    fig = {"ipf_errors": ipf_err, "dsb": history, "reference_mean_error": float((M1 - M0).norm()),
           "w2": w2, "flow_cost": flow_cost, "flow_asymmetry": float((M - M.T).abs().max()),
           "ot_map_asymmetry": float((A - A.T).abs().max()), "seconds": time.perf_counter() - t_start}
    (out / "figures.json").write_text(json.dumps(fig, indent=1))
    print(f"wrote {out / 'figures.json'} and {out / 'bridge.png'} in {fig['seconds']:.1f} s")


if __name__ == "__main__":
    main()
