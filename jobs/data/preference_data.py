"""Preference pairs to learn from (what `prefer` reads): a prompt, a chosen reply and a rejected one (TrainingData).

Pairs come from the config's `preference` section: made from stories (training and validation stories apart), and/or
JSONL files in the format Hugging Face TRL uses, one pair a line:

    {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}]}          (or each of the three as plain text)

Made from stories, aimed at what the chat model gets wrong (README, "Teach it to chat"):
    uses_words   "Write a story that uses the words a, b and c.": chosen the story the words come from, rejected
                 a story of similar length that uses none of them
    name         a story told, then "What was the dog's name?" for each character it names: chosen the right name,
                 rejected each other name in the story (or, where it names nobody else, the name most often given
                 to that kind of character); at most NAME_PAIRS_PER_ANSWER questions per answer
With `preference.rejected: greedy`, the rejected reply is the tuned model's own greedy reply wherever that reply gets
the request wrong (misses a word asked for, or the name): DPO then pushes down what the model does now, not a
stranger's story. Where its reply is right, the pair keeps the rejected reply above.

Each pair is two rows of a batch, chosen then rejected, learnt only on the reply (the loss mask). The frozen
reference model's log-probability of each reply is computed once, when the data is made (one pass over the pairs
with the starting model), and kept with the rows: it never changes, so there is no second model in memory and no
second forward in each training step.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jobs.config import ExperimentConfig
from jobs.data import chat_template, conversations as convs
from jobs.data.windows import Batch, TrainWindows, validation_batches
from jobs.errors import ConfigError, InputError
from jobs.training.data import StartingPoint
from jobs.training.distributed import Distributed
from jobs.training.objectives import PreferenceLoss

log = logging.getLogger(__name__)


@dataclass
class Pair:
    prompt: list[dict]  # the messages before the reply (user turns, and earlier assistant turns)
    chosen: str
    rejected: str
    kind: str  # uses_words, name or file


# --- pairs made from stories ----------------------------------------------------------------------------------------


# Name questions per answer at most: TinyStories names most girls Lily and most boys Timmy (151 and 71 of the 276
# named characters in valid.txt after its first 200 paragraphs); more would teach "a girl is Lily", not reading.
NAME_PAIRS_PER_ANSWER = 2


def pairs_from_stories(stories, seed: int, limit: int | None = None, max_words: int | None = None,
                       words_per_story: int = 1) -> list[Pair]:
    """Deterministic pairs (from seed) of the two kinds, from a list of stories: up to words_per_story word requests
    (each a different three of its words) and a name question for each character the story names (a pair for each
    other name in the story; where there is none, against the name most often given to that kind of character)."""
    rng = random.Random(seed)
    stories = [convs.shorten(s.strip(), max_words) for s in stories]
    common = convs.common_words(stories)
    lengths = [len(s.split()) for s in stories]
    words_in = [set(re.findall(r"\b[a-z]+\b", s.lower())) for s in stories]  # each story's words, once
    # The name most often given to each kind of character ("girl": Lily): what a model that did not read the story
    # would say, and the wrong name where a story names nobody else
    usual: dict[str, list[str]] = {}  # kind of character -> the names given to it, most often first
    for (animal, name), _ in Counter(found.groups() for story in stories
                                     for found in convs.ANIMAL_NAME.finditer(story)).most_common():
        usual.setdefault(animal, []).append(name)
    asked_names = Counter()  # name questions made per answer, (animal, name)
    pairs: list[Pair] = []
    for i, story in enumerate(stories):
        if len(convs.sentences(story)) < 3:
            continue
        words = convs.words_to_ask(story, common)  # as the chat data asks (conversations.py)
        asked_before, word_requests = set(), []
        for _ in range(words_per_story if len(words) >= 3 else 0):
            asked = rng.sample(words, 3)
            if frozenset(asked) in asked_before:  # few words: this three again
                continue
            asked_before.add(frozenset(asked))
            other = _similar_story_without(stories, lengths, words_in, i, asked, rng)
            if other is not None:
                prompt = f"Write a story that uses the words {asked[0]}, {asked[1]} and {asked[2]}."
                word_requests.append((prompt, story, other))
        pairs += [Pair([{"role": "user", "content": request}], chosen, rejected, "uses_words")
                  for request, chosen, rejected in word_requests]
        named = [(found.group(1), found.group(2)) for found in convs.ANIMAL_NAME.finditer(story)]
        in_story = set(re.findall(r"\b[A-Z][a-z]{2,}\b", story)) - convs.NOT_NAMES
        main = convs.story_name(story)
        kinds_named = Counter(animal for animal, _ in named)
        for animal, name in dict(named).items():  # each character named ("a dog named Max", "a girl named Lily")
            if kinds_named[animal] > 1 or asked_names[animal, name] == NAME_PAIRS_PER_ANSWER:
                continue  # two dogs: which one? Or this answer asked enough
            wrong = sorted(in_story - {name, animal.title()})  # each other name in the story, else the usual one
            wrong = wrong or [n for n in usual[animal] if n != name][:1]
            if not wrong:
                continue
            # The story is told after one of the requests the chat data makes (the question after "Tell me a story
            # about Tim." may be about Sue, as in the validation conversations)
            told = [f"Tell me a story about a {animal}."] + ([f"Tell me a story about {main}."] if main else []) \
                + [request for request, *_ in word_requests]
            prompt = [{"role": "user", "content": rng.choice(told)}, {"role": "assistant", "content": story},
                      {"role": "user", "content": f"What was the {animal}'s name?"}]
            asked_names[animal, name] += 1
            pairs += [Pair(prompt, f"The {animal}'s name was {name}.", f"The {animal}'s name was {other}.", "name")
                      for other in wrong]
        if limit is not None and len(pairs) >= limit:
            break
    return pairs[:limit]


def _similar_story_without(stories: list[str], lengths: list[int], words_in: list[set[str]], i: int,
                           words: list[str], rng: random.Random) -> str | None:
    """Another story within 30% of story i's length that uses none of words (the first of 200 tried at random)."""
    low, high = 0.7 * lengths[i], 1.3 * lengths[i]
    for j in rng.sample(range(len(stories)), min(200, len(stories))):
        if j != i and low <= lengths[j] <= high and not words_in[j] & set(words) \
                and len(convs.sentences(stories[j])) >= 3:
            return stories[j]
    return None


