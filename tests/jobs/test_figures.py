"""jobs/figures.py: the summary table and the figures `compare` draws, from plain numbers (no MLflow)."""

from jobs.figures import RunCurves, plot, plot_suite_history, summary_table


def runs() -> list[RunCurves]:
    steps = [0, 10, 20]
    made = []
    for i, name in enumerate(["gpt2-run", "llama-run"]):
        curves = {"train/loss": (steps, [5.0 - i, 4.0 - i, 3.5 - i]), "val/loss": (steps, [5.1 - i, 4.2 - i, 3.7 - i]),
                  "train/lr": (steps, [1e-3, 1e-3, 1e-4]), "train/tokens_per_sec": (steps, [900.0, 950.0, 940.0]),
                  "train/flops_seen": (steps, [0.0, 1e12, 2e12])}
        scores = {"zorro/accuracy": 0.55 + 0.05 * i, "zorro/phenomenon/agreement": 0.6 + 0.1 * i}
        made.append(RunCurves(f"run{i}", name, "1", {"model.architecture": ["gpt2", "llama"][i]}, curves, scores))
    return made


def test_the_table_has_a_row_per_run_with_its_last_validation_loss():
    table = summary_table(runs(), phenomena=True)
    assert "gpt2-run" in table and "llama-run" in table
    assert "3.7" in table and "2.7" in table, table  # each run's last val/loss
    assert "agreement" in table


def test_the_figures_are_drawn_as_png_files(tmp_path):
    figures = plot(runs(), tmp_path / "figures", phenomena=True)
    assert figures and all(p.suffix == ".png" and p.read_bytes()[:4] == b"\x89PNG" for p in figures)
    from jobs.minimal_pairs import SuiteScore

    def score(right: int) -> SuiteScore:
        return SuiteScore("zorro", "ab" * 32, {"p1": (right, 10), "p2": (5, 10)}, {"p1": "agreement", "p2": "island"})

    history = plot_suite_history("zorro", {10: score(4), 20: score(8)}, tmp_path / "history.png")
    assert history.read_bytes()[:4] == b"\x89PNG"
