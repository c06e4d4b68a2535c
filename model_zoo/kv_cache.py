"""Keys and values of the tokens seen so far, so generation computes each new token in O(T), not O(T^2).

Without a cache every generated token re-runs the whole prefix through the model. Attention is the only
place where tokens meet, and a past token's key and value never change (causality), so we keep them.
Both model implementations take a cache in forward() and ask it three things about the new tokens: their
positions (`positions`), which keys each of them may see (`attention_mask`), and, in each block, to store their
keys and values and hand back every key and value so far (`append`). generation.py drives them.

Each cache holds one buffer per block for keys and one for values, allocated once, at the first forward, for
(rows, K/V heads, max_seq_len, head size). A new token is a slice write into it; attention reads a view of the
filled part. Nothing is concatenated or copied as the sequence grows.

KVCache holds one sequence (or a batch of sequences that all have the same length). BatchedKVCache holds
sequences of different lengths side by side, each with its own length, so that a server runs one forward pass
for all of them (continuous batching: jobs/serving/engine.py).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_blocks: int, max_seq_len: int):
        self.capacity = max_seq_len  # slots per row: the model's context
        self.keys: list[torch.Tensor | None] = [None] * n_blocks  # each (B, H, capacity, D), allocated once
        self.values: list[torch.Tensor | None] = [None] * n_blocks
        self.length = 0  # tokens already in the cache; the next token's position

    def append(self, block_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys and values (B, H, T, D) of one block at slots length .. length + T - 1; return all
        of them so far, (B, H, length + T, D), as views of the buffers."""
        if self.keys[block_index] is None:
            self.keys[block_index], self.values[block_index] = _buffer(k, self.capacity), _buffer(v, self.capacity)
        end = self.length + k.shape[2]
        self.keys[block_index][:, :, self.length:end] = k
        self.values[block_index][:, :, self.length:end] = v
        return self.keys[block_index][:, :, :end], self.values[block_index][:, :, :end]

    def advance(self, n_tokens: int) -> None:
        """Called by the model once every block has appended this step's n_tokens."""
        self.length += n_tokens

    def positions(self, n_tokens: int, max_seq_len: int, device=None) -> torch.Tensor:
        """(T,) positions of n_tokens new tokens: they come after the cached ones. Refuses a context over
        max_seq_len (GPT-2's learned position table ends there, and so does the buffer)."""
        if self.length + n_tokens > min(max_seq_len, self.capacity):
            raise ValueError(f"sequence of {self.length + n_tokens} tokens is longer than max_seq_len={max_seq_len}")
        return torch.arange(self.length, self.length + n_tokens, device=device)

    def attention_mask(self, n_queries: int, device=None) -> torch.Tensor:
        """(T, length + T) booleans: which keys (cached, then new) each new token may see."""
        return causal_mask(n_queries, self.length, device)

    @staticmethod
    def positions_for(kv_cache: "KVCache | BatchedKVCache | None", n_tokens: int, max_seq_len: int,
                      device=None) -> torch.Tensor:
        """Positions of n_tokens new tokens, with a cache or without one (then 0 .. T-1)."""
        if kv_cache is None:
            if n_tokens > max_seq_len:
                raise ValueError(f"sequence of {n_tokens} tokens is longer than max_seq_len={max_seq_len}")
            return torch.arange(n_tokens, device=device)
        return kv_cache.positions(n_tokens, max_seq_len, device)


def causal_mask(n_queries: int, past: int, device=None) -> torch.Tensor:
    """(n_queries, past + n_queries) booleans: query i (at position past + i) may see keys 0 .. past + i."""
    query_positions = torch.arange(past, past + n_queries, device=device)[:, None]
    key_positions = torch.arange(past + n_queries, device=device)[None, :]
    return key_positions <= query_positions


def _buffer(like: torch.Tensor, capacity: int, rows: int | None = None) -> torch.Tensor:
    """Zeros of (rows, H, capacity, D) in `like`'s dtype and device (its B rows unless told)."""
    B, H, _, D = like.shape
    return torch.zeros(rows or B, H, capacity, D, dtype=like.dtype, device=like.device)


