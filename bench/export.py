"""How close an exported model stays to ours: `python -m bench.export --model REF [--text-file PATH]`.

Writes the model in every format and weight type (`jobs/export_formats.py`, what `python -m jobs export` writes),
loads each with its consumer's own loader (transformers for both formats; llama.cpp through llama-cpp-python for
the GGUF files, where it is installed), and compares their logits with ours on windows of real text: the largest
and the mean absolute gap, how often the most likely next token is the same, and the loss. Prints the file sizes
beside them. Needs the test extra (transformers, accelerate).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jobs.export_formats import FORMATS, MAIN_FILE, WRITERS, check_exportable
from jobs.models import load_model


def windows(loaded, text_file: Path, count: int) -> torch.Tensor:
    """(count, T) token windows from the start of the text file, T the model's context."""
    T = loaded.config.max_seq_len
    ids = loaded.tokenizer.encode(text_file.read_text(encoding="utf-8")[: count * T * 8])
    if len(ids) < count * T:
        raise SystemExit(f"{text_file}: {len(ids)} tokens, fewer than {count} windows of {T}")
    return torch.tensor(ids[: count * T]).view(count, T)


def compare(ours: torch.Tensor, theirs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Gaps between two (N, T, V) logits, and each one's loss on the next tokens."""
    gap = (ours - theirs).abs()
    loss = torch.nn.functional.cross_entropy
    return {"max": gap.max().item(), "mean": gap.mean().item(),
            "top1": (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item(),
            "loss_ours": loss(ours[:, :-1].flatten(0, 1), targets.flatten()).item(),
            "loss_theirs": loss(theirs[:, :-1].flatten(0, 1), targets.flatten()).item()}


def transformers_logits(folder: Path, format: str, loaded, batch: torch.Tensor) -> torch.Tensor:
    import transformers

    extra = {}
    if format == "gguf":
        extra["gguf_file"] = MAIN_FILE["gguf"]
        if loaded.config.architecture == "gpt2":  # transformers reads gpt2.context_length as n_ctx only
            extra["n_positions"] = loaded.config.max_seq_len
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **extra).eval()
    with torch.no_grad():
        return model(batch).logits.float()


def llama_cpp_logits(folder: Path, loaded, batch: torch.Tensor) -> torch.Tensor | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(str(folder / MAIN_FILE["gguf"]), n_ctx=loaded.config.max_seq_len, logits_all=True,
                          verbose=False, n_threads=2)
    rows = []
    for window in batch.tolist():
        llm.reset()
        llm.eval(window)
        rows.append(torch.from_numpy(np.array(llm.scores[: len(window)], dtype=np.float32)))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registry URI, run URI or checkpoint folder")
    parser.add_argument("--text-file", type=Path, default=Path("../shared/data/tinystories/valid.txt"))
    parser.add_argument("--windows", type=int, default=8, help="windows of the model's context to compare on")
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(args.model, "cpu")
    batch = windows(loaded, args.text_file, args.windows)
    targets = batch[:, 1:]
    with torch.no_grad():
        ours = loaded.model(batch)[0].float()
    print(f"{args.model}: {loaded.config.architecture}, {loaded.model_type} model, {args.windows} windows of "
          f"{batch.shape[1]} tokens of {args.text_file}")
    print(f"{'format':<6} {'type':<5} {'file':>12}  {'loader':<12} {'max |gap|':>10} {'mean |gap|':>11} "
          f"{'same top-1':>10} {'loss ours':>9} {'loss theirs':>11}")
    for format, dtypes in FORMATS.items():
        for dtype in dtypes:
            check_exportable(format, loaded.config, dtype)
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                start = time.perf_counter()
                WRITERS[format](loaded, folder, dtype, "bench")
                written = time.perf_counter() - start
                size = (folder / MAIN_FILE[format]).stat().st_size
                results = {"transformers": transformers_logits(folder, format, loaded, batch)}
                if format == "gguf":
                    results["llama.cpp"] = llama_cpp_logits(folder, loaded, batch)
                for loader, theirs in results.items():
                    if theirs is None:
                        print(f"{format:<6} {dtype:<5} {size:>12,}  {loader:<12} (llama-cpp-python not installed)")
                        continue
                    r = compare(ours, theirs, targets)
                    print(f"{format:<6} {dtype:<5} {size:>12,}  {loader:<12} {r['max']:>10.2e} {r['mean']:>11.2e} "
                          f"{r['top1']:>10.2%} {r['loss_ours']:>9.4f} {r['loss_theirs']:>11.4f}")
            print(f"{'':<6} {'':<5} written in {written:.2f} s")


if __name__ == "__main__":
    main()
