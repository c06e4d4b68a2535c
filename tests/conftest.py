import functools
import json
import shutil
import inspect
import os
import signal
import time
from pathlib import Path

import pytest

# Tests never touch the network: the Hugging Face libraries answer from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def job_logs_on_stderr():
    """The jobs' log lines go where the command line sends them (standard error), also when a test calls a job's
    function directly, so a test reads them as a user sees them."""
    from jobs.__main__ import show_job_logs

    show_job_logs()


SHARED_TINYSTORIES = REPO.parent / "shared" / "data" / "tinystories"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh embedded MLflow store (sqlite) for each test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


SENT_BY_TESTS = {"SIGTERM": 0}  # signals a test sends itself on purpose (signal_during_step)


def stop_the_session(signum, frame):
    """SIGTERM to the test process (CI cancelling, `timeout`): pytest stops, even when a test trains in-process at
    that moment (the trainer calls this handler after saving its checkpoint). A signal a test sent itself is not
    the runner's."""
    if SENT_BY_TESTS["SIGTERM"]:
        SENT_BY_TESTS["SIGTERM"] -= 1
        return
    raise KeyboardInterrupt("SIGTERM")


@pytest.fixture(autouse=True, scope="session")
def sigterm_stops_pytest():
    previous = signal.signal(signal.SIGTERM, stop_the_session)
    yield
    signal.signal(signal.SIGTERM, previous)


def signal_during_step(n: int, signum: int = signal.SIGTERM, then=None):
    """A step hook (run_training's step_hook, the trainer's seam) that sends a real signal to this process during
    training step n (as an eviction or Ctrl-C would), so a run stops the way it does in production: the job's
    handler notes it, saves a checkpoint and ends the run. `then`: another hook the steps go through."""

    def hook(step_number, step):
        if step_number == n:
            if signum == signal.SIGTERM:
                SENT_BY_TESTS["SIGTERM"] += 1
            os.kill(os.getpid(), signum)
        return step() if then is None else then(step_number, step)
    return hook


def slow_step(step_number, step):
    """A step hook: steps take at least 0.1 s, so a time budget of a second or two holds a known few."""
    time.sleep(0.1)
    return step()


def dry_run(argv: list[str]) -> dict:
    """Run a command line through `python -m jobs`'s own path (jobs/cli.py: read, bind, check), with the job's body
    swapped for a stand-in that loads the config it names with its overrides and stops there. Returns the arguments
    the job would have got; a bad flag raises an InputError, a bad config a ConfigError. How the compose and
    Kubernetes commands are checked without running them."""
    import jobs.__main__
    from jobs import cli
    from jobs.config import load_config

    received = {}
    job = jobs.__main__.job_function(argv[0])

    @functools.wraps(job)
    def load_only(*args, **kwargs):
        arguments = inspect.signature(job).bind(*args, **kwargs).arguments
        overrides = arguments.pop("overrides", {})  # the jobs' **overrides: config keys
        received.update(arguments, job=job.__name__)
        if arguments.get("config") or overrides:
            received["loaded"] = load_config(arguments.get("config"), overrides)

    cli.run(argv[0], load_only, list(argv[1:]))
    return received


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for the servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tinystories() -> Path:
    """The real TinyStories text beside the checkout (../shared/data); CI always has it, a user's clone may not."""
    if not (SHARED_TINYSTORIES / "train.txt").is_file():
        pytest.skip(f"real TinyStories text not found at {SHARED_TINYSTORIES} (only CI and dev machines have ../shared)")
    return SHARED_TINYSTORIES


def write_stories(folder: Path, n: int = 60, separator: str | None = "<|endoftext|>", seed: int = 0) -> Path:
    """A small made-up corpus in TinyStories' layout, for tests that must run without ../shared."""
    import random

    rng = random.Random(seed)
    names, things = ["Tim", "Lily", "Sam", "Mia", "Ben"], ["ball", "cat", "tree", "cake", "boat", "kite"]
    stories = []
    for _ in range(n):
        name, thing = rng.choice(names), rng.choice(things)
        stories.append(
            f"Once upon a time, {name} had a {thing}. {name} liked the {thing} very much.\n"
            f"One day the {thing} was lost. {name} was sad. Then {name} found it and smiled. The end."
        )
    sep = f"\n{separator}\n" if separator else "\n\n"
    path = folder / f"stories-{seed}.txt"
    path.write_text(sep.join(stories) + "\n")
    return path


def tiny(tmp_path, model_type="torch", model=None, **training):
    """A validated ExperimentConfig that trains in seconds on stories made here (no ../shared needed)."""
    from jobs.config import validate_config

    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    path = write_stories(corpus, n=200)
    values = {
        "experiment_name": f"tiny_{model_type}",
        "data": {"dataset": "local", "train_files": [str(path)], "vocab_size": 300, "assets_dir": str(tmp_path / "assets")},
        "model": {"d_model": 32, "n_heads": 2, "n_blocks": 2, "d_ffn": 64, "max_seq_len": 32, **(model or {})},
        "training": {"model_type": model_type, "batch_size": 4, "max_steps": 12, "learning_rate": 3e-3,
                     "min_learning_rate": 3e-4, "warmup_ratio": 0.1, "eval_every": 6, "eval_batches": 2,
                     "checkpoint_every": 4, "sample_length": 8, "device": "cpu", **training},
    }
    return validate_config(values)




