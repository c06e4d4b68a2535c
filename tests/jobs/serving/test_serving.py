"""`python -m jobs serve`: the OpenAI-compatible server, tested through the official `openai` client and raw HTTP
against a real server process, plus its continuous-batching engine in-process and its chat page in Chromium."""

import json
import os
import signal
import shutil
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch

from conftest import REPO, free_port, tiny
from jobs.serving.engine import Engine, Request
from model_zoo.build import build_model
from model_zoo.config import ModelConfig

KEY = "test-key-0123456789"
LLAMA = {"architecture": "llama", "n_kv_heads": 1}


# --- the engine, in-process --------------------------------------------------------------------------------


def engine_events(engine, prompts: list[list[int]], per_request: list[dict] | None = None,
                  **settings) -> list[list[tuple]]:
    """Submit every prompt at once (with `settings`, and each its own `per_request` ones); wait for all; every event
    each request got, in order (its tokens, then its end)."""
    events, done = [[] for _ in prompts], [threading.Event() for _ in prompts]

    def emitter(i):
        def emit(event):
            events[i].append(event)
            if event[0] != "token":
                done[i].set()
        return emit

    for i, prompt in enumerate(prompts):
        engine.submit(Request(prompt, emit=emitter(i), **settings, **(per_request[i] if per_request else {})))
    for event in done:
        assert event.wait(60), "the engine did not finish a request"
    return events


def run_engine(engine: Engine, prompts: list[list[int]], per_request: list[dict] | None = None,
               **settings) -> list[tuple[list[int], str]]:
    """As engine_events: each request's tokens and finish reason (or error message)."""
    return [([event[1] for event in got if event[0] == "token"], got[-1][1])
            for got in engine_events(engine, prompts, per_request, **settings)]


@pytest.mark.parametrize("model_type", ["torch", "custom"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_engine_batched_requests_get_the_tokens_they_get_alone(architecture, model_type):
    torch.manual_seed(0)
    config = ModelConfig(architecture=architecture, vocab_size=80, d_model=32, n_heads=4, n_blocks=2, d_ffn=64,
                         max_seq_len=40, init_std=0.2)  # a large init: sharp logits, no near-ties at temperature 0
    model = build_model(config, model_type)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 80, (n,), generator=g).tolist() for n in (1, 7, 3, 12, 5, 9)]
    batched = Engine(model, max_batch=4)  # 6 requests, 4 places: two join when others finish
    alone = Engine(model, max_batch=1)
    chunked = Engine(model, max_batch=4, prefill_budget=5)  # prompts of 7, 9 and 12 tokens: prefilled in chunks
    try:
        together = run_engine(batched, prompts, max_tokens=15, temperature=0.0, stop_ids=frozenset({5}))
        in_chunks = run_engine(chunked, prompts, max_tokens=15, temperature=0.0, stop_ids=frozenset({5}))
        seeded_in_chunks = run_engine(chunked, prompts, max_tokens=10, temperature=1.0, seed=7)
        one_by_one = [run_engine(alone, [p], max_tokens=15, temperature=0.0, stop_ids=frozenset({5}))[0]
                      for p in prompts]
        # sampled with a seed: the same tokens too (each request has its own generator)
        seeded = run_engine(batched, prompts, max_tokens=10, temperature=1.0, seed=7)
        seeded_alone = [run_engine(alone, [p], max_tokens=10, temperature=1.0, seed=7)[0] for p in prompts]
        # and with top-k, row by row: what `generate` samples (the same sampler and settings) for the same seed
        top_k = [{"top_k": k, "top_p": p} for k, p in zip((3, None, 5, 1, None, 8), (None, 0.9, None, None, None, 0.8))]
        filtered = run_engine(batched, prompts, top_k, max_tokens=10, temperature=1.0, seed=7)
    finally:
        batched.close(), alone.close(), chunked.close()
    assert together == one_by_one == in_chunks
    assert seeded == seeded_alone == seeded_in_chunks
    from model_zoo.generation import generate_tokens

    by_generate = [list(generate_tokens(model, p, max_new_tokens=10, temperature=1.0, seed=7, **settings))
                   for p, settings in zip(prompts, top_k)]
    assert [tokens for tokens, _ in filtered] == by_generate
    assert {reason for _, reason in together} <= {"stop", "length"}
    # the context ends generation: prompt 12 + 15 tokens fits in 40; a 39-token prompt gets 2 tokens at most
    long = Engine(model, max_batch=2)
    try:
        (tokens, reason), = run_engine(long, [[1] * 39], max_tokens=15, temperature=0.0)
    finally:
        long.close()
    assert len(tokens) <= 2 and (reason == "length" or len(tokens) < 2)


