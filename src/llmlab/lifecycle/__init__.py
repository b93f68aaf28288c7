"""The lifecycle in one command: a recipe's stages (curate, pre-train, evaluate, fine-tune, align, quantize,
serve) run as the existing commands, resumable and skipped when unchanged, ending with the report."""
