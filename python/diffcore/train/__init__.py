"""Training: :class:`Trainer` (AdamW, EMA, clipping, mixed precision, exact resume, DDP under torchrun),
atomic checkpoints, metrics files and PNG sample figures.

```python
import torch, diffcore
from diffcore import models, losses, train
torch.manual_seed(0)
net = models.MLP(2, width=128, depth=3)
loss = losses.get("cfm", schedule="rectified_flow")
trainer = train.Trainer(net, loss, "two_moons", batch_size=256, lr=2e-3, out_dir="runs/moons", ckpt_every=500)
trainer.fit(2000)                        # resume: Trainer(...same...).load("runs/moons/checkpoint.pt").fit(2000)
x = trainer.sample(1000, solver="heun", steps=10)
```
"""
from __future__ import annotations

from . import checkpoint, distributed, plots, quality
from .checkpoint import CheckpointError
from .ema import EMA
from .trainer import NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = ["Trainer", "EMA", "NonFiniteLossError", "TrainingInterrupted", "CheckpointError", "checkpoint", "distributed", "plots", "quality"]