def test_engine_cancelled_request_leaves_the_batch():
    config = ModelConfig(vocab_size=50, d_model=16, n_heads=2, n_blocks=1, d_ffn=32, max_seq_len=4096)
    engine = Engine(build_model(config, "torch"), max_batch=2)
    seen = threading.Event()
    request = Request([1, 2, 3], max_tokens=100_000, emit=lambda event: seen.set(), temperature=1.0)
    try:
        engine.submit(request)
        assert seen.wait(30)
        deadline = time.time() + 10
        while engine.active == 0 and time.time() < deadline:  # the first token is sent just before it joins
            time.sleep(0.01)
        assert engine.active == 1
        request.cancel()
        deadline = time.time() + 10
        while engine.active and time.time() < deadline:
            time.sleep(0.01)
        assert engine.active == 0, "a cancelled request still holds its place"
    finally:
        engine.close()


def test_what_one_request_raises_ends_that_request_alone(monkeypatch):
    """A request whose prefill fails (a seed torch cannot take, past the API's own check), and one whose sampling
    fails in the batch: each gets its error, and the request beside it runs to its end."""
    import jobs.serving.engine as engine_module

    config = ModelConfig(vocab_size=50, d_model=16, n_heads=2, n_blocks=1, d_ffn=32, max_seq_len=64)
    engine = Engine(build_model(config, "torch"), max_batch=4)
    try:
        seeds = [{"seed": None}, {"seed": 2**64}]
        (tokens, reason), (bad_tokens, bad_reason) = run_engine(engine, [[1, 2, 3]] * 2, seeds, max_tokens=20,
                                                                 temperature=1.0)
        assert reason == "length" and len(tokens) == 20
        assert bad_reason.startswith("internal error") and bad_tokens == []

        real = engine_module.sample_rows
        calls = {"bad": 0}

        def breaks_on_the_second_use(logits, temperatures, top_ks, top_ps, generators):
            if 0.5 in temperatures:  # the marked request: its prefill samples, its first decode step raises
                calls["bad"] += 1
                if calls["bad"] > 1:
                    raise RuntimeError("sampling failed")
            return real(logits, temperatures, top_ks, top_ps, generators)

        monkeypatch.setattr(engine_module, "sample_rows", breaks_on_the_second_use)
        temperatures = [{"temperature": 1.0}, {"temperature": 0.5}]
        (tokens, reason), (bad_tokens, bad_reason) = run_engine(engine, [[1, 2, 3]] * 2, temperatures, max_tokens=20,
                                                                 seed=7)
        assert reason == "length" and len(tokens) == 20
        assert bad_reason.startswith("internal error") and len(bad_tokens) == 1
    finally:
        engine.close()


# --- the engine in a process of its own (serve's default) ------------------------------------------------------


@pytest.mark.parametrize("model_type, architecture", [("torch", "gpt2"), ("custom", "llama")])
def test_engine_process_gives_the_tokens_and_logprobs_of_the_engine_in_process(model_type, architecture):
    """The same requests (greedy, seeded, with log-probabilities and stops) through an EngineProcess and an Engine:
    the same tokens, the same log-probabilities, the same finish reasons. The model crosses to the child once."""
    from jobs.serving.engine_process import EngineProcess

    torch.manual_seed(0)
    config = ModelConfig(architecture=architecture, vocab_size=80, d_model=32, n_heads=4, n_blocks=2, d_ffn=64,
                         max_seq_len=40, init_std=0.2, **({"n_kv_heads": 2} if architecture == "llama" else {}))
    model = build_model(config, model_type)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 80, (n,), generator=g).tolist() for n in (1, 7, 3, 12, 5)]
    settings = [{"temperature": 0.0, "stop_ids": frozenset({5})}, {"temperature": 1.0, "seed": 3, "logprobs": 2},
                {"temperature": 0.8, "seed": 4, "top_k": 5}, {"temperature": 1.0, "seed": 5, "top_p": 0.9},
                {"temperature": 0.0, "logprobs": 0}]

    def logprobs(events):  # every (token, log-probability, top ids, top values) of every request, in order
        return [(e[1], e[2].logprob, tuple(i for i, _ in e[2].top), tuple(v for _, v in e[2].top))
                for request in events for e in request if len(e) > 2 and e[2]]

    in_process, in_child = Engine(model, max_batch=3), EngineProcess(model, max_batch=3)
    try:
        here = engine_events(in_process, prompts, settings, max_tokens=12)
        there = engine_events(in_child, prompts, settings, max_tokens=12)
        # the same tokens and ends; the log-probabilities to float rounding (a row's logits may come from batches of
        # other sizes, whose matrix kernels add in another order, as requests join at other steps)
        assert [[e[:2] for e in request] for request in there] == [[e[:2] for e in request] for request in here]
        assert len(logprobs(here)) == 12 + 12 and [(t, ids) for t, _, ids, _ in logprobs(there)] == [
            (t, ids) for t, _, ids, _ in logprobs(here)]
        def values(events):
            return torch.tensor([v for _, logprob, _, top in logprobs(events) for v in (logprob, *top)])
        assert torch.allclose(values(there), values(here), atol=1e-5)
        assert in_child.unfinished == 0 and in_child.active == 0
    finally:
        in_process.close(), in_child.close()
    assert not in_child._process.is_alive()


