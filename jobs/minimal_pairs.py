"""Grammar minimal pairs: what a language model knows, measured the BLiMP way (Warstadt et al. 2020).

A minimal pair is two sentences that differ in one place, one of them ungrammatical:

    this colors must be white .      <- ungrammatical
    this color must be white .       <- grammatical

The model "knows" the pair when it gives the grammatical sentence the higher probability. A sentence's score is
the summed log-probability of its tokens, each given the ones before it and <|endoftext|> before the first
(the document boundary the model was trained with), so

    log p(sentence) = sum_i log p(token_i | <|endoftext|>, token_1 .. token_{i-1})

and the pair is right when log p(good) > log p(bad) (a tie is wrong). Accuracy is the share of pairs right;
chance is 50%. Whole sentences are compared, not per-token means: both sentences of a pair use the same words
as far as possible, and BLiMP's authors found the sum the fairer measure.

A suite is a folder of paradigm files (one paradigm each), in one of two layouts, recognised from the files:
- Zorro (Huebner et al. 2021): `<phenomenon>-<paradigm>.txt`, one sentence per line, odd lines (counting from 1)
  ungrammatical, the even line after each its grammatical twin.
- BLiMP: `.jsonl`, one pair per line, `{"sentence_good": ..., "sentence_bad": ..., "UID": ...,
  "linguistics_term": ...}`; the paradigm is the record's UID (else the file name), the phenomenon its
  linguistics_term (else the part of the paradigm name before its last '-').
LICENSE and README files are skipped; any other file, and any malformed line, is refused with the file and line.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jobs.errors import InputError

MAX_SENTENCE_CHARS = 1000  # a minimal pair is two short sentences; anything longer is not one
MAX_FILE_BYTES = 200 << 20  # BLiMP's largest paradigm file is under 1 MB, Zorro's 200 KB
DOCUMENTATION = re.compile(r"^(LICEN[CS]E|COPYING|README|NOTICE)(\..*)?$|\.md$", re.IGNORECASE)
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")  # names become MLflow metric keys


class SuiteError(InputError):
    """A suite folder or file that cannot be read as minimal pairs; the message names the file and line."""


@dataclass(frozen=True)
class Paradigm:
    name: str  # e.g. agreement_subject_verb-across_relative_clause
    phenomenon: str  # e.g. agreement_subject_verb
    good: tuple[str, ...]  # the grammatical sentences, pair by pair
    bad: tuple[str, ...]  # and their ungrammatical twins


@dataclass(frozen=True)
class Suite:
    name: str  # the folder's name: "zorro"
    layout: str  # "zorro" or "blimp"
    sha256: str  # of the files' names and bytes: scores compare only on the same suite
    paradigms: tuple[Paradigm, ...]

    @property
    def n_pairs(self) -> int:
        return sum(len(p.good) for p in self.paradigms)


# --- reading a suite ---------------------------------------------------------------------------------------------


def read_suite(path: str | Path, given_as: str = "--suite") -> Suite:
    """Every paradigm of a suite folder (or a single paradigm file), checked line by line. given_as: where the user
    named it (--suite, training.final_evals), for the messages."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SuiteError(f"{given_as}: not found: {path} (Zorro: the test sentences of github.com/phueb/Zorro; "
                         f"BLiMP: the data folder of github.com/alexwarstadt/blimp)")
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if not f.name.startswith("."))
    files = [f for f in files if not DOCUMENTATION.search(f.name)]
    if not files:
        raise SuiteError(f"{given_as} {path}: no paradigm files in it (Zorro .txt or BLiMP .jsonl)")
    layouts = {}
    for file in files:
        if not file.is_file():
            raise SuiteError(f"{file}: not a paradigm file (a suite folder holds paradigm files only)")
        if file.suffix not in (".txt", ".jsonl"):
            raise SuiteError(f"{file}: not a paradigm file: Zorro's are .txt, BLiMP's .jsonl")
        if file.stat().st_size > MAX_FILE_BYTES:
            raise SuiteError(f"{file}: {file.stat().st_size:,} bytes, over the {MAX_FILE_BYTES:,} a paradigm file may hold")
        layouts[file] = "zorro" if file.suffix == ".txt" else "blimp"
    if len(set(layouts.values())) > 1:
        raise SuiteError(f"{given_as} {path}: mixes Zorro .txt and BLiMP .jsonl files; give one suite per folder")
    layout = next(iter(layouts.values()))
    digest, paradigms = hashlib.sha256(), []
    for file in files:
        data = file.read_bytes()
        digest.update(file.name.encode() + b"\0" + data + b"\0")
        lines = _lines(file, data)
        paradigms += [_read_zorro(file, lines)] if layout == "zorro" else _read_blimp(file, lines)
    seen: set[str] = set()
    for paradigm in paradigms:
        if paradigm.name in seen:
            raise SuiteError(f"{given_as} {path}: the paradigm {paradigm.name!r} appears in two files (or twice by UID); "
                             f"each paradigm has one file")
        seen.add(paradigm.name)
    name = _safe_name(path.stem if path.is_file() else path.name)
    return Suite(name, layout, digest.hexdigest(), tuple(paradigms))


