"""`python -m jobs generate --model REF --prompt TEXT` and `python -m jobs chat --model REF`.

REF: a registry URI (`models:/<name>@champion`), a run URI (`runs:/<id>`) or a checkpoint folder.
Options: --max-length, --temperature, --top-k, --top-p, --seed. In chat, `temp X` and `topk X` change the
settings, `/reset` starts the conversation over, `quit`, `exit` or `q` leaves; tokens are printed as they come.
A model fine-tuned to chat (`finetune`) answers each message with the conversation so far (rendered with the chat
template, the oldest exchanges dropped when it outgrows the context); a base model continues each line.
"""

from __future__ import annotations

import sys

from pydantic import TypeAdapter, ValidationError

from jobs.cli import Device, Positive, Seed, Temperature, TopK, TopP
from jobs.errors import InputError
from jobs.models import load_model
from jobs.serving.loading import complete
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


def generate(prompt: str, model: str | None = None, config: str | None = None, max_length: Positive = 100,
             temperature: Temperature = 0.8, top_k: TopK = 50, top_p: TopP | None = None, seed: Seed | None = None,
             device: Device = "auto") -> None:
    """`python -m jobs generate --model REF --prompt TEXT`: continue a prompt, printing tokens as they come.

    REF: a registry URI (`models:/<name>@champion`), a run URI (`runs:/<id>`) or a checkpoint folder (or --config:
    the champion of that config's model). --max-length N tokens; --temperature T (0: always the likeliest token);
    --top-k K (0: off); --top-p P (nucleus); --seed S (the same text each time); --device auto|cpu|cuda.
    """
    prompt = str(prompt)
    try:  # bytes that are not UTF-8 reach Python as lone surrogates, which no tokenizer can encode
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"--prompt: not UTF-8 text (character {error.start}); give the prompt as UTF-8") from None
    loaded = load_model(_resolve(model, config), device)
    _stream(loaded, prompt, prompt, max_length, temperature, top_k, top_p, seed)


def _stream(loaded, prompt: str, prefix: str, max_length, temperature, top_k, top_p, seed) -> None:
    """Print `prefix`, then the completion of `prompt` piece by piece as tokens arrive."""
    sys.stdout.write(prefix)
    for piece in complete(loaded, prompt, max_length, temperature, top_k or None, top_p, seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def chat(model: str | None = None, config: str | None = None, max_length: Positive = 100, temperature: Temperature = 0.8,
         top_k: TopK = 50, top_p: TopP | None = None, seed: Seed | None = None, device: Device = "auto") -> None:
    """`python -m jobs chat --model REF`: talk to a model in the terminal.

    A model fine-tuned to chat (`finetune`) answers each message, remembering the conversation (the oldest
    exchanges dropped when it outgrows the context); a base model continues each line you type. Type `temp X` or
    `topk X` to change the sampling, `/reset` to start over, `quit` to leave. Flags as for generate.
    """
    ref = _resolve(model, config)
    loaded = load_model(ref, device)
    state = loaded.state
    n_params = count_parameters(loaded.config)
    print(f"Model: {ref} ({state.model_type}, {n_params:,} parameters, step {state.step}, "
          f"best val loss {state.best_val_loss:.4f})")
    if loaded.chat:
        print("A chat model: it answers each message, remembering the conversation (/reset forgets it).")
    else:
        print("A base model (not fine-tuned to chat): each line is a prompt it continues; "
              "see `python -m jobs finetune` to teach it to answer.")
    print("Commands: quit/exit/q to leave, temp X to set the temperature, topk X to set top-k (0: off)")
    print(f"Settings: max_length={max_length}, temperature={temperature}, top_k={top_k}")
    settings = {"temperature": temperature, "top_k": top_k}
    conversation = Conversation(loaded, max_length)
    while (line := _read_line()) is not None:
        command = line.strip()
        if command.lower() in ("quit", "exit", "q"):
            break
        if not command:
            continue
        if command.lower() == "/reset":
            conversation.reset()
            print("(the conversation starts over)")
            continue
        word, _, value = command.partition(" ")
        if word.lower() in SETTINGS:
            _change_setting(settings, word.lower(), value)
            continue
        if loaded.chat:
            conversation.reply(line, settings["temperature"], settings["top_k"], top_p, seed)
        else:
            _stream(loaded, line, f"Model: {line}", max_length, settings["temperature"], settings["top_k"], top_p, seed)


def _read_line() -> str | None:
    try:
        line = input("You: ")
    except EOFError:
        print()
        return None
    except UnicodeDecodeError as error:
        raise InputError(f"stdin: not UTF-8 text ({error.object[error.start:error.start + 4]!r})") from None
    try:  # where Python reads stdin with surrogateescape, undecodable bytes arrive as lone surrogates
        line.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"stdin: not UTF-8 text (character {error.start} of the line)") from None
    return line


def _change_setting(settings: dict, word: str, value: str) -> None:
    setting = SETTINGS[word]
    name = "temperature" if word == "temp" else "top_k"
    try:  # checked before it is applied: a rejected value leaves the setting as it was
        settings[name] = TypeAdapter(setting[0]).validate_python(value.strip())
    except ValidationError as error:
        print(f"'{word}' {setting[1]}, e.g. '{word} {setting[2]}' ({error.errors()[0]['msg']}); "
              f"unchanged: temperature={settings['temperature']}, top_k={settings['top_k']}")
        return
    print(f"Settings: temperature={settings['temperature']}, top_k={settings['top_k']}")


class Conversation:
    """A chat model's conversation: the history, rendered with the chat template for each reply, and trimmed from
    the oldest exchange when it outgrows the context window (leaving room for the reply)."""

    def __init__(self, loaded, max_length: int):
        self.loaded, self.max_length = loaded, max_length
        self.messages: list[dict] = []

    def reset(self) -> None:
        self.messages = []

    def prompt_ids(self) -> list[int] | None:
        from jobs.data import chat_template

        # the prompt may fill the context but a quarter (or max_length, if smaller), kept for the reply to begin in
        room = self.loaded.config.max_seq_len - min(self.max_length, self.loaded.config.max_seq_len // 4)
        while True:
            ids, _ = chat_template.render(self.loaded.tokenizer, self.messages, add_generation_prompt=True)
            if len(ids) <= room:
                return ids
            if len(self.messages) <= 1:
                return None
            self.messages = self.messages[2:]  # forget the oldest exchange (user, then assistant)

    def reply(self, text: str, temperature: float, top_k: int, top_p: float | None, seed: int | None) -> None:
        from jobs.serving.loading import stream_text

        self.messages.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        if ids is None:
            self.messages.pop()
            print(f"(that message is too long for this model's context of {self.loaded.config.max_seq_len} tokens)")
            return
        sys.stdout.write("Model: ")
        pieces = []
        for piece in stream_text(self.loaded, ids, self.max_length, temperature, top_k or None, top_p, seed):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        self.messages.append({"role": "assistant", "content": "".join(pieces) or " "})
