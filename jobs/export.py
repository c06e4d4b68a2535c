"""`python -m jobs export --model REF --format gguf|hf --out DIR [--dtype f32|f16|q8_0] [--force]`

Writes a trained model (REF: a registry URI `models:/<name>@champion` or `models:/<name>/3`, a run URI
`runs:/<id>`, or a checkpoint folder) in a format other tools run:
  gguf  DIR/model.gguf, one file for llama.cpp, Ollama and LM Studio (weights f32, f16 or q8_0; tokenizer and,
        for a chat model, the chat template inside), and DIR/Modelfile for `ollama create`
  hf    a Hugging Face folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the
        special tokens and, for a chat model, the chat template; generation_config.json with the stop tokens):
        transformers' AutoModelForCausalLM and AutoTokenizer load it (weights f32 or f16)
An existing DIR is replaced only with --force, and only if it holds an earlier export. The files are written in a
temporary folder beside DIR and moved into place whole, so a failure (a full disk) leaves nothing half-written.
For a registry version the export is also logged as an artifact of the version's run (exports/<format>-<dtype>)
and tagged on the version (export.<format>.<dtype>.sha256), so the MLflow UI shows what was exported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from jobs.cli import typed
from jobs.data import chat_template
from jobs.data.tokenizer import bpe_tables
from jobs.errors import InputError
from jobs.serving.loading import LoadedModel, load_model
from model_zoo import gguf_file, hf_gpt2, hf_llama

log = logging.getLogger(__name__)

FORMATS = {"gguf": ("f32", "f16", "q8_0"), "hf": ("f32", "f16")}  # the weight types each format takes
MAIN_FILE = {"gguf": "model.gguf", "hf": "model.safetensors"}  # the file whose SHA-256 names the export


@typed
def export(model: str, format: Literal["gguf", "hf"], out: str, dtype: Literal["f32", "f16", "q8_0"] = "f32",
           force: bool = False) -> None:
    if dtype not in FORMATS[format]:
        raise InputError(f"--dtype {dtype}: the {format} format takes {' or '.join(FORMATS[format])}"
                         + (" (q8_0 is a GGUF type)" if dtype == "q8_0" else ""))
    out_dir = check_out(Path(out).expanduser(), force)
    loaded = load_model(model, "cpu")
    if format == "gguf":
        gguf_file.check_exportable(loaded.config, dtype)  # before anything is written
    with staging(out_dir) as folder:
        (write_gguf if format == "gguf" else write_hf)(loaded, folder, dtype, name_of(model, loaded))
    sha256 = file_sha256(out_dir / MAIN_FILE[format])
    for path in sorted(out_dir.iterdir()):
        print(f"{path}  {path.stat().st_size:,} bytes")
    print(f"sha256 of {MAIN_FILE[format]}: {sha256}")
    if model.startswith("models:/"):
        from jobs import registry

        version = registry.log_export(model, out_dir, format, dtype, sha256)
        print(f"logged to {version.name} version {version.version}: artifacts exports/{format}-{dtype}, "
              f"tag export.{format}.{dtype}.sha256")
    print(next_steps(format, out_dir, loaded))


def name_of(model: str, loaded: LoadedModel) -> str:
    """The model's name in the files: the experiment's model name, else the checkpoint folder's."""
    return str((loaded.state.experiment or {}).get("model_name") or loaded.folder.name)


# --- where the files go -------------------------------------------------------------------------------------

EXPORT_MARKERS = ({"model.gguf"}, {"config.json", "model.safetensors"})  # a folder holding either is an export


def check_out(out_dir: Path, force: bool) -> Path:
    """The output folder, checked before any work: absent, or an earlier export and --force."""
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise InputError(f"--out {out_dir} exists: give --force to replace it, or another --out")
        names = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() and not out_dir.is_symlink() else set()
        if not any(marker <= names for marker in EXPORT_MARKERS):
            raise InputError(f"--out {out_dir} exists and is not an earlier export (no model.gguf, or config.json "
                             f"with model.safetensors): not replaced, even with --force")
    parent = out_dir.parent
    if not parent.is_dir():
        raise InputError(f"--out {out_dir}: the folder {parent} does not exist")
    return out_dir


