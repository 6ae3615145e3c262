"""Fixtures for load-test tests: a trivial LLM server with a known delay, in its own process on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

FAKE_SERVER = Path(__file__).with_name("loadtest_fake_server.py")


@pytest.fixture
def fake_server() -> Iterator[Callable[..., str]]:
    """start(delay=0.05, capacity=2, ...) -> base URL; options are the script's flags; stopped after the test."""
    processes: list[subprocess.Popen] = []

    def start(**options: object) -> str:
        args = []
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        proc = subprocess.Popen([sys.executable, str(FAKE_SERVER), *args], stdout=subprocess.PIPE, text=True)
        processes.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the fake server did not start: {line!r}")
        return f"http://127.0.0.1:{int(line.split()[1])}"

    yield start
    for proc in processes:
        proc.terminate()
        proc.wait(timeout=10)
