"""The sweep job (jobs/sweep.py, jobs/training/search.py): a bad space is one line before any trial trains; a
sweep's trials are training runs nested under one MLflow run; it writes the best config, goes on after a stop,
and refuses the same name with another space; the trainer's side (a pruned trial, no registration)."""

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import assert_refused, signal_during_step, tiny
from jobs.config import load_config, validate_config
from jobs.sweep import run_sweep
from jobs.training.trainer import StopReason, Trial, run_training

# (space file's text, words the one error line holds)
BAD_SPACES = [
    ("training.learning_rat: {low: 1.0e-3, high: 1.0e-2}", ["training.learning_rat", "unknown key"]),
    ("trainin.learning_rate: [0.001, 0.002]", ["trainin", "unknown key"]),
    ("training.learning_rate: {low: 1.0e-2, high: 1.0e-3}", ["training.learning_rate", "empty range"]),
    ("training.learning_rate: {low: 0.0, high: 1.0e-3, log: true}", ["log range", "above zero"]),
    ("training.weight_decay: {low: -0.1, high: 0.1, log: true}", ["training.weight_decay", "log range"]),
    ("training.learning_rate: {low: .nan, high: 1.0e-3}", ["low must be a finite number"]),
    ("training.batch_size: {low: 4, high: 8, step: 16}", ["step 16", "at most high - low"]),
    ("training.batch_size: {low: 4, high: 8, log: true, step: 2}", ["either log or stepped"]),
    ("training.batch_size: {low: 4, hi: 8}", ["unknown range key 'hi'"]),
    ("training.batch_size: {low: 4}", ["needs both low and high"]),
    ("training.optimizer: []", ["training.optimizer", "empty list"]),
    ("training.optimizer: [adamw, adamw]", ["listed twice"]),
    ("training.optimizer: [adamw, sgd]", ["training.optimizer = 'sgd'", "'adamw' or 'muon'"]),
    ("training.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}", ["min_learning_rate", "above"]),
    ("training.learning_rate: 0.001", ["a range", "or a list of choices"]),
    ("- a list", ["a space is a mapping"]),
    ("", ["a space is a mapping"]),
]


