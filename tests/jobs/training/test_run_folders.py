"""Run folders, --resume's choice of checkpoint, what a resume may change, and the run lock (jobs/training/
run_folders.py and jobs/checkpoint.py's folder helpers), on folders made here: no training."""

import json

import pytest

from conftest import tiny
from jobs.checkpoint import best_checkpoint, step_folders
from jobs.errors import CheckpointError
from jobs.training.run_folders import (RunLock, checkpoint_to_resume, checkpoints_newest_first, latest_marker,
                                       mark_latest, new_run_folder, resume_changes)


def checkpoint_folder(run, name, step):
    folder = run / name
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    return folder


def test_checkpoints_are_ordered_by_step_latest_first_among_equals_damaged_last(tmp_path):
    run = tmp_path / "run"
    for name, step in [("step-0000900", 900), ("step-0001000", 1000), ("best", 900), ("latest", 1000)]:
        checkpoint_folder(run, name, step)
    damaged = run / "step-0000100"
    damaged.mkdir()
    (damaged / "state.json").write_text("{not json")
    (run / "step-0001100.tmp").mkdir()  # half written: never a candidate
    names = [folder.name for folder in checkpoints_newest_first(run)]
    assert names[:2] == ["latest", "step-0001000"] and set(names[2:4]) == {"step-0000900", "best"}
    assert names[4:] == ["step-0000100"]
    assert [f.name for f in step_folders(run)] == ["step-0000100", "step-0000900", "step-0001000"], "by N, not name"
    assert best_checkpoint(run).name == "best"
    assert best_checkpoint(tmp_path / "no-best-yet").name == "latest"


def test_resume_auto_starts_fresh_without_a_run_and_a_bare_resume_says_there_is_none(tmp_path):
    cfg = tiny(tmp_path)
    assert checkpoint_to_resume(cfg, "auto") is None and checkpoint_to_resume(cfg, None) is None
    with pytest.raises(CheckpointError, match="nothing to resume"):
        checkpoint_to_resume(cfg, True)


def test_a_marker_that_names_anything_but_a_run_folder_is_refused(tmp_path):
    cfg = tiny(tmp_path)
    run = new_run_folder(cfg)
    mark_latest(cfg, run)
    assert latest_marker(cfg).read_text() == run.name and run.is_dir()
    latest_marker(cfg).write_text("../../elsewhere")
    with pytest.raises(CheckpointError, match="does not hold a run folder's name"):
        checkpoint_to_resume(cfg, True)


def test_a_resume_may_change_how_long_and_how_it_runs_and_nothing_else(tmp_path):
    cfg = tiny(tmp_path)
    saved = cfg.to_dict()
    assert resume_changes(saved, cfg) == {} and resume_changes(None, cfg) == {}
    longer = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 40, "eval_every": 8})})
    assert resume_changes(saved, longer) == {"training.eval_every": (6, 8), "training.max_steps": (12, 40)}
    other_lr = cfg.model_copy(update={"training": cfg.training.model_copy(update={"learning_rate": 1e-2})})
    with pytest.raises(CheckpointError, match="training.learning_rate is '0.01' here but '0.003'"):
        resume_changes(saved, other_lr)
    older = json.loads(json.dumps(saved))
    del older["training"]["final_evals_history"]  # saved before the key existed: its default is no change
    assert resume_changes(older, cfg) == {}


def test_one_process_holds_a_run_and_stale_temporary_checkpoints_go_with_the_lock(tmp_path):
    run = tmp_path / "run"
    (run / "latest.tmp").mkdir(parents=True)
    with RunLock(run):
        assert not (run / "latest.tmp").exists()
        with pytest.raises(CheckpointError, match="is being trained by pid"):
            RunLock(run)
    with RunLock(run):  # released when the first left its with
        pass
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="cannot write checkpoints"):
        RunLock(tmp_path / "file" / "run")
