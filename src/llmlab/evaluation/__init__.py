"""Evaluation: prompts within a context budget, tasks, scoring, metrics, perplexity, sweeps, lm-eval."""
