"""From a config's `data` section to token files: download, train tokenizer, (analyze), pretokenize.

Where things live is derived from the config, so every job finds them with no extra flag:

    <assets_dir>/hf-cache/                                datasets' and huggingface_hub's caches
    <assets_dir>/tokenizers/<dataset_id>-bpe<V>/          tokenizer.json + manifest.json (tokenizer: bpe)
    <assets_dir>/tokens/<dataset_id>/<tokenizer sha[:12]>/ train.bin, validation.bin, meta.json

dataset_id is the dataset's name plus a hash of everything that decides its documents (source, files with
their sizes and modification times, text field, separator, subset size, hold-out fraction and seed).
Each step is a no-op when its output already exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.config import DataConfig
from jobs.data import shards, sources
from jobs.data.tokenizer import SPECIAL_TOKENS, LoadedTokenizer, analyze, load_tokenizer, save_tokenizer, train_bpe


@dataclass(frozen=True)
class PreparedData:
    tokenizer: LoadedTokenizer
    tokens_dir: Path
    meta: dict

    def bits_per_byte(self, loss: float, split: str = "validation") -> float:
        """Loss in nats per token -> bits per UTF-8 byte of the split's text, which no tokenizer choice moves."""
        return bits_per_byte(loss, self.meta["tokens"][split], self.meta["text_bytes"][split])


def bits_per_byte(loss: float, n_tokens: float, n_bytes: float) -> float:
    """Mean loss (nats/token) over n_tokens tokens that encode n_bytes bytes of text, in bits per byte."""
    return loss * n_tokens / math.log(2) / n_bytes


def dataset_id(config: DataConfig) -> str:
    identity: dict = {
        "source": sources.describe(config), "text_field": config.text_field, "separator": config.separator,
        "subset_size": config.subset_size, "val_fraction": config.val_fraction, "seed": config.seed,
        "document_rules": sources.DOCUMENT_RULES_VERSION, "special_tokens": SPECIAL_TOKENS,
    }
    if config.dataset == "local":
        files = (config.train_files or []) + (config.val_files or [])
        identity["files"] = [_file_identity(Path(f)) for f in files]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{config.dataset}-{digest}"


def _file_identity(path: Path) -> list:
    path = sources.require_file(path)
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def cache_dir(config: DataConfig) -> Path:
    return Path(config.assets_dir) / "hf-cache"


def tokenizer_location(config: DataConfig) -> Path | str:
    if config.tokenizer == "bpe":
        return Path(config.assets_dir) / "tokenizers" / f"{dataset_id(config)}-bpe{config.vocab_size}"
    return config.tokenizer


def tokens_dir(config: DataConfig, tokenizer: LoadedTokenizer) -> Path:
    return Path(config.assets_dir) / "tokens" / dataset_id(config) / tokenizer.sha256[:12]


# ------------------------------------------------------------------------------------------------------------
# The steps


def download(config: DataConfig) -> None:
    folder = sources.download(config, cache_dir(config))
    print(f"downloaded to {folder}" if folder else f"{config.dataset}: nothing to download (local or streamed)")


def train_tokenizer(config: DataConfig, documents=None) -> LoadedTokenizer:
    location = tokenizer_location(config)
    if config.tokenizer != "bpe":
        return load_tokenizer(location)
    if (Path(location) / "manifest.json").is_file():
        tokenizer = load_tokenizer(location)
        print(f"tokenizer: reusing {location} (vocab {tokenizer.vocab_size:,})")
        return tokenizer
    documents = documents if documents is not None else sources.load_documents(config, cache_dir(config))
    train = documents["train"]
    print(f"tokenizer: training a byte-level BPE of {config.vocab_size:,} on {len(train):,} documents")
    start = time.perf_counter()
    texts = (batch["text"] for batch in train.iter(batch_size=1000))
    tokenizer = train_bpe((t for batch in texts for t in batch), config.vocab_size, length=len(train))
    loaded = save_tokenizer(tokenizer, Path(location), source=sources.describe(config))
    print(f"tokenizer: saved {location} in {time.perf_counter() - start:.1f} s")
    if loaded.vocab_size < config.vocab_size:
        print(f"tokenizer: {loaded.vocab_size:,} tokens, not the {config.vocab_size:,} of data.vocab_size: the text "
              f"has no more pairs to merge (the model's vocab_size follows the tokenizer)")
    return loaded


def analyze_data(config: DataConfig, subset: int = 5000) -> str:
    documents = sources.load_documents(config, cache_dir(config))["train"]
    texts = list(documents.select(range(min(subset, len(documents))))["text"])
    report, _ = analyze(texts)
    return f"dataset {sources.describe(config)} (first {len(texts):,} training documents)\n{report}"


def pretokenize(config: DataConfig, tokenizer: LoadedTokenizer | None = None, documents=None) -> PreparedData:
    tokenizer = tokenizer or load_tokenizer(tokenizer_location(config))
    folder = tokens_dir(config, tokenizer)
    meta = shards.read_meta(folder, tokenizer)
    if meta is not None:
        print(f"tokens: reusing {folder} ({meta['tokens']['train']:,} train, {meta['tokens']['validation']:,} validation)")
        return PreparedData(tokenizer, folder, meta)
    documents = documents if documents is not None else sources.load_documents(config, cache_dir(config))
    folder.mkdir(parents=True, exist_ok=True)
    counts, n_documents, n_bytes = {}, {}, {}
    for split in shards.SPLITS:
        counts[split] = shards.encode_split(documents[split], tokenizer, folder / f"{split}.bin", desc=f"encoding {split}")
        n_documents[split] = len(documents[split])
        n_bytes[split] = sum(len(t.encode()) for batch in documents[split].iter(batch_size=1000) for t in batch["text"])
    meta = {
        "dataset_id": dataset_id(config),
        "source": sources.describe(config),
        "tokenizer": str(tokenizer.path),
        "tokenizer_sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": shards.token_dtype(tokenizer.vocab_size).name,
        "tokens": counts,
        "documents": n_documents,
        "text_bytes": n_bytes,  # UTF-8 bytes of the documents, for bits per byte
    }
    shards.write_meta(folder, meta)
    print(f"tokens: wrote {folder} ({counts['train']:,} train, {counts['validation']:,} validation)")
    return PreparedData(tokenizer, folder, meta)


def prepare(config: DataConfig) -> PreparedData:
    """Everything the config needs, reusing what exists: documents are loaded only if something is missing."""
    location = tokenizer_location(config)
    if config.tokenizer != "bpe" or (Path(location) / "manifest.json").is_file():
        tokenizer = load_tokenizer(location)
        meta = shards.read_meta(tokens_dir(config, tokenizer), tokenizer)
        if meta is not None:
            return PreparedData(tokenizer, tokens_dir(config, tokenizer), meta)
    documents = sources.load_documents(config, cache_dir(config))
    tokenizer = train_tokenizer(config, documents)
    return pretokenize(config, tokenizer, documents)
