"""Data input (jobs/data/: sources, pipeline, shards): files that are not text, fields that are not strings, too
little text, a Hub source without the network, a blocked assets folder. Each is one line naming the file (and
the byte or field), before a tokenizer is trained or a token file written."""

import pytest

from conftest import assert_refused, fill, run_job

# (command, words the one error line holds)
CASES = [
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/binary.txt"],
     ["binary.txt", "not UTF-8 text", "byte 850"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/nulls.jsonl"], ["nulls.jsonl", "null"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/numbers.jsonl"],
     ["numbers.jsonl", "holds int64, not text"]),
    (["prepare-data", "--config", "{config}", "--data.val_files={root}/empty.txt"], ["no validation documents"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/one-paragraph.txt", "--data.separator=None"],
     ["1 document(s)", "separate documents with blank lines"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/missing-tinystories.txt"],
     ["data file not found", "--data.dataset=tinystories"]),
    (["prepare-data", "--config", "{config}", "--data.assets_dir={root}/blocked-assets"],
     ["cannot write", "blocked-assets/tokens", "data.assets_dir"]),
    # Hub sources without the network (the tests run offline): one line pointing to local files
    (["prepare-data", "--config", "{config}", "--data.dataset=tinystories"],
     ["cannot reach the Hugging Face Hub for roneneldan/TinyStories", "data.dataset: local"]),
    (["prepare-data", "--config", "{config}", "--data.dataset=fineweb-edu"], ["cannot reach the Hugging Face Hub"]),
]


@pytest.mark.parametrize("template, words", CASES, ids=[c[0][-1][-30:] for c in CASES])
def test_data_that_cannot_be_used_is_one_clear_line(bad_files, template, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(fill(template, bad_files), capsys, words)


def test_a_validation_split_shorter_than_one_window_is_named_before_training(bad_files, capsys, tmp_path):
    assert_refused(["train", "--config", bad_files["config"], f"--data.val_files={bad_files['root']}/short-valid.txt",
                    f"--data.assets_dir={tmp_path}"], capsys, ["validation split has", "model.max_seq_len"])


def test_null_on_the_command_line_means_null(bad_files, capsys, tmp_path):
    code, out, err = run_job(["prepare-data", "--config", bad_files["config"], "--data.subset_size=null",
                              f"--data.assets_dir={tmp_path}"], capsys)
    assert code == 0 and "prepared:" in out, err[-2000:]


def test_a_vocab_larger_than_the_text_can_make_says_what_it_became(bad_files, capsys, tmp_path):
    code, out, err = run_job(["prepare-data", "--config", bad_files["config"], f"--data.assets_dir={tmp_path}",
                              "--data.vocab_size=60000"], capsys)
    assert code == 0, err[-2000:]
    assert "not the 60,000 of data.vocab_size" in err  # a warning on standard error


def test_a_damaged_token_meta_json_is_named(bad_files, capsys, tmp_path):
    assets = tmp_path / "assets"
    assert run_job(["prepare-data", "--config", bad_files["config"], f"--data.assets_dir={assets}"], capsys)[0] == 0
    (meta,) = assets.glob("tokens/*/*/meta.json")
    meta.write_text('{"dtype": "uint16", "tokens": {"train": "many"')
    assert_refused(["prepare-data", "--config", bad_files["config"], f"--data.assets_dir={assets}"], capsys,
                   [f"{meta} is damaged"])
