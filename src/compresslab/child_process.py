"""Run a Python module in a child process: its stdout, or one error that says what failed.

Two parts of compresslab need a child: the memory probe (a fresh process's peak RSS, reported
as JSON on its last stdout line) and gptqmodel's quantization (which calls os._exit on an error
in a worker thread and would take the whole pytest session with it). Both get the same promises:
- a failure raises ChildProcessFailed, naming what failed, how (exit code, signal, timeout) and
  the child's last lines of output;
- a timeout kills the child and raises: never a silently shorter result;
- the child's process group ends with it, so nothing it started keeps using the cores;
- the parent waits blocked in the kernel, never polling: it shares the cores with the child.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

TAIL_LINES = 12


class ChildProcessFailed(RuntimeError):
    """A child process failed: ``what`` it was doing, ``how`` it ended, its last output lines."""

    def __init__(self, what: str, how: str, tail: Sequence[str]):
        self.what, self.how, self.tail = what, how, list(tail)
        shown = "\n  ".join(self.tail) if self.tail else "(no output)"
        super().__init__(f"{what} {how}; its last output:\n  {shown}")


def run_module(module: str, args: Sequence[str] = (), *, what: str, timeout: float | None = None,
               cwd: str | Path | None = None, show_output: bool = False) -> str:
    """Run ``python -m module *args`` with this interpreter and return what it printed to stdout.

    ``what`` names the job in errors ("memory probe of <artifact>"). ``timeout`` (seconds, None:
    none) kills the child and raises. ``show_output``: the child's output appears as it comes (a
    long build's progress): its stdout goes straight to ours and is not returned, its stderr is
    echoed to ours. Either way an error carries the child's last stderr lines (its last captured
    stdout lines when it wrote nothing to stderr).
    """
    command = [sys.executable, "-m", module, *map(str, args)]
    # process_group=0: the child leads a group of its own, which a timeout or an interrupt ends whole
    with subprocess.Popen(command, stdout=None if show_output else subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace", cwd=cwd, process_group=0) as child:
        stderr = _Drain(child.stderr, echo=sys.stderr if show_output else None)
        stdout = _Drain(child.stdout) if child.stdout is not None else None
        timed_out = _Timeout(child, timeout)
        try:
            _wait_unreaped(child)
        finally:
            timed_out.cancel()
            _kill_group(child)  # leftovers after an exit; the child itself after an interrupt
            child.wait()
        for drain in (stderr, stdout):
            if drain is not None:
                drain.join()
    how = _failure(child.returncode, timed_out.fired, timeout)
    if how:
        raise ChildProcessFailed(what, how, stderr.tail() or (stdout.tail() if stdout else []))
    return stdout.text() if stdout else ""


class _Drain(threading.Thread):
    """Reads a child's pipe to its end (a full pipe would stall the child), keeping the text and
    its last non-empty lines, and echoing each line to ``echo`` if given."""

    def __init__(self, pipe: IO[str], echo: IO[str] | None = None):
        super().__init__(daemon=True)
        self._pipe, self._echo = pipe, echo
        self._lines: list[str] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.start()

    def run(self) -> None:
        for line in self._pipe:
            if self._echo is not None:
                self._echo.write(line)
                self._echo.flush()
            else:
                self._lines.append(line)
            if line.strip():
                self._tail.append(line.rstrip())

    def text(self) -> str:
        return "".join(self._lines)

    def tail(self) -> list[str]:
        return list(self._tail)


class _Timeout:
    """Kills the child's group after ``seconds`` unless cancelled; ``fired`` tells whether it did."""

    def __init__(self, child: subprocess.Popen, seconds: float | None):
        self.fired = False
        self._child = child
        self._timer = threading.Timer(seconds, self._fire) if seconds is not None else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        if _running(self._child):  # one that exited at the deadline did not time out
            self.fired = True
            _kill_group(self._child)

    def cancel(self) -> None:
        """Stop the timer; one already firing finishes first (the child is not reaped under it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()


def _wait_unreaped(child: subprocess.Popen) -> None:
    """Block until the child exits, leaving it a zombie: its pid (and so its group id) cannot be
    reused by another process until child.wait() reaps it, so killing the group stays safe."""
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)


def _running(child: subprocess.Popen) -> bool:
    return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None


def _kill_group(child: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def _failure(returncode: int, timed_out: bool, timeout: float | None) -> str | None:
    """How the child failed, in words, or None when it succeeded."""
    if timed_out:
        return f"timed out after {timeout:g} s and was killed"
    if returncode < 0:
        return f"was killed by signal {_signal_name(-returncode)} (exit code {returncode})"
    if returncode > 0:
        return f"failed (exit code {returncode})"
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
