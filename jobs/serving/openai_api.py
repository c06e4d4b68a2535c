"""The OpenAI HTTP API over our models (FastAPI): what any OpenAI client, curl or the chat page talks to.

    GET  /health                 {"status": "ok"}: the readiness probe (no key needed)
    GET  /metrics                Prometheus' text format (metrics.py; no key needed)
    GET  /v1/models              the served models, by registry name and alias or version
    POST /v1/completions         continue a prompt (any model)
    POST /v1/chat/completions    answer a conversation, rendered with the chat template (chat_template.py)
    GET  /                       the chat page (chat.html)

Both POSTs stream with `"stream": true` (server-sent events: `data: {json}` chunks, then `data: [DONE]`), and give
log-probabilities when asked (completions: `"logprobs": N`; chat: `"logprobs": true, "top_logprobs": N`): each
token's log-softmax under the model at its position, before temperature, top-k and top-p, and the N likeliest. The
generation itself happens in each model's Engine (engine.py), shared by every request. Errors have OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`: 400 for a bad parameter or a prompt over the model's context
(code context_length_exceeded, as OpenAI), 401 without the API key, 404 for an unknown model, 413 for a body over
MAX_BODY_BYTES.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.data import chat_template
from jobs.errors import InputError
from jobs.serving.engine import Engine, Request as EngineRequest
from jobs.serving.loading import encode_prompt
from jobs.serving.metrics import ServerMetrics

MAX_BODY_BYTES = 1_000_000  # a request body over this is refused (413), counted as it arrives, before it is parsed
MAX_MESSAGES_CHARS = 100_000  # all of a conversation's messages together, in characters (as one prompt)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_SEED = 2**64 - 1  # seeds are unsigned 64-bit (torch's generators)
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_CHOICES = 8  # n: completions of one prompt in one request
MAX_LOGPROBS = 20  # the likeliest tokens a request may ask for at each position (OpenAI: 5 for completions, 20 chat)
# Parameters of OpenAI's API that this server does not implement: refused, not silently ignored.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "echo", "suffix",
               "response_format", "logit_bias")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Stop = Annotated[str, Field(min_length=1, max_length=200)]
Text = Annotated[str, Field(max_length=100_000)]  # characters; a prompt over the context is refused in tokens


class _Sampling(BaseModel):
    """What the two POSTs share. Unknown fields are ignored (clients send some, e.g. `user`), except those in
    UNSUPPORTED, which are refused."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=500)
    max_tokens: Annotated[int, Field(ge=1, le=1 << 20)] | None = None  # None: until a stop or the context's end
    max_completion_tokens: Annotated[int, Field(ge=1, le=1 << 20)] | None = None  # the chat API's newer name
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: Annotated[int, Field(ge=0, le=1 << 20)] | None = None  # vLLM's extension (generate's --top-k); 0: off
    stop: Stop | list[Stop] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1  # choices: rows of the batch that share the prompt's prefill
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens even past the end token (benchmarks use it)
    presence_penalty: Literal[0, 0.0] = 0
    frequency_penalty: Literal[0, 0.0] = 0

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise APIError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences", "stop")
        return stops

    def top_logprobs_wanted(self) -> int | None:
        """None: no log-probabilities; N: each token's and the N likeliest at its position."""
        raise NotImplementedError

    def refuse_unsupported(self) -> None:
        for name in UNSUPPORTED:
            if (self.model_extra or {}).get(name) not in (None, False, [], 0):
                raise APIError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")


class CompletionBody(_Sampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]  # one prompt (several: not served)
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None  # the legacy API: an integer top-N

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class Message(BaseModel):
    role: str = Field(max_length=20)
    content: Text


