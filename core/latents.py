"""Latent handling in one place: VAE shift/scale normalization and 2x2 token packing for FLUX-style transformers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PATCH = 2  # FLUX packs 2x2 latent patches into one token


@dataclass(frozen=True)
class LatentNormalization:
    """z = (E(x) - shift) * scale, as the VAE's own config defines it (FLUX: 0.1159, 0.3611)."""

    shift: float
    scale: float

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.shift) * self.scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.scale + self.shift


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latent -> (B, H/2 * W/2, 4C) tokens; token channel index is c*4 + dy*2 + dx."""
    b, c, h, w = z.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"latent size {h}x{w} is not a multiple of {PATCH}; pad the image to the model stride")
    z = z.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def token_grid(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed tokens (B, H/2 * W/2, D) of a height x width latent as the image they tile, (B, D, H/2, W/2): a
    channels-last view, no copy; convolutional velocity networks read them so. `grid_tokens` is its inverse."""
    batch, count, channels = tokens.shape
    rows, cols = height // PATCH, width // PATCH
    if count != rows * cols:
        raise ValueError(f"{count} tokens do not form the token grid of a {height}x{width} latent")
    return tokens.view(batch, rows, cols, channels).permute(0, 3, 1, 2)


def grid_tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, D, rows, cols) -> packed tokens (B, rows * cols, D)."""
    batch, channels = grid.shape[:2]
    return grid.permute(0, 2, 3, 1).reshape(batch, -1, channels)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack`: (B, H/2 * W/2, 4C) tokens -> (B, C, H, W) for a latent of height x width."""
    b, n, d = tokens.shape
    h, w = height // PATCH, width // PATCH
    if n != h * w or d % (PATCH * PATCH):
        raise ValueError(f"{n} tokens of width {d} do not form a {height}x{width} latent")
    z = tokens.view(b, h, w, d // (PATCH * PATCH), PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, d // (PATCH * PATCH), height, width)


def image_position_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """RoPE ids (H/2 * W/2, 3) of packed latent tokens: (0, row, column), row-major like `pack`."""
    rows = torch.arange(height // PATCH, device=device, dtype=dtype)
    cols = torch.arange(width // PATCH, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat([torch.zeros_like(grid[:, :1]), grid], dim=1)


def text_position_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Text tokens sit at position zero on every axis, as in FLUX."""
    return torch.zeros(length, 3, device=device, dtype=dtype)