@pytest.mark.parametrize("text, words", BAD_SPACES, ids=[t[:40] for t, _ in BAD_SPACES])
def test_a_bad_space_is_one_line_before_any_trial(bad_files, tmp_path, text, words, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(text + "\n")
    assert_refused(["sweep", "--config", str(bad_files["config"]), "--space", str(space), "--trials", "2"], capsys,
                   words)
    assert not (bad_files["root"] / "assets" / "sweeps").exists(), "nothing was started"


@pytest.mark.parametrize("flags, words", [
    (["--space", "{root}/nope.yaml"], ["--space", "nope.yaml", "not found"]),
    (["--space", "{root}"], ["not a file"]),
    (["--space", "{space}", "--trials", "0"], ["--trials"]),
    (["--space", "{space}", "--steps", "10", "--minutes", "1"], ["--steps and --minutes"]),
    (["--space", "{space}", "--name", "../x"], ["--name"]),
    (["--space", "{space}", "--out", "{config}"], ["--out", "exists"]),
    (["--space", "{space}", "--out", "{root}/nowhere/best.yaml"], ["--out", "folder does not exist"]),
])
def test_bad_sweep_flags_are_one_line(bad_files, tmp_path, flags, words, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("training.learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    paths = {"root": bad_files["root"], "config": bad_files["config"], "space": space}
    argv = ["sweep", "--config", str(bad_files["config"])] + [f.format(**paths) for f in flags]
    assert_refused(argv, capsys, words)


def test_a_trial_the_judge_stops_is_pruned_and_registers_nothing(tmp_path, store):
    """The trainer's side of a sweep: on_validation sees each validation loss; True stops the run there (pruned),
    the run carries the trial's tags and name, and a trial never registers a model."""
    seen = []

    def judge(step, loss):
        seen.append(step)
        return step >= 4

    cfg = tiny(tmp_path, max_steps=12, eval_every=2)
    result = run_training(cfg, trial=Trial({"sweep.trial": "7"}, judge, run_name="trial-7"))
    assert result.stopped_by == StopReason.PRUNED and result.steps == 4 and seen == [2, 4]
    assert result.model_version is None and not MlflowClient().search_registered_models()
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["sweep.trial"] == "7" and run.info.run_name == "trial-7"
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_a_sweep_nests_its_trials_writes_the_best_config_and_goes_on_after_a_stop(tmp_path, store):
    cfg = tiny(tmp_path, max_steps=8, eval_every=4, checkpoint_every=100)
    base = cfg.to_dict()
    space = tmp_path / "space.yaml"
    space.write_text("training.learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     "training.optimizer: [adamw, muon]\n")
    first = run_sweep(base, str(space), trials=2, steps=6, prune=False)
    assert first.stopped_by == StopReason.END
    study = first.study
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    baseline = study.trials[0]  # the config as written comes first: the reference
    assert baseline.user_attrs["baseline"] and baseline.params == {"training.learning_rate": 3e-3,
                                                                    "training.optimizer": "adamw"}

    client = MlflowClient()
    experiment = client.get_experiment_by_name("tiny_torch-sweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "sweep"]
    children = [r for r in runs if r.info.run_name != "sweep"]
    assert len(children) == 2
    for child in children:  # nested under the sweep run, each a whole training run of its trial's settings
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        trial = study.trials[int(child.data.tags["sweep.trial"])]
        assert float(child.data.params["training.learning_rate"]) == pytest.approx(trial.params["training.learning_rate"])
        assert child.data.params["training.optimizer"] == trial.params["training.optimizer"]
        assert child.data.params["training.max_steps"] == "6", "a trial trains --steps steps"
        assert child.data.metrics["val/loss"] == pytest.approx(trial.value)
    assert {m.step for m in client.get_metric_history(parent.info.run_id, "sweep/trial_val_loss")} == {0, 1}
    assert not client.search_registered_models(), "trials register nothing"

    best = load_config(first.best_file)  # a ready config: the base at its own budget, the best trial's settings
    assert best.training.learning_rate == pytest.approx(study.best_params["training.learning_rate"])
    assert best.training.optimizer == study.best_params["training.optimizer"]
    assert best.training.max_steps == 8 and best.experiment_name == cfg.experiment_name
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best.yaml", "history.png"} <= artifacts

    # a signal during the next trial: that trial fails, the sweep stops with the signal's status...
    stopped = run_sweep(base, str(space), trials=4, steps=6, prune=False, step_hook=signal_during_step(3))
    assert stopped.stopped_by == StopReason.SIGTERM and stopped.best_file is None
    assert [t.state.name for t in stopped.study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    # ...and the same command goes on to 4 finished trials, with new settings, under the same parent run
    again = run_sweep(base, str(space), trials=4, steps=6, prune=False)
    states = [t.state.name for t in again.study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1
    rates = [t.params["training.learning_rate"] for t in again.study.trials if t.state.name == "COMPLETE"]
    assert len(set(rates)) == 4, "a sweep that goes on does not repeat its first settings"
    assert sum(bool(t.user_attrs.get("baseline")) for t in again.study.trials) == 1, "one baseline a study"
    assert len([r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "sweep"]) == 1

    # the same name with another space is refused, naming the way out
    other = tmp_path / "other.yaml"
    other.write_text("training.learning_rate: {low: 2.0e-3, high: 1.0e-2}\n")
    from jobs.errors import ConfigError

    with pytest.raises(ConfigError, match="another config, space or trial length; give --name"):
        run_sweep(base, str(other), trials=1, steps=6)
    assert validate_config(yaml.safe_load(first.best_file.read_text()))  # still the best of the first study



@pytest.mark.parametrize("space, config", [("cpu_demo_space", "cpu_demo"), ("torch_25m_space", "torch_25m"),
                                           ("tinystories_llama_space", "tinystories_llama_cpu")])
def test_the_shipped_spaces_fit_their_configs(space, config):
    """Every space in configs/sweeps passes the checks a sweep makes before its first trial, against its config."""
    from conftest import REPO
    from jobs.config import read_yaml
    from jobs.sweep import trial_settings
    from jobs.training.search import check_space, read_space

    path = REPO / "configs" / "sweeps" / f"{space}.yaml"
    base = read_yaml(REPO / "configs" / f"{config}.yaml")
    dimensions = read_space(path)
    check_space(dimensions, base, trial_settings(base, 100, None, f"{config}-sweep"), path)
    assert {d.key for d in dimensions} >= {"training.optimizer", "training.learning_rate"}


def test_a_space_holds_the_configs_own_values_or_says_it_does_not():
    """Dimension.contains decides whether the config as written can be the baseline trial."""
    from jobs.training.search import Dimension

    rate = Dimension("training.learning_rate", 1e-3, 1e-2, log=True)
    assert rate.contains(3e-3) and not rate.contains(2e-2) and not rate.contains("3e-3") and not rate.contains(True)
    batch = Dimension("training.batch_size", 16, 64, step=16)
    assert batch.contains(32) and not batch.contains(40) and batch.is_int
    assert Dimension("training.optimizer", choices=("adamw", "muon")).contains("muon")
    assert not Dimension("training.optimizer", choices=("muon",)).contains("adamw")