class ChatBody(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=200)
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None

    def top_logprobs_wanted(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("messages")
    @classmethod
    def _bounded(cls, messages: list[Message]) -> list[Message]:
        total = sum(len(m.content) for m in messages)
        if total > MAX_MESSAGES_CHARS:
            raise ValueError(f"the messages hold {total:,} characters together; at most {MAX_MESSAGES_CHARS:,}")
        return messages


@dataclass
class ServerState:
    """What a shutdown changes: once draining, /health answers 503 (a load balancer stops sending) and new requests
    are refused with 503, while the requests in flight (counted here) finish."""

    draining: bool = False
    in_flight: int = 0


@dataclass
class ServedModel:
    name: str  # what clients put in "model": the registry name and alias or version, or the folder
    loaded: object  # jobs.checkpoint.LoadedModel
    engine: Engine

    @property
    def chat(self) -> bool:
        return chat_template.supports_chat(self.loaded.tokenizer)


def create_app(models: list[ServedModel], api_key: str | None = None,
               allowed_hosts: frozenset[str] = LOOPBACK_HOSTS, state: ServerState | None = None):
    state = state if state is not None else ServerState()
    app = FastAPI(title="transformer-fundamentals", docs_url=None, redoc_url=None, openapi_url=None)
    by_name = {m.name: m for m in models}
    metrics = ServerMetrics(models)
    page = (Path(__file__).with_name("chat.html")).read_text(encoding="utf-8")

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error_response(error.status, error.message, error.param, error.code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # 404 for a path, 405 for a method...
        return error_response(error.status_code, str(error.detail), None, None)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        if first.get("type") == "json_invalid":
            return error_response(400, "the body is not valid JSON", None, "invalid_json")
        message = f"{param}: {first['msg']}" if param else first["msg"]
        return error_response(400, message, param, "invalid_value")

    @app.get("/health")
    async def health():
        if state.draining:
            return JSONResponse({"status": "draining"}, 503)
        return {"status": "ok", "models": {m.name: {"active": m.engine.active, "waiting": m.engine.waiting}
                                           for m in models}}

    @app.get("/metrics")
    async def prometheus_metrics():
        text, content_type = metrics.exposition()
        return Response(text, media_type=content_type)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "transformer-fundamentals",
             "chat_template": m.chat, "context_length": m.loaded.config.max_seq_len} for m in models]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        served = find(body)
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        try:  # tokenizing takes time on a long prompt: off the event loop, which keeps answering others
            prompt_ids = await asyncio.to_thread(encode_prompt, served.loaded.tokenizer, prompt)
        except InputError as error:
            raise APIError(400, str(error), "prompt") from None
        return await respond(served, body, request, prompt_ids, "text_completion", metrics)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, request: Request):
        served = find(body)
        if not served.chat:
            raise APIError(400, f"model '{served.name}' has no chat template (its tokenizer predates the chat "
                                "tokens); use /v1/completions", "model", "not_a_chat_model")
        try:
            prompt_ids, _ = await asyncio.to_thread(chat_template.render, served.loaded.tokenizer,
                                                    [m.model_dump() for m in body.messages], True)
        except InputError as error:
            raise APIError(400, str(error), "messages") from None
        return await respond(served, body, request, prompt_ids, "chat.completion", metrics)

    def find(body: _Sampling) -> ServedModel:
        if state.draining:
            raise APIError(503, "the server is shutting down", None, "server_shutting_down")
        body.refuse_unsupported()
        if body.model not in by_name:
            raise APIError(404, f"model '{body.model[:100]}' is not served here (served: {', '.join(by_name)})",
                           "model", "model_not_found")
        return by_name[body.model]

    return in_flight(metrics.count_requests(Guard(app, api_key, allowed_hosts)), state)


