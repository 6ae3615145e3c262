"""A server in a child process, healthy on entry and stopped on exit: `tunebench serve`, vLLM or SGLang.

It counts as started when GET /health answers 200 (all three have it); it is stopped with SIGTERM to its
whole process group (SIGKILL after a grace period) whatever happens in between. A port something already
listens on is refused before the start, so a health answer always comes from the child.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tunebench.errors import UserError

HEALTH_POLL_S = 0.25
STOP_GRACE_S = 20.0
LOG_TAIL_CHARS = 2000


def shown(command: list[str]) -> str:
    """A command line as printed and recorded: the value of an --api-key never leaves the process."""
    parts = list(command)
    for i, part in enumerate(parts[:-1]):
        if part == "--api-key":
            parts[i + 1] = "REDACTED"
    return shlex.join(parts)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as servers bind: a port left in TIME_WAIT is free, one something listens on is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`tunebench serve` in a child process, healthy on entry and stopped on exit."""

    def __init__(self, serve_args: list[str], *, host: str, port: int, log: Path, startup_timeout: float,
                 command: list[str] | None = None) -> None:
        """`tunebench serve SERVE_ARGS`, or `command` (vllm, sglang: it carries the host and port itself)."""
        self.command = command or [sys.executable, "-m", "tunebench.cli", "serve", *serve_args, "--host", host,
                                   "--port", str(port)]
        self.name = Path(self.command[0]).name if command else "tunebench serve"
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.log = log
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        if not port_is_free(self.host, self.port):  # else /health could answer from whatever holds it
            raise UserError(f"port {self.port} on {self.host} is taken, so {self.name} cannot listen there",
                            "stop what listens there, or pick another port")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"{self.name} exited with code {self.process.returncode} before it was healthy "
                                f"({shown(self.command)}); the log ends:\n{self._log_tail()}",
                                f"fix the server options; the whole log is in {self.log}")
            if self._healthy():
                return
            time.sleep(HEALTH_POLL_S)
        raise UserError(f"{self.name} did not answer GET {self.url}/health within {self.startup_timeout:g} s; "
                        f"the log ends:\n{self._log_tail()}",
                        f"give it longer (--startup-timeout, serve.startup_timeout), or read {self.log}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # the whole process group: vLLM and SGLang run their engine cores and workers as children
        self._signal(signal.SIGTERM)  # graceful: the server drains in-flight requests
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()

    def _signal(self, sig: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)  # start_new_session made the child its group's leader
        except (ProcessLookupError, PermissionError):
            self.process.send_signal(sig)
