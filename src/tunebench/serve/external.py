"""vLLM and SGLang as load-test engines: export what they serve, build their launch command, name their version.

tunebench does not ship either engine: it runs the one the user installed, as a child process, with the
study's settings mapped onto each engine's documented flags (README, "Engines", lists them with the versions
they were checked against):

    setting                 vllm serve MODEL            python -m sglang.launch_server
    port / host             --port / --host             --port / --host
    dtype                   --dtype                     --dtype
    max concurrency         --max-num-seqs              --max-running-requests
    context length          --max-model-len             --context-length
    GPU memory fraction     --gpu-memory-utilization    --mem-fraction-static
    LoRA adapters           --enable-lora --lora-modules NAME=DIR... --max-loras N --max-lora-rank R
                            (sglang: --enable-lora --lora-paths NAME=DIR... --max-loras-per-batch N --max-lora-rank R)
    inside a cluster task   --distributed-executor-backend mp (vLLM would otherwise join the study's Ray cluster)

Both speak OpenAI's API; a request picks an adapter with `model`: the adapter's name on vLLM,
`<served model>:<adapter>` on SGLang.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.errors import UserError
from tunebench.rundir import read_json

EXTERNAL_ENGINES = ("vllm", "sglang")
INSTALL_HINTS = {
    "vllm": "install vLLM where the GPU is (pip install vllm; it needs CUDA and its own torch), or set "
            "serve.vllm_command to the vllm executable of another environment",
    "sglang": "install SGLang (pip install sglang), or set serve.sglang_command to its launcher, e.g. "
              "'/opt/sglang/bin/python -m sglang.launch_server'",
}
VERSION_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EngineSettings:
    """The study's serving settings, in the units both engines take."""

    host: str
    port: int
    dtype: str = "auto"              # auto | float32 | bfloat16 | float16: the same names on both engines
    max_concurrency: int = 32
    context_length: int = 2048
    gpu_memory_fraction: float = 0.9
    extra_args: tuple[str, ...] = ()
    in_cluster: bool = False
    api_key: str | None = None  # `tunebench serve --engine vllm --api-key`: both engines take --api-key


@dataclass(frozen=True)
class Exported:
    """What the engine loads: a model directory (or hub id) and, for multi-LoRA serving, adapter directories."""

    model: str
    adapters: dict[str, str] = field(default_factory=dict)
    max_lora_rank: int | None = None
    context_length: int = 2048
    merged_adapter: str | None = None

    @property
    def served(self) -> str:
        """'merged' (an adapter merged into the weights), 'adapters' (unmerged LoRA) or 'base'."""
        return "adapters" if self.adapters else "merged" if self.merged_adapter else "base"


@dataclass(frozen=True)
class Launch:
    """One engine, ready to start: the command, the `model` a request names, and what to record."""

    engine: str
    command: list[str]
    request_model: str
    version: str
    served: str
    adapters: int

    @property
    def shown(self) -> str:
        """The command line as printed and recorded: an API key never leaves the process."""
        from tunebench.serve.process import shown

        return shown(self.command)

    def record(self) -> dict[str, Any]:
        return {"engine": self.engine, "version": self.version, "command": self.shown, "served": self.served,
                "adapters": self.adapters}


def launcher(engine: str, vllm_command: str = "vllm", sglang_command: str | None = None) -> list[str]:
    """The executable part of the command; exit 2 with the install hint when the engine is not installed."""
    if engine == "vllm":
        parts = shlex.split(vllm_command)
        if not parts or shutil.which(parts[0]) is None:
            raise UserError(f"serve.engine vllm: '{vllm_command}' is not installed (not found on PATH)",
                            INSTALL_HINTS["vllm"])
        return parts
    if engine == "sglang":
        if sglang_command is None:
            if importlib.util.find_spec("sglang") is None:
                raise UserError(f"serve.engine sglang: the sglang package is not installed in {sys.executable}",
                                INSTALL_HINTS["sglang"])
            return [sys.executable, "-m", "sglang.launch_server"]
        parts = shlex.split(sglang_command)
        if not parts or shutil.which(parts[0]) is None:
            raise UserError(f"serve.sglang_command '{sglang_command}': '{parts[0] if parts else ''}' is not "
                            "installed (not found on PATH)", INSTALL_HINTS["sglang"])
        return parts
    raise UserError(f"engine '{engine}' is not an external engine", f"allowed: {', '.join(EXTERNAL_ENGINES)}")