def _lines(file: Path, data: bytes) -> list[tuple[int, str]]:
    """(line number, text) of each line, decoded as UTF-8 with the line named on failure."""
    lines = []
    data = data.removeprefix(codecs.BOM_UTF8)  # a byte-order mark is not part of the first sentence (either layout)
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SuiteError(f"{file}:{number}: not UTF-8 text") from None
        lines.append((number, text.strip()))
    while lines and not lines[-1][1]:  # blank lines at the end
        lines.pop()
    return lines


def _sentence(file: Path, number: int, text: str, what: str) -> str:
    if not text:
        raise SuiteError(f"{file}:{number}: {what} is empty")
    if len(text) > MAX_SENTENCE_CHARS:
        raise SuiteError(f"{file}:{number}: {what} is {len(text):,} characters, over {MAX_SENTENCE_CHARS} "
                         f"(starts {text[:40]!r})")
    return text


def _read_zorro(file: Path, lines: list[tuple[int, str]]) -> Paradigm:
    if not lines:
        raise SuiteError(f"{file}: empty; a Zorro paradigm holds pairs of lines (ungrammatical, then grammatical)")
    if len(lines) % 2:
        raise SuiteError(f"{file}:{lines[-1][0]}: an odd number of lines ({len(lines)}): each pair is two lines, the "
                         f"ungrammatical sentence then the grammatical one")
    sentences = [_sentence(file, number, text, "the sentence") for number, text in lines]
    name = _safe_name(file.stem)
    return Paradigm(name, phenomenon_of(name), good=tuple(sentences[1::2]), bad=tuple(sentences[0::2]))


def _read_blimp(file: Path, lines: list[tuple[int, str]]) -> list[Paradigm]:
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    terms: dict[str, str] = {}
    for number, text in lines:
        if not text:
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise SuiteError(f"{file}:{number}: not JSON ({error.msg})") from None
        except RecursionError:
            raise SuiteError(f"{file}:{number}: not JSON this program reads (nested too deep)") from None
        if not isinstance(record, dict):
            raise SuiteError(f"{file}:{number}: a BLiMP record is a JSON object with sentence_good and sentence_bad")
        for key in ("sentence_good", "sentence_bad"):
            if not isinstance(record.get(key), str):
                raise SuiteError(f"{file}:{number}: {key} is missing or not a string")
        for key in ("UID", "linguistics_term"):
            if key in record and not isinstance(record[key], str):
                raise SuiteError(f"{file}:{number}: {key} is not a string")
        paradigm = _safe_name(record.get("UID") or file.stem)
        pairs[paradigm].append((_sentence(file, number, record["sentence_good"].strip(), "sentence_good"),
                                _sentence(file, number, record["sentence_bad"].strip(), "sentence_bad")))
        if record.get("linguistics_term"):
            terms.setdefault(paradigm, _safe_name(record["linguistics_term"]))
    if not pairs:
        raise SuiteError(f"{file}: no records; a BLiMP file holds one JSON pair per line")
    return [Paradigm(name, terms.get(name, phenomenon_of(name)), tuple(g for g, _ in found), tuple(b for _, b in found))
            for name, found in pairs.items()]


