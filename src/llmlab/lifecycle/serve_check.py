"""The lifecycle's serving stage: start `llmlab serve` on the model in its own process on a free local port,
send the recipe's prompts with the official `openai` client, check that greedy answers are exactly what
`llmlab generate --greedy` gives (same device and dtype), record the latencies, and stop the server by its
process id. Every wait is bounded."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llmlab.checkpoint.card import is_card_folder, record_serving
from llmlab.errors import LlmlabError
from llmlab.lifecycle.recipe import flags

READY_SECONDS = 180  # loading the model and binding the port


def serve_check(model: str, folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    try:
        import openai
    except ImportError:
        raise LlmlabError("the serve stage calls the server with the openai client", "pip install openai") from None
    prompts = options.pop("prompts", None) or ["Hello"]
    max_tokens = int(options.pop("max_tokens", 16))
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "llmlab", "serve", model, "--port", "0", *flags(options)]
    with open(folder / "server.log", "w", encoding="utf-8") as server_log:
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=server_log, text=True)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read, args=(proc, lines, server_log), daemon=True)
        reader.start()
        try:
            port = _wait_for_port(lines)
            answers = _ask(openai, f"http://127.0.0.1:{port}/v1", prompts, max_tokens)
        finally:
            _stop(proc)
            reader.join(timeout=30)  # the server's last lines into the log before it closes
    expected = _generate(model, prompts, max_tokens, options.get("device", "auto"), options.get("dtype", "auto"))
    result = {"model": model, "prompts": prompts, "answers": [a["text"] for a in answers], "expected": expected,
              "same_as_generate": [a["text"] for a in answers] == expected,
              "latency_s": [round(a["seconds"], 4) for a in answers]}  # fmt: skip
    (folder / "serve.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if is_card_folder(model):
        record_serving(model, result)  # the model's card shows what its serving measured
    if not result["same_as_generate"]:
        raise LlmlabError(f"the server's greedy answers differ from llmlab generate's ({folder / 'serve.json'})",
                          "report it: the server and the generator share their sampling code")  # fmt: skip
    return result


def _read(proc: subprocess.Popen, lines: queue.Queue, server_log) -> None:
    """The server's stderr into its log, each line handed on too (a full pipe would block the server)."""
    for line in proc.stderr:
        server_log.write(line)
        lines.put(line)
    lines.put(None)


def _wait_for_port(lines: queue.Queue) -> int:
    deadline = time.monotonic() + READY_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise LlmlabError("the server exited before it was ready (see server.log in the stage's folder)",
                              "check the serve options and the model")  # fmt: skip
        if found := re.search(r"serving .* on http://[^:]+:(\d+)/v1", line):
            return int(found.group(1))
    raise LlmlabError(f"the server was not ready within {READY_SECONDS} s (see server.log)", "check the serve options")


def _ask(openai, url: str, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    try:
        name = client.models.list().data[0].id
        answers = []
        for prompt in prompts:
            started = time.perf_counter()
            reply = client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0)
            answers.append({"text": reply.choices[0].text, "seconds": time.perf_counter() - started})
    except openai.OpenAIError as exc:
        raise LlmlabError(f"the server answered with an error: {' '.join(str(exc).split())}",
                          "check the serve options (an API key the smoke test does not send?)") from None  # fmt: skip
    return answers


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server finishes what it holds and exits), then SIGKILL after a bounded wait."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _generate(model: str, prompts: list[str], max_tokens: int, device: str, dtype: str) -> list[str]:
    """What `llmlab generate --greedy` answers, loaded as the server loads it."""
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.load import load_checkpoint

    where = resolve_device(device)
    ckpt = load_checkpoint(model, device=where, dtype=resolve_dtype(dtype, where))
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), "greedy": True, "max_new_tokens": max_tokens})
    return [samples[0].text for samples in Generator(ckpt.model, ckpt.tokenizer).generate(prompts, config)]
