"""Batches: the one kind every way of training and validating reads, whatever the data.

A batch is (tokens, mask), each (B, T+1): the model reads tokens[:, :-1] and predicts tokens[:, 1:], and a
prediction counts in the loss only where mask[:, 1:] is True. Text scores every token (its mask is all True);
a conversation only the assistant's (jobs/data/chat_data.py).

Batches are cut from a window source, which says how many windows it can give and gives those asked for:
    TokenStream   a flat stream of token ids (prepared text): a window may start at any token
    PackedChat    conversations packed into rows of T+1 tokens with their masks (jobs/data/conversations.py)
    PackedPairs   preference pairs, two rows each (jobs/data/preference_data.py): a draw picks pairs
`TrainWindows` draws random batches from any of them; `validation_batches` is a fixed ordered pass over any.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Protocol

import numpy as np
import torch

from jobs.errors import DataError


class Batch(NamedTuple):
    tokens: torch.Tensor  # (B, T+1) int64 token ids
    mask: torch.Tensor  # (B, T+1) bool: True where the token is learnt (scored as a target)
    reference: torch.Tensor | None = None  # (B,) preference pairs only: the reference model's log p of each reply

    @property
    def scored(self) -> int:
        """Predictions this batch's loss is a mean over: targets (tokens[:, 1:]) where the mask is True."""
        return int(self.mask[:, 1:].sum())

    def to(self, device: str) -> "Batch":
        return Batch(*(part.to(device, non_blocking=True) if part is not None else None for part in self))


class WindowSource(Protocol):
    """What batches are cut from (TokenStream, PackedChat, PackedPairs)."""

    def random_starts(self) -> int:
        """How many windows a random draw picks from (a draw is an index below this)."""

    def fixed_windows(self) -> int:
        """How many windows a fixed pass (validation) goes through, in order."""

    def take(self, indices: np.ndarray, fixed: bool = False) -> Batch:
        """The windows at these indices (of a random draw, or of the fixed pass), as one batch."""

    def why_empty(self) -> str:
        """What a random draw has nothing to pick from, said for the error."""


class TokenStream:
    """Prepared text: one flat array of token ids, documents end to end. Random windows start at any token;
    the fixed pass is non-overlapping windows from the start."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len

    def random_starts(self) -> int:
        return max(0, len(self.tokens) - self.seq_len - 1)

    def fixed_windows(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def take(self, indices: np.ndarray, fixed: bool = False) -> Batch:
        starts = indices * self.seq_len if fixed else indices
        windows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        tokens = torch.from_numpy(windows)  # (B, T + 1)
        return Batch(tokens, torch.ones_like(tokens, dtype=torch.bool))  # every token is learnt

    def why_empty(self) -> str:
        return f"{len(self.tokens):,} training tokens are fewer than one window of {self.seq_len + 1}"


class TrainWindows:
    """Random batches of windows from a source, reproducible and resumable.

    Global batch number i (batch_size x world_size windows) is drawn from a generator seeded with (seed, i),
    and rank r takes rows r*B .. (r+1)*B of it. So the stream resumes from a saved position with no replay, and
    N ranks with batch B see exactly the windows one process with batch N*B would.
    """

    def __init__(self, source: WindowSource, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if source.random_starts() < 1:
            raise DataError(source.why_empty())
        self.source, self.batch_size = source, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = 0  # global batches served so far

    def next_batch(self) -> Batch:
        rng = np.random.default_rng([self.seed, self.position])
        indices = rng.integers(0, self.source.random_starts(), size=self.batch_size * self.world_size)
        self.position += 1
        return self.source.take(indices[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.seed = int(state["position"]), int(state["seed"])


def validation_batches(source: WindowSource, batch_size: int, max_batches: int | None = None, rank: int = 0,
                       world_size: int = 1) -> Iterator[Batch]:
    """A fixed ordered pass, the same on every call: the source's fixed windows in batches (the last one may be
    short), at most max_batches. With several ranks, rank r takes batches r, r + world_size, ... of that pass."""
    n_windows = source.fixed_windows()
    n_batches = -(-n_windows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(rank, n_batches, world_size):
        yield source.take(np.arange(b * batch_size, min((b + 1) * batch_size, n_windows)), fixed=True)
