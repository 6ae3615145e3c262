"""CPU the split front end spends per request: `tunebench serve --frontend split` with a tiny random Llama on the
CPU, driven by many concurrent streamed requests (~100-token prompts, 16 new tokens, `ignore_eos`), and the CPU
seconds of the front-end process and of its engine process (/proc, every thread) over the measured requests,
divided by their count. The engine on a CPU is slow, so this measures CPU per request, not throughput: enough
concurrency keeps the front end busy with many streams at once, as on the GPU host. One JSON line:

    python benchmarks/frontend_cpu.py [--requests 2000] [--concurrency 64] [--api tgi|tgi-unary|openai|chat]
    python benchmarks/frontend_cpu.py --py-spy out.svg   # also a py-spy profile of the front end (out.txt: raw)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_busy import children, cpu_seconds
from serve_throughput import CORPUS, prompt_texts


def tiny_model(out: Path) -> Path:
    """A two-layer Llama (hidden 32) with random weights and a byte-level BPE of 600 tokens, saved as a model
    directory: the engine's cost is small and the front end does what it does for any model."""
    import torch
    from bpe import train_byte_bpe
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = train_byte_bpe(CORPUS * 20, 600, out)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def thread_cpu(pid: int) -> float:
    """user + system CPU seconds of a process's main thread (its event loop), from /proc."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_for(api: str, prompt: str, new_tokens: int) -> tuple[str, dict[str, Any]]:
    if api == "tgi-unary":  # what the serving benchmark's bursts send (burst_client.fire)
        return "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True,
                                                              "details": True}}
    if api == "tgi":
        return "/generate_stream", {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens,
                                                                     "ignore_eos": True}}
    if api == "openai":
        return "/v1/completions", {"model": "tgi", "prompt": prompt, "max_tokens": new_tokens, "stream": True,
                                   "ignore_eos": True, "temperature": 0}
    return "/v1/chat/completions", {"model": "tgi", "messages": [{"role": "user", "content": prompt}],
                                    "max_tokens": new_tokens, "stream": True, "ignore_eos": True, "temperature": 0}


async def drive(url: str, texts: list[str], api: str, count: int, concurrency: int, new_tokens: int) -> dict:
    """Closed loop: `concurrency` clients, each sending its next request when its stream ends."""
    import aiohttp

    done, failed, events = 0, 0, 0
    next_index = iter(range(count))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done, failed, events
        for i in next_index:
            path, body = request_for(api, texts[i % len(texts)], new_tokens)
            async with session.post(url + path, json=body) as resp:
                data = await resp.read()
            ok = resp.status == 200 and b'"error":' not in data
            done += ok
            failed += not ok
            events += data.count(b"data:")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return {"ok": done, "failed": failed, "events": events}


def main(argv: list[str] | None = None) -> None:
    from tunebench.serve.process import ServerProcess, free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=300, help="requests before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="streams open at once (and engine slots)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--api", choices=("tgi", "tgi-unary", "openai", "chat"), default="tgi")
    parser.add_argument("--py-spy", type=Path, default=None, help="record the front end during the measurement")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="frontend-cpu-"))
    model = tiny_model(work / "model")
    texts = prompt_texts(model, tokens=100)
    serve = [str(model), "--device", "cpu", "--engine", "batched", "--frontend", "split", "--max-concurrency",
             str(args.concurrency), "--max-queue", "4096", "--max-input-tokens", "128", "--max-new-tokens", "64",
             "--timeout", "300"]
    with ServerProcess(serve, host="127.0.0.1", port=free_port(), log=work / "server.log",
                       startup_timeout=300) as server:
        assert server.process is not None
        front = server.process.pid
        engine = children(front)[0]
        asyncio.run(drive(server.url, texts, args.api, args.warmup, args.concurrency, args.new_tokens))
        spy = None
        if args.py_spy:
            # --gil: only the thread holding the GIL is sampled, so the shares approximate Python CPU
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(front), "-o", str(args.py_spy), "--threads",
                                    "--nonblocking", "--gil", "-r", "500",
                                    "-f", "flamegraph" if args.py_spy.suffix == ".svg" else "raw"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = (cpu_seconds(front), cpu_seconds(engine), time.monotonic(), thread_cpu(front))
        result = asyncio.run(drive(server.url, texts, args.api, args.requests, args.concurrency, args.new_tokens))
        after = (cpu_seconds(front), cpu_seconds(engine), time.monotonic(), thread_cpu(front))
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            spy.wait()
    n = max(result["ok"], 1)
    wall = after[2] - before[2]
    print(json.dumps({
        "benchmark": "frontend_cpu", "api": args.api, "requests": args.requests, "concurrency": args.concurrency,
        "new_tokens": args.new_tokens, "prompt_tokens": 100, **result, "wall_s": round(wall, 2),
        "requests_per_s": round(result["ok"] / wall, 1),
        "frontend_cpu_ms_per_request": round(1000 * (after[0] - before[0]) / n, 3),
        # the event loop's thread alone: it is what saturates first (tokenization runs in a thread beside it)
        "frontend_loop_thread_cpu_ms_per_request": round(1000 * (after[3] - before[3]) / n, 3),
        "engine_cpu_ms_per_request": round(1000 * (after[1] - before[1]) / n, 3),
        "frontend_cores_busy": round((after[0] - before[0]) / wall, 2)}))


if __name__ == "__main__":
    main()
