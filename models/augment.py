"""Training-set augmentation as in the SNN2ANN paper's CIFAR / Tiny-ImageNet recipe:
random crop with zero padding (4 pixels) and random horizontal flip (p = 0.5).

Seeded: every random draw comes from the ``torch.Generator`` passed in (kept on the CPU
and saved in the checkpoint's train state, so ``--resume`` continues the same sequence).
Vectorised over the batch; works on any device.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """x (B, C, H, W) -> randomly cropped (after zero padding) and flipped copy."""
    B, C, H, W = x.shape
    oy = torch.randint(0, 2 * padding + 1, (B,), generator=gen)
    ox = torch.randint(0, 2 * padding + 1, (B,), generator=gen)
    fl = torch.rand(B, generator=gen) < 0.5 if flip else torch.zeros(B, dtype=torch.bool)
    dev = x.device
    xp = F.pad(x, (padding, padding, padding, padding))
    rows = (oy[:, None] + torch.arange(H)[None]).to(dev)  # (B, H)
    cols = ox[:, None] + torch.arange(W)[None]  # (B, W)
    cols = torch.where(fl[:, None], cols.flip(1), cols).to(dev)
    b = torch.arange(B, device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
