"""Quality per compute: our GPT-2 and Llama twins against transformers' GPT2LMHeadModel and LlamaForCausalLM,
same data, same time budget, in one process.

    python -m bench.quality                      # configs/tinystories_cpu.yaml and tinystories_llama_cpu.yaml, 12 min each
    python -m bench.quality --configs configs/tinystories_cpu.yaml --minutes 2
    python -m bench.quality --seeds 3 --only-ours  # each of our models 3 times: the median and spread
    python -m bench.quality --seeds 3 --only-transformers  # the same for transformers' two models

For each config, ours (the torch twin) and transformers' model of the same architecture get the same
dimensions, dropout, tokenizer, data windows, optimizer settings (AdamW with decay on matrices only, or with
training.optimizer muon, Muon for the blocks' matrices: model_zoo/optimizer.py; transformers' GPT-2 stores its
matrices as (in, out), so there Muon's shape scale sqrt(max(1, rows/cols)) falls on the other MLP matrix),
schedule, gradient clipping and validation batches, one after the other. Each trains until the budget is spent
(warmup in steps, decay following elapsed time, as the train job does with training.max_time_minutes), so a
faster model gets more steps: that is the point. Then each is evaluated on the whole validation split and on
the Zorro grammar minimal pairs (--suite; jobs/minimal_pairs.py, the same scorer for all four). Prints losses in
nats/token, bits per byte, Zorro accuracy, and how long scoring the suite took. (transformers' Llama has attention dropout only: with dropout > 0 it
drops less than ours, which also drops the embeddings and the residual branches.)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from jobs.config import load_config
from jobs.errors import InputError
from jobs.data import pipeline
from jobs.data.windows import TokenStream, TrainWindows, validation_batches
from jobs.training.objectives import NextTokenLoss
from jobs.training.validation import validation_loss
from jobs.training.runtime import make_runtime
from model_zoo.build import build_model
from jobs.training.schedule import lr_scale
from model_zoo.config import count_parameters
from model_zoo.optimizer import set_lr_scale
from jobs.minimal_pairs import read_suite, score_suite


class HFRuntime:
    """A transformers causal LM behind the same two calls the benchmark makes of a ModelRuntime."""

    objective = NextTokenLoss()  # what validation_loss weighs batches by

    def __init__(self, config, tc):
        from model_zoo.build import build_hf_model

        from model_zoo.optimizer import configure_optimizer

        _, self.model = build_hf_model(config)
        self.optimizer = configure_optimizer(self.model, tc.learning_rate, tc.weight_decay, (tc.beta1, tc.beta2),
                                             muon=tc.muon_settings())

    def set_lr_scale(self, scale):
        set_lr_scale(self.optimizer, scale)

    def train_step(self, batches, max_grad_norm):
        self.model.train()
        (batch,) = batches
        loss = self._loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), 0.0

    def _loss(self, batch):
        # The same loss as ours over the same T predictions per window (the models' own `labels=` path
        # would shift inside the window and score only T - 1); text: every token scored
        logits = self.model(batch.tokens[:, :-1]).logits  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.tokens[:, 1:].flatten())

    @torch.no_grad()
    def loss(self, batch):
        self.model.eval()
        return float(self._loss(batch))


class AsOurs(torch.nn.Module):
    """A transformers causal LM behind our models' forward, `model(idx) -> (logits, loss)`, for the suite scorer."""

    def __init__(self, hf_model, config):
        super().__init__()
        self.hf_model, self.config = hf_model, config

    def forward(self, idx, targets=None):
        return self.hf_model(idx).logits, None


