"""evaluate's input (jobs/evaluate.py, jobs/minimal_pairs.py): a text file or a suite that cannot be scored, and a
checkpoint whose state.json points elsewhere. Each is one line naming the file (and line), before a model loads."""

import pytest

from conftest import assert_refused, corrupt_copy, fill, run_job

# (command, words the one error line holds)
CASES = [
    (["evaluate", "--model", "{best}", "--text-file", "{root}/binary.txt", "--log=False"],
     ["binary.txt", "not UTF-8 text", "byte 850"]),
    (["evaluate", "--model", "{best}", "--text-file", "{root}/missing.txt", "--log=False"], ["--text-file", "not found"]),
    (["evaluate", "--model", "{best}", "--text-file", "{root}/empty.txt", "--log=False"], ["empty.txt", "0 token(s)"]),
    (["evaluate", "--model", "{best}", "--text-file", "/dev/zero", "--log=False"], ["not a regular file"]),
    (["evaluate", "--model", "{best}", "--text-file", "{root}/short-valid.txt", "--training.batch_size=4"],
     ["--text-file", "give one or the other"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/nowhere", "--log=False"], ["--suite", "not found"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/binary.txt", "--log=False"], ["binary.txt:51", "not UTF-8"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/nulls.jsonl", "--log=False"],
     ["nulls.jsonl:1", "sentence_good is missing"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/a-file", "--log=False"], ["a-file", "not a paradigm file"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/one-paragraph.txt", "--text-file", "{root}/empty.txt"],
     ["--suite scores minimal pairs", "separate evaluate"]),
    (["train", "--config", "{config}", "--training.final_evals=[{root}/long-suite]", "--experiment_name=long"],
     ["training.final_evals: suite 'long-suite'", "more than the model's context (32)"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("template, words", CASES, ids=[c[0][-2][-30:] for c in CASES])
def test_text_or_a_suite_that_cannot_be_scored_is_one_clear_line(in_trained_world, template, words, capsys):
    assert_refused(fill(template, in_trained_world), capsys, words)


@pytest.mark.slow
def test_evaluate_writes_only_under_this_projects_assets_whatever_the_checkpoint_says(trained_world, tmp_path, capsys,
                                                                                        monkeypatch):
    """A checkpoint's state.json names its data and an assets folder; evaluate re-reads the data with the model's
    own tokenizer, and writes under the configured assets folder (./assets), never where the file says."""
    monkeypatch.chdir(tmp_path)
    folder = corrupt_copy(trained_world, "elsewhere", lambda s: s["experiment"]["data"].update(
        assets_dir=str(tmp_path / "elsewhere")))
    code, out, err = run_job(["evaluate", "--model", folder, "--log=False"], capsys)
    assert code == 0, err[-2000:]
    assert "loss" in out and not (tmp_path / "elsewhere").exists() and (tmp_path / "assets" / "tokens").is_dir()
    assert not (tmp_path / "assets" / "tokenizers").exists(), "no tokenizer was trained: the model's own is used"
    bare = corrupt_copy(trained_world, "no-experiment", lambda s: s.pop("experiment"))
    code, _, err = run_job(["evaluate", "--model", bare, "--log=False"], capsys)
    assert code == 2 and "no experiment.data" in err and "--text-file" in err and "Traceback" not in err, err


