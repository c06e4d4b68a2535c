"""Token files: every document encoded once, written as one flat array per split, read back with numpy.memmap.

On disk, in the tokens folder of a (dataset, tokenizer) pair:
    train.bin, validation.bin   uint16 token ids (uint32 when the vocab has more than 65,536 tokens), documents
                                one after another, each followed by <|endoftext|>
    meta.json                   TokensMeta: tokenizer hash, dtype, counts of tokens, documents and bytes, source;
                                written last

Each file is written to a temporary name and renamed when complete, and meta.json comes last: a run that is
interrupted leaves no file that looks whole, and a folder with a matching meta.json is reused as it is.
The trainer reads (B, T+1) windows straight from the memmap (jobs/data/windows.py): no per-token Python work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError
from tqdm.auto import tqdm

from jobs import atomic
from jobs.errors import DataError, first_problem
from jobs.data.tokenizer import LoadedTokenizer

SPLITS = ("train", "validation")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class TokensMeta(BaseModel):
    """meta.json: what a tokens folder holds. This module writes and reads it; the others use its attributes."""

    model_config = ConfigDict(extra="ignore")
    dataset_id: str
    source: str
    tokenizer: str  # where the tokenizer was loaded from
    tokenizer_sha256: str
    vocab_size: int = Field(gt=0)
    eot_id: int | None
    dtype: Literal["uint16", "uint32"]
    tokens: dict[str, NonNegativeInt]  # per split
    documents: dict[str, NonNegativeInt]
    text_bytes: dict[str, NonNegativeInt]  # UTF-8 bytes of the documents, for bits per byte


@dataclass(frozen=True)
class SplitCount:
    """What encoding one split wrote: its tokens, documents and UTF-8 bytes of text."""

    tokens: int
    documents: int
    text_bytes: int


def encode_split(documents, tokenizer: LoadedTokenizer, path: Path, batch_size: int = 1000, desc: str = "") -> SplitCount:
    """Encode a split's documents into one flat file of ids, each document followed by <|endoftext|>, counting
    its bytes in the same pass. tokenizers encodes each batch on every core; encode_batch_fast gives the ids
    without the character offsets, which nothing here reads."""
    if tokenizer.eot_id is None:
        raise DataError(f"tokenizer {tokenizer.path} has no <|endoftext|> token to separate documents")
    dtype = token_dtype(tokenizer.vocab_size)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    n_tokens = n_bytes = 0
    try:
        with open(tmp, "wb") as out, tqdm(total=len(documents), desc=desc or f"encoding {path.name}", unit="doc") as bar:
            for batch in documents.iter(batch_size=batch_size):
                texts = batch["text"]
                ids: list[int] = []
                for encoding in tokenizer.tokenizer.encode_batch_fast(texts):
                    ids.extend(encoding.ids)
                    ids.append(tokenizer.eot_id)
                np.asarray(ids, dtype=dtype).tofile(out)
                n_tokens += len(ids)
                n_bytes += sum(len(text.encode()) for text in texts)
                bar.update(len(texts))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return SplitCount(n_tokens, len(documents), n_bytes)


def write_meta(folder: Path, meta: TokensMeta) -> None:
    atomic.write_text(folder / "meta.json", meta.model_dump_json(indent=2) + "\n")


def read_meta(folder: Path, tokenizer: LoadedTokenizer | None = None) -> TokensMeta | None:
    """The folder's meta.json if its token files are complete (and made by this tokenizer), else None."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = TokensMeta.model_validate_json(meta_path.read_bytes())
        counts = {split: meta.tokens[split] for split in SPLITS}
    except (ValidationError, KeyError) as error:  # bad JSON, a missing key, a wrong type
        problem = first_problem(error)[1] if isinstance(error, ValidationError) else f"no {error} split"
        raise DataError(f"{meta_path} is damaged ({problem[:120]}); delete its folder and run prepare-data "
                        f"again") from None
    if tokenizer is not None and meta.tokenizer_sha256 != tokenizer.sha256:
        raise DataError(
            f"{folder}: token files were made with tokenizer {meta.tokenizer_sha256[:12]}, "
            f"not {tokenizer.path} ({tokenizer.sha256[:12]}); delete the folder or use the matching tokenizer"
        )
    itemsize = np.dtype(meta.dtype).itemsize
    for split in SPLITS:
        path = folder / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != counts[split] * itemsize:
            return None
    return meta


def open_split(folder: Path, split: str, meta: TokensMeta) -> np.memmap:
    """A split's token file as a read-only memmap, by its meta record (read_meta checked it complete)."""
    return np.memmap(folder / f"{split}.bin", dtype=np.dtype(meta.dtype), mode="r")



def check_validation_fits(tokens: np.ndarray, seq_len: int) -> None:
    """The validation split must hold at least one window of seq_len + 1 tokens."""
    if len(tokens) < seq_len + 1:
        raise DataError(f"the validation split has {len(tokens):,} tokens, fewer than one window of "
                        f"model.max_seq_len + 1 = {seq_len + 1}: lower model.max_seq_len or give more validation text")
