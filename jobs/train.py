"""`python -m jobs train --config configs/X.yaml [--model-type torch|custom] [--resume [PATH|auto]] [--KEY=VALUE ...]`

Prepares missing data, trains either model type, tracks everything in MLflow, keeps checkpoints, and
registers the best one as a model version that generate and chat load by alias.

--resume             continue the newest run of this experiment from its newest checkpoint (an error if none)
--resume PATH        continue from the checkpoint folder PATH
--resume auto        continue the newest run if it has a checkpoint, else start a fresh run: the command a
                     restarted pod or container runs, with nothing to edit between the first start and a restart
A run that already reached its end (training.max_steps, or the time budget) has nothing to resume: the job
says so, trains nothing and registers nothing.
"""

from __future__ import annotations

from typing import Literal

from jobs.config import load_config
from jobs.terminal import ProgressBar, report_run
from jobs.training.trainer import run_training


def train(config: str | None = None, model_type: Literal["torch", "custom"] | None = None,
          resume: str | bool | None = None, **overrides) -> None:
    # the command line; run_training does the work (its module docstring is what --help shows)
    if model_type is not None:
        overrides["training.model_type"] = model_type
    cfg = load_config(config, overrides)
    report_run("train", config, overrides, cfg, run_training(cfg, resume=resume, progress=ProgressBar))
