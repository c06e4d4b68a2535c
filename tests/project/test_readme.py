"""README's Python snippet runs as pasted (on a machine with or without CUDA)."""

import contextlib
import io
import re

from conftest import REPO


def test_the_twin_models_snippet_runs_as_pasted():
    readme = (REPO / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "custom_model.backward" in block]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), {})
    first, second = printed.getvalue().splitlines()
    loss, torch_loss, gradient_gap = (float(x) for x in first.split())
    assert abs(loss - torch_loss) < 1e-4 and gradient_gap < 1e-5, printed.getvalue()
    bf16_dtype, bf16_loss = second.split()
    assert bf16_dtype == "torch.bfloat16" and abs(float(bf16_loss) - loss) < 0.05, printed.getvalue()


def test_every_file_and_line_reference_in_the_llama_table_names_the_symbol_it_says():
    """README's "From GPT-2 to Llama" table points at code as `file.py:LINE` Symbol: line LINE of model_zoo/file.py
    holds Symbol (its definition, or its use), so an edit that moves code shows here."""
    readme = (REPO / "README.md").read_text()
    table = readme.split("## From GPT-2 to Llama", 1)[1].split("**Quality per compute", 1)[0]
    references = re.findall(r"`(\w+\.py):(\d+)` (\w+)", table)
    assert len(references) >= 15, references
    for file, line, symbol in references:
        text = (REPO / "model_zoo" / file).read_text().splitlines()[int(line) - 1]
        assert re.search(rf"\b{symbol}\b", text), f"{file}:{line} does not hold {symbol}: {text.strip()!r}"


def test_every_config_validates_and_every_config_the_readme_names_exists():
    """A config with a typo in a key, or one README points at that was renamed, fails here rather than for a user."""
    from jobs.config import load_config

    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)  # raises with the file and key on a schema error
    named = set(re.findall(r"--config (configs/[\w.]+\.yaml)", (REPO / "README.md").read_text()))
    assert "configs/chat_demo.yaml" in named and "configs/cpu_demo.yaml" in named, named
    missing = sorted(name for name in named if not (REPO / name).is_file())
    assert not missing, f"README names configs that do not exist: {missing}"
