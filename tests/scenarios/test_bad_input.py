"""Bad input end to end: what only a whole process shows (binary bytes on standard input, a reader that closes the
pipe, a bug that must keep its traceback) and a benchmark's checks. The cases of each checking module live beside
its tests (tests/jobs/test_cli.py, test_config.py, data/test_data_input.py, training/test_run_input.py,
tracking/test_store.py, test_evaluate.py), sharing the helpers in conftest.py."""

import subprocess
import sys

import pytest
import yaml

from conftest import write_stories
from jobs.__main__ import main as jobs_main


@pytest.mark.slow
def test_binary_bytes_on_chats_stdin_are_one_clear_line(trained_world):
    done = subprocess.run([sys.executable, "-m", "jobs", "chat", "--model", str(trained_world["best"]), "--max-length", "4"],
                          input=b"Once upon\n\xff\xfe\x00binary\n", capture_output=True, env=trained_world["env"], timeout=120,
                          cwd=trained_world["root"])
    err = done.stderr.decode()
    assert done.returncode == 2 and "error: stdin: not UTF-8 text" in err and "Traceback" not in err, err[-2000:]


@pytest.mark.slow
def test_a_reader_that_closes_the_pipe_ends_generate_quietly(trained_world):
    """`generate ... | head -c 5`: the reader goes away after 5 bytes; the job stops with status 0 and no traceback."""
    process = subprocess.Popen([sys.executable, "-m", "jobs", "generate", "--model", str(trained_world["best"]), "--prompt",
                                "Once", "--max-length", "30", "--temperature", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=trained_world["env"], cwd=trained_world["root"])
    assert len(process.stdout.read(5)) == 5
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]


@pytest.mark.slow
def test_an_internal_bug_keeps_its_traceback(trained_world, capsys, monkeypatch):
    """Only input problems are one line: a bug (here a ValueError from inside the job) is not caught."""
    import jobs.generate

    def broken(*args, **kwargs):
        raise ValueError("a bug, not a bad input")

    monkeypatch.setattr(jobs.generate, "load_model", broken)
    with pytest.raises(ValueError, match="a bug"):
        jobs_main(["generate", "--model", str(trained_world["best"]), "--prompt", "x"])



def test_bench_quality_names_a_missing_data_file_of_its_second_config_before_training(tmp_path, monkeypatch):
    """Both configs' data files are checked before the first one trains (12 minutes each); the hint is one the
    benchmark can take: a config key, not a job's flag it has no way to pass."""
    import bench.quality
    from jobs.errors import DataError

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "agreement-subject_verb.txt").write_text("the dogs runs .\nthe dogs run .\n")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"experiment_name": "q", "data": {"dataset": "local",
                                    "train_files": [str(write_stories(tmp_path, n=20))]}}))
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"experiment_name": "q", "data": {
        "dataset": "local", "train_files": [str(tmp_path / "shared" / "tinystories" / "train.txt")]}}))
    monkeypatch.setattr(sys, "argv", ["bench.quality", "--configs", str(good), str(missing), "--suite", str(suite)])
    monkeypatch.setattr(bench.quality, "train_for", lambda *a, **k: pytest.fail("trained before checking every config"))
    with pytest.raises(DataError, match="data file not found: .*train.txt; .*set data.dataset: tinystories in the config"):
        bench.quality.main()
