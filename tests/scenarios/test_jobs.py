"""The jobs end to end on tiny configs: train (both model types), resume, NaN and signal stops, MLflow
(embedded store and a real server), registry, evaluate, generate and chat."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, free_port, signal_during_step, slow_step, tiny
from jobs.config import validate_config
from jobs.evaluate import run_evaluation
from jobs.training.trainer import TrainingDiverged, run_training
from jobs.training.run_folders import latest_run_folder
from jobs.checkpoint import load_checkpoint
from model_zoo.errors import ConfigError



@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["torch", "custom"])
def test_train_tracks_in_embedded_store_and_registers_champion(tmp_path, store, model_type):
    cfg = tiny(tmp_path, model_type)
    result = run_training(cfg)
    assert result.steps == 12 and math.isfinite(result.best_val_loss)
    assert result.losses[-1] < result.losses[0], "the loss falls"
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert int(run.data.params["n_parameters"]) > 0 and int(run.data.params["flops_per_token"]) > 0
    assert run.data.params["training.model_type"] == model_type
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, 13))
    assert [m.value for m in history] == pytest.approx(result.losses)
    for key in ("train/lr", "train/grad_norm", "train/tokens_per_sec", "train/flops_seen", "val/loss", "val/perplexity"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "tokenizer", "samples"} <= artifacts
    champion = client.get_model_version_by_alias(cfg.model_name, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@champion")
    import pandas as pd

    texts = model.predict(pd.DataFrame({"prompt": ["Once upon a time"]}), params={"max_length": 10, "seed": 0})
    from jobs.models import load_model
    from jobs.serving.loading import complete

    # the registered model is the best checkpoint: served, it writes what the checkpoint itself writes
    direct = "".join(complete(load_model(str(result.checkpoint_dir / "best")), "Once upon a time", max_length=10, seed=0))
    assert texts == [direct] and direct and str(champion.version) == "1"


@pytest.mark.slow
def test_champion_moves_only_between_losses_on_the_same_validation_data(tmp_path, store, capsys):
    import shutil

    from jobs.tracking.registry import log_and_register

    cfg = tiny(tmp_path, max_steps=4, eval_every=2)
    result = run_training(cfg)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(cfg.model_name, "champion").version) == "1"

    def register_copy(name: str, **state_changes) -> str:
        copy = tmp_path / name
        shutil.copytree(result.checkpoint_dir / "best", copy)
        state = json.loads((copy / "state.json").read_text())
        (copy / "state.json").write_text(json.dumps({**state, **state_changes}))
        with mlflow.start_run() as run:
            return log_and_register(copy, cfg.model_name, run.info.run_id)

    other_data = register_copy("other", best_val_loss=0.01, dataset_id="local-0123456789")
    assert str(client.get_model_version_by_alias(cfg.model_name, "champion").version) == "1", "losses on other data"
    assert f"champion stays at version 1 of {cfg.model_name}" in capsys.readouterr().err  # a log line
    same_data_better = register_copy("better", best_val_loss=0.02)
    assert (other_data, same_data_better) == ("2", "3")
    assert str(client.get_model_version_by_alias(cfg.model_name, "champion").version) == "3"
    # what the job says at its end names the version the alias serves, not the one just registered
    from jobs.terminal import next_steps
    from jobs.training.trainer import TrainResult

    said = next_steps(cfg, TrainResult("r", 4, 1.0, result.checkpoint_dir, model_version="2"))
    assert f"models:/{cfg.model_name}@champion still serves version 3" in said
    assert f"chat --model models:/{cfg.model_name}/2" in said
    assert "the champion: " in next_steps(cfg, TrainResult("r", 4, 1.0, result.checkpoint_dir, model_version="3"))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("model_type", ["torch", "custom"])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, store, model_type, optimizer):
    """The checkpoint holds the whole optimizer (AdamW's moments; Muon's momentum too), so a resumed run goes on
    exactly: the same losses as one that was never stopped."""
    whole = run_training(tiny(tmp_path / "a", model_type, optimizer=optimizer))
    cfg = tiny(tmp_path / "b", model_type, optimizer=optimizer)
    first = run_training(cfg, step_hook=signal_during_step(5))
    assert first.stopped_by == "SIGTERM" and first.steps == 5
    second = run_training(cfg, resume=True)
    assert second.run_id == first.run_id, "--resume continues the same tracked run"
    assert first.losses + second.losses == pytest.approx(whole.losses, rel=1e-6, abs=0)
    history = MlflowClient().get_metric_history(first.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 13))


@pytest.mark.slow
def test_a_run_another_process_is_training_is_refused_and_the_lock_ends_with_its_holder(tmp_path, store):
    from jobs.errors import CheckpointError
    from jobs.training.run_folders import RunLock

    cfg = tiny(tmp_path, max_steps=4, checkpoint_every=2)
    first = run_training(cfg)
    more = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 6})})
    holder = RunLock(first.checkpoint_dir)  # as another process training this run would hold it
    with pytest.raises(CheckpointError, match="is being trained by pid"):
        run_training(more, resume=True)
    assert MlflowClient().get_run(first.run_id).info.status == "FINISHED"  # the refused resume changed nothing
    holder.release()  # the holder ended (a killed process's lock is dropped by the kernel the same way)
    assert run_training(more, resume=True).steps == 6


@pytest.mark.slow
def test_each_run_keeps_its_own_checkpoints(tmp_path, store):
    cfg = tiny(tmp_path, max_steps=4, eval_every=2, checkpoint_every=2)
    first = run_training(cfg)
    second = run_training(cfg)  # started within the same second, it still gets a folder of its own
    assert first.checkpoint_dir != second.checkpoint_dir
    assert load_checkpoint(first.checkpoint_dir / "best").state.mlflow_run_id == first.run_id
    assert latest_run_folder(cfg) == second.checkpoint_dir, "a bare --resume continues the newest run"


@pytest.mark.slow
def test_time_budget_ends_the_run_and_the_schedule_follows_elapsed_time(tmp_path, store):
    cfg = tiny(tmp_path, max_steps=10_000, max_time_minutes=0.02, eval_every=1000)  # 1.2 s of ~0.1 s steps
    result = run_training(cfg, step_hook=slow_step)
    assert result.stopped_by == "time limit" and 4 <= result.steps < 100
    lrs = [m.value for m in MlflowClient().get_metric_history(result.run_id, "train/lr")]
    assert lrs[-1] < 0.3 * cfg.training.learning_rate, "the cosine reached its end with the budget, not max_steps"
    assert MlflowClient().get_model_version_by_alias(cfg.model_name, "champion").run_id == result.run_id


@pytest.mark.slow
def test_resume_goes_on_with_the_time_budget(tmp_path, store):
    cfg = tiny(tmp_path, max_steps=10_000, max_time_minutes=0.03, eval_every=1000, warmup_steps=2)  # 1.8 s
    first = run_training(cfg, step_hook=signal_during_step(6, then=slow_step))
    saved = load_checkpoint(first.checkpoint_dir / "latest").state.train_seconds
    assert saved >= 0.5, "the checkpoint keeps the seconds trained"
    second = run_training(cfg, resume=True, step_hook=slow_step)
    assert second.stopped_by == "time limit"
    lrs = {m.step: m.value for m in MlflowClient().get_metric_history(first.run_id, "train/lr")}
    # the decay goes on from the seconds already trained; a restarted clock would put step 7 back near the peak
    from jobs.training.schedule import learning_rate

    at_least_this_far = learning_rate(7, 10_000, cfg.training, elapsed_seconds=saved, budget_seconds=1.8)
    assert lrs[7] <= at_least_this_far * (1 + 1e-9) < 0.9 * cfg.training.learning_rate
    assert second.steps <= 19, "the second session used what was left of 18 steps' budget, not a new one"


@pytest.mark.slow
def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, store):
    def step_that_diverges(step_number, step):
        loss, norm = step()
        return (float("nan"), norm) if step_number == 6 else (loss, norm)

    cfg = tiny(tmp_path)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 6"):
        run_training(cfg, step_hook=step_that_diverges)
    latest = load_checkpoint(latest_run_folder(cfg) / "latest")
    assert latest.state.step == 4, "the checkpoint from step 4 is intact"
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("tiny_torch").experiment_id])
    assert runs[0].info.status == "FAILED"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_ends_the_run(tmp_path, store):
    result = run_training(tiny(tmp_path), step_hook=signal_during_step(3))
    assert result.stopped_by == "SIGTERM" and result.steps == 3
    assert load_checkpoint(result.checkpoint_dir / "latest").state.step == 3
    assert MlflowClient().get_run(result.run_id).info.status == "KILLED"
    assert result.model_version is None and MlflowClient().search_model_versions("name='tiny_torch'") == [], \
        "a run a signal stopped is not registered (it has not reached its end)"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate: Input should be a valid number"),
        ({"training": {"batch_sise": 4}}, "training.batch_sise: unknown key"),
        ({"training": {"lr_decay": "step"}}, "training.lr_decay"),
        ({"training": {"min_learning_rate": 1.0}}, "min_learning_rate"),
        ({"model": {"d_model": 30, "n_heads": 4}}, "divisible"),
        ({"data": {"dataset": "local"}}, "data.train_files is required"),
        ({"training": {"learning_rate": float("nan")}}, "training.learning_rate: Input should be a finite number"),
        ({"training": {"weight_decay": float("inf")}}, "training.weight_decay: Input should be a finite number"),
        ({"training": {"max_time_minutes": float("inf")}}, "training.max_time_minutes: Input should be a finite"),
        ({"training": {"batch_size": 10**12}}, "training.batch_size: Input should be less than or equal to 65536"),
        ({"data": {"vocab_size": 2 * 10**9}}, "data.vocab_size: Input should be less than or equal to 1048576"),
        ({"preference": {"words_per_story": 0}}, "preference.words_per_story: Input should be greater than or equal"),
        ({"preference": {"beta": float("nan")}}, "preference.beta: Input should be a finite number"),
    ],
)
def test_config_errors_name_the_key(change, message):
    values = {"experiment_name": "x", **change}
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(values)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_evaluate_text_file_json_and_chat_over_stdin(tmp_path, store):
    result = run_training(tiny(tmp_path, max_steps=6))
    best = str(result.checkpoint_dir / "best")
    text = tmp_path / "eval.txt"
    text.write_text("Once upon a time, Tim had a ball. Tim was happy. " * 20)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "jobs", "evaluate", "--model", best, "--text-file", str(text), "--json"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    last = json.loads(out.stdout)  # stdout holds the JSON and nothing else
    assert set(last) == {"loss", "perplexity", "tokens", "bits_per_byte"}
    assert last["perplexity"] == pytest.approx(math.exp(last["loss"]))
    direct = run_evaluation(best, text_file=str(text), log=False)
    assert direct["loss"] == pytest.approx(last["loss"])

    chat = subprocess.run([sys.executable, "-m", "jobs", "chat", "--model", best, "--max-length", "8", "--seed", "1"],
                          input="temp 0.5\ntopk 5\ntemp hot\ntemp -2\ntemp nan\ntopk -1\nOnce upon a time\nquit\n",
                          capture_output=True,
                          text=True, env=env, timeout=120, cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr
    assert "temperature=0.5" in chat.stdout and "top_k=5" in chat.stdout
    assert chat.stdout.count("'temp' needs a finite number >= 0") == 3 and "'topk' needs a whole number >= 0" in chat.stdout
    assert chat.stdout.count("unchanged: temperature=0.5, top_k=5") == 4, "a rejected value leaves the setting as it was"
    assert "Model: Once upon a time" in chat.stdout

    missing = subprocess.run([sys.executable, "-m", "jobs", "generate", "--model", str(tmp_path / "nope"), "--prompt", "x"],
                             capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: checkpoint not found")


@pytest.mark.slow
def test_unreachable_tracking_server_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    from jobs.errors import TrackingError

    with pytest.raises(TrackingError, match="MLflow tracking server http://127.0.0.1:9 is unreachable"):
        run_training(tiny(tmp_path))


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """A real `mlflow server` on 127.0.0.1: sqlite backend, served artifacts in a temp folder."""
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
               "--artifacts-destination", str(server_dir / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(server_dir / "server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"mlflow server did not start: {(server_dir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield Server(uri, process)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    log.close()


@dataclass
class Server:
    uri: str
    process: subprocess.Popen


@pytest.mark.slow
def test_train_against_a_real_mlflow_server(tmp_path, mlflow_server):
    cfg = tiny(tmp_path, max_steps=6)
    result = run_training(cfg)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(result.run_id)
    assert run.data.params["experiment_name"] == "tiny_torch"
    assert len(client.get_metric_history(result.run_id, "train/loss")) == 6
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="config.yaml", dst_path=str(tmp_path / "dl"))
    assert "experiment_name: tiny_torch" in Path(local).read_text()
    from jobs.models import load_model
    from jobs.serving.loading import complete

    loaded = load_model(f"models:/{cfg.model_name}@champion")
    text = "".join(complete(loaded, "Once upon a time", max_length=10, seed=0))
    direct = "".join(complete(load_model(str(result.checkpoint_dir / "best")), "Once upon a time", max_length=10, seed=0))
    assert text == direct and text and loaded.state.step == 6


@pytest.mark.slow
def test_tracking_outage_mid_run_does_not_stop_or_lose_training(tmp_path, mlflow_server, monkeypatch, capsys):
    def step_with_outage(step_number, step):
        if step_number == 3:  # the server goes away mid-run
            os.killpg(mlflow_server.process.pid, signal.SIGKILL)
            mlflow_server.process.wait()
        return step()

    monkeypatch.setattr("jobs.tracking.metrics.RunLogger.FLUSH_SECONDS", 0.05)  # send metrics about every step
    result = run_training(tiny(tmp_path, max_steps=8), step_hook=step_with_outage)
    assert result.steps == 8 and len(result.losses) == 8
    assert load_checkpoint(result.checkpoint_dir / "latest").state.step == 8
    kept = [json.loads(line) for line in (result.checkpoint_dir / "metrics-journal.jsonl").read_text().splitlines()]
    assert {m["step"] for m in kept if m["key"] == "train/loss"} >= {4, 5, 6, 7, 8}, "metrics after the outage are kept"
    # samples made during the outage are kept on disk, not waited for in the training thread
    samples = sorted(p.name for p in (result.checkpoint_dir / "pending-artifacts" / "samples").iterdir())
    assert samples == ["step-0000006.txt", "step-0000008.txt"]
    # the end of the run does not wait through MLflow's retries: registration is left to the run's next start
    assert result.model_version is None
    assert "MLflow is unreachable, so this run will register its model (and end in MLflow) at its next start" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_then_resume_keeps_every_step_exactly_once(tmp_path, store):
    """A checkpoint does not count until the metrics of the steps it covers are sent (or journalled): after
    kill -9 and --resume, the run's train/loss history holds every step exactly once, with the losses of a run
    that never stopped."""
    steps = 120
    whole = run_training(tiny(tmp_path / "whole", max_steps=steps, eval_every=60, checkpoint_every=10))
    cfg = tiny(tmp_path / "killed", max_steps=steps, eval_every=60, checkpoint_every=10)
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(REPO)}
    runs_root = Path(cfg.data.assets_dir) / "checkpoints" / cfg.experiment_name / "torch"
    process = subprocess.Popen([sys.executable, "-m", "jobs", "train", "--config", str(config_file)], env=env,
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        states = list(runs_root.glob("*/latest/state.json"))
        if states and json.loads(states[0].read_text())["step"] >= 30:
            break
        time.sleep(0.01)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
    stopped_at = load_checkpoint(next(runs_root.glob("*/latest"))).state.step
    assert 30 <= stopped_at < steps

    resumed = run_training(cfg, resume=True)
    history = MlflowClient().get_metric_history(resumed.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1)), "every step exactly once"
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(whole.losses, rel=1e-6, abs=0)


@pytest.mark.slow
def test_nan_before_any_checkpoint_says_none_was_saved(tmp_path, store):
    def diverges_at_once(step_number, step):
        loss, norm = step()
        return float("inf"), norm

    with pytest.raises(TrainingDiverged, match="loss is inf at step 1; stopped. No checkpoint was saved before it"):
        run_training(tiny(tmp_path), step_hook=diverges_at_once)


def test_atomic_writes_of_one_file_from_many_writers_never_collide(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from jobs import atomic

    target = tmp_path / "LATEST"
    texts = [f"writer-{i}\n" * 1000 for i in range(8)]

    def write_many(text):
        for _ in range(50):
            atomic.write_text(target, text)
            assert target.read_text() in texts, "a reader sees one whole version"

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write_many, texts))
    assert target.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST"], "no temporary file is left behind"


LLAMA = {"architecture": "llama", "n_heads": 4, "n_kv_heads": 2, "d_ffn": 48}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["torch", "custom"])
def test_llama_trains_resumes_registers_and_generates(tmp_path, store, model_type):
    whole = run_training(tiny(tmp_path / "whole", model_type, model=LLAMA))
    cfg = tiny(tmp_path / "parts", model_type, model=LLAMA)
    first = run_training(cfg, step_hook=signal_during_step(5))
    second = run_training(cfg, resume=True)
    assert first.losses + second.losses == pytest.approx(whole.losses, rel=1e-6, abs=0)
    assert whole.losses[-1] < whole.losses[0]
    run = MlflowClient().get_run(second.run_id)
    assert run.data.params["architecture"] == "llama" and run.info.status == "FINISHED"
    from jobs.models import load_model
    from jobs.serving.loading import complete

    loaded = load_model(f"models:/{cfg.model_name}@champion")
    assert loaded.config.architecture == "llama" and loaded.config.n_kv_heads == 2
    assert type(loaded.model).__name__ == ("TorchLlama" if model_type == "torch" else "CustomLlama")
    text = "".join(complete(loaded, "Once upon a time", max_length=8, temperature=0.0))
    assert text == "".join(complete(loaded, "Once upon a time", max_length=8, temperature=0.0)) and text


@pytest.mark.slow
def test_final_evals_score_the_registered_model_log_its_growth_and_agree_with_evaluate_and_compare(tmp_path, store):
    """training.final_evals scores the registered (best) checkpoint and, with the history, each kept step
    checkpoint; the scores are the run's metrics (at each checkpoint's step), the version's (logged-model metrics
    and tags) and a figure. `evaluate --suite` of the same version gives the same accuracy; compare shows it."""
    from conftest import ZORRO_PAIRS, write_zorro

    suite = write_zorro(tmp_path / "zorro", {"agreement-a": ZORRO_PAIRS * 3, "other-b": ZORRO_PAIRS[:2]})
    cfg = tiny(tmp_path, final_evals=str(suite), final_evals_history=True, keep_checkpoints=5)
    result = run_training(cfg)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    growth = client.get_metric_history(result.run_id, "zorro/during_training/accuracy")
    assert sorted(m.step for m in growth) == [0, 4, 8], "the untrained model (step 0) and each kept checkpoint"
    best_step = load_checkpoint(result.checkpoint_dir / "best").state.step
    (final,) = client.get_metric_history(result.run_id, "zorro/accuracy")
    assert final.step == best_step, "the registered model's score, at its step"
    accuracy = run.data.metrics["zorro/accuracy"]
    assert 0 <= accuracy <= 1 and {"zorro/phenomenon/agreement", "zorro/paradigm/other-b"} <= set(run.data.metrics)
    version = client.get_model_version(cfg.model_name, result.model_version)
    assert version.tags["zorro_accuracy"] == f"{accuracy:.4f}" and len(version.tags["zorro_sha256"]) == 16
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert {m.key for m in logged.metrics} >= {"zorro/accuracy"}, "the version's page shows the score"
    assert "figures/zorro_accuracy.png" in {a.path for a in client.list_artifacts(result.run_id, "figures")}

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "jobs", "evaluate", "--model", f"models:/{cfg.model_name}@champion",
                          "--suite", str(suite), "--json"], capture_output=True, text=True, env=env, timeout=180,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    scored = json.loads(out.stdout)
    assert scored["accuracy"] == pytest.approx(accuracy) and scored["pairs"] == 14
    assert set(scored["phenomena"]) == {"agreement", "other"} and scored["sha256"].startswith(version.tags["zorro_sha256"])
    (evaluation,) = client.search_runs([run.info.experiment_id], f"tags.trained_in_run = '{result.run_id}'")
    assert evaluation.data.tags["model_version"] == f"{cfg.model_name}/{result.model_version}"

    from jobs.figures import summary_table
    from jobs.tracking import load_runs

    (curves,) = load_runs([cfg.experiment_name])
    assert curves.suite_accuracy() == {"zorro": pytest.approx(accuracy)}
    table = summary_table([curves], phenomena=True)
    assert "zorro" in table.splitlines()[0] and f"{accuracy:.1%}" in table and "agreement" in table


@pytest.mark.slow
def test_resume_auto_skips_a_damaged_newest_checkpoint_and_each_architecture_resumes_its_own(tmp_path, store,
                                                                                             capsys):
    gpt2 = tiny(tmp_path, max_steps=4, checkpoint_every=2)
    llama = tiny(tmp_path, max_steps=4, checkpoint_every=2, model=LLAMA)  # the same experiment and model type
    stopped = run_training(gpt2, step_hook=signal_during_step(3))  # latest at step 3, step-0000002 beside it
    finished_llama = run_training(llama)  # a newer run, of the other architecture
    assert stopped.stopped_by == "SIGTERM" and finished_llama.steps == 4
    (stopped.checkpoint_dir / "latest" / "model.safetensors").write_bytes(b"a write the disk never finished")
    resumed = run_training(gpt2, resume="auto")  # what a restarted pod runs
    assert resumed.run_id == stopped.run_id, "the GPT-2 run, not the newer Llama run of the same experiment"
    assert resumed.steps == 4 and len(resumed.losses) == 2, "went on from the intact step-2 checkpoint"
    assert "skipping" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_that_died_while_registering_is_finished_by_the_next_start(tmp_path, store):
    """kill -9 (here: an exception nothing catches) during the final registration: the next `--resume auto`
    registers the run's model once, and ends the run FINISHED; the start after that has nothing to do."""
    from unittest import mock

    from jobs.training.trainer import Trainer

    class Killed(BaseException):
        pass

    def dies(self):
        raise Killed

    cfg = tiny(tmp_path, max_steps=4)
    with mock.patch.object(Trainer, "register_and_score", dies), pytest.raises(Killed):
        run_training(cfg)
    client = MlflowClient()
    assert client.search_model_versions(f"name='{cfg.model_name}'") == []
    finished = run_training(cfg, resume="auto")
    assert finished.stopped_by == "end" and finished.model_version == "1" and finished.steps == 4
    assert client.get_run(finished.run_id).info.status == "FINISHED"
    again = run_training(cfg, resume="auto")
    assert again.stopped_by == "nothing to do" and len(client.search_model_versions(f"name='{cfg.model_name}'")) == 1


