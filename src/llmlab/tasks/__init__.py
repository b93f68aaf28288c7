"""An encoder with a task head at work: classifying texts and tagging words (`llmlab classify`, `tag`)."""
