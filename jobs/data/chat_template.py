"""The chat format: how a conversation becomes tokens, and which of them a chat model learns to write.

Every tokenizer the project trains reserves these special tokens beside <|endoftext|>. A conversation is a list
of messages `{"role": "system" | "user" | "assistant", "content": "..."}` (the format of Hugging Face chat
datasets and OpenAI's API), rendered as

    <|system|>You tell stories.<|end|><|user|>Tell me a story about Tom.<|end|><|assistant|>Tom had a dog.<|end|>

The mask marks the tokens a model is trained to produce: the assistant's words and its closing <|end|>, never
the user's. To ask for a reply, the prompt ends with an open <|assistant|> and generation stops at <|end|>.
Message text is encoded with special tokens read as plain text, so a user who types "<|end|>" cannot close a
turn or speak as the assistant.
"""

from __future__ import annotations

from typing import Iterable

from jobs.errors import InputError

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
END_OF_TURN = "<|end|>"
CHAT_TOKENS = [*ROLE_TOKENS.values(), END_OF_TURN]


def supports_chat(tokenizer) -> bool:
    """Whether the tokenizer has the chat tokens (tokenizers made before chat support do not)."""
    return all(tokenizer.tokenizer.token_to_id(token) is not None for token in CHAT_TOKENS)


def require_chat(tokenizer) -> None:
    if not supports_chat(tokenizer):
        raise InputError(f"the tokenizer {tokenizer.path} has no chat tokens ({', '.join(CHAT_TOKENS)}): it was "
                         "made before chat support; prepare the data again (python -m jobs prepare-data) and retrain")


def check_messages(messages: Iterable[dict], where: str = "messages") -> list[dict]:
    """The messages as plain {"role", "content"} dicts (and "weight" where given), or an InputError naming the
    first bad one. An assistant's content may be empty (a model can answer nothing; the history keeps the turn).
    "weight" is OpenAI's fine-tuning field on an assistant message: 0 means shown, not learned from."""
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InputError(f"{where}[{i}]: a message is an object with a 'role' and a 'content'")
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            raise InputError(f"{where}[{i}]: unknown role {role[:20]!r} (one of {', '.join(ROLES)})")
        if not isinstance(content, str) or (role != "assistant" and not content.strip()):
            raise InputError(f"{where}[{i}]: the content must be {'' if role == 'assistant' else 'non-empty '}text")
        if role == "system" and i != 0:
            raise InputError(f"{where}[{i}]: a system message may only come first")
        checked.append({"role": role, "content": content})
        if message.get("weight") is not None:
            if role != "assistant" or message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise InputError(f"{where}[{i}]: weight is 0 or 1, on an assistant message (OpenAI's fine-tuning "
                                 f"format), got {str(message['weight'])[:20]!r}")
            checked[-1]["weight"] = int(message["weight"])
    if not checked:
        raise InputError(f"{where}: the conversation holds no message")
    return checked


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of the conversation, and a mask that is True on the assistant's tokens and their <|end|>.

    With add_generation_prompt the ids end with an open <|assistant|>: the prompt for the model's next reply.
    """
    require_chat(tokenizer)
    messages = check_messages(messages)
    special = tokenizer.tokenizer.token_to_id
    ids: list[int] = []
    mask: list[bool] = []
    for message in messages:
        learned = message["role"] == "assistant" and message.get("weight", 1) == 1
        ids.append(special(ROLE_TOKENS[message["role"]]))  # who speaks: given, never learned
        mask.append(False)
        content = tokenizer.encode_text(message["content"])
        ids += content + [special(END_OF_TURN)]
        mask += [learned] * (len(content) + 1)  # the assistant learns its words and when to stop
    if add_generation_prompt:
        ids.append(special(ROLE_TOKENS["assistant"]))
        mask.append(False)
    return ids, mask


def user_prompt(tokenizer, text: str) -> tuple[list[int], str]:
    """A user's message with the assistant's reply to come, as ids, and as a training sample shows it."""
    ids = render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)[0]
    return ids, f"user: {text}\nassistant: "


# The same format for other tools, in their template languages (exports carry them: jobs/export.py). Both give
# the ids render() gives for a conversation, add_generation_prompt included: the tests compare them.
JINJA = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
         "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")  # Hugging Face, llama.cpp
OLLAMA = "{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>"  # Go text/template


def end_of_turn_id(tokenizer) -> int | None:
    return tokenizer.tokenizer.token_to_id(END_OF_TURN)


def stop_ids(tokenizer) -> set[int]:
    """Where generation ends: <|endoftext|>, and a chat turn's <|end|> (for a tokenizer that has it)."""
    return {tokenizer.eot_id, end_of_turn_id(tokenizer)} - {None}
