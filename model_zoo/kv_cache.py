"""Keys and values of the tokens seen so far, so generation computes each new token in O(T), not O(T^2).

Without a cache every generated token re-runs the whole prefix through the model. Attention is the only
place where tokens meet, and a past token's key and value never change (causality), so we keep them.
Both model implementations take a cache in forward() and ask it two things about the new tokens: their
positions (`positions`) and which keys each of them may see (`attention_mask`). generation.py drives them.

KVCache holds one sequence (or a batch of sequences that all have the same length). BatchedKVCache holds
sequences of different lengths side by side, so a server can run one forward pass for all of them
(continuous batching: jobs/serving/engine.py).
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

    def positions(self, n_tokens: int, max_seq_len: int, device=None) -> torch.Tensor:
        """(T,) positions of n_tokens new tokens: they come after the cached ones. Refuses a context over
        max_seq_len (GPT-2's learned position table ends there)."""
        if self.length + n_tokens > max_seq_len:
            raise ValueError(f"sequence of {self.length + n_tokens} tokens is longer than max_seq_len={max_seq_len}")
        return torch.arange(self.length, self.length + n_tokens, device=device)

    def attention_mask(self, n_queries: int, device=None) -> torch.Tensor:
        """(T, length + T) booleans: which keys (cached, then new) each new token may see."""
        return causal_mask(n_queries, self.length, device)

    @staticmethod
    def positions_for(kv_cache: "KVCache | None", n_tokens: int, max_seq_len: int, device=None) -> torch.Tensor:
        """Positions of n_tokens new tokens, with a cache or without one (then 0 .. T-1)."""
        return (kv_cache or KVCache(0)).positions(n_tokens, max_seq_len, device)


def causal_mask(n_queries: int, past: int, device=None) -> torch.Tensor:
    """(n_queries, past + n_queries) booleans: query i (at position past + i) may see keys 0 .. past + i."""
    query_positions = torch.arange(past, past + n_queries, device=device)[:, None]
    key_positions = torch.arange(past + n_queries, device=device)[None, :]
    return key_positions <= query_positions


class BatchedKVCache(KVCache):
    """Sequences of different lengths in one cache, aligned on the right: row b's first `pad[b]` slots are
    empty (left padding), so that every row's next token lands in the same slot, `length`, and one forward
    pass of (B, 1) new tokens serves them all.

        slot:    0  1  2  3  4  5
        row 0:   .  .  a  b  c  |  next token of row 0: slot 5, position 3
        row 1:   p  q  r  s  t  |  next token of row 1: slot 5, position 5

    A row's positions count from its own first token (slot - pad), and its queries never see the empty slots,
    so each sequence computes what it would compute alone. Rows join after their prompt has been run through a
    KVCache of their own (`add`) and leave when they finish (`keep`)."""

    def __init__(self, n_blocks: int):
        super().__init__(n_blocks)
        self.pad = torch.zeros(0, dtype=torch.long)  # (B,): empty slots at the start of each row

    @property
    def rows(self) -> int:
        return len(self.pad)

    def positions(self, n_tokens: int, max_seq_len: int, device=None) -> torch.Tensor:
        """(B, T) positions: the new tokens' slots, less each row's padding."""
        slots = torch.arange(self.length, self.length + n_tokens, device=device)  # (T,)
        positions = slots[None, :] - self.pad.to(device)[:, None]  # (B, T)
        if positions.numel() and int(positions.max()) >= max_seq_len:
            raise ValueError(f"sequence of {int(positions.max()) + 1} tokens is longer than max_seq_len={max_seq_len}")
        return positions

    def attention_mask(self, n_queries: int, device=None) -> torch.Tensor:
        """(B, 1, T, length + T): the causal mask, less each row's empty slots (broadcast over the heads)."""
        key_slots = torch.arange(self.length + n_queries, device=device)[None, None, :]  # (1, 1, length + T)
        filled = key_slots >= self.pad.to(device)[:, None, None]  # (B, 1, length + T)
        return (causal_mask(n_queries, self.length, device)[None] & filled)[:, None]  # (B, 1, T, length + T)

    def add(self, cache: KVCache) -> int:
        """Take in a one-sequence cache (its prompt already run); returns its row index."""
        if cache.keys[0] is None or cache.keys[0].shape[0] != 1:
            raise ValueError("add() takes a filled cache of one sequence")
        grow = max(cache.length - self.length, 0)  # the new row is longer: pad every row already here
        if self.rows and grow:
            self.keys = [_pad_left(k, grow) for k in self.keys]
            self.values = [_pad_left(v, grow) for v in self.values]
        self.pad = self.pad + grow
        self.length += grow
        new_pad = self.length - cache.length  # the new row is shorter: pad it
        if self.rows:
            self.keys = [torch.cat([k, _pad_left(new, new_pad)]) for k, new in zip(self.keys, cache.keys)]
            self.values = [torch.cat([v, _pad_left(new, new_pad)]) for v, new in zip(self.values, cache.values)]
        else:
            self.keys, self.values = list(cache.keys), list(cache.values)
        self.pad = torch.cat([self.pad, torch.tensor([new_pad])])
        return self.rows - 1

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then drop the slots that every remaining row leaves empty."""
        index = torch.tensor(rows, dtype=torch.long)
        self.pad = self.pad[index]
        if not rows:
            self.keys, self.values, self.length = [None] * len(self.keys), [None] * len(self.values), 0
            return
        device = self.keys[0].device
        drop = int(self.pad.min())
        self.keys = [k.index_select(0, index.to(device))[:, :, drop:] for k in self.keys]
        self.values = [v.index_select(0, index.to(device))[:, :, drop:] for v in self.values]
        self.pad -= drop
        self.length -= drop


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, n + L, D) with n zero slots in front (they are never attended to)."""
    return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t