class BatchedKVCache:
    """Sequences of different lengths in one cache: row b holds `lengths[b]` tokens, from slot 0, and the next
    token of each row goes to its own slot, `lengths[b]`.

        slot:    0  1  2  3  4  5
        row 0:   a  b  c  .  .  .    next token of row 0: slot 3, position 3
        row 1:   p  q  r  s  t  .    next token of row 1: slot 5, position 5

    A row's slot is its token's position, and its queries see only its own filled slots, so each sequence
    computes what it would compute alone. The rows in use are always 0 .. rows - 1, so attention reads one view
    of the buffers: a sequence joins in the first free row after its prompt has run through a cache of its own
    (`add`: its prompt's keys and values copied in once; `for_prompts` prefills several together), and a sequence
    that leaves hands its row to the last one (`remove`: one row copied, not the cache)."""

    def __init__(self, n_blocks: int, max_seq_len: int, max_rows: int):
        self.capacity, self.max_rows = max_seq_len, max_rows
        self.keys: list[torch.Tensor | None] = [None] * n_blocks  # each (max_rows, H, capacity, D)
        self.values: list[torch.Tensor | None] = [None] * n_blocks
        self.lengths = torch.zeros(max_rows, dtype=torch.long)  # tokens in each row; rows in use: 0 .. rows - 1
        self.rows = 0
        self._this_step: tuple[int, torch.Tensor, int] | None = None  # see _step

    def positions(self, n_tokens: int, max_seq_len: int, device=None) -> torch.Tensor:
        """(B, T) positions of each row's new tokens: they follow the row's own cached ones."""
        positions, end = self._step(n_tokens)
        if self.rows and end > min(max_seq_len, self.capacity):
            raise ValueError(f"sequence of {end} tokens is longer than max_seq_len={max_seq_len}")
        return positions.to(device)

    def attention_mask(self, n_queries: int, device=None) -> torch.Tensor:
        """(B, 1, T, L) booleans, L = the longest row's length + T: query i of row b (at position lengths[b] + i)
        may see its row's slots 0 .. lengths[b] + i; the slots past a row's end hold nothing of it."""
        positions = self.positions(n_queries, self.capacity, device)  # (B, T)
        key_slots = torch.arange(self._step(n_queries)[1], device=device)  # (L,)
        return (key_slots[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, L), broadcast over heads

    def append(self, block_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's new keys and values (B, H, T, D) at its own slots; return (B, H, L, D) views."""
        B, T = k.shape[0], k.shape[2]
        if self.keys[block_index] is None:  # a cache for_prompts: allocated at its forward
            self.keys[block_index] = _buffer(k, self.capacity, self.max_rows)
            self.values[block_index] = _buffer(v, self.capacity, self.max_rows)
        slots = self.positions(T, self.capacity, k.device)  # (B, T): where row b's new tokens go
        rows = torch.arange(B, device=k.device)[:, None]  # (B, 1)
        # buffer[rows, :, slots] is (B, T, H, D): the advanced indices come first, the sliced head axis after
        self.keys[block_index][rows, :, slots] = k.transpose(1, 2)
        self.values[block_index][rows, :, slots] = v.transpose(1, 2)
        end = self._step(T)[1]
        return self.keys[block_index][:B, :, :end], self.values[block_index][:B, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.lengths[:self.rows] += n_tokens
        self._this_step = None

    def add(self, cache: "KVCache | BatchedKVCache", source_row: int = 0) -> int:
        """Take in one sequence of another cache (its prompt already run: a KVCache of one sequence, or a row of a
        BatchedKVCache that prefilled several prompts together) as the next row; returns the row's index."""
        n = cache.length if isinstance(cache, KVCache) else int(cache.lengths[source_row])
        if cache.keys[0] is None or not n:
            raise ValueError("add() takes a filled cache")
        if self.rows == self.max_rows:
            raise ValueError(f"the batch is full ({self.max_rows} rows)")
        if self.keys[0] is None:  # the first row ever: now the heads, head size, dtype and device are known
            self.keys = [_buffer(k, self.capacity, self.max_rows) for k in cache.keys]
            self.values = [_buffer(v, self.capacity, self.max_rows) for v in cache.values]
        row = self.rows
        for mine, theirs in zip(self.keys + self.values, cache.keys + cache.values):
            mine[row, :, :n] = theirs[source_row, :, :n]
        self.lengths[row] = n
        self.rows += 1
        self._this_step = None
        return row

    @classmethod
    def for_prompts(cls, n_blocks: int, prompt_lengths: list[int]) -> "BatchedKVCache":
        """An empty cache for prefilling these prompts together, as rows right-padded to the longest: run the
        (rows, longest) tokens through the model, then `trim` each row to its own prompt's length. A pad token comes
        after its row's prompt, so no prompt token sees it (causal mask), and the trim forgets it."""
        cache = cls(n_blocks, max(prompt_lengths), len(prompt_lengths))
        cache.rows = len(prompt_lengths)
        return cache

    def trim(self, lengths: list[int]) -> None:
        """Each row keeps its first lengths[b] tokens (the slots after them are free again)."""
        self.lengths[:self.rows] = torch.tensor(lengths)
        self._this_step = None

    def remove(self, row: int) -> None:
        """Free a row: the last row moves into it (so the rows in use stay 0 .. rows - 1)."""
        last = self.rows - 1
        if row != last:
            n = int(self.lengths[last])
            for buffer in self.keys + self.values:
                buffer[row, :, :n] = buffer[last, :, :n]
            self.lengths[row] = n
        self.lengths[last] = 0
        self.rows -= 1
        self._this_step = None

    def _step(self, n_tokens: int) -> tuple[torch.Tensor, int]:
        """This step's (B, T) positions of the new tokens, and the slots attention reads (the longest row's end after
        them). Every block of a forward asks, with the same lengths: computed once, until the lengths change."""
        if self._this_step is None or self._this_step[0] != n_tokens:
            positions = self.lengths[:self.rows, None] + torch.arange(n_tokens)[None, :]  # (B, T)
            end = int(self.lengths[:self.rows].max()) + n_tokens if self.rows else n_tokens
            self._this_step = (n_tokens, positions, end)
        return self._this_step[1], self._this_step[2]
