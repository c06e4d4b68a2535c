"""The checkpoint's state is one typed record (jobs.checkpoint.CheckpointState), written and read by the same
schema; state.json files written before it existed (a plain dict) still load, for serving and for a resume."""

import json
import math

import pytest
import torch

from jobs.checkpoint import CheckpointState, load_checkpoint, read_state, save_checkpoint
from jobs.errors import CheckpointError
from model_zoo.build import build_model
from model_zoo.config import ModelConfig

CONFIG = ModelConfig(vocab_size=64, d_model=16, n_heads=2, n_blocks=1, d_ffn=32, max_seq_len=8)
# The keys Trainer.save wrote as a dict literal before the schema (commit fa19d52), with the same value types
OLD_STATE = {
    "step": 6, "model_type": "custom", "model_config": CONFIG.to_dict(), "experiment": {"experiment_name": "old"},
    "best_val_loss": math.inf, "loader": {"position": 3, "seed": 0}, "optimizer_scalars": {},
    "rng": {"torch": torch.get_rng_state().tolist()}, "mlflow_run_id": None, "tokenizer_sha256": "ab" * 32,
    "eot_id": 0, "train_seconds": 1.5, "dataset_id": "local-123",
}


def write_folder(folder, state_json: str, model_type: str = "custom"):
    """A checkpoint folder with the given state.json text and real weights."""
    model = build_model(CONFIG, model_type)
    tokenizer = folder.parent / "tokenizer.json"
    tokenizer.write_text("{}")
    state = CheckpointState(step=0, model_type=model_type, model_config=CONFIG.to_dict())
    save_checkpoint(folder, model.state_dict(), {}, state, tokenizer)
    (folder / "state.json").write_text(state_json)
    return folder


def test_a_state_json_written_before_the_schema_loads_for_serving_and_resuming(tmp_path):
    folder = write_folder(tmp_path / "old", json.dumps(OLD_STATE, indent=2))  # json.dumps writes inf as Infinity
    for loaded in (load_checkpoint(folder).state, read_state(folder)):
        assert loaded.step == 6 and loaded.model_type == "custom" and loaded.best_val_loss == math.inf
        assert loaded.loader.position == 3 and loaded.experiment == {"experiment_name": "old"}
        assert loaded.rng["torch"] == OLD_STATE["rng"]["torch"] and loaded.train_seconds == 1.5


def test_the_schema_writes_the_keys_the_old_code_wrote_and_reads_back_what_it_wrote(tmp_path):
    state = CheckpointState.model_validate(OLD_STATE)
    written = json.loads(state.to_json())
    # every key older code expects, and world_size (new: older code keeps keys it does not know)
    assert set(written) == set(OLD_STATE) | {"world_size"}, "older code reading a new checkpoint finds its keys"
    assert written["best_val_loss"] == math.inf and written["model_config"] == CONFIG.to_dict()
    folder = write_folder(tmp_path / "new", state.to_json())
    assert load_checkpoint(folder).state == state


def test_a_served_only_state_is_refused_for_a_resume_with_the_missing_field_named(tmp_path):
    served = {key: OLD_STATE[key] for key in ("step", "model_type", "model_config")}
    folder = write_folder(tmp_path / "served", json.dumps(served))
    assert load_checkpoint(folder, with_optimizer=False).state.experiment is None
    with pytest.raises(CheckpointError, match=r"state.json: best_val_loss: Field required \(it can be served"):
        load_checkpoint(folder)


def test_unknown_keys_are_kept_and_bad_values_name_their_key(tmp_path):
    folder = write_folder(tmp_path / "extra", json.dumps({**OLD_STATE, "from_the_future": 1}))
    assert load_checkpoint(folder).state.model_extra == {"from_the_future": 1}
    folder = write_folder(tmp_path / "bad", json.dumps({**OLD_STATE, "train_seconds": -1}))
    with pytest.raises(CheckpointError, match="state.json: train_seconds: .*greater than or equal to 0"):
        load_checkpoint(folder)