class staging:
    """`with staging(out_dir) as folder:` write into `folder` (a temporary folder beside out_dir); at the end it
    becomes out_dir (an earlier export there is replaced only then). On any error it is removed, and out_dir is as
    it was; an OSError (a full disk, no permission) becomes one line."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def __enter__(self) -> Path:
        try:
            self.tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.",
                                             suffix=".tmp"))
        except OSError as error:
            raise InputError(f"--out {self.out_dir}: cannot write in {self.out_dir.parent} ({error.strerror})") from None
        return self.tmp

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(error, OSError):
                raise InputError(f"cannot write the export {self.out_dir} ({error.strerror or error}); nothing was "
                                 f"left behind") from None
            return False
        self.tmp.chmod(0o755)  # mkdtemp makes it private; an export is for others to read
        old = self.out_dir.with_name(f".{self.out_dir.name}.old")
        if self.out_dir.exists():  # the earlier export stays whole until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            self.out_dir.rename(old)
        self.tmp.rename(self.out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the two formats ----------------------------------------------------------------------------------------

def special_ids(loaded: LoadedModel) -> dict:
    """bos: <|endoftext|> (GPT-2's habit); eos: where a reply ends (a chat model's <|end|>, else <|endoftext|>);
    eot: a chat turn's end; control: every special token (never split, never produced from plain text)."""
    tokenizer = loaded.tokenizer
    end_of_turn = chat_template.end_of_turn_id(tokenizer) if loaded.chat else None
    control = {i for i, added in tokenizer.tokenizer.get_added_tokens_decoder().items() if added.special}
    return {"bos": tokenizer.eot_id, "eos": end_of_turn if end_of_turn is not None else tokenizer.eot_id,
            "eot": end_of_turn, "control": control}


def write_gguf(loaded: LoadedModel, folder: Path, dtype: str, name: str) -> None:
    tokens, merges = bpe_tables(loaded.tokenizer)
    ids = special_ids(loaded)
    vocabulary = gguf_file.Vocabulary(tokens, merges, ids["control"], ids["bos"], ids["eos"], ids["eot"],
                                      chat_template.JINJA if loaded.chat else None)
    gguf_file.write_gguf(folder / "model.gguf", loaded.model.state_dict(), loaded.config, vocabulary, dtype, name)
    (folder / "Modelfile").write_text(modelfile(loaded))


def modelfile(loaded: LoadedModel) -> str:
    """Ollama's recipe: the file, the prompt template (the chat format for a chat model, the bare prompt for a
    base model), where a reply stops, and the context the model was trained for."""
    tokenizer = loaded.tokenizer
    stops = sorted({tokenizer.tokenizer.id_to_token(i) for i in loaded.stop_ids})
    template = chat_template.OLLAMA if loaded.chat else "{{ .Prompt }}"
    lines = ["FROM ./model.gguf", f'TEMPLATE """{template}"""', *[f'PARAMETER stop "{stop}"' for stop in stops],
             f"PARAMETER num_ctx {loaded.config.max_seq_len}"]
    return "\n".join(lines) + "\n"


def write_hf(loaded: LoadedModel, folder: Path, dtype: str, name: str) -> None:
    state_dict = {key: tensor.to(torch.float16 if dtype == "f16" else torch.float32)
                  for key, tensor in loaded.model.state_dict().items()}
    ids = special_ids(loaded)
    exporter = hf_llama.export_llama if loaded.config.architecture == "llama" else hf_gpt2.export_gpt2
    exporter(state_dict, loaded.config, folder, bos_token_id=ids["bos"], eos_token_id=ids["eos"])
    shutil.copyfile(loaded.folder / "tokenizer.json", folder / "tokenizer.json")
    token = loaded.tokenizer.tokenizer.id_to_token
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": loaded.config.max_seq_len,
        "bos_token": token(ids["bos"]) if ids["bos"] is not None else None,
        "eos_token": token(ids["eos"]) if ids["eos"] is not None else None,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
    }
    if loaded.chat:
        tokenizer_config["chat_template"] = chat_template.JINJA
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    generation = {"bos_token_id": ids["bos"], "eos_token_id": sorted(loaded.stop_ids)}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def next_steps(format: str, out_dir: Path, loaded: LoadedModel) -> str:
    if format == "hf":
        return (f"load it: AutoModelForCausalLM.from_pretrained({str(out_dir)!r}) and "
                f"AutoTokenizer.from_pretrained({str(out_dir)!r})")
    return (f"run it: ollama create mymodel -f {out_dir / 'Modelfile'} && ollama run mymodel, or "
            f"llama-cli -m {out_dir / 'model.gguf'}" + (" -cnv" if loaded.chat else " -p 'Once upon a time'"))
