"""Device check of the server (issue 7, item 11): each engine on the GPU with a RedPajama-3B-architecture model.

For each engine, starts `tunebench serve redpajama-3b --random-weights --engine E` on a free loopback port,
sends one request alone (decode speed at batch 1), then twice a burst of concurrent requests of different
prompt lengths (all `ignore_eos`, so every one generates exactly --max-new-tokens; the first burst warms the
CUDA allocator up and is reported as "cold"), reads /metrics, stops the server with SIGTERM, and prints one
JSON line per engine: latencies, throughput, time to first token, inter-token latency, queue time, and the
decode batch sizes the engine actually ran.

Offline by design: the model is built from the preset's architecture (random weights) and the tokenizer is a
small byte-level BPE trained here in a second (random weights make any tokenizer equally good), so nothing
is downloaded. The GPU machine lacks FastAPI, uvicorn and pydantic; carry the project's wheels:

    ../shared/gpu/fetch-wheels.sh          # once, on the development machine: fills ./.whl
    device run, carry [".whl"]:
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src && python3 benchmarks/serve_gpu_check.py --out $OUT

About 3 minutes for both engines (the naive engine's two bursts take most of it). On a laptop, a tiny model:
    python benchmarks/serve_gpu_check.py --model DIR --tokenizer DIR --device cpu --requests 6 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CORPUS = [
    "The engine makes a rattling noise when the car idles at a red light.",
    "Our pitcher threw a no-hitter in the ninth inning last night.",
    "Simmer the onions in butter until golden, then add the garlic and a pinch of salt.",
    "Solder the resistor to the board and check the voltage with a meter before powering it.",
    "The city council voted to raise the budget for road repairs after a long debate.",
    "The rocket reached orbit and deployed the satellite over the Pacific Ocean.",
    "Anna: are we still on for lunch tomorrow? Ben: yes, 12:30 at the usual place.",
]
NEEDED = ("fastapi", "uvicorn", "pydantic", "prometheus_client", "httpx")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b", help="preset or model directory (random weights)")
    parser.add_argument("--engines", default="batched,naive", help="engines to check, in order")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests in the burst")
    parser.add_argument("--prompt-tokens", type=int, default=100, help="longest prompt; others are shorter")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for GET /health")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer directory (default: train one here)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON lines and server logs")
    return parser.parse_args(argv)


def check_imports() -> None:
    import importlib.util

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"missing packages {missing}: carry the wheels (see this script's docstring)")


def build_tokenizer(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out)
    return out


def prompts(tokenizer_dir: Path, n: int, longest: int) -> list[str]:
    """n prompts from longest/4 to longest tokens, so sequences join and leave the batch at different times."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(" ".join(CORPUS * 50))["input_ids"]
    sizes = [max(4, longest // 4 + (longest - longest // 4) * i // max(1, n - 1)) for i in range(n)]
    return [tokenizer.decode(ids[i * 7:i * 7 + size]) for i, size in enumerate(sizes)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: argparse.Namespace, engine: str, tokenizer: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "tunebench.cli", "serve", args.model, "--random-weights", "--engine", engine,
                   "--tokenizer", str(tokenizer), "--device", args.device, "--port", str(self.port),
                   "--max-concurrency", str(max(32, args.requests)), "--max-new-tokens", str(args.max_new_tokens)]
        src = str(Path(__file__).resolve().parents[1] / "src")
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": path}
        self.log = log
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_healthy(self, timeout: float) -> float:
        import httpx

        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"no healthy server after {timeout:g} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def generate(url: str, prompt: str, max_new_tokens: int) -> dict[str, Any]:
    import httpx

    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "ignore_eos": True, "details": True}}
    start = time.monotonic()
    response = httpx.post(f"{url}/generate", json=body, timeout=600)
    elapsed = time.monotonic() - start
    ok = response.status_code == 200
    tokens = response.json()["details"]["generated_tokens"] if ok else 0
    return {"status": response.status_code, "latency_s": elapsed, "tokens": tokens,
            "error": None if ok else response.text[:300]}


