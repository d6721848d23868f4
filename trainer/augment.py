"""DrQ-v2 random-shift augmentation: pad by replicating edges, then crop back at a random offset."""

from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image of a batch [..., H, W, C] by up to ±pad pixels, independently.

    Clamping the source indices to the image is the same as replicate-padding and cropping,
    and works on uint8 directly: two gathers, no float copy, no padded copy.
    """
    if pad <= 0:
        return images
    lead, (h, w, c) = images.shape[:-3], images.shape[-3:]
    x = images.reshape(-1, h, w, c)
    n, device = x.shape[0], images.device
    dy = torch.randint(-pad, pad + 1, (n, 1), device=device)
    dx = torch.randint(-pad, pad + 1, (n, 1), device=device)
    rows = (torch.arange(h, device=device) + dy).clamp_(0, h - 1)  # [n, h]
    cols = (torch.arange(w, device=device) + dx).clamp_(0, w - 1)  # [n, w]
    x = x.gather(1, rows[:, :, None, None].expand(n, h, w, c))
    x = x.gather(2, cols[:, None, :, None].expand(n, h, w, c))
    return x.reshape(*lead, h, w, c)
