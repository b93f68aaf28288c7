"""lm-evaluation-harness adapter: run `lm-eval` tasks on llmlab checkpoints (and Hugging Face folders).

    .venv/bin/python -m llmlab.evaluation.lm_eval_adapter runs/main --tasks hellaswag --limit 100
    lm_eval --model llmlab --model_args pretrained=runs/main --tasks ... (after importing it)

The three requests lm-eval makes are answered with llmlab's own code: `loglikelihood` with the same
`Scorer` that `llmlab evaluate` ranks labels with, `loglikelihood_rolling` with the sliding window of
`llmlab evaluate --perplexity` (`perplexity.text_loglikelihood`), `generate_until` with its Generator.
"""

from __future__ import annotations

import argparse
import json
import sys

from llmlab.errors import LlmlabError
from llmlab.load import load_checkpoint

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the adapter is optional
    raise LlmlabError("the lm-eval adapter needs lm-evaluation-harness", "pip install lm-eval") from None


@register_model("llmlab")
class LlmlabLM(LM):
    """An lm-eval model backed by an llmlab checkpoint (decoder or encoder-decoder)."""

    def __init__(self, pretrained: str, device: str = "cpu", batch_size: int | str = 16, **_: object) -> None:
        super().__init__()
        from llmlab.evaluation.scorer import Scorer

        self.checkpoint = load_checkpoint(pretrained, device=device)
        self.scorer = Scorer(self.checkpoint.model, self.checkpoint.tokenizer, batch_size=int(batch_size))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> LlmlabLM:
        args = dict(item.split("=", 1) for item in arg_string.split(",") if item)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**args, **extra})

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [request.args for request in requests]
        scored = self.scorer.logprobs([c for c, _ in pairs], [t for _, t in pairs])
        return [(score.logprob, score.greedy) for score in scored]

    def loglikelihood_rolling(self, requests) -> list[float]:
        from llmlab.evaluation.perplexity import text_loglikelihood

        model, tokenizer = self.checkpoint.model, self.checkpoint.tokenizer
        return [text_loglikelihood(model, tokenizer, request.args[0]) for request in requests]

    def generate_until(self, requests) -> list[str]:
        from llmlab.generation.config import GenerationConfig
        from llmlab.generation.generator import Generator

        generator = Generator(self.checkpoint.model, self.checkpoint.tokenizer)
        outputs = []
        for request in requests:
            context, options = request.args
            until = options.get("until") or []
            config = GenerationConfig(
                max_new_tokens=int(options.get("max_gen_toks", 128)),
                greedy=not options.get("do_sample", False),
                temperature=float(options.get("temperature", 1.0) or 1.0),
                stop=[until] if isinstance(until, str) else list(until),
                truncate_prompt=True,
            )
            outputs.append(generator.generate([context], config)[0][0].text)
        return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate an llmlab checkpoint with lm-evaluation-harness tasks.")
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", help="a folder of task YAML files of your own")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    try:
        results = simple_evaluate(
            model=LlmlabLM(args.checkpoint, batch_size=args.batch_size),
            tasks=args.tasks.split(","),
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            task_manager=TaskManager(include_path=args.include_path),
        )
    except LlmlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results["results"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
