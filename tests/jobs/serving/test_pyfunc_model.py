"""The MLflow model (jobs/serving/pyfunc_model.py): `predict` on a DataFrame of prompts gives what `generate` gives
for the same checkpoint, prompt and seed."""

from types import SimpleNamespace

import pandas as pd

from conftest import make_checkpoint


def test_predict_gives_the_completion_generate_gives(tmp_path, tokenizer_folder):
    from jobs.checkpoint import load_model_folder
    from jobs.serving.loading import complete
    from jobs.serving.pyfunc_model import TransformerTextGenerator

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, chat=False)
    model = TransformerTextGenerator()
    model.load_context(SimpleNamespace(artifacts={"checkpoint": str(checkpoint)}))
    params = {"max_length": 6, "temperature": 1.0, "seed": 3}
    texts = model.predict(None, pd.DataFrame({"prompt": ["Once upon", "Tom had"]}), params)
    loaded = load_model_folder(checkpoint)
    assert texts == ["".join(complete(loaded, prompt, **params)) for prompt in ["Once upon", "Tom had"]]
    assert all(texts)