def test_engine_process_cancels_ends_and_reports_a_dead_child():
    """A cancelled request leaves the child's batch; end_all ends the rest with its reason; when the child dies,
    what it held gets an error and the next submit is refused."""
    from jobs.serving.engine_process import EngineProcess

    config = ModelConfig(vocab_size=50, d_model=16, n_heads=2, n_blocks=1, d_ffn=32, max_seq_len=4096)
    engine = EngineProcess(build_model(config, "torch"), max_batch=4)
    try:
        ends, tokens = {}, {}

        def emitter(name):
            def emit(event):
                tokens[name] = tokens.get(name, 0) + (event[0] == "token")
                if event[0] != "token":
                    ends[name] = event[1]
            return emit
        cancelled = Request([1, 2, 3], max_tokens=100_000, emit=emitter("cancelled"), temperature=1.0)
        ended = Request([4, 5], max_tokens=100_000, emit=emitter("ended"), temperature=1.0)
        engine.submit(cancelled)
        engine.submit(ended)
        deadline = time.time() + 30
        while (engine.active < 2 or len(tokens) < 2) and time.time() < deadline:
            time.sleep(0.01)
        assert engine.active == 2 and engine.unfinished == 2
        cancelled.cancel()
        while engine.active != 1 and time.time() < deadline:
            time.sleep(0.01)
        assert engine.active == 1 and "cancelled" not in ends, "a cancelled request still holds its place"
        engine.end_all("abort")
        while "ended" not in ends and time.time() < deadline:
            time.sleep(0.01)
        assert ends["ended"] == "abort"
        assert engine.unfinished == 0 and "cancelled" not in ends  # a cancelled request is answered no more

        last = Request([6], max_tokens=100_000, emit=emitter("last"), temperature=1.0)
        engine.submit(last)
        while tokens.get("last", 0) == 0 and time.time() < deadline:
            time.sleep(0.01)
        engine._process.kill()
        while "last" not in ends and time.time() < deadline:
            time.sleep(0.01)
        assert "engine process stopped" in ends["last"] and engine.unfinished == 0
        with pytest.raises(RuntimeError, match="stopped"):
            engine.submit(Request([1], max_tokens=1, emit=lambda event: None))
    finally:
        engine.close()


# --- the HTTP edge, in-process: what is checked before a request reaches a model ------------------------------


@pytest.fixture
def edge(tmp_path, tokenizer_folder):
    """The app over a tiny untrained chat model, without an API key, and a way to call it."""
    from starlette.testclient import TestClient

    from conftest import make_checkpoint
    from jobs.models import load_model
    from jobs.serving.openai_api import ServedModel, create_app

    loaded = load_model(str(make_checkpoint(tmp_path / "ckpt", tokenizer_folder)), "cpu")
    engine = Engine(loaded.model, max_batch=4)

    def client(**app_settings):
        return TestClient(create_app([ServedModel("tiny", loaded, engine)], **app_settings),
                          base_url="http://127.0.0.1:8000")
    yield client
    engine.close()


