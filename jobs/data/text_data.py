"""Text to learn from (what `train` reads): the prepared token files, every token learnt (TrainingData)."""

from __future__ import annotations

from jobs.config import ExperimentConfig
from jobs.data import pipeline
from jobs.data.shards import check_validation_fits
from jobs.data.windows import TokenStream, TrainWindows, validation_batches
from jobs.training.data import StartingPoint
from jobs.training.distributed import Distributed
from jobs.training.objectives import NextTokenLoss


class TextData:
    """The prepared token files, read in random (B, T+1) windows; validated over a fixed pass of the validation
    split."""

    def __init__(self, prepared: pipeline.PreparedData):
        self.prepared, self.tokenizer = prepared, prepared.tokenizer
        self.train, self.validation = prepared.open("train"), prepared.open("validation")
        self.train_tokens, self.dataset_id = len(self.train), prepared.meta.dataset_id
        # what a resume compares with the checkpoint's dataset_id: None here, since this id follows the files' names,
        # sizes and times (a touched file changes it); the text itself is held by the tokenizer check and the config
        self.content_id = None
        self.objective = NextTokenLoss()

    def check_fits(self, seq_len: int) -> None:
        check_validation_fits(self.validation, seq_len)  # now, not at the first validation

    def loader(self, batch_size: int, seq_len: int, seed: int, distributed: Distributed) -> TrainWindows:
        return TrainWindows(TokenStream(self.train, seq_len), batch_size, seed, distributed.rank, distributed.world_size)

    def validation_batches(self, batch_size: int, seq_len: int, max_batches: int | None, distributed: Distributed):
        return validation_batches(TokenStream(self.validation, seq_len), batch_size, max_batches, distributed.rank,
                                  distributed.world_size)

    def metrics(self, val_loss: float) -> dict:
        return {"val/bits_per_byte": self.prepared.bits_per_byte(val_loss)}

    def params(self) -> dict:
        return {"dataset_id": self.dataset_id, "dataset_source": self.prepared.meta.source,
                "train_tokens": len(self.train), "val_tokens": len(self.validation)}

    def sample_prompt(self, prompt: str) -> tuple[list[int], str]:
        return self.tokenizer.encode(prompt), prompt  # text to continue


def load(cfg: ExperimentConfig, distributed: Distributed, start: StartingPoint) -> TextData:
    """The prepared token files of cfg.data (start: unused, text is the same whatever the weights). Rank 0 prepares
    what is missing (download, tokenizer, token files); the others wait, then find it ready."""
    if not distributed.is_main:
        distributed.barrier()
    prepared = pipeline.prepare(cfg.data)
    if distributed.is_main:
        distributed.barrier()
    return TextData(prepared)
