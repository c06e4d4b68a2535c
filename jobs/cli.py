"""Typed command-line flags: each job's parameters are checked against their annotations before it runs.

fire turns `--top-k abc` into the string 'abc' and `--max-length 2.5` into a float, and hands them on as they
are; pydantic's validate_call checks them against the job function's annotations (types, bounds such as
`Field(ge=0)`, finite numbers, choices), and a value that does not fit becomes one InputError naming the flag.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError, validate_call

from jobs.errors import InputError

# Reused flag types: what generation and evaluation accept.
Positive = Annotated[int, Field(gt=0)]
TopK = Annotated[int, Field(ge=0)]  # 0: off
Temperature = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # 0: greedy
TopP = Annotated[float, Field(gt=0, le=1)]
Device = Literal["auto", "cpu", "cuda"]


def typed(job):
    """Decorate a job function so that its flags are validated (see the module docstring)."""
    # Validation runs on a stand-in with the job's signature that returns the checked arguments, so that a
    # ValidationError from inside the job itself (a bug) is never mistaken for a bad flag.
    arguments = functools.wraps(job)(lambda *args, **kwargs: (args, kwargs))
    check = validate_call(arguments, config=ConfigDict(coerce_numbers_to_str=True))  # `--prompt 42` is text
    names = list(inspect.signature(job).parameters)

    @functools.wraps(job)
    def run(*args, **kwargs):
        try:
            args, kwargs = check(*args, **kwargs)
        except ValidationError as error:
            first = error.errors()[0]
            where = first["loc"][0] if first["loc"] else "?"
            name = names[where] if isinstance(where, int) and where < len(names) else str(where)
            got = f" (got {first['input']!r})" if "input" in first and first["type"] != "missing" else ""
            raise InputError(f"--{name.replace('_', '-')}: {first['msg']}{got}") from None
        return job(*args, **kwargs)

    return run
