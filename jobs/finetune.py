"""`python -m jobs finetune --base REF --config configs/chat_cpu.yaml [--model-type torch|custom] [--resume ...]`

Teach a trained base model to chat: start from its weights and tokenizer (REF: `models:/<name>@champion`, a run
URI or a checkpoint folder) and train on conversations (jobs/data/chat_data.py: made from the stories of the
config's data, and/or your JSONL files), learning only the assistant's tokens (the masked loss). The same
training loop as `train` (time budget, --resume and --resume auto, torchrun, checkpoints, MLflow, signals); the
data and the loss mask differ. Registers `<base name>-chat` (or chat's registered_model_name) with the champion
alias, and records the base model's URI, version and run as params and tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Literal

from jobs import atomic
from jobs.cli import typed
from jobs.checkpoint import CheckpointState
from jobs.config import ExperimentConfig, load_config
from jobs.data import chat_data, chat_template
from jobs.data.sources import load_documents
from jobs.errors import ConfigError
from jobs.train import ProgressBar, launcher, report
from jobs.training.trainer import Trainer, TrainResult, run_training
from jobs.training.distributed import Distributed
from jobs.training.validation import masked_validation_loss
from model_zoo.build import build_model

log = logging.getLogger(__name__)


@typed
def finetune(config: str, base: str | None = None, model_type: Literal["torch", "custom"] | None = None,
             resume: str | bool | None = None, **overrides) -> None:
    # the command line; run_finetuning does the work (the module docstring is what --help shows)
    if base is not None:
        overrides["chat.base"] = base
    if model_type is not None:
        overrides["training.model_type"] = model_type
    cfg = with_chat_name(load_config(config, overrides))
    result = run_finetuning(cfg, resume, progress=ProgressBar)
    flags = [f"--config {config}"] + [f"--{key}={value}" for key, value in overrides.items()]
    report(cfg, result, f"{launcher()} finetune {' '.join(flags)}")


def run_finetuning(cfg: ExperimentConfig, resume: str | bool | None = None, step_hook=None,
                   progress=None) -> TrainResult:
    return run_training(with_chat_name(cfg), resume, trainer=ChatTrainer, step_hook=step_hook, progress=progress)


def with_chat_name(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with the name the chat model registers under: registered_model_name, else `<base name>-chat`."""
    if cfg.chat is None or not cfg.chat.base:
        raise ConfigError("say which model to fine-tune: --base models:/<name>@champion (or chat.base in the config)")
    name = cfg.registered_model_name or f"{base_name(cfg.chat.base, cfg.experiment_name)}-chat"
    return cfg.model_copy(update={"registered_model_name": name})


class ChatTrainer(Trainer):
    """Trainer with ChatData and the base model's weights as the starting point."""

    @staticmethod
    def load_data(cfg: ExperimentConfig, distributed: Distributed) -> "ChatData":
        from jobs.serving.loading import load_model

        base = load_model(cfg.chat.base, "cpu")  # weights, tokenizer and state; moved to the device later
        chat_template.require_chat(base.tokenizer)
        return ChatData(cfg, base, distributed)

    def initial_model(self, resuming: bool):
        model = build_model(self.model_config, self.tc.model_type)
        if not resuming:  # a resume loads its own checkpoint's weights instead
            model.load_state_dict(self.data.base.model.state_dict())  # same names either model type
        return model

    def log_run_params(self) -> None:
        super().log_run_params()
        self.tracked.set_tags({f"base_{key}": value for key, value in self.data.lineage.items()})

    def sample_prompt_ids(self) -> list[int]:
        """The sample's prompt: training.sample_prompt as a user's message, the assistant's reply to come."""
        return chat_template.render(self.tokenizer, [{"role": "user", "content": self.tc.sample_prompt}],
                                    add_generation_prompt=True)[0]

    def sample_text(self, generated: str) -> str:
        return f"user: {self.tc.sample_prompt}\nassistant: {generated}"


