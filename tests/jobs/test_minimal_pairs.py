"""Grammar minimal pairs (jobs/minimal_pairs.py): reading Zorro and BLiMP suites, refusing bad ones with the file
and line, and scoring: our summed sentence log-probabilities equal transformers' on the exported weights, the
torch and custom twins score alike, batching changes nothing, and a tie is a wrong answer."""

import json

import numpy as np
import pytest
import torch

from conftest import ZORRO_PAIRS, write_zorro
from jobs.minimal_pairs import SuiteError, read_suite, score_suite, sentence_logprobs
from model_zoo.build import build_model
from model_zoo.config import ModelConfig

def test_zorro_folder_reads_as_paradigms_and_phenomena_with_a_content_hash(tmp_path):
    suite = read_suite(write_zorro(tmp_path / "zorro"))
    assert suite.name == "zorro" and suite.layout == "zorro" and suite.n_pairs == 5
    by_name = {p.name: p for p in suite.paradigms}
    assert by_name["agreement-det_noun"].good == ("the dog is big .", "a cat ran .")
    assert by_name["agreement-det_noun"].bad == ("the dogs is big .", "a cats ran .")
    # the phenomenon is the name before its last '-' (Zorro's "island-effects" holds a '-' itself)
    assert {p.phenomenon for p in suite.paradigms} == {"agreement", "island-effects"}
    same = read_suite(tmp_path / "zorro")
    assert same.sha256 == suite.sha256
    (tmp_path / "zorro" / "agreement-det_noun.txt").write_text("a cats ran .\na cat ran .\n")
    assert read_suite(tmp_path / "zorro").sha256 != suite.sha256, "the hash follows the content"


