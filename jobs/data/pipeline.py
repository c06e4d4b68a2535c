"""From a config's `data` section to token files, in one straight line: documents -> tokenizer -> token files.

    prepare(config)      what every job calls: the one reuse check (existing), then the missing stages in order:
                         documents (sources.py) -> train_tokenizer -> write_tokens

Where things live is computed once, from the config, into a DataLayout:

    <assets_dir>/hf-cache/                                datasets' and huggingface_hub's caches
    <assets_dir>/tokenizers/<dataset_id>-bpe<V>/          tokenizer.json + manifest.json (tokenizer: bpe)
    <assets_dir>/tokens/<dataset_id>/<tokenizer sha[:12]>/ train.bin, validation.bin, meta.json (shards.py)

dataset_id is the dataset's name plus a hash of everything that decides its documents (source, files with
their sizes and modification times, text field, separator, subset size, hold-out fraction and seed).
The stages (download, train_tokenizer, write_tokens) do their work without checking first: prepare() decides
what is missing, once, and the `prepare-data STEP` commands go through it too.
"""

from __future__ import annotations

import contextlib

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.config import DataConfig
from jobs.data import shards, sources
from jobs.data.tokenizer import SPECIAL_TOKENS, LoadedTokenizer, analyze, load_tokenizer, save_tokenizer, train_bpe
from jobs.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataLayout:
    """One data config's identity and every path derived from it, computed once (the files are hashed and
    stat-ed here, and nowhere else)."""

    config: DataConfig
    dataset_id: str

    @classmethod
    def of(cls, config: DataConfig) -> "DataLayout":
        identity: dict = {
            "source": sources.describe(config), "text_field": config.text_field, "separator": config.separator,
            "subset_size": config.subset_size, "val_fraction": config.val_fraction, "seed": config.seed,
            "document_rules": sources.DOCUMENT_RULES_VERSION, "special_tokens": SPECIAL_TOKENS,
        }
        # only where set, so that every dataset made before these two existed keeps its id (and its token files)
        if config.skip_documents:
            identity["skip_documents"] = config.skip_documents
        if config.val_separator != config.separator:
            identity["val_separator"] = config.val_separator
        if config.dataset == "local":
            files = (config.train_files or []) + (config.val_files or [])
            identity["files"] = [_file_identity(Path(f)) for f in files]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        return cls(config, f"{config.dataset}-{digest}")

    @property
    def cache_dir(self) -> Path:
        return Path(self.config.assets_dir) / "hf-cache"

    @property
    def tokenizer_location(self) -> Path | str:
        """The folder of the BPE trained for this dataset, or the name of a ready-made tokenizer ("gpt2")."""
        if self.config.tokenizer == "bpe":
            return Path(self.config.assets_dir) / "tokenizers" / f"{self.dataset_id}-bpe{self.config.vocab_size}"
        return self.config.tokenizer

    def tokens_dir(self, tokenizer: LoadedTokenizer) -> Path:
        return Path(self.config.assets_dir) / "tokens" / self.dataset_id / tokenizer.sha256[:12]


def _file_identity(path: Path) -> list:
    path = sources.require_file(path)
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


@dataclass(frozen=True)
class PreparedData:
    """Token files ready to train on: their tokenizer, folder and meta.json record."""

    tokenizer: LoadedTokenizer
    tokens_dir: Path
    meta: shards.TokensMeta

    def open(self, split: str):
        """The split's tokens as a read-only memmap (checked complete when this record was made)."""
        return shards.open_split(self.tokens_dir, split, self.meta)

    def bits_per_byte(self, loss: float, split: str = "validation") -> float:
        """Loss in nats per token -> bits per UTF-8 byte of the split's text, which no tokenizer choice moves."""
        return bits_per_byte(loss, self.meta.tokens[split], self.meta.text_bytes[split])


def bits_per_byte(loss: float, n_tokens: float, n_bytes: float) -> float:
    """Mean loss (nats/token) over n_tokens tokens that encode n_bytes bytes of text, in bits per byte."""
    return loss * n_tokens / math.log(2) / n_bytes


# ------------------------------------------------------------------------------------------------------------
# The pipeline: one reuse check, then the missing stages top to bottom


def prepare(config: DataConfig, tokenizer: LoadedTokenizer | None = None) -> PreparedData:
    """Everything the config needs, reusing what exists; documents are loaded only if something is missing.
    A given tokenizer (a checkpoint's own, for evaluate) is used instead of the config's: never trained or replaced."""
    layout = DataLayout.of(config)
    tokenizer, prepared = existing(layout, tokenizer)
    if prepared is not None:
        return prepared
    with refused_writes(config):
        documents = sources.load_documents(config, layout.cache_dir)
        if tokenizer is None:
            tokenizer = train_tokenizer(layout, documents)
        return write_tokens(layout, tokenizer, documents)


