"""A run's curves from MLflow, the summary table, and the comparison figures: what `python -m jobs compare`
prints and draws, and what the train job logs as its own figures at the end of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from jobs import tracking
from jobs.errors import InputError

CURVES = ["train/loss", "val/loss", "train/lr", "train/tokens_per_sec", "train/flops_seen"]


@dataclass
class RunCurves:
    run_id: str
    name: str
    experiment_id: str
    params: dict
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def last(self, key: str) -> float | None:
        values = self.curves.get(key, ([], []))[1]
        return values[-1] if values else None


def load_runs(refs: list[str]) -> list[RunCurves]:
    tracking.connect()
    client = MlflowClient()
    found = []
    for ref in refs:
        experiment = client.get_experiment_by_name(ref)
        if experiment is not None:
            candidates = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
            found += [r for r in candidates if "flops_per_token" in r.data.params]  # training runs only
            continue
        try:
            found.append(client.get_run(ref))
        except Exception:
            raise InputError(f"{ref!r} is neither an experiment name nor a run id in {tracking.tracking_uri()}") from None
    if not found:
        raise InputError(f"no training runs found for {', '.join(refs)}")
    runs = []
    for run in found:
        curves = {}
        for key in CURVES:
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            curves[key] = ([m.step for m in history], [m.value for m in history])
        runs.append(RunCurves(run.info.run_id, run.info.run_name or run.info.run_id[:8], run.info.experiment_id,
                              run.data.params, curves))
    return runs


def summary_table(runs: list[RunCurves]) -> str:
    header = f"{'run':<28}{'arch':>7}{'model':>8}{'params':>12}{'steps':>8}{'best val loss':>15}{'TFLOPs':>10}{'tokens/s':>11}"
    lines = [header, "-" * len(header)]
    for run in runs:
        val = run.curves["val/loss"][1]
        throughput = run.curves["train/tokens_per_sec"][1]
        steps = run.curves["train/loss"][0]
        flops = run.last("train/flops_seen")
        lines.append(
            f"{run.name[:27]:<28}{run.params.get('architecture', 'gpt2'):>7}{run.params.get('training.model_type', '?'):>8}"
            f"{int(run.params.get('n_parameters', 0)):>12,}{(steps[-1] if steps else 0):>8}"
            f"{(min(val) if val else float('nan')):>15.4f}{(flops or 0) / 1e12:>10.2f}"
            f"{(sum(throughput) / len(throughput) if throughput else 0):>11,.0f}"
        )
    return "\n".join(lines)


def plot(runs: list[RunCurves], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    figures = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures.append(path)

    fig, (by_step, by_flops) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        steps, loss = run.curves["train/loss"]
        val_steps, val_loss = run.curves["val/loss"]
        line, = by_step.plot(steps, loss, alpha=0.6, label=f"{run.name} train")
        by_step.plot(val_steps, val_loss, "o-", color=line.get_color(), label=f"{run.name} val")
        flops_steps, flops = run.curves["train/flops_seen"]
        if flops:
            flops_at = dict(zip(flops_steps, flops))
            by_flops.plot([flops_at.get(s, float("nan")) for s in steps], loss, alpha=0.6, color=line.get_color(),
                          label=f"{run.name} train")
            by_flops.plot([flops_at.get(s, float("nan")) for s in val_steps], val_loss, "o-", color=line.get_color(),
                          label=f"{run.name} val")
    by_step.set(xlabel="optimizer step", ylabel="loss (nats/token)", title="Loss vs step")
    by_flops.set(xlabel="training FLOPs (6N + 12LCT per token)", ylabel="loss (nats/token)", title="Loss vs compute",
                 xscale="log")
    for axis in (by_step, by_flops):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save(fig, "loss.png")

    fig, (lr_axis, speed_axis) = plt.subplots(1, 2, figsize=(12, 4))
    for run in runs:
        lr_axis.plot(*run.curves["train/lr"], label=run.name)
        speed_axis.plot(*run.curves["train/tokens_per_sec"], alpha=0.7, label=run.name)
    lr_axis.set(xlabel="optimizer step", ylabel="learning rate", title="Learning-rate schedule")
    speed_axis.set(xlabel="optimizer step", ylabel="tokens / s", title="Throughput")
    for axis in (lr_axis, speed_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save(fig, "schedule_and_throughput.png")
    return figures
