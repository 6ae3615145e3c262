"""A stand-in for `vllm` and for SGLang's launcher, for the engine tests (vLLM and SGLang need a CUDA GPU).

    engine_standin.py vllm serve MODEL --port P ...        engine_standin.py sglang --model-path MODEL --port P ...

It parses its arguments the way the real CLIs do (argparse, only the flags tunebench passes, with the
choices the engines' documentation gives), so an unknown flag or a bad value exits 2 with argparse's
message, as vLLM's and SGLang's parsers do. Then it becomes `tunebench serve` on the same model, port and
adapters (exec: same pid, so stopping it stops the server), which answers GET /health and OpenAI's API as
the real engines do. Each start appends {"engine", "argv", "pid"} to $STANDIN_LOG; STANDIN_FAIL=1 makes
it exit 1 during start-up, after printing some log lines, like an engine that runs out of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
TUNEBENCH_DTYPE = {"half": "float16", "float": "float32"}
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VERSION = "0.0.0+standin"


def vllm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("--version", action="version", version=VERSION)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--dtype", choices=DTYPES, default="auto")
    serve.add_argument("--max-num-seqs", type=int)
    serve.add_argument("--max-model-len", type=int)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    serve.add_argument("--enable-lora", action="store_true")
    serve.add_argument("--lora-modules", nargs="+", default=[])
    serve.add_argument("--max-loras", type=int, default=1)
    serve.add_argument("--max-lora-rank", type=int, choices=VLLM_LORA_RANKS, default=16)
    serve.add_argument("--distributed-executor-backend", choices=("ray", "mp", "uni", "external_launcher"))
    serve.add_argument("--api-key")
    return parser


def sglang_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    parser.add_argument("--version", action="version", version=VERSION)  # the stand-in's only; see README
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--max-running-requests", type=int)
    parser.add_argument("--context-length", type=int)
    parser.add_argument("--mem-fraction-static", type=float)
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--lora-paths", nargs="*", default=[])
    parser.add_argument("--max-loras-per-batch", type=int, default=8)
    parser.add_argument("--max-lora-rank", type=int)
    parser.add_argument("--api-key")
    return parser


def main() -> None:
    engine, argv = sys.argv[1], sys.argv[2:]
    args = (vllm_parser() if engine == "vllm" else sglang_parser()).parse_args(argv)
    model = args.model if engine == "vllm" else args.model_path
    adapters = args.lora_modules if engine == "vllm" else args.lora_paths
    limit = args.max_loras if engine == "vllm" else args.max_loras_per_batch
    if adapters and not args.enable_lora:
        sys.exit(f"{engine}: error: LoRA adapters given without --enable-lora")
    if len(adapters) > limit:
        sys.exit(f"{engine}: error: {len(adapters)} adapters but at most {limit} per batch")
    fraction = args.gpu_memory_utilization if engine == "vllm" else args.mem_fraction_static
    if fraction is not None and not 0 < fraction <= 1:
        sys.exit(f"{engine}: error: the GPU memory fraction must be in (0, 1], got {fraction}")
    if os.environ.get("STANDIN_LOG"):
        with open(os.environ["STANDIN_LOG"], "a") as log:
            log.write(json.dumps({"engine": engine, "argv": argv, "pid": os.getpid()}) + "\n")
    print(f"INFO {engine} {VERSION} (stand-in): loading {model}", flush=True)
    if os.environ.get("STANDIN_FAIL") == "1":
        print("ERROR torch.OutOfMemoryError: CUDA out of memory (stand-in)", flush=True)
        sys.exit(1)
    context = args.max_model_len if engine == "vllm" else args.context_length
    concurrency = args.max_num_seqs if engine == "vllm" else args.max_running_requests
    command = [sys.executable, "-m", "tunebench.cli", "serve", model, "--host", args.host or "127.0.0.1",
               "--port", str(args.port), "--device", "cpu", "--dtype", TUNEBENCH_DTYPE.get(args.dtype, args.dtype)]
    if context:
        command += ["--max-input-tokens", str(context)]
    if concurrency:
        command += ["--max-concurrency", str(concurrency)]
    for adapter in adapters:
        command += ["--adapter", adapter]
    if args.api_key:
        command += ["--api-key", args.api_key]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
