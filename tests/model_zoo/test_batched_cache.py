"""BatchedKVCache: sequences of different lengths decoded in one forward pass compute what each computes alone
(the basis of the server's continuous batching), for both architectures and both model types."""

import pytest
import torch

from model_zoo.build import build_model
from model_zoo.config import ModelConfig
from model_zoo.kv_cache import BatchedKVCache, KVCache

CONFIGS = {
    "gpt2": ModelConfig(vocab_size=61, d_model=16, n_heads=2, n_blocks=2, d_ffn=40, max_seq_len=24),
    "llama": ModelConfig(architecture="llama", vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, n_blocks=2,
                         d_ffn=40, max_seq_len=24),
}


def alone(model, prompt: list[int], steps: int) -> list[torch.Tensor]:
    """Last-position logits of the prompt, then of each greedy token fed back, with a one-sequence cache."""
    cache = KVCache(model.config.n_blocks, model.config.max_seq_len)
    logits, _ = model(torch.tensor([prompt]), kv_cache=cache)
    out = [logits[0, -1]]
    for _ in range(steps):
        logits, _ = model(out[-1].argmax().view(1, 1), kv_cache=cache)
        out.append(logits[0, -1])
    return out


def model_and_prompts(architecture: str, model_type: str, seed: int):
    """A seeded tiny model and four prompts of different lengths (3, 9, 1 and 6 tokens)."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[architecture], model_type)
    model.eval() if hasattr(model, "eval") else None
    g = torch.Generator().manual_seed(seed)
    return model, [torch.randint(0, 61, (n,), generator=g).tolist() for n in (3, 9, 1, 6)]


@pytest.mark.parametrize("model_type", ["torch", "custom"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_batched_decoding_equals_each_sequence_alone(architecture, model_type):
    config = CONFIGS[architecture]
    model, prompts = model_and_prompts(architecture, model_type, seed=3)
    steps = 8
    with torch.no_grad():
        expected = [alone(model, p, steps) for p in prompts]
        batch = BatchedKVCache(config.n_blocks, config.max_seq_len, max_rows=4)
        rows: list[int] = []  # request index of each row
        got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(prompts))}
        joins = {0: [0, 1], 2: [2], 5: [3]}  # step -> requests that join then (prefilled alone, as the server does)
        for step in range(steps + 6):
            for i in joins.get(step, []):
                cache = KVCache(config.n_blocks, config.max_seq_len)
                logits, _ = model(torch.tensor([prompts[i]]), kv_cache=cache)
                got[i].append(logits[0, -1])
                batch.add(cache)
                rows.append(i)
            if not rows:
                break
            next_ids = torch.stack([got[i][-1].argmax() for i in rows]).view(-1, 1)  # (B, 1)
            logits, _ = model(next_ids, kv_cache=batch)  # one pass for every active sequence
            for row, i in enumerate(rows):
                got[i].append(logits[row, -1])
            finished = [row for row, i in enumerate(rows) if len(got[i]) == steps + 1]
            for row in reversed(finished):  # finished rows leave (the last row moves in); the others keep decoding
                batch.remove(row)
                rows[row] = rows[-1]
                rows.pop()
        assert not rows and batch.rows == 0
    for i in range(len(prompts)):
        assert len(got[i]) == steps + 1
        for step, (a, b) in enumerate(zip(got[i], expected[i])):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"request {i}, step {step}")
            assert a.argmax() == b.argmax()


def test_batched_cache_refuses_a_context_over_max_seq_len():
    config = CONFIGS["gpt2"]
    model = build_model(config, "torch").eval()
    cache = KVCache(config.n_blocks, config.max_seq_len)
    with torch.no_grad():
        model(torch.zeros(1, config.max_seq_len, dtype=torch.long), kv_cache=cache)
        batch = BatchedKVCache(config.n_blocks, config.max_seq_len, max_rows=2)
        batch.add(cache)
        with pytest.raises(ValueError, match="longer than max_seq_len"):
            model(torch.zeros(1, 1, dtype=torch.long), kv_cache=batch)


@pytest.mark.parametrize("model_type", ["torch", "custom"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_prompts_prefilled_together_right_padded_equal_each_alone(architecture, model_type):
    """The server's prefill: prompts of different lengths in one forward, right-padded, each row trimmed to its own
    length; then, moved into a decoding batch, each continues as it would alone."""
    config = CONFIGS[architecture]
    model, prompts = model_and_prompts(architecture, model_type, seed=5)
    steps = 4
    with torch.no_grad():
        expected = [alone(model, p, steps) for p in prompts]
        lengths = [len(p) for p in prompts]
        prefill = BatchedKVCache.for_prompts(config.n_blocks, lengths)
        padded = torch.tensor([p + [0] * (max(lengths) - len(p)) for p in prompts])  # pad id 0, after each prompt
        logits, _ = model(padded, kv_cache=prefill)
        prefill.trim(lengths)
        got = [[logits[row, n - 1]] for row, n in enumerate(lengths)]
        batch = BatchedKVCache(config.n_blocks, config.max_seq_len, max_rows=4)
        for row in range(len(prompts)):
            batch.add(prefill, row)
        for _ in range(steps):
            next_ids = torch.stack([out[-1].argmax() for out in got]).view(-1, 1)  # (B, 1)
            logits, _ = model(next_ids, kv_cache=batch)
            for row, out in enumerate(got):
                out.append(logits[row, -1])
    for i in range(len(prompts)):
        for step, (a, b) in enumerate(zip(got[i], expected[i])):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"prompt {i}, step {step}")
