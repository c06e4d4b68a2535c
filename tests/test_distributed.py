"""Two CPU processes on gloo (torchrun) train exactly like one process with the same global batch."""

import os
import subprocess
import sys

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO
from jobs.train import run_training
from test_jobs import store, tiny  # noqa: F401  (store is a fixture)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model_type", ["torch", "custom"])
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(tmp_path, store, model_type):  # noqa: F811
    single = run_training(tiny(tmp_path / "single", model_type, batch_size=4, max_steps=8, gradient_accumulation_steps=2))

    cfg = tiny(tmp_path / "ddp", model_type, batch_size=2, max_steps=8, gradient_accumulation_steps=2)
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    ddp_store = f"sqlite:///{tmp_path / 'ddp-mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": ddp_store, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jobs", "train", "--config", str(config_file)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(tracking_uri=ddp_store)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])  # only rank 0 tracks
    assert run.data.params["world_size"] == "2"
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    ddp_losses = [m.value for m in history]
    assert len(ddp_losses) == 8
    assert ddp_losses == pytest.approx(single.losses, rel=2e-5)
    mlflow.set_tracking_uri(store)
