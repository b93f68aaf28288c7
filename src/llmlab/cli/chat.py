"""`llmlab chat`: an interactive conversation in the terminal, replies streamed; /reset, /system TEXT,
/exit. Lines come from stdin, so a conversation can be piped in too."""

from __future__ import annotations

import argparse
import sys

from llmlab.cli.common import ADAPTER_HELP, CHECKPOINT_HELP, DEVICE_HELP

HELP = "/reset forgets the conversation, /system TEXT sets the system message, /exit (or Ctrl-D) leaves"


def cmd_chat(args: argparse.Namespace) -> None:
    from llmlab.chat.session import ChatSession
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.config import GenerationConfig
    from llmlab.load import load_checkpoint

    device = resolve_device(args.device)
    ckpt = load_checkpoint(
        args.checkpoint, device=device, dtype=resolve_dtype(args.dtype, device), adapter=args.adapter
    )
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
               "seed": args.seed, "greedy": args.greedy}  # fmt: skip
    generation = GenerationConfig.from_dict({**ckpt.generation.to_dict(), **options})
    session = ChatSession.for_checkpoint(ckpt, generation, args.system)
    interactive = sys.stdin.isatty()
    print(f"chat with {args.checkpoint} ({session.template.origin} template); {HELP}", file=sys.stderr)
    for line in _lines(interactive):
        if not _command(line, session):
            break


def _lines(interactive: bool):
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return
        if line.strip():
            yield line.strip()


def _command(line: str, session) -> bool:
    """Handle one line; False to leave."""
    if line == "/exit":
        return False
    if line == "/reset":
        session.reset()
        print("(conversation reset)", file=sys.stderr)
    elif line.startswith("/system"):
        session.system = line[len("/system") :].strip() or None
        print(f"(system message {'set' if session.system else 'cleared'})", file=sys.stderr)
    elif line.startswith("/"):
        print(f"(unknown command {line.split()[0]}; {HELP})", file=sys.stderr)
    else:
        print("assistant> ", end="", flush=True)
        for piece in session.send(line):
            print(piece, end="", flush=True)
        print()
        for note in session.notes:
            print(f"({note})", file=sys.stderr)
        session.notes.clear()
    return True


def register(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser("chat", help="talk to an instruction-tuned model in the terminal (streamed)")
    c.add_argument("checkpoint", help=CHECKPOINT_HELP)
    c.add_argument("--adapter", help=ADAPTER_HELP)
    c.add_argument("--system", help="the system message")
    c.add_argument("--max-new-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    c.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    c.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    c.add_argument("--greedy", action="store_true", help="always the most likely token")
    c.add_argument("--seed", type=int, help="seed for sampling")
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    c.add_argument("--dtype", default="auto", help="auto (bf16 where fast), fp32, bf16, fp16")
    c.set_defaults(func=cmd_chat)
