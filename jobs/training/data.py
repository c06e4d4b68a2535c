"""What a training run is given: the data it learns from, and where its weights start.

    TrainingData    the interface every kind of training data implements (jobs/data/text_data.py: prepared
                    text; jobs/data/chat_data.py: conversations). The trainer reads batches of (tokens, mask)
                    through it and knows nothing else of the data.
    StartingPoint   fresh weights, or a trained model's (fine-tuning); a resume starts from its checkpoint instead
    settle_config   the config the run trains with, settled once, before the trainer is built

A new way of training (preference pairs, say) is a new TrainingData module, and at most a loss; the trainer
does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

from jobs.checkpoint import LoadedModel
from jobs.config import ExperimentConfig
from jobs.data.tokenizer import LoadedTokenizer
from jobs.data.windows import Batch, TrainWindows
from jobs.training.distributed import Distributed
from model_zoo.errors import ConfigError


class TrainingData(Protocol):
    tokenizer: LoadedTokenizer
    train_tokens: int  # tokens in the training set (training.num_epochs counts these)
    dataset_id: str  # logged with the run and saved in each checkpoint
    content_id: str | None  # a resume on data whose content_id changed is refused (None: not checked)
    objective: object  # what a step minimises on this data (jobs/training/objectives.py: NextTokenLoss for text and chat)

    def check_fits(self, seq_len: int) -> None:
        """Raise a one-line error now if the data cannot give a window of the model's context."""

    def loader(self, batch_size: int, seq_len: int, seed: int, distributed: Distributed) -> TrainWindows:
        """Random training batches, this rank's share of each global batch, resumable (state_dict)."""

    def validation_batches(self, batch_size: int, seq_len: int, max_batches: int | None,
                           distributed: Distributed) -> Iterator[Batch]:
        """This rank's share of a fixed pass over the validation data."""

    def metrics(self, val_loss: float) -> dict:
        """Metrics beside val/loss that this kind of data gives (bits per byte for text)."""

    def params(self) -> dict:
        """What the run logs of its data (sizes, counts, ids)."""

    def sample_prompt(self, prompt: str) -> tuple[list[int], str]:
        """training.sample_prompt as the model is asked it (ids), and how the sample shows it (text)."""


@dataclass
class StartingPoint:
    """Where a new run's weights start: freshly initialised (base None), or a trained model's (fine-tuning)."""

    base: LoadedModel | None = None
    lineage: dict = field(default_factory=dict)  # where the base comes from: logged as base_* params and tags

    @classmethod
    def of(cls, ref: str) -> "StartingPoint":
        """A trained model's weights, tokenizer and state (on the CPU: the trainer moves them), and its lineage."""
        from jobs.models import load_model

        base = load_model(ref, "cpu")
        return cls(base, lineage(ref, base.state))


def settle_config(cfg: ExperimentConfig, data: TrainingData, start: StartingPoint) -> ExperimentConfig:
    """The config a run trains with: a fine-tune keeps its base's shape (only model.dropout may be set); a new
    model's vocab size defaults to the tokenizer's. Then the data must fit the context."""
    model_values = dict(cfg.model)
    if start.base is not None:
        unknown = set(model_values) - {"dropout"}
        if unknown:
            raise ConfigError(f"model.{sorted(unknown)[0]}: a fine-tuned model keeps its base's shape (only "
                              f"model.dropout may be set)")
        model_values = start.base.config.to_dict() | model_values
    else:
        vocab = data.tokenizer.vocab_size
        model_values.setdefault("vocab_size", vocab)
        if model_values["vocab_size"] < vocab:
            raise ConfigError(f"model.vocab_size ({model_values['vocab_size']}) is smaller than the tokenizer's "
                              f"{vocab} tokens")
    cfg = cfg.model_copy(update={"model": model_values})
    data.check_fits(cfg.model_config_.max_seq_len)
    return cfg


def lineage(ref: str, state) -> dict:
    """Where a tuned model comes from (state: its base's CheckpointState): the base's URI, registry version (when it
    is one) and run; a StartingPoint's lineage, logged as base_* params and tags."""
    from jobs.model_ref import ModelRef
    from jobs.tracking import registry

    found = {"model": ref, "run_id": state.mlflow_run_id or "unknown", "step": state.step}
    if ModelRef.parse(ref).kind == "registry":
        try:
            found["version"] = str(registry.version_of(ref).version)
        except Exception:  # the registry cannot say: the run is still traceable by the base's run id
            found["version"] = "unknown"
    return found
