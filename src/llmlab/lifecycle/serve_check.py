"""The lifecycle's serving stage: start `llmlab serve` on the model in its own process on a free local port,
send the recipe's prompts with the official `openai` client, check that greedy answers are exactly what
`llmlab generate --greedy` gives, record the latencies, and stop the server by its process id."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.lifecycle.recipe import flags

READY_SECONDS = 180  # loading the model and binding the port; bounded, as every wait here


def serve_check(model: str, folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    prompts = options.pop("prompts", None) or ["Hello"]
    max_tokens = int(options.pop("max_tokens", 16))
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "llmlab", "serve", model, "--port", "0", *flags(options)]
    with open(folder / "server.log", "w", encoding="utf-8") as server_log:
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=server_log, text=True)
        try:
            port = _wait_for_port(proc, server_log)
            answers = _ask(f"http://127.0.0.1:{port}/v1", prompts, max_tokens)
        finally:
            _stop(proc)
    expected = _generate(model, prompts, max_tokens)
    result = {"model": model, "prompts": prompts, "answers": [a["text"] for a in answers], "expected": expected,
              "same_as_generate": [a["text"] for a in answers] == expected,
              "latency_s": [round(a["seconds"], 4) for a in answers]}  # fmt: skip
    (folder / "serve.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not result["same_as_generate"]:
        raise LlmlabError(f"the server's greedy answers differ from llmlab generate's ({folder / 'serve.json'})",
                          "report it: the server and the generator share their sampling code")  # fmt: skip
    return result


def _wait_for_port(proc: subprocess.Popen, server_log) -> int:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        server_log.write(line)
        if found := re.search(r"serving .* on http://[^:]+:(\d+)/v1", line):
            threading.Thread(target=_drain, args=(proc, server_log), daemon=True).start()  # a full pipe would block it
            return int(found.group(1))
    raise LlmlabError("the server did not start (see server.log in the stage's folder)", "check the serve options")


def _drain(proc: subprocess.Popen, server_log) -> None:
    for line in proc.stderr:
        server_log.write(line)


def _ask(url: str, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    name = client.models.list().data[0].id
    answers = []
    for prompt in prompts:
        started = time.perf_counter()
        reply = client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0)
        answers.append({"text": reply.choices[0].text, "seconds": time.perf_counter() - started})
    return answers


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server finishes what it holds and exits), then SIGKILL after a bounded wait."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _generate(model: str, prompts: list[str], max_tokens: int) -> list[str]:
    """What `llmlab generate --greedy` answers, loaded as the server loads it."""
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.load import load_checkpoint

    device = resolve_device("auto")
    ckpt = load_checkpoint(model, device=device, dtype=resolve_dtype("auto", device))
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), "greedy": True, "max_new_tokens": max_tokens})
    return [samples[0].text for samples in Generator(ckpt.model, ckpt.tokenizer).generate(prompts, config)]
