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

from jobs.errors import InputError, first_problem

# Reused flag types: what generation and evaluation accept.
Positive = Annotated[int, Field(gt=0)]
TopK = Annotated[int, Field(ge=0)]  # 0: off
Temperature = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # 0: greedy
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**64 - 1)]  # torch's generators take unsigned 64-bit seeds
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
            where, message = first_problem(error)
            where = where[0] if where else "?"
            name = names[where] if isinstance(where, int) and where < len(names) else str(where)
            raise InputError(f"--{name.replace('_', '-')}: {message}") from None
        return job(*args, **kwargs)

    return run


# --- the whole command line, checked before a job starts ------------------------------------------------------

# Words without a flag that a job takes, in order ("*": any number). Any other bare word is a mistake: with fire
# alone, `generate --prompt Once upon` would bind "upon" to the next parameter and run.
POSITIONAL = {"prepare-data": ["step"], "compare": "*", "generate": ["prompt"]}


def check_command_line(job: str, function, args: list[str]) -> None:
    """Every argument is consumed and typed before the job body starts (fire reports leftovers only after the job
    has run, and makes a bare `--flag` True, which a number flag reads as 1). An InputError names the first
    problem: a flag that needs a value and has none, a flag the job does not have (with a near name when there
    is one), or a stray word."""
    import difflib

    parameters = inspect.signature(inspect.unwrap(function)).parameters
    takes_config_keys = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    given, words, i = set(), [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            words.append(arg)
            i += 1
            continue
        name, has_value, _ = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key.startswith("no") and key[2:] in named and _takes_bool(parameters[key[2:]]) and not has_value:
            given.add(key[2:])  # fire's --nojson
            i += 1
            continue
        if not name:
            raise InputError(f"{arg[:40]!r}: a flag needs a name (--name=value)")
        config_key = takes_config_keys and ("." in name or key in _top_level_config_keys())
        if key not in named and not config_key:  # (a dotted config key is checked when the config loads)
            candidates = sorted(named | (_top_level_config_keys() if takes_config_keys else set()))
            near = difflib.get_close_matches(key, candidates, n=1)
            hint = f" (did you mean --{near[0].replace('_', '-')}?)" if near else ""
            raise InputError(f"{job} has no flag --{name[:40]}{hint}")
        given.add(key)
        if has_value:
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            i += 2  # the next word is its value
        elif key in named and _takes_bool(parameters[key]):
            i += 1  # a bare switch: True
        else:
            raise InputError(f"--{name[:40]} needs a value (--{name[:40]}=VALUE)")
    slots = POSITIONAL.get(job, [])
    if slots != "*":
        free = [slot for slot in slots if slot not in given]
        if len(words) > len(free):
            stray = words[len(free)]
            raise InputError(f"stray word {stray[:40]!r} on the command line: quote a value that has spaces "
                             f"(--prompt \"Once upon a time\")" if job == "generate" else
                             f"stray word {stray[:40]!r} on the command line (values follow their --flag)")


def _takes_bool(parameter: inspect.Parameter) -> bool:
    return "bool" in str(parameter.annotation)


def _top_level_config_keys() -> set[str]:
    """The experiment config's own keys (experiment_name, ...) and sections, which overrides may set by name."""
    from jobs.config import ExperimentConfig

    return set(ExperimentConfig.model_fields)
