"""The local channel between the HTTP front end and the engine process: one Unix stream socket pair, messages
as pickled tuples in 4-byte length-prefixed frames.

Chosen by `benchmarks/channel_cost.py` (on the 2-core dev box and the H200 host): a round trip and a decode
step's message (256 token tuples) cost tens and a few hundred microseconds on every candidate, pickling being
most of it; a socket pair needs no extra package, gives asyncio a non-blocking stream for free, and an engine
process that dies closes its end, so the front end hears of it at once (ZeroMQ hides a dead peer; shared memory
needs a wake-up pipe beside it anyway).

Messages (front end -> engine): ("init", ModelOptions, engine kind, EngineLimits), ("submit", rid,
GenerationRequest), ("cancel", rid) (the client went away), ("finish", rid) (the front end found a stop string),
("job", rid, job), ("cancel_job", rid), ("stop",).
Engine -> front end: ("ready", info) or ("error", problem, fix); ("out", events, metric updates), an event being
(rid, TOKEN, token id, logprob), (rid, DONE, finish reason, tokens) or (rid, FAILED, kind, message); ("job", rid,
ok, result or (kind, message)).
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
TOKEN, DONE, FAILED = 0, 1, 2


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


class BlockingChannel:
    """The engine process's end (and the front end's before its event loop runs): blocking sends, reads that
    wait at most `timeout` seconds."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self._buffer = bytearray()
        self._ready: list[Any] = []  # parsed, not handed out yet
        self.closed = False  # the other end is gone

    def send(self, message: Any) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(encode(message))
        except OSError:  # the other end is gone; the reader finds out too
            self.closed = True

    def receive(self, timeout: float | None) -> list[Any]:
        """Every message that arrived, waiting up to `timeout` for the first (None: forever, 0: not at all)."""
        if not self._ready and self._fill(timeout):
            while self._fill(0):  # take whatever else is already there
                pass
        out, self._ready = self._ready + self._messages(), []
        return out

    def _fill(self, timeout: float | None) -> bool:
        if self.closed:
            return False
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError:  # reset: the other end closed with data unread (a front end killed mid-stream)
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self._buffer += chunk
        return True

    def _messages(self) -> list[Any]:
        out, buf, at = [], self._buffer, 0
        while len(buf) - at >= HEADER.size:
            (n,) = HEADER.unpack_from(buf, at)
            if len(buf) - at - HEADER.size < n:
                break
            out.append(pickle.loads(buf[at + HEADER.size:at + HEADER.size + n]))
            at += HEADER.size + n
        del buf[:at]
        return out

    def receive_one(self, timeout: float | None) -> Any | None:
        """The next message (the start-up handshake), or None when the other end closed or time ran out."""
        while True:
            self._ready += self._messages()
            if self._ready:
                return self._ready.pop(0)
            if not self._fill(timeout):
                return None


async def read_message(reader: Any) -> Any:
    """The next message from an asyncio StreamReader (raises asyncio.IncompleteReadError at the end)."""
    (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return pickle.loads(await reader.readexactly(n))
