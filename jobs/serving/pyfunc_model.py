"""The MLflow model, logged from code: `mlflow.pyfunc.load_model(...)` runs this file, not a pickle.

Its one artifact is a checkpoint folder (safetensors weights, json state, tokenizer.json). `predict` takes a
DataFrame with a `prompt` column (and optional params: max_length, temperature, top_k, top_p, seed) and
returns the generated texts, so `mlflow models serve` works as well.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TransformerTextGenerator(PythonModel):
    def load_context(self, context):
        from jobs.checkpoint import load_model_folder

        self.loaded = load_model_folder(context.artifacts["checkpoint"])

    # The DataFrame hint says what the signature (given at logging) already says, and keeps MLflow's DataFrame
    # payloads (`dataframe_records`); a list type hint would make MLflow accept only {"inputs": ...} requests.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from jobs.serving.loading import complete

        params = dict(params or {})
        prompts = model_input["prompt"] if hasattr(model_input, "columns") else model_input
        options = {key: params[key] for key in ("max_length", "temperature", "top_k", "top_p", "seed") if key in params}
        return ["".join(complete(self.loaded, str(prompt), **options)) for prompt in prompts]


mlflow.models.set_model(TransformerTextGenerator())
