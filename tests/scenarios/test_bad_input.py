"""Bad input, table-driven: each case is a command line, the exit status it must end with, and the words its one
error line must hold. Commands run through the real entry point (`jobs.__main__.main`, what `python -m jobs`
calls), in this process; the ones that need standard input or a fresh process run as `python -m jobs`."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO, write_stories
from jobs.__main__ import main as jobs_main



def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m jobs ARGV`."""
    try:
        jobs_main([str(a) for a in argv])
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One small trained run and its files, shared by the cases (they only read it, or copy it first)."""
    root = tmp_path_factory.mktemp("bad-input")
    corpus = root / "corpus"
    corpus.mkdir()
    stories = write_stories(corpus, n=200)
    config = {
        "experiment_name": "tiny_bad",
        "data": {"dataset": "local", "train_files": [str(stories)], "vocab_size": 300, "assets_dir": str(root / "assets")},
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 2, "d_ffn": 64, "max_seq_len": 32},
        "training": {"batch_size": 4, "max_steps": 6, "eval_every": 3, "eval_batches": 2, "checkpoint_every": 3,
                     "sample_length": 4, "device": "cpu"},
    }
    config_file = root / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))
    store = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "jobs", "train", "--config", str(config_file)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_folder,) = (root / "assets" / "checkpoints" / "tiny_bad" / "torch").glob("torch-*")
    files = {"root": root, "config": config_file, "store": store, "env": env, "best": run_folder / "best",
             "latest": run_folder / "latest", "stories": stories}
    (root / "binary.txt").write_bytes(b"Once upon a time\n" * 50 + b"\xff\xfe\x00\x01" + b"end\n")
    (root / "nulls.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["a story", None, "another"]) + "\n")
    (root / "numbers.jsonl").write_text("\n".join(json.dumps({"text": n}) for n in [1, 2, 3]) + "\n")
    (root / "empty.txt").write_text("")
    (root / "one-paragraph.txt").write_text("Once upon a time there was one short story and nothing else.\n")
    (root / "short-valid.txt").write_text("Tim had a ball.\n")
    (root / "a-file").write_text("not a folder\n")
    (root / "latin1.yaml").write_bytes(b"experiment_name: caf\xe9\n")
    (root / "bomb.yaml").write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nc: &c [*b, *b]\nexperiment_name: x\n')
    (root / "long-suite").mkdir()  # a sentence longer than the tiny model's 32-token context
    (root / "long-suite" / "p-long.txt").write_text(("the dogs runs " * 20 + ".\n") + ("the dog runs " * 20 + ".\n"))
    (root / "blocked-assets").mkdir()  # a file where the token files' folder goes
    (root / "blocked-assets" / "tokens").write_text("not a folder\n")
    return files


def _case(world, template):
    """Fill {config}, {best}, {root}... in a command template with this world's paths."""
    return [str(part).format(**{k: v for k, v in world.items() if isinstance(v, (str, Path))}) for part in template]


