"""The trainer in seconds (jobs/training/trainer.py, run_end.py, the tracked run, the registry, the report): a tiny
run through the train command's own function, checked in MLflow. The end-to-end scenarios (resume, signals, both
model types, two processes) are in tests/scenarios/test_jobs.py."""

import math

from conftest import tiny


def test_a_tiny_run_trains_logs_checkpoints_registers_and_reports(tmp_path, store, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.terminal import report_run
    from jobs.training.trainer import run_training

    cfg = tiny(tmp_path, max_steps=6, eval_every=3, checkpoint_every=3)
    result = run_training(cfg)
    assert result.steps == 6 and math.isfinite(result.best_val_loss) and len(result.losses) == 6
    assert (result.checkpoint_dir / "best" / "model.safetensors").is_file()
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.d_model"] == "32"
    assert [m.step for m in client.get_metric_history(result.run_id, "val/loss")] == [3, 6]
    assert len(client.get_metric_history(result.run_id, "train/loss")) == 6
    assert str(client.get_model_version_by_alias("tiny_torch", "champion").version) == str(result.model_version)
    report_run("train", "tiny.yaml", {}, cfg, result)
    printed = capsys.readouterr()
    assert "tracking overhead" in printed.err and "done: 6 steps" in printed.out
    assert "models:/tiny_torch@champion" in printed.out and "registered as version" in printed.out