def train_for(make_runtime, tokens, val_tokens, cfg, T, minutes: float) -> tuple[float, int, float, object]:
    """Train until the time budget is spent (warmup in steps, decay following elapsed time, as the train job
    does); then evaluate. Returns (validation loss, steps, tokens/s, the runtime)."""
    tc = cfg.training
    torch.manual_seed(tc.seed)
    runtime = make_runtime()
    loader = TrainWindows(TokenStream(tokens, T), tc.batch_size, seed=tc.seed)
    budget = minutes * 60
    start = time.perf_counter()
    step = 0
    while (elapsed := time.perf_counter() - start) < budget:
        runtime.set_lr_scale(lr_scale(step + 1, tc.max_steps or 100_000, tc, elapsed, budget))
        runtime.train_step([loader.next_batch()], tc.max_grad_norm)
        step += 1
    elapsed = time.perf_counter() - start
    loss, _ = validation_loss(runtime, validation_batches(TokenStream(val_tokens, T), tc.batch_size))
    return loss, step, step * tc.batch_size * T / elapsed, runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+",
                        default=["configs/tinystories_cpu.yaml", "configs/tinystories_llama_cpu.yaml"])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suite", default="../shared/data/zorro", help="minimal-pair suite scored after training")
    parser.add_argument("--seeds", type=int, default=1, help="runs of each model, with training.seed + 0, 1, ...: the "
                        "table shows each model's median and spread (Zorro moves several points between seeds)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only-ours", action="store_true", help="skip transformers' models")
    which.add_argument("--only-transformers", action="store_true", help="skip our models")
    args = parser.parse_args()
    if not 1 <= args.seeds <= 100 or not 0 < args.minutes <= 24 * 60 or not 1 <= args.threads <= 1024:
        raise InputError("--seeds must be 1..100, --minutes above 0 and at most a day, --threads 1..1024")
    torch.set_num_threads(args.threads)
    suite = read_suite(args.suite)
    configs = {config_file: load_config(config_file) for config_file in args.configs}
    for cfg in configs.values():  # every config's data files exist, before the first 12 minutes of training
        pipeline.DataLayout.of(cfg.data)
    runs: dict[str, list[tuple]] = {}  # model name: (params, loss, bits/byte, steps, tokens/s, score) per seed
    for cfg in configs.values():
        prepared = pipeline.prepare(cfg.data)
        cfg = cfg.model_copy(update={"model": {**cfg.model, "vocab_size": prepared.tokenizer.vocab_size}})
        config, T = cfg.model_config_, cfg.model_config_.max_seq_len
        tokens, val_tokens = prepared.open("train"), prepared.open("validation")
        baseline = "LlamaForCausalLM" if config.architecture == "llama" else "GPT2LMHeadModel"
        models = [(f"transformers {baseline}", lambda config, cfg: HFRuntime(config, cfg.training)),
                  (f"ours: {config.architecture} torch twin", _ours)]
        models = models[1:] if args.only_ours else models[:1] if args.only_transformers else models
        for seed in range(args.seeds):
            seeded = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": cfg.training.seed + seed})})
            for name, make in models:
                loss, steps, tps, runtime = train_for(lambda: make(config, seeded), tokens, val_tokens, seeded, T,
                                                      args.minutes)
                model = AsOurs(runtime.model, config) if isinstance(runtime, HFRuntime) else runtime.model
                score = score_suite(model, prepared.tokenizer, suite)
                runs.setdefault(name, []).append((count_parameters(config), loss, prepared.bits_per_byte(loss), steps,
                                                  tps, score))
                print(f"{name} (seed +{seed}): val loss {loss:.4f} after {steps} steps ({tps:,.0f} tokens/s); "
                      f"{suite.name} {score.accuracy:.1%} (scored in {score.seconds:.0f} s, "
                      f"{score.tokens / score.seconds:,.0f} tokens/s)", flush=True)
                print(score.table(), flush=True)
    print(f"\n{args.minutes:g} minutes each, {args.threads} threads, {args.seeds} seed(s) each, "
          f"{', '.join(args.configs)}; {suite.name}: {suite.n_pairs:,} pairs"
          + ("; median (min-max) over the seeds" if args.seeds > 1 else ""))
    print(f"{'model':<36}{'params':>11}{'val loss':>26}{'bits/byte':>11}{'steps':>8}{'tokens/s':>10}"
          f"{suite.name[:8]:>22}")
    for name, rows in runs.items():
        params, losses, bpbs, steps, tps, scores = zip(*rows)
        accuracies = [score.accuracy for score in scores]
        print(f"{name:<36}{params[0]:>11,}{_spread(losses, '.4f'):>26}{statistics.median(bpbs):>11.4f}"
              f"{statistics.median(steps):>8.0f}{statistics.median(tps):>10,.0f}{_spread(accuracies, '.1%'):>22}")


def _spread(values, spec: str) -> str:
    """The median, and (min-max) when there is more than one value."""
    median = format(statistics.median(values), spec)
    return median if len(values) == 1 else f"{median} ({min(values):{spec}}-{max(values):{spec}})"


def _ours(config, cfg):
    runtime = make_runtime("torch", build_model(config, "torch"), "cpu")
    tc = cfg.training
    runtime.configure_optimizer(tc.learning_rate, tc.weight_decay, (tc.beta1, tc.beta2), tc.muon_settings())
    return runtime


if __name__ == "__main__":
    from jobs.errors import exit_on_input_error

    exit_on_input_error(main)
