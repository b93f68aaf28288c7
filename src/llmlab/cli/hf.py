"""Hugging Face interchange: `import` converts a Hugging Face folder or hub id into an llmlab
checkpoint once; `export` writes an llmlab checkpoint as a folder transformers loads, or as one file for a
deployment engine (GGUF for llama.cpp, ONNX for ONNX Runtime)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmlab.cli.common import CHECKPOINT_HELP


def cmd_import(args: argparse.Namespace) -> None:
    from llmlab.hf.importer import import_hf

    ckpt = import_hf(args.source, args.out)
    c = ckpt.model.config
    print(
        f"{args.out}: llmlab checkpoint of {args.source} ({c.family}, {ckpt.model.num_parameters():,} parameters, "
        f"{c.n_layer + (c.n_decoder_layer or 0)} layers, vocabulary {c.vocab_size:,})"
    )


def cmd_export(args: argparse.Namespace) -> None:
    from llmlab.checkpoint.card import export_card
    from llmlab.checkpoint.folder import require_new_folder
    from llmlab.hf.exporter import export_hf
    from llmlab.load import load_checkpoint

    require_new_folder(args.out)  # before the load, which can take a while
    if args.quant is not None and args.to != "gguf":
        from llmlab.errors import LlmlabError

        raise LlmlabError(f"--quant is for --to gguf, not --to {args.to}", "leave --quant out")
    if args.to in ("gguf", "onnx"):
        _export_file(args)
        return
    if args.to == "peft":
        _export_peft(args)
        return
    name = export_hf(load_checkpoint(args.checkpoint, adapter=args.adapter), args.out)
    export_card(args.adapter or args.checkpoint, args.out, f"Hugging Face transformers folder ({name})")
    print(f"{args.out}: Hugging Face folder; load it with transformers' {name} (or its Auto class) and AutoTokenizer")


def _export_file(args: argparse.Namespace) -> None:
    from llmlab.load import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint, adapter=args.adapter)
    if args.to == "gguf":
        from llmlab.export.gguf import export_gguf

        done = export_gguf(ckpt.model, ckpt.tokenizer, args.out, args.quant or "f32", name=Path(ckpt.path).name)
        print(f"{done.path}: GGUF ({done.architecture}, {done.quant}, {done.tensors} tensors, "
              f"{done.bytes / 2**20:.1f} MiB) for llama.cpp (llama-cli -m {done.path}), llama-cpp-python")  # fmt: skip
        return
    from llmlab.export.onnx import export_onnx

    done = export_onnx(ckpt.model, args.out)
    print(f"{done.path}: ONNX ({', '.join(done.inputs)} -> {done.output}, fp32, {done.bytes / 2**20:.1f} MiB); "
          f"ONNX Runtime's outputs match llmlab's within {done.max_abs_diff:.1e}")  # fmt: skip


def _export_peft(args: argparse.Namespace) -> None:
    from llmlab.checkpoint.adapter import is_adapter
    from llmlab.errors import LlmlabError
    from llmlab.hf.peft import export_peft
    from llmlab.load import load_with_lora
    from llmlab.model.lora import LoraSpec

    adapter = args.adapter or args.checkpoint
    if not is_adapter(adapter):
        raise LlmlabError(f"--to peft exports an adapter, and {adapter} is not one", "pass an adapter folder")
    ckpt, lora = load_with_lora(adapter)
    export_peft(ckpt.model, LoraSpec.from_dict(lora), args.out, str(ckpt.path))
    print(
        f"{args.out}: PEFT LoRA adapter; peft.PeftModel.from_pretrained(<the base exported with llmlab export>, "
        f"'{args.out}')"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    im = subparsers.add_parser("import", help="convert a Hugging Face folder or hub id (GPT-2, Llama, T5, BERT) once")
    im.add_argument("source", help="a Hugging Face model folder, or a hub id such as google/flan-t5-small")
    im.add_argument("out", help="the llmlab checkpoint folder to write")
    im.set_defaults(func=cmd_import)

    e = subparsers.add_parser(
        "export", help="write a checkpoint as a Hugging Face folder (GPT-2, Llama, T5, BERT), GGUF or ONNX"
    )
    e.add_argument("checkpoint", help=CHECKPOINT_HELP)
    e.add_argument("out")
    e.add_argument(
        "--to",
        default="hf",
        choices=["hf", "peft", "gguf", "onnx"],
        help="hf: a model folder; peft: an adapter alone; gguf: one file for llama.cpp (Llama/GPT-2-style "
        "decoders); onnx: the forward pass for ONNX Runtime, checked against llmlab's logits",
    )
    e.add_argument(
        "--quant",
        choices=["f32", "f16", "q8_0", "q4_0"],
        help="--to gguf: the matrices' type (default f32; q4_0 keeps the output matrix in q8_0)",
    )
    e.add_argument("--adapter", help="an adapter folder: merged into the export (hf) or exported itself (peft)")
    e.set_defaults(func=cmd_export)
