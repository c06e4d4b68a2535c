"""`python -m jobs <job> ...`: the command line of every job, through fire.

Each job is a plain function in its own module; this file only maps names to them. Errors a user can fix
(a bad config, missing data, a wrong checkpoint) print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import os
import sys


def _jobs() -> dict:
    from jobs.evaluate import evaluate
    from jobs.generate import chat, generate
    from jobs.prepare_data import prepare_data
    from jobs.train import train

    return {"prepare-data": prepare_data, "train": train, "evaluate": evaluate, "generate": generate, "chat": chat}


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import fire

    from jobs.errors import USER_ERRORS

    try:
        fire.Fire(_jobs(), command=argv if argv is not None else sys.argv[1:], name="python -m jobs")
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
