"""`python -m jobs generate --model REF --prompt TEXT` and `python -m jobs chat --model REF`.

REF: a registry URI (`models:/<name>@champion`), a run URI (`runs:/<id>`) or a checkpoint folder.
Options: --max-length, --temperature, --top-k, --top-p, --seed. In chat, `temp X` and `topk X` change the
settings, `quit`, `exit` or `q` leaves; tokens are printed as they come.
"""

from __future__ import annotations

import sys

from jobs.serving.loading import complete, load_model
from model_zoo.config import count_parameters

DEFAULT_MODEL = "models:/{name}@champion"


def _resolve(model: str | None, config: str | None) -> str:
    if model:
        return model
    if config:
        from jobs.config import load_config

        return DEFAULT_MODEL.format(name=load_config(config).model_name)
    raise ValueError("say which model: --model models:/<name>@champion, runs:/<id> or a checkpoint folder")


def generate(prompt: str, model: str | None = None, config: str | None = None, max_length: int = 100,
             temperature: float = 0.8, top_k: int = 50, top_p: float | None = None, seed: int | None = None,
             device: str = "auto") -> None:
    loaded = load_model(_resolve(model, config), device)
    _stream(loaded, str(prompt), str(prompt), max_length, temperature, top_k, top_p, seed)


def _stream(loaded, prompt: str, prefix: str, max_length, temperature, top_k, top_p, seed) -> None:
    """Print `prefix`, then the completion of `prompt` piece by piece as tokens arrive."""
    sys.stdout.write(prefix)
    for piece in complete(loaded, prompt, max_length, temperature, top_k or None, top_p, seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def chat(model: str | None = None, config: str | None = None, max_length: int = 100, temperature: float = 0.8,
         top_k: int = 50, top_p: float | None = None, seed: int | None = None, device: str = "auto") -> None:
    ref = _resolve(model, config)
    loaded = load_model(ref, device)
    state = loaded.state
    n_params = count_parameters(loaded.runtime.config)
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
        command = line.strip()
        if command.lower() in ("quit", "exit", "q"):
            break
        if not command:
            continue
        word, _, value = command.partition(" ")
        if word.lower() in ("temp", "topk"):
            try:
                if word.lower() == "temp":
                    temperature = float(value)
                    if temperature < 0:
                        raise ValueError
                else:
                    top_k = int(value)
                    if top_k < 0:
                        raise ValueError
                print(f"Settings: temperature={temperature}, top_k={top_k}")
            except ValueError:
                print(f"'{word}' needs a non-negative number, e.g. '{word} {'0.5' if word == 'temp' else '40'}'")
            continue
        _stream(loaded, line, f"Model: {line}", max_length, temperature, top_k, top_p, seed)
