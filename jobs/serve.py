"""`python -m jobs serve --model REF [--model REF ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]`

An OpenAI-compatible HTTP server over registered models (REF: `models:/<name>@champion`, `models:/<name>/<version>`,
`runs:/<id>` or a checkpoint folder): `/v1/models`, `/v1/completions`, `/v1/chat/completions` (streamed or not),
`/health`, and a chat page at `/`. Concurrent requests share each model through continuous batching
(jobs/serving/engine.py). It binds 127.0.0.1 unless --host says otherwise; with --api-key (or the SERVE_API_KEY
environment variable) every /v1 request must send `Authorization: Bearer <key>`.
Options: --max-batch N (sequences decoded together; 1 serves one request at a time), --threads N (CPU threads of
each model's engine, default 1), --engine process|thread (where each model's engine runs: a process of its own,
the default, so that the model's loop and the HTTP side do not share Python's interpreter lock; or a thread of the
server's process), --device auto|cpu|cuda, --prefill-budget N (prompt tokens, padded, prefilled
together in one step before the running streams' next token: a burst of long prompts is taken a few at a time,
and a longer prompt N tokens a step; default 128), --grace-seconds S (on SIGTERM: /health turns 503, new requests
are refused, running ones get S seconds to finish, default 20, then end with finish_reason "abort"; the process
exits 0), --allowed-host NAME
(repeatable: without an API key, also answer requests for this host name, '*' for any; by default only 127.0.0.1,
localhost, ::1 and --host, so that no web page can make a browser drive the server through a DNS name of its own).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Literal

from pydantic import Field

from jobs.cli import Device, Port
from jobs.errors import InputError
from jobs.model_ref import ModelRef

API_KEY_VARIABLE = "SERVE_API_KEY"
Count = Annotated[int, Field(ge=1, le=1024)]
PrefillBudget = Annotated[int, Field(ge=1, le=1 << 20)]
GraceSeconds = Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)]


def allowed_hosts(host: str, extra: list[str]) -> frozenset[str]:
    """The host names the server answers without an API key: the loopback names, the bound one, --allowed-host."""
    from jobs.serving.openai_api import LOOPBACK_HOSTS

    return LOOPBACK_HOSTS | {name.lower().strip("[]") for name in [host, *extra]}


def serve(model: list[str], host: str = "127.0.0.1", port: Port = 8000, api_key: str | None = None,
          max_batch: Count = 16, threads: Count = 1, device: Device = "auto",
          allowed_host: list[str] | None = None, grace_seconds: GraceSeconds = 20.0,
          prefill_budget: PrefillBudget = 128, engine: Literal["process", "thread"] = "process") -> None:
    # the command line (the module docstring is what --help shows)
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
    if api_key is not None and (len(api_key) < 8 or not api_key.isprintable()):
        raise InputError("--api-key: use at least 8 printable characters")
    names = [ModelRef.parse(ref).served_name for ref in model]
    if len(set(names)) != len(names):
        raise InputError(f"--model: the same model is named twice ({', '.join(names)})")
    import uvicorn

    from jobs.serving.engine import Engine
    from jobs.serving.engine_process import EngineProcess
    from jobs.models import load_model
    from jobs.serving.openai_api import ServedModel, ServerState, create_app
    from jobs.serving.shutdown import DrainingServer

    listening = bind(host, port)  # first: a port in use is said before any model loads
    served = []
    engine_class = EngineProcess if engine == "process" else Engine
    try:  # (the finally closes the engines started, also when a later model fails to load)
        for ref, name in zip(model, names):
            loaded = load_model(ref, device)
            served.append(ServedModel(name, loaded, engine_class(loaded.model, max_batch, threads, prefill_budget)))
            print(f"serving {name} ({loaded.model_type} {loaded.config.architecture}, context "
                  f"{loaded.config.max_seq_len}{', chat' if served[-1].chat else ''}) on {loaded.device}, engine in a "
                  f"{engine}", file=sys.stderr)
        if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
            print(f"warning: listening on {host} with no API key: anyone who reaches it can use it", file=sys.stderr)
        port = listening.getsockname()[1]  # bound here, so that --port 0 says which port it got
        shown = f"[{host}]" if ":" in host else host
        print(f"chat page: http://{shown}:{port}/   API: http://{shown}:{port}/v1", file=sys.stderr)
        state = ServerState()
        app = create_app(served, api_key, allowed_hosts(host, allowed_host or []), state)
        server = DrainingServer(uvicorn.Config(app, log_level="warning"), served, state, grace_seconds)
        server.run(sockets=[listening])
    finally:
        for entry in served:
            entry.engine.close()


def bind(host: str, port: int):
    """A listening socket on host:port (port 0: one the system picks), or an InputError saying why not."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    return listening

