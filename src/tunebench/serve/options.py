"""What `tunebench serve` was asked to do, resolved once from the command line and the run's config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

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
    max_stop_sequences: int = 4
    frontend: str = "auto"  # split: the engine in a process of its own (tunebench.serve.client); inline: here
    frontends: int = 1  # front-end processes sharing the engine (split only; tunebench.serve.frontends)


FRONTENDS = ("auto", "split", "inline")


def resolved_frontend(frontend: str, device: str | None) -> str:
    """auto: split on CUDA, where it measured faster (benchmarks/frontend_split.py on the H200: +5% output tokens/s
    on average over the same bursts), inline on the CPU, where the two processes share the cores the model needs
    (0.90-0.93x on the 2-core dev box)."""
    if frontend != "auto":
        return frontend
    from tunebench.models.loading import default_device

    return "split" if (device or default_device()).startswith("cuda") else "inline"


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
