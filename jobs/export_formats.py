"""The export formats: a loaded model (weights, tokenizer, chat template, stop tokens) written as a GGUF file with
an Ollama Modelfile, or as a Hugging Face folder. What `python -m jobs export` writes (it adds where the files go,
atomically, and the registry) and what bench/export.py measures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from jobs.data import chat_template
from jobs.data.tokenizer import bpe_tables
from jobs.checkpoint import LoadedModel
from model_zoo import gguf_file, hf_gpt2, hf_llama
from model_zoo.config import ModelConfig

FORMATS = {"gguf": gguf_file.DTYPES, "hf": ("f32", "f16")}  # the weight types each format takes
MAIN_FILE = {"gguf": "model.gguf", "hf": "model.safetensors"}  # the file whose SHA-256 names an export


def check_exportable(format: str, config: ModelConfig, dtype: str) -> None:
    """An InputError, before anything is written, if the format cannot hold this model in this type."""
    if format == "gguf":
        gguf_file.check_exportable(config, dtype)


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


WRITERS = {"gguf": write_gguf, "hf": write_hf}
