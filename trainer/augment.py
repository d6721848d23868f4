"""DrQ-v2 random-shift augmentation: pad by replicating edges, then crop back at a random offset."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image of a uint8 batch [..., H, W, C] by up to ±pad pixels, independently."""
    if pad <= 0:
        return images
    lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
    x = images.reshape(-1, h, w, c).permute(0, 3, 1, 2).float()
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    n = x.shape[0]
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=images.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=images.device)
    rows = (torch.arange(h, device=images.device) + dy)[:, None, :, None]  # [n, 1, h, 1]
    cols = (torch.arange(w, device=images.device) + dx)[:, None, None, :]  # [n, 1, 1, w]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    shifted = padded[batch, channel, rows, cols]  # [n, c, h, w]
    return shifted.permute(0, 2, 3, 1).to(images.dtype).reshape(*lead, h, w, c)
