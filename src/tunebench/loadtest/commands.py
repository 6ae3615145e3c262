"""`tunebench loadtest` (any TGI / OpenAI / naive endpoint) and `tunebench bench serve` (our server, per engine).

Every load option maps to a field of the `loadtest:` section of a study file (LoadtestConfig); durations
accept 30s, 500ms, 2m or plain seconds. Heavy modules (aiohttp, numpy, matplotlib) load only when a command
runs, so `tunebench --help` stays fast.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError

from tunebench.config.schema import LoadtestConfig
from tunebench.errors import UserError
from tunebench.loadtest.spec import DEFAULT_SWEEP

if TYPE_CHECKING:
    from tunebench.cost import Price
    from tunebench.loadtest.prompt_sets import PromptSet

# CLI option -> LoadtestConfig field, where the names differ.
FIELD_OPTIONS = {"rates": "--rate/--rates", "max_new_tokens": "--max-new-tokens", "ignore_eos": "--ignore-eos",
                 "max_requests": "--max-requests"}

FIELD_FIXES = {"rates": "give rates above 0 requests/s, e.g. --rate 2 or --rates 0.5,1,2,4",
               "api": "allowed: tgi, openai, naive", "arrival": "allowed: constant, poisson"}


@dataclass
class LoadOptions:
    """The load options `loadtest` and `bench serve` share, as typed on the command line."""

    api: str | None
    prompts: Path | None
    data: str | None
    task: str | None
    method: str
    rate: float | None
    rates: str | None
    sweep: str | None
    duration: str | None
    warmup: str | None
    repeat: int | None
    arrival: str | None
    max_new_tokens: int | None
    ignore_eos: bool
    stream: bool
    timeout: str | None
    slo: str | None
    bisect: int | None
    max_requests: int | None
    seed: int | None
    price_per_hour: float | None
    instance: str | None
    tokenizer: str | None
    out: Path | None
    no_progress: bool

    def config(self) -> LoadtestConfig:
        """A LoadtestConfig: the options given, over the defaults."""
        from tunebench.loadtest.spec import parse_duration

        fields: dict[str, Any] = {name: getattr(self, name) for name in (
            "api", "repeat", "arrival", "max_new_tokens", "slo", "bisect", "max_requests", "seed")}
        for name in ("duration", "warmup", "timeout"):
            value = getattr(self, name)
            fields[name] = None if value is None else parse_duration(value, f"--{name}")
        fields |= {"ignore_eos": self.ignore_eos or None, "stream": self.stream or None,
                   "prompts": None if self.prompts is None else str(self.prompts)}
        data = LoadtestConfig().model_dump()
        data |= {name: value for name, value in fields.items() if value is not None}
        return validated(data | self._rate_fields())

    def _rate_fields(self) -> dict[str, Any]:
        """The rate plan given on the command line (it replaces the base's rates and sweep), or nothing."""
        from tunebench.loadtest.spec import parse_rate_list

        if sum(x is not None for x in (self.rate, self.rates, self.sweep)) > 1:
            raise UserError("give one of --rate, --rates and --sweep, not several",
                            "e.g. --rate 4, --rates 1,2,4 or --sweep 1:64:x2")
        if self.rate is not None:
            return {"rates": [self.rate], "sweep": None}
        if self.rates is not None:
            return {"rates": parse_rate_list(self.rates), "sweep": None}
        return {"sweep": self.sweep, "rates": None} if self.sweep is not None else {}

    def prompt_set(self, cfg: LoadtestConfig, tokenizer: str) -> PromptSet:
        from tunebench.loadtest.prompt_sets import builtin_prompts, dataset_prompts, read_prompt_file

        if self.data is not None and self.prompts is not None:
            raise UserError("give --prompts or --data, not both", "--prompts FILE, or --data SOURCE --task T")
        if self.data is not None:
            if self.task is None:
                raise UserError("--data needs --task", "add --task classification or --task summarization")
            return dataset_prompts(self.data, self.task, self.method, tokenizer)
        return read_prompt_file(Path(cfg.prompts)) if cfg.prompts else builtin_prompts()

    def price(self, local_server: bool) -> Price | None:
        from tunebench.loadtest.inference_cost import price_for

        if self.price_per_hour is not None and self.instance is not None:
            raise UserError("give --price-per-hour or --instance, not both", "the explicit price wins; drop one")
        if self.price_per_hour is not None and self.price_per_hour <= 0:
            raise UserError(f"--price-per-hour {self.price_per_hour} must be > 0", "give the hourly price in USD")
        return price_for(self.instance, self.price_per_hour, local_server)

    def out_dir(self, default_name: str) -> Path:
        return self.out or Path("runs") / default_name / time.strftime("%Y%m%d-%H%M%S")


def validated(data: dict[str, Any]) -> LoadtestConfig:
    try:
        return LoadtestConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "loadtest"
        option = FIELD_OPTIONS.get(name, "--" + name.replace("_", "-"))
        message = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{option} {data.get(name)!r}: {message}",
                        FIELD_FIXES.get(name, "see 'tunebench loadtest --help' for the allowed values")) from None


