"""`python -m jobs compare REF [REF ...] [--out FOLDER] [--config X.yaml] [--log] [--phenomena]`

REF is an experiment name (all its training runs) or a run id. Prints the summary table (parameters, best
validation loss, training TFLOPs, tokens/s, and the accuracy on each minimal-pair suite the run's model was
scored on: by training.final_evals or `evaluate --suite`) and draws the comparison figures: train and validation
loss against step and against training FLOPs, the learning-rate schedule, throughput, and loss beside accuracy
(per phenomenon with --phenomena). Figures are saved as PNG
files (in --out, else <data.assets_dir>/compare/<time>, the assets folder of --config or the default one)
and, with --log, logged to MLflow in a `compare` run of the first run's experiment.

The MLflow UI does the same interactively: select runs, open Chart view, and for loss per FLOP set a line
chart's X axis to the metric `train/flops_seen`.
"""

from __future__ import annotations

import time
from pathlib import Path

from jobs.config import ASSETS_DIR, load_config
from jobs.errors import InputError
from jobs.figures import plot, summary_table
from jobs.tracking import load_runs, log_comparison


def compare(*refs: str, out: str | None = None, config: str | None = None, log: bool = False,
            phenomena: bool = False) -> None:
    if not refs:
        raise InputError("name at least one experiment or run id: python -m jobs compare tinystories_cpu")
    assets_dir = load_config(config).data.assets_dir if config else ASSETS_DIR
    folder = Path(out).expanduser() if out else Path(assets_dir) / "compare" / time.strftime("%Y%m%d-%H%M%S")
    try:  # where the figures go, checked before the runs are read
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {folder}: cannot make a folder there ({error.strerror})") from None
    runs = load_runs(list(refs))
    print(summary_table(runs, phenomena))
    paths = plot(runs, folder, phenomena)
    print(f"figures: {', '.join(str(p) for p in paths)}")
    if log:
        run_id = log_comparison(runs[0].experiment_id, [r.run_id for r in runs], paths)
        print(f"logged to MLflow experiment {runs[0].experiment_id} as the 'compare' run {run_id}")
