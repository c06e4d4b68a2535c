"""Text from a loaded model (jobs/checkpoint.py: load_model), as `generate` and `chat` stream it."""

from __future__ import annotations

import torch

from jobs.checkpoint import LoadedModel
from jobs.errors import InputError


def complete(loaded: LoadedModel, prompt: str, max_length: int = 100, temperature: float = 0.8,
             top_k: int | None = 50, top_p: float | None = None, seed: int | None = None):
    """Yield the text pieces of a completion as tokens arrive (decoded incrementally, so UTF-8 stays whole)."""
    yield from stream_text(loaded, encode_prompt(loaded.tokenizer, prompt), max_length, temperature, top_k, top_p, seed)


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A prompt's token ids; an empty prompt starts from <|endoftext|> (an InputError if the tokenizer has none)."""
    prompt_ids = tokenizer.encode(prompt) or ([tokenizer.eot_id] if tokenizer.eot_id is not None else [])
    if not prompt_ids:
        raise InputError("the prompt is empty and the tokenizer has no end-of-text token to start from")
    return prompt_ids


def stream_text(loaded: LoadedModel, prompt_ids: list[int], max_length: int = 100, temperature: float = 0.8,
                top_k: int | None = 50, top_p: float | None = None, seed: int | None = None):
    """The text pieces generated after prompt_ids, until max_length tokens, <|endoftext|> or <|end|>."""
    from model_zoo.generation import generate_tokens

    tokenizer, stops = loaded.tokenizer, loaded.stop_ids
    ids: list[int] = []
    emitted = ""
    with torch.inference_mode():
        for token in generate_tokens(loaded.model, prompt_ids, max_new_tokens=max_length, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed, stop_ids=stops):
            if token in stops:
                break
            ids.append(token)
            text = tokenizer.decode(ids)
            if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the next token
                continue
            yield text[len(emitted):]
            emitted = text
