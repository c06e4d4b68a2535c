"""Sampling text from either model, one token at a time, with a KV cache.

Both TorchTransformer and CustomTransformer take `forward(idx, kv_cache=...)`, so one loop serves both: the
prompt goes through once (prefill, filling the cache), then each new token costs one position's work.
"""

from __future__ import annotations

from typing import Collection, Iterator, Sequence

import torch

from model_zoo.kv_cache import KVCache


GREEDY_BELOW = 1e-5  # a temperature under this is taken as 0: dividing by it would overflow the logits


def sample_next_token(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from last-position logits (B, V); returns (B, 1) ids.

    temperature divides the logits (below 1 sharpens, 0 means always the most likely token); top_k keeps the
    k most likely tokens; top_p keeps the smallest set whose probabilities add up to at least p (nucleus).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float()
    if temperature < GREEDY_BELOW:  # 0, or so small that dividing by it would overflow the logits
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p. The most likely token is always kept:
        # a top_p so small that float32 rounds it to 0 (1e-300) would otherwise drop every token.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def sample_rows(logits: torch.Tensor, temperatures: Sequence[float], top_ps: Sequence[float | None],
                generators: Sequence[torch.Generator]) -> list[int]:
    """One token per row of (B, V) logits, each row with its own temperature, top-p and random generator: a batch
    of different requests (the server's engine). Every tensor op runs once for the whole batch; the only per-row
    work is one uniform draw from the row's generator, turned into a token by the inverse of the row's cumulative
    distribution (the same distribution as sample_next_token, drawn another way)."""
    logits = logits.float()
    B, V = logits.shape
    temperature = torch.tensor(temperatures, dtype=torch.float32, device=logits.device)  # (B,)
    greedy = temperature < GREEDY_BELOW  # (B,)
    probs = torch.softmax(logits / temperature.clamp_min(GREEDY_BELOW)[:, None], dim=-1)  # (B, V)
    top_p = torch.tensor([1.0 if p is None else p for p in top_ps], device=logits.device)  # (B,)
    if bool((top_p < 1).any()):  # nucleus, as in sample_next_token, with each row's own p
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p[:, None]
        drop_sorted[:, 0] = False  # the most likely token stays, however small p is
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    cdf = probs.cumsum(dim=-1)  # (B, V); its last column is each row's total (1, or what top-p kept)
    uniform = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators])  # (B,)
    drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).squeeze(1).clamp_max(V - 1)  # (B,)
    return torch.where(greedy, logits.argmax(dim=-1), drawn).tolist()


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
            cache = KVCache(model.config.n_blocks)
            logits, _ = model(torch.tensor([tokens[-max_len:]], device=device), kv_cache=cache)
        next_id = int(sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator))
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
