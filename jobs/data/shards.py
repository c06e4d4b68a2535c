"""Token files: every document encoded once, written as one flat array per split, read back with numpy.memmap.

On disk, in the tokens folder of a (dataset, tokenizer) pair:
    train.bin, validation.bin   uint16 token ids (uint32 when the vocab has more than 65,536 tokens), documents
                                one after another, each followed by <|endoftext|>
    meta.json                   tokenizer hash, dtype, token counts, source; written last

Each file is written to a temporary name and renamed when complete, and meta.json comes last: a run that is
interrupted leaves no file that looks whole, and a folder with a matching meta.json is reused as it is.
The trainer reads (B, T+1) windows straight from the memmap: no per-token Python work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from jobs import atomic
from jobs.errors import DataError
from jobs.data.tokenizer import LoadedTokenizer

SPLITS = ("train", "validation")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def encode_split(documents, tokenizer: LoadedTokenizer, path: Path, batch_size: int = 1000, desc: str = "") -> int:
    """Encode a split's documents in batches (tokenizers encodes each batch in parallel) into one flat file."""
    if tokenizer.eot_id is None:
        raise DataError(f"tokenizer {tokenizer.path} has no <|endoftext|> token to separate documents")
    dtype = token_dtype(tokenizer.vocab_size)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    n_tokens = 0
    try:
        with open(tmp, "wb") as out, tqdm(total=len(documents), desc=desc or f"encoding {path.name}", unit="doc") as bar:
            for batch in documents.iter(batch_size=batch_size):
                ids: list[int] = []
                for encoding in tokenizer.tokenizer.encode_batch(batch["text"]):
                    ids.extend(encoding.ids)
                    ids.append(tokenizer.eot_id)
                np.asarray(ids, dtype=dtype).tofile(out)
                n_tokens += len(ids)
                bar.update(len(batch["text"]))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n_tokens


def write_meta(folder: Path, meta: dict) -> None:
    atomic.write_text(folder / "meta.json", json.dumps(meta, indent=2) + "\n")


def read_meta(folder: Path, tokenizer: LoadedTokenizer | None = None) -> dict | None:
    """The folder's meta.json if its token files are complete (and made by this tokenizer), else None."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        counts = {split: int(meta["tokens"][split]) for split in SPLITS}
    except (ValueError, KeyError, TypeError) as error:  # bad JSON, a missing key, a wrong type
        raise DataError(f"{meta_path} is damaged ({type(error).__name__}: {str(error)[:120]}); delete its folder "
                        f"and run prepare-data again") from None
    if tokenizer is not None and meta.get("tokenizer_sha256") != tokenizer.sha256:
        raise DataError(
            f"{folder}: token files were made with tokenizer {meta.get('tokenizer_sha256', '?')[:12]}, "
            f"not {tokenizer.path} ({tokenizer.sha256[:12]}); delete the folder or use the matching tokenizer"
        )
    for split in SPLITS:
        path = folder / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != counts[split] * itemsize:
            return None
    return meta


def open_tokens(folder: Path, split: str, tokenizer: LoadedTokenizer | None = None) -> np.memmap:
    meta = read_meta(folder, tokenizer)
    if meta is None:
        raise DataError(f"no prepared token files in {folder}: run `python -m jobs prepare-data --config ...`")
    return np.memmap(folder / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")


# ------------------------------------------------------------------------------------------------------------
# Windows for training and validation


class TrainWindows:
    """Random (B, T+1) windows: input is [:, :-1], targets [:, 1:].

    Global batch number i (batch_size x world_size windows) is drawn from a generator seeded with (seed, i),
    and rank r takes rows r*B .. (r+1)*B of it. So the stream is reproducible, resumes from a saved position
    with no replay, and N ranks with batch B see exactly the windows one process with batch N*B would.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if len(tokens) < seq_len + 2:
            raise DataError(f"{len(tokens):,} training tokens are fewer than one window of {seq_len + 1}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = 0  # global batches served so far

    def next_batch(self) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.position])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size * self.world_size)
        self.position += 1
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return _gather(self.tokens, mine, self.seq_len)

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.seed = int(state["position"]), int(state["seed"])


def check_validation_fits(tokens: np.ndarray, seq_len: int) -> None:
    """The validation split must hold at least one window of seq_len + 1 tokens."""
    if len(tokens) < seq_len + 1:
        raise DataError(f"the validation split has {len(tokens):,} tokens, fewer than one window of "
                        f"model.max_seq_len + 1 = {seq_len + 1}: lower model.max_seq_len or give more validation text")


def validation_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None,
                       rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """A fixed ordered pass: non-overlapping windows from the start, the same on every call.

    With several ranks, rank r takes batches r, r + world_size, ... of that same sequence.
    """
    check_validation_fits(tokens, seq_len)
    n_windows = (len(tokens) - 1) // seq_len
    n_batches = max(1, n_windows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(rank, n_batches, world_size):
        starts = np.arange(b * batch_size, min((b + 1) * batch_size, n_windows)) * seq_len
        yield _gather(tokens, starts, seq_len)


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(windows)  # (B, T + 1)
