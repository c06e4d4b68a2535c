"""MLflow: the one package that knows tracking URIs, names, and how a run is logged.

    store.py      which store (MLFLOW_TRACKING_URI or the embedded sqlite file), whether it works, the one client
    metrics.py    the metric sender and its journal: metrics reach MLflow exactly once, through outages
    run.py        a training run, start to end (TrackedRun), and the null run of ranks that do not track
    records.py    runs that record an evaluation or a comparison
    reading.py    training runs read back (curves, scores) for figures and `compare`
    registry.py   the model registry: versions, the champion alias, exports
    sweeps.py     a sweep's parent run, and the tags that nest its trials' training runs under it

Embedded default: a sqlite store `mlflow.db` (jobs.config.TRACKING_STORE) and artifacts under `mlruns/` beside
it, in the working folder: nothing to start, model registry included (`mlflow ui --backend-store-uri
sqlite:///mlflow.db` shows it). With MLFLOW_TRACKING_URI set, the same code talks to that server.

Names: one experiment per `experiment_name`; the registered model is `registered_model_name` or the
experiment name; its alias `champion` is the version with the best validation loss, and MLflow's own
`models:/<name>/latest` the newest version (MLflow reserves `latest`, so it cannot be an alias).

Metric names (step = optimizer step), the ones to compare runs by in the UI:
    train/loss, train/lr, train/grad_norm, train/tokens_per_sec, train/mfu     (train/lr is AdamW's)
    train/muon_lr                            with training.optimizer muon: Muon's learning rate
    train/tokens_seen, train/flops_seen      cumulative; plot loss against these for loss per FLOP
    val/loss, val/perplexity, val/bits_per_byte
    sweep/trial_val_loss, sweep/best_val_loss    a sweep run's, by trial number
"""

from jobs.tracking.reading import load_runs
from jobs.tracking.records import log_comparison, log_evaluation, log_version_scores
from jobs.tracking.run import NullRun, TrackedRun, flatten, safely
from jobs.tracking.store import client, connect, run_exists, setup, tracking_uri

__all__ = ["NullRun", "TrackedRun", "client", "connect", "flatten", "load_runs", "log_comparison", "log_evaluation",
           "log_version_scores", "run_exists", "safely", "setup", "tracking_uri"]
