"""Conversations to learn from (what `finetune` reads): packed into windows, only the assistant's tokens learnt.

The conversations come from the config's chat section (jobs/data/conversations.py makes and reads them): made
from the data's stories (training and validation stories apart), and/or JSONL files, and/or a Hub dataset.
`write_conversations` writes what a config makes as JSONL (`prepare-data chat`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from jobs import atomic
from jobs.config import ExperimentConfig
from jobs.data import chat_template, conversations as convs
from jobs.data.sources import load_documents
from jobs.data.windows import TrainWindows, validation_batches
from jobs.errors import ConfigError
from jobs.training.data import StartingPoint
from jobs.training.distributed import Distributed
from jobs.training.objectives import NextTokenLoss

log = logging.getLogger(__name__)


class ChatData:
    """Conversations packed whole into (B, T+1) windows with their masks (TrainingData)."""

    def __init__(self, cfg: ExperimentConfig, tokenizer, seq_len: int, distributed: Distributed):
        self.tokenizer = tokenizer
        chat_template.require_chat(tokenizer)
        train, validation = load_conversations(cfg)
        self.train = convs.pack(train, tokenizer, seq_len)
        self.validation = convs.pack(validation, tokenizer, seq_len)
        for split, packed in (("training", self.train), ("validation", self.validation)):
            if len(packed.tokens) == 0 and packed.dropped_too_long:
                shortest = f" (the shortest is {packed.shortest_dropped:,})" if packed.shortest_dropped else ""
                raise ConfigError(f"no {split} conversations fit: all {packed.dropped_too_long:,} are longer than the "
                                  f"base's context of {seq_len} tokens{shortest}: lower chat.max_answer_words, or "
                                  f"fine-tune a base with a longer model.max_seq_len")
        if len(self.validation.tokens) == 0:
            raise ConfigError("no validation conversations: give chat.val_conversation_files or story data")
        self.train_tokens = self.train.tokens.size
        digest = hashlib.sha256(self.train.tokens.tobytes() + self.validation.tokens.tobytes()).hexdigest()[:10]
        self.dataset_id = self.content_id = f"chat-{digest}"  # the conversations' tokens: a resume on others is refused
        self.objective = NextTokenLoss()  # over the assistant's tokens: the mask says which
        if distributed.is_main:
            log.info(f"chat data: {describe(self.train)} to train; {describe(self.validation)} to validate")

    def check_fits(self, seq_len: int) -> None:
        pass  # packed for the base's context, which a fine-tune keeps

    def loader(self, batch_size: int, seq_len: int, seed: int, distributed: Distributed) -> TrainWindows:
        return TrainWindows(self.train, batch_size, seed, distributed.rank, distributed.world_size)

    def validation_batches(self, batch_size: int, seq_len: int, max_batches: int | None, distributed: Distributed):
        return validation_batches(self.validation, batch_size, max_batches, distributed.rank, distributed.world_size)

    def metrics(self, val_loss: float) -> dict:
        return {}

    def params(self) -> dict:
        counts = {f"chat_train_{kind}": n for kind, n in self.train.kinds.items()}
        counts |= {f"chat_val_{kind}": n for kind, n in self.validation.kinds.items()}
        return counts | {"dataset_id": self.dataset_id, "train_windows": len(self.train.tokens),
                         "val_windows": len(self.validation.tokens), "train_assistant_tokens": self.train.scored_tokens,
                         "val_assistant_tokens": self.validation.scored_tokens,
                         "chat_dropped_too_long": self.train.dropped_too_long + self.validation.dropped_too_long}

    def sample_prompt(self, prompt: str) -> tuple[list[int], str]:
        return chat_template.user_prompt(self.tokenizer, prompt)  # a user's message, the reply to come


def load(cfg: ExperimentConfig, distributed: Distributed, start: StartingPoint) -> ChatData:
    """The config's conversations, packed for the base model's tokenizer and context."""
    if start.base is None:
        raise ConfigError("chat data needs the model it fine-tunes (chat.base)")
    return ChatData(cfg, start.base.tokenizer, start.base.config.max_seq_len, distributed)


def describe(packed: convs.PackedChat) -> str:
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(packed.kinds.items()))
    return (f"{len(packed.tokens):,} windows ({kinds}; {packed.scored_tokens:,} assistant tokens"
            f"{f'; {packed.dropped_too_long:,} longer than the context, dropped' if packed.dropped_too_long else ''})")


def load_conversations(cfg: ExperimentConfig) -> tuple[list, list]:
    """(train, validation) conversations: from the data's stories (train and validation stories apart) and files."""
    chat = cfg.chat
    train, validation = [], []
    skipped = Counter()
    for path in chat.conversation_files or []:
        found, skipped[path] = convs.read_conversations(path, chat.skip_bad)
        train += found
    for path in chat.val_conversation_files or []:
        found, skipped[path] = convs.read_conversations(path, chat.skip_bad)
        validation += found
    if chat.hub_dataset:
        found, skipped[chat.hub_dataset] = convs.hub_conversations(chat.hub_dataset, chat.hub_split, chat.skip_bad)
        train += found
    for path, n in skipped.items():
        if n:
            log.warning(f"chat data: {path}: {n:,} bad record(s) skipped (chat.skip_bad)")
    if chat.from_stories:
        from jobs.data.pipeline import DataLayout

        stories = load_documents(cfg.data, DataLayout.of(cfg.data).cache_dir)
        train += convs.conversations_from_stories(stories["train"]["text"], chat.seed, chat.max_conversations,
                                                  chat.max_answer_words, chat.per_story)
        validation += convs.conversations_from_stories(stories["validation"]["text"], chat.seed + 1,
                                                       chat.val_conversations, chat.max_answer_words, chat.per_story)
    if not train and sum(skipped.values()):
        files = ", ".join(str(path) for path in +skipped)  # (+: those with a count above 0)
        raise ConfigError(f"no training conversations: every record of {files} was bad and skipped "
                          f"(chat.skip_bad); without skip_bad the first bad record is named with its line")
    if not train:
        raise ConfigError("no training conversations: set chat.from_stories, chat.conversation_files or chat.hub_dataset")
    return train, validation


def write_conversations(cfg: ExperimentConfig) -> str:
    """The config's conversations as JSONL (`prepare-data chat`): what fine-tuning trains and validates on."""
    if cfg.chat is None:
        raise ConfigError("the config has no chat section (see configs/chat_cpu.yaml)")
    train, validation = load_conversations(cfg)
    folder = Path(cfg.data.assets_dir).expanduser() / "chat" / cfg.experiment_name
    folder.mkdir(parents=True, exist_ok=True)
    summary = []
    for split, found in (("train", train), ("validation", validation)):
        lines = "".join(json.dumps({"messages": c.messages, "kind": c.kind}) + "\n" for c in found)
        atomic.write_text(folder / f"{split}.jsonl", lines)
        kinds = convs.kind_counts(found)
        summary.append(f"{len(found):,} {split} ({', '.join(f'{k} {n:,}' for k, n in sorted(kinds.items()))})")
    return f"conversations: {'; '.join(summary)}; written to {folder}"