def in_flight(app, state: ServerState):
    """An ASGI wrapper that counts the HTTP requests being answered (a shutdown waits for them)."""

    async def counted(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        state.in_flight += 1
        try:
            return await app(scope, receive, send)
        finally:
            state.in_flight -= 1

    return counted


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "::1"."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0].lower()
    return host_header.rpartition(":")[0].lower() if host_header.count(":") == 1 else host_header.lower()


class Guard:
    """What is checked before anything is parsed: the API key; the Host header (without a key, only the names the
    server was bound for, so a web page that rebinds its own DNS name to 127.0.0.1 cannot drive the model; /health
    answers any, for probes); and the body's size, counted as it arrives (a chunked body declares no length).
    A plain ASGI wrapper rather than Starlette's BaseHTTPMiddleware, which copies every streamed chunk through a
    queue of its own."""

    def __init__(self, app: FastAPI, api_key: str | None, allowed_hosts: frozenset[str] = LOOPBACK_HOSTS):
        self.app, self.api_key, self.allowed_hosts = app, api_key, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if (self.api_key is None and "*" not in self.allowed_hosts and scope["path"] not in ("/health", "/metrics")
                and host_name(headers.get("host", "")) not in self.allowed_hosts):
            refusal = error_response(400, f"this server does not answer for the host "
                                          f"{headers.get('host', '')[:100]!r} (serve --allowed-host adds one)",
                                     code="invalid_host")
        elif scope["path"].startswith("/v1/") and self.api_key is not None:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                refusal = error_response(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                         code="invalid_api_key")
        length = headers.get("content-length")
        if refusal is None and length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            refusal = too_large()
        if refusal is not None:
            return await refusal(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = bytearray()
            while True:  # the whole body, counted as it comes (at most MAX_BODY_BYTES are ever held)
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > MAX_BODY_BYTES:
                    return await too_large()(scope, receive, send)
                if not message.get("more_body", False):
                    break
            if scope["path"].startswith("/v1/"):  # the API speaks JSON: a body that is not is refused here, in
                try:  # OpenAI's shape (FastAPI would answer {"detail": ...}, or fail on a body nested too deep)
                    json.loads(bytes(body).decode("utf-8"))
                except (ValueError, RecursionError) as error:  # (UnicodeDecodeError is a ValueError)
                    why = ("not UTF-8" if isinstance(error, UnicodeDecodeError) else
                           "nested too deep" if isinstance(error, RecursionError) else "not valid JSON")
                    return await error_response(400, f"the body is {why}: send a JSON object", None,
                                                "invalid_json")(scope, receive, send)
                # parsed as JSON whatever Content-Type said (curl -d sends a form type)
                scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                             + [(b"content-type", b"application/json")])
            receive = replay(bytes(body), receive)
        return await self.app(scope, receive, send)


def too_large() -> JSONResponse:
    return error_response(413, f"the request body is over {MAX_BODY_BYTES:,} bytes", code="body_too_large")


def replay(body: bytes, receive):
    """An ASGI receive that gives the body already read, then whatever comes next (a disconnect)."""
    given = False

    async def receive_again():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return receive_again


async def respond(served: ServedModel, body: _Sampling, http: Request, prompt_ids: list[int], kind: str,
                  metrics: ServerMetrics):
    """Submit the request's n choices to the model's engine and answer, streamed or whole. Generation ends at the
    model's stop tokens (<|endoftext|>, <|end|>) unless ignore_eos. With a seed, choice i samples with seed + i (so
    choice 0 is what n = 1 gives)."""
    context = served.loaded.config.max_seq_len
    if len(prompt_ids) > context:
        raise APIError(400, f"the prompt is {len(prompt_ids):,} tokens; this model's context is {context:,}",
                       "messages" if kind == "chat.completion" else "prompt", "context_length_exceeded")
    if body.n > served.engine.max_batch:
        raise APIError(400, f"n is {body.n}; this server decodes at most {served.engine.max_batch} sequences together "
                            "(serve --max-batch)", "n", "invalid_value")
    stops = body.stops()
    max_tokens = body.max_completion_tokens or body.max_tokens or context
    events: asyncio.Queue = asyncio.Queue()  # (choice index, event), from every choice
    outbox = Outbox.of(asyncio.get_running_loop())

    def emitter(index: int):
        def emit(event: tuple) -> None:  # on the engine's thread: a token leaves with the time it was made
            outbox.put(events, (index, (*event, time.perf_counter()) if event[0] == "token" else event))
        return emit

    jobs = [EngineRequest(prompt_ids, max_tokens, emitter(i), body.temperature, body.top_p if body.top_p < 1 else None,
                          None if body.seed is None else (body.seed + i) % (MAX_SEED + 1),
                          frozenset() if body.ignore_eos else frozenset(served.loaded.stop_ids),
                          top_k=body.top_k or None, logprobs=body.top_logprobs_wanted()) for i in range(body.n)]
    served.engine.submit(*jobs)
    metrics.prompt_tokens.labels(served.name).inc(len(prompt_ids))
    answer = Answer(served, kind, stops, len(prompt_ids), metrics, body.n)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(stream(answer, jobs, events, http, include_usage), media_type="text/event-stream")
    try:
        async for _ in answer.pieces(jobs, events, http):
            pass
    finally:
        for job in jobs:
            job.cancel()
    return answer.whole()


class Outbox:
    """Events from the engine's thread to the server's event loop, delivered in bunches: one wake-up of the loop
    for all the tokens of a decode step, instead of one per request (each wake-up costs a system call and a turn
    of the interpreter lock, which the engine's thread needs too)."""

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Outbox]" = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.pending, self.lock, self.scheduled = loop, [], threading.Lock(), False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "Outbox":
        if loop not in cls._by_loop:  # keyed by the loop itself: a closed loop's outbox goes with it
            cls._by_loop[loop] = cls(loop)
        return cls._by_loop[loop]

    def put(self, queue: asyncio.Queue, event: tuple) -> None:  # the engine's thread
        with self.lock:
            self.pending.append((queue, event))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self.deliver)

    def deliver(self) -> None:  # the event loop
        with self.lock:
            pending, self.pending, self.scheduled = self.pending, [], False
        for queue, event in pending:
            queue.put_nowait(event)


