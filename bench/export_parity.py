"""Exports against the engines that run them: llama.cpp reads llmlab's GGUF and writes llmlab's greedy text;
ONNX Runtime computes llmlab's logits (issue 19, requirement 4).

GGUF: the checkpoint (default `runs/main`, a trained Llama-style decoder; trained here for --train-seconds
when absent) is exported with `export_gguf` in f32, f16, q8_0 and q4_0, loaded by llama-cpp-python (its Python
package from the source package under $LLMLAB_CACHE/llamacpp, on the libllama that `bench/decode_vs_llamacpp.py`
builds there; built once if absent), and for each prompt: llama.cpp's tokenization of the text against
llmlab's, greedy continuations token for token (llama.cpp's greedy sampler against llmlab's `Generator`),
and the largest difference between the two engines' logits over the prompt. The quantized files are also
compared with llmlab running the same rounded weights (each matrix quantized and dequantized as the file holds
it), which leaves only llama.cpp's own arithmetic (it rounds activations to 8 bits too). A GPT-2-style model (random
weights, the same tokenizer) is checked the same way in f32. ONNX: the checkpoint exported with
`export_onnx` (its own check at two random shapes), then ONNX Runtime's logits on the prompts and their
greedy argmax against llmlab's.

    .venv/bin/python bench/export_parity.py     # ~20 s on 2 cores with runs/main and llama.cpp built (~4 min more)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_vs_llamacpp import build_llama_bench, cache_root  # noqa: E402
from machine import describe  # noqa: E402

from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.config import ModelConfig  # noqa: E402
from llmlab.export.gguf import export_gguf  # noqa: E402
from llmlab.export.onnx import export_onnx  # noqa: E402
from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.load import load_checkpoint  # noqa: E402
from llmlab.model import build_model  # noqa: E402

PROMPTS = ["def main():\n    ", "The history of the", "import os\nimport", "class Stack:\n", "Once upon a time, "]

LLAMA_CPP = """
import json, sys
import llama_cpp
path, prompts, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, n_batch=256, logits_all=True, verbose=False)
results = []
for prompt in prompts:
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
    llm.reset()
    llm.eval(ids)
    logits = [[float(x) for x in llm.scores[i]] for i in range(len(ids))]
    llm.reset()
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if token == llm.token_eos() or len(out) == new:
            break
        out.append(token)
    results.append({"ids": ids, "logits": logits, "new": out, "text": llm.detokenize(out).decode(errors="replace")})
