"""RunLock: one run per run folder, and a killed run never leaves its folder locked."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmlab.checkpoint import lock
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.checkpoint.lock import RunLock, lock_path
from llmlab.errors import LlmlabError
from tests.helpers import tiny_model, wait_for_line

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from llmlab.checkpoint.lock import RunLock

    RunLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _holder(out: Path) -> subprocess.Popen:
    """Another process that takes the lock on `out` and sleeps; returns once it holds it."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    line = wait_for_line(proc.stdout, "locked", timeout=60)
    if line is None:
        proc.kill()
        pytest.fail(f"the holder did not take the lock (exit {proc.wait()})")
    return proc


def test_a_second_run_is_refused_until_the_first_is_killed(tmp_path):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        with pytest.raises(LlmlabError) as caught:
            RunLock(out).acquire()
        assert caught.value.what == f"{out} is in use by another run (pid {proc.pid})"
        assert caught.value.fix == "wait for it to finish or choose another --out"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with RunLock(out) as run_lock:  # the kernel dropped the killed run's flock
        assert run_lock.held and lock_path(out).read_text().strip() == str(os.getpid())


def test_release_lets_the_next_run_in_and_leaves_no_file(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(LlmlabError, match=f"pid {os.getpid()}"):  # two runs in one process are refused too
            RunLock(out).acquire()
    assert not lock_path(out).exists()
    with RunLock(out) as run_lock:
        assert run_lock.held
    assert not run_lock.held


def test_the_lock_survives_checkpoint_saves(tmp_path, char_tokenizer):
    """The lock file sits beside the run folder, so the atomic folder swaps never touch it."""
    out = tmp_path / "run"
    model = tiny_model("gpt2", vocab_size=char_tokenizer.vocab_size)
    with RunLock(out):
        save_checkpoint(out, model, char_tokenizer)
        save_checkpoint(out, model, char_tokenizer)
        assert lock_path(out).parent == out.parent and not (out / lock_path(out).name).exists()
        with pytest.raises(LlmlabError, match="is in use by another run"):
            RunLock(out).acquire()


def test_a_lock_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """A run that opens the file just before its holder releases (and removes) it must not end up holding
    a lock on the removed file, which a third run would not see: it locks the new file instead."""
    out = tmp_path / "run"
    first = RunLock(out).acquire()
    real_flock, calls = lock.fcntl.flock, []

    def flock(fd, operation):
        calls.append(fd)
        if len(calls) == 1:
            first.release()  # between our open and our flock
        return real_flock(fd, operation)

    monkeypatch.setattr(lock.fcntl, "flock", flock)
    with RunLock(out) as second:
        assert len(calls) == 2 and second.held
        assert os.stat(lock_path(out)).st_ino == os.fstat(second._fd).st_ino
        monkeypatch.undo()
        with pytest.raises(LlmlabError, match=f"pid {os.getpid()}"):
            RunLock(out).acquire()
