"""`llmlab serve CKPT`: an OpenAI-compatible HTTP server with continuous batching (llmlab/serve/)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from llmlab.cli.common import CHECKPOINT_HELP, DEVICE_HELP
from llmlab.errors import LlmlabError
from llmlab.generation.config import COMPILE_CHOICES


def served_models(args: argparse.Namespace) -> list:
    """The base under its name and each --adapter NAME=DIR on the same engine."""
    from pathlib import Path

    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.config import compile_choice
    from llmlab.serve.models import load_served

    device = resolve_device(args.device)
    adapters = []
    for spec in args.adapter or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise LlmlabError(f"--adapter {spec!r} is not NAME=DIR", "name each adapter: --adapter sql=runs/sql-lora")
        adapters.append((name, folder))
    name = args.name or Path(args.checkpoint).name or "model"
    compile = compile_choice(args.compile) != "off"  # auto: on, since a server decodes for long
    models = load_served(args.checkpoint, adapters, name, device, resolve_dtype(args.dtype, device), args.max_running,
                         args.max_queue, compile, args.prefix_cache)  # fmt: skip
    engine = models[0].engine
    if engine.decode.compiled:
        print("compiling the decoding step before serving (20-30 s the first time, seconds from the cache after; "
              "--compile off skips it)", file=sys.stderr, flush=True)  # fmt: skip
        engine.warm_up()
    return models


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from llmlab.serve.app import ServeSettings, create_app
    except ImportError as exc:
        raise LlmlabError(f"llmlab serve needs its web stack ({exc.name} is missing)",
                          "pip install -e '.[serve]'") from None  # fmt: skip

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise LlmlabError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset",
                              f"export {args.api_key_env}=... first")  # fmt: skip
    for name, value in (("--max-running", args.max_running), ("--max-queue", args.max_queue)):
        if value < 1:
            raise LlmlabError(f"{name} must be at least 1, got {value}", f"pass e.g. {name} 16")
    if args.prefix_cache < 0:
        raise LlmlabError(f"--prefix-cache must be 0 (off) or a number of tokens, got {args.prefix_cache}",
                          "pass e.g. --prefix-cache 16")  # fmt: skip
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        # listening from now on: a client that connects once the port is printed waits in the backlog until
        # uvicorn accepts, rather than being refused while the model loads and the server starts
        sock.listen(2048)
    except OSError as exc:
        raise LlmlabError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}",
                          "choose another --port (0 picks a free one)") from None  # fmt: skip
    models = served_models(args)
    index = None
    if args.index:
        from llmlab.retrieval.index import Index

        index = Index.load(args.index)
        print(f"index {args.index}: {len(index)} chunks for chat requests that ask for rag", file=sys.stderr)
    settings = ServeSettings(api_key, args.max_body_bytes, args.request_timeout)
    app = create_app(models, settings, index)
    host, port = sock.getsockname()[:2]
    print(f"serving {', '.join(m.name for m in models)} on http://{host}:{port}/v1 (max {args.max_running} running, "
          f"{args.max_queue} queued{'; API key required' if api_key else ''}); Ctrl-C stops", file=sys.stderr,
          flush=True)  # fmt: skip
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=args.shutdown_timeout,
                            limit_concurrency=args.max_connections)  # fmt: skip
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler it found:
    # a no-op one, so a clean shutdown exits 0 rather than dying of the signal it handled
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
    print("stopped: in-flight requests finished or cancelled", file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--name", help="the model name clients ask for (default: the folder's name)")
    p.add_argument("--adapter", action="append", help="NAME=DIR: also serve a LoRA adapter (llmlab's or PEFT's) "
                   "on the base as NAME (repeatable; requests for every adapter decode together)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed)")
    p.add_argument("--api-key-env", help="require Authorization: Bearer KEY, KEY read from this environment variable")
    p.add_argument("--max-running", type=int, default=16, help="sequences decoded together (KV cache slots)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences waiting for a slot; beyond it: 429")
    p.add_argument("--max-connections", type=int, default=256, help="open connections; beyond it: 503")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body; beyond it: 413")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may take; then 504")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, help="on SIGTERM/Ctrl-C, seconds in-flight "
                   "requests get to finish before they are cancelled")  # fmt: skip
    p.add_argument("--prefix-cache", type=int, default=16, help="reuse the keys of a prompt prefix (a system "
                   "prompt) that earlier requests read, when at least this many tokens; 0: off")  # fmt: skip
    p.add_argument("--index", help='an index (llmlab index build) that chat requests with "rag": {...} answer from')
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", help="auto (bf16 where fast), fp32, bf16, fp16")
    p.add_argument("--compile", choices=COMPILE_CHOICES, default="auto", help="compile the decoding step with "
                   "torch.compile before serving (auto: on, unless $LLMLAB_COMPILE says otherwise)")  # fmt: skip
    p.set_defaults(func=cmd_serve)
