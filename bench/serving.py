"""The server under 1, 4 and 8 concurrent streaming clients: continuous batching against one request at a time.

    python -m bench.serving --model models:/tinystories_cpu@champion     # needs a trained model (README)

Starts `python -m jobs serve` processes on this machine over the same model: batching (--max-batch 16) with the
engine in a process of its own (the default) and, as the baseline, in a thread of the server's process
(--engine thread); and one serving a request at a time (--max-batch 1, the others wait). Each client sends its
requests one after another, streamed, exactly `max_tokens` each (`ignore_eos`), sampled with a per-request seed:
every server generates the same tokens (a batched request gets what it would get alone), so they do the same
work. Reported per server and number of clients: aggregate tokens/s (all clients' tokens over the wall time), and
p50/p95 of the time to first token and of the time per output token after the first. Rounds interleave the rows
in a new seeded order; the median round's figure is shown, so a busy moment of the machine is spread over all rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

PROMPTS = ["Once upon a time", "Lily had a red ball.", "Tom and his dog", "One day, Sam went to the park.",
           "The little bird", "Mia was sad because", "There was a big tree", "Ben liked to play"]


def start_server(model: str, port: int, max_batch: int, *flags: str) -> subprocess.Popen:
    """A `serve` process over `model`; flags such as ("--engine", "thread") go on its command line."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("SERVE_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "jobs", "serve", "--model", model, "--port", str(port),
                             "--max-batch", str(max_batch), *flags], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 180) -> str:
    """The served model's name, once /health answers."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read()[-2000:]}")
        try:
            return next(iter(httpx.get(f"{base}/health", timeout=1).json()["models"]))
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"{base} did not answer in {timeout:.0f} s")


def one_request(http: httpx.Client, model: str, prompt: str, max_tokens: int, seed: int) -> dict:
    """Stream one completion; time to first token, seconds per later token, tokens."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}  # exactly max_tokens
    start = time.perf_counter()
    first = last = None
    tokens = 0
    with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                first = first or now
                last = now
    first = first or time.perf_counter()
    per_token = (last - first) / (tokens - 1) if last and tokens > 1 else None
    return {"ttft": first - start, "per_token": per_token, "tokens": tokens}


