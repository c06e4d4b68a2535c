import os
from pathlib import Path

import pytest

# Tests never touch the network: the Hugging Face libraries answer from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_TINYSTORIES = REPO.parent / "shared" / "data" / "tinystories"


@pytest.fixture
def tinystories() -> Path:
    """The real TinyStories text beside the checkout (../shared/data); CI always has it, a user's clone may not."""
    if not (SHARED_TINYSTORIES / "train.txt").is_file():
        pytest.skip(f"real TinyStories text not found at {SHARED_TINYSTORIES} (only CI and dev machines have ../shared)")
    return SHARED_TINYSTORIES


def write_stories(folder: Path, n: int = 60, separator: str | None = "<|endoftext|>", seed: int = 0) -> Path:
    """A small made-up corpus in TinyStories' layout, for tests that must run without ../shared."""
    import random

    rng = random.Random(seed)
    names, things = ["Tim", "Lily", "Sam", "Mia", "Ben"], ["ball", "cat", "tree", "cake", "boat", "kite"]
    stories = []
    for _ in range(n):
        name, thing = rng.choice(names), rng.choice(things)
        stories.append(
            f"Once upon a time, {name} had a {thing}. {name} liked the {thing} very much.\n"
            f"One day the {thing} was lost. {name} was sad. Then {name} found it and smiled. The end."
        )
    sep = f"\n{separator}\n" if separator else "\n\n"
    path = folder / f"stories-{seed}.txt"
    path.write_text(sep.join(stories) + "\n")
    return path
