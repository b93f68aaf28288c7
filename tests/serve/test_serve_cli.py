"""`llmlab serve` refuses bad limits in one line, exit 2, before it loads a model or binds a port."""

from __future__ import annotations

import pytest

from tests.helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--max-running", "0"], "--max-running must be at least 1, got 0"),
        (["--max-queue", "0"], "--max-queue must be at least 1, got 0"),
        (["--prefix-cache", "-1"], "--prefix-cache must be 0 (off) or a number of tokens, got -1"),
        (["--api-key-env", "LLMLAB_TEST_UNSET_KEY"], "--api-key-env LLMLAB_TEST_UNSET_KEY: that environment variable"),
    ],
)
def test_bad_limits_are_one_line(tmp_path, capsys, monkeypatch, args, fragment):
    monkeypatch.delenv("LLMLAB_TEST_UNSET_KEY", raising=False)
    code, _, err = run_cli(capsys, "serve", tmp_path / "no-model", "--port", "0", *args)
    assert_one_line_error(code, err, fragment)
