"""Experiment configs (jobs/config.py): a file that is not one, and values no run could use, are refused in one line
naming the file or the key, before any data is read."""

import pytest

from conftest import assert_refused, fill

# (command, words the one error line holds)
CASES = [
    (["train", "--config", "{root}"], ["is a directory"]),
    (["train", "--config", "{root}/latin1.yaml"], ["latin1.yaml", "not UTF-8 text (byte 20)"]),
    (["train", "--config", "{root}/bomb.yaml"], ["bomb.yaml", "line 2", "YAML aliases"]),
    (["train", "--config", "{config}", "--experiment_name=../../x"], ["experiment_name", "not a usable name"]),
    (["train", "--config", "{config}", "--experiment_name=a/b"], ["experiment_name", "not a usable name"]),
    (["train", "--config", "{config}", "--data.assets_dir={root}/a-file"], ["data.assets_dir", "not a folder"]),
    (["train", "--config", "{config}", "--training.learning_rat=1"], ["training.learning_rat", "unknown key"]),
    (["train", "--config", "{config}", "--training.final_evals={root}/empty.txt"], ["empty.txt", "empty"]),
    (["train", "--config", "{config}", "--training.optimizer=sgd"], ["training.optimizer", "'adamw' or 'muon'"]),
    (["train", "--config", "{config}", "--training.muon_learning_rate=nan"], ["training.muon_learning_rate", "finite"]),
    (["train", "--config", "{config}", "--training.muon_learning_rate=-0.02"], ["training.muon_learning_rate"]),
    (["train", "--config", "{config}", "--training.muon_momentum=1.0"], ["training.muon_momentum", "less than 1"]),
    (["train", "--config", "{config}", "--training.muon_ns_steps=0"], ["training.muon_ns_steps"]),
    (["train", "--config", "{config}", "--training.cooldown_ratio=0"], ["training.cooldown_ratio"]),
    (["train", "--config", "{config}", "--training.lr_decay=step"], ["training.lr_decay", "'wsd'"]),
    (["train", "--config", "{config}", "--data.skip_documents=-1"], ["data.skip_documents", "greater than or equal"]),
    (["prefer", "--config", "{config}", "--preference.rejected=worst"], ["preference.rejected", "'story' or 'greedy'"]),
    (["train", "--config", "{config}", "--training.final_evals=[{root}/nowhere]"],
     ["training.final_evals: not found", "/nowhere"]),
]


@pytest.mark.parametrize("template, words", CASES, ids=[c[0][-1][-30:] for c in CASES])
def test_a_config_no_run_could_use_is_one_clear_line(bad_files, template, words, capsys):
    assert_refused(fill(template, bad_files), capsys, words)


def test_a_tilde_in_assets_dir_is_home_everywhere(tmp_path, monkeypatch):
    """`assets_dir: ~/x` is expanded once, where the config is read, so no path under it keeps a literal `~`."""
    from jobs.config import validate_config

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = validate_config({"experiment_name": "x", "data": {"assets_dir": "~/assets"}})
    assert cfg.data.assets_dir == str(tmp_path / "assets")
