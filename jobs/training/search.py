"""A sweep's search space: read from YAML, checked whole before any trial runs, sampled by Optuna.

    # space.yaml: each key a dotted config key (as on the command line), each value a range or a list of choices
    training.learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}    # floats, sampled on a log scale
    training.muon_learning_rate: {low: 0.005, high: 0.05, log: true}
    training.batch_size: {low: 16, high: 64, step: 16}                 # integers when low and high are
    training.optimizer: [adamw, muon]                                  # one of these
    model.d_model: [96, 128]

A key the config does not have, an empty range (low >= high), a log range that reaches zero or below, a step that
does not fit the range, an empty list, or a value the config refuses at a corner of the space (each range's low
and high, each choice) is a one-line error naming the space file and the key, before any trial trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.config import apply_overrides, read_yaml, validate_config
from model_zoo.errors import ConfigError

RANGE_KEYS = {"low", "high", "log", "step"}
MAX_DIMENSIONS = 32  # a handful of settings is a search; hundreds is a mistake


@dataclass(frozen=True)
class Dimension:
    """One setting searched: a range (low, high, log, step) or choices."""

    key: str  # dotted config key
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def corners(self) -> list[Any]:
        """The values to check the config with before any trial: each end of a range, each choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether the space holds this value (the config's own, for the baseline trial)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        return self.step is None or abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9

    def suggest(self, trial) -> Any:
        """This dimension's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> dict[str, Any]:
        """As written in the space (for the sweep's MLflow params and its fingerprint)."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


def read_space(path: str | Path) -> list[Dimension]:
    """The space file's dimensions, each checked on its own (read_yaml reads it safely: UTF-8, no aliases)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--space {path}: not found" if not path.exists() else f"--space {path}: not a file")
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a space is a mapping of dotted config keys to ranges or lists of choices "
                          f"(e.g. training.learning_rate: {{low: 1.0e-3, high: 1.0e-2, log: true}})")
    if len(raw) > MAX_DIMENSIONS:
        raise ConfigError(f"{path}: {len(raw)} keys; a space searches at most {MAX_DIMENSIONS}")
    return [_dimension(path, str(key), value) for key, value in raw.items()]


def _dimension(path: Path, key: str, value: Any) -> Dimension:
    where = f"{path}: {key}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: an empty list of choices")
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
            raise ConfigError(f"{where}: choices must be plain values (text, numbers, true/false, null)")
        if len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{where}: a choice is listed twice")
        return Dimension(key, choices=tuple(value))
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: a range ({{low: .., high: ..}}) or a list of choices, not {value!r:.60}")
    unknown = set(value) - RANGE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown range key {sorted(unknown)[0]!r} (a range has {sorted(RANGE_KEYS)})")
    if "low" not in value or "high" not in value:
        raise ConfigError(f"{where}: a range needs both low and high")
    low, high, step, log = value["low"], value["high"], value.get("step"), value.get("log", False)
    for name, number in (("low", low), ("high", high), ("step", step)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))
                                   or not math.isfinite(number)):
            raise ConfigError(f"{where}: {name} must be a finite number (got {number!r:.40})")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if low >= high:
        raise ConfigError(f"{where}: an empty range (low {low} is not below high {high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range must stay above zero (low is {low}); use a linear range or a "
                          f"positive low")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: a range is either log or stepped, not both")
        if step <= 0 or step > high - low:
            raise ConfigError(f"{where}: step {step} must be above zero and at most high - low ({high - low})")
    return Dimension(key, low, high, log, step)


def check_space(space: list[Dimension], base: dict[str, Any], fixed: dict[str, Any], path: str | Path) -> None:
    """Every corner of the space gives a config the schema accepts (unknown keys, out-of-range values, a
    min_learning_rate above a sampled learning_rate at its low end...), each checked with the others at their
    first corner; the error names the space file and the value."""
    first = {d.key: d.corners()[0] for d in space}
    for dimension in space:
        for value in dimension.corners():
            try:
                validate_config(apply_overrides(base, fixed | first | {dimension.key: value}))
            except ConfigError as error:
                raise ConfigError(f"{path}: {dimension.key} = {value!r:.40} gives a config no run could use: "
                                  f"{error}") from None


def sample(trial, space: list[Dimension]) -> dict[str, Any]:
    """The trial's settings, as dotted overrides."""
    return {dimension.key: dimension.suggest(trial) for dimension in space}
