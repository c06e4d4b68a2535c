"""The MLflow model, logged from code: `mlflow.pyfunc.load_model(...)` runs this file, not a pickle.

Its one artifact is a checkpoint folder (safetensors weights, json state, tokenizer.json). `predict` takes a
DataFrame with a `prompt` column (and optional params: max_length, temperature, top_k, top_p, seed) and
returns the generated texts, so `mlflow models serve` works as well.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class TransformerTextGenerator(PythonModel):
    def load_context(self, context):
        from jobs.serving.loading import load_model

        self.loaded = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        from jobs.serving.loading import complete

        params = dict(params or {})
        prompts = model_input["prompt"] if hasattr(model_input, "columns") else model_input
        options = {key: params[key] for key in ("max_length", "temperature", "top_k", "top_p", "seed") if key in params}
        return ["".join(complete(self.loaded, str(prompt), **options)) for prompt in prompts]


mlflow.models.set_model(TransformerTextGenerator())
