"""`python -m jobs finetune --base REF --config configs/chat_cpu.yaml [--model-type torch|custom] [--resume ...]`

Teach a trained base model to chat: start from its weights and tokenizer (REF: `models:/<name>@champion`, a run
URI or a checkpoint folder) and train on conversations (jobs/data/chat_data.py: made from the stories of the
config's data, and/or your JSONL files), learning only the assistant's tokens (the masked loss). The same
training loop as `train` (time budget, --resume and --resume auto, torchrun, checkpoints, MLflow, signals); the
data and the loss mask differ. Registers `<base name>-chat` (or chat's registered_model_name) with the champion
alias, and records the base model's URI, version and run as params and tags.
"""

from __future__ import annotations

from typing import Literal

from jobs.model_ref import ModelRef

from jobs.config import ExperimentConfig, load_config
from jobs.data import chat_data
from jobs.errors import ConfigError
from jobs.terminal import ProgressBar, report_run
from jobs.training.data import StartingPoint
from jobs.training.trainer import TrainResult, run_training


def finetune(config: str, base: str | None = None, model_type: Literal["torch", "custom"] | None = None,
             resume: str | bool | None = None, **overrides) -> None:
    # the command line; run_finetuning does the work (the module docstring is what --help shows)
    if base is not None:
        overrides["chat.base"] = base
    if model_type is not None:
        overrides["training.model_type"] = model_type
    cfg = with_chat_name(load_config(config, overrides))
    report_run("finetune", config, overrides, cfg, run_finetuning(cfg, resume, progress=ProgressBar))


def run_finetuning(cfg: ExperimentConfig, resume: str | bool | None = None, step_hook=None,
                   progress=None) -> TrainResult:
    """The training run of a fine-tune: conversations as the data, the base model's weights as the start."""
    cfg = with_chat_name(cfg)
    return run_training(cfg, resume, step_hook, progress, load_data=chat_data.load,
                        start=StartingPoint.of(cfg.chat.base))


def with_chat_name(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with the name the chat model registers under: registered_model_name, else `<base name>-chat`."""
    if cfg.chat is None or not cfg.chat.base:
        raise ConfigError("say which model to fine-tune: --base models:/<name>@champion (or chat.base in the config)")
    name = cfg.registered_model_name or f"{base_name(cfg.chat.base, cfg.experiment_name)}-chat"
    return cfg.model_copy(update={"registered_model_name": name})


def base_name(ref: str, fallback: str) -> str:
    """The base model's registry name (`models:/tinystories_cpu@champion` -> tinystories_cpu), else fallback."""
    return ModelRef.parse(ref).name or fallback