def test_every_numeric_field_is_checked_at_the_edge(edge):
    http = edge()
    for field, value in [("seed", 2**64), ("seed", 2**80), ("seed", -1), ("max_tokens", 2**40), ("max_tokens", 0),
                         ("temperature", 3), ("top_p", 0), ("top_k", -1), ("top_k", 2**40)]:
        response = http.post("/v1/completions", json={"model": "tiny", "prompt": "Tim", field: value})
        assert response.status_code == 400 and response.json()["error"]["param"] == field, (field, response.text)
    highest = http.post("/v1/completions", json={"model": "tiny", "prompt": "Tim", "seed": 2**64 - 1, "max_tokens": 2})
    assert highest.status_code == 200


def test_a_top_p_that_underflows_float32_samples_the_most_likely_token(edge):
    http = edge()
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 6, "ignore_eos": True}
    tiny_p = http.post("/v1/completions", json=body | {"top_p": 1e-300, "seed": 3}).json()
    greedy = http.post("/v1/completions", json=body | {"temperature": 0}).json()
    assert tiny_p["usage"]["completion_tokens"] == 6 and tiny_p["choices"][0]["text"] == greedy["choices"][0]["text"]
    top_1 = http.post("/v1/completions", json=body | {"top_k": 1, "seed": 3}).json()  # vLLM's top_k, as generate's
    assert top_1["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_chunked_bodies_are_counted_as_they_arrive_and_messages_bounded(edge):
    from jobs.serving.openai_api import MAX_BODY_BYTES

    http = edge()

    def chunks():  # no Content-Length: sent chunked, as the 300 MB body of the attack was
        for _ in range(3 * MAX_BODY_BYTES // 65536):
            yield b"x" * 65536

    response = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    messages = [{"role": "user", "content": "word " * 19_000}] * 2  # 190,000 characters, under 1 MB
    response = http.post("/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert response.status_code == 400 and "at most 100,000" in response.json()["error"]["message"]
    assert http.get("/health").status_code == 200


def test_bodies_that_are_not_json_and_wrong_methods_get_openai_errors(edge):
    http = edge()
    for body, words in [(b"\xff\xfe{}", "not UTF-8"), (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
                        (b"{not json", "not valid JSON")]:
        response = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text
    wrong_method = http.get("/v1/completions")
    assert wrong_method.status_code == 405 and set(wrong_method.json()) == {"error"}
    assert http.get("/v1/nothing").json()["error"]["message"] == "Not Found"
    # curl -d sends a form's Content-Type: the body is read as the JSON it is
    form = http.post("/v1/completions", content=b'{"model": "tiny", "prompt": "Tim", "max_tokens": 2}',
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 200 and form.json()["usage"]["completion_tokens"] >= 1


def test_an_empty_assistant_turn_is_valid_history(edge):
    """A model may answer nothing (its first token ends the turn); a client that sends that turn back is served."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""},
                {"role": "user", "content": "Tell me a story."}]
    response = edge().post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 3})
    assert response.status_code == 200, response.text


def test_serve_binds_before_loading_and_says_the_port_it_got():
    from jobs.errors import InputError
    from jobs.serve import bind

    listening = bind("127.0.0.1", 0)
    try:
        port = listening.getsockname()[1]
        assert port > 0
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    finally:
        listening.close()


def test_without_a_key_only_the_bound_host_names_are_answered(edge):
    evil = {"host": "attacker.example:8000"}
    http = edge()
    refused = http.get("/v1/models", headers=evil)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host"
    assert http.get("/", headers=evil).status_code == 400  # the chat page too
    assert http.get("/health", headers=evil).status_code == 200  # probes send the pod's address
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000", "LOCALHOST:1"):
        assert http.get("/v1/models", headers={"host": host}).status_code == 200, host
    assert edge(allowed_hosts=frozenset({"attacker.example"})).get("/v1/models", headers=evil).status_code == 200
    assert edge(allowed_hosts=frozenset({"*"})).get("/v1/models", headers=evil).status_code == 200
    keyed = edge(api_key="a-key-12345678")  # with a key, the key is what protects
    assert keyed.get("/v1/models", headers=evil | {"authorization": "Bearer a-key-12345678"}).status_code == 200


@pytest.mark.parametrize("model_type", ["torch", "custom"])
@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_engine_logprobs_are_the_full_forward_log_softmax_before_temperature(architecture, model_type):
    """Each sampled token's log-probability, and the N likeliest at its position, are the model's log-softmax over a
    full forward of prompt + tokens: at temperature 1.7 with top-k 5, where the sampling distribution differs."""
    torch.manual_seed(0)
    config = ModelConfig(architecture=architecture, vocab_size=80, d_model=32, n_heads=4, n_blocks=2, d_ffn=64,
                         max_seq_len=40, init_std=0.2)
    model = build_model(config, model_type)
    prompts = [[3, 9, 27], [41]]
    engine = Engine(model, max_batch=4)
    events = [[], []]
    done = [threading.Event(), threading.Event()]
    try:
        for i, prompt in enumerate(prompts):  # together, so the rows of one decode step are checked too
            engine.submit(Request(prompt, 12, lambda e, i=i: (events[i].append(e), e[0] != "token" and done[i].set()),
                                  temperature=1.7, top_k=5, seed=i, logprobs=3))
        assert all(d.wait(60) for d in done)
    finally:
        engine.close()
    for prompt, got in zip(prompts, events):
        tokens = [e[1] for e in got if e[0] == "token"]
        logprobs = [e[2] for e in got if e[0] == "token"]
        assert len(tokens) == 12 and all(len(lp.top) == 3 for lp in logprobs)
        with torch.no_grad():
            logits, _ = model(torch.tensor([prompt + tokens]))
        expected = torch.log_softmax(logits[0].float(), dim=-1)[len(prompt) - 1:-1]  # (12, V): where each was chosen
        chosen = expected.gather(1, torch.tensor(tokens)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor([lp.logprob for lp in logprobs]), chosen, atol=1e-4, rtol=0)
        top_values, top_ids = expected.topk(3, dim=-1)
        torch.testing.assert_close(torch.tensor([[v for _, v in lp.top] for lp in logprobs]), top_values,
                                   atol=1e-4, rtol=0)
        assert [[i for i, _ in lp.top] for lp in logprobs] == top_ids.tolist()


def test_engine_choices_share_one_prefill_and_each_gets_what_it_gets_alone():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=80, d_model=32, n_heads=4, n_blocks=2, d_ffn=64, max_seq_len=40, init_std=0.2)
    model = build_model(config, "torch")
    calls = []
    forward = model.forward
    model.forward = lambda idx, *a, **k: (calls.append(idx.shape[1]), forward(idx, *a, **k))[1]
    engine = Engine(model, max_batch=4)
    prompt = [3, 9, 27, 41, 2]
    tokens, done = [[], [], []], [threading.Event() for _ in range(3)]

    def emitter(i):
        return lambda e: tokens[i].append(e[1]) if e[0] == "token" else done[i].set()
    try:
        engine.submit(*[Request(prompt, 8, emitter(i), temperature=1.0, seed=20 + i) for i in range(3)])
        assert all(d.wait(60) for d in done)
        with pytest.raises(ValueError, match="fit in the batch"):
            engine.submit(*[Request(prompt, 8, emitter(0)) for _ in range(5)])
    finally:
        engine.close()
    assert calls.count(len(prompt)) == 1, f"one prefill for three choices: forward lengths {calls}"
    from model_zoo.generation import generate_tokens

    model.forward = forward
    assert tokens == [list(generate_tokens(model, prompt, max_new_tokens=8, temperature=1.0, top_k=None, seed=20 + i))
                      for i in range(3)]


# --- a real server process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two trained tiny models (a registered torch GPT-2, a custom Llama checkpoint folder) behind one server."""
    from jobs.training.trainer import run_training

    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        import mlflow

        mlflow.set_tracking_uri(uri)
        run_training(tiny(root / "gpt2", model={"max_seq_len": 64}, max_steps=80))
        llama = run_training(tiny(root / "llama", "custom", model=LLAMA | {"max_seq_len": 64}, max_steps=12))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri, "SERVE_API_KEY": KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs", "serve", "--model", "models:/tiny_torch@champion",
         "--model", str(llama.checkpoint_dir / "best"), "--port", str(port)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if process.poll() is not None:
                    pytest.fail(f"the server exited: {process.stdout.read()}")
                time.sleep(0.3)
        else:
            pytest.fail("the server did not answer /health in 90 s")
        yield {"base": base, "llama": f"{llama.checkpoint_dir.name}/best", "process": process}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


GPT2 = "tiny_torch@champion"


@pytest.mark.slow
def test_models_completions_and_chat_through_the_openai_client(server, client):
    names = {m.id for m in client.models.list().data}
    assert names == {GPT2, server["llama"]}

    for model in (GPT2, server["llama"]):  # both model types serve
        whole = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, seed=1)
        assert whole.object == "text_completion" and whole.choices[0].finish_reason in ("stop", "length")
        assert whole.usage.prompt_tokens > 0 and 0 < whole.usage.completion_tokens <= 12
        pieces = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0,
                                           stream=True)
        chunks = list(pieces)
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text  # streamed = whole, at T=0
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason

    messages = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "Tell me a story."}]
    reply = client.chat.completions.create(model=GPT2, messages=messages, max_tokens=10, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    streamed = client.chat.completions.create(model=GPT2, messages=messages, max_tokens=10, temperature=0,
                                              stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    # the same seed gives the same sample; a stop sequence cuts the text before it, with finish_reason "stop"
    a = client.completions.create(model=GPT2, prompt="Tim", max_tokens=16, temperature=1.0, seed=3)
    b = client.completions.create(model=GPT2, prompt="Tim", max_tokens=16, temperature=1.0, seed=3)
    assert a.choices[0].text == b.choices[0].text
    full = client.completions.create(model=GPT2, prompt="Once upon a time,", max_tokens=20, temperature=0).choices[0]
    stop = full.text[len(full.text) // 2:][:2]  # two characters from the middle of what it writes
    assert stop, f"the model wrote nothing to stop on: {full}"
    cut = client.completions.create(model=GPT2, prompt="Once upon a time,", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == full.text[:full.text.index(stop)]


@pytest.mark.slow
def test_logprobs_in_openai_shapes_through_the_official_client_whole_and_streamed(server, client):
    whole = client.completions.create(model=GPT2, prompt="Once upon a time", max_tokens=8, temperature=1.0, seed=5,
                                      logprobs=2)
    lp = whole.choices[0].logprobs
    n = whole.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n > 0
    assert "".join(lp.tokens) == whole.choices[0].text and lp.text_offset[0] == 0
    assert all(value <= 0 for value in lp.token_logprobs) and all(len(top) == 2 for top in lp.top_logprobs)
    assert all(max(top.values()) >= chosen - 1e-6 for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
    streamed = list(client.completions.create(model=GPT2, prompt="Once upon a time", max_tokens=8, temperature=1.0,
                                              seed=5, logprobs=2, stream=True))
    assert [v for c in streamed if c.choices[0].logprobs for v in c.choices[0].logprobs.token_logprobs] == \
        pytest.approx(lp.token_logprobs)

    messages = [{"role": "user", "content": "Tell me a story."}]
    reply = client.chat.completions.create(model=GPT2, messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                           top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert "".join(item.token for item in content) == reply.choices[0].message.content
    assert all(len(item.top_logprobs) == 3 and item.top_logprobs[0].token == item.token for item in content), \
        "greedy: the chosen token is the likeliest"
    assert all(bytes(item.bytes).decode() == item.token for item in content)
    chunks = list(client.chat.completions.create(model=GPT2, messages=messages, max_tokens=6, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    assert [i.logprob for c in chunks if c.choices and c.choices[0].logprobs for i in c.choices[0].logprobs.content] \
        == pytest.approx([item.logprob for item in content])
    plain = client.chat.completions.create(model=GPT2, messages=messages, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None
    bad = httpx.post(server["base"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": GPT2, "messages": messages, "top_logprobs": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"


@pytest.mark.slow
def test_n_choices_through_the_official_client_seeded_whole_and_streamed(server, client):
    many = client.completions.create(model=GPT2, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=11,
                                     n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    again = client.completions.create(model=GPT2, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=11,
                                      n=3)
    assert [c.text for c in again.choices] == [c.text for c in many.choices], "a seed gives the same choices"
    one = client.completions.create(model=GPT2, prompt="Once upon a time", max_tokens=10, temperature=1.0, seed=11)
    assert one.choices[0].text == many.choices[0].text, "choice 0 is what n = 1 samples"
    assert len({c.text for c in many.choices}) > 1, "each choice has its own generator"
    assert many.usage.prompt_tokens == one.usage.prompt_tokens
    streamed = list(client.completions.create(model=GPT2, prompt="Once upon a time", max_tokens=10, temperature=1.0,
                                              seed=11, n=3, stream=True, stream_options={"include_usage": True}))
    texts, finished = ["", "", ""], [None] * 3
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finished[choice.index] = choice.finish_reason or finished[choice.index]
    assert texts == [c.text for c in many.choices] and all(finished)
    assert streamed[-1].usage.completion_tokens == many.usage.completion_tokens
    messages = [{"role": "user", "content": "Tell me a story."}]
    chat = client.chat.completions.create(model=GPT2, messages=messages, max_tokens=6, temperature=0, n=2)
    assert len(chat.choices) == 2 and chat.choices[0].message.content == chat.choices[1].message.content  # greedy


@pytest.mark.slow
def test_metrics_in_prometheus_format_count_the_traffic(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        text = httpx.get(server["base"] + "/metrics").text  # no key, as /health
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = scrape()
    reply = client.completions.create(model=GPT2, prompt="Once upon a time", max_tokens=6, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert httpx.get(server["base"] + "/v1/models").status_code == 401  # a refusal is counted too
    after = scrape()

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("tf_requests_total", endpoint="/v1/completions", status="200") == 1
    assert grew("tf_requests_total", endpoint="/v1/models", status="401") == 1
    assert grew("tf_prompt_tokens_total", model=GPT2) == reply.usage.prompt_tokens
    assert grew("tf_generation_tokens_total", model=GPT2) == reply.usage.completion_tokens == 6
    assert grew("tf_time_to_first_token_seconds_count", model=GPT2) == 1
    assert grew("tf_time_per_output_token_seconds_count", model=GPT2) == 5  # the gaps between 6 tokens
    assert after[("tf_num_requests_running", (("model", GPT2),))] == 0
    assert ("tf_num_requests_waiting", (("model", server["llama"]),)) in after


@pytest.mark.slow
def test_concurrent_requests_at_temperature_0_get_their_tokens_alone(server, client):
    prompts = ["Once upon a time", "Lily had a", "The cat", "One day, Sam", "Mia", "The boat was lost"]
    alone = [client.completions.create(model=GPT2, prompt=p, max_tokens=20, temperature=0).choices[0].text
             for p in prompts]
    together = [None] * len(prompts)

    def ask(i):
        together[i] = client.completions.create(model=GPT2, prompt=prompts[i], max_tokens=20, temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert together == alone


BAD_REQUESTS = [  # (path, body, status, words in the message)
    ("/v1/completions", {"model": GPT2, "prompt": "x", "n": 9}, 400, "n"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "n": 0}, 400, "n"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ("/v1/chat/completions", {"model": GPT2, "messages": [{"role": "user", "content": "x"}], "logprobs": True,
                              "top_logprobs": -1}, 400, "top_logprobs"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "seed": 2**80}, 400, "seed"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "seed": -1}, 400, "seed"),
    ("/v1/chat/completions", {"model": GPT2, "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, 400, "'tools' is not supported"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "temperature": 9}, 400, "temperature"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": GPT2, "prompt": 42}, 400, "prompt"),
    ("/v1/completions", {"model": GPT2}, 400, "prompt"),
    ("/v1/completions", {"model": GPT2, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "'nope' is not served here"),
    ("/v1/completions", {"model": GPT2, "prompt": "word " * 500}, 400, "this model's context is 64"),
    ("/v1/completions", {"model": GPT2, "prompt": "word " * 1000}, 400, "this model's context is 64"),
    ("/v1/chat/completions", {"model": GPT2, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": GPT2, "messages": [{"role": "robot", "content": "x"}]}, 400, "unknown role"),
    ("/v1/chat/completions", {"model": GPT2, "messages": [{"role": "user", "content": ""}]}, 400, "non-empty"),
    ("/v1/chat/completions", {"model": GPT2, "messages": [{"role": "user", "content": "x"},
                                                          {"role": "system", "content": "y"}]}, 400, "system"),
]


@pytest.mark.slow
def test_bad_requests_get_openai_errors_and_the_server_stays_up(server):
    base = server["base"]
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
        for path, body, status, words in BAD_REQUESTS:
            response = http.post(path, json=body)
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and words in error["message"], error
        for content, words in [(b"{not json", "not valid JSON"), (b'{"model": "\xff"}', "not UTF-8"),
                               (b"[" * 100_000 + b"]" * 100_000, "nested too deep")]:
            malformed = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
            assert malformed.status_code == 400 and words in malformed.json()["error"]["message"], malformed.text
        huge = http.post("/v1/completions", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
        assert huge.status_code == 413
        for key in ("", "Bearer wrong-key-123"):
            denied = httpx.get(f"{base}/v1/models", headers={"Authorization": key})
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{base}/health").status_code == 200  # the probe needs no key
        for i in range(200):  # a stream of bad requests of every kind does not take the server down
            path, body, status, _ = BAD_REQUESTS[i % len(BAD_REQUESTS)]
            assert http.post(path, json=body).status_code == status
        good = http.post("/v1/completions", json={"model": GPT2, "prompt": "Tim", "max_tokens": 3})
        assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] >= 1

    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0).completions.create(model="x", prompt="y")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="not-the-key", max_retries=0).models.list()


@pytest.mark.slow
def test_a_client_that_vanishes_mid_stream_frees_its_place(server):
    base = server["base"]
    body = {"model": GPT2, "prompt": "Once", "max_tokens": 10_000, "temperature": 1.0, "stream": True}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first chunk arrived: the request is generating; now hang up
        deadline = time.time() + 15
        while time.time() < deadline:
            if http.get("/health").json()["models"][GPT2]["active"] == 0:
                break
            time.sleep(0.1)
        assert http.get("/health").json()["models"][GPT2]["active"] == 0, "the abandoned request kept generating"
        assert http.post("/v1/completions", json={"model": GPT2, "prompt": "Tim", "max_tokens": 2}).status_code == 200


def chromium_and_driver() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
@pytest.mark.skipif(chromium_and_driver() is None,
                    reason="no Chromium and chromedriver here (apt-get install chromium chromium-driver)")
def test_chat_page_in_a_real_browser_streams_a_reply(server):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = chromium_and_driver()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(server["base"] + "/")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: GPT2 in [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#model option")])
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0")
        driver.find_element(By.ID, "message").send_keys("Tell me a story about Tim.")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled()
                   and d.find_elements(By.CSS_SELECTOR, "#log .assistant"))
        reply = driver.execute_script("return document.querySelector('#log .assistant').textContent")
        chunks = int(driver.execute_script("return document.querySelector('#log .assistant').dataset.chunks || 0"))
        assert driver.find_elements(By.CSS_SELECTOR, "#log .user")[0].text == "You: Tell me a story about Tim."
        assert not driver.find_elements(By.CSS_SELECTOR, "#log .error")
    finally:
        driver.quit()
    expected = openai.OpenAI(base_url=server["base"] + "/v1", api_key=KEY, max_retries=0).chat.completions.create(
        model=GPT2, messages=[{"role": "user", "content": "Tell me a story about Tim."}], temperature=0)
    assert reply == "Model: " + expected.choices[0].message.content  # the page shows what the API answers
    assert expected.usage.completion_tokens < 2 or chunks >= 2, "the reply arrived in one piece, not streamed"


@pytest.mark.slow
@pytest.mark.parametrize("grace, finish", [(60, "length"), (0, "abort")])
def test_sigterm_drains_open_streams_then_exits_0(tmp_path, tokenizer_folder, grace, finish):
    """SIGTERM with a stream open: /health turns 503 and new requests are refused at once; the stream finishes within
    the grace period (60 s: its own end, "length"), or is ended with a final chunk when there is none (0 s:
    "abort"); either way it closes with [DONE], and the server exits 0."""
    from conftest import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "ckpt", tokenizer_folder, chat=False, max_seq_len=2048, d_model=256,
                                 n_blocks=4, d_ffn=1024)  # about 3 ms a token on 2 cores: the stream lasts seconds
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "jobs", "serve", "--model", str(checkpoint), "--port", str(port),
                                "--grace-seconds", str(grace)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        (model,) = [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]]
        body = {"model": model, "prompt": "Once", "max_tokens": 1500, "ignore_eos": True, "stream": True, "seed": 1}
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            process.send_signal(signal.SIGTERM)
            if grace:  # draining, while the stream still runs
                time.sleep(0.2)
                assert process.poll() is None, process.stdout.read()
                assert httpx.get(f"{base}/health").status_code == 503
                refused = httpx.post(f"{base}/v1/completions", json={"model": model, "prompt": "x"})
                assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
            rest = [line for line in lines if line.startswith("data: ")]
        chunks = [json.loads(line[6:]) for line in [first, *rest[:-1]]]
        assert rest[-1] == "data: [DONE]"
        assert chunks[-1]["choices"][0]["finish_reason"] == finish
        if finish == "length":
            assert sum(len(c["choices"][0]["text"]) for c in chunks) > 0
        assert process.wait(timeout=60) == 0, process.stdout.read()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
