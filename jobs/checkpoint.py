"""Checkpoints: one folder each, nothing pickled, written atomically; and a model rebuilt from one (what
training, serving and evaluation share).

    model.safetensors      the weights (same keys for both model types)
    optimizer.safetensors  the optimizer's tensors (AdamW moments; Muon's momentum)
    state.json             step, model type, configs, best validation loss, data position, optimizer scalars,
                           MLflow run id, RNG states (as lists of bytes)
    tokenizer.json         the tokenizer, so a checkpoint folder alone is enough to generate text

A checkpoint is written into a temporary folder and renamed into place, so a crash mid-write never leaves a
folder that looks whole; loading uses safetensors and json only, never pickle.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from jobs.data.tokenizer import LoadedTokenizer, load_tokenizer
from jobs.errors import CheckpointError, first_problem
from model_zoo.build import build_model, resolve_device
from model_zoo.config import ModelConfig
from model_zoo.errors import ConfigError

REQUIRED_FILES = ("model.safetensors", "state.json", "tokenizer.json")
UMASK = os.umask(0o022)  # read once, at import (setting it back at once): the mode checkpoint folders get
os.umask(UMASK)


class LoaderState(BaseModel):
    """Where the data loader stands (TrainWindows / ChatWindows .state_dict())."""

    position: StrictInt = Field(ge=0)
    seed: StrictInt = Field(ge=0)  # numpy's generators take no negative seed


class CheckpointState(BaseModel):
    """state.json: one typed record, written by the train job (Trainer.save) and read by every job that loads a
    checkpoint, through attributes. Serving needs the first three fields; a resume needs the training state too
    (RESUME_FIELDS: each part of the loop gives its own and takes it back). A new piece of resumable state is a
    field here, filled by its part. Keys this code does not know are kept, so a newer checkpoint still loads."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), populate_by_name=True,
                              ser_json_inf_nan="constants")  # best_val_loss may be Infinity, as json.dumps writes it

    # what the model is: enough to serve it
    step: StrictInt = Field(ge=0)
    model_type: Literal["torch", "custom"]
    model_config_: dict[str, Any] = Field(alias="model_config")
    # where it came from
    experiment: dict[str, Any] | None = None  # the run's ExperimentConfig.to_dict()
    mlflow_run_id: str | None = None
    tokenizer_sha256: str | None = None
    eot_id: StrictInt | None = None
    dataset_id: str | None = None
    # what --resume restores: the progress (step above, these two), the loader, the RNG, the optimizer's scalars
    best_val_loss: float = math.inf
    train_seconds: float = Field(0.0, ge=0)
    loader: LoaderState | None = None
    rng: dict[str, list[int]] | None = None
    optimizer_scalars: dict[str, Any] | None = None
    world_size: StrictInt = Field(1, ge=1)  # processes that trained it: a global batch is batch_size x world_size

    RESUME_FIELDS: ClassVar[tuple[str, ...]] = (
        "best_val_loss", "train_seconds", "loader", "rng", "optimizer_scalars", "mlflow_run_id", "tokenizer_sha256")

    @field_validator("rng")
    @classmethod
    def _rng_states_are_bytes(cls, rng: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
        """torch's generator states, as saved by rng_state(): bytes, and the CPU one of the size torch expects."""
        if rng is None:
            return rng
        if "torch" not in rng:
            raise ValueError("the CPU generator's state ('torch') is missing")
        size = torch.get_rng_state().numel()
        if len(rng["torch"]) != size:
            raise ValueError(f"the CPU generator's state holds {len(rng['torch'])} bytes, not {size}")
        for name, values in rng.items():
            if any(not 0 <= value <= 255 for value in values):
                raise ValueError(f"{name!r} holds values outside 0..255 (a generator state is bytes)")
        return rng

    @classmethod
    def read(cls, folder: Path, data: Any, for_resume: bool) -> "CheckpointState":
        """The state of `folder` from its parsed JSON, or a CheckpointError naming the file, key and problem."""
        try:
            state = cls.model_validate(data)
        except ValidationError as error:
            where, message = first_problem(error)
            key = ".".join(str(part) for part in where) or "(top level)"
            raise CheckpointError(f"{folder / 'state.json'}: {key}: {message}") from None
        missing = [name for name in cls.RESUME_FIELDS if name not in state.model_fields_set] if for_resume else []
        if missing:
            raise CheckpointError(f"{folder / 'state.json'}: {missing[0]}: Field required (it can be served, not "
                                  f"resumed)")
        return state

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=False, indent=2) + "\n"


def check_weights_fit(folder: Path, weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The checkpoint's weights have exactly the keys and shapes of the model built from the config."""
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not fit the model: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]} (a checkpoint of another architecture?)")
    for key, tensor in expected.items():
        if weights[key].shape != tensor.shape:
            raise CheckpointError(f"{folder}: weights do not fit the model: {key} is {tuple(weights[key].shape)} in "
                                  f"the checkpoint but {tuple(tensor.shape)} in the configured model (resume with "
                                  f"the model settings it was trained with)")


