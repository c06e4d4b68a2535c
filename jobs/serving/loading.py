"""Load a trained model for generation from any of: a registry URI (`models:/<name>@champion`), a run URI
(`runs:/<run_id>` or `runs:/<run_id>/model`), or a local checkpoint folder.

Registry and run URIs are downloaded with MLflow into a local folder; the model itself is always rebuilt from
a checkpoint folder (safetensors + json + tokenizer.json), never unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from jobs.checkpoint import CheckpointState, build_from_checkpoint, load_checkpoint
from jobs.data.tokenizer import LoadedTokenizer, load_tokenizer
from jobs.errors import CheckpointError, InputError
from model_zoo.build import resolve_device
from model_zoo.config import ModelConfig


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


def resolve_checkpoint_folder(model: str) -> Path:
    """A local checkpoint folder for a registry URI, run URI or path."""
    if model.startswith(("models:/", "runs:/")):
        import mlflow

        from jobs import tracking

        tracking.connect()  # a server that does not answer fails here, in seconds
        name = model.removeprefix("models:/").rstrip("/")
        if model.startswith("models:/") and "@" not in name and "/" not in name:
            raise CheckpointError(f"{model} names a registered model but not which version: "
                                  f"models:/{name}@champion, models:/{name}/<version> or models:/{name}/latest")
        uri = model
        if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
            uri = uri.rstrip("/") + "/model"  # runs:/<id> means the model logged by that run
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        except Exception as error:
            raise CheckpointError(f"cannot load {model} from MLflow ({str(error).splitlines()[0][:200]})") from None
        candidates = [local / "artifacts" / "checkpoint", local / "checkpoint", local]
        for candidate in candidates:
            if (candidate / "state.json").is_file():
                return candidate
        raise CheckpointError(f"{model} holds no checkpoint (looked in {local})")
    return Path(model).expanduser()


def load_model(model: str, device: str = "auto") -> LoadedModel:
    folder = resolve_checkpoint_folder(model)
    checkpoint = load_checkpoint(folder, with_optimizer=False)
    device = resolve_device(device)
    built = build_from_checkpoint(checkpoint, device)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if checkpoint.state.tokenizer_sha256 and checkpoint.state.tokenizer_sha256 != tokenizer.sha256:
        raise CheckpointError(f"{folder}: tokenizer.json does not match the one the model was trained with")
    return LoadedModel(built, tokenizer, checkpoint.state, folder, device)


def complete(loaded: LoadedModel, prompt: str, max_length: int = 100, temperature: float = 0.8,
             top_k: int | None = 50, top_p: float | None = None, seed: int | None = None):
    """Yield the text pieces of a completion as tokens arrive (decoded incrementally, so UTF-8 stays whole)."""
    yield from stream_text(loaded, encode_prompt(loaded.tokenizer, prompt), max_length, temperature, top_k, top_p, seed)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A prompt's token ids; an empty prompt starts from <|endoftext|> (an InputError if the tokenizer has none)."""
    prompt_ids = tokenizer.encode(prompt) or ([tokenizer.eot_id] if tokenizer.eot_id is not None else [])
    if not prompt_ids:
        raise InputError("the prompt is empty and the tokenizer has no end-of-text token to start from")
    return prompt_ids


def stream_text(loaded: LoadedModel, prompt_ids: list[int], max_length: int = 100, temperature: float = 0.8,
                top_k: int | None = 50, top_p: float | None = None, seed: int | None = None):
    """The text pieces generated after prompt_ids, until max_length tokens, <|endoftext|> or <|end|>."""
    from model_zoo.generation import generate_tokens

    tokenizer, stops = loaded.tokenizer, loaded.stop_ids
    ids: list[int] = []
    emitted = ""
    with torch.inference_mode():
        for token in generate_tokens(loaded.model, prompt_ids, max_new_tokens=max_length, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed, stop_ids=stops):
            if token in stops:
                break
            ids.append(token)
            text = tokenizer.decode(ids)
            if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the next token
                continue
            yield text[len(emitted):]
            emitted = text