def phenomenon_of(paradigm: str) -> str:
    """Zorro's naming, <phenomenon>-<paradigm>: the part of the name before its last '-' (Zorro's phenomena
    "filler-gap" and "island-effects" hold a '-' themselves; its paradigm names never do)."""
    return paradigm.rsplit("-", 1)[0]


def _safe_name(name: str) -> str:
    """A name MLflow takes in a metric key: safe characters, and starting with a letter or digit (a file "-.txt" or
    "..txt" would give "-" or ".", and MLflow refuses keys whose parts read as paths)."""
    name = UNSAFE_NAME_CHARS.sub("_", name)[:200]
    return name if name[:1].isalnum() else f"_{name}"


# --- scoring -------------------------------------------------------------------------------------------------------


def _encoded(tokenizer, sentences: list[str], max_seq_len: int, suite: str = "") -> list[list[int]]:
    """Each sentence's ids after <|endoftext|>, or an InputError naming the first that the context cannot hold."""
    token_ids = [[tokenizer.eot_id] + ids for ids in tokenizer.encode_texts(sentences)]
    context = max_seq_len + 1  # the model sees max_seq_len tokens and predicts the next of each
    for sentence, ids in zip(sentences, token_ids):
        if len(ids) > context:
            raise InputError(f"{suite}the sentence {sentence[:60]!r} is {len(ids) - 1} tokens, more than the "
                             f"model's context ({max_seq_len})")
    return token_ids


def check_fits(suite: Suite, tokenizer, max_seq_len: int) -> None:
    """Every sentence of the suite fits the model's context: checked before training (training.final_evals), so a
    run is not refused its scores only after it has trained and registered."""
    sentences = [s for paradigm in suite.paradigms for s in paradigm.good + paradigm.bad]
    _encoded(tokenizer, sentences, max_seq_len, f"training.final_evals: suite {suite.name!r}: ")


@torch.inference_mode()
def sentence_logprobs(model, tokenizer, sentences: list[str], device: str = "cpu", max_batch_tokens: int = 2048,
                      progress: bool = False) -> tuple[np.ndarray, int]:
    """(summed log-probability of each sentence given <|endoftext|> before it, tokens scored).

    Sentences are encoded together (the tokenizer uses every core), sorted by length so that a batch holds
    sentences of about the same length, and right-padded: attention is causal, so padding after a sentence
    cannot change its scores. A batch holds at most max_batch_tokens tokens (its logits are B x T x V floats)."""
    if tokenizer.eot_id is None:
        raise InputError(f"{tokenizer.path}: the tokenizer has no <|endoftext|> token to start sentences from")
    token_ids = _encoded(tokenizer, sentences, model.config.max_seq_len)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    batches, start = [], 0
    while start < len(order):
        width = len(token_ids[order[start]])
        end = start
        while end < len(order) and (end - start + 1) * len(token_ids[order[end]]) <= max(max_batch_tokens, width):
            end += 1
        batches.append(order[start:end])
        start = end
    scores = np.zeros(len(sentences), dtype=np.float64)
    was_training = model.training
    model.eval()
    bar = _progress_bar(len(sentences)) if progress else None
    try:
        for batch in batches:
            width = max(len(token_ids[i]) for i in batch)
            rows = torch.full((len(batch), width), tokenizer.eot_id, dtype=torch.long)  # padded with any token
            for row, i in enumerate(batch):
                rows[row, :len(token_ids[i])] = torch.tensor(token_ids[i])
            lengths = torch.tensor([len(token_ids[i]) - 1 for i in batch])  # predictions per sentence
            rows = rows.to(device)
            logits, _ = model(rows[:, :-1])  # (B, T, V): the next-token logits after each prefix
            logits = logits.float()
            targets = rows[:, 1:]  # (B, T)
            # log p(target) = logit(target) - logsumexp(logits): log_softmax without a second (B, T, V) tensor
            token_logprobs = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)  # (B, T)
            scored = torch.arange(targets.shape[1])[None, :] < lengths[:, None]  # (B, T): not padding
            sums = (token_logprobs.double().cpu() * scored).sum(1)  # (B,)
            scores[batch] = sums.numpy()
            if bar is not None:
                bar.update(len(batch))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return scores, sum(len(ids) - 1 for ids in token_ids)


