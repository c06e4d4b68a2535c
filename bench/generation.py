"""Generation with the KV cache against full recomputation, both model types, in one process.

    python -m bench.generation                      # 256 new tokens, d_model 256, 4 blocks, fp32, 2 threads

Without a cache every new token runs the whole context through the model again (O(T^2) work for T tokens);
with it, each new token runs one position and attends to the keys and values kept from before. Both paths
decode greedily (temperature 0) from the same one-token prompt with the same weights, so they must produce the
same tokens, which this script checks. Rows are interleaved in a new seeded random order every round and the
median round is reported, so a slow moment of a busy machine is spread over all rows.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from model_zoo.config import ModelConfig
from model_zoo.custom_transformer import CustomTransformer
from model_zoo.generation import generate
from model_zoo.kv_cache import KVCache
from model_zoo.torch_transformer import TorchTransformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # max_seq_len above prompt + new tokens, so the context grows to the end and the cache never slides
    config = ModelConfig(vocab_size=4096, d_model=256, n_heads=4, n_blocks=4, d_ffn=1024,
                         max_seq_len=args.new_tokens + 1)
    twin = TorchTransformer(config)
    custom = CustomTransformer(config)
    custom.load_state_dict(twin.state_dict())
    models = {"torch twin": twin, "custom": custom}
    rows = [(name, use_cache) for name in models for use_cache in (False, True)]
    times: dict[tuple[str, bool], list[float]] = {row: [] for row in rows}
    outputs: dict[tuple[str, bool], list[int]] = {}
    order = random.Random(0)
    for round_index in range(args.rounds + 1):  # round 0 warms up and is not counted
        order.shuffle(rows)
        for name, use_cache in rows:
            start = time.perf_counter()
            ids = generate(models[name], [0], max_new_tokens=args.new_tokens, temperature=0.0, use_cache=use_cache)
            seconds = time.perf_counter() - start
            if round_index:
                times[(name, use_cache)].append(seconds)
            outputs[(name, use_cache)] = ids

    print(f"\n{args.new_tokens} new tokens from a 1-token prompt (context grows to T {args.new_tokens + 1}), "
          f"vocab 4,096, d_model 256, 4 blocks, 4 heads, fp32, {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'model':<14}{'full recompute (s)':>20}{'KV cache (s)':>14}{'tokens/s, cache':>17}{'speed-up':>10}"
          f"{'same tokens':>13}")
    for name in models:
        full = statistics.median(times[(name, False)])
        cached = statistics.median(times[(name, True)])
        same = outputs[(name, False)] == outputs[(name, True)]
        print(f"{name:<14}{full:>20.3f}{cached:>14.3f}{args.new_tokens / cached:>17,.0f}{full / cached:>9.1f}x"
              f"{str(same):>13}")
    print(f"both model types give the same tokens: {outputs[('torch twin', True)] == outputs[('custom', True)]}")

    # The cost of one new token once the context holds T tokens: where the cache pays most.
    # Its floor: a cached step reads every weight and the whole cache once, so it takes at least their bytes over
    # the memory bandwidth (measured here: a sum over 256 MB, far larger than the CPU's caches).
    T = args.new_tokens
    weight_bytes = sum(t.numel() * t.element_size() for t in twin.state_dict().values())
    cache_bytes = 2 * config.n_blocks * T * config.d_model * 4  # keys and values, every block, fp32
    bandwidth = memory_bandwidth()
    floor = (weight_bytes + cache_bytes) / bandwidth
    print(f"\none new token with {T - 1} tokens before it (T {T}), median of 20; floor: weights "
          f"{weight_bytes / 1e6:.1f} MB + cache {cache_bytes / 1e6:.1f} MB read once at {bandwidth / 1e9:.1f} GB/s "
          f"= {1e3 * floor:.2f} ms")
    print(f"{'model':<14}{'full recompute (ms)':>21}{'KV cache (ms)':>15}{'speed-up':>10}{'floor (ms)':>12}"
          f"{'cache / floor':>15}")
    for name, model in models.items():
        full, cached = per_token_at(model, T, repeats=20)
        print(f"{name:<14}{1e3 * full:>21.2f}{1e3 * cached:>15.2f}{full / cached:>9.1f}x{1e3 * floor:>12.2f}"
              f"{cached / floor:>14.1f}x")


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of reading a float32 tensor much larger than the caches (best of `repeats`)."""
    data = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return data.numel() * 4 / best


@torch.inference_mode()
def per_token_at(model, T: int, repeats: int) -> tuple[float, float]:
    """Median seconds for the T-th token: a forward over all T tokens, or one position with T - 1 cached."""
    model.eval()
    context = torch.randint(0, model.config.vocab_size, (1, T))
    full, cached = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model(context)
        full.append(time.perf_counter() - start)
        cache = KVCache(model.config.n_blocks, model.config.max_seq_len)
        model(context[:, :-1], kv_cache=cache)
        start = time.perf_counter()
        model(context[:, -1:], kv_cache=cache)
        cached.append(time.perf_counter() - start)
    return statistics.median(full), statistics.median(cached)


if __name__ == "__main__":
    main()
