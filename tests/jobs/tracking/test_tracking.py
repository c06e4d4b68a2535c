"""The tracking module's shapes: the stand-in that ranks other than 0 get answers every call a TrackedRun does."""

import inspect

from jobs.tracking import NullRun, TrackedRun


def test_the_stand_in_for_other_ranks_has_every_call_of_a_tracked_run_and_nothing_else():
    def calls(cls):
        return {name: inspect.signature(member).parameters.keys()
                for name, member in vars(cls).items() if callable(member) and not name.startswith("_")}

    tracked, stand_in = calls(TrackedRun), calls(NullRun)
    assert tracked.keys() == stand_in.keys()
    for name in tracked:
        assert list(tracked[name]) == list(stand_in[name]), name
    assert not hasattr(NullRun(), "log_metric"), "a misspelt call fails on every rank"


def test_a_tracking_uri_that_is_no_url_or_no_mlflow_server_is_one_line(monkeypatch):
    """MLFLOW_TRACKING_URI pointing at a web server that is not MLflow (one that answers 404, one that answers every
    path with a page), or a URI that cannot be parsed: a TrackingError naming it, before any work."""
    import http.server
    import threading

    import pytest

    from jobs import tracking
    from jobs.errors import TrackingError

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args):
            pass

    for handler, words in ((http.server.SimpleHTTPRequestHandler, "HTTP 404 for /health"),
                           (Page, "did not answer JSON")):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
            with pytest.raises(TrackingError, match="is not an MLflow tracking server") as refused:
                tracking.connect()
            assert words in str(refused.value)
        finally:
            server.shutdown()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://[::1")
    with pytest.raises(TrackingError, match="not a URL this can read"):
        tracking.connect()


def test_a_store_that_takes_the_connection_but_never_answers_stalls_a_checkpoint_only_briefly(tmp_path, store):
    """A frozen server (SIGSTOP): flush waits FLUSH_WAIT, then journals what it was sending, and later flushes journal
    at once; when the store answers again, the journal is sent and each metric is stored once."""
    import threading
    import time

    from mlflow.tracking import MlflowClient

    from jobs.tracking.metrics import RunLogger

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("frozen")).info.run_id
    answer = threading.Event()

    class Frozen:
        def log_batch(self, *args, **kwargs):
            answer.wait(60)  # the frozen server: the call neither returns nor fails
            return client.log_batch(*args, **kwargs)

    logger = RunLogger(run_id, tmp_path / "journal.jsonl")
    logger.client, logger.FLUSH_WAIT = Frozen(), 0.5
    logger.log_metrics({"train/loss": 2.0}, step=1)
    started = time.perf_counter()
    logger.flush()
    assert time.perf_counter() - started < 3 and logger.failing
    assert '"step": 1' in (tmp_path / "journal.jsonl").read_text()
    logger.log_metrics({"train/loss": 1.5}, step=2)
    started = time.perf_counter()
    logger.flush()  # during the outage: journalled at once
    assert time.perf_counter() - started < 0.5 and '"step": 2' in (tmp_path / "journal.jsonl").read_text()
    answer.set()  # the server wakes up
    logger.client = client
    logger.close()
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(history) == [(1, 2.0), (2, 1.5)] and not (tmp_path / "journal.jsonl").exists()
