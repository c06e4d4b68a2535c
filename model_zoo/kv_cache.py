"""Keys and values of the tokens seen so far, so generation computes each new token in O(T), not O(T^2).

Without a cache every generated token re-runs the whole prefix through the model. Attention is the only
place where tokens meet, and a past token's key and value never change (causality), so we keep them.
Both model implementations take a KVCache in forward(); generation.py drives them the same way.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_blocks: int):
        self.keys: list[torch.Tensor | None] = [None] * n_blocks  # each (B, H, length, D)
        self.values: list[torch.Tensor | None] = [None] * n_blocks
        self.length = 0  # tokens already in the cache; the next token's position

    def append(self, block_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys and values (B, H, T, D) of one block; return all of them (B, H, length + T, D)."""
        if self.keys[block_index] is not None:
            k = torch.cat([self.keys[block_index], k], dim=2)
            v = torch.cat([self.values[block_index], v], dim=2)
        self.keys[block_index], self.values[block_index] = k, v
        return k, v

    def advance(self, n_tokens: int) -> None:
        """Called by the model once every block has appended this step's n_tokens."""
        self.length += n_tokens

    @staticmethod
    def first_position(kv_cache: "KVCache | None", n_tokens: int, max_seq_len: int) -> int:
        """Position of the first of n_tokens new tokens (after what the cache holds; 0 without a cache), once the
        context they make is known to fit the model's max_seq_len."""
        start = kv_cache.length if kv_cache is not None else 0
        if start + n_tokens > max_seq_len:
            raise ValueError(f"sequence of {start + n_tokens} tokens is longer than max_seq_len={max_seq_len}")
        return start

    @staticmethod
    def causal_mask(n_queries: int, past: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(n_queries, past + n_queries) booleans: query i (at position past + i) may see keys 0 .. past + i."""
        query_positions = torch.arange(past, past + n_queries, device=device)[:, None]
        key_positions = torch.arange(past + n_queries, device=device)[None, :]
        return key_positions <= query_positions
