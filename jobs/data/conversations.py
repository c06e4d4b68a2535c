"""Chat data: conversations made from stories, or read from JSONL files, packed into (B, T+1) training windows
whose mask says which tokens the model learns (the assistant's, see chat_template.py).

Built from stories, deterministically from a seed, each answer taken from a real story:
    "Tell me a story about <name>."                       -> the story
    "Write a story that uses the words <a>, <b> and <c>." -> the story (the words drawn from it)
    "Continue this story: <its first sentences>"          -> the rest of it
and, where the story names a character ("a dog named Max", "a girl named Lily"), a second turn: "What was the dog's
name?" -> "The dog's name was Max." Training and validation conversations come from the data config's train and validation stories,
which never share a story.

Your own conversations: JSONL, one `{"messages": [{"role": ..., "content": ...}, ...]}` per line (Hugging Face
chat datasets' and OpenAI fine-tuning files' format), a `system` message allowed first, ending with the assistant.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jobs.data import chat_template
from jobs.data.windows import Batch
from jobs.errors import InputError

KINDS = ("story_about", "uses_words", "continue", "animal_name")
COMMON_SHARE = 0.05  # a word in this share of the stories or more is too common to ask for
NOT_NAMES = {"The", "Once", "One", "He", "She", "They", "It", "His", "Her", "Their", "Then", "But", "And", "So",
             "When", "After", "Every", "There", "This", "That", "What", "Why", "How", "Yes", "No", "Mom", "Dad",
             "Mommy", "Daddy", "I", "We", "You", "A", "In", "On", "At", "Suddenly", "Later", "Soon", "Today", "Finally",
             "Sue", "Can", "Let", "Do", "Don", "Look", "Oh", "Wow", "Thank", "Please", "If", "As", "While", "Now"}
STOP_WORDS = {"there", "their", "they", "them", "then", "that", "this", "with", "were", "was", "have", "what", "when",
              "said", "very", "into", "from", "your", "will", "would", "could", "because", "about", "every", "after",
              "some", "something", "other", "again", "before", "where", "which", "while", "each", "also", "just",
              "like", "made", "make", "came", "come", "went", "want", "wanted", "know", "knew", "back", "more",
              "much", "many", "time", "upon", "once", "day", "felt", "feel", "looked", "look", "saw", "see", "too"}
ANIMAL_NAME = re.compile(r"\b(?:a|an|the) (?:little |big |small |old |friendly |happy |cute )?"
                         r"(dog|cat|bird|fish|bunny|rabbit|bear|frog|duck|puppy|kitten|mouse|horse|cow|pig|lion|"
                         r"monkey|turtle|owl|fox|sheep|squirrel|elephant|bee|butterfly|ant|snake|tiger|dragon|"
                         r"girl|boy|man|woman|lady|king|queen|prince|princess|robot|car|truck|boat|doll|toy) "
                         r"(?:named|called) ([A-Z][a-z]+)")


@dataclass
class Conversation:
    messages: list[dict]
    kind: str  # the first turn's: one of KINDS but animal_name (a second turn some have), or "file"


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def story_name(story: str) -> str | None:
    """The story's main character: the capitalised word (not a common sentence opener) named most often."""
    counts = Counter(w for w in re.findall(r"\b[A-Z][a-z]{2,}\b", story) if w not in NOT_NAMES)
    name, count = counts.most_common(1)[0] if counts else (None, 0)
    return name if count >= 2 else None


def shorten(story: str, max_words: int | None) -> str:
    """The story's first whole sentences, as many as fit in max_words (a small model's context is short)."""
    if max_words is None:
        return story
    kept, words = [], 0
    for sentence in sentences(story):
        words += len(sentence.split())
        if words > max_words:
            break
        kept.append(sentence)
    return " ".join(kept)


def conversations_from_story(story: str, rng: random.Random, max_words: int | None = None, per_story: int = 1,
                             common: frozenset[str] = frozenset()) -> list[Conversation]:
    """per_story conversations of different kinds for the story (drawn from the kinds the story allows), each with
    a second turn about a character's name where the story has one. With max_words, the story is cut after its last
    whole sentence within that many words, so that the conversation fits a short context."""
    story = shorten(story.strip(), max_words)
    parts = sentences(story)
    if len(parts) < 3 or len(story) < 80:
        return []
    options = []
    name = story_name(story)
    if name:
        options.append(("story_about", f"Tell me a story about {name}.", story))
    words = words_to_ask(story, common)
    if len(words) >= 3:
        a, b, c = rng.sample(words, 3)
        options.append(("uses_words", f"Write a story that uses the words {a}, {b} and {c}.", story))
    head = " ".join(parts[:2])
    options.append(("continue", f"Continue this story: {head}", " ".join(parts[2:])))
    made = []
    for kind, question, answer in rng.sample(options, min(per_story, len(options))):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        found = ANIMAL_NAME.search(answer)
        if found and kind != "continue":  # asked about the story just told
            animal, animal_name = found.group(1), found.group(2)
            messages += [{"role": "user", "content": f"What was the {animal}'s name?"},
                         {"role": "assistant", "content": f"The {animal}'s name was {animal_name}."}]
        made.append(Conversation(messages, kind))
    return made


