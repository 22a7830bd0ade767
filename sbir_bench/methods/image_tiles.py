"""Tile shuffling of image batches, shared by SpLIP's conditional jigsaw and CLIP-AT's patch shuffling."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shuffle_tiles(images: torch.Tensor, permutations: torch.Tensor, grid: int) -> torch.Tensor:
    """Rearrange each image's g x g tiles: output tile i shows input tile permutations[b, i]."""
    b, c, h, w = images.shape
    th, tw = h // grid, w // grid
    cropped = images[:, :, : th * grid, : tw * grid]
    tiles = cropped.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)
    tiles = tiles[torch.arange(b, device=images.device)[:, None], permutations.to(images.device)]
    out = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, th * grid, tw * grid)
    if out.shape[-2:] != images.shape[-2:]:
        out = F.pad(out, (0, w - out.shape[-1], 0, h - out.shape[-2]))
    return out
