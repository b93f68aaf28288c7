"""Decode speed against llama.cpp on the same weights, batch 1, in fp32, bf16 and 8-bit.

The yardstick for CPU decoding is llama.cpp. This script builds its `llama-bench` from the source
package of `llama-cpp-python` (`pip download --no-binary`: `vendor/llama.cpp` with its CMake files and
`convert_hf_to_gguf.py`; cmake and a C++ compiler needed), once, under $LLMLAB_CACHE/llamacpp. It makes a
Llama of ~82M parameters (`llama-small`, vocabulary 8,192, random weights: speed does not depend on them),
exports it with the code behind `llmlab export`, converts that folder to f32, bf16 and q8_0 GGUF with
llama.cpp's own converter (told that llmlab's byte-level BPE pre-tokenizes as GPT-2), and measures:

- llama.cpp: `llama-bench -p 0 -n NEW -t THREADS` (tokens/s generating NEW tokens after an empty prompt);
- llmlab: `Generator` greedy, NEW tokens forced (`min_new_tokens`), eager and compiled (`compile="on"`),
  at batch 1, in rounds alternating with llama.cpp, in the reverse order every other round (medians of
  --repeats rounds; the ratio is the median of the rounds' ratios), and compiled at batch 8 and 32
  (throughput: rows x NEW / seconds, median of 3); each precision in a fresh process, as llama-bench is;
- each at batch 1 as bytes of weights read per second (weights / token x tokens / s): the bound is the
  machine's memory bandwidth, which the best of these figures approaches;
- the compile: seconds to compile a step, and the time to the second token (the first decoding step) of a
  fresh process with compilation on, with an empty on-disk cache and again with the cache it left.

    .venv/bin/python bench/decode_vs_llamacpp.py            # ~12 minutes on 2 cores (4 more to build)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.config import ModelConfig  # noqa: E402
from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.model.quantize import QuantizationSpec, quantize_model  # noqa: E402
from llmlab.model.transformer import DecoderLM  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0"}  # llmlab's format -> the GGUF type it meets
# llmlab's int8 is weight-only with one scale per output row, embeddings and head included (`llmlab quantize
# --to int8 --embeddings`); q8_0 keeps a scale per 32 weights and quantizes activations to 8 bits as well.


def cache_root() -> Path:
    return Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab"))


def build_llama_bench(root: Path) -> tuple[Path, Path]:
    """llama.cpp's source folder and its built llama-bench (downloaded and built once)."""
    folder = root / "llamacpp"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(folder.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not sources:
        print("downloading llama-cpp-python's source package ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "llama-cpp-python", "-d", str(folder)], check=True)  # fmt: skip
        archive = sorted(folder.glob("llama_cpp_python-*.tar.gz"))[-1]
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        sources = sorted(folder.glob("llama_cpp_python-*/vendor/llama.cpp"))
    source = sources[-1]
    binary = source / "build" / "bin" / "llama-bench"
    if not binary.exists():
        print(f"building llama-bench in {source / 'build'} (~4 minutes on 2 cores) ...", flush=True)
        subprocess.run(["cmake", "-S", str(source), "-B", str(source / "build"), "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["cmake", "--build", str(source / "build"), "--target", "llama-bench", "-j",
                        str(os.cpu_count() or 2)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return source, binary


CONVERT = """
import sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"  # llmlab's byte-level BPE splits as GPT-2
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def make_model(work: Path) -> tuple[DecoderLM, object, Path]:
    """llama-small with a BPE tokenizer trained on the standard library, saved and exported for llama.cpp."""
    from llmlab.hf.exporter import export_hf
    from llmlab.load import load_checkpoint

    stdlib = Path(os.__file__).parent
    docs = [p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:300]]
    tokenizer = train_tokenizer(docs, "bpe", 8192, "decoder")
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.from_preset("llama-small", vocab_size=8192)).eval()
    save_checkpoint(work / "ckpt", model, tokenizer)
    export_hf(load_checkpoint(work / "ckpt"), work / "hf")
    return model, tokenizer, work / "ckpt"


def llama_cpp_speed(source: Path, binary: Path, hf: Path, gguf_type: str, new: int, threads: int,
                    repeats: int) -> float:  # fmt: skip
    out = hf.parent / f"model-{gguf_type}.gguf"
    if not out.exists():
        subprocess.run([sys.executable, "-c", CONVERT, str(source), str(hf), "--outtype", gguf_type, "--outfile",
                        str(out)], check=True, capture_output=True)  # fmt: skip
    result = subprocess.run([str(binary), "-m", str(out), "-p", "0", "-n", str(new), "-t", str(threads), "-r",
                             str(repeats), "-o", "json"], check=True, capture_output=True, text=True)  # fmt: skip
    return float(json.loads(result.stdout)[0]["avg_ts"])


def huge_page_mib() -> float:
    """MiB of this process's memory in 2 MiB pages: every model this run made so far, their caches and
    activations (llmlab moves the decoding weights there; where the kernel finds no free 2 MiB pages they stay
    in 4 KiB ones and are read ~1.2x slower here, which this number shows by falling short)."""
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return int(text.split("AnonHugePages:")[1].split()[0]) / 1024


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, each storage once (a tied head is the embedding)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def in_format(base: DecoderLM, fmt: str) -> DecoderLM:
    model = copy.deepcopy(base)
    if fmt == "bf16":
        return model.to(torch.bfloat16)
    if fmt == "int8":
        return quantize_model(model, QuantizationSpec(format="int8", embeddings=True))
    return model


def llmlab_speed(generator: Generator, rows: int, new: int, repeats: int = 1) -> float:
    """Tokens per second (rows x new / seconds), the median of `repeats` runs after a warm-up one."""
    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, greedy=True)
    prompts = ["def "] * rows
    generator.generate(prompts, GenerationConfig(max_new_tokens=4, greedy=True))  # warm (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generator.generate(prompts, config)
        times.append(time.perf_counter() - start)
    return rows * new / statistics.median(times)


def batch_one(source: Path, binary: Path, hf: Path, gguf_type: str, model: DecoderLM, tokenizer, args) -> tuple:
    """llama.cpp, llmlab eager and llmlab compiled, measured in turn within each round, so that the load
    of a shared machine (which moved llama.cpp's own figure by 1.7x between two runs here) falls on all
    three alike, in the reverse order every other round (what one leaves behind, the next pays for: llmlab's
    bf16 measured 244-268 tok/s alone and 177-253 right after llama.cpp in one afternoon); medians over the
    rounds, and the median of each round's compiled / llama.cpp."""
    eager_gen, compiled_gen = Generator(model, tokenizer, compile="off"), Generator(model, tokenizer, compile="on")
    measures = {"llama.cpp": lambda: llama_cpp_speed(source, binary, hf, gguf_type, args.new, args.threads, 1),
                "eager": lambda: llmlab_speed(eager_gen, 1, args.new),
                "compiled": lambda: llmlab_speed(compiled_gen, 1, args.new)}  # fmt: skip
    runs = []
    for round_index in range(args.repeats):
        order = list(measures) if round_index % 2 == 0 else list(reversed(measures))
        speeds = {name: measures[name]() for name in order}
        runs.append((speeds["llama.cpp"], speeds["eager"], speeds["compiled"]))
    reference, eager, compiled = (statistics.median(column) for column in zip(*runs))
    return reference, eager, compiled, statistics.median(c / r for r, _, c in runs), compiled_gen


FIRST_STEP = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
start = time.perf_counter()
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.load import load_checkpoint
ckpt = load_checkpoint(sys.argv[1], dtype=torch.bfloat16)
generator = Generator(ckpt.model, ckpt.tokenizer, compile=sys.argv[2])
loaded = time.perf_counter()
generator.generate(["def "], GenerationConfig(max_new_tokens=2, min_new_tokens=2, greedy=True))
step = generator.decode_step(0)
print(f"{time.perf_counter() - loaded:.2f} {sum(step.compile_seconds):.2f}")
"""


def first_step(ckpt: Path, cache: Path, compile: str, threads: int) -> tuple[float, float]:
    """(seconds to the second token after loading, of which compiling) in a fresh bf16 process."""
    env = {**os.environ, "LLMLAB_CACHE": str(cache)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", FIRST_STEP, str(ckpt), compile, str(threads)], env=env,
                         check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1])


def measure_precision(work: Path, fmt: str, args: argparse.Namespace) -> dict:
    """One precision, measured in this process (a fresh one per precision, as llama.cpp's own figures come
    from a fresh process each time: where a model lands in memory after others were made and freed moved
    llmlab's bf16 between 185 and 268 tok/s here)."""
    from llmlab.load import load_checkpoint

    source, binary = build_llama_bench(cache_root())
    ckpt = load_checkpoint(work / "ckpt")
    model = in_format(ckpt.model, fmt)
    size = weight_bytes(model)
    reference, eager, compiled, ratio, compiled_gen = batch_one(source, binary, work / "hf", PRECISIONS[fmt], model,
                                                                ckpt.tokenizer, args)  # fmt: skip
    batched = {b: llmlab_speed(compiled_gen, b, args.new, 3) for b in map(int, args.batches.split(","))}
    return {"size": size, "reference": reference, "eager": eager, "compiled": compiled, "ratio": ratio,
            "batched": batched, "huge_mib": huge_page_mib()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=128, help="tokens generated per row")
    parser.add_argument("--repeats", type=int, default=5, help="rounds at batch 1 (llama.cpp, eager, compiled)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="8,32", help="batch sizes for llmlab's compiled throughput")
    parser.add_argument("--precision", choices=list(PRECISIONS), help=argparse.SUPPRESS)  # a child's one precision
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.precision:
        print(json.dumps(measure_precision(args.work, args.precision, args)))
        return
    print(describe())
    build_llama_bench(cache_root())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, _, ckpt = make_model(work)
        print(
            f"model: llama-small, {base.num_parameters() / 1e6:.1f}M parameters; {args.new} new tokens, "
            f"{args.threads} threads, {args.repeats} rounds at batch 1; each precision in a fresh process\n"
        )
        del base
        rows, throughput = [], []
        for fmt, gguf_type in PRECISIONS.items():
            options = ["--new", str(args.new), "--repeats", str(args.repeats), "--threads", str(args.threads),
                       "--batches", args.batches]  # fmt: skip
            child = subprocess.run([sys.executable, __file__, "--precision", fmt, "--work", str(work), *options],
                                   check=True, stdout=subprocess.PIPE, text=True)  # fmt: skip
            r = json.loads(child.stdout.strip().splitlines()[-1])
            batched = {int(b): v for b, v in r["batched"].items()}
            rows.append((fmt, gguf_type, r["size"], r["reference"], r["eager"], r["compiled"], r["ratio"]))
            throughput.append((fmt, r["compiled"], batched))
            print(f"{fmt}: llama.cpp {r['reference']:.1f}, llmlab eager {r['eager']:.1f}, compiled {r['compiled']:.1f} "
                  f"tokens/s; batches {', '.join(f'{b}: {v:.0f}' for b, v in batched.items())}; memory in 2 MiB "
                  f"pages: {r['huge_mib']:.0f} MiB (the weights: {r['size'] / 2**20:.0f} MiB)", flush=True)  # fmt: skip
        cache = work / "first-step-cache"
        cold = first_step(ckpt, cache, "on", args.threads)
        warm = first_step(ckpt, cache, "on", args.threads)
        eager_first = first_step(ckpt, cache, "off", args.threads)
    report(rows, throughput, cold, warm, eager_first)


def report(rows: list, throughput: list, cold: tuple, warm: tuple, eager_first: tuple) -> None:
    best = max(size * speed for _, _, size, speed, _, _, _ in rows)  # the fastest reading of weights measured here
    print("\n| precision (GGUF) | weights | llama.cpp tok/s | llmlab eager | llmlab compiled | compiled / llama.cpp "
          "| llmlab GB/s (of the best) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for fmt, gguf_type, size, reference, eager, compiled, ratio in rows:
        rate = size * compiled
        print(f"| {fmt} ({gguf_type}) | {size / 2**20:.0f} MiB | {reference:.1f} | {eager:.1f} | {compiled:.1f} | "
              f"{ratio:.2f}x | {rate / 1e9:.1f} ({rate / best:.0%}) |")  # fmt: skip
    print(f"\nbest rate of reading weights measured (the batch-1 bound on this machine): {best / 1e9:.1f} GB/s")
    print("\n| precision | batch 1 | " + " | ".join(f"batch {b}" for b in throughput[0][2]) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in throughput[0][2]) + " |")
    for fmt, one, batched in throughput:
        print(f"| {fmt} | {one:.0f} | " + " | ".join(f"{v:.0f}" for v in batched.values()) + " |")
    print(f"\nfresh bf16 process, time to the second token: eager {eager_first[0]:.1f} s; compiled with an empty "
          f"cache {cold[0]:.1f} s (compiling {cold[1]:.1f} s), with the cache it left {warm[0]:.1f} s "
          f"(compiling {warm[1]:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
