"""Export to GGUF, the one-file format of llama.cpp (and so of Ollama and LM Studio), written with the `gguf`
package, llama.cpp's own writer.

A GGUF file holds key-value metadata (the architecture's hyperparameters, the tokenizer, the chat template)
and the tensors under llama.cpp's names. Our two architectures are two of llama.cpp's: "gpt2" and "llama".
What differs from our layout:

- Names. `gguf.TENSOR_NAMES` is the library's table of llama.cpp's names; _tensor_names maps ours onto it.
- Shapes. GGUF lists a tensor's dimensions innermost first, numpy outermost first; the writer turns one into
  the other, so a weight we store (out, in) is written as the (out, in) numpy array, as llama.cpp's own
  converter does (Hugging Face's GPT-2 stores its Conv1D weights (in, out) and has to be transposed; we don't).
- Rotary pairs (Llama). Like Hugging Face, we rotate feature i together with feature i + D/2 of each head;
  llama.cpp's "llama" rotates neighbours (2i, 2i + 1). Permuting the rows of the query and key weights within
  each head turns one pairing into the other (_interleave_rotary_pairs); the attention scores, and so the
  logits, are unchanged. Loaders that read the file back into Hugging Face's layout undo the permutation.
- The tied head. llama.cpp's "llama" falls back to the token embedding when there is no `output.weight`;
  its "gpt2" wants one, so GPT-2 gets a copy (as llama.cpp's converter writes).

Weight types: "f32"; "f16" (matrices in half precision); "q8_0" (matrices in blocks of 32 values, each block
8-bit integers and one f16 scale: about 8.5 bits a weight). Vectors (norms, biases) stay f32 in every type,
as llama.cpp keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_zoo.config import ModelConfig
from model_zoo.errors import InputError

DTYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = 32  # values per Q8_0 block: a matrix row must hold whole blocks


@dataclass(frozen=True)
class Vocabulary:
    """A byte-level BPE tokenizer as GGUF stores it ("gpt2" tokenizer model, GPT-2's pre-tokenizer split)."""

    tokens: list[str]  # by id, in the byte-to-character spelling of tokenizer.json
    merges: list[str]  # "a b", highest priority first
    control_ids: set[int]  # special tokens (<|endoftext|>, the chat tokens): typed CONTROL, never split
    bos_id: int | None
    eos_id: int | None  # where generation stops: <|end|> for a chat model, <|endoftext|> for a base model
    eot_id: int | None = None  # a chat turn's end (llama.cpp stops on it too)
    chat_template: str | None = None  # Jinja, as Hugging Face's tokenizer_config.json holds it


def _gguf():
    import gguf  # imported on use: only the export command needs it

    return gguf


def _tensor_names(config: ModelConfig) -> dict[str, str]:
    """Our parameter name -> llama.cpp's (without the .weight/.bias suffix, which is the same in both)."""
    t = _gguf().MODEL_TENSOR
    names = _gguf().TENSOR_NAMES
    if config.architecture == "gpt2":
        top = {"token_embedding": t.TOKEN_EMBD, "position_embedding": t.POS_EMBD, "ln_f": t.OUTPUT_NORM}
        block = {"ln1": t.ATTN_NORM, "attn.qkv": t.ATTN_QKV, "attn.proj": t.ATTN_OUT, "ln2": t.FFN_NORM,
                 "mlp.fc": t.FFN_UP, "mlp.proj": t.FFN_DOWN}
    else:
        top = {"token_embedding": t.TOKEN_EMBD, "norm_f": t.OUTPUT_NORM, "lm_head": t.OUTPUT}
        block = {"attn_norm": t.ATTN_NORM, "attn.q_proj": t.ATTN_Q, "attn.k_proj": t.ATTN_K,
                 "attn.v_proj": t.ATTN_V, "attn.o_proj": t.ATTN_OUT, "mlp_norm": t.FFN_NORM,
                 "mlp.gate_proj": t.FFN_GATE, "mlp.up_proj": t.FFN_UP, "mlp.down_proj": t.FFN_DOWN}
    mapping = {ours: names[theirs] for ours, theirs in top.items()}
    for i in range(config.n_blocks):
        mapping |= {f"blocks.{i}.{ours}": names[theirs].format(bid=i) for ours, theirs in block.items()}
    return mapping


def _interleave_rotary_pairs(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a query or key weight (n_heads * D, C), reordered within each head from (i, i + D/2) pairs to
    (2i, 2i + 1) pairs: row j of the first half goes to 2j, row j of the second half to 2j + 1."""
    rows, columns = weight.shape
    head_size = rows // n_heads
    return (weight.reshape(n_heads, 2, head_size // 2, columns)  # (H, half, D/2, C)
            .transpose(1, 2)                                      # (H, D/2, half, C)
            .reshape(rows, columns))


def gguf_tensors(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's names, in float32, ready to be typed and written."""
    tensors = {}
    for ours, theirs in _tensor_names(config).items():
        for suffix in ("weight", "bias"):
            if f"{ours}.{suffix}" in state_dict:
                tensor = state_dict[f"{ours}.{suffix}"].detach().to("cpu", torch.float32)
                if ours.endswith("attn.q_proj"):
                    tensor = _interleave_rotary_pairs(tensor, config.n_heads)
                elif ours.endswith("attn.k_proj"):
                    tensor = _interleave_rotary_pairs(tensor, config.n_kv_heads)
                tensors[f"{theirs}.{suffix}"] = tensor.contiguous()
    if config.architecture == "gpt2":
        tensors["output.weight"] = tensors["token_embd.weight"]  # the tied head, as llama.cpp's gpt2 expects it
    return tensors


def check_exportable(config: ModelConfig, dtype: str) -> None:
    """An InputError if `dtype` is not a GGUF weight type this writes, or the model's shape cannot be stored in it."""
    if dtype not in DTYPES:
        raise InputError(f"--dtype {str(dtype)[:20]!r}: GGUF weights are one of {', '.join(DTYPES)}")
    if dtype == "q8_0":
        rows = {"model.d_model": config.d_model, "model.d_ffn": config.d_ffn}
        for name, width in rows.items():
            if width % Q8_BLOCK:
                raise InputError(f"q8_0 packs each matrix row in blocks of {Q8_BLOCK} values, and this model's "
                                 f"{name} is {width}: export it as f16 or f32")


def _typed(tensor: torch.Tensor, dtype: str):
    """(data, raw GGML type) of one tensor in the file's weight type: matrices typed, vectors kept f32."""
    gguf = _gguf()
    array = tensor.numpy()
    if tensor.dim() == 1 or dtype == "f32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if dtype == "f16":
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}


def write_gguf(path: str | Path, state_dict: dict[str, torch.Tensor], config: ModelConfig, vocabulary: Vocabulary,
               dtype: str = "f32", name: str = "transformer-fundamentals") -> Path:
    """Write one GGUF file: hyperparameters, tokenizer, chat template and the typed tensors."""
    gguf = _gguf()
    check_exportable(config, dtype)
    if len(vocabulary.tokens) > config.vocab_size:
        raise InputError(f"the tokenizer has {len(vocabulary.tokens)} tokens and the model only {config.vocab_size} "
                         f"rows of embedding: they were not made for each other")
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch=config.architecture)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[dtype]])
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_ffn)
    writer.add_block_count(config.n_blocks)
    writer.add_head_count(config.n_heads)
    writer.add_vocab_size(config.vocab_size)
    if config.architecture == "gpt2":
        writer.add_layer_norm_eps(config.layer_norm_eps)
    else:
        writer.add_head_count_kv(config.n_kv_heads)
        writer.add_rope_dimension_count(config.head_size)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    _add_vocabulary(writer, vocabulary, config.vocab_size)
    for tensor_name, tensor in gguf_tensors(state_dict, config).items():
        data, raw_dtype = _typed(tensor, dtype)
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_vocabulary(writer, vocabulary: Vocabulary, vocab_size: int) -> None:
    token_type = _gguf().TokenType
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's split of text into words before the merges
    # GGUF needs a token for every row of the embedding: rows the tokenizer never produces get placeholders
    padding = [f"[PAD{i}]" for i in range(len(vocabulary.tokens), vocab_size)]
    writer.add_token_list(vocabulary.tokens + padding)
    writer.add_token_types([token_type.CONTROL if i in vocabulary.control_ids else token_type.NORMAL
                            for i in range(len(vocabulary.tokens))] + [token_type.UNUSED] * len(padding))
    writer.add_token_merges(vocabulary.merges)
    if vocabulary.bos_id is not None:
        writer.add_bos_token_id(vocabulary.bos_id)
    if vocabulary.eos_id is not None:
        writer.add_eos_token_id(vocabulary.eos_id)
    if vocabulary.eot_id is not None:
        writer.add_eot_token_id(vocabulary.eot_id)
    writer.add_add_bos_token(False)  # our prompts start with their first token: nothing is prepended
    writer.add_add_eos_token(False)
    if vocabulary.chat_template:
        writer.add_chat_template(vocabulary.chat_template)