GREEDY_REPLY_TOKENS = 100  # the model's own replies are this long at most (as bench.chat measures them)


def with_own_misses(pairs: list[Pair], model, tokenizer, stop_ids: frozenset[int]) -> tuple[list[Pair], int]:
    """The pairs, those made from stories with the model's greedy reply as the rejected one wherever that reply gets
    the request wrong; and how many were changed so."""
    from jobs.serving.engine import greedy_replies

    made = [i for i, pair in enumerate(pairs) if pair.kind in ("uses_words", "name")]
    prompts = [chat_template.render(tokenizer, pairs[i].prompt, add_generation_prompt=True)[0] for i in made]
    log.info(f"preference data: the model's own greedy replies to {len(prompts):,} requests")
    replies = greedy_replies(model, prompts, GREEDY_REPLY_TOKENS, stop_ids)
    pairs, changed = list(pairs), 0
    for i, ids in zip(made, replies):
        pair, reply = pairs[i], tokenizer.decode(ids).strip()
        if pair.kind == "uses_words":
            wrong = convs.words_used(reply, convs.asked_words(pair.prompt[0]["content"])) < 1
        else:
            wrong = convs.told_name(pair.chosen) not in reply
        if wrong and reply:
            pairs[i] = Pair(pair.prompt, pair.chosen, reply, pair.kind)
            changed += 1
    return pairs, changed


# --- pairs from files (TRL's format) ----------------------------------------------------------------------------


def read_pairs(path: Path, skip_bad: bool = False) -> tuple[list[Pair], int]:
    """The pairs of a JSONL file, and how many bad lines were skipped (skip_bad); or an InputError naming the file
    and line of the first bad one."""
    return convs.read_jsonl(path, _record_pair, skip_bad, "preference file")


def _record_pair(line: str) -> Pair:
    record = convs.json_record(line)
    if not isinstance(record, dict) or not all(key in record for key in ("prompt", "chosen", "rejected")):
        raise InputError('each line is an object with "prompt", "chosen" and "rejected"')
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise InputError('"prompt" must be text or a non-empty list of messages')
    prompt = chat_template.check_messages(prompt, "prompt")
    if prompt[-1]["role"] == "assistant":
        raise InputError('"prompt" must end with a user (or system) message: the reply is what is compared')
    return Pair(prompt, _reply(record["chosen"], "chosen"), _reply(record["rejected"], "rejected"), "file")


