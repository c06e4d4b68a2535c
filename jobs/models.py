"""Load the model a reference names (jobs/model_ref.py): what every job that uses a trained model calls.

Registry and run references are downloaded with MLflow into a local folder; the model itself is always rebuilt
from a checkpoint folder (safetensors + json + tokenizer.json: jobs/checkpoint.py), never unpickled.
"""

from __future__ import annotations

from pathlib import Path

from jobs.checkpoint import LoadedModel, load_model_folder
from jobs.errors import CheckpointError
from jobs.model_ref import ModelRef


def checkpoint_folder(ref: ModelRef) -> Path:
    """A local checkpoint folder holding the model (downloaded from MLflow for a registry or run reference)."""
    if ref.kind == "folder":
        return Path(ref.text).expanduser()
    import mlflow

    from jobs import tracking

    tracking.connect()  # a server that does not answer fails here, in seconds
    uri = ref.text
    if ref.kind == "run" and uri.rstrip("/").count("/") == 1:
        uri = uri.rstrip("/") + "/model"  # runs:/<id> means the model logged by that run
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as error:
        raise CheckpointError(f"cannot load {ref.text} from MLflow ({str(error).splitlines()[0][:200]})") from None
    for candidate in (local / "artifacts" / "checkpoint", local / "checkpoint", local):
        if (candidate / "state.json").is_file():
            return candidate
    raise CheckpointError(f"{ref.text} holds no checkpoint (looked in {local})")


def load_model(model: str | ModelRef, device: str = "auto") -> LoadedModel:
    """The model a reference names, on device."""
    ref = model if isinstance(model, ModelRef) else ModelRef.parse(model)
    return load_model_folder(checkpoint_folder(ref), device)
