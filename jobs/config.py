"""The experiment config: one YAML file with `data`, `model` and `training` sections.

This is the one home of the schema. Every key has a type and a default; loading validates the whole file, and
an unknown key, a wrong type or an impossible value is a one-line ConfigError naming the key. Any key can be
overridden from the command line with a dotted name: `--training.learning_rate=1e-3`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.errors import first_problem
from model_zoo.config import ModelConfig
from model_zoo.errors import ConfigError
from model_zoo.optimizer import MuonSettings

END_OF_TEXT = "<|endoftext|>"

# Where things live, relative to the working folder (the project folder; /app in the images). The one place
# these defaults are written.
ASSETS_DIR = "assets"  # data.assets_dir: downloads, tokenizers, token shards, checkpoints, compare's figures
TRACKING_STORE = "mlflow.db"  # the embedded MLflow store when MLFLOW_TRACKING_URI is unset; artifacts in mlruns/


class _Section(BaseModel):
    # allow_inf_nan=False: every float field refuses NaN and infinities (a NaN learning rate trains nothing)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where text comes from, and how it becomes tokens (see jobs/data/)."""

    dataset: Literal["tinystories", "fineweb-edu", "shakespeare", "local"] = "tinystories"
    train_files: list[str] | None = None  # local: .txt, .jsonl or .parquet files (a path or a list)
    val_files: list[str] | None = None  # local: optional; without them a hold-out fraction of train is used
    text_field: str = "text"  # the column holding text in .jsonl / .parquet
    separator: str | None = END_OF_TEXT  # .txt: a line holding this separates documents (a file with none is
    # one document, as written); null: blank lines separate documents
    val_separator: str | None = END_OF_TEXT  # the same for val_files, where they are written another way (unset:
    # data.separator's value; e.g. more/ stories separated by <|endoftext|> lines, valid.txt's by blank lines)
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5)  # hold-out share where a dataset has no validation split
    subset_size: int | None = Field(None, gt=0)  # use at most this many training documents
    skip_documents: int = Field(0, ge=0)  # leave out the first N training documents (before subset_size and the
    # hold-out split): e.g. the stories another config validates on (configs/prefer_cpu.yaml)
    tokenizer: str = "bpe"  # "bpe": train a byte-level BPE here; "gpt2" (from the local HF cache) or a path
    vocab_size: int = Field(4096, gt=0, le=1 << 20)  # for tokenizer: bpe
    seed: int = 1337  # for the hold-out split
    num_proc: int | None = Field(None, gt=0)  # worker processes for datasets' map
    assets_dir: str = ASSETS_DIR  # datasets, tokenizers, token shards and checkpoints live under here

    @field_validator("train_files", "val_files", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value

    @model_validator(mode="before")
    @classmethod
    def _val_files_written_like_train_files(cls, values: Any) -> Any:
        """An unset val_separator is data.separator's value (stored so: a saved config reads back the same)."""
        if isinstance(values, dict) and "val_separator" not in values:
            values = {**values, "val_separator": values.get("separator", END_OF_TEXT)}
        return values

    @model_validator(mode="after")
    def _local_needs_files(self) -> "DataConfig":
        if self.dataset == "local" and not self.train_files:
            raise ValueError("data.train_files is required when data.dataset is 'local'")
        return self

    @field_validator("assets_dir")
    @classmethod
    def _assets_is_a_folder(cls, value: str) -> str:
        """`~` is expanded here, once, so that every path under the assets folder agrees on where it is."""
        folder = Path(value).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{value} exists and is not a folder (data.assets_dir holds datasets, tokenizers and "
                             f"checkpoints)")
        return str(folder) if value.startswith("~") else value


class TrainingConfig(_Section):
    model_type: Literal["torch", "custom"] = "torch"
    batch_size: int = Field(8, gt=0, le=1 << 16)  # sequences per micro-batch
    gradient_accumulation_steps: int = Field(1, gt=0)  # micro-batches per optimizer step
    max_steps: int | None = Field(None, gt=0)  # optimizer steps; when null, num_epochs decides
    num_epochs: float = Field(1.0, gt=0)  # passes over the training tokens (an epoch = train tokens / tokens per step)
    max_time_minutes: float | None = Field(None, gt=0)  # stop (and save) after this much training time
    learning_rate: float = Field(3e-4, gt=0)
    min_learning_rate: float = Field(3e-5, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)  # share of max_steps spent warming up linearly from 0...
    warmup_steps: int | None = Field(None, ge=0)  # ...or this many optimizer steps (wins over warmup_ratio)
    lr_decay: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # wsd: warmup, stable, linear cool-down
    cooldown_ratio: float = Field(0.2, gt=0, le=1)  # wsd: the last share of the run (steps or budget) cooling down
    weight_decay: float = Field(0.1, ge=0)
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for the blocks' weight matrices (the muon_*
    # settings), AdamW (learning_rate, weight_decay, betas) for embeddings, norms and biases; model_zoo/optimizer.py
    muon_learning_rate: float = Field(0.02, gt=0, le=1)  # Muon's peak, before sqrt(max(1, out/in))
    muon_weight_decay: float = Field(0.0, ge=0, lt=1)  # decoupled, like AdamW's: W -= lr * wd * W
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    muon_ns_steps: int = Field(5, gt=0, le=20)  # Newton-Schulz iterations per update
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)  # null: no clipping
    eval_every: int = Field(100, gt=0)  # optimizer steps between validations
    eval_batches: int = Field(20, gt=0)  # validation batches per evaluation
    log_every: int = Field(1, gt=0)  # optimizer steps between logged metrics
    checkpoint_every: int = Field(100, gt=0)
    keep_checkpoints: int = Field(3, ge=0)  # rotating window of step checkpoints, besides best and latest
    sample_every: int | None = Field(None, gt=0)  # generate a sample every N steps (default: at each validation)
    sample_prompt: str = "Once upon a time"
    sample_length: int = Field(60, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: mixed precision (CUDA), fp32 master weights
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the torch model
    seed: int = 1337
    num_threads: int | None = Field(None, gt=0)  # CPU threads for torch (default: torch's choice)
    final_evals: list[str] = []  # minimal-pair suites (folders, see jobs/minimal_pairs.py) scored on the registered
    # model when the run ends, logged with the run and the model version: e.g. ../shared/data/zorro
    final_evals_history: bool = False  # also score the kept step-N checkpoints: how accuracy grew during the run

    @field_validator("final_evals", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def muon_settings(self) -> MuonSettings | None:
        """What model_zoo.optimizer needs of Muon, or None when training.optimizer is adamw."""
        if self.optimizer != "muon":
            return None
        return MuonSettings(self.muon_learning_rate, self.muon_weight_decay, self.muon_momentum,
                            ns_steps=self.muon_ns_steps)

    @model_validator(mode="after")
    def _lr_order(self) -> "TrainingConfig":
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"training.min_learning_rate ({self.min_learning_rate}) is above training.learning_rate "
                f"({self.learning_rate})"
            )
        return self


# Experiment and registered model names become folder names under assets_dir and MLflow registry names: letters,
# digits, '_', '-' and '.', starting with a letter or digit (no path separators, no '..' out of assets_dir).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


def _check_name(value: str | None) -> str | None:
    if value is not None and (not re.fullmatch(NAME_PATTERN, value) or ".." in value):
        raise ValueError(f"{value!r} is not a usable name: use letters, digits, '_', '-' and '.' (no '/' or '..'), "
                         f"starting with a letter or digit, at most 100 characters")
    return value


class ChatConfig(_Section):
    """Chat fine-tuning (`python -m jobs finetune`): the base model and the conversations (jobs/data/conversations.py)."""

    base: str | None = None  # the model to fine-tune: registry URI, run URI or checkpoint folder (--base sets it)
    from_stories: bool = True  # conversations made from data's stories (train and validation stories kept apart)
    max_conversations: int | None = Field(None, gt=0)  # at most this many training conversations
    val_conversations: int = Field(200, gt=0)  # validation conversations (the first made from validation stories)
    per_story: int = Field(1, ge=1, le=3)  # conversations (of different kinds) made from each story
    max_answer_words: int | None = Field(None, gt=0)  # cut stories after the last whole sentence within this many
    # words, so conversations fit a short context (longer ones are dropped, and counted, when packed)
    conversation_files: list[str] | None = None  # your own JSONL messages files, for training
    val_conversation_files: list[str] | None = None  # and for validation
    skip_bad: bool = False  # skip bad JSONL records (and count them) instead of refusing the file
    hub_dataset: str | None = None  # a Hugging Face Hub dataset with a `messages` column (needs the network)
    hub_split: str = "train"  # its split to train on (validation conversations come from the other sources)
    seed: int = 1337  # which kind of conversation each story becomes, and the words asked for

    @field_validator("conversation_files", "val_conversation_files", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class PreferenceConfig(_Section):
    """Preference tuning (`python -m jobs prefer`): the model to tune, DPO's settings and the pairs
    (jobs/data/preference_data.py)."""

    base: str | None = None  # the chat model to tune: registry URI, run URI or checkpoint folder (--base sets it)
    beta: float = Field(0.1, gt=0, le=10, allow_inf_nan=False)  # how far the policy may move from the reference
    sft: float = Field(0.0, ge=0, le=10, allow_inf_nan=False)  # weight of an SFT loss on the chosen replies
    from_stories: bool = True  # pairs made from the data's stories (train and validation stories kept apart)
    max_pairs: int | None = Field(None, gt=0)  # at most this many training pairs
    val_pairs: int = Field(200, gt=0)  # validation pairs (the first made from validation stories)
    max_answer_words: int | None = Field(None, gt=0)  # stories cut after the last whole sentence within this many
    words_per_story: int = Field(1, ge=1, le=10)  # word requests made from each training story (different words)
    name_repeats: int = Field(1, ge=1, le=100)  # each name question made from stories is trained on this many times
    # (stories name few characters: the word requests can outnumber them 80 to 1)
    pair_files: list[str] | None = None  # JSONL pairs in TRL's format, for training
    val_pair_files: list[str] | None = None  # and for validation
    skip_bad: bool = False  # skip bad JSONL records (and count them) instead of refusing the file
    seed: int = 1337  # the words asked for, the rejected story and the wrong name
    rejected: Literal["story", "greedy"] = "story"  # the rejected reply of pairs made from stories: "story", another
    # story (words) or name (names); "greedy", the tuned model's own greedy reply where it gets the request wrong

    @field_validator("pair_files", "val_pair_files", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ExperimentConfig(_Section):
    experiment_name: str = Field(min_length=1)
    registered_model_name: str | None = None  # default: experiment_name

    @field_validator("experiment_name", "registered_model_name")
    @classmethod
    def _usable_name(cls, value: str | None) -> str | None:
        return _check_name(value)
    data: DataConfig = DataConfig()
    model: dict[str, Any] = {}
    training: TrainingConfig = TrainingConfig()
    chat: ChatConfig | None = None  # only for finetune
    preference: PreferenceConfig | None = None  # only for prefer

    @field_validator("model")
    @classmethod
    def _valid_model(cls, value: dict[str, Any]) -> dict[str, Any]:
        ModelConfig.from_dict(value)  # raises ConfigError naming the key
        return value

    @property
    def model_config_(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    @property
    def model_name(self) -> str:
        return self.registered_model_name or self.experiment_name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply dotted overrides ({'training.learning_rate': 1e-3}), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {path} is a directory; name a YAML file in it, e.g. configs/cpu_demo.yaml")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or {})
    return validate_config(raw, source=str(path) if path else "config")


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of settings; anything bigger is not one


def read_yaml(path: Path) -> Any:
    """A YAML file's content, read safely: UTF-8 text, at most MAX_CONFIG_BYTES, no tags (safe_load) and no aliases
    (`*name`): a few hundred bytes of nested aliases expand to gigabytes, and a config has no use for them."""
    data = path.read_bytes()[:MAX_CONFIG_BYTES + 1]
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes; a config is a YAML page of settings")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start:,}); save the config as UTF-8") from None
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{path}: line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                  f"accepted in configs; write the value out")
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None


YAML_NULLS = {"null", "Null", "NULL", "~", "None"}  # fire passes `--key=null` on as the string 'null'


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted command-line overrides into the YAML's nesting; `null` means None, as it would in the YAML."""
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        if isinstance(value, str) and value in YAML_NULLS:
            value = None
        elif isinstance(value, str) and value.startswith("[") and value.endswith("]"):
            # fire reads --x=[a,b] as a list only when it is a Python literal; [/some/dir] arrives as text
            value = [item.strip().strip("'\"") for item in value[1:-1].split(",") if item.strip()]
        keys = dotted.replace("-", "_").split(".")
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override --{dotted}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def validate_config(raw: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        where, message = first_problem(error)
        raise ConfigError(f"{source}: {'.'.join(str(part) for part in where) or '(top level)'}: {message}") from None
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
