"""`tunebench serve` and `tunebench export`.

Only typer is imported here: the CLI imports this module for every command, so the server's heavy
dependencies (torch, transformers, FastAPI, uvicorn) load inside the commands.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import typer

from tunebench.errors import UserError

ADAPTER_HELP = "a LoRA adapter to serve as NAME=DIR (repeatable); requests pick it by name"
TARGETS = ("vllm", "tgi")
DTYPES = ("auto", "float32", "bfloat16", "float16")
EXTERNAL_ENGINES = ("vllm", "sglang")  # serve.external's; named here so the CLI imports nothing to check them


def model_options(model: str | None, run: Path | None, adapters: list[str], merge: bool, random_weights: bool,
                  tokenizer: str | None, dtype: str, device: str | None) -> Any:
    from tunebench.serve.options import ModelOptions, parse_adapter

    if dtype not in DTYPES:
        raise UserError(f"--dtype '{dtype}' is not a dtype", f"allowed: {', '.join(DTYPES)}")
    return ModelOptions(model=model, run=run, adapters=tuple(parse_adapter(a) for a in adapters), merge=merge,
                        random_weights=random_weights, tokenizer=tokenizer, dtype=dtype, device=device)


def serve_defaults(run: Path | None) -> Any:
    """The serve section of the run's config (its study file's settings), else the schema's defaults."""
    from tunebench.config.schema import ServeConfig
    from tunebench.rundir import RunDir

    return RunDir(run).read_config().serve if run is not None else ServeConfig()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        model: str | None = typer.Argument(None, help="preset, hub id or local model directory"),
        run: Path | None = typer.Option(None, "--run", help="a run directory: its model, adapter, labels, prompt"),
        adapter: list[str] = typer.Option([], "--adapter", help=ADAPTER_HELP),
        merge: bool = typer.Option(False, "--merge", help="merge the (single) adapter into the weights"),
        engine: str | None = typer.Option(None, "--engine", help="batched, naive, or an installed vllm / sglang"),
        host: str | None = typer.Option(None, "--host", help="address to bind (default 127.0.0.1)"),
        port: int | None = typer.Option(None, "--port", help="port (default 8080; 0 picks a free one)"),
        api_key: str | None = typer.Option(None, "--api-key", envvar="TUNEBENCH_API_KEY",
                                           help="require 'Authorization: Bearer KEY'. On the command line it is "
                                                "visible to every user in `ps`: prefer the TUNEBENCH_API_KEY "
                                                "environment variable or --api-key-file"),
        api_key_file: Path | None = typer.Option(None, "--api-key-file", envvar="TUNEBENCH_API_KEY_FILE",
                                                 help="read the API key from this file (its first line)"),
        allow_no_auth: bool = typer.Option(False, "--allow-no-auth",
                                           help="serve on a non-loopback --host without an API key"),
        frontend: str | None = typer.Option(None, "--frontend", help="split (the engine in its own process), inline "
                                            "(one process: debugging), auto (split on CUDA; the default)"),
        frontends: str | None = typer.Option(None, "--frontends", help="front-end processes sharing the engine "
                                             "(split only): N or auto (4 with >= 16 cores, else 1; the default)"),
        max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="sequences decoded together"),
        max_queue: int | None = typer.Option(None, "--max-queue", help="waiting requests before 503"),
        max_input_tokens: int | None = typer.Option(None, "--max-input-tokens", help="longest prompt accepted"),
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="most tokens one request may ask"),
        timeout: float | None = typer.Option(None, "--timeout", help="seconds a request may take, queue included"),
        max_prefill_tokens: int | None = typer.Option(None, "--max-prefill-tokens", help="batched engine: padded "
                                                      "prompt tokens in one prefill launch (one per scheduler "
                                                      "iteration; at most 64 prompts on CUDA; default 4096)"),
        waiting_served_ratio: float | None = typer.Option(None, "--waiting-served-ratio", help="batched engine: "
                                                          "after a prefill, prefill again before decoding while "
                                                          "waiting >= this x running requests (0: fill every free "
                                                          "slot first; inf: one prefill per iteration, the default)"),
        random_weights: bool = typer.Option(False, "--random-weights", help="the architecture without weights"),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="a tokenizer directory to use instead"),
        dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU), float32, bfloat16, float16"),
        device: str | None = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda if present)"),
    ) -> None:
        """Serve a model over HTTP with TGI's and OpenAI's APIs (continuous batching, LoRA adapters, auth)."""
        import logging

        from tunebench import terminal
        from tunebench.serve.options import ServerOptions, parse_frontends

        cfg = serve_defaults(run)
        key = read_api_key(api_key, api_key_file)
        options = ServerOptions(
            engine=engine or cfg.engine, host=host or cfg.host, port=cfg.port if port is None else port,
            api_key=key, max_concurrency=max_concurrency or cfg.max_concurrency,
            max_queue=max_queue or cfg.max_queue, max_input_tokens=max_input_tokens or cfg.max_input_tokens,
            max_new_tokens=max_new_tokens or cfg.max_new_tokens, request_timeout=timeout or cfg.request_timeout,
            max_prefill_tokens=max_prefill_tokens or cfg.max_prefill_tokens,
            waiting_served_ratio=cfg.waiting_served_ratio if waiting_served_ratio is None else waiting_served_ratio,
            frontend=frontend or cfg.frontend,
            frontends=parse_frontends(str(cfg.frontends) if frontends is None else frontends))
        check_server_options(options, (max_concurrency, max_queue, max_input_tokens, max_new_tokens, timeout,
                                       None if frontends is None or options.frontends == 0 else options.frontends,
                                       max_prefill_tokens))
        from tunebench.serve.state import inline_tokenize_chars

        inline_tokenize_chars()  # a malformed TUNEBENCH_TOKENIZE_INLINE_CHARS is refused before anything loads
        opts = model_options(model, run, adapter, merge or cfg.merge, random_weights, tokenizer, dtype, device)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        console = terminal.console(stderr=True)
        if options.engine in EXTERNAL_ENGINES:  # vLLM / SGLang on an export of the model, in the foreground
            from tunebench.serve.external import serve_external

            serve_external(options, cfg, opts, console)
            return
        if not is_loopback(options.host) and not options.api_key:
            if not allow_no_auth:
                raise UserError(f"--host {options.host} is reachable from other machines and no API key is set: "
                                "anyone who can reach the port could use the model",
                                "set TUNEBENCH_API_KEY or --api-key-file FILE, or pass --allow-no-auth to serve "
                                "without a key anyway")
            console.print(f"[yellow]warning:[/] listening on {options.host} without an API key (--allow-no-auth): "
                          "anyone who can reach this port can use the model")
        run_server(opts, options, console)

    @app.command()
    def export(
        model: str | None = typer.Argument(None, help="preset, hub id or local model directory"),
        run: Path | None = typer.Option(None, "--run", help="a run directory: its model and adapter"),
        target: str = typer.Option(..., "--target", help="vllm or tgi"),
        out: Path = typer.Option(..., "--out", help="directory to write (must be empty or absent)"),
        adapter: list[str] = typer.Option([], "--adapter", help="a LoRA adapter to export as NAME=DIR"),
        merge: bool = typer.Option(False, "--merge", help="vllm: merge the adapter instead of serving it as LoRA"),
        random_weights: bool = typer.Option(False, "--random-weights", help="the architecture without weights"),
        tokenizer: str | None = typer.Option(None, "--tokenizer", help="a tokenizer directory to use instead"),
        dtype: str = typer.Option("bf16", "--dtype", help="weights written: bf16, fp16 or fp32"),
    ) -> None:
        """Write what vLLM or TGI needs to serve a model (merged, or base + LoRA for vLLM) and the launch command."""
        from tunebench import terminal
        from tunebench.serve.export import export_model

        if target not in TARGETS:
            raise UserError(f"--target '{target}' is not supported", f"allowed: {', '.join(TARGETS)}")
        opts = model_options(model, run, adapter, merge, random_weights, tokenizer, "auto", "cpu")
        manifest = export_model(opts, target, out, dtype)
        terminal.console().print(f"exported for {target} to {out}\nlaunch: {manifest['command']}", soft_wrap=True)


