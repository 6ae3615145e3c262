"""Is the load tester the bottleneck? Drive a trivial endpoint at 2,000 requests/s and see if it keeps up.

The endpoint is a raw asyncio HTTP/1.1 responder (keep-alive, a fixed TGI-shaped reply) running in another
process, so the tester has its own core to the extent the machine allows. The load goes through the real
`tunebench loadtest` path (engine, metrics, CSV, loadtest.json) with no progress bar. Prints one JSON line.

Target (issue 8): achieved ≥ 0.99 × offered and p99 send lateness ≤ 5 ms at 2,000 requests/s.

    python benchmarks/loadtest_overhead.py [--rate 2000] [--duration 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = b'{"generated_text":"ok","details":{"finish_reason":"length","generated_tokens":1}}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Responder(asyncio.Protocol):
    """Answers every request on a connection with the same reply (`respond`); reads Content-Length bodies."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.respond()

    def respond(self) -> None:
        self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def serve() -> None:
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    server = await asyncio.get_running_loop().create_server(Responder, sock=sock)
    print(sock.getsockname()[1], flush=True)
    await server.serve_forever()


def start_endpoint() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())  # type: ignore[union-attr]
    return proc, f"http://127.0.0.1:{port}"


def measure(url: str, rate: float, duration: float, warmup: float) -> tuple[dict, float, float]:
    """The run's metrics, and the tester's CPU seconds and wall seconds for the whole load test."""
    from rich.console import Console

    from tunebench.config.schema import LoadtestConfig
    from tunebench.loadtest.prompt_sets import builtin_prompts
    from tunebench.loadtest.runner import LoadtestJob, run_loadtest

    cfg = LoadtestConfig(rates=[rate], duration=duration, warmup=warmup, repeat=1, bisect=0, timeout=10,
                         slo="none", max_new_tokens=16)
    with tempfile.TemporaryDirectory() as out:
        job = LoadtestJob(url, cfg, builtin_prompts(), Path(out), title="overhead")
        cpu, wall = time.process_time(), time.perf_counter()
        summary = run_loadtest(job, console=Console(file=open(os.devnull, "w")), progress=False)  # noqa: SIM115
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return summary["rates"][0]["mean"], cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    load_before = os.getloadavg()[0]
    proc, url = start_endpoint()
    try:
        m, cpu_s, wall_s = measure(url, args.rate, args.duration, args.warmup)
    finally:
        proc.terminate()
        proc.wait()
    ratio = m["achieved_rps"] / m["offered_rps"]
    print(json.dumps({
        "benchmark": "loadtest_overhead",
        "client": "aiohttp",
        "cpus": os.cpu_count(),
        "offered_rps": m["offered_rps"],
        "sent_rps": round(m["sent_rps"], 1),
        "achieved_rps": round(m["achieved_rps"], 1),
        "achieved_over_offered": round(ratio, 4),
        "requests": m["requests"],
        "success_ratio": m["success_ratio"],
        "send_lateness_p50_ms": round(m["send_lateness_p50_ms"], 3),
        "send_lateness_p99_ms": round(m["send_lateness_p99_ms"], 3),
        "send_lateness_max_ms": round(m["send_lateness_max_ms"], 3),
        "latency_p50_ms": round(m["latency_p50_s"] * 1000, 3),
        "latency_p99_ms": round(m["latency_p99_s"] * 1000, 3),
        # Contention-independent cost of the tester: CPU per request (warm-up, plots and files included),
        # and the machine's load when the run started (other processes share the cores).
        "tester_cpu_us_per_request": round(cpu_s / (args.rate * (args.duration + args.warmup)) * 1e6, 1),
        "tester_cores_busy": round(cpu_s / wall_s, 3),
        "loadavg_1m_before": round(load_before, 2),
        "meets_target": ratio >= 0.99 and m["send_lateness_p99_ms"] <= 5.0 and m["success_ratio"] == 1.0,
    }))


if __name__ == "__main__":
    main()