@pytest.mark.slow
def test_steps_trained_again_with_new_settings_go_to_a_branch_run_that_says_where_it_branched(tmp_path, store):
    """Resume a 6-step run from its step-2 checkpoint with max_steps 8 (a new schedule): steps 3-6 are trained
    again, so they are logged in a new run nested under the first (its curves: steps 1-2 copied, then the new
    ones); the first run keeps its own history. Resuming from the newest checkpoint goes on in the same run."""
    client = MlflowClient()
    cfg = tiny(tmp_path, max_steps=6, eval_every=2, checkpoint_every=2, keep_checkpoints=5)
    first = run_training(cfg)
    more = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 8})})
    branch = run_training(more, resume=str(first.checkpoint_dir / "step-0000002"))
    assert branch.run_id != first.run_id and branch.steps == 8
    run = client.get_run(branch.run_id)
    assert run.data.tags["mlflow.parentRunId"] == first.run_id and run.data.tags["branched_at_step"] == "2"
    assert run.data.params["training.max_steps"] == "8"

    def lrs(run_id):
        return {m.step: m.value for m in client.get_metric_history(run_id, "train/lr")}
    old, new = lrs(first.run_id), lrs(branch.run_id)
    assert sorted(old) == list(range(1, 7)) and sorted(new) == list(range(1, 9))
    assert all(new[step] == old[step] for step in (1, 2)) and new[4] != old[4], "a new schedule from step 3"
    assert load_checkpoint(branch.checkpoint_dir / "latest").state.mlflow_run_id == branch.run_id
    further = more.model_copy(update={"training": more.training.model_copy(update={"max_steps": 10})})
    assert run_training(further, resume=True).run_id == branch.run_id  # nothing trained twice: the same run


