"""Rotary position embeddings (RoPE, Su et al. 2021), shared by both Llama implementations.

Instead of adding a learned position vector to the input, RoPE rotates each query and key in attention: the
features of a head are taken in pairs, and the pair i of the token at position p is turned by the angle
p * theta^(-2i/D). A rotation keeps lengths, and the dot product of two rotated vectors depends only on the
difference of their angles, so q . k sees how far apart two tokens are, not where they are. The pairs follow
Hugging Face's layout: feature i pairs with feature i + D/2 (what `rotate_half` swaps).
"""

from __future__ import annotations

import torch

from model_zoo.config import ModelConfig


def rope_angles(config: ModelConfig, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation at each position: (T, D) for positions (T,) shared by the batch, or
    (B, 1, T, D) for positions (B, T), one row per sequence (a batch of sequences of different lengths)."""
    D = config.head_size
    exponents = torch.arange(0, D, 2, device=positions.device, dtype=torch.float32) / D
    inv_freq = 1.0 / (config.rope_theta ** exponents)  # (D/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, D): each pair's angle, in both of its halves
    if positions.dim() == 2:
        angles = angles[:, None]  # (B, 1, T, D): the same angles for every head
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dimension: a 90-degree turn of every (x1_i, x2_i) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of x (B, heads, T, D) by its position's angle: x cos + rotate_half(x) sin."""
    return x * cos + rotate_half(x) * sin