def _progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scoring sentences", unit="sentence", dynamic_ncols=True, leave=False)


@dataclass
class SuiteScore:
    """The accuracy of one model on one suite: per paradigm, per phenomenon and overall."""

    suite: str
    sha256: str
    per_paradigm: dict[str, tuple[int, int]]  # paradigm -> (pairs right, pairs)
    phenomena: dict[str, str]  # paradigm -> phenomenon
    seconds: float = 0.0
    tokens: int = 0
    per_phenomenon: dict[str, tuple[int, int]] = field(init=False)

    def __post_init__(self):
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for paradigm, (right, pairs) in self.per_paradigm.items():
            totals[self.phenomena[paradigm]][0] += right
            totals[self.phenomena[paradigm]][1] += pairs
        self.per_phenomenon = {name: (right, pairs) for name, (right, pairs) in sorted(totals.items())}

    @property
    def pairs(self) -> int:
        return sum(pairs for _, pairs in self.per_paradigm.values())

    @property
    def accuracy(self) -> float:
        return sum(right for right, _ in self.per_paradigm.values()) / max(self.pairs, 1)

    def metrics(self, group: str | None = None) -> dict[str, float]:
        """MLflow metrics: <suite>/accuracy, <suite>/phenomenon/<name> and <suite>/paradigm/<name> (with a group,
        <suite>/<group>/accuracy and so on)."""
        prefix = f"{self.suite}/{group}" if group else self.suite
        metrics = {f"{prefix}/accuracy": self.accuracy}
        for kind, table in (("phenomenon", self.per_phenomenon), ("paradigm", self.per_paradigm)):
            metrics |= {f"{prefix}/{kind}/{name}": right / pairs for name, (right, pairs) in table.items()}
        return metrics

    def version_tags(self) -> dict[str, str]:
        """What the registry's version list shows: the accuracy, and which suite (by content) it was measured on."""
        return {f"{self.suite}_accuracy": f"{self.accuracy:.4f}", f"{self.suite}_sha256": self.sha256[:16]}

    def to_dict(self) -> dict:
        return {"suite": self.suite, "sha256": self.sha256, "accuracy": self.accuracy, "pairs": self.pairs,
                "seconds": self.seconds, "tokens": self.tokens,
                "phenomena": {name: {"accuracy": right / pairs, "pairs": pairs}
                              for name, (right, pairs) in self.per_phenomenon.items()},
                "paradigms": {name: {"accuracy": right / pairs, "pairs": pairs, "phenomenon": self.phenomena[name]}
                              for name, (right, pairs) in self.per_paradigm.items()}}

    def table(self, paradigms: bool = False) -> str:
        """Accuracy per phenomenon (and per paradigm), then overall; chance is 50%."""
        rows = self.per_paradigm if paradigms else self.per_phenomenon
        width = max([len(name) for name in rows] + [12])
        lines = [f"{'paradigm' if paradigms else 'phenomenon':<{width}}  {'accuracy':>8}  {'pairs':>7}"]
        for name, (right, pairs) in rows.items():
            lines.append(f"{name:<{width}}  {right / pairs:>8.1%}  {pairs:>7,}")
        lines.append(f"{'overall':<{width}}  {self.accuracy:>8.1%}  {self.pairs:>7,}")
        return "\n".join(lines)


def score_suite(model, tokenizer, suite: Suite, device: str = "cpu", progress: bool = False,
                max_batch_tokens: int = 2048) -> SuiteScore:
    """Score every pair of the suite (each distinct sentence once)."""
    start = time.perf_counter()
    sentences = sorted({s for p in suite.paradigms for s in p.good + p.bad})
    scores, tokens = sentence_logprobs(model, tokenizer, sentences, device, max_batch_tokens, progress)
    score_of = dict(zip(sentences, scores))
    per_paradigm = {}
    for paradigm in suite.paradigms:
        right = sum(score_of[good] > score_of[bad] for good, bad in zip(paradigm.good, paradigm.bad))
        per_paradigm[paradigm.name] = (int(right), len(paradigm.good))
    return SuiteScore(suite.name, suite.sha256, per_paradigm, {p.name: p.phenomenon for p in suite.paradigms},
                      time.perf_counter() - start, tokens)
