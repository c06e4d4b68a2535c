"""`python -m jobs evaluate --model REF [--config X.yaml | --text-file PATH | --suite FOLDER] [--json]`
`python -m jobs evaluate --model REF [--config X.yaml] [--text-file PATH] [--max-batches N] [--json]`
`python -m jobs evaluate --model REF --suite FOLDER [--paradigms] [--json]`

Loss, perplexity and bits per byte of a trained model (REF: registry URI, run URI or checkpoint folder) on the
configured validation split, or on any UTF-8 text file tokenized with the model's own tokenizer. With --suite,
instead, its accuracy on a suite of grammar minimal pairs (Zorro or BLiMP files; see jobs/minimal_pairs.py): per
phenomenon (per paradigm with --paradigms) and overall. Logged to MLflow as an evaluation run, and for a
registry URI also on the model version (metrics of its logged model, and tags). With `--json`, standard output
holds one JSON object and nothing else (every human-readable line goes to standard error), so
`python -m jobs evaluate ... --json | jq .loss` works.
"""

from __future__ import annotations

import json as jsonlib
import logging
import math
from pathlib import Path

import numpy as np

from jobs import tracking
from jobs.data import pipeline
from jobs.data.shards import check_validation_fits
from jobs.data.windows import TokenStream, validation_batches
from jobs.training.validation import validation_loss
from jobs.training.runtime import make_runtime
from jobs.data.sources import check_utf8
from jobs.cli import Device, Positive
from jobs.errors import InputError
from jobs.models import load_model

logger = logging.getLogger(__name__)  # `log` is the flag that says whether to log to MLflow


def evaluate(model: str, config: str | None = None, text_file: str | None = None, max_batches: Positive | None = None,
             batch_size: Positive = 8, device: Device = "auto", json: bool = False, log: bool = True,
             suite: str | None = None, paradigms: bool = False, **overrides) -> None:
    # the command line (it returns nothing, so fire prints nothing after the JSON line)
    if text_file is not None and (config or overrides):
        raise InputError("--text-file is scored with the model's own tokenizer and context; --config and config "
                         "overrides describe other data: give one or the other")
    if suite is not None and (config or text_file or max_batches or overrides):
        raise InputError("--suite scores minimal pairs; --config, --text-file, --max-batches and config overrides "
                         "are for the loss: give them in a separate evaluate")
    say = logger.info if json else print  # with --json, standard output holds the JSON line and nothing else
    if suite is not None:
        result = run_suite(model, suite, device, log, paradigms, say=say)
    else:
        result = run_evaluation(model, config, text_file, max_batches, batch_size, device, log, say=say, **overrides)
    if json:
        print(jsonlib.dumps(result))


def run_suite(model: str, suite_path: str, device: str = "auto", log: bool = True, paradigms: bool = False,
              say=print) -> dict:
    """A model's accuracy on a minimal-pair suite, told (`say`) as a table, logged, and returned."""
    from jobs import minimal_pairs

    suite = minimal_pairs.read_suite(suite_path)  # a bad suite is refused before a model loads
    if log:
        tracking.connect()
    loaded = load_model(model, device)
    logger.info(f"{suite.name}: {suite.n_pairs:,} pairs in {len(suite.paradigms)} paradigms ({suite.layout} layout)")
    score = minimal_pairs.score_suite(loaded.model, loaded.tokenizer, suite, loaded.device, progress=True)
    say(score.table(paradigms))
    say(f"{score.tokens:,} tokens scored in {score.seconds:.1f} s ({score.tokens / score.seconds:,.0f} tokens/s); "
          f"chance is 50%")
    if log:
        tracking.log_evaluation(loaded.state, model, {"eval_source": f"suite {suite.name}", "suite": suite.name},
                                score.metrics(), {"suite": suite.name, "suite_sha256": suite.sha256},
                                run_name=f"evaluate-{suite.name}", version_tags=score.version_tags())
    return score.to_dict()


def run_evaluation(model: str, config: str | None = None, text_file: str | None = None,
                   max_batches: int | None = None, batch_size: int = 8, device: str = "auto", log: bool = True,
                   say=print, **overrides) -> dict:
    """A model's loss on a text file or on its data's validation split, told (`say`), logged, and returned."""
    if log:
        tracking.connect()  # a tracking server that does not answer fails now, in seconds, not after the work
    loaded = load_model(model, device)
    T = loaded.config.max_seq_len
    if text_file is not None:
        path = Path(text_file).expanduser()
        if not path.exists():
            raise InputError(f"--text-file: not found: {path}")
        if not path.is_file():
            raise InputError(f"--text-file: {path} is not a regular file (a folder, device or pipe)")
        check_utf8(path)
        text = path.read_text(encoding="utf-8")
        tokens = np.asarray(loaded.tokenizer.encode(text), dtype=np.int64)
        n_bytes, source = len(text.encode("utf-8")), str(path)
        if len(tokens) < 2:
            raise InputError(f"--text-file {path}: {len(tokens)} token(s); the loss needs at least 2 (a token and "
                             f"the next)")
        if len(tokens) < T + 1:
            T = max(1, len(tokens) - 1)
    else:
        from jobs.config import load_config

        experiment = load_config(config, overrides) if (config or overrides) else None
        data_config = experiment.data if experiment else _data_config_from_state(loaded)
        # The model's own tokenizer encodes the text (reusing token files it made before): no tokenizer is
        # trained only to be refused
        prepared = pipeline.prepare(data_config, tokenizer=loaded.tokenizer)
        tokens = prepared.open("validation")
        n_bytes = prepared.meta.text_bytes["validation"] * len(tokens) / prepared.meta.tokens["validation"]
        source = f"{prepared.meta.source} (validation)"
    runtime = make_runtime(loaded.model_type, loaded.model, loaded.device)
    check_validation_fits(tokens, T)
    loss, n_tokens = validation_loss(runtime, validation_batches(TokenStream(tokens, T), batch_size, max_batches))
    covered_bytes = n_bytes * n_tokens / max(len(tokens) - 1, 1)
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": n_tokens,
              "bits_per_byte": pipeline.bits_per_byte(loss, n_tokens, covered_bytes)}
    say(f"{source}: loss {loss:.4f}, perplexity {result['perplexity']:.2f}, bits/byte {result['bits_per_byte']:.4f} "
          f"over {n_tokens:,} tokens")
    if log:
        tracking.log_evaluation(loaded.state, model, {"eval_source": source[:500]},
                                {f"eval/{k}": v for k, v in result.items()})
    return result


def _data_config_from_state(loaded):
    """The data the model was validated on, from its checkpoint, with this project's assets folder: what a file
    says never decides where files are written (the checkpoint's own assets_dir is not used)."""
    from pydantic import ValidationError

    from jobs.config import ASSETS_DIR, DataConfig
    from jobs.errors import CheckpointError, first_problem

    saved = (loaded.state.experiment or {}).get("data")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{loaded.folder / 'state.json'} does not say what data the model was trained on "
                              f"(no experiment.data): give --text-file FILE or --config X.yaml")
    try:
        return DataConfig.model_validate({**saved, "assets_dir": ASSETS_DIR})
    except ValidationError as error:
        where, message = first_problem(error)
        raise CheckpointError(f"{loaded.folder / 'state.json'}: experiment.data.{'.'.join(map(str, where))}: "
                              f"{message}") from None
