"""Instruction fine-tuning on the training core: full, LoRA, QLoRA."""
