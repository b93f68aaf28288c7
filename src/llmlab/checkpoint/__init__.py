"""The llmlab checkpoint folder: format, atomic save, verified load (`folder`), the run lock (`lock`)."""