class ChatData:
    """What `finetune` learns from: conversations packed into windows with their masks (TextData's interface)."""

    def __init__(self, cfg: ExperimentConfig, base, distributed: Distributed):
        self.base, self.tokenizer = base, base.tokenizer
        seq_len = base.config.max_seq_len
        train, validation = conversations(cfg)
        self.train = chat_data.pack(train, self.tokenizer, seq_len)
        self.validation = chat_data.pack(validation, self.tokenizer, seq_len)
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
        self.lineage = lineage(cfg.chat.base, base.state)
        if distributed.is_main:
            log.info(f"chat data: {self.describe(self.train)} to train; {self.describe(self.validation)} to validate")

    @staticmethod
    def describe(packed: chat_data.PackedChat) -> str:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(packed.kinds.items()))
        return (f"{len(packed.tokens):,} windows ({kinds}; {packed.scored_tokens:,} assistant tokens"
                f"{f'; {packed.dropped_too_long:,} longer than the context, dropped' if packed.dropped_too_long else ''})")

    def experiment(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The base model's architecture (only dropout may be changed)."""
        unknown = set(cfg.model) - {"dropout"}
        if unknown:
            raise ConfigError(f"model.{sorted(unknown)[0]}: a fine-tuned model keeps its base's shape (only "
                              f"model.dropout may be set)")
        return cfg.model_copy(update={"model": self.base.config.to_dict() | dict(cfg.model)})

    def loader(self, batch_size: int, seq_len: int, seed: int, distributed: Distributed) -> chat_data.ChatWindows:
        return chat_data.ChatWindows(self.train, batch_size, seed=seed, rank=distributed.rank,
                                     world_size=distributed.world_size)

    def validation_loss(self, runtime, batch_size: int, seq_len: int, max_batches: int, distributed: Distributed) -> float:
        batches = chat_data.validation_windows(self.validation, batch_size, max_batches, distributed.rank,
                                               distributed.world_size)
        return masked_validation_loss(runtime, batches, distributed)[0]

    def metrics(self, loss: float) -> dict:
        return {}

    def params(self) -> dict:
        counts = {f"chat_train_{kind}": n for kind, n in self.train.kinds.items()}
        counts |= {f"chat_val_{kind}": n for kind, n in self.validation.kinds.items()}
        return counts | {"dataset_id": self.dataset_id, "train_windows": len(self.train.tokens),
                         "val_windows": len(self.validation.tokens), "train_assistant_tokens": self.train.scored_tokens,
                         "val_assistant_tokens": self.validation.scored_tokens,
                         "chat_dropped_too_long": self.train.dropped_too_long + self.validation.dropped_too_long} | \
            {f"base_{key}": value for key, value in self.lineage.items()}


def conversations(cfg: ExperimentConfig) -> tuple[list, list]:
    """(train, validation) conversations: from the data's stories (train and validation stories apart) and files."""
    chat = cfg.chat
    train, validation = [], []
    skipped = Counter()
    for path in chat.conversation_files or []:
        found, skipped[path] = chat_data.read_conversations(path, chat.skip_bad)
        train += found
    for path in chat.val_conversation_files or []:
        found, skipped[path] = chat_data.read_conversations(path, chat.skip_bad)
        validation += found
    if chat.hub_dataset:
        found, skipped[chat.hub_dataset] = chat_data.hub_conversations(chat.hub_dataset, chat.hub_split, chat.skip_bad)
        train += found
    for path, n in skipped.items():
        if n:
            log.warning(f"chat data: {path}: {n:,} bad record(s) skipped (chat.skip_bad)")
    if chat.from_stories:
        from jobs.data.pipeline import DataLayout

        stories = load_documents(cfg.data, DataLayout.of(cfg.data).cache_dir)
        train += chat_data.conversations_from_stories(stories["train"]["text"], chat.seed, chat.max_conversations,
                                                      chat.max_answer_words, chat.per_story)
        validation += chat_data.conversations_from_stories(stories["validation"]["text"], chat.seed + 1,
                                                           chat.val_conversations, chat.max_answer_words,
                                                           chat.per_story)
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
    train, validation = conversations(cfg)
    folder = Path(cfg.data.assets_dir).expanduser() / "chat" / cfg.experiment_name
    folder.mkdir(parents=True, exist_ok=True)
    summary = []
    for split, found in (("train", train), ("validation", validation)):
        lines = "".join(json.dumps({"messages": c.messages, "kind": c.kind}) + "\n" for c in found)
        atomic.write_text(folder / f"{split}.jsonl", lines)
        kinds = chat_data.kind_counts(found)
        summary.append(f"{len(found):,} {split} ({', '.join(f'{k} {n:,}' for k, n in sorted(kinds.items()))})")
    return f"conversations: {'; '.join(summary)}; written to {folder}"


def base_name(ref: str, fallback: str) -> str:
    """The base model's registry name (`models:/tinystories_cpu@champion` -> tinystories_cpu), else fallback."""
    if ref.startswith("models:/"):
        return ref[len("models:/"):].split("@")[0].split("/")[0]
    return fallback


def lineage(ref: str, state: "CheckpointState") -> dict:
    """Where the fine-tuned model comes from: the base's URI, registry version (when it is one) and run."""
    found = {"model": ref, "run_id": state.mlflow_run_id or "unknown", "step": state.step}
    if ref.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        name, _, alias = ref[len("models:/"):].partition("@")
        try:
            found["version"] = (MlflowClient().get_model_version_by_alias(name, alias).version if alias
                                else name.split("/")[1])
        except Exception:
            found["version"] = "unknown"
    return found