@contextlib.contextmanager
def refused_writes(config: DataConfig):
    """A place under the assets folder that cannot be written (read-only, a file where a folder goes, a full disk):
    one line naming it, not a traceback. (Everything is written under temporary names first: nothing half-made is
    left looking whole.)"""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            raise
        raise DataError(f"cannot write {error.filename} ({error.strerror}): data.assets_dir "
                        f"{config.assets_dir} must be a folder this job can write in") from None


def prepare_tokenizer(config: DataConfig) -> LoadedTokenizer:
    """Only the tokenizer (prepare-data train-tokenizer), by the same reuse check."""
    layout = DataLayout.of(config)
    tokenizer, _ = existing(layout)
    if tokenizer is not None:
        log.info(f"tokenizer: reusing {tokenizer.path} (vocab {tokenizer.vocab_size:,})")
        return tokenizer
    with refused_writes(config):
        return train_tokenizer(layout, sources.load_documents(config, layout.cache_dir))


def existing(layout: DataLayout, tokenizer: LoadedTokenizer | None = None
             ) -> tuple[LoadedTokenizer | None, PreparedData | None]:
    """The one reuse check: the tokenizer if it exists (or the one given), and the token files if they are complete
    and were made by that tokenizer."""
    location = layout.tokenizer_location
    if tokenizer is None and (layout.config.tokenizer != "bpe" or (Path(location) / "manifest.json").is_file()):
        tokenizer = load_tokenizer(location)
    if tokenizer is None:
        return None, None
    folder = layout.tokens_dir(tokenizer)
    meta = shards.read_meta(folder, tokenizer)
    return tokenizer, (PreparedData(tokenizer, folder, meta) if meta is not None else None)


def download(layout: DataLayout) -> None:
    folder = sources.download(layout.config, layout.cache_dir)
    log.info(f"downloaded to {folder}" if folder else f"{layout.config.dataset}: nothing to download (local or streamed)")


def train_tokenizer(layout: DataLayout, documents) -> LoadedTokenizer:
    """A byte-level BPE of data.vocab_size trained on the training documents, saved where the layout says."""
    config, location = layout.config, layout.tokenizer_location
    train = documents["train"]
    log.info(f"tokenizer: training a byte-level BPE of {config.vocab_size:,} on {len(train):,} documents")
    start = time.perf_counter()
    texts = (batch["text"] for batch in train.iter(batch_size=1000))
    # tokenizers' own progress bars print blank lines on standard output when it is not a terminal: only on one
    tokenizer = train_bpe((t for batch in texts for t in batch), config.vocab_size, length=len(train),
                          show_progress=sys.stdout.isatty())
    loaded = save_tokenizer(tokenizer, Path(location), source=sources.describe(config))
    log.info(f"tokenizer: saved {location} in {time.perf_counter() - start:.1f} s")
    if loaded.vocab_size < config.vocab_size:
        log.warning(f"tokenizer: {loaded.vocab_size:,} tokens, not the {config.vocab_size:,} of data.vocab_size: the text "
              f"has no more pairs to merge (the model's vocab_size follows the tokenizer)")
    return loaded


def write_tokens(layout: DataLayout, tokenizer: LoadedTokenizer, documents) -> PreparedData:
    """Each split encoded in one pass that also counts its text's bytes; meta.json written last."""
    folder = layout.tokens_dir(tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {split: shards.encode_split(documents[split], tokenizer, folder / f"{split}.bin",
                                         desc=f"encoding {split}") for split in shards.SPLITS}
    meta = shards.TokensMeta(
        dataset_id=layout.dataset_id, source=sources.describe(layout.config), tokenizer=str(tokenizer.path),
        tokenizer_sha256=tokenizer.sha256, vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id,
        dtype=shards.token_dtype(tokenizer.vocab_size).name,
        tokens={split: count.tokens for split, count in counts.items()},
        documents={split: count.documents for split, count in counts.items()},
        text_bytes={split: count.text_bytes for split, count in counts.items()},
    )
    shards.write_meta(folder, meta)
    log.info(f"tokens: wrote {folder} ({meta.tokens['train']:,} train, {meta.tokens['validation']:,} validation)")
    return PreparedData(tokenizer, folder, meta)


def analyze_data(config: DataConfig, subset: int = 5000) -> str:
    documents = sources.load_documents(config, DataLayout.of(config).cache_dir)["train"]
    texts = list(documents.select(range(min(subset, len(documents))))["text"])
    report, _ = analyze(texts)
    return f"dataset {sources.describe(config)} (first {len(texts):,} training documents)\n{report}"