def _option(default: Any, *names: str, help: str, shown: str | None = None) -> Any:
    return typer.Option(default, *names, help=help,
                        show_default=shown or (default is not None and default is not False))


def _field(name: str, help: str, unit: str = "") -> Any:
    """An option for a LoadtestConfig field: None means 'the field's default', which the help shows."""
    value = LoadtestConfig.model_fields[name].default
    shown = f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"
    return _option(None, "--" + name.replace("_", "-"), help=help, shown=shown)


# The shared options, added to each command's own by `with_load_options`. Defaults of None mean "the
# LoadtestConfig default", so the study schema stays the one place defaults live.
LOAD_PARAMETERS: list[tuple[str, Any, Any]] = [
    ("api", str | None, _field("api", "protocol: tgi | openai | naive")),
    ("prompts", Path | None, _option(None, "--prompts", help="prompt file: one per line, or JSONL")),
    ("data", str | None, _option(None, "--data", help="dataset source for prompts, e.g. builtin:classification")),
    ("task", str | None, _option(None, "--task", help="task for --data: classification | summarization")),
    ("method", str, _option("zero_shot", "--method", help="prompt format for --data: zero_shot | few_shot | lora")),
    ("rate", float | None, _option(None, "--rate", help="one rate, requests/s")),
    ("rates", str | None, _option(None, "--rates", help="rates, e.g. 0.5,1,2,4")),
    ("sweep", str | None, _option(None, "--sweep", help="START:STOP:STEP or START:STOP:xFACTOR", shown=DEFAULT_SWEEP)),
    ("duration", str | None, _field("duration", "measured time per repetition", "s")),
    ("warmup", str | None, _field("warmup", "unmeasured time before each repetition", "s")),
    ("repeat", int | None, _field("repeat", "repetitions per rate")),
    ("arrival", str | None, _field("arrival", "constant | poisson")),
    ("max_new_tokens", int | None, _field("max_new_tokens", "tokens to generate per request")),
    ("ignore_eos", bool, _option(False, "--ignore-eos", help="generate max-new-tokens regardless of EOS")),
    ("stream", bool, _option(False, "--stream", help="stream tokens: measures TTFT, TPOT, inter-token latency")),
    ("timeout", str | None, _field("timeout", "per-request timeout", "s")),
    ("slo", str | None, _field("slo", "e.g. 'p90<=2s' or 'p99<5s,ttft_p90<=500ms' ('none': no latency SLO)")),
    ("bisect", int | None, _field("bisect", "bisection steps after the sweep")),
    ("max_requests", int | None, _field("max_requests", "refuse a plan that could send more requests")),
    ("seed", int | None, _field("seed", "prompt order and Poisson arrivals")),
    ("price_per_hour", float | None, _option(None, "--price-per-hour", help="USD per hour of the server")),
    ("instance", str | None, _option(None, "--instance", help="price-table entry (tunebench prices)")),
    ("tokenizer", str | None, _option(None, "--tokenizer", help="model or directory to count tokens the server "
                                             "does not report", shown="the served model, else the embedded one")),
    ("out", Path | None, _option(None, "--out", help="output directory", shown="runs/<command>/<time>")),
    ("no_progress", bool, _option(False, "--no-progress", help="no progress bar")),
]


