"""One error type for bad input, so the CLI can print one clear line instead of a traceback."""


class LlmlabError(Exception):
    """Bad input or state that the user can fix: says what was wrong and what to do."""

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} — {fix}" if fix else what)
