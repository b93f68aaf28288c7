"""`llmlab report DIR`: one self-contained HTML page of the runs under DIR (a lifecycle's --out, or any run
folders), to open in a browser."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> None:
    from llmlab.report.html import write_report

    out = write_report(args.dir, args.out)
    print(f"{out}: open it in a browser (one file, figures embedded, nothing fetched)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="one HTML page of the runs under a folder: losses, evaluations, cards")
    p.add_argument("dir", help="a run folder, or a folder of them (a lifecycle's --out)")
    p.add_argument("--out", help="the HTML file to write (default: DIR/report.html)")
    p.set_defaults(func=cmd_report)
