"""SIGTERM treated as Ctrl-C by `tunebench train`, and handed on to a torchrun child.

A scheduler, a container runtime or a preempted spot instance stops a job with SIGTERM (then SIGKILL after a
grace period). During training `InterruptCallback` turns it into a checkpoint at the next step boundary; before
and after the training loop it stops the command as Ctrl-C would, with exit code 143 (128 + 15).
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (loading, saving the final weights): nothing to checkpoint."""


def exit_code(signal_name: str | None) -> int:
    return EXIT_SIGTERM if signal_name == "SIGTERM" else EXIT_SIGINT


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_forwarding_sigterm(command: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """Run `command` (torchrun) and pass a SIGTERM sent to this process on to it: torchrun's agent hands it to
    every worker, which checkpoints at its next step boundary. Ctrl-C needs no forwarding: the terminal sends
    SIGINT to the whole process group, torchrun and its workers included. Returns (exit code, terminated)."""
    child = subprocess.Popen(command, env=env)
    terminated = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal terminated
        terminated = True
        child.send_signal(signal.SIGTERM)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, forward), (signal.SIGINT, signal.SIG_IGN))} \
        if main else {}
    try:
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return code, terminated