# Tiny models of both architectures, for tests that need a checkpoint but not a trained one.
ARCHITECTURES = {
    "gpt2": {"d_model": 64, "n_heads": 4, "n_blocks": 2, "d_ffn": 256, "max_seq_len": 64},
    "llama": {"architecture": "llama", "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "n_blocks": 2, "d_ffn": 96,
              "max_seq_len": 64},
}


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory):
    from jobs.data.tokenizer import save_tokenizer, train_bpe

    folder = tmp_path_factory.mktemp("tokenizer")
    stories = write_stories(folder, n=200).read_text().split("<|endoftext|>")
    save_tokenizer(train_bpe(stories, 300, show_progress=False), folder, "test")
    return folder


def make_checkpoint(folder, tokenizer_folder, architecture="gpt2", model_type="torch", chat=True, vocab_size=None,
                    **model):
    """A checkpoint folder as training writes it, with seeded weights of a tiny model (ARCHITECTURES): for tests of
    what reads checkpoints (export, serving), where training is not the point."""
    import torch

    from jobs.checkpoint import CheckpointState, save_checkpoint
    from jobs.data.tokenizer import load_tokenizer
    from model_zoo.build import build_model
    from model_zoo.config import ModelConfig

    tokenizer = load_tokenizer(tokenizer_folder)
    config = ModelConfig.from_dict({**ARCHITECTURES[architecture], "vocab_size": vocab_size or tokenizer.vocab_size,
                                    **model})
    torch.manual_seed(0)
    model = build_model(config, model_type)
    state = CheckpointState(step=1, model_type=model_type, model_config=config.to_dict(),
                            experiment={"model_name": "tiny", "chat": {"base": "x"} if chat else None},
                            tokenizer_sha256=tokenizer.sha256, eot_id=tokenizer.eot_id)
    return save_checkpoint(folder, model.state_dict(), {}, state, tokenizer_folder / "tokenizer.json")


# A small Zorro suite (grammar minimal pairs, bad then good), for tests that score one without ../shared.
ZORRO_PAIRS = [("the dogs is big .", "the dog is big ."), ("a cats ran .", "a cat ran ."),
               ("she see him .", "she sees him ."), ("he have a ball .", "he has a ball .")]


def write_zorro(folder, paradigms=None):
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in (paradigms or {"agreement-det_noun": ZORRO_PAIRS[:2], "agreement-subj_verb": ZORRO_PAIRS[2:],
                                      "island-effects-adjunct": ZORRO_PAIRS[:1]}).items():
        (folder / f"{name}.txt").write_text("".join(f"{bad}\n{good}\n" for bad, good in pairs))
    (folder / "LICENSE").write_text("MIT\n")  # documentation is skipped
    return folder


# --- bad input: a command line, the exit status it ends with, and its one error line -----------------------------
# Each test file holds the cases of the module that checks them (tests/jobs/test_cli.py the flags,
# tests/jobs/test_config.py the configs, ...); they share these helpers and the two fixtures below.

def run_job(argv: list, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m jobs ARGV`, run in this process through the real entry point."""
    from jobs.__main__ import main

    try:
        main([str(a) for a in argv])
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    out = capsys.readouterr()
    return status, out.out, out.err


def assert_refused(argv: list, capsys, words: list[str], status: int = 2) -> str:
    """The command line ends with `status` and exactly one `error:` line, holding every one of `words`, and no
    traceback. Returns standard error."""
    code, out, err = run_job(argv, capsys)
    assert code == status, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return err


def fill(template: list, files: dict) -> list[str]:
    """A command template with {config}, {best}, {root}... replaced by the fixture's paths."""
    return [str(part).format(**{k: v for k, v in files.items() if isinstance(v, (str, Path))}) for part in template]


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory):
    """A tiny experiment's config and the odd files bad-input cases name (nothing trained: seconds to make)."""
    import yaml

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
    return {"root": root, "config": config_file, "stories": stories, "nope": root / "nope"}


@pytest.fixture(scope="session")
def trained_world(bad_files):
    """bad_files' experiment trained for 6 steps (a registered model, its run folder, its store), for the cases that
    need a real checkpoint. The cases only read it, or copy it first."""
    import subprocess
    import sys

    root = bad_files["root"]
    store = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "jobs", "train", "--config", str(bad_files["config"])], env=env,
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_folder,) = (root / "assets" / "checkpoints" / "tiny_bad" / "torch").glob("torch-*")
    return {**bad_files, "store": store, "env": env, "best": run_folder / "best", "latest": run_folder / "latest"}


@pytest.fixture
def in_trained_world(trained_world, monkeypatch) -> dict:
    """trained_world, with its tracking store named and its folder the working folder (as a user in it would be)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_world["store"])
    monkeypatch.chdir(trained_world["root"])
    return trained_world


def corrupt_copy(world: dict, name: str, change) -> Path:
    """A copy of the trained world's latest checkpoint whose state.json `change` has edited."""
    folder = world["root"] / "corrupt" / name
    shutil.copytree(world["latest"], folder)
    state = json.loads((folder / "state.json").read_text())
    change(state)
    (folder / "state.json").write_text(json.dumps(state))
    return folder
