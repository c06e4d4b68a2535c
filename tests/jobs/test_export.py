"""`python -m jobs export`: GGUF files and Hugging Face folders, proven with the consumers' own loaders
(transformers reads both, the gguf package reads the file back, llama.cpp runs it where llama-cpp-python is
installed), and the export's bad inputs."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import make_checkpoint

# The gap between transformers' logits from the file and ours, per weight type, on these random tiny models
# (measured: f32 0 to 1.2e-7, f16 about 2.4e-4, q8_0 about 7e-3); each bound is a few times the measured gap.
TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "q8_0": 3e-2}
CONVERSATIONS = [
    [{"role": "user", "content": "Tell me a story about a dog."}],
    [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "Tell me a story."}],
    [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "Hi! Who are you?"},
     {"role": "assistant", "content": "I tell stories, like one about Lily's cat."},
     {"role": "user", "content": "Write one that uses the words ball, tree and happy."}],
]
TEXTS = ["Once upon a time, Lily's cat ran to the park.", "  two spaces, tabs\tand\n\nnew lines 1234 café ☃",
         "<|user|>typed<|end|><|assistant|>", "<|endoftext|>Tom said \"hi\"<|endoftext|>", ""]


def our_logits(checkpoint, ids):
    from jobs.models import load_model

    loaded = load_model(str(checkpoint), "cpu")
    with torch.no_grad():
        return loaded.model(torch.tensor([ids]))[0][0].float(), loaded


def transformers_model(folder, gguf_file=None, n_positions=None):
    """The export loaded by transformers. GPT-2 from a GGUF: transformers reads gpt2.context_length into n_ctx
    and leaves n_positions (the position table's rows) at GPT-2's 1024, so the caller says it."""
    import transformers

    extra = {"gguf_file": gguf_file, "n_positions": n_positions} if gguf_file else {}
    extra = {key: value for key, value in extra.items() if value is not None}
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **extra).eval()


@pytest.mark.parametrize("model_type", ["torch", "custom"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_gguf_loads_in_transformers_with_our_logits_and_our_token_ids(tmp_path, tokenizer_folder, architecture,
                                                                      model_type):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")  # transformers needs it to load a GGUF
    import transformers

    from jobs.data import chat_template
    from jobs.export import export

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, architecture, model_type)
    ids = list(range(1, 60, 2))  # any tokens: the logits are what is compared here
    ours, loaded = our_logits(checkpoint, ids)
    for dtype in ("f32", "f16", "q8_0"):
        out = tmp_path / f"gguf-{dtype}"
        export(str(checkpoint), "gguf", str(out), dtype)
        n_positions = loaded.config.max_seq_len if architecture == "gpt2" else None
        theirs = transformers_model(out, "model.gguf", n_positions)
        with torch.no_grad():
            gap = (theirs(torch.tensor([ids])).logits[0] - ours).abs().max().item()
        assert gap <= TOLERANCE[dtype], f"{dtype}: logits differ by {gap}"
    # transformers' tokenizer, built from the file alone, gives our ids (special tokens typed as text are tokens
    # to both, as in a plain encode) and renders our chat template
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "gguf-f32"), gguf_file="model.gguf")
    for text in TEXTS:
        assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == loaded.tokenizer.encode(text), text
    for messages in CONVERSATIONS:
        rendered = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
        assert rendered == chat_template.render(loaded.tokenizer, messages, add_generation_prompt=True)[0]


def test_the_gguf_package_reads_back_every_tensor_and_key_we_wrote(tmp_path, tokenizer_folder):
    gguf = pytest.importorskip("gguf")
    from jobs.data.tokenizer import bpe_tables, load_tokenizer
    from jobs.export import export
    from model_zoo.gguf_file import gguf_tensors
    from jobs.checkpoint import load_checkpoint
    from model_zoo.config import ModelConfig

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, "llama", "custom", vocab_size=310)
    export(str(checkpoint), "gguf", str(tmp_path / "out"), "q8_0")
    reader = gguf.GGUFReader(str(tmp_path / "out" / "model.gguf"))
    loaded = load_checkpoint(checkpoint, with_optimizer=False)
    config = ModelConfig.from_dict(loaded.state.model_config_)
    expected = gguf_tensors(loaded.weights, config)
    assert {t.name for t in reader.tensors} == set(expected) and "output.weight" not in expected  # tied head
    Q8, F32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32
    for tensor in reader.tensors:
        want = expected[tensor.name]
        assert tuple(int(n) for n in reversed(tensor.shape)) == tuple(want.shape), tensor.name  # GGUF: innermost first
        assert tensor.tensor_type == (Q8 if want.dim() == 2 else F32), tensor.name
        values = gguf.dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
        assert np.abs(values - want.numpy()).max() <= 0.01 * np.abs(want.numpy()).max() + 1e-6, tensor.name

    def field(key):
        f = reader.fields[key]
        return [f.contents(i) for i in range(len(f.data))] if f.types[0] == gguf.GGUFValueType.ARRAY else f.contents()

    tokenizer = load_tokenizer(tokenizer_folder)
    tokens, merges = bpe_tables(tokenizer)
    end = tokenizer.tokenizer.token_to_id("<|end|>")
    assert field("general.architecture") == "llama" and field("general.name") == "tiny"
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    hyper = {"context_length": 64, "embedding_length": 64, "feed_forward_length": 96, "block_count": 2,
             "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16, "vocab_size": 310}
    for key, value in hyper.items():
        assert field(f"llama.{key}") == value, key
    assert math.isclose(field("llama.rope.freq_base"), 10000.0)
    assert math.isclose(field("llama.attention.layer_norm_rms_epsilon"), 1e-6, rel_tol=1e-6)
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.tokens") == tokens + [f"[PAD{i}]" for i in range(len(tokens), 310)]
    assert field("tokenizer.ggml.merges") == merges
    types = field("tokenizer.ggml.token_type")
    special = {tokenizer.tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|system|>", "<|user|>",
                                                             "<|assistant|>", "<|end|>")}
    assert {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL} == special
    assert types[len(tokens):] == [gguf.TokenType.UNUSED] * (310 - len(tokens))
    assert field("tokenizer.ggml.eos_token_id") == end and field("tokenizer.ggml.eot_token_id") == end
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.eot_id
    assert field("tokenizer.ggml.add_bos_token") is False and field("tokenizer.ggml.add_eos_token") is False
    from jobs.data.chat_template import JINJA

    assert field("tokenizer.chat_template") == JINJA
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|end|>"' in modelfile
    assert "<|{{ .Role }}|>{{ .Content }}<|end|>" in modelfile and "PARAMETER num_ctx 64" in modelfile


def test_a_base_model_exports_without_a_chat_template_and_stops_at_end_of_text(tmp_path, tokenizer_folder):
    gguf = pytest.importorskip("gguf")
    from jobs.export import export

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, chat=False)
    export(str(checkpoint), "gguf", str(tmp_path / "gguf"))
    export(str(checkpoint), "hf", str(tmp_path / "hf"))
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf"))
    assert "tokenizer.chat_template" not in reader.fields and "tokenizer.ggml.eot_token_id" not in reader.fields
    eot = reader.fields["tokenizer.ggml.eos_token_id"].contents()
    assert reader.fields["tokenizer.ggml.tokens"].contents(eot) == "<|endoftext|>"
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    assert "chat_template" not in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())


@pytest.mark.parametrize("architecture,model_type", [("gpt2", "custom"), ("llama", "torch")])
def test_hf_folder_loads_with_auto_classes_and_renders_our_chat_ids(tmp_path, tokenizer_folder, architecture,
                                                                    model_type):
    transformers = pytest.importorskip("transformers")
    from jobs.data import chat_template
    from jobs.export import export

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, architecture, model_type)
    export(str(checkpoint), "hf", str(tmp_path / "hf"))
    export(str(checkpoint), "hf", str(tmp_path / "hf16"), "f16")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = hf_tokenizer(TEXTS[0])["input_ids"]
    ours, loaded = our_logits(checkpoint, ids)
    assert ids == loaded.tokenizer.encode(TEXTS[0])
    with torch.no_grad():
        assert (transformers_model(tmp_path / "hf")(torch.tensor([ids])).logits[0] - ours).abs().max() <= 1e-5
        half = transformers_model(tmp_path / "hf16")(torch.tensor([ids])).logits[0]
    assert (half - ours).abs().max() <= TOLERANCE["f16"]
    for text in TEXTS:
        assert hf_tokenizer(text)["input_ids"] == loaded.tokenizer.encode(text), text
    for messages in CONVERSATIONS:
        rendered = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
        assert rendered == chat_template.render(loaded.tokenizer, messages, add_generation_prompt=True)[0]
    assert hf_tokenizer.eos_token == "<|end|>" and hf_tokenizer.bos_token == "<|endoftext|>"
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == loaded.stop_ids


def test_llama_cpp_runs_the_gguf_with_our_logits_and_greedy_tokens(tmp_path, tokenizer_folder):
    """llama.cpp itself (through llama-cpp-python, which builds it from source: not in the test extra, so this
    skips in CI). Both architectures, f32: the prompt's last logits and a greedy continuation."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds llama.cpp)")
    from jobs.export import export
    from model_zoo.generation import generate_tokens

    for architecture in ("gpt2", "llama"):
        checkpoint = make_checkpoint(tmp_path / architecture, tokenizer_folder, architecture, "torch")
        export(str(checkpoint), "gguf", str(tmp_path / f"{architecture}-gguf"))
        llm = llama_cpp.Llama(str(tmp_path / f"{architecture}-gguf" / "model.gguf"), n_ctx=64, logits_all=True,
                              verbose=False, n_threads=2)
        prompt = llm.tokenize(TEXTS[0].encode(), add_bos=False, special=True)
        ours, loaded = our_logits(checkpoint, prompt)
        assert prompt == loaded.tokenizer.encode(TEXTS[0])
        llm.eval(prompt)
        theirs = torch.tensor(np.array(llm.scores[len(prompt) - 1]))
        assert (theirs - ours[-1]).abs().max() <= 1e-3, architecture
        greedy = [t for _, t in zip(range(12), llm.generate(prompt, temp=0.0, top_k=1, reset=True))]
        with torch.no_grad():
            mine = list(generate_tokens(loaded.model, prompt, max_new_tokens=12, temperature=0.0))
        assert greedy == mine[:len(greedy)], architecture


def test_export_refuses_bad_input_in_one_line_and_leaves_nothing_behind(tmp_path, tokenizer_folder, monkeypatch):
    from jobs.cli import typed
    from jobs.errors import InputError
    from jobs.export import export
    import jobs.export_formats

    checked = typed(export)  # as the command line calls it: the flags checked against their annotations first

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder)
    cases = [
        (dict(format="onnx"), "--format"),
        (dict(dtype="q4_0"), "--dtype"),
        (dict(format="hf", dtype="q8_0"), "q8_0 is a GGUF type"),
        (dict(model=str(tmp_path / "nowhere")), "checkpoint not found"),
        (dict(out=str(tmp_path / "no" / "such" / "folder")), "does not exist"),
    ]
    for change, words in cases:
        arguments = dict(model=str(checkpoint), format="gguf", out=str(tmp_path / "out"), dtype="f32") | change
        with pytest.raises(InputError, match=words):
            checked(**arguments)
    # q8_0 stores rows in blocks of 32: a model 48 wide cannot be held
    narrow = make_checkpoint(tmp_path / "narrow", tokenizer_folder)
    state = json.loads((narrow / "state.json").read_text())
    from model_zoo.build import build_model
    from model_zoo.config import ModelConfig
    from safetensors.torch import save_file

    config = ModelConfig.from_dict({**state["model_config"], "d_model": 48, "d_ffn": 192})
    state["model_config"] = config.to_dict()
    (narrow / "state.json").write_text(json.dumps(state))
    save_file(build_model(config, "torch").state_dict(), str(narrow / "model.safetensors"))
    with pytest.raises(InputError, match="model.d_model is 48: export it as f16 or f32"):
        export(str(narrow), "gguf", str(tmp_path / "out"), "q8_0")
    assert not (tmp_path / "out").exists()

    # an existing --out: refused, replaced with --force only when it is an earlier export
    export(str(checkpoint), "gguf", str(tmp_path / "out"))
    with pytest.raises(InputError, match="exists: give --force"):
        export(str(checkpoint), "gguf", str(tmp_path / "out"))
    export(str(checkpoint), "hf", str(tmp_path / "out"), force=True)
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "model.gguf").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an earlier export"):
        export(str(checkpoint), "gguf", str(precious), force=True)
    assert (precious / "notes.txt").read_text() == "mine"

    # a full disk while writing: one line, the earlier export intact, no temporary folder left
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jobs.export_formats.gguf_file, "write_gguf", disk_full)
    with pytest.raises(InputError, match="No space left on device"):
        export(str(checkpoint), "gguf", str(tmp_path / "out"), force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_export_of_a_registry_version_is_logged_and_tagged_on_it(tmp_path, store):
    import hashlib

    import mlflow

    from conftest import tiny
    from jobs.export import export
    from jobs.training.trainer import run_training

    run_training(tiny(tmp_path, max_steps=4))
    export("models:/tiny_torch@champion", "gguf", str(tmp_path / "out"), "f16")
    client = mlflow.tracking.MlflowClient()
    version = client.get_model_version_by_alias("tiny_torch", "champion")
    sha = hashlib.sha256((tmp_path / "out" / "model.gguf").read_bytes()).hexdigest()
    assert version.tags["export.gguf.f16.sha256"] == sha
    logged = {a.path for a in client.list_artifacts(version.run_id, "exports/gguf-f16")}
    assert logged == {"exports/gguf-f16/model.gguf", "exports/gguf-f16/Modelfile"}
