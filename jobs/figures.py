"""The summary table and the figures, drawn from plain numbers (RunCurves: a run's metric curves and scores):
what `python -m jobs compare` prints and draws, and what the train job logs as its own figures at the end of a
run. Nothing here talks to MLflow: tracking.load_runs reads the curves and hands them over."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CURVES = ["train/loss", "val/loss", "train/lr", "train/tokens_per_sec", "train/flops_seen"]


@dataclass
class RunCurves:
    run_id: str
    name: str
    experiment_id: str
    params: dict
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # minimal-pair accuracies: <suite>/accuracy, ...

    def suite_accuracy(self) -> dict[str, float]:
        """{suite: overall accuracy} of each suite this run's model was scored on."""
        return {key.removesuffix("/accuracy"): value for key, value in self.scores.items() if key.endswith("/accuracy")}

    def phenomena(self, suite: str) -> dict[str, float]:
        prefix = f"{suite}/phenomenon/"
        return {key.removeprefix(prefix): value for key, value in self.scores.items() if key.startswith(prefix)}

    def last(self, key: str) -> float | None:
        values = self.curves.get(key, ([], []))[1]
        return values[-1] if values else None


def summary_table(runs: list[RunCurves], phenomena: bool = False) -> str:
    """One row per run: size, steps, best validation loss, compute, speed, and each suite's accuracy (with
    phenomena, then a table of accuracy per phenomenon, one column per run)."""
    suites = sorted({suite for run in runs for suite in run.suite_accuracy()})
    header = (f"{'run':<34}{'arch':>7}{'model':>8}{'params':>12}{'steps':>8}{'best val loss':>15}{'TFLOPs':>10}"
              f"{'tokens/s':>11}" + "".join(f"{suite[:14]:>16}" for suite in suites))
    lines = [header, "-" * len(header)]
    for run in runs:
        val = run.curves["val/loss"][1]
        throughput = run.curves["train/tokens_per_sec"][1]
        steps = run.curves["train/loss"][0]
        flops = run.last("train/flops_seen")
        lines.append(
            f"{run.name[:33]:<34}{run.params.get('architecture', 'gpt2'):>7}{run.params.get('training.model_type', '?'):>8}"
            f"{int(run.params.get('n_parameters', 0)):>12,}{(steps[-1] if steps else 0):>8}"
            f"{(min(val) if val else float('nan')):>15.4f}{(flops or 0) / 1e12:>10.2f}"
            f"{(sum(throughput) / len(throughput) if throughput else 0):>11,.0f}"
            + "".join(f"{run.suite_accuracy()[s]:>16.1%}" if s in run.suite_accuracy() else f"{'-':>16}" for s in suites)
        )
    if phenomena:
        for suite in suites:
            names = sorted({name for run in runs for name in run.phenomena(suite)})
            lines += ["", f"{suite}: accuracy per phenomenon (chance 50%)",
                      f"{'phenomenon':<28}" + "".join(f"{run.name[:18]:>20}" for run in runs)]
            for name in names:
                lines.append(f"{name[:27]:<28}" + "".join(
                    f"{run.phenomena(suite)[name]:>20.1%}" if name in run.phenomena(suite) else f"{'-':>20}"
                    for run in runs))
    return "\n".join(lines)


def plot(runs: list[RunCurves], folder: Path, phenomena: bool = False) -> list[Path]:
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

    suites = sorted({suite for run in runs for suite in run.suite_accuracy()})
    if suites:  # what the models know beside how surprised they are: accuracy and loss, run by run
        fig, (loss_axis, *suite_axes) = plt.subplots(1, 1 + len(suites), figsize=(5 + 5 * len(suites), 4.5))
        names = [run.name for run in runs]
        best = [min(run.curves["val/loss"][1]) if run.curves["val/loss"][1] else float("nan") for run in runs]
        loss_axis.barh(names, best, color="tab:blue")
        loss_axis.set(xlabel="best validation loss (nats/token)", title="Loss (lower is better)")
        for suite, axis in zip(suites, suite_axes):
            if phenomena:
                kinds = sorted({name for run in runs for name in run.phenomena(suite)})
                height = 0.8 / max(len(runs), 1)
                for i, run in enumerate(runs):
                    axis.barh([k + i * height for k in range(len(kinds))],
                              [run.phenomena(suite).get(name, float("nan")) for name in kinds], height, label=run.name)
                axis.set_yticks([k + 0.4 - height / 2 for k in range(len(kinds))], kinds, fontsize=7)
                axis.legend(fontsize=7)
            else:
                axis.barh(names, [run.suite_accuracy().get(suite, float("nan")) for run in runs], color="tab:green")
            axis.axvline(0.5, color="grey", ls="--", lw=1)
            axis.set(xlabel="accuracy (pairs right; chance 50%)", xlim=(0, 1), title=f"{suite} minimal pairs")
        for axis in (loss_axis, *suite_axes):
            axis.grid(alpha=0.3, axis="x")
        save(fig, "loss_and_accuracy.png")
    return figures


def plot_suite_history(suite: str, scores: dict, path: Path) -> Path:
    """Minimal-pair accuracy against training step ({step: SuiteScore}): overall, and each phenomenon faintly."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(scores)
    fig, axis = plt.subplots(figsize=(8, 5))
    for phenomenon in scores[steps[-1]].per_phenomenon:
        axis.plot(steps, [scores[s].per_phenomenon[phenomenon][0] / scores[s].per_phenomenon[phenomenon][1]
                          for s in steps], alpha=0.35, lw=1, label=phenomenon)
    axis.plot(steps, [scores[s].accuracy for s in steps], "o-", color="black", lw=2.5, label="overall")
    axis.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    axis.set(xlabel="optimizer step", ylabel="accuracy (pairs right)", ylim=(0, 1),
             title=f"{suite}: grammatical minimal pairs during training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