def test_blimp_jsonl_reads_paradigms_from_uid_and_phenomena_from_linguistics_term(tmp_path):
    folder = tmp_path / "blimp"
    folder.mkdir()
    records = [{"sentence_good": good, "sentence_bad": bad, "UID": "det_noun_agreement_1",
                "linguistics_term": "determiner_noun_agreement"} for bad, good in ZORRO_PAIRS[:2]]
    (folder / "det_noun_agreement_1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "plain.jsonl").write_text(json.dumps({"sentence_good": "she sees .", "sentence_bad": "she see ."}) + "\n\n")
    suite = read_suite(folder)
    assert suite.layout == "blimp" and suite.n_pairs == 3
    by_name = {p.name: p for p in suite.paradigms}
    assert by_name["det_noun_agreement_1"].phenomenon == "determiner_noun_agreement"
    assert by_name["plain"].phenomenon == "plain" and by_name["plain"].good == ("she sees .",)


@pytest.mark.parametrize("files, words", [
    ({"a-b.txt": b"one\ntwo\nthree\n"}, ["a-b.txt:3", "odd number of lines"]),
    ({"a-b.txt": b"bad\n\nbad\ngood\n"}, ["a-b.txt:2", "empty"]),
    ({"a-b.txt": b"bad\n\xff\xfe good\n"}, ["a-b.txt:2", "not UTF-8"]),
    ({"a-b.txt": b""}, ["a-b.txt", "empty"]),
    ({"a-b.txt": b"x" * 1001 + b"\ngood\n"}, ["a-b.txt:1", "over 1000"]),
    ({"p.jsonl": b'{"sentence_good": "a", "sentence_bad": "b"}\n{oops\n'}, ["p.jsonl:2", "not JSON"]),
    ({"p.jsonl": b'{"sentence_good": "a"}\n'}, ["p.jsonl:1", "sentence_bad is missing"]),
    ({"p.jsonl": b'["a", "b"]\n'}, ["p.jsonl:1", "JSON object"]),
    ({"p.jsonl": b'{"sentence_good": "a", "sentence_bad": "b", "UID": 3}\n'}, ["p.jsonl:1", "UID is not a string"]),
    ({"a-b.txt": b"bad\ngood\n", "p.jsonl": b'{"sentence_good": "a", "sentence_bad": "b"}\n'}, ["mixes"]),
    ({"notes.csv": b"a,b\n"}, ["notes.csv", "not a paradigm file"]),
    ({"LICENSE": b"MIT\n"}, ["no paradigm files"]),
    ({"a.jsonl": b'{"sentence_good": "a", "sentence_bad": "b", "UID": "x"}\n',
      "b.jsonl": b'{"sentence_good": "a", "sentence_bad": "b", "UID": "x"}\n'}, ["'x'", "two files"]),
])
def test_a_bad_suite_is_refused_naming_the_file_and_line(tmp_path, files, words):
    folder = tmp_path / "suite"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(SuiteError) as error:
        read_suite(folder)
    assert all(word in str(error.value) for word in words), str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_suite_is_refused(tmp_path):
    with pytest.raises(SuiteError, match="not found"):
        read_suite(tmp_path / "nowhere")


class Tokenizer:
    """Characters as tokens (id = byte + 1; 0 is <|endoftext|>): enough to score sentences with a real model."""

    eot_id, path = 0, "bytes"

    def encode_texts(self, texts):
        return [[b + 1 for b in text.encode()] for text in texts]


def trained(architecture: str, model_type: str = "torch", steps: int = 30):
    """A small model trained for a few steps on the pairs' grammatical sentences (so its scores are not flat),
    and its twin of the other type with the same weights."""
    config = ModelConfig(architecture=architecture, vocab_size=257, d_model=32, n_heads=4,
                         n_kv_heads=2 if architecture == "llama" else None, n_blocks=2, d_ffn=64, max_seq_len=64)
    torch.manual_seed(0)
    model = build_model(config, "torch")
    text = " ".join(good for _, good in ZORRO_PAIRS).encode()
    ids = torch.tensor([[0] + [b + 1 for b in text[:63]]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    twin = build_model(config, "custom")
    twin.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    twin.eval()
    return config, model, twin


SENTENCES = [s for pair in ZORRO_PAIRS for s in pair] + ["a", "the dog is big and the cat is small ."]


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_our_sentence_logprobs_equal_transformers_on_the_exported_weights(architecture, tmp_path):
    transformers = pytest.importorskip("transformers")
    from model_zoo.hf_gpt2 import export_gpt2
    from model_zoo.hf_llama import export_llama

    config, model, twin = trained(architecture)
    export = export_llama if architecture == "llama" else export_gpt2
    folder = export(model.state_dict(), config, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = []
    with torch.no_grad():
        for sentence in SENTENCES:  # one sentence at a time, unbatched: log p(token | <|endoftext|>, earlier tokens)
            ids = torch.tensor([[0] + [b + 1 for b in sentence.encode()]])
            logprobs = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
            expected.append(float(logprobs.gather(-1, ids[0, 1:, None]).sum()))
    ours, tokens = sentence_logprobs(model, Tokenizer(), SENTENCES)
    assert tokens == sum(len(s.encode()) for s in SENTENCES)
    assert ours == pytest.approx(expected, abs=1e-4)
    assert np.ptp(ours) > 5, "the scores differ from sentence to sentence (the check is not of flat numbers)"
    custom, _ = sentence_logprobs(twin, Tokenizer(), SENTENCES)
    assert custom == pytest.approx(ours, abs=1e-4), "the custom twin scores alike"


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_batching_changes_no_score_and_the_suite_accuracy_follows_the_scores(architecture, tmp_path):
    config, model, twin = trained(architecture)
    one_by_one = [sentence_logprobs(model, Tokenizer(), [s])[0][0] for s in SENTENCES]
    for max_batch_tokens in (8, 64, 4096):  # one sentence per batch, a few, all at once (padded to the longest)
        batched, _ = sentence_logprobs(model, Tokenizer(), SENTENCES, max_batch_tokens=max_batch_tokens)
        assert batched == pytest.approx(one_by_one, abs=1e-4)
    suite = read_suite(write_zorro(tmp_path / "zorro", {"agreement-a": ZORRO_PAIRS[:3], "other-b": ZORRO_PAIRS[3:],
                                                        "tie-c": [("a cat ran .", "a cat ran .")]}))
    score = score_suite(model, Tokenizer(), suite)
    logp = dict(zip(SENTENCES, one_by_one))
    expected_a = sum(logp[good] > logp[bad] for bad, good in ZORRO_PAIRS[:3])
    assert score.per_paradigm["agreement-a"] == (expected_a, 3)
    assert score.per_paradigm["tie-c"] == (0, 1), "a tie is not a right answer"
    assert score.pairs == 5 and score.accuracy == pytest.approx(sum(r for r, _ in score.per_paradigm.values()) / 5)
    assert score_suite(twin, Tokenizer(), suite).per_paradigm == score.per_paradigm, "both model types agree"
    metrics = score.metrics()
    assert metrics["zorro/accuracy"] == score.accuracy and "zorro/phenomenon/agreement" in metrics
    assert "zorro/paradigm/tie-c" in metrics and "overall" in score.table()


def test_a_sentence_longer_than_the_context_is_refused_by_name():
    _, model, _ = trained("gpt2", steps=1)
    with pytest.raises(Exception, match="more than the model's context"):
        sentence_logprobs(model, Tokenizer(), ["x" * 80])


def test_a_byte_order_mark_is_dropped_the_same_way_in_both_layouts_and_names_stay_metric_keys(tmp_path):
    from mlflow.utils.validation import _validate_metric_name

    plain = read_suite(write_zorro(tmp_path / "plain"))
    marked = write_zorro(tmp_path / "marked")
    for file in marked.glob("*.txt"):
        file.write_bytes(b"\xef\xbb\xbf" + file.read_bytes())
    assert [p.bad for p in read_suite(marked).paradigms] == [p.bad for p in plain.paradigms]
    blimp = tmp_path / "blimp.jsonl"
    blimp.write_bytes(b"\xef\xbb\xbf" + json.dumps({"sentence_good": "a cat ran .", "sentence_bad": "a cats ran ."}).encode())
    assert read_suite(blimp).paradigms[0].good == ("a cat ran .",)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SuiteError, match="deep.jsonl:1: not JSON this program reads"):
        read_suite(deep)
    for name in ("-", "..", "."):  # files named -.txt, ...txt, ..txt: their names become safe metric keys
        odd = tmp_path / f"odd{len(name)}{name.replace('.', 'd')}"
        odd.mkdir()
        (odd / f"{name}.txt").write_text("a cats ran .\na cat ran .\n")
        suite = read_suite(odd / f"{name}.txt")
        for key in [f"{suite.name}/accuracy", f"{suite.name}/paradigm/{suite.paradigms[0].name}"]:
            _validate_metric_name(key)
