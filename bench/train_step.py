"""Training-step throughput: our two models against Hugging Face's GPT2LMHeadModel, in one process.

    python -m bench.train_step                      # the issue's CPU setting (fp32, 2 threads)
    python -m bench.train_step --device cuda --dtype bfloat16 --batch-size 32
    python -m bench.train_step --architecture llama --d-model 128 --batch-size 32 --seq-len 128 --muon   # + Muon rows

Every row runs a full training step (forward, backward, clipping, AdamW update; with --muon also rows whose
update is Muon's for the blocks' matrices, to price the Newton-Schulz iterations) on the same batches with the
same dimensions; our rows run the step the train job runs (`make_runtime(...).train_step`), not a copy of it. Rows are measured in rounds (each row one step per round by default, rows interleaved in a new
seeded random order every round) so a slow moment of a noisy machine is spread over all rows instead of landing
on one, and no row always runs right after the same other row; the median round is reported. Also prints
the machine's measured matmul FLOP/s and each row's model-FLOPs utilisation (MFU, with the FLOPs formula of
model_zoo.config).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

from model_zoo.config import ModelConfig, count_parameters, flops_per_token
from model_zoo.build import build_hf_model, build_model
from model_zoo.optimizer import MuonSettings, configure_optimizer
from jobs.data.windows import Batch
from jobs.training.runtime import make_runtime
from jobs.training.throughput import measure_matmul_flops, sync


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or on CPU the process's resident set (sampled)."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        else:
            self.process, self.running = psutil.Process(), True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.running = False
            self.thread.join()


def make_rows(config: ModelConfig, device: str, dtype: torch.dtype, compile_: bool, lr: float = 3e-4,
              custom_files: tuple[str, ...] = (), muon: bool = False):
    """name -> a function doing one training step on a (B, T+1) window."""
    rows = {}
    try:
        name, hf_model = build_hf_model(config, dropout=0.0)
        rows[f"transformers {name} (baseline)"] = hf_step(hf_model.to(device), device, dtype, lr)
    except ImportError:
        print("transformers is not installed: no baseline row (pip install -e '.[test]')")

    dtype_name = str(dtype).removeprefix("torch.")
    rows["torch twin, eager"] = job_step("torch", build_model(config, "torch"), device, dtype_name, False, lr)
    if compile_:
        rows["torch twin, torch.compile"] = job_step("torch", build_model(config, "torch"), device, dtype_name, True, lr)
    rows["custom (hand-written backward)"] = job_step("custom", build_model(config, "custom"), device, dtype_name,
                                                      False, lr)
    if muon:  # the same steps with Muon (torch.optim.Muon for the twin, ours for the custom model)
        rows["torch twin, eager, Muon"] = job_step("torch", build_model(config, "torch"), device, dtype_name, False,
                                                   lr, MuonSettings())
        rows["custom, Muon"] = job_step("custom", build_model(config, "custom"), device, dtype_name, False, lr,
                                        MuonSettings())
    for path in custom_files:  # another copy of a custom model's file, e.g. an earlier revision, timed in the same rounds
        spec = importlib.util.spec_from_file_location(f"custom_from_{Path(path).stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model_class = module.CustomLlama if config.architecture == "llama" else module.CustomTransformer
        rows[f"custom from {Path(path).name}"] = job_step("custom", model_class(config), device, dtype_name, False, lr)
    return rows


def job_step(model_type: str, model, device: str, dtype: str, compile_model: bool, lr: float,
             muon: MuonSettings | None = None):
    """The train job's step: make_runtime's train_step on one micro-batch, clipping at 1.0."""
    runtime = make_runtime(model_type, model, device, dtype, compile_model)
    runtime.configure_optimizer(lr, 0.1, (0.9, 0.95), muon)
    return lambda window: runtime.train_step([Batch(window, torch.ones_like(window, dtype=torch.bool))], 1.0)


def hf_step(model, device: str, dtype: torch.dtype, lr: float):
    """The baseline's step, the same work the usual autograd way (transformers' labels= loss)."""
    optimizer = configure_optimizer(model, lr, 0.1)

    def step(window):
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(window[:, :-1], labels=window[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-blocks", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--steps-per-round", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--custom-from", nargs="*", default=[], metavar="FILE",
                        help="also time the CustomTransformer (CustomLlama with --architecture llama) of these "
                             "copies of a custom model's file (before/after a change: git show "
                             "REV:model_zoo/custom_transformer.py > before.py)")
    parser.add_argument("--muon", action="store_true", help="also the twin's and the custom model's steps with Muon")
    parser.add_argument("--architecture", default="gpt2", choices=["gpt2", "llama"],
                        help="llama: n_kv_heads = n_heads / 2, d_ffn = 8/3 d_model (rounded to 8), no biases")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    llama = {"architecture": "llama", "n_kv_heads": max(1, args.n_heads // 2)} if args.architecture == "llama" else {}
    d_ffn = 8 * round(8 * args.d_model / 3 / 8) if llama else 4 * args.d_model
    config = ModelConfig(
        vocab_size=args.vocab_size, d_model=args.d_model, n_heads=args.n_heads, n_blocks=args.n_blocks,
        d_ffn=d_ffn, max_seq_len=args.seq_len, **llama,
    )
    B, T = args.batch_size, args.seq_len
    batches = [torch.randint(0, config.vocab_size, (B, T + 1), device=args.device) for _ in range(args.steps_per_round)]

    peak = measure_matmul_flops(args.device, dtype)
    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.dtype}; measured matmul peak "
          f"{peak / 1e9:,.1f} GFLOP/s")
    print(f"model: {count_parameters(config):,} parameters, {flops_per_token(config):,} training FLOPs/token; "
          f"batch {B} x {T}\n")

    rows = make_rows(config, args.device, dtype, compile_=not args.no_compile, custom_files=tuple(args.custom_from),
                     muon=args.muon)
    round_seconds = {name: [] for name in rows}
    peak_memory = {}
    for name, step in rows.items():  # warm-up (and compilation) outside the timed rounds
        with PeakMemory(args.device) as memory:
            for _ in range(2):
                step(batches[0])
            sync(args.device)
        peak_memory[name] = memory.peak
    order, shuffle = list(rows), random.Random(0).shuffle
    for _ in range(args.rounds):
        # A new (seeded) order every round: a row's speed depends on what ran just before it (the allocator
        # reuses memory the previous row freed), so no row should always follow the same other row.
        shuffle(order)
        for name in order:
            step = rows[name]
            sync(args.device)
            start = time.perf_counter()
            for window in batches:
                step(window)
            sync(args.device)
            round_seconds[name].append(time.perf_counter() - start)

    tokens_per_round = B * T * len(batches)
    throughput = {name: tokens_per_round / statistics.median(s) for name, s in round_seconds.items()}
    baseline = next(iter(throughput.values()))
    eager = throughput["torch twin, eager"]
    print(f"{'model':<42}{'tokens/s':>10}{'vs baseline':>13}{'vs eager':>10}{'MFU':>7}{'peak mem':>12}")
    for name, tps in throughput.items():
        mfu = tps * flops_per_token(config) / peak
        memory = f"{peak_memory[name] / 2**20:,.0f} MiB"
        print(f"{name:<42}{tps:>10,.0f}{tps / baseline:>12.2f}x{tps / eager:>9.2f}x{mfu:>7.0%}{memory:>12}")
    mem_note = "CUDA allocator peak" if args.device.startswith("cuda") else "process resident-set peak while the row ran (cumulative: rows run in order)"
    print(f"\npeak mem: {mem_note}")


if __name__ == "__main__":
    main()
