"""What can be checked of the Kubernetes manifests (k8s/) without a cluster: every kustomization renders with
kubectl's own kustomize; core kinds validate strictly against Kubernetes' schemas (kubernetes-validate); the
TrainJob and the JobSet validate against the Kubeflow Trainer API models (which include JobSet's), plus a walk that
rejects keys those models do not know (they accept misspellings silently); every container's command is a real job
invocation with its flags bound and its config loaded; image names and config paths agree with compose.yaml; pods
run as non-root with resource requests and limits. Nothing here was applied to a cluster."""

import functools
import re
import shutil
import subprocess
import typing

import pytest
import yaml

from conftest import REPO, dry_run

K8S = REPO / "k8s"
ENTRY_POINTS = [".", "server", "train-trainjob", "train-jobset", "prepare-data", "evaluate", "generate", "finetune", "prefer", "serve"]
CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl not found: its built-in kustomize renders k8s/ (install kubectl to run these checks)")
    return path


@functools.cache
def render(entry: str) -> tuple[dict, ...]:
    done = subprocess.run([kubectl(), "kustomize", str(K8S / entry)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def find(entry: str, kind: str) -> dict:
    (doc,) = [d for d in render(entry) if d["kind"] == kind]
    return doc


def settings(entry: str = ".") -> dict[str, str]:
    return find(entry, "ConfigMap")["data"]


def pod_specs(doc: dict) -> list[dict]:
    """The pod specs a rendered object runs (a TrainJob's come from the runtime; its trainer is checked apart)."""
    if doc["kind"] in ("Job",):
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "JobSet":
        return [job["template"]["spec"]["template"]["spec"] for job in doc["spec"]["replicatedJobs"]]
    return []


# --- rendering and schemas -----------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_renders_into_one_namespace_with_the_settings(entry):
    docs = render(entry)
    assert docs, f"k8s/{entry} renders nothing"
    namespace = settings(entry) and find(entry, "ConfigMap")["metadata"]["namespace"]
    assert all(d["metadata"].get("namespace", namespace) == namespace for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_core_kinds_validate_strictly_against_the_kubernetes_schemas(entry):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate ([test] extra)")
    version = kubernetes_validate.latest_version()
    checked = 0
    for doc in render(entry):
        if doc["apiVersion"] in CORE_API_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field
            checked += 1
    assert checked >= 1


def test_strict_validation_catches_a_misspelled_core_key():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate ([test] extra)")
    job = find("evaluate", "Job")
    bad = yaml.safe_load(yaml.safe_dump(job).replace("backoffLimit", "backofLimit"))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def _nested_models(annotation, value):
    """(model, value) pairs below one field: unwraps Optional, List and Dict of pydantic models."""
    from pydantic import BaseModel

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        for arg in args:
            yield from _nested_models(arg, value)
    elif origin is list and isinstance(value, list):
        for item in value:
            yield from _nested_models(args[0], item)
    elif origin is dict and isinstance(value, dict):
        for item in value.values():
            yield from _nested_models(args[1], item)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
        yield annotation, value


def unknown_keys(model, data: dict, path: str = "") -> list[str]:
    """Keys of `data` that `model` (a generated pydantic API model) has no field for, at any depth."""
    if "actual_instance" in model.model_fields:  # a oneOf wrapper (IntOrString, Quantity): a scalar, no keys
        return []
    fields = {(field.alias or name): field for name, field in model.model_fields.items()}
    problems = []
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{path}.{key}".lstrip("."))
            continue
        for sub_model, sub_value in _nested_models(fields[key].annotation, value):
            problems += unknown_keys(sub_model, sub_value, f"{path}.{key}")
    return problems


def trainer_models():
    models = pytest.importorskip("kubeflow_trainer_api.models", reason="pip install kubeflow-trainer-api ([test] extra)")
    return {"TrainJob": models.TrainerV1alpha1TrainJob, "JobSet": models.JobsetV1alpha2JobSet}


@pytest.mark.parametrize("entry, kind", [(".", "TrainJob"), ("train-trainjob", "TrainJob"), ("train-jobset", "JobSet")])
def test_trainjob_and_jobset_validate_against_the_trainer_api_models(entry, kind):
    model = trainer_models()[kind]
    doc = find(entry, kind)
    model.from_dict(doc)  # types, required fields (strict ints: numNodes stays a number after kustomize)
    assert unknown_keys(model, doc) == []


def test_the_unknown_key_walk_catches_a_misspelling_the_models_accept():
    model = trainer_models()["TrainJob"]
    doc = yaml.safe_load(yaml.safe_dump(find(".", "TrainJob")).replace("volumeMounts", "volumeMount"))
    model.from_dict(doc)  # accepted as it is: the reason for the walk
    assert [p for p in unknown_keys(model, doc) if p.endswith("volumeMount")], unknown_keys(model, doc)


# --- what the manifests run ------------------------------------------------------------------------------------

def containers(entry: str) -> list[tuple[str, dict]]:
    """(object kind, container) for every container of the project's image in a rendered entry point; the
    TrainJob's trainer counts as one container."""
    found = []
    for doc in render(entry):
        if doc["kind"] == "TrainJob":
            found.append(("TrainJob", doc["spec"]["trainer"]))
        for spec in pod_specs(doc):
            found += [(doc["kind"], c) for c in spec["containers"] if "transformer-fundamentals" in c["image"]]
    return found


def expand(argv: list[str], container: dict, config_map: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of a command from the container's env (values and ConfigMap keys)."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = config_map[var["valueFrom"]["configMapKeyRef"]["key"]]
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in argv]


def job_argv(argv: list[str]) -> list[str]:
    """The job's own command line from `python -m jobs JOB ...` or `python -m jobs.launch [options] -m jobs JOB ...`
    (torchrun, with a signal's exit status)."""
    start = argv.index("jobs")
    assert argv[start - 1] == "-m" and argv[:start - 1] in (["python"], ["python", "-m", "jobs.launch"]), argv
    if argv[1:3] == ["-m", "jobs.launch"]:
        assert start == 4, "torchrun takes its rendezvous from the PET_* environment, not from flags: " + str(argv)
    return argv[start + 1:]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_container_command_is_a_real_job_invocation(entry, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths are relative to /app in the image, the repository root here
    config_map = settings(entry)
    for kind, container in containers(entry):
        argv = expand(container["command"] + container.get("args", []), container, config_map)
        job = job_argv(argv)
        assert dry_run(job)["job"] == job[0].replace("-", "_")  # it exists, its flags bind, its config loads


def test_training_restarts_resume_and_reads_the_rendezvous_environment():
    trainer = find(".", "TrainJob")["spec"]["trainer"]
    (pod,) = pod_specs(find("train-jobset", "JobSet"))
    (node,) = pod["containers"]
    for command in (trainer["command"], node["command"]):
        assert command[:3] == ["python", "-m", "jobs.launch"] and command[-2:] == ["--resume", "auto"]
    env = {v["name"]: v for v in node["env"]}
    assert {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"} <= set(env)
    assert "job-completion-index" in env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    jobset = find("train-jobset", "JobSet")
    assert env["PET_MASTER_ADDR"]["value"] == f"{jobset['metadata']['name']}-node-0-0.{jobset['metadata']['name']}"
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] >= 1


def test_node_and_gpu_counts_come_from_the_one_settings_block():
    values = settings()
    nodes, per_node = int(values["NNODES"]), int(values["NPROC_PER_NODE"])
    trainer = find(".", "TrainJob")["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, per_node)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == per_node
    (job,) = find("train-jobset", "JobSet")["spec"]["replicatedJobs"]
    assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == nodes
    (node,) = job["template"]["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v.get("value") for v in node["env"]}
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == (str(nodes), str(per_node))
    assert node["resources"]["limits"]["nvidia.com/gpu"] == per_node


# --- agreement with compose.yaml, and the rules every pod follows --------------------------------------------

def test_images_and_config_paths_agree_with_compose():
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    compose_image = compose["x-job"]["image"]
    for entry in ENTRY_POINTS[2:]:
        for _, container in containers(entry):
            assert container["image"] == compose_image, f"k8s/{entry}: {container['image']} vs compose {compose_image}"
    mlflow = find("server", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["image"] == services["mlflow"]["image"]
    import mlflow as client  # the server runs the client's MLflow (major.minor): a newer client's calls exist there

    server_version = services["mlflow"]["image"].rsplit(":v", 1)[1]
    assert server_version.split(".")[:2] == client.__version__.split(".")[:2], (server_version, client.__version__)
    assert [a for a in mlflow["command"] if a.startswith("--")] == [a for a in services["mlflow"]["command"] if a.startswith("--")]
    values = settings()
    assert services["train"]["command"] == ["--config", values["CONFIG"]]
    assert services["chat"]["command"] == ["--model", values["MODEL"]]
    assert (REPO / values["CONFIG"]).is_file()
    assert services["finetune"]["command"] == ["--config", values["CHAT_CONFIG"]] and (REPO / values["CHAT_CONFIG"]).is_file()
    assert services["prefer"]["command"] == ["--config", values["PREFER_CONFIG"]] and (REPO / values["PREFER_CONFIG"]).is_file()
    for _, container in containers(".") + containers("evaluate"):
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == services["train"]["environment"]["MLFLOW_TRACKING_URI"]


def test_the_server_is_ready_on_health_cluster_internal_and_keyed_from_an_optional_secret():
    (container,) = find("serve", "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    (port,) = container["ports"]
    command = container["command"]
    assert command[command.index("--port") + 1] == str(port["containerPort"])
    service = find("serve", "Service")
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["targetPort"] == port["name"]
    env = {v["name"]: v for v in container["env"]}
    assert env["SERVE_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    annotations = find("serve", "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def test_mlflow_is_cluster_internal_and_proxies_artifacts():
    service = find("server", "Service")
    assert service["spec"]["type"] == "ClusterIP"
    (container,) = find("server", "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--serve-artifacts" in container["command"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/mlflow/db", "/mlflow/artifacts"} <= mounts
    claims = {d["metadata"]["name"]: d["spec"]["accessModes"] for d in render("server") if d["kind"] == "PersistentVolumeClaim"}
    assert claims == {"mlflow": ["ReadWriteOnce"], "assets": ["ReadWriteMany"]}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_pods_run_as_non_root_with_requests_and_limits_and_no_secrets(entry):
    for doc in render(entry):
        assert doc["kind"] != "Secret", f"k8s/{entry} ships a Secret"
        specs = pod_specs(doc)
        if doc["kind"] == "TrainJob":
            patch = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
            specs = [patch["template"]["spec"]["template"]["spec"]]
            resources = doc["spec"]["trainer"]["resourcesPerNode"]
            assert resources["requests"] and resources["limits"]
        for spec in specs:
            assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
            for container in spec["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                if doc["kind"] != "TrainJob":  # the trainer's resources are resourcesPerNode above
                    assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]
                for var in container.get("env", []):
                    secret_like = re.search(r"PASSWORD|TOKEN|SECRET|KEY$", var["name"])
                    assert not (secret_like and "value" in var), f"{var['name']} written into a manifest"