def words_to_ask(story: str, common: frozenset[str]) -> list[str]:
    """The words a "Write a story that uses the words a, b and c." request may ask for, sorted: the story's own, and
    uncommon (in fewer than COMMON_SHARE of the stories: "little", "girl", "named" would be in any story), from its
    opening where it has three (a small model learns sooner to open with the words it was given than to work them
    in anywhere), else from the whole story."""
    def distinctive(text: str) -> list[str]:
        return sorted({w for w in re.findall(r"\b[a-z]{4,}\b", text) if w not in STOP_WORDS and w not in common})

    words = distinctive(" ".join(sentences(story)[:2]))
    return words if len(words) >= 3 else distinctive(story)


def conversations_from_stories(stories, seed: int, limit: int | None = None, max_words: int | None = None,
                               per_story: int = 1) -> list[Conversation]:
    rng = random.Random(seed)
    stories = list(stories)
    common = common_words(stories)
    conversations: list[Conversation] = []
    for story in stories:
        conversations += conversations_from_story(story, rng, max_words, per_story, common)
        if limit is not None and len(conversations) >= limit:
            break
    return conversations[:limit]


def asked_words(request: str) -> list[str]:
    """The words a "Write a story that uses the words a, b and c." request asks for."""
    return re.findall(r"[a-z]+", request.split("words", 1)[1].replace(" and ", " "))


def words_used(reply: str, words: list[str]) -> float:
    """The share of the words that the reply uses (as whole words, in any case)."""
    said = set(re.findall(r"[a-z]+", reply.lower()))
    return sum(w in said for w in words) / len(words)


def told_name(answer: str) -> str:
    """The name in a name question's answer, "The dog's name was Max." (as conversations_from_story writes it)."""
    return re.search(r"was (\w+)\.$", answer).group(1)


def common_words(stories: list[str]) -> frozenset[str]:
    """Words found in at least COMMON_SHARE of the stories (never asked for: any story would use them)."""
    seen = Counter(w for story in stories for w in set(re.findall(r"\b[a-z]{4,}\b", story)))
    return frozenset(w for w, n in seen.items() if n >= COMMON_SHARE * len(stories))


def read_conversations(path: Path, skip_bad: bool = False) -> tuple[list[Conversation], int]:
    """The conversations of a JSONL messages file, and how many bad lines were skipped (skip_bad) — or an
    InputError naming the file and line of the first bad one."""
    return read_jsonl(path, lambda line: Conversation(_record_messages(line), "file"), skip_bad, "conversation file")


def read_jsonl(path: Path, make, skip_bad: bool, what: str) -> tuple[list, int]:
    """make(line) for each non-empty line of a UTF-8 JSONL file (preference pairs use it too), and how many lines
    make refused and skip_bad skipped — or an InputError naming the file and line of the first bad one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    with open(path, encoding="utf-8", errors="strict") as lines:
        try:
            numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text") from None
    return _collect(numbered, make, lambda number: f"{path}:{number}", skip_bad)


def hub_conversations(name: str, split: str, skip_bad: bool = False) -> tuple[list[Conversation], int]:
    """The `messages` column of a Hugging Face Hub dataset (e.g. a chat dataset in the messages format), each row
    checked as a JSONL record is. Needs the network (or the local Hub cache)."""
    import datasets

    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as error:  # offline, a wrong name or split: one line, not the library's traceback
        raise InputError(f"chat.hub_dataset {name[:100]!r} (split {split!r}) could not be loaded "
                         f"({type(error).__name__}); offline, use chat.conversation_files instead") from None
    if "messages" not in rows.column_names:
        raise InputError(f"chat.hub_dataset {name[:100]!r} has no 'messages' column ({', '.join(rows.column_names)})")
    return _collect(enumerate(rows["messages"], 1), lambda messages: Conversation(_checked_messages(messages), "file"),
                    lambda number: f"{name}[{split}] row {number}", skip_bad)


def _collect(numbered, make, where, skip_bad: bool) -> tuple[list, int]:
    """make(record) for numbered records; a bad one is refused naming where it is (`where(number)`), or with
    skip_bad skipped and counted."""
    made, skipped = [], 0
    for number, record in numbered:
        try:
            made.append(make(record))
        except InputError as error:
            if not skip_bad:
                raise InputError(f"{where(number)}: {error}") from None
            skipped += 1
    return made, skipped


def json_record(line: str):
    """One JSONL line, parsed; an InputError for text that is not JSON (or nested past what Python parses)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"not JSON ({error.msg})") from None
    except RecursionError:  # [[[[... a hundred thousand deep: Python's parser gives up
        raise InputError("not JSON this program reads (nested too deep)") from None


