"""Tokenization throughput: text to token file, our pipeline against a plain encode loop, in one process.

    python -m bench.tokenization [--train-file ../shared/data/tinystories/train.txt] [--repeat 8]

Both sides encode the same documents with the same 4096-token BPE and write the same uint16 file:
  - pipeline: jobs.data.shards.encode_split, what prepare-data runs (batches of documents through tokenizers'
    parallel encode_batch_fast, which also skips the character offsets; the text's bytes counted in the same pass)
  - baseline: a single-process `tokenizer.encode(doc)` loop, appending ids to a list, then one write
The corpus is repeated --repeat times so each side runs for a few seconds. Also prints bytes per token of our
tokenizer against GPT-2's, when GPT-2's tokenizer is in the local Hugging Face cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from jobs.config import DataConfig
from jobs.data import pipeline, shards, sources
from jobs.data.tokenizer import load_tokenizer

DEFAULT_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "train.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-file", default=str(DEFAULT_TRAIN))
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        config = DataConfig(dataset="local", train_files=[args.train_file], assets_dir=tmp, vocab_size=4096)
        layout = pipeline.DataLayout.of(config)
        documents = sources.load_documents(config, layout.cache_dir)
        tokenizer = pipeline.train_tokenizer(layout, documents)
        import datasets

        corpus = datasets.concatenate_datasets([documents["train"]] * args.repeat)
        texts = list(corpus["text"])
        megabytes = sum(len(t.encode()) for t in texts) / 1e6
        print(f"\ncorpus: {len(texts):,} documents, {megabytes:.1f} MB ({args.repeat} x {args.train_file}), "
              f"{os.cpu_count()} CPUs\n")

        start = time.perf_counter()
        n_pipeline = shards.encode_split(corpus, tokenizer, Path(tmp) / "pipeline.bin", desc="pipeline").tokens
        pipeline_seconds = time.perf_counter() - start

        start = time.perf_counter()
        ids: list[int] = []
        for text in texts:
            ids.extend(tokenizer.tokenizer.encode(text).ids)
            ids.append(tokenizer.eot_id)
        np.asarray(ids, dtype=np.uint16).tofile(Path(tmp) / "baseline.bin")
        baseline_seconds = time.perf_counter() - start

        same = np.array_equal(np.fromfile(Path(tmp) / "pipeline.bin", dtype=np.uint16),
                              np.fromfile(Path(tmp) / "baseline.bin", dtype=np.uint16))
        print(f"\n{'':<44}{'seconds':>9}{'MB/s':>9}{'tokens':>13}")
        print(f"{'plain encode loop, one process (baseline)':<44}{baseline_seconds:>9.2f}"
              f"{megabytes / baseline_seconds:>9.1f}{len(ids):>13,}")
        print(f"{'our pipeline (encode_split)':<44}{pipeline_seconds:>9.2f}"
              f"{megabytes / pipeline_seconds:>9.1f}{n_pipeline:>13,}")
        print(f"speed-up {baseline_seconds / pipeline_seconds:.2f}x; identical token files: {same}")

        sample = texts[: len(texts) // args.repeat]
        sample_bytes = sum(len(t.encode()) for t in sample)
        ours = sum(len(e.ids) for e in tokenizer.tokenizer.encode_batch(sample))
        print(f"\nbytes/token on {args.train_file}: ours (BPE 4096) {sample_bytes / ours:.2f}", end="")
        try:
            gpt2 = load_tokenizer("gpt2")
            theirs = sum(len(e.ids) for e in gpt2.tokenizer.encode_batch(sample))
            print(f", GPT-2 (50257) {sample_bytes / theirs:.2f}")
        except Exception as error:
            print(f"; GPT-2's tokenizer: not available here ({str(error).splitlines()[0][:90]})")


if __name__ == "__main__":
    from jobs.errors import exit_on_input_error

    exit_on_input_error(main)
