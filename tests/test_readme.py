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
