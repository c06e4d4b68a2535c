"""The errors a user causes and can fix. Each is an InputError, raised where the input is checked, with a message
that names the input; `python -m jobs` prints that one line and exits with status 2. Nothing else is caught
there: any other exception is a bug, and keeps its traceback."""

from model_zoo.config import ConfigError, InputError


class DataError(InputError):
    """Bad data input: a missing file, an empty dataset, a missing text field... The message names it."""


class CheckpointError(InputError):
    """A checkpoint or model reference that cannot be used; the message names it."""


class TrackingError(InputError):
    """The MLflow tracking store named by MLFLOW_TRACKING_URI cannot be used (unreachable, unsupported scheme)."""


def exit_on_input_error(main, *args, **kwargs):
    """Run a command-line entry point; an InputError becomes its one line on stderr and exit status 2."""
    import sys

    try:
        return main(*args, **kwargs)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


__all__ = ["CheckpointError", "ConfigError", "DataError", "InputError", "TrackingError", "exit_on_input_error"]
