"""The tracking store (jobs/tracking/store.py): a server that does not answer, a scheme MLflow cannot use, a
database where none can be written. Each is one line within seconds, naming the store without its password, and
nothing is made for a store that was refused."""

import time

import pytest

from conftest import run_job


@pytest.mark.parametrize("job", [["generate", "--prompt", "x"], ["chat"], ["evaluate", "--log=True"]])
def test_an_unreachable_tracking_server_fails_within_seconds(bad_files, job, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.perf_counter()
    code, _, err = run_job([job[0], "--model", "models:/tiny_bad@champion", *job[1:]], capsys)
    assert code == 2 and "MLflow tracking server http://127.0.0.1:9 is unreachable" in err, err[-2000:]
    assert time.perf_counter() - start < 15


@pytest.mark.parametrize("uri, words", [
    ("ftp://example/mlflow", ["unsupported scheme 'ftp'"]),
    ("file:///tmp/mlruns", ["refuses file stores", "MLFLOW_ALLOW_FILE_STORE"]),
    ("sqlite:///{root}/no/such/folder/mlflow.db", ["does not exist"]),
    ("sqlite:////proc/mlflow.db", ["cannot write in /proc, where the database and its journal live"]),
    ("sqlite:///{root}/long-suite", ["cannot open", "long-suite for writing (Is a directory)"]),  # a folder, not a database
    ("http://bob:s3cret@127.0.0.1:9", ["http://bob:***@127.0.0.1:9 is unreachable"]),
])
def test_a_tracking_store_that_cannot_work_is_named_without_its_password(bad_files, uri, words, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(root=bad_files["root"]))
    start = time.perf_counter()
    code, out, err = run_job(["generate", "--model", "models:/tiny_bad@champion", "--prompt", "x"], capsys)
    assert code == 2 and all(w in err for w in words), err
    assert "s3cret" not in out + err and time.perf_counter() - start < 15
    assert not (bad_files["root"] / "no").exists(), "no folder is made for a store that was refused"