async def stream(answer: "Answer", jobs: list[EngineRequest], events: asyncio.Queue, http: Request,
                 include_usage: bool):
    """Server-sent events, each chunk one choice's new text (its index says which); a client that goes away cancels
    its requests, which leave the batch at the next step."""
    try:
        if answer.kind == "chat.completion":
            for choice in answer.choices:
                yield answer.sse(answer.chunk(choice, {"role": "assistant", "content": ""}))
        async for choice, piece in answer.pieces(jobs, events, http):
            if piece:
                yield answer.sse(answer.chunk(choice, {"content": piece} if answer.kind == "chat.completion" else piece))
            if choice.finish_reason is not None:
                yield answer.sse(answer.chunk(choice, {} if answer.kind == "chat.completion" else "",
                                              choice.finish_reason))
        if any(choice.finish_reason is None for choice in answer.choices):  # the client went away
            return
        if include_usage:
            yield answer.sse(answer.envelope([]) | {"usage": answer.usage()})
        yield "data: [DONE]\n\n"
    except APIError as error:  # the status line has gone out: the error travels as an event
        yield answer.sse({"error": {"message": error.message, "type": "server_error", "param": None, "code": error.code}})
    finally:
        for job in jobs:
            job.cancel()


class Answer:
    """One response: its choices (n of them) filled as their tokens arrive, in OpenAI's shapes."""

    def __init__(self, served: ServedModel, kind: str, stops: list[str], prompt_tokens: int, metrics: ServerMetrics,
                 n: int = 1):
        self.served, self.kind, self.prompt_tokens = served, kind, prompt_tokens
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        accepted = time.perf_counter()
        self.choices = [Choice(i, served, kind, stops, metrics, accepted) for i in range(n)]

    async def pieces(self, jobs: list[EngineRequest], events: asyncio.Queue, http: Request):
        """Yield (choice, new text) as tokens arrive, until every choice is done (at the engine's end, or a stop
        sequence in its text)."""
        while any(choice.finish_reason is None for choice in self.choices):
            if not events.empty():
                event = events.get_nowait()
            else:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:  # nothing for a second: is the client still there?
                    if await http.is_disconnected():
                        for job in jobs:
                            job.cancel()
                        return
                    continue
            batch = [event]  # and every event already waiting: one piece of text per choice for all of them (when
            while not events.empty():  # this side lags behind the engine, fewer, larger chunks cost less to send)
                batch.append(events.get_nowait())
            touched = []
            for index, (kind, value, *more) in batch:
                choice = self.choices[index]
                if choice.finish_reason is not None:  # cut by a stop sequence: what the engine still sends is moot
                    continue
                if kind == "error":
                    raise APIError(500, value, code="engine_error")
                if kind == "done":
                    choice.finish_reason = value
                else:
                    choice.add(value, *more)
                if choice not in touched:
                    touched.append(choice)
            for choice in touched:
                piece = choice.new_text(final=choice.finish_reason is not None)
                if choice.finish_reason is not None:
                    jobs[choice.index].cancel()  # ended by a stop sequence: the engine frees its row
                yield choice, piece

    def usage(self) -> dict:
        generated = sum(len(choice.ids) for choice in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": generated,
                "total_tokens": self.prompt_tokens + generated}

    def envelope(self, choices: list) -> dict:
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.served.name, "choices": choices}

    def whole(self) -> dict:
        return self.envelope([choice.whole() for choice in self.choices]) | {"usage": self.usage()}

    def chunk(self, choice: "Choice", delta, finish_reason: str | None = None) -> dict:
        if self.kind == "chat.completion":
            return self.envelope([choice.chunk(delta, finish_reason)]) | {"object": "chat.completion.chunk"}
        return self.envelope([choice.chunk(delta, finish_reason)])

    @staticmethod
    def sse(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"


class Choice:
    """The text of one choice as its tokens arrive: decoded whole (so UTF-8 characters split across tokens come out
    whole), cut at the first stop sequence, and given out in pieces that never show part of a stop."""

    def __init__(self, index: int, served: ServedModel, kind: str, stops: list[str], metrics: ServerMetrics,
                 accepted: float):
        self.index, self.served, self.kind, self.stops = index, served, kind, stops
        self.metrics, self.accepted, self.last_token_at = metrics, accepted, None
        self.ids: list[int] = []
        self.logprobs: list = []  # engine.TokenLogprob of each id, when the request asked for them
        self.logprobs_sent = 0  # how many of them the stream has sent
        self.text = ""  # given out so far
        self.finish_reason: str | None = None

    def add(self, token: int, logprob, made_at: float) -> None:
        """A token from the engine, made at `made_at` (its clock): measured as the time to the first token, or
        the gap since the last."""
        self.ids.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        model = self.served.name
        if self.last_token_at is None:
            self.metrics.time_to_first_token.labels(model).observe(made_at - self.accepted)
        else:
            self.metrics.time_per_output_token.labels(model).observe(made_at - self.last_token_at)
        self.last_token_at = made_at
        self.metrics.generation_tokens.labels(model).inc()

    def new_text(self, final: bool) -> str:
        decoded = self.served.loaded.tokenizer.decode(self.ids)
        for stop in self.stops:
            at = decoded.find(stop)
            if at >= 0:
                decoded, self.finish_reason, final = decoded[:at], "stop", True
        if not final:
            if decoded.endswith("\ufffd"):  # half a UTF-8 character: wait for the next token
                return ""
            # hold back an ending that may be the start of a stop sequence
            held = max((n for stop in self.stops for n in range(1, len(stop)) if decoded.endswith(stop[:n])), default=0)
            decoded = decoded[:len(decoded) - held]
        new = decoded[len(self.text):] if decoded.startswith(self.text) else ""
        self.text += new
        return new

    def whole(self) -> dict:
        logprobs = self.logprobs_of(0, self._kept_tokens()) if self.logprobs else None
        if self.kind == "chat.completion":
            return {"index": self.index, "message": {"role": "assistant", "content": self.text}, "logprobs": logprobs,
                    "finish_reason": self.finish_reason}
        return {"index": self.index, "text": self.text, "logprobs": logprobs, "finish_reason": self.finish_reason}

    def chunk(self, delta, finish_reason: str | None = None) -> dict:
        """A stream's choice: new text, and the log-probabilities of the tokens that arrived since the last one."""
        logprobs = None
        if len(self.logprobs) > self.logprobs_sent:
            end = self._kept_tokens() if finish_reason is not None else len(self.logprobs)
            logprobs = self.logprobs_of(self.logprobs_sent, max(end, self.logprobs_sent))
            self.logprobs_sent = len(self.logprobs)
        key = "delta" if self.kind == "chat.completion" else "text"
        return {"index": self.index, key: delta, "logprobs": logprobs, "finish_reason": finish_reason}

    # --- log-probabilities, in OpenAI's two shapes ------------------------------------------------------------

    def _kept_tokens(self) -> int:
        """How many of the tokens made the text given out (a stop sequence cuts the text, and the tokens with it)."""
        decode, kept = self.served.loaded.tokenizer.decode, len(self.logprobs)
        while kept and len(decode(self.ids[:kept - 1])) >= len(self.text):  # the text is whole without the last
            kept -= 1
        return kept

    def logprobs_of(self, start: int, end: int) -> dict:
        """Tokens start .. end - 1 with their log-probabilities: the chat API's `content` list, or the completions
        API's parallel lists (tokens, token_logprobs, top_logprobs, text_offset)."""
        decode = self.served.loaded.tokenizer.decode
        tokens = [decode([token]) for token in self.ids[start:end]]
        entries = self.logprobs[start:end]
        if self.kind == "chat.completion":
            def item(token: str, logprob: float) -> dict:
                return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
            return {"content": [item(token, entry.logprob)
                                | {"top_logprobs": [item(decode([i]), lp) for i, lp in entry.top]}
                                for token, entry in zip(tokens, entries)], "refusal": None}
        return {"tokens": tokens, "token_logprobs": [entry.logprob for entry in entries],
                "top_logprobs": [{decode([i]): lp for i, lp in entry.top} for entry in entries],
                "text_offset": [len(decode(self.ids[:i])) for i in range(start, end)]}
