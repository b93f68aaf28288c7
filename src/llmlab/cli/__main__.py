"""`python -m llmlab.cli`, as before the command became a package (`python -m llmlab` is the usual way)."""

import sys

from llmlab.cli import main

sys.exit(main())
