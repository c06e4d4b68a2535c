"""`python -m jobs generate --model REF --prompt TEXT` and `python -m jobs chat --model REF`.

REF: a registry URI (`models:/<name>@champion`), a run URI (`runs:/<id>`) or a checkpoint folder.
Options: --max-length, --temperature, --top-k, --top-p, --seed. In chat, `temp X` and `topk X` change the
settings, `quit`, `exit` or `q` leaves; tokens are printed as they come.
"""

from __future__ import annotations

import sys

from pydantic import TypeAdapter, ValidationError

from jobs.cli import Device, Positive, Temperature, TopK, TopP, typed
from jobs.errors import InputError
from jobs.serving.loading import complete, load_model
from model_zoo.config import count_parameters

DEFAULT_MODEL = "models:/{name}@champion"
# chat's commands: the type a value must have, what it needs, an example
SETTINGS = {"temp": (Temperature, "needs a finite number >= 0", "0.5"), "topk": (TopK, "needs a whole number >= 0", "40")}


def _resolve(model: str | None, config: str | None) -> str:
    if model:
        return model
    if config:
        from jobs.config import load_config

        return DEFAULT_MODEL.format(name=load_config(config).model_name)
    raise InputError("say which model: --model models:/<name>@champion, runs:/<id> or a checkpoint folder")


@typed
def generate(prompt: str, model: str | None = None, config: str | None = None, max_length: Positive = 100,
             temperature: Temperature = 0.8, top_k: TopK = 50, top_p: TopP | None = None, seed: int | None = None,
             device: Device = "auto") -> None:
    loaded = load_model(_resolve(model, config), device)
    _stream(loaded, str(prompt), str(prompt), max_length, temperature, top_k, top_p, seed)


def _stream(loaded, prompt: str, prefix: str, max_length, temperature, top_k, top_p, seed) -> None:
    """Print `prefix`, then the completion of `prompt` piece by piece as tokens arrive."""
    sys.stdout.write(prefix)
    for piece in complete(loaded, prompt, max_length, temperature, top_k or None, top_p, seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@typed
def chat(model: str | None = None, config: str | None = None, max_length: Positive = 100, temperature: Temperature = 0.8,
         top_k: TopK = 50, top_p: TopP | None = None, seed: int | None = None, device: Device = "auto") -> None:
    ref = _resolve(model, config)
    loaded = load_model(ref, device)
    state = loaded.state
    n_params = count_parameters(loaded.config)
    print(f"Model: {ref} ({state['model_type']}, {n_params:,} parameters, step {state['step']}, "
          f"best val loss {state.get('best_val_loss', float('nan')):.4f})")
    print("Commands: quit/exit/q to leave, temp X to set the temperature, topk X to set top-k (0: off)")
    print(f"Settings: max_length={max_length}, temperature={temperature}, top_k={top_k}")
    while True:
        try:
            line = input("You: ")
        except EOFError:
            print()
            break
        except UnicodeDecodeError as error:
            raise InputError(f"stdin: not UTF-8 text ({error.object[error.start:error.start + 4]!r})") from None
        try:  # where Python reads stdin with surrogateescape, undecodable bytes arrive as lone surrogates
            line.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InputError(f"stdin: not UTF-8 text (character {error.start} of the line)") from None
        command = line.strip()
        if command.lower() in ("quit", "exit", "q"):
            break
        if not command:
            continue
        word, _, value = command.partition(" ")
        if word.lower() in ("temp", "topk"):
            setting = SETTINGS[word.lower()]
            try:  # checked before it is applied: a rejected value leaves the setting as it was
                checked = TypeAdapter(setting[0]).validate_python(value.strip())
            except ValidationError as error:
                print(f"'{word}' {setting[1]}, e.g. '{word} {setting[2]}' ({error.errors()[0]['msg']}); "
                      f"unchanged: temperature={temperature}, top_k={top_k}")
                continue
            if word.lower() == "temp":
                temperature = checked
            else:
                top_k = checked
            print(f"Settings: temperature={temperature}, top_k={top_k}")
            continue
        _stream(loaded, line, f"Model: {line}", max_length, temperature, top_k, top_p, seed)
