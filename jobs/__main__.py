"""`python -m jobs <job> ...`: the command line of every job.

Each job is a plain function in its own module; this file maps names to them, prints the usage, and hands the
rest of the command line to jobs/cli.py, the one path from words to a call. Errors a user can fix
(a bad config, missing data, a wrong checkpoint) print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import logging
import os
import sys


# Each job: its module and function. Modules are imported only when their job runs (or --help shows its
# options): `python -m jobs --help` reads the docstrings from the files, so it needs neither torch nor MLflow.
JOBS = {"prepare-data": ("jobs.prepare_data", "prepare_data"), "train": ("jobs.train", "train"),
        "evaluate": ("jobs.evaluate", "evaluate"), "generate": ("jobs.generate", "generate"),
        "chat": ("jobs.generate", "chat"), "compare": ("jobs.compare", "compare"),
        "finetune": ("jobs.finetune", "finetune"), "serve": ("jobs.serve", "serve"),
        "export": ("jobs.export", "export"), "prefer": ("jobs.prefer", "prefer"), "sweep": ("jobs.sweep", "sweep")}


def job_function(name: str):
    import importlib

    module, function = JOBS[name]
    return getattr(importlib.import_module(module), function)


def _jobs() -> dict:
    """Every job's function (imports every job module: for tests that check each job's flags)."""
    return {name: job_function(name) for name in JOBS}


def _read_job(job: str) -> tuple[str, str | None]:
    """(description, options) of a job, read from its file's source without importing it (the modules import
    torch and MLflow, seconds of work that --help does not need): the job function's docstring, else the
    module's, and the function's parameters as written."""
    import ast
    from pathlib import Path

    module, function = JOBS[job]
    path = Path(__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    doc = (node and ast.get_docstring(node)) or ast.get_docstring(tree) or ""
    options = ast.unparse(node.args) if node is not None else None
    return doc, options


def usage(job: str | None = None) -> str:
    """The job's description (its docstring) and options (its parameters as written), or the list of jobs. Written
    here because fire would read --help as a config override for jobs that take **overrides."""
    if job is None:
        lines = ["usage: python -m jobs <job> [--config configs/X.yaml] [--section.key=value ...]", "", "jobs:"]
        for name in JOBS:
            lines.append(f"  {name:<14}{_read_job(name)[0].splitlines()[0]}")
        lines.append("\n`python -m jobs <job> --help` for one job's options.")
        return "\n".join(lines)
    doc, options = _read_job(job)
    return f"{doc}\n\noptions: {job}({options})"


def quiet_libraries() -> None:
    """What the jobs print is theirs: MLflow's INFO lines (system metrics started and stopped, signature checks)
    and its "Downloading artifacts" bars (eleven of them before `chat` starts) are hidden; its warnings stay."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when MLflow configures its loggers, on import
    logging.getLogger("mlflow").setLevel(logging.WARNING)


class TerminalHandler(logging.Handler):
    """The jobs' own log lines, as plain lines on standard error (whatever sys.stderr is when one is written),
    above any progress bar (tqdm.write moves the bar down). Standard output is for a command's results."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def show_job_logs() -> None:
    """Library code under jobs/ logs (logging.getLogger(__name__)); the command line shows INFO and up."""
    logger = logging.getLogger("jobs")
    if not any(isinstance(h, TerminalHandler) for h in logger.handlers):
        logger.addHandler(TerminalHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    quiet_libraries()
    show_job_logs()
    import difflib

    from jobs import cli
    from jobs.errors import exit_on_input_error

    argv = list(argv if argv is not None else sys.argv[1:])
    if not argv or argv[0] in ("--help", "-h") or (argv[0] in JOBS and ("--help" in argv or "-h" in argv)):
        print(usage(argv[0] if argv and argv[0] in JOBS else None))
        return
    if argv[0] not in JOBS:
        near = difflib.get_close_matches(argv[0], list(JOBS), n=1)
        print(f"error: no job {argv[0][:40]!r}{f' (did you mean {near[0]}?)' if near else ''}; "
              f"jobs: {', '.join(JOBS)}", file=sys.stderr)
        sys.exit(2)
    try:
        exit_on_input_error(cli.run, argv[0], job_function(argv[0]), argv[1:])
    except BrokenPipeError:  # `generate ... | head -c 20`: the reader has gone; stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout at exit
        sys.exit(0)


if __name__ == "__main__":
    main()