def scenario(base: str, model: str, clients: int, requests_each: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `requests_each` streamed requests in turn."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            for r in range(requests_each):
                result = one_request(http, model, PROMPTS[(c + r) % len(PROMPTS)], max_tokens, seed=1000 * c + r)
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    return {"tokens_per_s": tokens / wall, "tokens": tokens, "ttft": [r["ttft"] for r in results],
            "per_token": [r["per_token"] for r in results if r["per_token"] is not None]}


LONG_PROMPT = " ".join(PROMPTS * 4)  # about 100 tokens of the TinyStories tokenizers (the table prints the count)


def burst(base: str, model: str, running: int, arriving: int) -> dict:
    """`running` streams generate; once each has its first token, `arriving` long prompts come at once. What the
    running streams feel: the longest gap between two of their chunks, against their median time per token. The
    streams generate until the model's context is nearly full, so that they outlast the burst."""
    context = httpx.get(f"{base}/v1/models").json()["data"][0]["context_length"]
    max_tokens = min(context - 16, 256)  # the streams' prompts are under 16 tokens
    arrivals: list[list[float]] = [[] for _ in range(running)]
    tokens = [0] * running
    started = threading.Barrier(running + 1)

    def stream(i: int) -> None:
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 1.0,
                "seed": i, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
        with httpx.Client(base_url=base, timeout=600) as http, http.stream("POST", "/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens[i] = chunk["usage"]["completion_tokens"]
                elif chunk["choices"] and chunk["choices"][0]["text"]:
                    arrivals[i].append(time.perf_counter())
                    if len(arrivals[i]) == 1:
                        started.wait()

    words = LONG_PROMPT.split()[:int((context - 8) / 1.5)]  # about 100 tokens, or what a short context holds
    # The burst comes from a process of its own, as it would from other machines: 16 senders in this process would
    # hold its interpreter lock while the running streams' readers wait to stamp their chunks' arrival.
    spawn = multiprocessing.get_context("spawn")
    ready, go, results = spawn.Event(), spawn.Event(), spawn.Queue()
    sender = spawn.Process(target=send_burst, args=(base, model, " ".join(words), arriving, ready, go, results))
    sender.start()
    if not ready.wait(timeout=120):  # its imports done, before the streams start
        sender.kill()
        raise SystemExit("the burst's sending process did not start in 120 s")
    streams = [threading.Thread(target=stream, args=(i,)) for i in range(running)]
    [t.start() for t in streams]
    started.wait()
    time.sleep(0.05)
    burst_start = time.perf_counter()
    go.set()
    while True:
        try:
            prompt_tokens = results.get(timeout=1)
            break
        except queue.Empty:
            if not sender.is_alive():
                raise SystemExit(f"the burst's sending process failed (exit code {sender.exitcode})") from None
    burst_seconds = time.perf_counter() - burst_start
    sender.join()
    [t.join() for t in streams]
    gaps = [b - a for times in arrivals for a, b in zip(times, times[1:])]
    per_token = [(times[-1] - times[0]) / (n - 1) for times, n in zip(arrivals, tokens) if n > 1]
    return {"worst_gap": max(gaps, default=0.0), "median_per_token": percentile(per_token, 0.5), "burst_seconds": burst_seconds,
            "prompt_tokens": percentile(prompt_tokens, 0.5), "stream_tokens": max_tokens}


def send_burst(base: str, model: str, prompt: str, arriving: int, ready, go, results) -> None:
    """In a process of its own: says it is `ready`, then, once `go` is set, sends `arriving` requests of `prompt` at
    once; their prompt sizes go back through `results`."""
    prompt_tokens: list[int] = []
    # One client for all the senders, made before the burst: an httpx client costs tens of milliseconds of CPU to
    # make (its TLS context); with 16 made at the burst, the first prompt reached the engine 0.75 s late here.
    http = httpx.Client(base_url=base, timeout=600, limits=httpx.Limits(max_connections=max(arriving, 1)))

    def arrive(j: int) -> None:
        body = {"model": model, "prompt": prompt, "max_tokens": 4, "seed": j, "ignore_eos": True}
        prompt_tokens.append(http.post("/v1/completions", json=body).json()["usage"]["prompt_tokens"])

    arrivers = [threading.Thread(target=arrive, args=(j,)) for j in range(arriving)]
    ready.set()
    go.wait()
    [t.start() for t in arrivers]
    [t.join() for t in arrivers]
    http.close()
    results.put(prompt_tokens)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a registry URI or checkpoint folder")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8301, help="the first server; the others take the ports after it")
    parser.add_argument("--burst-budgets", type=int, nargs="*", default=[1_000_000, 512, 128, 64],
                        help="--prefill-budget of the batching servers of the burst scenario (a million: no limit, "
                             "every waiting prompt prefilled in one step); none: skip it")
    parser.add_argument("--skip-clients", action="store_true", help="only the burst scenario")
    parser.add_argument("--engines", nargs="+", choices=["process", "thread"], default=["process", "thread"],
                        help="where the batching servers run their engine (serve --engine): each is measured")
    args = parser.parse_args()
    if not args.skip_clients:
        clients_scenario(args)
    if args.burst_budgets:
        burst_scenario(args)


def burst_scenario(args) -> None:
    """8 streams running, 16 long prompts arriving: one batching server per engine and prefill budget, one at a
    time. Each round is paired with one of the same 8 streams and no burst: the worst gap this machine gives
    without one (scheduling, the clients on the same cores), the floor the burst's figure is read against."""
    rows = []
    for engine, budget in [(engine, budget) for engine in args.engines for budget in args.burst_budgets]:
        process = start_server(args.model, args.port, 16, "--prefill-budget", str(budget), "--engine", engine)
        try:
            base = f"http://127.0.0.1:{args.port}"
            name = wait_ready(base, process)
            burst(base, name, 2, 2)  # warm-up
            results, quiet = [], []
            for _ in range(args.rounds):
                results.append(burst(base, name, 8, 16))
                quiet.append(burst(base, name, 8, 0))
        finally:
            process.terminate()
            process.wait(timeout=30)
        median = sorted(results, key=lambda r: r["worst_gap"])[len(results) // 2]
        median["quiet_gap"] = percentile([r["worst_gap"] for r in quiet], 0.5)
        rows.append((engine, budget, median))
        print(f"{engine} engine, budget {budget}: worst gaps {[round(1e3 * r['worst_gap']) for r in results]} ms",
              file=sys.stderr)
    print(f"\n{args.model}: burst: 8 streams of {rows[0][2]['stream_tokens']} tokens running, 16 prompts of "
          f"{rows[0][2]['prompt_tokens']:.0f} tokens arriving at once; median of {args.rounds} rounds (by worst gap)")
    print(f"{'engine':<9}{'prefill budget':>15}{'worst gap (ms)':>16}{'median ms/token':>17}{'gap / token':>13}"
          f"{'burst served (s)':>18}{'no burst: worst gap (ms)':>26}")
    for engine, budget, r in rows:
        ratio = r["worst_gap"] / r["median_per_token"] if r["median_per_token"] > 0 else float("nan")
        print(f"{engine:<9}{budget:>15,}{1e3 * r['worst_gap']:>16.1f}{1e3 * r['median_per_token']:>17.1f}"
              f"{ratio:>12.1f}x{r['burst_seconds']:>18.2f}{1e3 * r['quiet_gap']:>26.1f}")


def clients_scenario(args) -> None:
    """1, 4 and 8 clients against batching servers (one per engine placement) and a one-at-a-time one."""
    servers = {f"batching, {engine}": (args.port + 1 + i, 16, engine) for i, engine in enumerate(args.engines)}
    servers["one at a time"] = (args.port, 1, args.engines[0])
    processes = {name: start_server(args.model, port, max_batch, "--engine", engine)
                 for name, (port, max_batch, engine) in servers.items()}
    try:
        names = {name: wait_ready(f"http://127.0.0.1:{port}", processes[name]) for name, (port, *_) in servers.items()}
        rows = [(name, clients) for name in servers for clients in args.clients]
        measured: dict[tuple[str, int], list[dict]] = {row: [] for row in rows}
        order = random.Random(0)
        for round_index in range(args.rounds + 1):  # round 0 warms up and is not counted
            order.shuffle(rows)
            for name, clients in rows:
                base = f"http://127.0.0.1:{servers[name][0]}"
                result = scenario(base, names[name], clients, 1 if round_index == 0 else args.requests, args.max_tokens)
                if round_index:
                    measured[(name, clients)].append(result)
                    print(f"round {round_index}: {name:<14} {clients} clients {result['tokens_per_s']:8.1f} tokens/s",
                          file=sys.stderr)
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=30)

    print(f"\n{args.model}: {args.requests} streamed requests per client, max_tokens {args.max_tokens}, temperature 1 "
          f"(seeded), median of {args.rounds} rounds; {os.cpu_count()} CPUs")
    print(f"{'server':<19}{'clients':>8}{'tokens/s':>10}{'vs 1 client':>12}{'TTFT p50':>10}{'TTFT p95':>10}"
          f"{'ms/token p50':>14}{'ms/token p95':>14}")
    for name in servers:
        single = None
        for clients in args.clients:
            results = measured[(name, clients)]
            median = sorted(results, key=lambda r: r["tokens_per_s"])[len(results) // 2]
            single = single or median["tokens_per_s"]
            ttft = [t for r in results for t in r["ttft"]]
            per_token = [t for r in results for t in r["per_token"]]
            print(f"{name:<19}{clients:>8}{median['tokens_per_s']:>10.1f}{median['tokens_per_s'] / single:>11.2f}x"
                  f"{percentile(ttft, 0.5):>9.3f}s{percentile(ttft, 0.95):>9.3f}s"
                  f"{1e3 * percentile(per_token, 0.5):>14.1f}{1e3 * percentile(per_token, 0.95):>14.1f}")


if __name__ == "__main__":
    main()
