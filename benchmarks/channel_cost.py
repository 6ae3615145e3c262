"""What a local channel between the HTTP front end and the engine process costs on this CPU (issue 20).

Candidates, each between this process and a child process (spawned, like the engine process):
  socketpair  a Unix stream socket pair with 4-byte length-prefixed frames (what tunebench.serve.channel uses)
  mp_pipe     multiprocessing.Pipe (the same socket pair, with multiprocessing's framing and Connection objects)
  zmq_ipc     ZeroMQ PAIR sockets over ipc:// (vLLM's choice; skipped when pyzmq is not installed)
  shm_ring    a shared-memory ring buffer with a one-byte pipe write per message to wake the reader (a reader
              that spins instead would burn a core the engine and the front end need)

Measured for each: the round trip of a small message (a request and its answer, median and p90 over 2,000) and the
per-step cost of the engine's output: one message per decode step carrying 256 (request id, token id, logprob)
tuples, pickled, sent, received and unpickled, 1,000 steps streamed one way (microseconds per step and nanoseconds
per token, encode and decode included). One JSON line:

    PYTHONPATH=src python benchmarks/channel_cost.py [--steps 1000] [--rows 256]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pickle
import platform
import socket
import statistics
import struct
import sys
import time
from multiprocessing import shared_memory
from typing import Any

HEADER = struct.Struct("!I")
RING_BYTES = 1 << 22
WRAP = 0xFFFFFFFF


def step_message(rows: int, step: int) -> list[tuple[int, int, float]]:
    return [(i, (step * 31 + i) % 50_000, -0.123456 * (i % 7)) for i in range(rows)]


# ---------------------------------------------------------------- transports: (send(bytes), recv() -> bytes)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError
        got += k
    return bytes(buf)


class SocketPair:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(HEADER.pack(len(data)) + data)

    def recv(self) -> bytes:
        (n,) = HEADER.unpack(recv_exact(self.sock, HEADER.size))
        return recv_exact(self.sock, n)


class MpPipe:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, data: bytes) -> None:
        self.conn.send_bytes(data)

    def recv(self) -> bytes:
        return self.conn.recv_bytes()


class Zmq:
    def __init__(self, address: str, bind: bool) -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PAIR)
        (self.sock.bind if bind else self.sock.connect)(address)

    def send(self, data: bytes) -> None:
        self.sock.send(data, copy=False)

    def recv(self) -> bytes:
        return self.sock.recv()


class ShmRing:
    """One direction of a ring: [write offset (8 bytes) | data]; a byte on `wake` per message. Each side owns one
    ring to write and one to read."""

    def __init__(self, out_name: str, in_name: str, wake_out: int, wake_in: int) -> None:
        self.out = shared_memory.SharedMemory(out_name)
        self.inp = shared_memory.SharedMemory(in_name)
        self.wake_out, self.wake_in = wake_out, wake_in
        self.write_at = 0
        self.read_at = 0

    def send(self, data: bytes) -> None:
        frame = HEADER.pack(len(data)) + data
        n = len(frame)
        if self.write_at + n > RING_BYTES - 8:  # wrap; a marker tells the reader (which stays < a ring behind)
            if self.write_at + 4 <= RING_BYTES - 8:
                self.out.buf[8 + self.write_at:12 + self.write_at] = HEADER.pack(WRAP)
            self.write_at = 0
        start = 8 + self.write_at
        self.out.buf[start:start + n] = frame
        self.write_at += n
        os.write(self.wake_out, b"w")

    def recv(self) -> bytes:
        os.read(self.wake_in, 1)
        at = self.read_at
        (n,) = HEADER.unpack(self.inp.buf[8 + at:12 + at]) if at + 4 <= RING_BYTES - 8 else (WRAP,)
        if n == WRAP:
            self.read_at = 0
            (n,) = HEADER.unpack(self.inp.buf[8:12])
        start = 8 + self.read_at + 4
        data = bytes(self.inp.buf[start:start + n])
        self.read_at += 4 + n
        return data


# ---------------------------------------------------------------- the child: echo, then drain a stream


def child(kind: str, endpoint: Any, rounds: int, steps: int) -> None:
    channel = connect(kind, endpoint, parent=False)
    for _ in range(rounds):
        channel.send(channel.recv())
    tokens = 0
    for _ in range(steps):
        tokens += len(pickle.loads(channel.recv()))
    channel.send(pickle.dumps(tokens))


def connect(kind: str, endpoint: Any, parent: bool) -> Any:
    if kind == "socketpair":
        return SocketPair(endpoint)
    if kind == "mp_pipe":
        return MpPipe(endpoint)
    if kind == "zmq_ipc":
        return Zmq(endpoint, bind=parent)
    a, b, to_child, to_parent = endpoint  # named pipes: spawned children inherit no descriptors
    if parent:
        wake_out = os.open(to_child, os.O_WRONLY)
        return ShmRing(a, b, wake_out, os.open(to_parent, os.O_RDONLY))
    wake_in = os.open(to_child, os.O_RDONLY)
    return ShmRing(b, a, os.open(to_parent, os.O_WRONLY), wake_in)


def measure(kind: str, rounds: int, steps: int, rows: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    cleanup: list[Any] = []
    if kind == "socketpair":
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours, child_end = mine, theirs
    elif kind == "mp_pipe":
        ours, child_end = ctx.Pipe(duplex=True)
    elif kind == "zmq_ipc":
        address = f"ipc:///tmp/tunebench-channel-{os.getpid()}"
        ours, child_end = address, address
    else:
        rings = [shared_memory.SharedMemory(create=True, size=RING_BYTES) for _ in range(2)]
        cleanup += rings
        fifos = [f"/tmp/tunebench-channel-{os.getpid()}-{i}" for i in range(2)]
        for path in fifos:
            os.mkfifo(path)
        ours = child_end = (rings[0].name, rings[1].name, *fifos)
    if kind == "zmq_ipc":
        channel = connect(kind, ours, parent=True)
    proc = ctx.Process(target=child, args=(kind, child_end, rounds, steps))
    proc.start()
    if kind != "zmq_ipc":
        channel = connect(kind, ours, parent=True)
    small = pickle.dumps(("submit", 12345, list(range(8))))
    for _ in range(50):  # warm-up (the child is importing and connecting meanwhile)
        channel.send(small)
        channel.recv()
    trips = []
    for _ in range(rounds - 50):
        t = time.perf_counter()
        channel.send(small)
        channel.recv()
        trips.append(time.perf_counter() - t)
    messages = [step_message(rows, s) for s in range(16)]
    t = time.perf_counter()
    for s in range(steps):
        channel.send(pickle.dumps(messages[s % 16], protocol=pickle.HIGHEST_PROTOCOL))
    received = pickle.loads(channel.recv())
    stream_s = time.perf_counter() - t
    proc.join(30)
    for ring in cleanup:
        ring.close()
        ring.unlink()
    if kind == "shm_ring":
        for path in ours[2:]:
            os.unlink(path)
    trips.sort()
    return {"round_trip_us_p50": round(statistics.median(trips) * 1e6, 1),
            "round_trip_us_p90": round(trips[int(0.9 * len(trips))] * 1e6, 1),
            "step_message_us": round(stream_s / steps * 1e6, 1),
            "per_token_ns": round(stream_s / (steps * rows) * 1e9, 1),
            "tokens_received": received, "bytes_per_step": len(pickle.dumps(messages[0]))}


def encode_only(steps: int, rows: int) -> dict[str, float]:
    """pickle.dumps + loads of a step's message with no channel: the floor under every candidate."""
    messages = [step_message(rows, s) for s in range(16)]
    t = time.perf_counter()
    for s in range(steps):
        pickle.loads(pickle.dumps(messages[s % 16], protocol=pickle.HIGHEST_PROTOCOL))
    seconds = time.perf_counter() - t
    return {"step_message_us": round(seconds / steps * 1e6, 1),
            "per_token_ns": round(seconds / (steps * rows) * 1e9, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args(argv)
    kinds = ["socketpair", "mp_pipe", "shm_ring"]
    try:
        import zmq  # noqa: F401

        kinds.insert(2, "zmq_ipc")
    except ImportError:
        pass
    results = {kind: measure(kind, args.rounds, args.steps, args.rows) for kind in kinds}
    best = min(results, key=lambda k: results[k]["round_trip_us_p50"] + results[k]["step_message_us"])
    print(json.dumps({"benchmark": "channel_cost", "cpu": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "python": sys.version.split()[0], "rows_per_step": args.rows,
                      "steps": args.steps, "pickle_only": encode_only(args.steps, args.rows), **results,
                      "fastest_round_trip_plus_step": best}))


if __name__ == "__main__":
    main()
