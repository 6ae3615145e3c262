"""What caps the served request rate (issue 20): the load generator, and the GPU cost of admitting prompts.

Two measurements, one JSON line each:
1. `loadgen`: the real `tunebench loadtest` path (aiohttp, SSE parsing, metrics) against a null streaming
   server in another process (raw asyncio, TGI's /generate_stream events, one token per stream every
   --tick-ms, chunked HTTP/1.1 with keep-alive): can the tester offer, say, 300 req/s x 64 streamed tokens
   and 650 req/s x 16 on its own? Achieved vs offered, send lateness, and the tester's CPU cores busy.
2. `prefill` (CUDA only): the batched engine's own prefill graphs (`tunebench.serve.graphs.DecodeRunner`,
   random weights of a preset in bf16, no server), GPU time per replay by (rows, width), per prompt, and the
   FLOP rate counting only the real prompt tokens (--prompt-tokens of each row): how much padding to the
   width bucket and small groups cost, and what a prompt of admission costs the GPU.

    python benchmarks/admission_profile.py --loadgen "300x64,650x16" [--prefill] [--out FILE]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadtest_overhead import Responder

# ---------------------------------------------------------------- a null streaming server

STREAMS: list[list[Any]] = []  # [transport, tokens left] of every open stream


class StreamResponder(Responder):
    """Answers each request with `tokens` SSE token events (chunked), one per tick, then the final event."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def respond(self) -> None:
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"  # type: ignore[attr-defined]
                             b"Transfer-Encoding: chunked\r\n\r\n")
        STREAMS.append([self.transport, self.tokens])


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


async def tick_streams(tick_s: float, tokens: int) -> None:
    token = b'data: {"token":{"id":5,"text":" ok","logprob":-0.1,"special":false},"generated_text":null}\n\n'
    while True:
        await asyncio.sleep(tick_s)
        keep = []
        for stream in STREAMS:
            transport, left = stream
            if transport.is_closing():
                continue
            if left > 1:
                transport.write(_chunk(token))
                stream[1] = left - 1
                keep.append(stream)
            else:
                final = (b'data: {"token":{"id":5,"text":" ok","logprob":-0.1,"special":false},'
                         b'"generated_text":"ok","details":{"finish_reason":"length","generated_tokens":%d}}\n\n'
                         % tokens)
                transport.write(_chunk(final) + b"0\r\n\r\n")
        STREAMS[:] = keep


async def serve(tokens: int, tick_s: float) -> None:
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    server = await asyncio.get_running_loop().create_server(lambda: StreamResponder(tokens), sock=sock)
    print(sock.getsockname()[1], flush=True)
    await asyncio.gather(server.serve_forever(), tick_streams(tick_s, tokens))


def loadgen(rate: float, tokens: int, duration: float, warmup: float, tick_ms: float) -> dict[str, Any]:
    from rich.console import Console

    from tunebench.config.schema import LoadtestConfig
    from tunebench.loadtest.prompt_sets import builtin_prompts
    from tunebench.loadtest.runner import LoadtestJob, run_loadtest

    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(tokens), str(tick_ms)], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        cfg = LoadtestConfig(rates=[rate], duration=duration, warmup=warmup, repeat=1, bisect=0, timeout=20,
                             slo="none", max_new_tokens=tokens, stream=True, ignore_eos=True)
        with tempfile.TemporaryDirectory() as out:
            job = LoadtestJob(f"http://127.0.0.1:{port}", cfg, builtin_prompts(), Path(out), title="loadgen")
            cpu, wall = time.process_time(), time.perf_counter()
            summary = run_loadtest(job, console=Console(file=open(os.devnull, "w")), progress=False)  # noqa: SIM115
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server_cpu = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    m = summary["rates"][0]["mean"]
    return {"benchmark": "admission_profile", "part": "loadgen", "offered_rps": rate, "tokens": tokens,
            "tick_ms": tick_ms, "sent_rps": round(m["sent_rps"], 1), "achieved_rps": round(m["achieved_rps"], 1),
            "achieved_over_offered": round(m["achieved_rps"] / rate, 4), "success_ratio": m["success_ratio"],
            "send_lateness_p99_ms": round(m["send_lateness_p99_ms"], 2),
            "latency_p90_s": round(m["latency_p90_s"], 4), "ttft_p90_s": round(m["ttft_p90_s"], 4),
            "itl_p90_s": round(m["itl_p90_s"], 4), "events_per_s": round(rate * tokens),
            "tester_cores_busy": round(cpu / wall, 3), "null_server_cpu_s": server_cpu,
            "tester_cpu_us_per_event": round(1e6 * cpu / (rate * tokens * (duration + warmup)), 2)}


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


# ---------------------------------------------------------------- prefill cost on the GPU

def prefill_costs(model_name: str, rows_list: list[int], widths: list[int], prompt_tokens: int,
                  repeats: int = 10) -> dict[str, Any]:
    import torch
    from generation_engines import build

    from tunebench.serve.offline import offline_engine

    model, tok = build(model_name)
    flop_per_token = 2 * sum(p.numel() for n, p in model.named_parameters() if "embed_in" not in n
                             and "wte" not in n and "embed_tokens" not in n
                             and "embed_out" not in n and "lm_head" not in n)
    results: dict[str, Any] = {}
    with torch.inference_mode():
        engine = offline_engine(model, tok, longest=256, slots=max(rows_list))
        runner = engine.runner
        runner.offline = False  # the served engine's prefill graphs, not offline's eager prefills
        for width in widths:
            for rows in rows_list:
                pad = width - prompt_tokens
                ids = torch.randint(1, 1000, (rows, width))
                pos = torch.tensor([[0] * pad + list(range(prompt_tokens))] * rows)
                cols = torch.tensor([[engine.cache.scratch] * pad + list(range(prompt_tokens))] * rows)
                host = torch.stack([ids, pos, cols])
                slots = list(range(rows))
                runner.prefill(host, slots, None, {})  # capture
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    runner.prefill(host, slots, None, {})
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / repeats
                results[f"{rows}x{width}"] = {
                    "ms": round(ms, 3), "ms_per_prompt": round(ms / rows, 3),
                    "useful_tflops": round(rows * prompt_tokens * flop_per_token / ms / 1e9, 1)}
                log(f"prefill {rows}x{width}: {results[f'{rows}x{width}']}")
    return {"benchmark": "admission_profile", "part": "prefill", "model": model_name,
            "device": torch.cuda.get_device_name(0), "prompt_tokens": prompt_tokens,
            "gflop_per_token": round(flop_per_token / 1e9, 2), "by_rows_x_width": results}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        asyncio.run(serve(int(argv[1]), float(argv[2]) / 1e3))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loadgen", default="", help="comma-separated RATExTOKENS, e.g. 300x64,650x16")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tick-ms", type=float, default=10.0, help="the null server's time between tokens")
    parser.add_argument("--prefill", action="store_true", help="GPU time of prefill graphs by shape (CUDA)")
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--rows", default="8,16,32,64")
    parser.add_argument("--widths", default="128,112,104")
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    lines = []
    for spec in filter(None, args.loadgen.split(",")):
        rate, tokens = spec.split("x")
        lines.append(loadgen(float(rate), int(tokens), args.duration, args.warmup, args.tick_ms))
        print(json.dumps(lines[-1]), flush=True)
    if args.prefill:
        lines.append(prefill_costs(args.model, [int(r) for r in args.rows.split(",")],
                                   [int(w) for w in args.widths.split(",")], args.prompt_tokens))
        print(json.dumps(lines[-1]), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
