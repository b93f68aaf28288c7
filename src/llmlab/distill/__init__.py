"""Knowledge distillation: a student trained on a teacher's soft targets, a recipe on the training core."""
