"""The command line of every job, one path: `python -m jobs <job> ARGS` becomes a call of the job's function.

A job is a plain function; its parameters are its flags (`max_length` is `--max-length`), their annotations say
what each accepts (types, bounds such as `Field(ge=0)`, finite numbers, choices), and `**overrides`, where a job
has it, takes config keys (`--training.learning_rate=3e-4`). `run` takes a command line through four steps:

1. read: every word is checked against the function's signature before anything runs: a flag the job does not
   have (with a near name), a flag with no value, a stray word, a required flag missing. A flag typed as a list
   (serve's `--model`) may repeat; its values are gathered into one.
2. bind: fire binds the words to the parameters, reading literals as Python does (`3`, `1e-4`, `None`, `[a, b]`).
3. check: pydantic's validate_call checks each value against its annotation; one that does not fit becomes an
   InputError naming the flag (`--top-k: Input should be greater than or equal to 0 (got -5)`).
4. the job runs.

Any InputError on the way is one line and exit status 2 (jobs/errors.py); nothing else is caught.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError, validate_call

from jobs.errors import InputError, first_problem

# Reused flag types: what generation, evaluation and serving accept.
Positive = Annotated[int, Field(gt=0)]
TopK = Annotated[int, Field(ge=0)]  # 0: off
Temperature = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # 0: greedy
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**64 - 1)]  # torch's generators take unsigned 64-bit seeds
Device = Literal["auto", "cpu", "cuda"]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: one the system picks

# Words without a flag that a job takes, in order ("*": any number). Any other bare word is a mistake: with fire
# alone, `generate --prompt Once upon` would bind "upon" to the next parameter and run.
POSITIONAL = {"prepare-data": ["step"], "compare": "*", "generate": ["prompt"]}


def run(job: str, function, args: list[str]):
    """Run `job` (its name on the command line) as `function` with the command-line words `args`."""
    import fire

    fire_args = read(job, function, args)  # 1
    return fire.Fire({job: typed(function)}, command=[job, *fire_args], name="python -m jobs")  # 2, 3, 4


# --- 1. read ----------------------------------------------------------------------------------------------------

def read(job: str, function, args: list[str]) -> list[str]:
    """The words fire should bind, once every one has been checked (fire alone reports leftovers only after the job
    has run, and makes a bare `--flag` True, which a number flag reads as 1). Raises an InputError naming the first
    problem."""
    parameters = inspect.signature(inspect.unwrap(function)).parameters
    takes_config_keys = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    repeatable = {name for name in named if _is_list(parameters[name])}
    given, words, kept, gathered, i = set(), [], [], {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            words.append(arg)
            kept.append(arg)
            i += 1
            continue
        name, has_value, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key.startswith("no") and key[2:] in named and _is_bool(parameters[key[2:]]) and not has_value:
            given.add(key[2:])  # fire's --nojson
            kept.append(arg)
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
            width = 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            width, value = 2, args[i + 1]  # the next word is its value
        elif key in named and _is_bool(parameters[key]):
            width = 1  # a bare switch: True
        else:
            raise InputError(f"--{name[:40]} needs a value (--{name[:40]}=VALUE)")
        if key in repeatable:
            gathered.setdefault(key, []).append(value)
        else:
            kept.extend(args[i:i + width])
        i += width
    given |= _check_words(job, words, given)
    for name, p in parameters.items():
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and name not in given:
            raise InputError(f"{job} needs --{name.replace('_', '-')}")
    # fire reads `--model=['a', 'b']` as a list of text, whatever the words hold (colons, slashes, quotes)
    return kept + [f"--{key}={values!r}" for key, values in gathered.items()]


def _check_words(job: str, words: list[str], given: set[str]) -> set[str]:
    """The parameters the bare words fill, in order; a word with no parameter left to fill is an InputError."""
    slots = POSITIONAL.get(job, [])
    if slots == "*":
        return set()
    free = [slot for slot in slots if slot not in given]
    if len(words) > len(free):
        stray = words[len(free)]
        raise InputError(f"stray word {stray[:40]!r} on the command line: quote a value that has spaces "
                         f"(--prompt \"Once upon a time\")" if job == "generate" else
                         f"stray word {stray[:40]!r} on the command line (values follow their --flag)")
    return set(free[:len(words)])


def _is_bool(parameter: inspect.Parameter) -> bool:
    return "bool" in str(parameter.annotation)


def _is_list(parameter: inspect.Parameter) -> bool:
    return str(parameter.annotation).startswith("list[")


def _top_level_config_keys() -> set[str]:
    """The experiment config's own keys (experiment_name, ...) and sections, which overrides may set by name."""
    from jobs.config import ExperimentConfig

    return set(ExperimentConfig.model_fields)


# --- 3. check ---------------------------------------------------------------------------------------------------

def typed(job):
    """`job`, with its arguments checked against its annotations first (see the module docstring)."""
    # Validation runs on a stand-in with the job's signature that returns the checked arguments, so that a
    # ValidationError from inside the job itself (a bug) is never mistaken for a bad flag.
    arguments = functools.wraps(job)(lambda *args, **kwargs: (args, kwargs))
    check = validate_call(arguments, config=ConfigDict(coerce_numbers_to_str=True))  # `--prompt 42` is text
    names = list(inspect.signature(job).parameters)

    @functools.wraps(job)
    def checked(*args, **kwargs):
        try:
            args, kwargs = check(*args, **kwargs)
        except ValidationError as error:
            where, message = first_problem(error)
            where = where[0] if where else "?"
            name = names[where] if isinstance(where, int) and where < len(names) else str(where)
            raise InputError(f"--{name.replace('_', '-')}: {message}") from None
        return job(*args, **kwargs)

    return checked
