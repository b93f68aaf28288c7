"""What a server serves: a base checkpoint under a name, and LoRA adapters on it under theirs, all on one
engine (the adapters' tensors sit beside the base's frozen layers; each request's rows use its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.checkpoint.adapter import read_adapter, read_adapter_tensors, require_base, weights_fingerprint
from llmlab.data.chat import ChatTemplate, find_chat_template
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.load import load_checkpoint
from llmlab.model.lora import LoraSpec, add_multi_lora
from llmlab.serve.engine import Engine


@dataclass
class ServedModel:
    """One name clients ask for: the engine, its adapter (-1: the base) and the chat template."""

    name: str
    engine: Engine
    template: ChatTemplate
    adapter: int = -1

    def prompt_ids(self, text: str) -> list[int]:
        tok = self.engine.tokenizer  # a decoder's prefix (Llama's <s>) or an encoder-decoder's closing </s>
        return family_spec(self.engine.model.config).prompt_ids(tok, tok.encode(text))

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation rendered with the chat template and the generation prompt, as the engine reads it."""
        text, bos = self.template.render(messages, add_generation_prompt=True), self.template.bos_token
        return self.prompt_ids(text[len(bos) :] if bos and text.startswith(bos) else text)

    def chat_ids_count(self, messages: list[dict[str, str]]) -> int:
        return len(self.chat_ids(messages))


def adapter_tensors(folder: str, model, source: str) -> tuple[dict[str, torch.Tensor], float]:
    """A LoRA adapter's tensors (llmlab's folder, its base checked, or PEFT's) and its scale alpha / r."""
    from llmlab.hf.peft import import_peft, is_peft_adapter

    if is_peft_adapter(folder):
        spec, tensors = import_peft(folder, model.config)
        return tensors, spec.scaling
    info = read_adapter(folder)
    require_base(info, weights_fingerprint(model), source)
    if info.method != "lora" or info.settings.get("task"):
        kind = "a task head" if info.settings.get("task") else info.method
        raise LlmlabError(f"{folder} is {kind}: llmlab serve batches LoRA adapters of a language model",
                          "serve it on its own: llmlab serve BASE --adapter DIR is for LoRA adapters")  # fmt: skip
    return read_adapter_tensors(folder), LoraSpec.from_dict(info.settings).scaling


def load_served(source: str, adapters: list[tuple[str, str]], name: str, device: torch.device, dtype: torch.dtype,
                max_running: int, max_queue: int, compile: bool = False, prefix_cache: int = 16
                ) -> list[ServedModel]:  # fmt: skip
    """The base as `name` and each (name, folder) adapter on the same engine (its step compiled if asked;
    prompt prefixes of at least `prefix_cache` tokens shared between requests, 0: never)."""
    ckpt = load_checkpoint(source, device=device, dtype=dtype)
    family_spec(ckpt.model.config).require_generates(
        f"{source} is an encoder: it does not generate text", "serve a decoder or an encoder-decoder model"
    )
    names = [name] + [n for n, _ in adapters]
    if len(set(names)) != len(names):
        raise LlmlabError(f"two served models share a name among {', '.join(names)}", "give each a different name")
    loaded = [adapter_tensors(folder, ckpt.model, source) for _, folder in adapters]
    if loaded:
        add_multi_lora(ckpt.model, [t for t, _ in loaded], [s for _, s in loaded])
        ckpt.model.to(device)
    tok = ckpt.tokenizer
    eos = tok.decode([tok.require("eos", "to end replies")])
    template = find_chat_template(ckpt.path if Path(ckpt.path).is_dir() else None, eos, tok.decode(tok.prefix_ids))
    engine = Engine(ckpt.model, tok, max_running, max_queue, compile=compile, prefix_cache=prefix_cache)
    return [ServedModel(n, engine, template, i - 1) for i, n in enumerate(names)]