def with_load_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the shared load options; it receives them as one `opts: LoadOptions` argument."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "opts"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for name, annotation, default in LOAD_PARAMETERS]
    names = [name for name, _, _ in LOAD_PARAMETERS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        opts = LoadOptions(**{name: kwargs.pop(name) for name in names})
        command(**kwargs, opts=opts)

    wrapper.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
    return wrapper


def register(app: typer.Typer) -> None:
    app.command()(loadtest)
    bench = typer.Typer(help="One-command benchmarks.", no_args_is_help=True)
    bench.command("serve")(bench_serve)
    app.add_typer(bench, name="bench")


@with_load_options
def loadtest(
    url: str = typer.Option(..., "--url", help="the server's base URL, e.g. http://127.0.0.1:8080"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TUNEBENCH_API_KEY",
                                       help="sent as 'Authorization: Bearer KEY'"),
    model: str | None = typer.Option(None, "--model", help="OpenAI 'model' field; with --api tgi, the "
                                       "adapter to use (TGI's parameters.adapter_id)",
                                       show_default="the first of /v1/models; tgi: the server's default"),
    input_usd_per_1m: float | None = typer.Option(None, "--input-usd-per-1m", help="a hosted API's price per 1M "
                                                  "input tokens (with --output-usd-per-1m; instead of an hourly "
                                                  "price)"),
    output_usd_per_1m: float | None = typer.Option(None, "--output-usd-per-1m", help="its price per 1M output "
                                                   "tokens"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on stdout (progress: stderr)"),
    *,
    opts: LoadOptions,
) -> None:
    """Open-loop load test of a TGI, OpenAI or naive endpoint: sweep rates, find the max sustainable rate, cost."""
    from tunebench import terminal
    from tunebench.loadtest.prompt_sets import DEFAULT_TOKENIZER, load_counter
    from tunebench.loadtest.runner import LoadtestJob, is_loopback, one_line_summary, prepare, run_loadtest

    cfg = opts.config()
    prepare(url, cfg, api_key, model)  # every check that needs neither the server nor a tokenizer, first
    tokenizer = opts.tokenizer or DEFAULT_TOKENIZER
    out = opts.out_dir("loadtest")
    tokens = token_prices(input_usd_per_1m, output_usd_per_1m, opts)
    job = LoadtestJob(url, cfg, opts.prompt_set(cfg, tokenizer), out, counter=load_counter(tokenizer),
                      price=None if tokens else opts.price(is_loopback(url)), token_prices=tokens, api_key=api_key,
                      model=model)
    summary = run_loadtest(job, console=terminal.console(stderr=as_json), progress=not opts.no_progress)
    if as_json:
        terminal.print_json(summary)
        return
    terminal.console().print(one_line_summary(summary, out))


@with_load_options
def bench_serve(
    model: str | None = typer.Argument(None, help="model to serve: preset, hub id or local path"),
    run: Path | None = typer.Option(None, "--run", help="serve a trained cell's directory instead of MODEL"),
    engines: str = typer.Option("naive,batched", "--engines", help="in order: naive, batched, vllm, sglang"),
    startup_timeout: str = typer.Option("600s", "--startup-timeout", help="wait this long for GET /health"),
    server_args: list[str] = typer.Option([], "--server-arg", help="extra option for tunebench serve (repeatable)"),
    *,
    opts: LoadOptions,
) -> None:
    """Serve MODEL with each engine in turn, load-test it, and compare (naive vs batched)."""
    from tunebench.loadtest.bench import BenchPlan, bench_engines, parse_engines, require_serve_command
    from tunebench.loadtest.prompt_sets import load_counter
    from tunebench.loadtest.runner import prepare
    from tunebench.loadtest.spec import parse_duration

    if (model is None) == (run is None):
        raise UserError("give a MODEL or --run DIR (exactly one)",
                        "e.g. tunebench bench serve smollm2-135m-instruct, or --run runs/<study>/<cell-id>")
    engine_list = parse_engines(engines)
    wait_s = parse_duration(startup_timeout, "--startup-timeout")
    cfg = opts.config()
    prepare("http://127.0.0.1", cfg)
    require_serve_command()
    tokenizer = opts.tokenizer or served_model_name(model, run)
    out = opts.out_dir("bench-serve")
    prompts = opts.prompt_set(cfg, tokenizer)
    serve_args = [model] if model is not None else ["--run", str(run)]
    plan = BenchPlan([*serve_args, *server_args], engine_list, cfg, prompts, out, counter=load_counter(tokenizer),
                     price=opts.price(local_server=True), startup_timeout=wait_s, title=model or str(run))
    if any(e in ("vllm", "sglang") for e in engine_list):
        from tunebench.config.schema import ServeConfig
        from tunebench.serve.external import launcher_for
        from tunebench.serve.options import ModelOptions

        plan.external = launcher_for(ServeConfig(), "auto", ModelOptions(model=model, run=run), out / "export")
    bench_engines(plan, progress=not opts.no_progress)


def token_prices(input_usd: float | None, output_usd: float | None, opts: LoadOptions) -> Any:
    from tunebench.loadtest.inference_cost import TokenPrices

    if input_usd is None and output_usd is None:
        return None
    if input_usd is None or output_usd is None or min(input_usd, output_usd) < 0:
        raise UserError("per-token prices need --input-usd-per-1m and --output-usd-per-1m, both >= 0",
                        "give both (0 for a kind of token the API does not charge)")
    if opts.price_per_hour is not None or opts.instance is not None:
        raise UserError("give per-token prices or --price-per-hour/--instance, not both",
                        "a hosted API bills tokens; a server you rent bills hours")
    return TokenPrices(input_usd, output_usd)


def served_model_name(model: str | None, run: Path | None) -> str:
    if model is not None:
        return model
    from tunebench.rundir import RunDir

    return RunDir(Path(run or ".")).read_config().model.name