def _record_messages(line: str) -> list[dict]:
    record = json_record(line)
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise InputError('each line is an object with a "messages" list')
    return _checked_messages(record["messages"])


def _checked_messages(messages) -> list[dict]:
    if not isinstance(messages, list):
        raise InputError('"messages" must be a list')
    messages = chat_template.check_messages(messages, "messages")
    if messages[-1]["role"] != "assistant":
        raise InputError("the conversation must end with the assistant")
    return messages


# --- packing ---------------------------------------------------------------------------------------------------


@dataclass
class PackedChat:
    """Whole conversations laid end to end in windows of T + 1 tokens, with their masks; counts of what was made."""

    tokens: np.ndarray  # (N, T + 1) int64
    mask: np.ndarray  # (N, T + 1) bool: True on tokens the model learns
    kinds: Counter = field(default_factory=Counter)
    dropped_too_long: int = 0
    shortest_dropped: int | None = None  # tokens of the shortest conversation dropped (for the message that says so)

    @property
    def scored_tokens(self) -> int:
        return int(self.mask[:, 1:].sum())

    # a window source (jobs/data/windows.py): random draws and the fixed pass both pick whole rows
    def random_starts(self) -> int:
        return len(self.tokens)

    def fixed_windows(self) -> int:
        return len(self.tokens)

    def take(self, indices: np.ndarray, fixed: bool = False) -> Batch:
        return Batch(torch.from_numpy(self.tokens[indices]), torch.from_numpy(self.mask[indices]))

    def why_empty(self) -> str:
        return "no chat training windows: every conversation was dropped or none was made"


def pack(conversations: list[Conversation], tokenizer, seq_len: int) -> PackedChat:
    """Render each conversation and pack them into windows of seq_len + 1 tokens, never splitting one; a
    conversation longer than a window is dropped and counted. The rest of a window is <|endoftext|>, unscored."""
    width = seq_len + 1
    windows, masks = [], []
    ids_now: list[int] = []
    mask_now: list[bool] = []
    kept: list[Conversation] = []
    dropped, shortest_dropped = 0, None
    # No token spells more characters than the longest in the vocabulary: a conversation with more characters than
    # width times that cannot fit, and is dropped before it is tokenized (a 24 MB record would take minutes)
    most_characters = width * max(len(token) for token in tokenizer.tokenizer.get_vocab())
    for conversation in conversations:
        if sum(len(m["content"]) for m in conversation.messages) > most_characters:
            dropped += 1
            continue
        ids, mask = chat_template.render(tokenizer, conversation.messages)
        ids, mask = ids + [tokenizer.eot_id], mask + [False]  # conversations separated like documents
        if len(ids) > width:
            dropped += 1
            shortest_dropped = min(len(ids) - 1, shortest_dropped or len(ids))
            continue
        kept.append(conversation)
        if len(ids_now) + len(ids) > width:
            windows.append(ids_now), masks.append(mask_now)
            ids_now, mask_now = [], []
        ids_now, mask_now = ids_now + ids, mask_now + mask
    if ids_now:
        windows.append(ids_now), masks.append(mask_now)
    tokens = np.full((len(windows), width), tokenizer.eot_id, dtype=np.int64)
    scored = np.zeros((len(windows), width), dtype=bool)
    for i, (ids, mask) in enumerate(zip(windows, masks)):
        tokens[i, :len(ids)], scored[i, :len(mask)] = ids, mask
    return PackedChat(tokens, scored, kind_counts(kept), dropped, shortest_dropped)


def kind_counts(conversations: list[Conversation]) -> Counter:
    """Conversations per kind, and as animal_name those made from stories with a second turn (a name asked)."""
    kinds = Counter(c.kind for c in conversations)
    kinds["animal_name"] = sum(len(c.messages) > 2 and c.kind != "file" for c in conversations)
    return +kinds  # without zero counts
