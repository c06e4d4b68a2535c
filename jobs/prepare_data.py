"""`python -m jobs prepare-data [STEP] --config configs/X.yaml [--data.KEY=VALUE ...]`

STEP is `all` (default: everything the config needs, reusing what exists; `pretokenize` is the same),
`download`, `train-tokenizer` (the tokenizer only, or the one that exists), `analyze`, or `chat`: the conversations a chat config's fine-tuning makes (jobs/data/chat_data.py),
counted per kind and written as JSONL (messages format) under assets_dir/chat/<experiment>/ to read or reuse.
"""

from __future__ import annotations

from jobs.config import load_config
from jobs.data import pipeline
from jobs.errors import InputError

STEPS = ("all", "download", "train-tokenizer", "analyze", "pretokenize", "chat")


def prepare_data(step: str = "all", config: str | None = None, **overrides) -> None:
    if step not in STEPS:
        raise InputError(f"unknown prepare-data step {step!r} (choose from {', '.join(STEPS)})")
    cfg = load_config(config, overrides)
    data = cfg.data
    if step == "chat":
        from jobs.data.chat_data import write_conversations

        print(write_conversations(cfg))
    elif step == "download":
        pipeline.download(pipeline.DataLayout.of(data))
    elif step == "train-tokenizer":
        pipeline.prepare_tokenizer(data)
    elif step == "analyze":
        print(pipeline.analyze_data(data))
    else:  # all, pretokenize: every stage that is missing
        prepared = pipeline.prepare(data)
        print(f"prepared: tokenizer {prepared.tokenizer.path}, tokens {prepared.tokens_dir}")