# (command, exit status, words the one error line holds)
CASES = [
    # config and names
    (["train", "--config", "{root}"], 2, ["is a directory"]),
    (["train", "--config", "{root}/latin1.yaml"], 2, ["latin1.yaml", "not UTF-8 text (byte 20)"]),
    (["train", "--config", "{root}/bomb.yaml"], 2, ["bomb.yaml", "line 2", "YAML aliases"]),
    (["train", "--config", "{config}", "--experiment_name=../../x"], 2, ["experiment_name", "not a usable name"]),
    (["train", "--config", "{config}", "--experiment_name=a/b"], 2, ["experiment_name", "not a usable name"]),
    (["train", "--config", "{config}", "--data.assets_dir={root}/a-file"], 2, ["data.assets_dir", "not a folder"]),
    (["train", "--config", "{config}", "--model-type", "jax"], 2, ["--model-type"]),
    (["prepare-data", "bogus", "--config", "{config}"], 2, ["unknown prepare-data step 'bogus'"]),
    # data
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/binary.txt"], 2,
     ["binary.txt", "not UTF-8 text", "byte 850"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/nulls.jsonl"], 2, ["nulls.jsonl", "null"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/numbers.jsonl"], 2,
     ["numbers.jsonl", "holds int64, not text"]),
    (["prepare-data", "--config", "{config}", "--data.val_files={root}/empty.txt"], 2, ["no validation documents"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/one-paragraph.txt", "--data.separator=None"], 2,
     ["1 document(s)", "separate documents with blank lines"]),
    (["prepare-data", "--config", "{config}", "--data.train_files={root}/missing-tinystories.txt"], 2,
     ["data file not found", "--data.dataset=tinystories"]),
    (["train", "--config", "{config}", "--data.val_files={root}/short-valid.txt", "--experiment_name=short"], 2,
     ["validation split has", "model.max_seq_len"]),
    # checkpoints and resume
    (["train", "--config", "{config}", "--resume", "{best}", "--model.d_model=64", "--model.d_ffn=128"], 2,
     ["--resume: model.d_ffn is '128' here but '64' in the run being resumed"]),
    (["train", "--config", "{config}", "--resume", "{best}", "--training.learning_rate=0.5"], 2,
     ["--resume: training.learning_rate is '0.5' here", "start a new run"]),
    (["train", "--config", "{config}", "--resume", "{root}/nowhere"], 2, ["checkpoint not found"]),
    (["train", "--config", "{config}", "--experiment_name=never_trained", "--resume"], 2, ["nothing to resume"]),
    # generate, chat, evaluate flags
    (["generate", "--model", "{best}", "--prompt", "x", "--top-k", "abc"], 2, ["--top-k", "valid integer"]),
    (["generate", "--model", "{best}", "--prompt", "x", "--top-k", "-5"], 2, ["--top-k", "greater than or equal to 0"]),
    (["generate", "--model", "{best}", "--prompt", "x", "--temperature", "abc"], 2, ["--temperature", "valid number"]),
    (["generate", "--model", "{best}", "--prompt", "x", "--temperature", "nan"], 2, ["--temperature", "finite"]),
    (["generate", "--model", "{best}", "--prompt", "x", "--max-length", "2.5"], 2, ["--max-length", "fractional"]),
    (["generate", "--model", "{best}", "--prompt", "x", "--device", "tpu"], 2, ["--device", "'auto', 'cpu' or 'cuda'"]),
    (["generate", "--model", "{root}/nope", "--prompt", "x"], 2, ["checkpoint not found"]),
    (["generate", "--model", "{best}", "--prompt", "x", "--seed", str(2**64)], 2, ["--seed", "less than or equal to"]),
    (["generate", "--model", "{best}", "--prompt", "x", "--seed", "-1"], 2, ["--seed", "greater than or equal to 0"]),
    (["evaluate", "--model", "{best}", "--batch-size", "0", "--log=False"], 2, ["--batch-size", "greater than 0"]),
    (["evaluate", "--model", "{best}", "--max-batches", "0", "--log=False"], 2, ["--max-batches", "greater than 0"]),
    (["evaluate", "--model", "{best}", "--text-file", "{root}/binary.txt", "--log=False"], 2,
     ["binary.txt", "not UTF-8 text", "byte 850"]),
    (["evaluate", "--model", "{best}", "--text-file", "{root}/missing.txt", "--log=False"], 2, ["--text-file", "not found"]),
    (["evaluate", "--model", "{best}", "--text-file", "{root}/empty.txt", "--log=False"], 2, ["empty.txt", "0 token(s)"]),
    (["evaluate", "--model", "{best}", "--text-file", "{root}/short-valid.txt", "--training.batch_size=4"], 2,
     ["--text-file", "give one or the other"]),
    (["generate", "--model", "{best}", "--prompt", "Once \udcff upon"], 2, ["--prompt", "not UTF-8"]),
    (["compare", "no_such_experiment"], 2, ["neither an experiment name nor a run id"]),
    # minimal-pair suites: refused before a model loads or training starts, naming the file (and line)
    (["evaluate", "--model", "{best}", "--suite", "{root}/nowhere", "--log=False"], 2, ["--suite", "not found"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/binary.txt", "--log=False"], 2, ["binary.txt:51", "not UTF-8"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/nulls.jsonl", "--log=False"], 2,
     ["nulls.jsonl:1", "sentence_good is missing"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/a-file", "--log=False"], 2, ["a-file", "not a paradigm file"]),
    (["evaluate", "--model", "{best}", "--suite", "{root}/one-paragraph.txt", "--text-file", "{root}/empty.txt"], 2,
     ["--suite scores minimal pairs", "separate evaluate"]),
    (["train", "--config", "{config}", "--training.final_evals={root}/empty.txt"], 2, ["empty.txt", "empty"]),
    # round three: misleading hints and tracebacks (issue 25)
    (["evaluate", "--model", "{best}", "--text-file", "/dev/zero", "--log=False"], 2, ["not a regular file"]),
    (["compare", "tiny_bad", "--out", "{root}/a-file"], 2, ["--out", "cannot make a folder there"]),
    (["train", "--config", "{config}", "--training.final_evals=[{root}/nowhere]"], 2,
     ["training.final_evals: not found", "/nowhere"]),
    (["train", "--config", "{config}", "--training.final_evals=[{root}/long-suite]", "--experiment_name=long"], 2,
     ["training.final_evals: suite 'long-suite'", "more than the model's context (32)"]),
    (["generate", "--model", "models:/tiny_bad", "--prompt", "x"], 2, ["not which version", "models:/tiny_bad@champion"]),
    (["prepare-data", "--config", "{config}", "--data.assets_dir={root}/blocked-assets"], 2,
     ["cannot write", "blocked-assets/tokens", "data.assets_dir"]),
    # export: formats, types, where the files go (nothing written on a refusal)
    (["export", "--model", "{best}", "--format", "onnx", "--out", "{root}/exp"], 2, ["--format", "'gguf' or 'hf'"]),
    (["export", "--model", "{best}", "--format", "gguf", "--out", "{root}/exp", "--dtype", "q4_0"], 2, ["--dtype"]),
    (["export", "--model", "{best}", "--format", "hf", "--out", "{root}/exp", "--dtype", "q8_0"], 2,
     ["--dtype q8_0", "q8_0 is a GGUF type"]),
    (["export", "--model", "{best}", "--format", "gguf", "--out", "{root}"], 2, ["exists: give --force"]),
    (["export", "--model", "{best}", "--format", "gguf", "--out", "{root}", "--force"], 2, ["not an earlier export"]),
    (["export", "--model", "{best}", "--format", "gguf", "--out", "{root}/a-file/x"], 2, ["does not exist"]),
    (["export", "--model", "{root}/nope", "--format", "gguf", "--out", "{root}/exp"], 2, ["checkpoint not found"]),
    (["export", "--model", "models:/no_such_model@champion", "--format", "hf", "--out", "{root}/exp"], 2,
     ["cannot load models:/no_such_model@champion"]),
    # Hub sources without the network (the tests run offline): one line pointing to local files
    (["prepare-data", "--config", "{config}", "--data.dataset=tinystories"], 2,
     ["cannot reach the Hugging Face Hub for roneneldan/TinyStories", "data.dataset: local"]),
    (["prepare-data", "--config", "{config}", "--data.dataset=fineweb-edu"], 2, ["cannot reach the Hugging Face Hub"]),
    # the command line, checked whole before any work (fire alone ran the job first, or bound stray words)
    (["trian", "--config", "{config}"], 2, ["no job 'trian'", "did you mean train?"]),
    (["train", "--config", "{config}", "--training.learning_rate"], 2, ["--training.learning_rate needs a value"]),
    (["train", "--config", "{config}", "--=5"], 2, ["a flag needs a name"]),
    (["train", "--config", "{config}", "--modle-type", "custom"], 2, ["no flag --modle-type", "--model-type?"]),
    (["generate", "--model", "{best}", "--prompt", "Once", "upon"], 2, ["stray word 'upon'", "quote a value"]),
    (["generate", "--model", "{best}", "--promt", "x"], 2, ["no flag --promt", "did you mean --prompt?"]),
    (["prepare-data", "all", "extra", "--config", "{config}"], 2, ["stray word 'extra'"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("template, status, words", CASES, ids=[" ".join(c[0][:2] + c[0][-1:]) for c in CASES])
def test_bad_input_is_one_clear_line(world, template, status, words, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    monkeypatch.chdir(world["root"])
    code, out, err = run(_case(world, template), capsys)
    assert code == status, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def _corrupt_copy(world, name: str, change) -> Path:
    folder = world["root"] / "corrupt" / name
    shutil.copytree(world["latest"], folder)
    state = json.loads((folder / "state.json").read_text())
    change(state)
    (folder / "state.json").write_text(json.dumps(state))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name, change, words", [
    ("step-text", lambda s: s.update(step="fifteen"), ["state.json", "step", "fifteen"]),
    ("no-loader", lambda s: s.pop("loader"), ["state.json", "loader", "Field required"]),
    ("no-rng", lambda s: s.pop("rng"), ["state.json", "rng", "Field required"]),
    ("negative-seed", lambda s: s["loader"].update(seed=-1), ["state.json", "loader.seed", "greater than or equal to 0"]),
    ("short-rng", lambda s: s["rng"].update(torch=[1, 2, 3]), ["state.json", "rng", "holds 3 bytes, not 5056"]),
    ("rng-300", lambda s: s["rng"]["torch"].__setitem__(0, 300), ["state.json", "rng", "outside 0..255"]),
    ("no-param-groups", lambda s: s.update(optimizer_scalars={}), ["optimizer state does not fit", "KeyError"]),
    ("unknown-run", lambda s: s.update(mlflow_run_id="0123456789abcdef"), ["mlflow_run_id", "is not a run in"]),
    ("two-ranks", lambda s: s.update(world_size=2), ["trained by 2 process(es), and this is 1",
                                                     "python -m jobs.launch --standalone --nproc_per_node=2"]),
])
def test_a_corrupt_checkpoint_is_refused_before_mlflow_and_the_run_stays_as_it_was(world, name, change, words, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    folder = _corrupt_copy(world, name, change)
    run_id = json.loads((world["latest"] / "state.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=world["store"])
    before = client.get_run(run_id).info
    code, _, err = run(["train", "--config", world["config"], "--resume", folder], capsys)
    assert code == 2 and all(w in err for w in words), err[-2000:]
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_registers_nothing(world, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    client = MlflowClient(tracking_uri=world["store"])
    versions = len(client.search_model_versions("name='tiny_bad'"))
    code, out, _ = run(["train", "--config", world["config"], "--resume"], capsys)
    assert code == 0 and "nothing to do" in out and "--training.max_steps" in out
    assert len(client.search_model_versions("name='tiny_bad'")) == versions


@pytest.mark.slow
def test_null_on_the_command_line_means_null(world, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    code, out, err = run(["prepare-data", "--config", world["config"], "--data.subset_size=null"], capsys)
    assert code == 0, err[-2000:]
    assert "prepared:" in out


@pytest.mark.slow
def test_a_vocab_larger_than_the_text_can_make_says_what_it_became(world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    code, out, err = run(["prepare-data", "--config", world["config"], f"--data.assets_dir={tmp_path}",
                          "--data.vocab_size=60000"], capsys)
    assert code == 0, err[-2000:]
    assert "not the 60,000 of data.vocab_size" in err  # a warning on standard error


@pytest.mark.slow
def test_a_damaged_token_meta_json_is_named(world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    assets = tmp_path / "assets"
    assert run(["prepare-data", "--config", world["config"], f"--data.assets_dir={assets}"], capsys)[0] == 0
    (meta,) = assets.glob("tokens/*/*/meta.json")
    meta.write_text('{"dtype": "uint16", "tokens": {"train": "many"')
    code, _, err = run(["prepare-data", "--config", world["config"], f"--data.assets_dir={assets}"], capsys)
    assert code == 2 and f"{meta} is damaged" in err, err[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("job", [["generate", "--prompt", "x"], ["chat"], ["evaluate", "--log=True"]])
def test_an_unreachable_tracking_server_fails_within_seconds(world, job, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    start = time.perf_counter()
    code, _, err = run([job[0], "--model", "models:/tiny_bad@champion", *job[1:]], capsys)
    assert code == 2 and "MLflow tracking server http://127.0.0.1:9 is unreachable" in err, err[-2000:]
    assert time.perf_counter() - start < 15


@pytest.mark.slow
@pytest.mark.parametrize("uri, words", [
    ("ftp://example/mlflow", ["unsupported scheme 'ftp'"]),
    ("file:///tmp/mlruns", ["refuses file stores", "MLFLOW_ALLOW_FILE_STORE"]),
    ("sqlite:///{root}/no/such/folder/mlflow.db", ["does not exist"]),
    ("sqlite:////proc/mlflow.db", ["cannot write in /proc, where the database and its journal live"]),
    ("sqlite:///{root}/assets", ["cannot open", "assets for writing (Is a directory)"]),  # a folder, not a database
    ("http://bob:s3cret@127.0.0.1:9", ["http://bob:***@127.0.0.1:9 is unreachable"]),
])
def test_a_tracking_store_that_cannot_work_is_named_without_its_password(world, uri, words, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(root=world["root"]))
    start = time.perf_counter()
    code, out, err = run(["generate", "--model", "models:/tiny_bad@champion", "--prompt", "x"], capsys)
    assert code == 2 and all(w in err for w in words), err
    assert "s3cret" not in out + err and time.perf_counter() - start < 15
    assert not (world["root"] / "no").exists(), "no folder is made for a store that was refused"


@pytest.mark.slow
def test_binary_bytes_on_chats_stdin_are_one_clear_line(world):
    done = subprocess.run([sys.executable, "-m", "jobs", "chat", "--model", str(world["best"]), "--max-length", "4"],
                          input=b"Once upon\n\xff\xfe\x00binary\n", capture_output=True, env=world["env"], timeout=120,
                          cwd=world["root"])
    err = done.stderr.decode()
    assert done.returncode == 2 and "error: stdin: not UTF-8 text" in err and "Traceback" not in err, err[-2000:]


@pytest.mark.slow
def test_a_reader_that_closes_the_pipe_ends_generate_quietly(world):
    """`generate ... | head -c 5`: the reader goes away after 5 bytes; the job stops with status 0 and no traceback."""
    process = subprocess.Popen([sys.executable, "-m", "jobs", "generate", "--model", str(world["best"]), "--prompt",
                                "Once", "--max-length", "30", "--temperature", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=world["env"], cwd=world["root"])
    assert len(process.stdout.read(5)) == 5
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]


@pytest.mark.slow
def test_an_internal_bug_keeps_its_traceback(world, capsys, monkeypatch):
    """Only input problems are one line: a bug (here a ValueError from inside the job) is not caught."""
    import jobs.generate

    def broken(*args, **kwargs):
        raise ValueError("a bug, not a bad input")

    monkeypatch.setattr(jobs.generate, "load_model", broken)
    with pytest.raises(ValueError, match="a bug"):
        jobs_main(["generate", "--model", str(world["best"]), "--prompt", "x"])


def test_a_tilde_in_assets_dir_is_home_everywhere(tmp_path, monkeypatch):
    """`assets_dir: ~/x` is expanded once, where the config is read, so no path under it keeps a literal `~`."""
    from jobs.config import validate_config

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = validate_config({"experiment_name": "x", "data": {"assets_dir": "~/assets"}})
    assert cfg.data.assets_dir == str(tmp_path / "assets")


@pytest.mark.slow
def test_a_failed_checkpoint_write_leaves_no_half_folder_and_the_previous_one_intact(world, tmp_path, monkeypatch):
    """Disk full (or a file-size limit) while a checkpoint is written: one clear error, the temporary folder is
    removed, and the checkpoint that was there stays whole. A stale temporary folder is cleaned at the next start."""
    import errno

    from jobs import checkpoint
    from jobs.errors import CheckpointError
    from jobs.training.run_folders import RunLock

    folder = tmp_path / "run" / "latest"
    shutil.copytree(world["latest"], folder)
    before = (folder / "state.json").read_text()
    state = json.loads(before)
    weights = checkpoint.load_checkpoint(folder).weights

    def full_disk(tensors, path):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device"):
        checkpoint.save_checkpoint(folder, weights, {}, checkpoint.CheckpointState.model_validate({**state, "step": 99}),
                                   folder / "tokenizer.json")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["latest"], "no .tmp folder is left"
    assert (folder / "state.json").read_text() == before
    (folder.parent / "latest.abc.tmp").mkdir()  # what a kill -9 mid-write leaves
    RunLock(folder.parent).release()
    assert not (folder.parent / "latest.abc.tmp").exists()


@pytest.mark.slow
def test_a_file_where_the_checkpoints_folder_should_be_is_refused_before_training(world, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    assets = tmp_path / "assets"
    shutil.copytree(world["root"] / "assets" / "tokens", assets / "tokens")
    shutil.copytree(world["root"] / "assets" / "tokenizers", assets / "tokenizers")
    (assets / "checkpoints").write_text("a file, not a folder\n")
    code, out, err = run(["train", "--config", world["config"], f"--data.assets_dir={assets}",
                          "--experiment_name=blocked"], capsys)
    assert code == 2 and "cannot write checkpoints in" in err and "Traceback" not in err, err[-2000:]
    assert "step 1" not in out + err


@pytest.mark.slow
def test_evaluate_writes_only_under_this_projects_assets_whatever_the_checkpoint_says(world, tmp_path, capsys,
                                                                                        monkeypatch):
    """A checkpoint's state.json names its data and an assets folder; evaluate re-reads the data with the model's
    own tokenizer, and writes under the configured assets folder (./assets), never where the file says."""
    monkeypatch.chdir(tmp_path)
    folder = _corrupt_copy(world, "elsewhere", lambda s: s["experiment"]["data"].update(
        assets_dir=str(tmp_path / "elsewhere")))
    code, out, err = run(["evaluate", "--model", folder, "--log=False"], capsys)
    assert code == 0, err[-2000:]
    assert "loss" in out and not (tmp_path / "elsewhere").exists() and (tmp_path / "assets" / "tokens").is_dir()
    assert not (tmp_path / "assets" / "tokenizers").exists(), "no tokenizer was trained: the model's own is used"
    bare = _corrupt_copy(world, "no-experiment", lambda s: s.pop("experiment"))
    code, _, err = run(["evaluate", "--model", bare, "--log=False"], capsys)
    assert code == 2 and "no experiment.data" in err and "--text-file" in err and "Traceback" not in err, err


def test_a_latest_marker_never_leads_outside_the_experiments_folder(tmp_path):
    from conftest import tiny
    from jobs.errors import CheckpointError
    from jobs.training.run_folders import checkpoint_root, checkpoint_to_resume

    cfg = tiny(tmp_path)
    checkpoint_root(cfg).mkdir(parents=True)
    (checkpoint_root(cfg) / "LATEST").write_text("../../../../elsewhere\n")
    with pytest.raises(CheckpointError, match="does not hold a run folder's name"):
        checkpoint_to_resume(cfg, "auto")


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
