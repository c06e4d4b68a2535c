"""The errors a user causes and can fix: the command line prints them as one line, without a traceback."""

from model_zoo.config import ConfigError
from jobs.data.sources import DataError


class CheckpointError(ValueError):
    """A checkpoint or model reference that cannot be used; the message names it."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError, ConnectionError, ValueError)
