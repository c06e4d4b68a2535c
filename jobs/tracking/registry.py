"""Registering a checkpoint in the MLflow model registry, with the alias generate and chat load.

Called by tracking.TrackedRun.register at the end of a training run; the logged model's code is
jobs/serving/pyfunc_model.py (MLflow runs that file to serve it, nothing is pickled)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import infer_signature

from jobs.checkpoint import read_state
import jobs.tracking.store as store

log = logging.getLogger(__name__)

CHAMPION = "champion"  # the alias of the version with the best validation loss: models:/<name>@champion
PYFUNC_FILE = Path(__file__).parent.parent / "serving" / "pyfunc_model.py"


def log_and_register(checkpoint: Path, model_name: str, run_id: str) -> str:
    """Log `checkpoint` as the run's model and register a version. `champion` moves to it only if its
    validation loss beats the current champion's on the same validation data; `models:/<name>/latest`
    (MLflow's own, which is why `latest` cannot be an alias) always means the newest version. Returns the version."""
    import torch

    state = read_state(checkpoint)
    val_loss = state.best_val_loss
    example = pd.DataFrame({"prompt": ["Once upon a time"]})
    signature = infer_signature(example, ["generated text"],
                                params={"max_length": 100, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "seed": 0})
    active = mlflow.active_run()
    in_run = contextlib.nullcontext() if active and active.info.run_id == run_id else mlflow.start_run(run_id=run_id)
    with in_run, tempfile.TemporaryDirectory() as tmp:
        # The served model needs weights, state and tokenizer; the optimizer state stays with the run.
        served = Path(tmp) / "checkpoint"
        served.mkdir()
        for name in ("model.safetensors", "state.json", "tokenizer.json"):
            shutil.copyfile(checkpoint / name, served / name)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={"checkpoint": str(served)},
            signature=signature, input_example=example, registered_model_name=model_name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              "safetensors", "tokenizers", "transformer-fundamentals"],
        )
    client = store.client()
    version = str(info.registered_model_version)
    client.set_model_version_tag(model_name, version, "val_loss", f"{val_loss:.6f}")
    client.set_model_version_tag(model_name, version, "model_type", state.model_type)
    # Losses compare only on the same validation tokens: the same dataset (files, document rules) and tokenizer.
    val_data = f"{state.dataset_id or 'unknown'}/{(state.tokenizer_sha256 or 'unknown')[:12]}"
    client.set_model_version_tag(model_name, version, "val_data", val_data)
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION)
    except Exception:  # no champion yet
        champion = None
    if champion is not None and champion.tags.get("val_data") != val_data:
        log.info(f"champion stays at version {champion.version} of {model_name}: its validation loss was measured on "
              f"other data ({champion.tags.get('val_data', 'not recorded')}; version {version}: {val_data}), so the "
              f"two do not compare. To serve version {version}, set the alias on its page in the MLflow UI or call "
              f"store.client().set_registered_model_alias({model_name!r}, {CHAMPION!r}, {version!r})")
    elif champion is None or val_loss <= float(champion.tags.get("val_loss", "inf")):
        client.set_registered_model_alias(model_name, CHAMPION, version)
    return version


def champion_version(model_name: str) -> str | None:
    """The version the champion alias serves now (None without one, or when the registry cannot be asked)."""
    try:
        return str(store.client().get_model_version_by_alias(model_name, CHAMPION).version)
    except Exception:
        return None


def version_of(model_ref: str):
    """The model version a registry reference names (`models:/<name>@<alias>`, `models:/<name>/<version>`, or
    `models:/<name>/latest`), else None: a run URI or a checkpoint folder is not a version."""
    from jobs.model_ref import ModelRef

    ref = ModelRef.parse(model_ref)
    if ref.kind != "registry":
        return None
    client = store.client()
    if ref.alias:
        return client.get_model_version_by_alias(ref.name, ref.alias)
    if ref.version == "latest":
        return max(client.search_model_versions(f"name='{ref.name}'"), key=lambda v: int(v.version))
    return client.get_model_version(ref.name, ref.version)


def logged_model_id(version) -> str | None:
    """The id of the logged model a version was registered from (MLflow 3: metrics logged with it show on the
    version's page). The registry does not always fill model_id in; the version's source `models:/<id>` holds it."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = getattr(version, "source", "") or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def registered_version(run_id: str | None) -> str | None:
    """The model version a training run registered (its newest, if several), or None: how a restarted job tells
    a run that reached its end and was registered from one that crashed while registering."""
    if run_id is None:
        return None
    versions = store.client().search_model_versions(f"run_id='{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def log_export(model_ref: str, folder: Path, format: str, dtype: str, sha256: str):
    """Log an export of a registry version (`folder`) as artifacts of the version's run, under
    exports/<format>-<dtype>, and tag the version with its SHA-256. Returns the version."""
    version = version_of(model_ref)
    client = store.client()
    client.log_artifacts(version.run_id, str(folder), f"exports/{format}-{dtype}")
    client.set_model_version_tag(version.name, version.version, f"export.{format}.{dtype}.sha256", sha256)
    return version
