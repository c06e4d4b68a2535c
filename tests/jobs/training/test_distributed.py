"""Two CPU processes on gloo (torchrun) train exactly like one process with the same global batch."""

import os
import subprocess
import sys

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, free_port, tiny
from jobs.training.trainer import run_training
from jobs.checkpoint import load_checkpoint



def torchrun_two_ranks(job: str, cfg, tmp_path) -> str:
    """`torchrun --nproc_per_node=2 -m jobs JOB --config ...` (2 gloo processes); returns its MLflow store's URI."""
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    ddp_store = f"sqlite:///{tmp_path / 'ddp-mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": ddp_store, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jobs", job, "--config", str(config_file)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, "\n".join(l for l in done.stderr.splitlines() if "training:" not in l)[-8000:]
    return ddp_store


@pytest.mark.slow
@pytest.mark.parametrize("model_type, architecture, optimizer", [
    ("torch", "gpt2", "adamw"), ("torch", "llama", "adamw"), ("custom", "gpt2", "adamw"), ("custom", "llama", "adamw"),
    ("torch", "llama", "muon"), ("custom", "gpt2", "muon"),  # Muon orthogonalises the gradient all ranks averaged
])
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(tmp_path, store, model_type, architecture,
                                                                      optimizer, monkeypatch):
    model = {"architecture": "llama", "n_heads": 4, "n_kv_heads": 2, "d_ffn": 48} if architecture == "llama" else {}
    single = run_training(tiny(tmp_path / "single", model_type, model=model, batch_size=4, max_steps=8,
                               gradient_accumulation_steps=2, optimizer=optimizer))

    cfg = tiny(tmp_path / "ddp", model_type, model=model, batch_size=2, max_steps=8, gradient_accumulation_steps=2,
               optimizer=optimizer)
    ddp_store = torchrun_two_ranks("train", cfg, tmp_path)

    client = MlflowClient(tracking_uri=ddp_store)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])  # only rank 0 tracks
    assert run.data.params["world_size"] == "2"
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    ddp_losses = [m.value for m in history]
    assert len(ddp_losses) == 8
    assert ddp_losses == pytest.approx(single.losses, rel=2e-5)
    # Each rank scores its share of the validation batches; the all-reduced loss is that of the whole pass, as
    # one process scoring the same batches with the final weights (the last checkpoint) finds it.
    from jobs.evaluate import run_evaluation

    (latest,) = (tmp_path / "ddp" / "assets" / "checkpoints").glob("*/*/*/latest")
    monkeypatch.chdir(tmp_path)  # evaluate writes its token files under ./assets, the configured assets folder
    one_process = run_evaluation(str(latest), max_batches=cfg.training.eval_batches,
                                 batch_size=cfg.training.batch_size, device="cpu", log=False)["loss"]
    ddp_val = max(client.get_metric_history(run.info.run_id, "val/loss"), key=lambda m: m.step)
    assert ddp_val.step == 8 and ddp_val.value == pytest.approx(one_process, rel=1e-5)
    mlflow.set_tracking_uri(store)


def _pod_command(config_file) -> list[str]:
    """The TrainJob's own command (k8s/train-trainjob: `python -m jobs.launch`, torchrun with a signal's exit
    status), run from this Python with $(CONFIG) filled."""
    trainjob = yaml.safe_load((REPO / "k8s" / "train-trainjob" / "trainjob.yaml").read_text())
    command = trainjob["spec"]["trainer"]["command"]
    assert command[:3] == ["python", "-m", "jobs.launch"]
    return [sys.executable] + [str(config_file) if a == "$(CONFIG)" else a for a in command[1:]]


def _pod_env(tmp_path, store_uri: str) -> dict:
    """What Kubeflow Trainer's torch-distributed runtime sets in a pod (here: one node of two processes)."""
    return {**os.environ, "MLFLOW_TRACKING_URI": store_uri, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(free_port())}