@dataclass
class Checkpoint:
    folder: Path
    state: CheckpointState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]


def save_checkpoint(folder: Path, weights: dict[str, torch.Tensor], optimizer: dict[str, torch.Tensor],
                    state: CheckpointState, tokenizer_path: str | Path) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{folder.name}.", suffix=".tmp"))  # unique per writer
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it 0700: readable by a job of another uid, as mkdir would be
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        save_file({k: v.detach().to("cpu").contiguous() for k, v in optimizer.items()},
                  str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(state.to_json())
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    except (OSError, SafetensorError) as error:  # disk full, a file-size limit...: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write the checkpoint {folder} ({error}); the previous checkpoints are "
                              f"intact") from None
    old = folder.with_name(folder.name + ".old")
    if folder.exists():  # swap: the previous checkpoint stays whole until the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: str | Path, with_optimizer: bool = True) -> Checkpoint:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint not found: {folder}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not a checkpoint: missing {', '.join(missing)}")
    try:
        data = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        optimizer = load_file(str(folder / "optimizer.safetensors")) if with_optimizer else {}
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no optimizer.safetensors: it can be served, not resumed") from None
    except Exception as error:  # safetensors and json raise several types on a damaged file
        raise CheckpointError(f"{folder}: damaged checkpoint ({str(error).splitlines()[0]})") from None
    return Checkpoint(folder, CheckpointState.read(folder, data, for_resume=with_optimizer), weights, optimizer)


def read_state(folder: str | Path) -> CheckpointState:
    """Only the state of a checkpoint folder (what registration tags a version with), without its tensors."""
    folder = Path(folder)
    try:
        data = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder / 'state.json'}: cannot be read ({str(error).splitlines()[0]})") from None
    return CheckpointState.read(folder, data, for_resume=False)


def load_weights(model, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's weights into `model` (on any device), once their keys and shapes are known to fit."""
    check_weights_fit(checkpoint.folder, checkpoint.weights, model.state_dict())
    model.load_state_dict(checkpoint.weights)  # copies into the model's own tensors, on its device


def build_from_checkpoint(checkpoint: Checkpoint, device: str):
    """The checkpoint's model (its type and config) on `device`, with its weights, in eval mode."""
    try:
        config = ModelConfig.from_dict(checkpoint.state.model_config_)
    except ConfigError as error:
        raise CheckpointError(f"{checkpoint.folder / 'state.json'}: model_config: {error}") from None
    model = build_model(config, checkpoint.state.model_type).to(device)
    load_weights(model, checkpoint)
    return model.eval()


def rng_state() -> dict[str, list[int]]:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng_state(state: dict[str, list[int]]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def step_folders(run_folder: Path) -> list[Path]:
    """A run folder's step-N checkpoints, oldest first (by N, not by name: step-900 before step-1000)."""
    return sorted(run_folder.glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))


def best_checkpoint(run_folder: Path) -> Path:
    """The checkpoint a run registers and serves: `best` (the lowest validation loss), else `latest` (a run that
    stopped before its first validation)."""
    return run_folder / "best" if (run_folder / "best").is_dir() else run_folder / "latest"


def rotate(folder: Path, keep: int) -> None:
    """Keep the newest `keep` step-N checkpoints (best and latest are separate folders)."""
    steps = step_folders(folder)
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


# --- a trained model, loaded from its checkpoint folder (jobs/models.py: from any reference) -----------------------


@dataclass
class LoadedModel:
    model: object  # a TorchTransformer, CustomTransformer, TorchLlama or CustomLlama, in eval mode
    tokenizer: LoadedTokenizer
    state: CheckpointState  # the checkpoint's state.json
    folder: Path
    device: str

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def model_type(self) -> str:
        return self.state.model_type

    @property
    def chat(self) -> bool:
        """Fine-tuned to chat (by `finetune`): its replies follow the chat template."""
        from jobs.data import chat_template

        return bool((self.state.experiment or {}).get("chat")) and chat_template.supports_chat(self.tokenizer)

    @property
    def stop_ids(self) -> set[int]:
        """Where generation ends: <|endoftext|>, and a chat turn's <|end|>."""
        from jobs.data import chat_template

        return chat_template.stop_ids(self.tokenizer)


def load_model_folder(folder: str | Path, device: str = "auto") -> LoadedModel:
    """The model in a checkpoint folder, rebuilt from its files (jobs/models.py: load_model takes any reference)."""
    folder = Path(folder)
    checkpoint = load_checkpoint(folder, with_optimizer=False)
    device = resolve_device(device)
    built = build_from_checkpoint(checkpoint, device)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if checkpoint.state.tokenizer_sha256 and checkpoint.state.tokenizer_sha256 != tokenizer.sha256:
        raise CheckpointError(f"{folder}: tokenizer.json does not match the one the model was trained with")
    return LoadedModel(built, tokenizer, checkpoint.state, folder, device)