def _reply(value, name: str) -> str:
    """A reply as text: TRL's conversational form is a list holding one assistant message."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        (message,) = chat_template.check_messages(value, name)
        if message["role"] != "assistant":
            raise InputError(f'"{name}" must be the assistant\'s reply')
        value = message["content"]
    if not isinstance(value, str):
        raise InputError(f'"{name}" must be text or a list of one assistant message')
    return value


# --- packing and the reference model ----------------------------------------------------------------------------


@dataclass
class PackedPairs:
    """Pairs as rows of T + 1 tokens, chosen then rejected, with masks on the replies and the reference model's
    log-probabilities of the replies (a window source, jobs/data/windows.py: a draw picks pairs)."""

    tokens: np.ndarray  # (2N, T + 1) int64
    mask: np.ndarray  # (2N, T + 1) bool: True on the reply's tokens and its <|end|>
    reference: np.ndarray = None  # (2N,) float64: sum of the reference model's log p over each reply
    kinds: Counter = field(default_factory=Counter)
    dropped_too_long: int = 0

    def random_starts(self) -> int:
        return len(self.tokens) // 2

    def fixed_windows(self) -> int:
        return len(self.tokens) // 2

    def take(self, indices: np.ndarray, fixed: bool = False) -> Batch:
        rows = np.stack([2 * indices, 2 * indices + 1], axis=1).reshape(-1)  # pair p -> rows 2p, 2p+1
        return Batch(torch.from_numpy(self.tokens[rows]), torch.from_numpy(self.mask[rows]),
                     torch.from_numpy(self.reference[rows]))

    def why_empty(self) -> str:
        return "no preference pairs to train on: every pair was dropped (longer than the context) or none was made"


def pack_pairs(pairs: list[Pair], tokenizer, seq_len: int) -> PackedPairs:
    """Each pair as two rows (prompt + chosen, prompt + rejected) of seq_len + 1 tokens, padded with <|endoftext|>;
    a pair whose longer row does not fit is dropped and counted."""
    width = seq_len + 1
    rows, masks, kept, dropped = [], [], [], 0
    for pair in pairs:
        prompt_ids = chat_template.render(tokenizer, pair.prompt, add_generation_prompt=True)[0]
        both = []
        for reply in (pair.chosen, pair.rejected):
            ids = chat_template.render(tokenizer, pair.prompt + [{"role": "assistant", "content": reply}])[0]
            both.append((ids, [False] * len(prompt_ids) + [True] * (len(ids) - len(prompt_ids))))
        if max(len(ids) for ids, _ in both) > width:
            dropped += 1
            continue
        kept.append(pair)
        for ids, mask in both:
            rows.append(ids + [tokenizer.eot_id] * (width - len(ids)))
            masks.append(mask + [False] * (width - len(mask)))
    tokens = np.array(rows, dtype=np.int64).reshape(-1, width)
    mask = np.array(masks, dtype=bool).reshape(-1, width)
    return PackedPairs(tokens, mask, np.zeros(len(tokens)), Counter(p.kind for p in kept), dropped)


@torch.no_grad()
def reference_log_probs(model, packed: PackedPairs, batch_size: int = 32) -> np.ndarray:
    """Each row's sum of log p(reply token) under the model (the frozen reference), in float64."""
    from jobs.training.objectives import inputs_and_targets
    from model_zoo.generation import model_device
    from model_zoo.preference_loss import sequence_log_probs

    model.eval()
    device = model_device(model)
    sums = []
    for start in range(0, len(packed.tokens), batch_size):
        rows = slice(start, start + batch_size)
        batch = Batch(torch.from_numpy(packed.tokens[rows]), torch.from_numpy(packed.mask[rows])).to(device)
        idx, targets = inputs_and_targets(batch)
        sums.append(sequence_log_probs(model(idx)[0], targets).double().cpu())
    return torch.cat(sums).numpy() if sums else np.zeros(0)


# --- the training data ---------------------------------------------------------------------------------------------


