import functools
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
    """Run a command line through `python -m jobs`'s own parsing (fire, then each job's typed flags), with every
    job's body swapped for a stand-in that loads the config it names with its overrides and stops there.
    Returns the arguments the job would have got; a bad flag raises (fire exits with status 2), a bad config
    raises ConfigError. How the compose and Kubernetes commands are checked without running them."""
    import fire

    import jobs.__main__
    from jobs.cli import typed
    from jobs.config import load_config

    received = {}

    def stand_in(job):
        def load_only(*args, **kwargs):
            arguments = inspect.signature(job).bind(*args, **kwargs).arguments
            overrides = arguments.pop("overrides", {})  # the jobs' **overrides: config keys
            received.update(arguments, job=job.__name__)
            if arguments.get("config") or overrides:
                received["loaded"] = load_config(arguments.get("config"), overrides)
        return typed(functools.wraps(job)(load_only))

    if argv[0] in jobs.__main__.ARGPARSE_JOBS:  # jobs that read their flags with argparse (serve)
        import importlib

        module = importlib.import_module(f"jobs.{argv[0].replace('-', '_')}")
        return vars(module.parser().parse_args(list(argv[1:]))) | {"job": argv[0].replace("-", "_")}
    real_jobs = jobs.__main__._jobs()
    stand_ins = {name: stand_in(inspect.unwrap(job)) for name, job in real_jobs.items()}
    fire.Fire(stand_ins, command=list(argv), name="python -m jobs")
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


def make_checkpoint(folder, tokenizer_folder, architecture="gpt2", model_type="torch", chat=True, vocab_size=None):
    """A checkpoint folder as training writes it, with seeded weights of a tiny model (ARCHITECTURES): for tests of
    what reads checkpoints (export, serving), where training is not the point."""
    import torch

    from jobs.checkpoint import CheckpointState, save_checkpoint
    from jobs.data.tokenizer import load_tokenizer
    from model_zoo.build import build_model
    from model_zoo.config import ModelConfig

    tokenizer = load_tokenizer(tokenizer_folder)
    config = ModelConfig.from_dict({**ARCHITECTURES[architecture], "vocab_size": vocab_size or tokenizer.vocab_size})
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