def burst(url: str, texts: list[str], max_new_tokens: int) -> tuple[list[dict[str, Any]], float]:
    results: list[dict[str, Any]] = [{} for _ in texts]

    def one(i: int) -> None:
        results[i] = generate(url, texts[i], max_new_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.monotonic() - start


def burst_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Means over the burst alone (the warm-up and the single request subtracted)."""
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    def mean(name: str) -> float | None:
        count = delta(f"{name}_count")
        return round(delta(f"{name}_sum") / count, 5) if count else None

    return {"ttft_mean_s": mean("tunebench_time_to_first_token_seconds"),
            "inter_token_mean_s": mean("tunebench_inter_token_latency_seconds"),
            "queue_mean_s": mean("tunebench_queue_duration_seconds"),
            "prompt_tokens_mean": mean("tunebench_prompt_tokens"),
            "batch_size_mean": mean("tunebench_batch_size"),
            "decode_steps": delta("tunebench_batch_size_count"),
            "steps_above_batch_1": delta("tunebench_batch_size_count") - delta('tunebench_batch_size_bucket{le="1.0"}')}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def check_engine(args: argparse.Namespace, engine: str, tokenizer: Path, texts: list[str], logs: Path) -> dict:
    import httpx

    from tunebench.serve.metrics import parse_metrics

    server = Server(args, engine, tokenizer, logs / f"server-{engine}.log")
    try:
        startup = server.wait_healthy(args.startup_timeout)
        info = httpx.get(f"{server.url}/info").json()
        generate(server.url, texts[0], 4)  # warm-up: first CUDA kernels
        alone = generate(server.url, texts[-1], args.max_new_tokens)
        # The first burst grows the CUDA caching allocator (every decode step concatenates the KV cache into
        # new, larger tensors); it is reported as "cold", and the same burst again is the measurement.
        cold_results, cold_wall = burst(server.url, texts, args.max_new_tokens)
        before = parse_metrics(httpx.get(f"{server.url}/metrics").text)
        results, wall = burst(server.url, texts, args.max_new_tokens)
        after = parse_metrics(httpx.get(f"{server.url}/metrics").text)
    finally:
        server.stop()
    ok = [r for r in results if r["status"] == 200]
    latencies = [r["latency_s"] for r in ok]
    return {
        "check": "serve_gpu", "engine": engine, "model": args.model, "device": info["model_device_type"],
        "dtype": info["model_dtype"], "startup_s": round(startup, 1),
        "single_request": {"latency_s": round(alone["latency_s"], 3), "tokens": alone["tokens"],
                           "ms_per_token": round(1000 * alone["latency_s"] / max(1, alone["tokens"]), 2)},
        "burst": {"requests": len(texts), "ok": len(ok), "errors": [r["error"] for r in results if r["error"]][:3],
                  "wall_s": round(wall, 3), "output_tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
                  "latency_p50_s": round(percentile(latencies, 0.5), 3) if ok else None,
                  "latency_p90_s": round(percentile(latencies, 0.9), 3) if ok else None,
                  "latency_max_s": round(max(latencies), 3) if ok else None},
        "cold_burst": {"wall_s": round(cold_wall, 3),
                       "output_tokens_per_s": round(sum(r["tokens"] for r in cold_results) / cold_wall, 1)},
        "burst_metrics": {**burst_means(before, after), "max_batch_size_seen": after["tunebench_max_batch_size"]},
        "max_new_tokens": args.max_new_tokens,
    }


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    check_imports()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    out = args.out or Path(tempfile.mkdtemp(prefix="serve-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Path(args.tokenizer) if args.tokenizer else build_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    texts = prompts(tokenizer, args.requests, args.prompt_tokens)
    lines = []
    for engine in args.engines.split(","):
        print(f"checking the {engine} engine ...", file=sys.stderr, flush=True)
        line = json.dumps(check_engine(args, engine, tokenizer, texts, out))
        print(line, flush=True)
        lines.append(line)
    (out / "serve_gpu_check.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