def engine_version(engine: str, exe: list[str]) -> str:
    """`vllm --version`; SGLang's package version (through the launcher's Python when it is `PY -m ...`)."""
    if engine == "sglang":
        if exe[:1] == [sys.executable] and "-m" in exe:
            try:
                return importlib.metadata.version("sglang")
            except importlib.metadata.PackageNotFoundError:
                return "unknown"
        probe = ([exe[0], "-c", "import sglang; print(sglang.__version__)"] if "-m" in exe
                 else [*exe, "--version"])
    else:
        probe = [*exe, "--version"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=VERSION_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if result.returncode == 0 and lines else "unknown"


def inside_cluster_task() -> bool:
    """Whether this process is a task of the study's Ray cluster (or says it is, for an outside scheduler)."""
    if os.environ.get("TUNEBENCH_CLUSTER_TASK", "").strip() in ("1", "true", "yes"):
        return True
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def engine_command(engine: str, exe: list[str], exported: Exported, s: EngineSettings) -> list[str]:
    """The full launch command for `engine` with the study's settings (flags from the engines' docs)."""
    context = min(s.context_length, exported.context_length)
    if engine == "vllm":
        cmd = [*exe, "serve", exported.model, "--host", s.host, "--port", str(s.port), "--dtype", s.dtype,
               "--max-num-seqs", str(s.max_concurrency), "--max-model-len", str(context),
               "--gpu-memory-utilization", f"{s.gpu_memory_fraction:g}"]
        if exported.adapters:
            cmd += ["--enable-lora", "--lora-modules", *(f"{n}={p}" for n, p in exported.adapters.items()),
                    "--max-loras", str(len(exported.adapters)), "--max-lora-rank", str(exported.max_lora_rank)]
        if s.in_cluster:
            cmd += ["--distributed-executor-backend", "mp"]
    else:
        cmd = [*exe, "--model-path", exported.model, "--host", s.host, "--port", str(s.port), "--dtype", s.dtype,
               "--max-running-requests", str(s.max_concurrency), "--context-length", str(context),
               "--mem-fraction-static", f"{s.gpu_memory_fraction:g}"]
        if exported.adapters:
            cmd += ["--enable-lora", "--lora-paths", *(f"{n}={p}" for n, p in exported.adapters.items()),
                    "--max-loras-per-batch", str(len(exported.adapters)), "--max-lora-rank",
                    str(exported.max_lora_rank)]
    if s.api_key:
        cmd += ["--api-key", s.api_key]
    return [*cmd, *s.extra_args]


def request_model(engine: str, exported: Exported) -> str:
    """The OpenAI `model` a request sends: the (first) adapter when serving LoRA, else the served model.

    Neither engine is given --served-model-name, so each serves the model under the path it was launched
    with, as both do by default."""
    if not exported.adapters:
        return exported.model
    adapter = next(iter(exported.adapters))
    return adapter if engine == "vllm" else f"{exported.model}:{adapter}"


# ---------------------------------------------------------------- exporting what the engine loads


def export_for_engine(opts: Any, out: Path, dtype: str = "bf16") -> Exported:
    """Export the served model for vLLM/SGLang into `out` (both load the same layout), or reuse it.

    Merged when `opts.merge` (one adapter merged into the weights), else the base plus the adapter
    directories for multi-LoRA serving. An export that finished before (export.json written last) is
    reused; a partial one is replaced.
    """
    from tunebench.serve.export import export_model, lora_rank_bucket

    manifest_file = out / "export.json"
    if not manifest_file.exists():
        if out.exists():
            shutil.rmtree(out)  # a partial export (interrupted): export.json is written last
        export_model(opts, "vllm", out, dtype)
    manifest = read_json(manifest_file)
    adapters = dict(manifest.get("adapters") or {})
    rank = None
    if adapters:
        ranks = [int(read_json(Path(path) / "adapter_config.json").get("r", 8)) for path in adapters.values()]
        rank = lora_rank_bucket(max(ranks))
    return Exported(model=manifest["model"], adapters=adapters, max_lora_rank=rank,
                    context_length=int(manifest["context_length"]), merged_adapter=manifest.get("merged_adapter"))


EXPORT_DTYPES = {"auto": "bf16", "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


class EngineLauncher:
    """Launches for vllm/sglang with one serve section; the model is exported once, on first use."""

    def __init__(self, serve: Any, dtype: str, export: Callable[[], Exported], api_key: str | None = None) -> None:
        self.serve, self.dtype, self._export, self.api_key = serve, dtype, export, api_key
        self._exported: Exported | None = None

    def check(self, engine: str) -> list[str]:
        """The engine's executable; exit 2 with the install hint before anything slow happens."""
        return launcher(engine, self.serve.vllm_command, self.serve.sglang_command)

    def exported(self) -> Exported:
        if self._exported is None:
            self._exported = self._export()
        return self._exported

    def launch(self, engine: str, port: int) -> Launch:
        exe = self.check(engine)
        s = self.serve
        settings = EngineSettings(host=s.host, port=port, dtype=self.dtype, max_concurrency=s.max_concurrency,
                                  context_length=s.max_input_tokens + s.max_new_tokens,
                                  gpu_memory_fraction=s.gpu_memory_fraction, extra_args=tuple(s.engine_args),
                                  in_cluster=inside_cluster_task(), api_key=self.api_key)
        exported = self.exported()
        return Launch(engine, engine_command(engine, exe, exported, settings), request_model(engine, exported),
                      engine_version(engine, exe), exported.served, len(exported.adapters))


def launcher_for(serve: Any, model_dtype: str, opts: Any, out: Path, api_key: str | None = None) -> EngineLauncher:
    """An EngineLauncher exporting `opts` (serve.options.ModelOptions) into `out`."""
    return EngineLauncher(serve, model_dtype, lambda: export_for_engine(opts, out, EXPORT_DTYPES[model_dtype]),
                          api_key)


def serve_in_foreground(engine: str, opts: Any, serve: Any, model_dtype: str, out: Path, console: Any,
                        api_key: str | None = None) -> None:
    """`tunebench serve --engine vllm|sglang`: export, start the engine, wait for health, run until Ctrl-C."""
    from tunebench.serve.process import ServerProcess

    engines = launcher_for(serve, model_dtype, opts, out, api_key)
    engines.check(engine)
    launch = engines.launch(engine, serve.port)
    console.print(f"starting {engine} {launch.version}: {launch.shown}", highlight=False, markup=False,
                  soft_wrap=True)
    server = ServerProcess([], host=serve.host, port=serve.port, log=out / f"server-{engine}.log",
                           startup_timeout=serve.startup_timeout, command=launch.command)
    server.log.parent.mkdir(parents=True, exist_ok=True)

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so the engine (in its own session) is stopped with us, not orphaned

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    with server:
        console.print(f"{engine} is serving on {server.url} (OpenAI API: {server.url}/v1, model "
                      f"'{launch.request_model}'); its log: {server.log}; Ctrl-C stops it", highlight=False,
                      soft_wrap=True)
        try:
            assert server.process is not None
            code = server.process.wait()
        except KeyboardInterrupt:
            return
    raise UserError(f"{engine} exited with code {code} while serving", f"read its log: {server.log}")


def serve_external(options: Any, serve: Any, opts: Any, console: Any) -> None:
    """`tunebench serve --engine vllm|sglang`: the command line's settings over the run's serve section.

    A run's export is kept under its serve/export (reused next time); a plain model's goes to a
    temporary directory, removed when the engine stops."""
    import tempfile

    serve = serve.model_copy(update={"host": options.host, "port": options.port,
                                     "max_concurrency": options.max_concurrency,
                                     "max_input_tokens": options.max_input_tokens,
                                     "max_new_tokens": options.max_new_tokens, "merge": opts.merge})
    if serve.port == 0:
        from tunebench.serve.process import free_port

        serve = serve.model_copy(update={"port": free_port(serve.host)})
    launcher(options.engine, serve.vllm_command, serve.sglang_command)
    from tunebench.serve.process import port_is_free

    if not port_is_free(serve.host, serve.port):  # before the export, which takes a while
        raise UserError(f"--port {serve.port}: port {serve.port} on {serve.host} is taken, so {options.engine} "
                        "cannot listen there", "stop what listens there, or pick another port (--port 0: a free one)")
    if opts.run is not None:
        serve_in_foreground(options.engine, opts, serve, opts.dtype, Path(opts.run) / "serve" / "export", console,
                            options.api_key)
        return
    with tempfile.TemporaryDirectory(prefix=f"tunebench-{options.engine}-") as tmp:
        serve_in_foreground(options.engine, opts, serve, opts.dtype, Path(tmp) / "export", console, options.api_key)
