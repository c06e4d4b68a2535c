"""A run's checkpoints and resume (jobs/checkpoint.py, jobs/training/run_folders.py, the trainer's resume checks): a
checkpoint that does not fit, a resume that would change the run, a damaged state.json, a full disk. Each is one line,
before MLflow is touched, and the run and its files stay as they were."""

import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import assert_refused, corrupt_copy, fill, run_job

# (command, words the one error line holds)
CASES = [
    (["train", "--config", "{config}", "--resume", "{best}", "--model.d_model=64", "--model.d_ffn=128"],
     ["--resume: model.d_ffn is '128' here but '64' in the run being resumed"]),
    (["train", "--config", "{config}", "--resume", "{best}", "--training.learning_rate=0.5"],
     ["--resume: training.learning_rate is '0.5' here", "start a new run"]),
    (["train", "--config", "{config}", "--resume", "{root}/nowhere"], ["checkpoint not found"]),
    (["train", "--config", "{config}", "--experiment_name=never_trained", "--resume"], ["nothing to resume"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("template, words", CASES, ids=[c[0][-1][-30:] for c in CASES])
def test_a_resume_that_cannot_continue_the_run_is_one_clear_line(in_trained_world, template, words, capsys):
    assert_refused(fill(template, in_trained_world), capsys, words)


@pytest.mark.slow
@pytest.mark.parametrize("name, change, words", [
    ("step-text", lambda s: s.update(step="fifteen"), ["state.json", "step", "fifteen"]),
    ("no-loader", lambda s: s.pop("loader"), ["state.json", "loader", "Field required"]),
    ("no-rng", lambda s: s.pop("rng"), ["state.json", "rng", "Field required"]),
    ("negative-seed", lambda s: s["loader"].update(seed=-1), ["state.json", "loader.seed", "greater than or equal to 0"]),
    ("short-rng", lambda s: s["rng"].update(torch=[1, 2, 3]), ["state.json", "rng", "holds 3 bytes, not 5056"]),
    ("rng-300", lambda s: s["rng"]["torch"].__setitem__(0, 300), ["state.json", "rng", "outside 0..255"]),
    ("no-param-groups", lambda s: s.update(optimizer_scalars={}), ["optimizer state does not fit", "KeyError"]),
    ("unknown-run", lambda s: s.update(mlflow_run_id="0123456789abcdef"), ["mlflow_run_id", "is not a run in"]),
    ("two-ranks", lambda s: s.update(world_size=2), ["trained by 2 process(es), and this is 1",
                                                     "python -m jobs.launch --standalone --nproc_per_node=2"]),
])
def test_a_corrupt_checkpoint_is_refused_before_mlflow_and_the_run_stays_as_it_was(trained_world, name, change, words, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_world["store"])
    folder = corrupt_copy(trained_world, name, change)
    run_id = json.loads((trained_world["latest"] / "state.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=trained_world["store"])
    before = client.get_run(run_id).info
    code, _, err = run_job(["train", "--config", trained_world["config"], "--resume", folder], capsys)
    assert code == 2 and all(w in err for w in words), err[-2000:]
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_registers_nothing(trained_world, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_world["store"])
    client = MlflowClient(tracking_uri=trained_world["store"])
    versions = len(client.search_model_versions("name='tiny_bad'"))
    code, out, _ = run_job(["train", "--config", trained_world["config"], "--resume"], capsys)
    assert code == 0 and "nothing to do" in out and "--training.max_steps" in out
    assert len(client.search_model_versions("name='tiny_bad'")) == versions




@pytest.mark.slow
def test_a_failed_checkpoint_write_leaves_no_half_folder_and_the_previous_one_intact(trained_world, tmp_path, monkeypatch):
    """Disk full (or a file-size limit) while a checkpoint is written: one clear error, the temporary folder is
    removed, and the checkpoint that was there stays whole. A stale temporary folder is cleaned at the next start."""
    import errno

    from jobs import checkpoint
    from jobs.errors import CheckpointError
    from jobs.training.run_folders import RunLock

    folder = tmp_path / "run" / "latest"
    shutil.copytree(trained_world["latest"], folder)
    before = (folder / "state.json").read_text()
    state = json.loads(before)
    weights = checkpoint.load_checkpoint(folder).weights

    def full_disk(tensors, path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device"):
        checkpoint.save_checkpoint(folder, weights, {}, checkpoint.CheckpointState.model_validate({**state, "step": 99}),
                                   folder / "tokenizer.json")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["latest"], "no .tmp folder is left"
    assert (folder / "state.json").read_text() == before
    (folder.parent / "latest.abc.tmp").mkdir()  # what a kill -9 mid-write leaves
    RunLock(folder.parent).release()
    assert not (folder.parent / "latest.abc.tmp").exists()


@pytest.mark.slow
def test_a_file_where_the_checkpoints_folder_should_be_is_refused_before_training(trained_world, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_world["store"])
    assets = tmp_path / "assets"
    shutil.copytree(trained_world["root"] / "assets" / "tokens", assets / "tokens")
    shutil.copytree(trained_world["root"] / "assets" / "tokenizers", assets / "tokenizers")
    (assets / "checkpoints").write_text("a file, not a folder\n")
    code, out, err = run_job(["train", "--config", trained_world["config"], f"--data.assets_dir={assets}",
                          "--experiment_name=blocked"], capsys)
    assert code == 2 and "cannot write checkpoints in" in err and "Traceback" not in err, err[-2000:]
    assert "step 1" not in out + err




def test_a_latest_marker_never_leads_outside_the_experiments_folder(tmp_path):
    from conftest import tiny
    from jobs.errors import CheckpointError
    from jobs.training.run_folders import checkpoint_root, checkpoint_to_resume

    cfg = tiny(tmp_path)
    checkpoint_root(cfg).mkdir(parents=True)
    (checkpoint_root(cfg) / "LATEST").write_text("../../../../elsewhere\n")
    with pytest.raises(CheckpointError, match="does not hold a run folder's name"):
        checkpoint_to_resume(cfg, "auto")


