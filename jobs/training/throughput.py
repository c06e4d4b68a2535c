"""Measured hardware speed, the denominator of model-FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_matmul_flops(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Achieved FLOP/s of a square n x n matmul (best of `repeats`): the practical peak for this dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
