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
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from jobs.errors import InputError
from jobs.export_formats import FORMATS, MAIN_FILE, WRITERS, check_exportable
from jobs.checkpoint import LoadedModel
from jobs.model_ref import ModelRef
from jobs.models import load_model


def export(model: str, format: Literal["gguf", "hf"], out: str, dtype: Literal["f32", "f16", "q8_0"] = "f32",
           force: bool = False) -> None:
    if dtype not in FORMATS[format]:
        raise InputError(f"--dtype {dtype}: the {format} format takes {' or '.join(FORMATS[format])}"
                         + (" (q8_0 is a GGUF type)" if dtype == "q8_0" else ""))
    out_dir = check_out(Path(out).expanduser(), force)
    loaded = load_model(model, "cpu")
    check_exportable(format, loaded.config, dtype)  # before anything is written
    with staging(out_dir) as folder:
        WRITERS[format](loaded, folder, dtype, name_of(loaded))
    sha256 = file_sha256(out_dir / MAIN_FILE[format])
    for path in sorted(out_dir.iterdir()):
        print(f"{path}  {path.stat().st_size:,} bytes")
    print(f"sha256 of {MAIN_FILE[format]}: {sha256}")
    if ModelRef.parse(model).kind == "registry":
        from jobs.tracking import registry

        version = registry.log_export(model, out_dir, format, dtype, sha256)
        print(f"logged to {version.name} version {version.version}: artifacts exports/{format}-{dtype}, "
              f"tag export.{format}.{dtype}.sha256")
    print(next_steps(format, out_dir, loaded))


def name_of(loaded: LoadedModel) -> str:
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


def next_steps(format: str, out_dir: Path, loaded: LoadedModel) -> str:
    if format == "hf":
        return (f"load it: AutoModelForCausalLM.from_pretrained({str(out_dir)!r}) and "
                f"AutoTokenizer.from_pretrained({str(out_dir)!r})")
    return (f"run it: ollama create mymodel -f {out_dir / 'Modelfile'} && ollama run mymodel, or "
            f"llama-cli -m {out_dir / 'model.gguf'}" + (" -cnv" if loaded.chat else " -p 'Once upon a time'"))