def read_api_key(given: str | None, path: Path | None) -> str | None:
    """The key from --api-key / TUNEBENCH_API_KEY, or the first line of --api-key-file; an empty one is none."""
    if given and path is not None:
        raise UserError("both an API key and --api-key-file were given", "give only one of them")
    if path is None:
        return given or None
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UserError(f"--api-key-file {path}: cannot read it ({err.strerror or err})",
                        "give a readable file whose first line is the key") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise UserError(f"--api-key-file {path} is empty", "write the key on its first line")
    return key


def check_server_options(options: Any, given: tuple) -> None:
    from tunebench.serve.engine import ENGINES
    from tunebench.serve.options import FRONTENDS

    if options.frontend not in FRONTENDS:
        raise UserError(f"--frontend '{options.frontend}' is not a front-end mode",
                        f"allowed: {', '.join(FRONTENDS)} (split: the engine in a process of its own; inline: one "
                        "process, for debugging; auto: split on CUDA, inline on the CPU)")
    if options.engine not in (*ENGINES, *EXTERNAL_ENGINES):
        raise UserError(f"--engine '{options.engine}' is not an engine",
                        f"allowed: {', '.join((*ENGINES, *EXTERNAL_ENGINES))}")
    names = ("--max-concurrency", "--max-queue", "--max-input-tokens", "--max-new-tokens", "--timeout", "--frontends",
             "--max-prefill-tokens")
    for name, value in zip(names, given, strict=True):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be > 0, got {value}", f"give a positive {name}")
    if options.frontends > 64:
        raise UserError(f"--frontends {options.frontends} is more front-end processes than this server supports",
                        "give 1..64 (about one per two CPU cores the engine does not need)")
    ratio = options.waiting_served_ratio
    if not ratio >= 0:  # NaN too
        raise UserError(f"--waiting-served-ratio {ratio} is not a ratio",
                        "give 0 or more (0: fill every free slot before decoding; inf: one prefill per iteration)")
    if not 0 <= options.port <= 65535:
        raise UserError(f"--port {options.port} is not a port", "give 0..65535 (0 picks a free port)")


