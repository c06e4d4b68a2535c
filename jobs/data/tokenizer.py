"""Tokenizers: training a byte-level BPE with `tokenizers`, loading one (the one place that does), analysis.

A tokenizer is a `tokenizer.json` (plain JSON: nothing is unpickled) with a `manifest.json` beside it naming
the source dataset, vocab size, special tokens and the SHA-256 of tokenizer.json. Token files record that hash,
so data made with one tokenizer is never read with another.
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jobs import atomic
from jobs.config import END_OF_TEXT
from jobs.data.chat_template import CHAT_TOKENS
from jobs.errors import DataError

# <|endoftext|> separates documents (generation stops on it); the chat tokens are reserved in every tokenizer, so
# any base model trained on it can later be fine-tuned to chat (chat_template.py).
SPECIAL_TOKENS = [END_OF_TEXT, *CHAT_TOKENS]
BYTE_ALPHABET = 256  # byte-level BPE starts from every byte, so any text encodes with no unknown token


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: Tokenizer
    sha256: str  # of tokenizer.json: the tokenizer's identity
    eot_id: int | None
    path: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_text(self, text: str) -> list[int]:
        """Like encode, but special tokens written in the text stay text ("<|end|>" typed by a user is not the
        end of a turn). A second Tokenizer, so the shared one is never switched back and forth between threads."""
        return self._plain_text_tokenizer.encode(text).ids

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """encode_text of many texts at once (the tokenizer spreads them over the cores)."""
        return [encoding.ids for encoding in self._plain_text_tokenizer.encode_batch(texts)]

    @functools.cached_property
    def _plain_text_tokenizer(self) -> Tokenizer:
        plain = Tokenizer.from_str(self.tokenizer.to_str())
        plain.encode_special_tokens = True
        return plain

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def bpe_tables(tokenizer: LoadedTokenizer) -> tuple[list[str], list[str]]:
    """(tokens by id, merges as "a b" in the order they were learned), spelled as tokenizer.json spells them
    (each byte a printable character): what other formats (GGUF) store. A DataError for a tokenizer that is not a
    byte-level BPE, which they could not rebuild."""
    data = json.loads(tokenizer.tokenizer.to_str())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise DataError(f"{tokenizer.path}: not a byte-level BPE tokenizer (model {model.get('type')!r}, "
                        f"pre-tokenizer {pre.get('type')!r}); only those can be exported")
    tokens = [tokenizer.tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    if None in tokens:
        raise DataError(f"{tokenizer.path}: token id {tokens.index(None)} is unused; the ids must run 0..V-1")
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    return tokens, merges


def new_byte_level_bpe() -> Tokenizer:
    """GPT-2's recipe: split text with its regex into words, map bytes to printable characters, merge pairs."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None, show_progress: bool = True) -> Tokenizer:
    minimum = BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise DataError(f"vocab_size {vocab_size} is too small: the byte alphabet and special tokens need {minimum}")
    tokenizer = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, folder: Path, source: str) -> LoadedTokenizer:
    """Write tokenizer.json and manifest.json, each to a temporary name first, then renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    text = tokenizer.to_str(pretty=True)
    atomic.write_text(folder / "tokenizer.json", text)
    manifest = {
        "source": source,
        "vocab_size": tokenizer.get_vocab_size(),
        "special_tokens": SPECIAL_TOKENS,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    atomic.write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return load_tokenizer(folder)


def load_tokenizer(spec: str | Path) -> LoadedTokenizer:
    """A tokenizer from a folder or tokenizer.json path, or "gpt2" from the local Hugging Face cache."""
    spec_path = Path(spec).expanduser()
    if spec_path.is_dir():
        spec_path = spec_path / "tokenizer.json"
    if spec_path.is_file():
        text = spec_path.read_text()
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as error:
            raise DataError(f"{spec_path} is not a tokenizer.json: {str(error).splitlines()[0]}") from None
        return LoadedTokenizer(tokenizer, hashlib.sha256(text.encode()).hexdigest(),
                               tokenizer.token_to_id(END_OF_TEXT), str(spec_path))
    if str(spec) == "gpt2":
        return _cached_gpt2()
    raise DataError(f"tokenizer not found: {spec} (a folder or tokenizer.json, or 'gpt2' when it is cached)")


def _cached_gpt2() -> LoadedTokenizer:
    """GPT-2's tokenizer, only from the local Hugging Face cache: never downloaded here."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache("openai-community/gpt2", "tokenizer.json") or try_to_load_from_cache(
        "gpt2", "tokenizer.json"
    )
    if not isinstance(cached, str):
        raise DataError("the GPT-2 tokenizer is not in the local Hugging Face cache; download it once with "
                        "`huggingface-cli download openai-community/gpt2 tokenizer.json` or use data.tokenizer: bpe")
    return load_tokenizer(cached)


# ------------------------------------------------------------------------------------------------------------
# Analysis: which vocab size?


def analyze(documents: list[str], candidates: Iterable[int] = (1024, 2048, 4096, 8192, 16384),
            holdout_fraction: float = 0.1) -> tuple[str, int]:
    """Train a BPE per candidate vocab size on most of `documents`, measure it on the rest.

    Reports word statistics, and per candidate: bytes per token (compression; higher is better) and the share
    of the vocabulary that the held-out text uses (low: many tokens too rare to learn well). Recommends the
    smallest vocab within 10% of the best compression: beyond it the embedding table (V x C) grows faster
    than sequences shrink. Returns (report, recommended vocab size).
    """
    if len(documents) < 10:
        raise DataError(f"analysis needs at least 10 documents, got {len(documents)}")
    split = max(1, int(len(documents) * (1 - holdout_fraction)))
    train_docs, heldout_docs = documents[:split], documents[split:]
    heldout_bytes = sum(len(d.encode()) for d in heldout_docs)

    words = Counter(w for d in documents for w in d.split())
    total_words = sum(words.values())
    lines = [
        f"documents: {len(documents):,} ({len(train_docs):,} to train candidates, {len(heldout_docs):,} held out)",
        f"characters: {sum(len(d) for d in documents):,}; bytes: {sum(len(d.encode()) for d in documents):,}",
        f"words (split on whitespace): {total_words:,}; distinct: {len(words):,}; "
        f"median document: {statistics.median(len(d.split()) for d in documents):,.0f} words",
    ]
    for top in (1000, 4000, 16000):
        covered = sum(count for _, count in words.most_common(top))
        lines.append(f"  the {top:,} most frequent words cover {covered / total_words:.1%} of word occurrences")
    lines += ["", f"{'vocab':>7}  {'bytes/token':>11}  {'tokens (held out)':>17}  {'vocab used':>10}"]
    results = {}
    for vocab_size in candidates:
        tokenizer = train_bpe(train_docs, vocab_size, length=len(train_docs), show_progress=False)
        encodings = tokenizer.encode_batch(heldout_docs)
        n_tokens = sum(len(e.ids) for e in encodings)
        used = len({i for e in encodings for i in e.ids})
        results[vocab_size] = heldout_bytes / max(n_tokens, 1)
        actual = tokenizer.get_vocab_size()
        lines.append(f"{vocab_size:>7,}  {results[vocab_size]:>11.2f}  {n_tokens:>17,}  {used / actual:>10.1%}")
    best = max(results.values())
    recommended = min(v for v, bpt in results.items() if bpt >= 0.9 * best)
    lines += ["", f"recommendation: vocab_size {recommended:,} (the smallest within 10% of the best compression)"]
    return "\n".join(lines), recommended