def _loss_history(store_uri: str, experiment: str) -> tuple[list, list[float]]:
    client = MlflowClient(tracking_uri=store_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (run,) = runs  # a restart continues the same tracked run
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    return runs, [m.step for m in history], [m.value for m in history]


@pytest.mark.slow
def test_a_restarted_pod_resumes_from_the_newest_checkpoint_and_trains_as_if_never_stopped(tmp_path, store):
    """The same pod command started twice, as Kubernetes restarts a pod: the first start is stopped with SIGTERM
    (what the kubelet sends on eviction) after it wrote a checkpoint; the second resumes from it (--resume auto),
    and its losses equal those of a run that was never stopped."""
    import signal
    import time

    steps = 150
    runs = {}
    for name in ("whole", "restarted"):
        cfg = tiny(tmp_path / name, "torch", batch_size=2, max_steps=steps, eval_every=100, checkpoint_every=5)
        config_file = tmp_path / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump(cfg.to_dict()))
        runs[name] = (cfg, config_file, f"sqlite:///{tmp_path / name / 'mlflow.db'}")

    cfg, config_file, uri = runs["whole"]
    done = subprocess.run(_pod_command(config_file), env=_pod_env(tmp_path, uri), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, "\n".join(l for l in done.stderr.splitlines() if "training:" not in l)[-8000:]
    _, whole_steps, whole_losses = _loss_history(uri, cfg.experiment_name)
    assert whole_steps == list(range(1, steps + 1))

    cfg, config_file, uri = runs["restarted"]
    runs_root = tmp_path / "restarted" / "assets" / "checkpoints" / cfg.experiment_name / "torch"
    first = subprocess.Popen(_pod_command(config_file), env=_pod_env(tmp_path, uri), cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(runs_root.glob("*/latest/state.json")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)  # to torchrun, the container's first process, which passes it to the ranks
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 143, "stopped by SIGTERM (128 + 15): not finished, and not a crash either"
    assert "stopped by SIGTERM" in first_err and "--resume " in first_err, first_err[-2000:]
    # the command it prints relaunches the same number of processes (one process would halve the global batch)
    assert "python -m jobs.launch --standalone --nproc_per_node=2 -m jobs train" in first_err, first_err[-2000:]
    assert "SignalException" not in first_err, "torchrun's own traceback is not shown"
    (latest,) = runs_root.glob("*/latest")
    stopped_at = load_checkpoint(latest).state.step
    assert 5 <= stopped_at < steps, f"stopped at step {stopped_at}: the test needs a run that stopped midway"
    print(f"first start stopped at step {stopped_at} of {steps}")

    second = subprocess.run(_pod_command(config_file), env=_pod_env(tmp_path, uri), capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    tracked, restarted_steps, restarted_losses = _loss_history(uri, cfg.experiment_name)
    assert tracked[0].info.status == "FINISHED"
    assert restarted_steps == list(range(1, steps + 1)), "every step logged exactly once across the restart"
    assert restarted_losses[stopped_at:] == pytest.approx(whole_losses[stopped_at:], rel=1e-6, abs=0)
    assert restarted_losses == pytest.approx(whole_losses, rel=1e-6, abs=0)

    third = subprocess.run(_pod_command(config_file), env=_pod_env(tmp_path, uri), capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    assert third.returncode == 0 and "nothing to do" in third.stdout, third.stdout + third.stderr[-2000:]
    versions = MlflowClient(tracking_uri=uri).search_model_versions(f"name='{cfg.model_name}'")
    assert [int(v.version) for v in versions] == [1], "a start after the end registers nothing new"


@pytest.mark.slow
def test_finetune_on_two_gloo_ranks_equals_one_process(tmp_path, store):
    """Chat fine-tuning runs the same loop: its (tokens, mask) batches split over ranks like text windows do."""
    from jobs.config import validate_config
    from jobs.finetune import run_finetuning

    base = run_training(tiny(tmp_path / "base", model={"max_seq_len": 128}, max_steps=4))
    chat = {"base": str(base.checkpoint_dir / "best"), "val_conversations": 10}

    def chat_config(folder, batch_size):
        values = tiny(folder, "custom", batch_size=batch_size, max_steps=6, gradient_accumulation_steps=1).to_dict()
        return validate_config(values | {"experiment_name": "tiny_chat", "model": {}, "chat": chat})

    single = run_finetuning(chat_config(tmp_path / "single", 4))
    cfg = chat_config(tmp_path / "ddp", 2)
    ddp_store = torchrun_two_ranks("finetune", cfg, tmp_path)
    client = MlflowClient(tracking_uri=ddp_store)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_chat").experiment_id])
    ddp_losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert ddp_losses == pytest.approx(single.losses, rel=2e-5) and len(ddp_losses) == 6

