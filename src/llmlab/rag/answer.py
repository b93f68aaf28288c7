"""Answer questions from an index: retrieve, fit the passages into the model's context, generate (all
questions as one batch), and read which passages the answer cites."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.model.soft_prompt import prompt_length
from llmlab.rag.prompt import INSTRUCTION, Passage, RagPrompt, fit_prompt
from llmlab.retrieval.index import Index

CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass
class RagAnswer:
    question: str
    answer: str
    prompt: RagPrompt
    cited: list[int]  # passage numbers the answer cites that exist in the prompt
    finish_reason: str


def answer_questions(generator: Generator, index: Index | None, questions: list[str], config: GenerationConfig,
                     k: int = 5, mode: str = "hybrid", instruction: str = INSTRUCTION) -> list[RagAnswer]:  # fmt: skip
    """One answer per question; with `index` None or k 0 the same prompt without passages (the baseline)."""
    if config.num_samples != 1:
        raise LlmlabError(f"RAG answers each question once, not {config.num_samples} times", "use --num-samples 1")
    budget = _budget(generator, config)
    count = lambda text: len(generator.tokenizer.encode(text))  # noqa: E731
    prompts = []
    for question in questions:
        hits = index.search(question, k=k, mode=mode) if index is not None and k > 0 else []
        passages = [Passage(h.text, h.source if h.id is None else f"{h.source}#{h.id}") for h in hits]
        prompts.append(fit_prompt(question, passages, count, budget, instruction))
    outputs = generator.generate([p.text for p in prompts], config)
    answers = []
    for question, prompt, (completion,) in zip(questions, prompts, outputs):
        text = completion.text.strip()
        answers.append(RagAnswer(question, text, prompt, cited_passages(text, len(prompt.passages)),
                                 completion.finish_reason))  # fmt: skip
    return answers


def cited_passages(answer: str, passages: int) -> list[int]:
    """The passage numbers an answer cites as [n], among those in its prompt."""
    return sorted({int(n) for n in CITATION.findall(answer) if 1 <= int(n) <= passages})


def _budget(generator: Generator, config: GenerationConfig) -> int:
    """Prompt tokens the context leaves: the same room `Generator.encode_prompt` allows."""
    block = generator.model.config.block_size - prompt_length(generator.model)  # a soft prompt takes positions
    if generator.seq2seq:
        return block - len(generator.family.prompt_suffix(generator.tokenizer))
    return block - config.max_new_tokens - len(generator.family.prompt_prefix(generator.tokenizer))