class PreferenceData:
    """Pairs packed two rows each, with the reference's log-probabilities (TrainingData)."""

    def __init__(self, cfg: ExperimentConfig, start: StartingPoint, distributed: Distributed):
        base = start.base
        self.tokenizer = base.tokenizer
        chat_template.require_chat(self.tokenizer)
        pc, seq_len = cfg.preference, base.config.max_seq_len
        train, validation = load_pairs(cfg)
        self.own_rejected = {}
        if pc.from_stories and pc.rejected == "greedy":
            stop_ids = frozenset(base.stop_ids)
            train, self.own_rejected["train"] = with_own_misses(train, base.model, self.tokenizer, stop_ids)
            validation, self.own_rejected["val"] = with_own_misses(validation, base.model, self.tokenizer, stop_ids)
            if distributed.is_main:
                log.info(f"preference data: the model's own reply rejected in {self.own_rejected['train']:,} "
                         f"training and {self.own_rejected['val']:,} validation pairs")
        self.train = pack_pairs(train, self.tokenizer, seq_len)
        self.validation = pack_pairs(validation, self.tokenizer, seq_len)
        for split, packed in (("training", self.train), ("validation", self.validation)):
            if len(packed.tokens) == 0:
                raise ConfigError(f"no {split} preference pairs fit the base's context of {seq_len} tokens"
                                  f"{f' ({packed.dropped_too_long:,} longer, dropped)' if packed.dropped_too_long else ''}"
                                  f": lower preference.max_answer_words, or give pairs")
            packed.reference = reference_log_probs(base.model, packed)  # the starting model is the reference
        self.train_tokens = self.train.tokens.size
        digest = hashlib.sha256(self.train.tokens.tobytes() + self.validation.tokens.tobytes()).hexdigest()[:10]
        self.dataset_id = self.content_id = f"pairs-{digest}"
        self.objective = PreferenceLoss(pc.beta, pc.sft)
        if distributed.is_main:
            log.info(f"preference data: {describe(self.train)} to train; {describe(self.validation)} to validate")

    def check_fits(self, seq_len: int) -> None:
        pass  # packed for the base's context, which preference tuning keeps

    def loader(self, batch_size: int, seq_len: int, seed: int, distributed: Distributed) -> TrainWindows:
        return TrainWindows(self.train, batch_size, seed, distributed.rank, distributed.world_size)  # B pairs

    def validation_batches(self, batch_size: int, seq_len: int, max_batches: int | None, distributed: Distributed):
        return validation_batches(self.validation, batch_size, max_batches, distributed.rank, distributed.world_size)

    def metrics(self, val_loss: float) -> dict:
        return {}  # the objective gives DPO's own (PreferenceLoss.validation_metrics)

    def params(self) -> dict:
        counts = {f"pairs_train_{kind}": n for kind, n in self.train.kinds.items()}
        counts |= {f"pairs_val_{kind}": n for kind, n in self.validation.kinds.items()}
        counts |= {f"pairs_{split}_own_rejected": n for split, n in self.own_rejected.items()}
        return counts | {"dataset_id": self.dataset_id, "train_pairs": len(self.train.tokens) // 2,
                         "val_pairs": len(self.validation.tokens) // 2,
                         "pairs_dropped_too_long": self.train.dropped_too_long + self.validation.dropped_too_long}

    def sample_prompt(self, prompt: str) -> tuple[list[int], str]:
        return chat_template.user_prompt(self.tokenizer, prompt)  # a user's message, the reply to come


def load(cfg: ExperimentConfig, distributed: Distributed, start: StartingPoint) -> PreferenceData:
    if start.base is None:
        raise ConfigError("preference data needs the model it tunes (preference.base)")
    return PreferenceData(cfg, start, distributed)


def describe(packed: PackedPairs) -> str:
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(packed.kinds.items()))
    dropped = f"; {packed.dropped_too_long:,} longer than the context, dropped" if packed.dropped_too_long else ""
    return f"{len(packed.tokens) // 2:,} pairs ({kinds}{dropped})"


def load_pairs(cfg: ExperimentConfig) -> tuple[list[Pair], list[Pair]]:
    """(train, validation) pairs: from the data's stories (train and validation stories apart) and files."""
    pc = cfg.preference
    train, validation, skipped = [], [], Counter()
    for path in pc.pair_files or []:
        found, skipped[path] = read_pairs(path, pc.skip_bad)
        train += found
    for path in pc.val_pair_files or []:
        found, skipped[path] = read_pairs(path, pc.skip_bad)
        validation += found
    for path, n in skipped.items():
        if n:
            log.warning(f"preference data: {path}: {n:,} bad record(s) skipped (preference.skip_bad)")
    if pc.from_stories:
        from jobs.data.pipeline import DataLayout
        from jobs.data.sources import load_documents

        stories = load_documents(cfg.data, DataLayout.of(cfg.data).cache_dir)
        made = pairs_from_stories(stories["train"]["text"], pc.seed, pc.max_pairs, pc.max_answer_words,
                                  pc.words_per_story)
        train += made + [pair for pair in made if pair.kind == "name"] * (pc.name_repeats - 1)
        validation += pairs_from_stories(stories["validation"]["text"], pc.seed + 1, pc.val_pairs, pc.max_answer_words)
    if not train:
        raise ConfigError("no training pairs: set preference.from_stories or preference.pair_files")
    if not validation:
        raise ConfigError("no validation pairs: give preference.val_pair_files or story data")
    return train, validation