llm.close()
print(json.dumps(results))
"""


def llama_cpp_env(lib: Path) -> dict[str, str]:
    """The environment that imports llama-cpp-python from its source package on the built libllama."""
    package = lib.parents[3]  # llama_cpp_python-X/vendor/llama.cpp/build/bin -> llama_cpp_python-X
    deps = cache_root() / "llamacpp" / "python-deps"
    if not (deps / "diskcache").exists():  # llama-cpp-python's one pure-Python dependency that llmlab lacks
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(deps), "diskcache"],
                       check=True)  # fmt: skip
    return {**os.environ, "PYTHONPATH": f"{deps}:{package}", "LLAMA_CPP_LIB_PATH": str(lib)}


def run_llama_cpp(env: dict, path: Path, new: int) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", LLAMA_CPP, str(path), json.dumps(PROMPTS), str(new)], env=env,
                          check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def llmlab_side(model, tokenizer, new: int) -> list[dict]:
    generator = Generator(model, tokenizer, compile="off")
    completions = generator.generate(PROMPTS, GenerationConfig(max_new_tokens=new, greedy=True))
    results = []
    for prompt, (completion, *_) in zip(PROMPTS, completions):
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).float()[0]
        results.append({"ids": ids, "logits": logits, "new": list(completion.token_ids), "text": completion.text})
    return results


def rounded_like_gguf(model, quant: str):
    """A copy of `model` whose matrices hold what the GGUF of `quant` holds: blocks of 32 along each row
    quantized and dequantized (q4_0 keeps the output matrix in q8_0), other matrices rounded to fp16. The
    exporter's re-layouts move whole rows, so rounding in llmlab's layout rounds the same blocks."""
    import copy

    import gguf

    types = gguf.GGMLQuantizationType
    rounded = copy.deepcopy(model)
    output = "embed.weight" if model.config.tie_embeddings else "lm_head.weight"
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if param.dim() != 2:
                continue
            if param.shape[-1] % 32:
                param.copy_(param.half().float())
                continue
            kind = types.Q8_0 if quant == "q8_0" or name == output else types.Q4_0
            data = param.numpy().astype("float32")
            param.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(data, kind), kind)))
    return rounded


def compare(ours: list[dict], theirs: list[dict]) -> dict:
    same_ids = sum(o["ids"] == t["ids"] for o, t in zip(ours, theirs))
    same_new = sum(o["new"] == t["new"] for o, t in zip(ours, theirs))
    same_text = sum(o["text"] == t["text"] for o, t in zip(ours, theirs))
    diff = max((o["logits"] - torch.tensor(t["logits"])).abs().max().item() for o, t in zip(ours, theirs))
    first = next((i for o, t in zip(ours, theirs) for i, (a, b) in enumerate(zip(o["new"], t["new"])) if a != b), None)
    tokens = sum(len(o["new"]) for o in ours)
    return {"prompts": len(ours), "tokenized alike": same_ids, "greedy equal": same_new, "text equal": same_text,
            "tokens": tokens, "logits max diff": diff, "first divergence": first}  # fmt: skip


def onnx_side(model, tokenizer, work: Path) -> dict:
    done = export_onnx(model, work / "model.onnx")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
    worst, same = 0.0, 0
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            expected = model.float()(ids)
        got = torch.from_numpy(session.run(None, {"input_ids": ids.numpy()})[0])
        worst = max(worst, (got - expected).abs().max().item())
        same += bool((got.argmax(-1) == expected.argmax(-1)).all())
    return {"check": done.max_abs_diff, "prompts": worst, "argmax equal": same, "MiB": done.bytes / 2**20}


def trained_checkpoint(path: Path, seconds: int) -> Path:
    if (path / "model.safetensors").exists():
        return path
    print(f"{path} is absent: pre-training llama-micro for {seconds} s ...", flush=True)
    subprocess.run([sys.executable, "-m", "llmlab", "pretrain", "--preset", "llama-micro", "--max-time", str(seconds),
                    "--out", str(path)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return path


def gpt2_checkpoint(tokenizer, work: Path) -> Path:
    """GPT-2 style, random weights (seed 0) with embeddings scaled up so argmax has clear winners."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("gpt2-micro", vocab_size=tokenizer.vocab_size)).eval()
    with torch.no_grad():
        model.embed.weight.mul_(10)
    save_checkpoint(work / "gpt2", model, tokenizer)
    return work / "gpt2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="runs/main", help="a trained Llama-style decoder")
    parser.add_argument("--new", type=int, default=48, help="greedy tokens per prompt")
    parser.add_argument("--train-seconds", type=int, default=120, help="pre-training when --checkpoint is absent")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(describe())
    _, bench_binary = build_llama_bench(cache_root())
    env = llama_cpp_env(bench_binary.parent)
    ckpt = load_checkpoint(trained_checkpoint(Path(args.checkpoint), args.train_seconds), dtype=torch.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours = llmlab_side(ckpt.model, ckpt.tokenizer, args.new)
        for quant in ("f32", "f16", "q8_0", "q4_0"):
            done = export_gguf(ckpt.model, ckpt.tokenizer, work / f"llama-{quant}.gguf", quant)
            theirs = run_llama_cpp(env, done.path, args.new)
            rows.append((f"llama {quant}", done.bytes, compare(ours, theirs)))
            if quant.startswith("q"):
                same = llmlab_side(rounded_like_gguf(ckpt.model, quant), ckpt.tokenizer, args.new)
                rows.append((f"llama {quant} vs llmlab on its rounded weights", done.bytes, compare(same, theirs)))
        gpt2 = load_checkpoint(gpt2_checkpoint(ckpt.tokenizer, work))
        done = export_gguf(gpt2.model, gpt2.tokenizer, work / "gpt2-f32.gguf")
        theirs, ours = run_llama_cpp(env, done.path, args.new), llmlab_side(gpt2.model, gpt2.tokenizer, args.new)
        rows.append(("gpt2 f32 (random)", done.bytes, compare(ours, theirs)))
        onnx = onnx_side(ckpt.model, ckpt.tokenizer, work)
    report(ckpt, args, rows, onnx)


def report(ckpt, args, rows: list, onnx: dict) -> None:
    c = ckpt.model.config
    print(f"\nmodel: {args.checkpoint} ({c.n_layer} layers, {c.n_embd} wide, {c.n_head}/{c.n_kv_head} heads, "
          f"{ckpt.model.num_parameters() / 1e6:.1f}M parameters); {len(PROMPTS)} prompts, {args.new} greedy tokens "
          "each")  # fmt: skip
    print("\n| GGUF | size | prompts tokenized alike | greedy tokens equal | text equal | logits max abs diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, size, r in rows:
        note = "" if r["first divergence"] is None else f" (first divergence at token {r['first divergence']})"
        print(f"| {name} | {size / 2**20:.1f} MiB | {r['tokenized alike']}/{r['prompts']} | {r['greedy equal']}/"
              f"{r['prompts']} ({r['tokens']} tokens){note} | {r['text equal']}/{r['prompts']} | "
              f"{r['logits max diff']:.2e} |")  # fmt: skip
    print(f"\nONNX ({onnx['MiB']:.1f} MiB, fp32): export check {onnx['check']:.2e}; logits on the prompts max abs "
          f"diff {onnx['prompts']:.2e}; argmax equal everywhere in {onnx['argmax equal']}/{len(PROMPTS)}")  # fmt: skip


if __name__ == "__main__":
    main()
