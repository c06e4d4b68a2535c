"""`python -m jobs prefer --base REF --config configs/prefer_cpu.yaml [--model-type torch|custom] [--resume ...]`

Teach a chat model what a good answer is: Direct Preference Optimization on pairs of a chosen and a rejected
reply (jobs/data/preference_data.py: made from the stories of the config's data, and/or JSONL files in TRL's
format), starting from the chat model's weights, which are also the frozen reference (model_zoo/preference_loss.py:
the loss, and its backward by hand for the custom models). The same training loop as `train` and `finetune`
(time budget, --resume, torchrun, checkpoints, MLflow, signals); validation logs TRL's rewards/chosen,
rewards/rejected, rewards/margins, rewards/accuracies and logps. Registers `<name>-pref` (the base's name without
its `-chat`, or preference's registered_model_name) with the champion alias, and records the base's URI, version and
run as params and tags.
"""

from __future__ import annotations

from typing import Literal

from jobs.config import ExperimentConfig, load_config
from jobs.data import preference_data
from jobs.errors import ConfigError
from jobs.model_ref import ModelRef
from jobs.terminal import ProgressBar, report_run
from jobs.training.data import StartingPoint
from jobs.training.trainer import TrainResult, run_training


def prefer(config: str, base: str | None = None, model_type: Literal["torch", "custom"] | None = None,
           resume: str | bool | None = None, **overrides) -> None:
    # the command line; run_preference_tuning does the work (the module docstring is what --help shows)
    if base is not None:
        overrides["preference.base"] = base
    if model_type is not None:
        overrides["training.model_type"] = model_type
    cfg = with_preference_name(load_config(config, overrides))
    report_run("prefer", config, overrides, cfg, run_preference_tuning(cfg, resume, progress=ProgressBar))


def run_preference_tuning(cfg: ExperimentConfig, resume: str | bool | None = None, step_hook=None,
                          progress=None) -> TrainResult:
    """The training run: preference pairs as the data, the chat model's weights as the start and the reference."""
    cfg = with_preference_name(cfg)
    return run_training(cfg, resume, step_hook, progress, load_data=preference_data.load,
                        start=StartingPoint.of(cfg.preference.base))


def with_preference_name(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with the name the tuned model registers under: registered_model_name, else `<name>-pref`."""
    if cfg.preference is None or not cfg.preference.base:
        raise ConfigError("say which model to tune: --base models:/<name>-chat@champion (or preference.base in the "
                          "config)")
    base = ModelRef.parse(cfg.preference.base).name or cfg.experiment_name
    name = cfg.registered_model_name or f"{base.removesuffix('-chat')}-pref"
    return cfg.model_copy(update={"registered_model_name": name})
