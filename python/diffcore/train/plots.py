"""PNG figures of samples: 2-D scatter plots and image grids, drawn with matplotlib's Agg canvas.

The figures are built on ``matplotlib.figure.Figure`` with a ``FigureCanvasAgg`` directly, never
through ``pyplot``: that renders without a display and leaves the user's global backend alone.
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Optional, Sequence, Union

import torch

__all__ = ["scatter_png", "image_grid_png"]


def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (matplotlib is heavy)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _write(fig, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


def scatter_png(path: Union[str, os.PathLike], samples, reference=None, title: str = "",
                labels: Sequence[str] = ("samples", "data"), lim: Optional[float] = None) -> pathlib.Path:
    """Scatter of 2-D ``samples [n, 2]`` (and ``reference [m, 2]`` beside it, same axes) to ``path``."""
    samples = torch.as_tensor(samples).detach().float().cpu()
    if samples.dim() != 2 or samples.shape[1] != 2:
        raise ValueError(f"samples: expected a [n, 2] tensor, got shape {tuple(samples.shape)}")
    panels = [(samples, labels[0], "tab:blue")]
    if reference is not None:
        reference = torch.as_tensor(reference).detach().float().cpu()
        if reference.dim() != 2 or reference.shape[1] != 2:
            raise ValueError(f"reference: expected a [m, 2] tensor, got shape {tuple(reference.shape)}")
        panels.append((reference, labels[1], "tab:orange"))
    if lim is None:
        both = torch.cat([p[0] for p in panels])
        finite = both[torch.isfinite(both).all(dim=1)]
        lim = 1.1 * float(finite.abs().quantile(0.995)) if finite.numel() else 1.0
    fig = _figure(4.0 * len(panels), 4.3)
    for i, (pts, name, color) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5, color=color, linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{name} (n={pts.shape[0]})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _write(fig, path)


def image_grid_png(path: Union[str, os.PathLike], images, nrow: Optional[int] = None, value_range=(-1.0, 1.0),
                   title: str = "") -> pathlib.Path:
    """Grid of images ``[n, C, H, W]`` (C = 1 grey or 3 RGB, values in ``value_range``) to ``path``."""
    images = torch.as_tensor(images).detach().float().cpu()
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected [n, 1 or 3, H, W], got shape {tuple(images.shape)}")
    n, C, H, W = images.shape
    if n == 0:
        raise ValueError("images: expected at least one image")
    lo, hi = value_range
    images = ((images - lo) / (hi - lo)).clamp(0, 1)
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(C, ncol * (H + 1) + 1, nrow * (W + 1) + 1)
    for k in range(n):
        r, c = divmod(k, nrow)
        grid[:, 1 + r * (H + 1): 1 + r * (H + 1) + H, 1 + c * (W + 1): 1 + c * (W + 1) + W] = images[k]
    fig = _figure(max(2.0, nrow * W / 16), max(2.0, ncol * H / 16) + (0.3 if title else 0))
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    ax.imshow(grid[0].numpy() if C == 1 else grid.permute(1, 2, 0).numpy(), cmap="gray" if C == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    return _write(fig, path)
