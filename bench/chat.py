"""Does fine-tuning teach the model to answer? The base, the fine-tuned and (with --pref) the preference-tuned
model side by side, in one process.

    python -m bench.chat --base models:/tinystories_cpu@champion --chat models:/tinystories_cpu-chat@champion \
                         [--pref models:/tinystories_cpu-pref@champion] --config configs/chat_cpu.yaml

On the config's validation conversations (with configs/chat_cpu.yaml made from the first paragraphs of valid.txt,
which no model of the chain trains on: tinystories_cpu validates on it, prefer_cpu.yaml skips them), each model gets
the same user text: the chat model as a conversation rendered with the chat template, the base model as plain text to
continue (what `chat` does with a base model). Measured:
  - words: for "Write a story that uses the words a, b and c.", the share of the three words in the reply;
  - names: for "What was the dog's name?" (asked after the story), the share of replies holding the right name;
  - loss: the assistant-token loss (nats per token) on the validation conversations.
Replies are greedy (temperature 0), at most --max-tokens tokens, generated in batches by the server's engine.
"""

from __future__ import annotations

import argparse

import torch

from jobs.models import load_model
from jobs.config import load_config
from jobs.data import chat_template, conversations
from jobs.data.chat_data import load_conversations
from jobs.data.windows import validation_batches
from jobs.serving.engine import greedy_replies
from jobs.training.runtime import make_runtime
from jobs.training.validation import validation_loss


def replies(loaded, prompts: list[list[int]], max_tokens: int) -> list[str]:
    """Greedy replies to every prompt, decoded, generated together by the server's engine."""
    ids = greedy_replies(loaded.model, prompts, max_tokens, frozenset(loaded.stop_ids))
    return [loaded.tokenizer.decode(reply) for reply in ids]


def prompt_ids(loaded, messages: list[dict], chat: bool) -> list[int]:
    if chat:
        return chat_template.render(loaded.tokenizer, messages, add_generation_prompt=True)[0]
    return loaded.tokenizer.encode("\n".join(m["content"] for m in messages) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--chat", required=True)
    parser.add_argument("--pref", help="a preference-tuned chat model (prefer), as a third row")
    parser.add_argument("--config", default="configs/chat_cpu.yaml")
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--show", type=int, default=3, help="print this many examples of each kind")
    args = parser.parse_args()
    cfg = load_config(args.config)
    _, validation = load_conversations(cfg)
    word_cases = [c for c in validation if c.kind == "uses_words"]
    name_cases = [c for c in validation if len(c.messages) > 2]
    refs = {"base": args.base, "fine-tuned": args.chat} | ({"preference": args.pref} if args.pref else {})
    models = {label: (load_model(ref, "cpu"), label != "base") for label, ref in refs.items()}
    rows = {}
    for label, (loaded, chat) in models.items():
        word_replies = replies(loaded, [prompt_ids(loaded, c.messages[:1], chat) for c in word_cases], args.max_tokens)
        name_replies = replies(loaded, [prompt_ids(loaded, c.messages[:3], chat) for c in name_cases], args.max_tokens)
        word_share = [conversations.words_used(reply, conversations.asked_words(case.messages[0]["content"]))
                      for case, reply in zip(word_cases, word_replies)]
        names = [conversations.told_name(c.messages[3]["content"]) for c in name_cases]
        correct = [name in reply for name, reply in zip(names, name_replies)]
        # "Tell me a story about Lily." then "What was the girl's name?": the question itself gives the name away
        unprompted = [ok for ok, name, c in zip(correct, names, name_cases) if name not in c.messages[0]["content"]]
        packed = conversations.pack(validation, loaded.tokenizer, loaded.config.max_seq_len)
        with torch.no_grad():
            loss, scored = validation_loss(make_runtime(loaded.model_type, loaded.model, "cpu"),
                                           validation_batches(packed, 16))
        rows[label] = (sum(word_share) / max(len(word_share), 1), sum(correct) / max(len(correct), 1),
                       sum(unprompted) / max(len(unprompted), 1), loss, scored)
        print(f"\n== {label}: {refs[label]}")
        for case, reply in list(zip(word_cases, word_replies))[:args.show]:
            print(f"  user: {case.messages[0]['content']}\n  reply: {reply[:300]!r}")
        for case, reply, name in list(zip(name_cases, name_replies, names))[:args.show]:
            print(f"  user: {case.messages[2]['content']} (answer: {name})\n  reply: {reply[:200]!r}")

    n_unprompted = sum(conversations.told_name(c.messages[3]["content"]) not in c.messages[0]["content"]
                       for c in name_cases)
    print(f"\n{len(validation)} validation conversations ({len(word_cases)} ask for words, {len(name_cases)} ask a "
          f"name, {n_unprompted} of them a name not in the first question), greedy replies of at most "
          f"{args.max_tokens} tokens")
    print(f"{'model':<12}{'words used':>12}{'names right':>13}{'not in question':>17}{'assistant loss':>16}"
          f"{'scored tokens':>15}")
    for label, (words, names, unprompted, loss, scored) in rows.items():
        print(f"{label:<12}{words:>12.1%}{names:>13.1%}{unprompted:>17.1%}{loss:>16.4f}{scored:>15,}")
    base_words = rows["base"][0]
    print(f"fine-tuned / base words used: {rows['fine-tuned'][0] / base_words:.2f}x" if base_words else
          "the base model used none of the words")
    if "preference" in rows and rows["fine-tuned"][0]:
        sft_words, sft_loss = rows["fine-tuned"][0], rows["fine-tuned"][3]
        print(f"preference / fine-tuned: words used {rows['preference'][0] / sft_words:.2f}x, names right "
              f"{rows['preference'][1]:.1%} vs {rows['fine-tuned'][1]:.1%}, assistant loss "
              f"{100 * (rows['preference'][3] / sft_loss - 1):+.1f}%")


if __name__ == "__main__":
    main()
