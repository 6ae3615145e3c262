"""Running the app under uvicorn: in the foreground for `tunebench serve`, or in a thread for tests and tools.

The socket is bound before uvicorn starts, so port 0 gets a free port whose number is known at once.
On SIGTERM or Ctrl-C uvicorn stops accepting connections, lets in-flight requests finish (for at most the
request timeout), then the app's lifespan stops the engine: a graceful drain.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

DRAIN_MARGIN_S = 5.0


def bind(host: str, port: int) -> socket.socket:
    from tunebench.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror}",
                        "choose another --port (0 picks a free one) or stop the process using it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_each(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one address, one per front-end process. On Linux each is its own socket in
    a SO_REUSEPORT group, so the kernel spreads connections evenly over them: one socket shared by every
    process (uvicorn's and gunicorn's default) gave most of a 512-connection burst to one of 8 front ends on
    the H200, since the first process to wake accepts everything queued. The address is first bound plainly,
    so a port something else listens on is refused as with one front end. Elsewhere: one socket, shared."""
    first = bind(host, port)
    if count == 1 or not (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")):
        return [first] * count
    from tunebench.errors import UserError

    port = first.getsockname()[1]
    first.close()  # the port is known and free; the group takes it over at once
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            group.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError as err:
        for sock in group:
            sock.close()
        raise UserError(f"cannot listen on {host}:{port} with {count} front ends: {err.strerror}",
                        "choose another --port (0 picks a free one) or stop the process using it") from None
    return group


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(state: Any) -> Any:
    import uvicorn

    from tunebench.serve.app import create_app

    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(state.options.request_timeout + DRAIN_MARGIN_S))
    return uvicorn.Server(config)


def serve_forever(state: Any, host: str, port: int, announce: Any = print) -> None:
    """Serve until SIGTERM/SIGINT, then drain; `announce` receives the URL once the socket is bound."""
    from tunebench.serve.engine_base import freeze_heap

    sock = bind(host, port)
    server = uvicorn_server(state)
    freeze_heap()  # the loaded model and the app stay out of garbage collections from here on
    announce(url_of(sock))
    server.run(sockets=[sock])


class BackgroundServer:
    """The real server on 127.0.0.1 in a thread of this process (tests, benchmarks)."""

    def __init__(self, state: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = uvicorn_server(state)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
