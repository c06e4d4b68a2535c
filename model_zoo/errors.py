"""The errors a user causes and can fix, at the bottom of the import graph so every layer can raise them.

InputError is the base: something the user gave is wrong (a config value, a file, a flag, a checkpoint, an HTTP
request). The message names it in one line, and `python -m jobs` prints just that line (exit status 2). Anything
else is a bug and keeps its traceback. The jobs' own kinds (DataError, CheckpointError, TrackingError) are in
jobs/errors.py, beside the code that turns them into that one line.
"""


class InputError(Exception):
    """Something the user gave is wrong; the message names it."""


class ConfigError(InputError):
    """A configuration value is wrong. The message names the key."""
