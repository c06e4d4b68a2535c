"""The command line (jobs/cli.py, jobs/__main__.py): every word is read against the job's signature and every value
checked against its annotation before the job starts. Each case names a checkpoint folder that does not exist, so a
flag checked late would end in "checkpoint not found" instead of the words the case expects."""

import pytest

from conftest import assert_refused, dry_run, fill
from jobs import cli
from jobs.errors import InputError

# (command, words the one error line holds)
CASES = [
    # reading: names, values, stray words, what is required
    (["trian", "--config", "{config}"], ["no job 'trian'", "did you mean train?"]),
    (["train", "--config", "{config}", "--training.learning_rate"], ["--training.learning_rate needs a value"]),
    (["train", "--config", "{config}", "--=5"], ["a flag needs a name"]),
    (["train", "--config", "{config}", "--modle-type", "custom"], ["no flag --modle-type", "--model-type?"]),
    (["generate", "--model", "{nope}", "--prompt", "Once", "upon"], ["stray word 'upon'", "quote a value"]),
    (["generate", "--model", "{nope}", "--promt", "x"], ["no flag --promt", "did you mean --prompt?"]),
    (["generate", "--model", "{nope}"], ["generate needs --prompt"]),
    (["prepare-data", "all", "extra", "--config", "{config}"], ["stray word 'extra'"]),
    (["export", "--model", "{nope}", "--out", "x"], ["export needs --format"]),
    (["serve", "--port", "8000"], ["serve needs --model"]),
    # checking: each value against its annotation
    (["train", "--config", "{config}", "--model-type", "jax"], ["--model-type", "'torch' or 'custom'"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--top-k", "abc"], ["--top-k", "valid integer"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--top-k", "-5"], ["--top-k", "greater than or equal to 0"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--temperature", "abc"], ["--temperature", "valid number"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--temperature", "nan"], ["--temperature", "finite"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--max-length", "2.5"], ["--max-length", "fractional"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--device", "tpu"], ["--device", "'auto', 'cpu' or 'cuda'"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--seed", str(2**64)], ["--seed", "less than or equal to"]),
    (["generate", "--model", "{nope}", "--prompt", "x", "--seed", "-1"], ["--seed", "greater than or equal to 0"]),
    (["evaluate", "--model", "{nope}", "--batch-size", "0", "--log=False"], ["--batch-size", "greater than 0"]),
    (["evaluate", "--model", "{nope}", "--max-batches", "0", "--log=False"], ["--max-batches", "greater than 0"]),
    (["serve", "--model", "{nope}", "--port", "70000"], ["--port", "less than or equal to 65535"]),
    (["serve", "--model", "{nope}", "--max-batch", "0"], ["--max-batch", "greater than or equal to 1"]),
    (["serve", "--model", "{nope}", "--threads", "2000"], ["--threads", "less than or equal to 1024"]),
    (["serve", "--model", "{nope}", "--device", "tpu"], ["--device"]),
    # checked by the job first thing, before any model loads
    (["generate", "--model", "{nope}", "--prompt", "Once \udcff upon"], ["--prompt", "not UTF-8"]),
    (["serve", "--model", "{nope}", "--api-key", "short"], ["--api-key", "at least 8 printable characters"]),
    (["serve", "--model", "{nope}", "--model", "{nope}"], ["--model: the same model is named twice"]),
    (["prepare-data", "bogus", "--config", "{config}"], ["unknown prepare-data step 'bogus'"]),
]


@pytest.mark.parametrize("template, words", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_a_bad_command_line_is_one_clear_line_before_any_work(bad_files, template, words, capsys):
    assert_refused(fill(template, bad_files), capsys, words)


def test_a_list_flag_gathers_every_occurrence_and_others_pass_as_written():
    def serve(model: list[str], port: int = 8000, allowed_host: list[str] | None = None):
        ...

    words = cli.read("serve", serve, ["--model", "models:/a@champion", "--port=9", "--model=runs:/b c'd"])
    assert words == ["--port=9", "--model=['models:/a@champion', \"runs:/b c'd\"]"]


def test_serve_binds_repeated_models_as_a_list_through_the_real_path():
    received = dry_run(["serve", "--model", "models:/a@champion", "--model", "runs:/b", "--port", "0",
                        "--allowed-host", "serve"])
    assert received["model"] == ["models:/a@champion", "runs:/b"] and received["port"] == 0
    assert received["allowed_host"] == ["serve"]


def test_a_bug_inside_a_job_is_not_reported_as_a_bad_flag():
    """validate_call checks the arguments on a stand-in: a ValidationError the job itself raises keeps its type."""
    from pydantic import BaseModel, ValidationError

    class Inner(BaseModel):
        n: int

    def job(n: int = 1):
        Inner(n="not a number")

    with pytest.raises(ValidationError):
        cli.run("job", job, ["--n", "2"])
    with pytest.raises(InputError, match="--n: Input should be a valid integer"):
        cli.run("job", job, ["--n", "two"])


def test_help_lists_every_job_and_shows_a_jobs_options(capsys):
    from jobs.__main__ import JOBS, main

    main(["--help"])
    listing = capsys.readouterr().out
    assert all(f"  {name}" in listing for name in JOBS)
    main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "OpenAI-compatible" in text and "options: serve(model: list[str]" in text
