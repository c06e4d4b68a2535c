"""Every benchmark runs end to end at toy sizes and prints its table (the figures themselves are measured alone on
the machine, never in a test: see README). A benchmark that breaks is found here, not the day someone needs it."""

import sys

import pytest
import yaml

from conftest import make_checkpoint, write_stories


def run_bench(module, argv: list, monkeypatch, capsys) -> str:
    """Standard output of `python -m bench.<module> ARGV`, run in this process."""
    import importlib

    bench = importlib.import_module(f"bench.{module}")
    monkeypatch.setattr(sys, "argv", [f"bench.{module}", *map(str, argv)])
    bench.main()
    return capsys.readouterr().out


def test_generation_prints_cache_against_recompute_with_the_same_tokens(monkeypatch, capsys):
    out = run_bench("generation", ["--new-tokens", 6, "--rounds", 1, "--threads", 1], monkeypatch, capsys)
    assert "KV cache (s)" in out and out.count("True") >= 3, out  # both types: cached tokens = recomputed ones
    assert "both model types give the same tokens: True" in out


def test_train_step_prints_each_row_against_transformers(monkeypatch, capsys):
    out = run_bench("train_step", ["--batch-size", 2, "--seq-len", 16, "--d-model", 32, "--n-blocks", 1,
                                   "--n-heads", 2, "--vocab-size", 64, "--rounds", 1, "--no-compile",
                                   "--threads", 1, "--muon"], monkeypatch, capsys)
    assert "transformers" in out.lower() and "custom" in out.lower(), out
    assert "torch twin, eager, Muon" in out and "custom, Muon" in out


def test_tracking_prints_the_overhead_of_logging(monkeypatch, capsys):
    out = run_bench("tracking", ["--blocks", 2, "--steps-per-block", 2, "--flush-every", 2, "--threads", 1],
                    monkeypatch, capsys)
    assert "overhead" in out.lower(), out


def test_tokenization_prints_pipeline_against_a_plain_loop(tmp_path, monkeypatch, capsys):
    stories = write_stories(tmp_path, n=300)
    out = run_bench("tokenization", ["--train-file", stories, "--repeat", 1], monkeypatch, capsys)
    assert "pipeline" in out and "baseline" in out, out


def test_export_compares_our_logits_with_the_loaders(tmp_path, tokenizer_folder, monkeypatch, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder)
    text = write_stories(tmp_path, n=50)
    out = run_bench("export", ["--model", checkpoint, "--text-file", text, "--windows", 2], monkeypatch, capsys)
    assert "gguf" in out and "hf" in out and "transformers" in out, out


def test_chat_scores_base_chat_and_preference_rows(tmp_path, tokenizer_folder, monkeypatch, capsys):
    stories = write_stories(tmp_path, n=200)
    config = tmp_path / "chat.yaml"
    config.write_text(yaml.safe_dump({
        "experiment_name": "bench_chat", "model": {"max_seq_len": 64},
        "data": {"dataset": "local", "train_files": [str(stories)], "assets_dir": str(tmp_path / "assets")},
        "chat": {"base": "models:/x@champion", "val_conversations": 6}}))
    base = make_checkpoint(tmp_path / "base", tokenizer_folder, chat=False)
    chat = make_checkpoint(tmp_path / "chat", tokenizer_folder)
    out = run_bench("chat", ["--base", base, "--chat", chat, "--pref", chat, "--config", config, "--max-tokens", 4,
                             "--show", 1], monkeypatch, capsys)
    rows = [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["base"], ["fine-tuned"],
                                                                                 ["preference"])]
    assert rows == ["base", "fine-tuned", "preference"], out
    assert "preference / fine-tuned: words used" in out or "the base model used none" in out


@pytest.mark.slow
def test_serving_prints_batching_against_one_at_a_time(tmp_path, tokenizer_folder, monkeypatch, capsys):
    from conftest import free_port

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder)
    port = free_port()
    out = run_bench("serving", ["--model", checkpoint, "--clients", 1, 2, "--requests", 1, "--max-tokens", 4,
                                "--rounds", 1, "--port", port, "--burst-budgets", 64], monkeypatch, capsys)
    assert "batching" in out and "one at a time" in out and "worst gap" in out, out


@pytest.mark.slow
def test_quality_trains_each_model_per_seed_and_prints_median_and_spread(tmp_path, monkeypatch, capsys):
    """bench.quality at toy size (2 seconds a model): ours and transformers' of a Muon config, 2 seeds each."""
    from conftest import tiny, write_zorro

    cfg = tiny(tmp_path, optimizer="muon", max_steps=100_000).to_dict()
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    write_zorro(tmp_path / "zorro")
    out = run_bench("quality", ["--configs", config_file, "--minutes", 0.03, "--seeds", 2, "--suite",
                                tmp_path / "zorro"], monkeypatch, capsys)
    assert out.count("(seed +0)") == 2 and out.count("(seed +1)") == 2
    table = out.split("median (min-max) over the seeds")[1].splitlines()
    rows = [line for line in table if line.startswith(("transformers GPT2LMHeadModel", "ours: gpt2 torch twin"))]
    assert len(rows) == 2 and all(row.count("(") == 2 for row in rows), "median (min-max) of loss and accuracy"
