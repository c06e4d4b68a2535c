"""The errors a user causes and can fix. Each is an InputError, raised where the input is checked, with a message
that names the input; `python -m jobs` prints that one line and exits with status 2. Nothing else is caught
there: any other exception is a bug, and keeps its traceback."""

from model_zoo.errors import ConfigError, InputError


class DataError(InputError):
    """Bad data input: a missing file, an empty dataset, a missing text field... The message names it."""


class CheckpointError(InputError):
    """A checkpoint or model reference that cannot be used; the message names it."""


class TrackingError(InputError):
    """The MLflow tracking store named by MLFLOW_TRACKING_URI cannot be used (unreachable, unsupported scheme)."""


def first_problem(error) -> tuple[tuple, str]:
    """(where, what) of a pydantic ValidationError's first problem, as one line: pydantic's message, the offending
    value quoted (its first 60 characters; not for a missing key or a whole section), and how many more follow.
    The one translation of pydantic's errors, for flags, configs and checkpoint state alike."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and first["type"] != "missing" and not isinstance(first["input"], dict):
        message += f" (got {repr(first['input'])[:60]})"
    if error.error_count() > 1:
        message += f" (and {error.error_count() - 1} more)"
    return tuple(first["loc"]), message


def exit_on_input_error(main, *args, **kwargs):
    """Run a command-line entry point; an InputError becomes its one line on stderr and exit status 2."""
    import sys

    try:
        return main(*args, **kwargs)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = ["CheckpointError", "ConfigError", "DataError", "InputError", "TrackingError", "exit_on_input_error",
           "first_problem"]
