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
    if args.react and not args.tool:
        from llmlab.errors import LlmlabError

        raise LlmlabError("--react answers with tools", "pass --tool MODULE:FUNCTION too")
    talk = _with_tools(session, args) if args.tool else session
    interactive = sys.stdin.isatty()
    print(f"chat with {args.checkpoint} ({session.template.origin} template); {HELP}", file=sys.stderr)
    for line in _lines(interactive):
        if not _command(line, session, talk):
            break


def _with_tools(session, args: argparse.Namespace):
    """The session with --tool functions: calls and results are shown on stderr as they happen."""
    from llmlab.tools.functions import load_tool
    from llmlab.tools.loop import ToolChat

    tools = [load_tool(spec) for spec in args.tool]
    if args.react:
        from llmlab.tools.react import ReactChat

        return ReactChat(session, tools, args.max_tool_steps, args.tool_timeout)
    return ToolChat(session, tools, args.tool_choice, args.max_tool_steps, args.tool_timeout)


def _reply(talk, line: str):
    """The reply's text pieces; a tool chat's calls and results go to stderr on the way."""
    for event in talk.send(line):
        if isinstance(event, str):
            yield event
        elif event.kind == "answer":
            yield event.text
        else:
            label = {"call": "tool call", "result": "tool result"}.get(event.kind, event.kind)
            print(f"\n({label}) {event.text}", file=sys.stderr)


def _lines(interactive: bool):
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return
        if line.strip():
            yield line.strip()


def _command(line: str, session, talk) -> bool:
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
        for piece in _reply(talk, line):
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
    c.add_argument("--tool", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="a Python function the model may call (module or file.py path; repeatable)")  # fmt: skip
    c.add_argument("--tool-choice", default="auto", choices=("auto", "required", "none"),
                   help="auto: call or answer; required: the first reply is a call; none: never call")  # fmt: skip
    c.add_argument("--max-tool-steps", type=int, default=4, help="tool calls per message before it must answer")
    c.add_argument("--tool-timeout", type=float, default=10.0, help="seconds a tool may take (default 10)")
    c.add_argument("--react", action="store_true", help="with --tool: ReAct steps (thought, action, observation)")
    c.add_argument("--device", default="auto", help=DEVICE_HELP)
    c.add_argument("--dtype", default="auto", help="auto (bf16 where fast), fp32, bf16, fp16")
    c.set_defaults(func=cmd_chat)
