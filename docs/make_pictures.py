"""Re-make the README's pictures: the MLflow UI comparing two runs, and a chat session.

    python docs/make_pictures.py                 # needs Debian's chromium and tmux (apt-get install chromium tmux)

Steps: trains the torch and the custom model on configs/cpu_demo.yaml (--steps to shorten) into a
dedicated MLflow store under assets/pictures/, runs `python -m jobs compare` on both (figures logged to MLflow),
starts `mlflow server` on a free loopback port, and photographs with headless Chromium:
  docs/mlflow_charts.png    the experiment's Chart view: both runs' metrics (train/loss, lr, MFU, ...) by step
  docs/mlflow_compare.png   the compare run's loss figure (loss vs step and vs training FLOPs) in the UI
Then drives `python -m jobs chat` in tmux and renders the screen to docs/chat.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def run(*args: str, env: dict, **kwargs) -> str:
    done = subprocess.run([sys.executable, "-m", "jobs", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"`jobs {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
    return done.stdout


def tools() -> dict[str, str]:
    """Chromium and tmux, found before minutes of training rather than after."""
    found = {"chromium": shutil.which("chromium") or shutil.which("chromium-browser"), "tmux": shutil.which("tmux")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not found: apt-get install -y --no-install-recommends "
                         f"{' '.join(missing)}")
    return found


def screenshot(url: str, out: Path, size: str = "1600,1000", budget_ms: int = 60000) -> None:
    chromium = tools()["chromium"]
    profile = out.parent / f".chromium-{out.stem}"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                    f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
                   capture_output=True, timeout=120, check=True)
    shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {out}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_terminal(text: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [wrapped for line in text.rstrip().splitlines() for wrapped in (textwrap.wrap(line, 110) or [""])]
    fig = plt.figure(figsize=(11, 0.22 * len(lines) + 0.5))
    fig.patch.set_facecolor("#1e1e1e")
    fig.text(0.01, 0.99, "\n".join(lines), family="monospace", fontsize=9.5, color="#e0e0e0", va="top")
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps per model (cpu_demo has 600)")
    args = parser.parse_args()
    tools()
    store = REPO / "assets" / "pictures"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for model_type in ("torch", "custom"):
        print(run("train", "--config", "configs/cpu_demo.yaml", "--model-type", model_type,
                  f"--training.max_steps={args.steps}", "--training.eval_every=50", env=env).splitlines()[-1])
    print(run("compare", "cpu_demo", "--out", str(store / "figures"), "--log", env=env))

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                               "--default-artifact-root", (store / "mlruns").as_uri(), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=store, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        import mlflow

        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name("cpu_demo")
        runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
        compare_run = next(r for r in runs if r.info.run_name == "compare")
        screenshot(f"{base}/#/experiments/{experiment.experiment_id}/runs?compareRunsMode=CHART",
                   DOCS / "mlflow_charts.png")
        screenshot(f"{base}/#/experiments/{experiment.experiment_id}/runs/{compare_run.info.run_id}/artifacts/"
                   f"figures/loss.png", DOCS / "mlflow_compare.png")
    finally:
        os.killpg(server.pid, 15)

    session = "tf-chat-picture"
    subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
                    f"cd {REPO} && MLFLOW_TRACKING_URI={uri} {sys.executable} -m jobs chat "
                    f"--model models:/cpu_demo@champion --max-length 60 --seed 3"], check=True)
    time.sleep(12)
    for line in ("ROMEO:", "temp 0.6", "JULIET:"):
        subprocess.run(["tmux", "send-keys", "-t", session, line, "Enter"], check=True)
        time.sleep(5)
    screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
    subprocess.run(["tmux", "send-keys", "-t", session, "quit", "Enter"], check=True)
    time.sleep(1)
    subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    render_terminal("$ python -m jobs chat --model models:/cpu_demo@champion --max-length 60 --seed 3\n" + screen,
                    DOCS / "chat.png")


if __name__ == "__main__":
    main()