def run_server(opts: Any, options: Any, console: Any) -> None:
    import dataclasses

    from tunebench.serve.app import build_state
    from tunebench.serve.loading import load_served, read_adapter_config
    from tunebench.serve.server import serve_forever

    for spec in opts.adapters:
        read_adapter_config(spec)   # a mistyped adapter fails before "loading ...", not after the model
    name = opts.model or str(opts.run)
    from tunebench.serve.options import resolved_frontend, resolved_frontends

    frontend = resolved_frontend(options.frontend, opts.device)
    if options.frontends > 1 and frontend != "split":
        raise UserError(f"--frontends {options.frontends} needs the engine in a process of its own, but the front "
                        f"end is {frontend}", "add --frontend split (or leave --frontends at 1)")
    options = dataclasses.replace(options, frontend=frontend,
                                  frontends=resolved_frontends(options.frontends, frontend))
    if options.frontends > 1:
        from tunebench.serve.frontends import serve_many

        console.print(f"loading {name} in the engine process, {options.frontends} front ends ...")

        def announce_many(url: str, info: dict) -> None:
            adapters = f", adapters: {', '.join(info['adapters'])}" if info["adapters"] else ""
            merged = f", merged adapter: {info['merged']}" if info["merged"] else ""
            console.print(f"serving {info['model_id']} ({options.engine} engine, {options.frontends} front ends, "
                          f"{info['device']}{adapters}{merged}) on {url}\n  TGI: {url}/generate  OpenAI: {url}/v1  "
                          f"metrics: {url}/metrics  docs: {url}/docs", highlight=False, soft_wrap=True)

        serve_many(opts, options, announce_many)
        return
    if options.frontend == "split":  # the engine process loads the model; this one keeps HTTP
        from tunebench.serve.client import build_split_state

        console.print(f"loading {name} in the engine process ...")
        state = build_split_state(opts, options)
        served = state.served
    else:
        console.print(f"loading {name} ...")
        served = load_served(opts)
        state = build_state(served, options)
    adapters = f", adapters: {', '.join(served.adapters)}" if served.adapters else ""
    merged = f", merged adapter: {served.merged}" if served.merged else ""

    def announce(url: str) -> None:
        console.print(f"serving {served.model_id} ({options.engine} engine, {options.frontend} front end, "
                      f"{served.device}{adapters}{merged}) on {url}\n  TGI: {url}/generate  OpenAI: {url}/v1  "
                      f"metrics: {url}/metrics  docs: {url}/docs", highlight=False, soft_wrap=True)

    serve_forever(state, options.host, options.port, announce)
