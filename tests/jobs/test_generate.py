"""generate, chat and evaluate on a checkpoint folder, in seconds (a tiny model with seeded weights: what they print,
not what the model knows; trained models are in tests/scenarios)."""

import io
import json

from conftest import make_checkpoint, run_job, write_stories


def test_generate_with_a_seed_prints_the_same_text_twice(tmp_path, tokenizer_folder, capsys):
    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, chat=False)
    command = ["generate", "--model", checkpoint, "--prompt", "Once upon", "--max-length", 8, "--seed", 7]
    first, second = run_job(command, capsys), run_job(command, capsys)
    assert first[0] == 0 and first[1] == second[1] and first[1].startswith("Once upon"), first


def test_chat_answers_each_line_and_quits(tmp_path, tokenizer_folder, capsys, monkeypatch):
    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, chat=True)
    monkeypatch.setattr("sys.stdin", io.StringIO("Tell me a story.\ntemp 0\nWhat was it?\nquit\n"))
    code, out, err = run_job(["chat", "--model", checkpoint, "--max-length", 6, "--seed", 1], capsys)
    assert code == 0, err[-2000:]
    assert "temperature" in (out + err).lower()


def test_evaluate_scores_a_text_file_and_logs_the_evaluation(tmp_path, tokenizer_folder, store, capsys):
    from mlflow.tracking import MlflowClient

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, chat=False)
    text = write_stories(tmp_path, n=30)
    code, out, err = run_job(["evaluate", "--model", checkpoint, "--text-file", text, "--json"], capsys)
    assert code == 0, err[-2000:]
    result = json.loads(out)
    assert result["loss"] > 0 and result["tokens"] > 0, result
    runs = MlflowClient(store).search_runs(MlflowClient(store).search_experiments()[0].experiment_id)
    assert any(abs(r.data.metrics.get("eval/loss", -1) - result["loss"]) < 1e-4 for r in runs), runs
