"""A model reference, parsed in one place: what every job, the server and the registry take as a model.

    models:/<name>@<alias>       a registered version by alias (`models:/cpu_demo@champion`)
    models:/<name>/<version>     a registered version by number, or `models:/<name>/latest`
    runs:/<run id>[/<path>]      the model a training run logged (`runs:/<id>` means `runs:/<id>/model`)
    anything else                a checkpoint folder

Parsing only (jobs/models.py loads what a reference names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jobs.errors import CheckpointError


@dataclass(frozen=True)
class ModelRef:
    text: str  # as the user gave it
    kind: Literal["registry", "run", "folder"]
    name: str | None = None  # registry: the registered model's name
    alias: str | None = None  # registry: `@alias`
    version: str | None = None  # registry: a number, or "latest"
    run_id: str | None = None  # run

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        if text.startswith("models:/"):
            body = text.removeprefix("models:/").rstrip("/")
            name, at, alias = body.partition("@")
            name, slash, version = name.partition("/")
            if not name or not (at and alias or slash and version):
                raise CheckpointError(f"{text} names a registered model but not which version: models:/{name}@champion, "
                                      f"models:/{name}/<version> or models:/{name}/latest")
            return cls(text, "registry", name, alias or None, version or None)
        if text.startswith("runs:/"):
            return cls(text, "run", run_id=text.removeprefix("runs:/").strip("/").split("/")[0])
        return cls(text, "folder")

    @property
    def served_name(self) -> str:
        """What clients call it: `name@alias` or `name/version`, the run URI as given, or a folder's last two
        parts (`<run folder>/best`)."""
        if self.kind == "registry":
            return self.text.removeprefix("models:/").rstrip("/")
        if self.kind == "run":
            return self.text
        path = Path(self.text).expanduser().resolve()
        return f"{path.parent.name}/{path.name}"
