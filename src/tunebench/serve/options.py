"""What `tunebench serve` was asked to do, resolved once from the command line and the run's config."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.errors import UserError

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path


@dataclass(frozen=True)
class ModelOptions:
    """Which weights to serve."""

    model: str | None = None  # preset, hub id or local path
    run: Path | None = None  # a run directory (cell) from `tunebench run`
    adapters: tuple[AdapterSpec, ...] = ()
    merge: bool = False
    random_weights: bool = False
    tokenizer: str | None = None  # a tokenizer directory to use instead of the model's
    dtype: str = "auto"
    device: str | None = None


@dataclass(frozen=True)
class ServerOptions:
    """How to serve them."""

    engine: str = "batched"
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_concurrency: int = 32
    max_queue: int = 256
    max_input_tokens: int = 2048
    max_new_tokens: int = 256
    request_timeout: float = 300.0
    max_prefill_tokens: int = 4096  # padded prompt tokens per prefill launch (batched)
    waiting_served_ratio: float = math.inf  # prefills back to back while waiting >= ratio x running (batched)
    max_stop_sequences: int = 4
    frontend: str = "auto"  # split: the engine in a process of its own (tunebench.serve.client); inline: here
    frontends: int = 0  # front-end processes sharing the engine (split only; tunebench.serve.frontends); 0: auto


FRONTENDS = ("auto", "split", "inline")


def engine_limits(options: ServerOptions) -> Any:
    """The engine's limits from the server's options (one place, for the inline and the split engine)."""
    from tunebench.serve.requests import EngineLimits

    return EngineLimits(max_batch=options.max_concurrency, max_queue=options.max_queue,
                        request_timeout=options.request_timeout, prefill_budget=options.max_prefill_tokens,
                        waiting_served_ratio=options.waiting_served_ratio,
                        max_sequence_tokens=options.max_input_tokens + options.max_new_tokens)


def resolved_frontend(frontend: str, device: str | None) -> str:
    """auto: split on CUDA, where it measured faster (benchmarks/frontend_split.py on the H200: +5% output tokens/s
    on average over the same bursts), inline on the CPU, where the two processes share the cores the model needs
    (0.90-0.93x on the 2-core dev box)."""
    if frontend != "auto":
        return frontend
    from tunebench.models.loading import default_device

    return "split" if (device or default_device()).startswith("cuda") else "inline"


def resolved_frontends(frontends: int, frontend: str) -> int:
    """0 (auto): 4 front-end processes with the split front end when the machine has >= 16 cores (one per four),
    else 1. On the H200 host (16 cores, 3B, 512 slots, 512-request bursts at 100 in / 64 out, 2026-12-03,
    benchmarks/results/2026-12-03-h200-lead-8/9/10-*): 1 front end 14,165 / 13,650 output tok/s, 4 front ends
    16,935 / 15,245, 8 front ends 15,763; at 250 req/s open loop p90 0.94 s with 4 against 2.23 s with 1."""
    if frontends:
        return frontends
    if frontend != "split":
        return 1
    import os

    return 4 if (os.cpu_count() or 1) >= 16 else 1


def parse_frontends(text: str) -> int:
    """--frontends N or auto (0)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        count = int(text)
    except ValueError:
        raise UserError(f"--frontends '{text}' is not a number of processes",
                        "give a count (1..64) or auto") from None
    if count <= 0:
        raise UserError(f"--frontends must be > 0, got {count}", "give a count (1..64) or auto")
    return count


def parse_adapter(text: str) -> AdapterSpec:
    """NAME=DIR from the command line."""
    name, sep, path = text.partition("=")
    fix = "write --adapter NAME=DIR, e.g. --adapter support=runs/demo/cell-1/train/adapter (NAME: letters, " \
          "digits, '.', '_', '-')"
    if not sep or not path:
        raise UserError(f"--adapter '{text}' is not NAME=DIR", fix)
    if not ADAPTER_NAME.match(name):
        raise UserError(f"--adapter '{text}': '{name}' is not a valid adapter name", fix)
    return AdapterSpec(name, Path(path).expanduser())
