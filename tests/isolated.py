"""Run a snippet in a fresh interpreter, so that a crash class (abort, segfault, a kill at the next
kernel call) fails one test instead of ending the whole pytest run.

``expect_error(code, exc, *words)`` is the usual form: the snippet must raise ``exc`` (by name) and its
message must contain every one of ``words`` (the argument's name, what was expected). A snippet that
dies from a signal, hangs past ``timeout`` or exits 0 fails the test with its output attached.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_RUNNER = r"""
import sys, traceback
src = sys.stdin.read()
try:
    exec(compile(src, "<isolated>", "exec"), {"__name__": "__isolated__"})
except BaseException as e:  # report the exception in a form the parent can parse
    sys.stdout.write("\n@@EXC@@" + type(e).__name__ + "@@" + str(e).replace("\n", " ") + "\n")
    sys.stdout.flush()
    sys.exit(3)
"""


class Isolated:
    """What a snippet did: ``rc`` (negative: killed by that signal), ``out``, ``err`` and, when it raised,
    ``exc_type`` and ``exc_msg``."""

    def __init__(self, rc: int, out: str, err: str):
        self.rc, self.out, self.err = rc, out, err
        self.exc_type = self.exc_msg = None
        for line in out.splitlines():
            if line.startswith("@@EXC@@"):
                name, _, msg = line[len("@@EXC@@"):].partition("@@")
                self.exc_type, self.exc_msg = name, msg

    def describe(self) -> str:
        return f"rc={self.rc}\n--- stdout ---\n{self.out[-3000:]}\n--- stderr ---\n{self.err[-3000:]}"


def run_isolated(code: str, timeout: float = 120.0, env: dict | None = None) -> Isolated:
    """Run ``code`` in a child interpreter (one OpenMP / torch thread unless ``env`` says otherwise)."""
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    if env:
        e.update(env)
    try:
        p = subprocess.run([sys.executable, "-c", _RUNNER], input=textwrap.dedent(code), capture_output=True,
                           text=True, timeout=timeout, env=e)
    except subprocess.TimeoutExpired as ex:
        raise AssertionError(f"snippet hung for more than {timeout} s:\n{textwrap.dedent(code)}") from ex
    return Isolated(p.returncode, p.stdout, p.stderr)


def expect_error(code: str, exc: str, *words: str, timeout: float = 120.0) -> Isolated:
    """The snippet must raise ``exc`` (a class name; ``"ValueError"`` also accepts subclasses only by
    name, so name the one you mean) with every word of ``words`` in its message (case-insensitive)."""
    r = run_isolated(code, timeout=timeout)
    assert r.rc >= 0, f"crashed (signal {-r.rc}):\n{r.describe()}"
    assert r.exc_type is not None, f"expected {exc}, but the snippet finished without an error:\n{r.describe()}"
    assert r.exc_type == exc, f"expected {exc}, got {r.exc_type}: {r.exc_msg}\n{r.describe()}"
    low = r.exc_msg.lower()
    missing = [w for w in words if w.lower() not in low]
    assert not missing, f"the message lacks {missing}: {r.exc_msg!r}"
    return r


def expect_ok(code: str, timeout: float = 120.0) -> Isolated:
    """The snippet must finish without an error (its asserts are the test)."""
    r = run_isolated(code, timeout=timeout)
    assert r.rc == 0, f"snippet failed:\n{r.describe()}"
    return r
