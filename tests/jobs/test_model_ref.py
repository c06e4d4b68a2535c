"""Model references parsed in one place (jobs/model_ref.py): every form, and the ones that name nothing."""

import pytest

from jobs.errors import CheckpointError
from jobs.model_ref import ModelRef


@pytest.mark.parametrize("text, kind, name, alias, version, run_id, served", [
    ("models:/cpu_demo@champion", "registry", "cpu_demo", "champion", None, None, "cpu_demo@champion"),
    ("models:/cpu_demo/3", "registry", "cpu_demo", None, "3", None, "cpu_demo/3"),
    ("models:/cpu_demo/latest/", "registry", "cpu_demo", None, "latest", None, "cpu_demo/latest"),
    ("runs:/abc123", "run", None, None, None, "abc123", "runs:/abc123"),
    ("runs:/abc123/model", "run", None, None, None, "abc123", "runs:/abc123/model"),
])
def test_registry_and_run_references(text, kind, name, alias, version, run_id, served):
    ref = ModelRef.parse(text)
    assert (ref.kind, ref.name, ref.alias, ref.version, ref.run_id, ref.served_name) == (
        kind, name, alias, version, run_id, served)


def test_a_folder_is_served_by_its_last_two_parts(tmp_path):
    ref = ModelRef.parse(str(tmp_path / "torch-20261203" / "best"))
    assert ref.kind == "folder" and ref.name is None and ref.served_name == "torch-20261203/best"


@pytest.mark.parametrize("text", ["models:/cpu_demo", "models:/", "models:/cpu_demo@", "models:/@champion"])
def test_a_registry_reference_without_a_version_is_refused_saying_how(text):
    with pytest.raises(CheckpointError, match="not which version: models:/.*@champion"):
        ModelRef.parse(text)


def test_a_registered_model_that_is_not_there_is_one_line_naming_it(store):
    from jobs.models import load_model

    with pytest.raises(CheckpointError, match="cannot load models:/no_such_model@champion"):
        load_model("models:/no_such_model@champion", "cpu")


def test_a_checkpoint_folder_that_is_not_there_is_named(tmp_path):
    from jobs.models import load_model

    with pytest.raises(CheckpointError, match=f"checkpoint not found: {tmp_path / 'nope'}"):
        load_model(str(tmp_path / "nope"), "cpu")
