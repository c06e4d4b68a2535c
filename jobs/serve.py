"""`python -m jobs serve --model REF [--model REF ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]`

An OpenAI-compatible HTTP server over registered models (REF: `models:/<name>@champion`, `models:/<name>/<version>`,
`runs:/<id>` or a checkpoint folder): `/v1/models`, `/v1/completions`, `/v1/chat/completions` (streamed or not),
`/health`, and a chat page at `/`. Concurrent requests share each model through continuous batching
(jobs/serving/engine.py). It binds 127.0.0.1 unless --host says otherwise; with --api-key (or the SERVE_API_KEY
environment variable) every /v1 request must send `Authorization: Bearer <key>`.
Options: --max-batch N (sequences decoded together; 1 serves one request at a time), --threads N (CPU threads of
each model's engine, default 1), --device auto|cpu|cuda.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs.errors import InputError
from jobs.model_ref import ModelRef

API_KEY_VARIABLE = "SERVE_API_KEY"


def parser() -> argparse.ArgumentParser:
    # argparse, not fire: --model may be given several times, and every flag is checked before any model loads.
    p = argparse.ArgumentParser(prog="python -m jobs serve", description=__doc__.splitlines()[2])
    p.add_argument("--model", action="append", required=True, metavar="REF", help="a model to serve (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--api-key", default=None, help=f"require this Bearer token (default: ${API_KEY_VARIABLE})")
    p.add_argument("--max-batch", type=positive, default=16, help="sequences decoded together (1: one at a time)")
    p.add_argument("--threads", type=positive, default=1,
                   help="CPU threads per model's engine (default 1: small models decode fastest on one)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="without an API key, also answer requests for this host name (repeatable; '*': any). "
                        "By default only 127.0.0.1, localhost, ::1 and --host, so that no web page can make the "
                        "browser drive the server through a DNS name of its own (DNS rebinding)")
    return p


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"needs a whole number from 1 to 1024, got {value}")
    return value


def allowed_hosts(host: str, extra: list[str]) -> frozenset[str]:
    """The host names the server answers without an API key: the loopback names, the bound one, --allowed-host."""
    from jobs.serving.openai_api import LOOPBACK_HOSTS

    return LOOPBACK_HOSTS | {name.lower().strip("[]") for name in [host, *extra]}


def serve(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
    if api_key is not None and (len(api_key) < 8 or not api_key.isprintable()):
        raise InputError("--api-key: use at least 8 printable characters")
    names = [ModelRef.parse(ref).served_name for ref in args.model]
    if len(set(names)) != len(names):
        raise InputError(f"--model: the same model is named twice ({', '.join(names)})")
    import uvicorn

    from jobs.serving.engine import Engine
    from jobs.models import load_model
    from jobs.serving.openai_api import ServedModel, create_app

    listening = bind(args.host, args.port)  # first: a port in use is said before any model loads
    served = []
    for ref, name in zip(args.model, names):
        loaded = load_model(ref, args.device)
        served.append(ServedModel(name, loaded, Engine(loaded.model, args.max_batch, args.threads)))
        print(f"serving {name} ({loaded.model_type} {loaded.config.architecture}, context {loaded.config.max_seq_len}"
              f"{', chat' if served[-1].chat else ''}) on {loaded.device}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: listening on {args.host} with no API key: anyone who reaches it can use it", file=sys.stderr)
    try:
        port = listening.getsockname()[1]  # bound here, so that --port 0 says which port it got
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"chat page: http://{host}:{port}/   API: http://{host}:{port}/v1", file=sys.stderr)
        app = create_app(served, api_key, allowed_hosts(args.host, args.allowed_host))
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listening])
    finally:
        for model in served:
            model.engine.close()


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
