"""`python -m jobs <job> ...`: the command line of every job, through fire.

Each job is a plain function in its own module; this file only maps names to them. Errors a user can fix
(a bad config, missing data, a wrong checkpoint) print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import os
import sys


def _jobs() -> dict:
    from jobs.compare import compare
    from jobs.evaluate import evaluate
    from jobs.finetune import finetune
    from jobs.generate import chat, generate
    from jobs.prepare_data import prepare_data
    from jobs.serve import serve
    from jobs.train import train

    return {"prepare-data": prepare_data, "train": train, "evaluate": evaluate, "generate": generate, "chat": chat,
            "compare": compare, "finetune": finetune, "serve": serve}


ARGPARSE_JOBS = ("serve",)  # jobs whose flags argparse reads (serve's --model repeats, which fire cannot express)


def usage(job: str | None = None) -> str:
    """The job's module docstring (its command line and options), or the list of jobs. Written here because
    fire would read --help as a config override for jobs that take **overrides."""
    import inspect

    jobs = _jobs()
    if job is None:
        lines = ["usage: python -m jobs <job> [--config configs/X.yaml] [--section.key=value ...]", "", "jobs:"]
        for name, function in jobs.items():
            lines.append(f"  {name:<14}{inspect.getdoc(sys.modules[function.__module__]).splitlines()[0]}")
        lines.append("\n`python -m jobs <job> --help` for one job's options.")
        return "\n".join(lines)
    function = jobs[job]
    if job in ARGPARSE_JOBS:
        return inspect.getdoc(sys.modules[function.__module__])
    return f"{inspect.getdoc(sys.modules[function.__module__])}\n\noptions: {job}{inspect.signature(function)}"


def quiet_libraries() -> None:
    """What the jobs print is theirs: MLflow's INFO lines (system metrics started and stopped, signature checks)
    and its "Downloading artifacts" bars (eleven of them before `chat` starts) are hidden; its warnings stay."""
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    quiet_libraries()
    import fire

    import difflib

    from jobs.cli import check_command_line
    from jobs.errors import exit_on_input_error

    argv = list(argv if argv is not None else sys.argv[1:])
    if not argv or argv[0] in ("--help", "-h") or (argv[0] in _jobs() and ("--help" in argv or "-h" in argv)):
        print(usage(argv[0] if argv and argv[0] in _jobs() else None))
        return
    jobs = _jobs()
    if argv[0] not in jobs:
        near = difflib.get_close_matches(argv[0], list(jobs), n=1)
        print(f"error: no job {argv[0][:40]!r}{f' (did you mean {near[0]}?)' if near else ''}; "
              f"jobs: {', '.join(jobs)}", file=sys.stderr)
        sys.exit(2)
    if argv[0] in ARGPARSE_JOBS:
        exit_on_input_error(jobs[argv[0]], argv[1:])
        return
    exit_on_input_error(check_command_line, argv[0], jobs[argv[0]], argv[1:])
    exit_on_input_error(fire.Fire, jobs, command=argv, name="python -m jobs")


if __name__ == "__main__":
    main()
