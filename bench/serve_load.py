"""Load test of `llmlab serve` on this CPU: continuous batching against the same server decoding one request
at a time (`--max-running 1`), in the same run, then the faults.

Model: a random-initialised llama-mini (~16M parameters, BPE vocabulary 8,192: the shape matters, not the
weights). Clients (asyncio + httpx, traffic only to 127.0.0.1) stream completions with mixed prompt lengths
(4 to 48 words) and outputs (16 to 64 tokens); each client sends requests back to back for --seconds, then
the requests in flight finish. Per concurrency level (1, 8, 32, 64 clients): output tokens/s, time to first
token and inter-token latency (p50/p99), requests completed, errors and truncated responses.

Faults: 16 clients that hang up after their first token (the running count must return to 0), a burst of
200 requests at a server with a queue of 32 (429s with Retry-After, no 5xx, the rest served), SIGTERM with 16
streams in flight (each stream ends cleanly or is cut, the process exits 0 within its deadline), and a soak at
moderate load (--soak seconds, 8 clients) with the server's resident memory sampled every 5 s.

    .venv/bin/python bench/serve_load.py                 # ~8 minutes on 2 cores
    .venv/bin/python bench/serve_load.py --levels "" --soak 600     # the faults and a 10-minute soak
    .venv/bin/python bench/serve_load.py --compiled --levels 1,8,32 --soak 0   # eager vs compiled step too

The load levels run with `--compile off` (and with `--compiled`, once more with the step compiled); the
faults run the server as a user starts it (compiled, the default).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

WORDS = "the of and to in is for def return self import class if else with as not none true false".split()


def build_model(folder: Path, block_size: int = 256) -> None:
    from llmlab.checkpoint.folder import save_checkpoint
    from llmlab.config import ModelConfig
    from llmlab.data.sources import read_documents
    from llmlab.model import build_model as build
    from llmlab.tokenizer import train_tokenizer

    tok = train_tokenizer(
        list(itertools.islice(read_documents(None), 2000)), kind="bpe", vocab_size=8192, family="decoder"
    )
    config = ModelConfig.from_preset("llama-mini", vocab_size=tok.vocab_size, block_size=block_size)
    save_checkpoint(folder, build(config).eval(), tok)


def start_server(folder: Path, max_running: int, max_queue: int, compile: str = "auto",
                 *extra: str) -> tuple[subprocess.Popen, str]:  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "llmlab", "serve", str(folder), "--name", "m", "--port", "0",
                             "--max-running", str(max_running), "--max-queue", str(max_queue), "--compile", compile,
                             *extra], stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("serving"):
            return proc, "http://127.0.0.1:" + re.search(r":(\d+)/v1", line).group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def request_body(rng: random.Random) -> dict:
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 48)))
    return {"model": "m", "prompt": prompt, "max_tokens": rng.randint(16, 64), "temperature": 0.8, "stream": True}


async def one_request(client: httpx.AsyncClient, url: str, body: dict, hang_up_after: int | None = None) -> dict:
    """Stream one completion: its token arrival times, status, and whether it ended with [DONE]."""
    start, times, done = time.perf_counter(), [], False
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=180) as r:
            if r.status_code != 200:
                await r.aread()
                return {"status": r.status_code, "times": [], "done": False, "start": start}
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if chunk.get("choices") and chunk["choices"][0]["text"]:
                        times.append(time.perf_counter())
                    if hang_up_after is not None and len(times) >= hang_up_after:
                        return {"status": 200, "times": times, "done": False, "start": start, "hung_up": True}
    except httpx.HTTPError as exc:
        return {"status": type(exc).__name__, "times": times, "done": False, "start": start}
    return {"status": 200, "times": times, "done": done, "start": start}


async def load(url: str, clients: int, seconds: float, seed: int, max_requests: int = 2000) -> dict:
    rng = random.Random(seed)
    results, stop_at = [], time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async with httpx.AsyncClient(limits=limits) as client:

        async def user(i: int) -> None:
            while time.perf_counter() < stop_at and len(results) < max_requests:
                results.append(await one_request(client, url, request_body(rng)))

        t0 = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200 and r["done"]]
    ttft = [r["times"][0] - r["start"] for r in ok if r["times"]]
    itl = [b - a for r in ok for a, b in zip(r["times"], r["times"][1:])]
    tokens = sum(len(r["times"]) for r in ok)
    return {"clients": clients, "requests": len(results), "completed": len(ok),
            "errors": sum(r["status"] != 200 for r in results),
            "truncated": sum(r["status"] == 200 and not r["done"] for r in results),
            "tokens_per_s": tokens / wall, "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
            "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99), "wall": wall}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def running(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^llmlab_running_sequences (\S+)", text, re.M).group(1))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def faults(folder: Path, soak: float) -> list[str]:
    lines = []
    proc, url = start_server(folder, 16, 32)
    async with httpx.AsyncClient() as client:
        rng = random.Random(1)
        await asyncio.gather(*(one_request(client, url, {**request_body(rng), "max_tokens": 64}, hang_up_after=1)
                               for _ in range(16)))  # fmt: skip
        deadline = time.monotonic() + 30
        while running(url) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        lines.append(f"disconnects: 16 clients hung up after their first token; running sequences "
                     f"{running(url):.0f} {time.monotonic() - deadline + 30:.1f} s later")  # fmt: skip
        burst = await asyncio.gather(*(one_request(client, url, request_body(rng)) for _ in range(200)))
        codes = {}
        for r in burst:
            codes[r["status"]] = codes.get(r["status"], 0) + 1
        lines.append(f"burst: 200 requests at 16 running + 32 queued: statuses {codes}; "
                     f"{sum(r['done'] for r in burst)} completed")  # fmt: skip
    if soak > 0:
        samples, stop_at = [], time.monotonic() + soak

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                samples.append(rss_mib(proc.pid))
                await asyncio.sleep(5)

        result, _ = await asyncio.gather(load(url, 8, soak, 5, max_requests=100 * int(soak)), sampler())
        lines.append(f"soak: {result['wall']:.0f} s of load at 8 clients, {result['completed']} requests, "
                     f"{result['errors']} errors; "
                     f"server RSS {samples[0]:.0f} -> {max(samples):.0f} (max) -> {samples[-1]:.0f} MiB")  # fmt: skip
    async with httpx.AsyncClient() as client:
        rng = random.Random(2)
        tasks = [asyncio.create_task(one_request(client, url, {**request_body(rng), "max_tokens": 64}))
                 for _ in range(16)]  # fmt: skip
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks)
        code = await asyncio.to_thread(proc.wait, 60)
        ended = sum(r["done"] for r in results)
        lines.append(f"SIGTERM with 16 streams in flight: {ended} finished, {16 - ended} cut, exit code {code} "
                     f"after {time.monotonic() - t0:.1f} s")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load per concurrency level")
    parser.add_argument("--soak", type=float, default=60.0, help="seconds of the soak (0: skip)")
    parser.add_argument("--levels", default="1,8,32,64", help="client counts ('' : the faults and soak only)")
    parser.add_argument("--compiled", action="store_true", help="also load a server whose step is compiled "
                        "(the others decode eagerly: --compile off)")  # fmt: skip
    args = parser.parse_args()
    print(describe())
    levels = [int(x) for x in args.levels.split(",") if x]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama-mini"
        build_model(folder)
        rows = {}
        modes = [("continuous", 64, "off"), ("one at a time", 1, "off")]
        modes += [("continuous, compiled step", 64, "on")] if args.compiled else []
        for mode, max_running, compile in modes if levels else ():
            proc, url = start_server(folder, max_running, 256, compile)
            for clients in levels:
                rows[mode, clients] = asyncio.run(load(url, clients, args.seconds, clients))
            print(f"{mode}: server exit code {stop_server(proc)}", flush=True)
        print(
            "\n| server | clients | requests done | errors | truncated | output tok/s | TTFT p50 / p99 (s) | "
            "inter-token p50 / p99 (ms) |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
        )
        for (mode, clients), r in rows.items():
            print(
                f"| {mode} | {clients} | {r['completed']} | {r['errors']} | {r['truncated']} | "
                f"{r['tokens_per_s']:.0f} | {r['ttft_p50']:.2f} / {r['ttft_p99']:.2f} | "
                f"{1000 * r['itl_p50']:.0f} / {1000 * r['itl_p99']:.0f} |"
            )
        for clients in levels:
            a, b = rows["continuous", clients], rows["one at a time", clients]
            print(
                f"{clients} clients: continuous batching {a['tokens_per_s'] / b['tokens_per_s']:.2f}x the "
                "throughput of one at a time"
            )
            if ("continuous, compiled step", clients) in rows:
                c = rows["continuous, compiled step", clients]
                print(f"{clients} clients: the compiled step {c['tokens_per_s'] / a['tokens_per_s']:.2f}x the "
                      "eager one's throughput")  # fmt: skip
        for line in asyncio.run(faults(folder, args.soak)):
            print(line)


if __name__ == "__main__":
    main()
