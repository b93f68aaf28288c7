"""Prefix sharing in `llmlab serve`: requests that all begin with the same long system prompt, against the same
server with the prefix cache off (`--prefix-cache 0`), in one run.

Model: a random-initialised llama-mini (~16M parameters, BPE vocabulary 8,192, context 512; the shape matters,
not the weights). Each request is a streamed completion of a system prompt (the same for all) and a
question of 4-12 random words (~265 tokens in all, ~255 of them shared), 16-32 new tokens; clients send
requests back to back for --seconds per level (traffic only to 127.0.0.1, bounded in count and time). Per
server and level: time to first token (p50/p99), output tokens/s, requests, errors, and the prompt tokens
the server reused (its /metrics). The servers decode eagerly (`--compile off`): what prefix sharing saves is
prefill, which is eager either way.

    .venv/bin/python bench/serve_prefix.py         # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from serve_load import WORDS, build_model, one_request, pct, start_server, stop_server  # noqa: E402

SYSTEM = ("You are the assistant of a small software company. Answer questions about its products briefly and "
          "politely, in plain English, without code unless asked. ") * 6  # fmt: skip


async def load(url: str, clients: int, seconds: float, seed: int, max_requests: int = 1000) -> dict:
    rng, results, stop_at = random.Random(seed), [], time.perf_counter() + seconds
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 4)) as client:

        async def user() -> None:
            while time.perf_counter() < stop_at and len(results) < max_requests:
                question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
                body = {"model": "m", "prompt": SYSTEM + "Question: " + question + "\nAnswer:",
                        "max_tokens": rng.randint(16, 32), "temperature": 0.8, "stream": True}  # fmt: skip
                results.append(await one_request(client, url, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200 and r["done"]]
    ttft = [r["times"][0] - r["start"] for r in ok if r["times"]]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "tokens_per_s": sum(len(r["times"]) for r in ok) / wall, "ttft_p50": pct(ttft, 50),
            "ttft_p99": pct(ttft, 99)}  # fmt: skip


def reused_tokens(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(float(re.search(r"^llmlab_prefix_cache_tokens (\S+)$", text, re.M).group(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="load per level and server")
    parser.add_argument("--levels", default="1,8", help="concurrent clients, comma-separated")
    args = parser.parse_args()
    print(describe())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_model(folder, block_size=512)
        for label, prefix in (("prefix cache (16)", "16"), ("no prefix cache", "0")):
            proc, url = start_server(folder, 16, 256, "off", "--prefix-cache", prefix)
            try:
                for clients in [int(c) for c in args.levels.split(",")]:
                    result = asyncio.run(load(url, clients, args.seconds, seed=clients))
                    rows.append((label, result))
                    print(f"{label}, {clients} clients: {result}", flush=True)
                reused = reused_tokens(url)
            finally:
                stop_server(proc)
            print(f"{label}: {reused} prompt tokens reused", flush=True)
    print("\n| server | clients | requests | errors | output tok/s | TTFT p50 / p99 (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, r in rows:
        print(f"| {label} | {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']:.0f} | "
              f"{r['ttft_p50']:.3f} / {r['ttft_p99']:.3f} |")  # fmt: skip
    for clients in sorted({r["clients"] for _, r in rows}):
        on, off = (r for _, r in rows if r["clients"] == clients)
        print(f"{clients} clients: TTFT p50 {off['ttft_p50'] / on['ttft_p50']:.2f}x lower with the prefix cache, "
              f"throughput {on['tokens_per_s'] / off['tokens_per_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
