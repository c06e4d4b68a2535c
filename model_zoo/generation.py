"""Sampling text from either model, one token at a time, with a KV cache.

Both TorchTransformer and CustomTransformer take `forward(idx, kv_cache=...)`, so one loop serves both: the
prompt goes through once (prefill, filling the cache), then each new token costs one position's work.
"""

from __future__ import annotations

from typing import Collection, Iterator, Sequence

import torch

from model_zoo.kv_cache import KVCache


GREEDY_BELOW = 1e-5  # a temperature under this is taken as 0: dividing by it would overflow the logits


def sample_rows(logits: torch.Tensor, temperatures: Sequence[float], top_ks: Sequence[int | None],
                top_ps: Sequence[float | None], generators: Sequence[torch.Generator]) -> list[int]:
    """The one sampler: one token per row of last-position logits (B, V), each row with its own temperature,
    top-k, top-p and random generator (a batch of different requests in the server's engine; one row for
    generate, chat and the training samples).

    temperature divides the logits (below 1 sharpens; 0, or under GREEDY_BELOW, means always the most likely
    token); top_k keeps the k most likely tokens (None or 0: all); top_p keeps the smallest set whose probabilities
    add up to at least p (nucleus; None or 1: all). Every filter runs once for the whole batch; the only per-row work
    is the draw, from the row's own generator, so a seeded request gives the same tokens alone or in a batch.
    """
    if any(t < 0 for t in temperatures):
        raise ValueError(f"temperature must be >= 0, got {min(temperatures)}")
    if any(p is not None and not 0.0 < p <= 1.0 for p in top_ps):
        raise ValueError(f"top_p must be in (0, 1], got {[p for p in top_ps if p is not None]}")
    logits = logits.float()
    B, V = logits.shape
    most_likely = logits.argmax(dim=-1)  # (B,): what a greedy row takes
    temperature = torch.tensor(temperatures, dtype=torch.float32, device=logits.device)[:, None]  # (B, 1)
    greedy = (temperature < GREEDY_BELOW).squeeze(1)  # (B,): 0, or so small that dividing would overflow
    if bool(greedy.all()):  # nothing to draw (greedy decoding, the benchmarks' and the measurements' case)
        return most_likely.tolist()
    logits = logits / temperature.clamp_min(GREEDY_BELOW)
    ks = [k if k is not None and 0 < k < V else V for k in top_ks]
    if min(ks) < V:  # top-k: each row's k-th largest logit is its threshold
        largest = torch.topk(logits, max(ks), dim=-1).values  # (B, max k)
        kth_largest = largest.gather(-1, torch.tensor(ks, device=logits.device)[:, None] - 1)  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    top_p = torch.tensor([1.0 if p is None else p for p in top_ps], device=logits.device)[:, None]  # (B, 1)
    if bool((top_p < 1).any()):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p. The most likely token is always kept:
        # a top_p so small that float32 rounds it to 0 (1e-300) would otherwise drop every token.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop_sorted[..., 0] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))  # vocabulary order
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    # Inverse transform sampling: one uniform u per row, from the row's own generator (a greedy row draws nothing,
    # so its generator is left as it was); the token is the first whose cumulative probability exceeds u times
    # the row's total. One small draw per row and one search for the batch: torch.multinomial per row costs about
    # 100 us a row on a CPU, the most of a decode step's per-row cost. The sums are float64, so rounding cannot
    # move a boundary past a token of real probability; a u * total that rounds up to the total (about 1 in 2^53)
    # takes the last token that has any probability.
    cumulative = probs.double().cumsum(dim=-1)  # (B, V)
    u = torch.cat([torch.rand(1, generator=generator, dtype=torch.float64, device=logits.device) if not is_greedy
                   else torch.zeros(1, dtype=torch.float64, device=logits.device)
                   for is_greedy, generator in zip(greedy.tolist(), generators)])  # (B,)
    drawn = torch.searchsorted(cumulative, (u * cumulative[:, -1])[:, None], right=True).squeeze(1)  # (B,)
    last_possible = V - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)  # (B,): the last token with probability
    drawn = torch.minimum(drawn, last_possible)
    return torch.where(greedy, most_likely, drawn).tolist()


@torch.inference_mode()
def generate_tokens(
    model, prompt_ids: Sequence[int], max_new_tokens: int = 100, temperature: float = 0.8,
    top_k: int | None = 50, top_p: float | None = None, seed: int | None = None, eos_id: int | None = None,
    use_cache: bool = True, stop_ids: Collection[int] = (),
) -> Iterator[int]:
    """Yield new token ids one by one (so a chat can stream them); stops at max_new_tokens, or after yielding
    eos_id or any of stop_ids (a chat model's end of turn).

    The context is at most max_seq_len tokens (learned positions stop there): a longer prompt keeps its last
    max_seq_len tokens, and once the cache is full the window slides and the cache is rebuilt each step.
    """
    if len(prompt_ids) == 0:
        raise ValueError("the prompt must hold at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    model.eval()
    device = model_device(model)
    max_len = model.config.max_seq_len
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # a fresh non-deterministic seed
    else:
        generator.manual_seed(seed)

    tokens = list(prompt_ids)
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            window = torch.tensor([tokens[-max_len:]], device=device)
            logits, _ = model(window)
        elif cache is not None and cache.length < max_len:
            logits, _ = model(torch.tensor([[tokens[-1]]], device=device), kv_cache=cache)  # one new position
        else:  # first step, or the window slid: (re)fill the cache from the last max_len tokens
            cache = KVCache(model.config.n_blocks, model.config.max_seq_len)
            logits, _ = model(torch.tensor([tokens[-max_len:]], device=device), kv_cache=cache)
        (next_id,) = sample_rows(logits[:, -1, :], [temperature], [top_k], [top_p], [generator])
        tokens.append(next_id)
        yield next_id
        if next_id == eos_id or next_id in stop_ids:
            return


def generate(model, prompt_ids: Sequence[int], **kwargs) -> list[int]:
    """Prompt plus generated ids, as one list. Keyword arguments as generate_tokens."""
    return list(prompt_ids) + list(generate_tokens(model, prompt_ids, **kwargs))


def model_device(model) -> torch.device:
    """The device the model's weights are on (works for both implementations)."""
    return next(iter(model.state_dict().values())).device
