"""llmlab: the generative-AI lifecycle with large language models, from scratch and runnable.

import llmlab
result = llmlab.train(llmlab.TrainConfig(out="runs/demo", max_steps=200))
ckpt = llmlab.load_checkpoint("runs/demo")
gen = llmlab.Generator(ckpt.model, ckpt.tokenizer)
print(gen.generate(["def fib(n):"], llmlab.GenerationConfig(greedy=True))[0][0].text)
"""

from llmlab.checkpoint.folder import Checkpoint, save_checkpoint
from llmlab.config import PRESETS, ModelConfig
from llmlab.curate.config import CurateConfig
from llmlab.curate.pipeline import CurateJob, curate
from llmlab.errors import LlmlabError
from llmlab.finetune.config import FinetuneConfig
from llmlab.finetune.recipe import finetune
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Completion, Generator
from llmlab.load import load_checkpoint, merged_with_adapter
from llmlab.model import DecoderLM, EncoderDecoderLM, EncoderLM, build_model
from llmlab.model.lora import LoraSpec, add_lora, merge_lora
from llmlab.pretrain.config import PretrainConfig, TrainConfig
from llmlab.pretrain.recipe import train
from llmlab.tasks.predict import classify_texts, tag_text, tag_words
from llmlab.tokenizer import TextTokenizer, train_tokenizer
from llmlab.training.loop import TrainResult

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Checkpoint",
    "Completion",
    "CurateConfig",
    "CurateJob",
    "DecoderLM",
    "EncoderDecoderLM",
    "EncoderLM",
    "FinetuneConfig",
    "GenerationConfig",
    "Generator",
    "LlmlabError",
    "LoraSpec",
    "ModelConfig",
    "PretrainConfig",
    "TextTokenizer",
    "TrainConfig",
    "TrainResult",
    "add_lora",
    "build_model",
    "classify_texts",
    "curate",
    "finetune",
    "load_checkpoint",
    "merge_lora",
    "merged_with_adapter",
    "save_checkpoint",
    "tag_text",
    "tag_words",
    "train",
    "train_tokenizer",
]