def test_help_reads_the_files_and_imports_neither_torch_nor_mlflow():
    """`python -m jobs <job> --help` answers at once: every job's description and options come from its source."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys, io, contextlib\nfrom jobs.__main__ import JOBS, main\nout = {}\n"
            "for job in [None, *JOBS]:\n"
            "    text = io.StringIO()\n"
            "    with contextlib.redirect_stdout(text): main([job, '--help'] if job else ['--help'])\n"
            "    out[job] = text.getvalue()\n"
            "print(repr(out)); print([m for m in ('torch', 'mlflow', 'transformers') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    texts, heavy = done.stdout.splitlines()
    assert heavy == "[]", f"--help imported {heavy}"
    import ast

    out = ast.literal_eval(texts)
    assert out["generate"].startswith("`python -m jobs generate") and out["chat"].startswith("`python -m jobs chat")
    assert "--suite" in out[None].split("evaluate", 1)[1].splitlines()[0]
    assert "options: train(config: str | None=None" in out["train"]


@pytest.mark.slow
def test_sigterm_stops_pytest_even_while_a_test_trains_in_process(tmp_path):
    """CI cancellation and `timeout` send SIGTERM to pytest: the trainer saves its checkpoint, then the runner
    stops (the next test never starts) instead of the signal being taken as the training's alone."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('repo_conftest', {str(REPO / 'tests' / 'conftest.py')!r})\n"
        "repo = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(repo)\n"
        "sigterm_stops_pytest, store = repo.sigterm_stops_pytest, repo.store\n")
    (tmp_path / "test_probe.py").write_text(
        "from pathlib import Path\nimport conftest\n"
        "def test_trains(tmp_path, store):\n"
        "    from jobs.training.trainer import run_training\n"
        "    def step(n, real):\n"
        "        Path(__file__).with_name('training').touch()\n"
        "        return conftest.repo.slow_step(n, real)\n"
        "    run_training(conftest.repo.tiny(tmp_path, max_steps=100_000, eval_every=100_000), step_hook=step)\n"
        "def test_after():\n"
        "    Path(__file__).with_name('after').touch()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "training").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=120)
    assert child.returncode != 0 and not (tmp_path / "after").exists(), output[-3000:]
    assert "KeyboardInterrupt" in output or "SIGTERM" in output, output[-3000:]
