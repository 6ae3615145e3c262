"""Serve, load-test, stop, per engine; then compare: the one-command version of the original's FastAPI-vs-TGI test.

`tunebench serve` runs as a child process (`python -m tunebench.cli serve ...`) on a free loopback port; so do
vLLM and SGLang (`serve/external.py` exports the model and builds their command; they are load-tested through
their OpenAI API). Each counts as started when GET /health answers 200, and is stopped with SIGTERM (SIGKILL
after a grace period) whatever happens to the load test (serve/process.py).

    OUT/
      <engine>/loadtest.json, requests.csv, latency.png, throughput.png    one load test per engine
      server-<engine>.log                                                  the server's output
      comparison.json, comparison.md, latency.png, throughput.png          the engines side by side
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunebench import terminal
from tunebench.config.schema import LoadtestConfig
from tunebench.cost import Price
from tunebench.errors import UserError
from tunebench.loadtest.inference_cost import TokenPrices
from tunebench.loadtest.plots import plot_latency, plot_throughput
from tunebench.loadtest.prompt_sets import PromptSet, TokenCounter
from tunebench.loadtest.runner import LoadtestJob, one_line_summary, prepare, run_loadtest
from tunebench.loadtest.spec import parse_slo
from tunebench.rundir import write_atomic, write_json
from tunebench.serve.external import EXTERNAL_ENGINES, EngineLauncher
from tunebench.serve.process import ServerProcess, free_port, port_is_free, shown  # noqa: F401  (re-exported)

ENGINES = ("naive", "batched", *EXTERNAL_ENGINES)
OWN_ENGINES = ("naive", "batched")


def serve_command_available() -> bool:
    """Whether this installation's CLI has a `serve` command (the serving stage)."""
    from tunebench import cli

    names = {info.name or info.callback.__name__.replace("_", "-") for info in cli.app.registered_commands
             if info.name or info.callback}
    return "serve" in names


def require_serve_command() -> None:
    if not serve_command_available():
        raise UserError("'tunebench serve' is not available in this version, so there is no server to start",
                        "load-test a server that is already running with: tunebench loadtest --url URL --api tgi")


def parse_engines(text: str | list[str]) -> list[str]:
    engines = [e.strip() for e in (text.split(",") if isinstance(text, str) else text) if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if not engines or bad:
        raise UserError(f"--engines '{text}': unknown or missing engine {bad or ''}".rstrip(),
                        f"give a comma-separated list of: {', '.join(ENGINES)}")
    return list(dict.fromkeys(engines))


@dataclass
class BenchPlan:
    serve_args: list[str]  # the model part of the serve command: [MODEL] or ["--run", DIR], plus options
    engines: list[str]
    cfg: LoadtestConfig
    prompts: PromptSet
    out: Path
    counter: TokenCounter | None = None
    price: Price | None = None
    host: str = "127.0.0.1"
    startup_timeout: float = 600.0
    title: str = "tunebench serve"
    external: EngineLauncher | None = None  # how to export and launch vllm / sglang
    remote: RemoteServer | None = None  # loadtest.url: a server already running elsewhere, tested after the engines
    served: str | None = None  # what tunebench's own engines serve: base | merged | adapters (for the report)


@dataclass(frozen=True)
class RemoteServer:
    """An OpenAI-compatible server tunebench does not start (vLLM, SGLang, trtllm-serve, a hosted API)."""

    url: str
    name: str = "external"
    model: str | None = None
    api_key: str | None = None
    price: Price | None = None  # an hourly price, or
    token_prices: TokenPrices | None = None  # a hosted API's per-token prices

    @classmethod
    def from_config(cls, cfg: LoadtestConfig) -> RemoteServer | None:
        """loadtest.url and its url_* fields; the API key is read from the environment variable named."""
        import os

        if cfg.url is None:
            return None
        hourly = cfg.url_price_per_hour is not None
        per_token = (cfg.url_input_usd_per_1m, cfg.url_output_usd_per_1m)
        if hourly and any(p is not None for p in per_token):
            raise UserError("loadtest.url has both url_price_per_hour and per-token prices",
                            "give url_price_per_hour (a server you rent) or url_input_usd_per_1m and "
                            "url_output_usd_per_1m (a hosted API), not both")
        if (per_token[0] is None) != (per_token[1] is None):
            raise UserError("loadtest.url: only one of url_input_usd_per_1m and url_output_usd_per_1m is given",
                            "give both (0 for a kind of token the API does not charge)")
        key = None
        if cfg.url_api_key_env:
            key = os.environ.get(cfg.url_api_key_env)
            if not key:
                raise UserError(f"loadtest.url_api_key_env names {cfg.url_api_key_env}, which is not set",
                                f"export {cfg.url_api_key_env}=<the API key> before running")
        price = (Price("custom", "remote", 1, cfg.url_price_per_hour, "loadtest.url_price_per_hour", "-")
                 if hourly else None)
        tokens = (TokenPrices(per_token[0], per_token[1], cfg.url_name)  # type: ignore[arg-type]
                  if per_token[0] is not None else None)
        return cls(cfg.url, cfg.url_name, cfg.url_model, key, price, tokens)


def own_version() -> str:
    from tunebench import __version__

    return __version__


def bench_engines(plan: BenchPlan, *, console: Console | None = None, progress: bool = True) -> dict[str, Any]:
    """Load-test each engine in turn on a fresh server; write and return the comparison."""
    console = console or terminal.console()
    if any(e in OWN_ENGINES for e in plan.engines):
        require_serve_command()
    if plan.remote is not None:  # a bad URL fails now, not after the engines' load tests
        if plan.remote.name in plan.engines:
            raise UserError(f"loadtest.url_name '{plan.remote.name}' is also an engine of loadtest.engines",
                            "give the URL's row another name (loadtest.url_name)")
        prepare(plan.remote.url, plan.cfg.model_copy(update={"api": "openai"}), plan.remote.api_key,
                plan.remote.model)
    for engine in plan.engines:  # a missing engine fails in seconds, not after the others' load tests
        if engine in EXTERNAL_ENGINES:
            if plan.external is None:
                raise UserError(f"engine '{engine}' needs a model to export, and this command has none",
                                "run it from a study (loadtest.engines) or tunebench bench serve")
            plan.external.check(engine)
    summaries: dict[str, dict[str, Any]] = {}
    launches: dict[str, dict[str, Any]] = {}
    for engine in plan.engines:
        port = free_port(plan.host)
        log = plan.out / f"server-{engine}.log"
        if engine in EXTERNAL_ENGINES:
            assert plan.external is not None
            launch = plan.external.launch(engine, port)
            server = ServerProcess([], host=plan.host, port=port, log=log, startup_timeout=plan.startup_timeout,
                                   command=launch.command)
            cfg, model, launches[engine] = plan.cfg.model_copy(update={"api": "openai"}), launch.request_model, \
                launch.record()
        else:
            server = ServerProcess([*plan.serve_args, "--engine", engine], host=plan.host, port=port, log=log,
                                   startup_timeout=plan.startup_timeout)
            cfg, model = plan.cfg, None
            launches[engine] = {"engine": engine, "version": f"tunebench {own_version()}",
                                "command": shown(server.command), "served": plan.served,
                                "adapters": 1 if plan.served == "adapters" else None}
        console.print(f"[bold]starting[/] {escape(launches[engine]['command'])}", highlight=False, soft_wrap=True)
        with server:
            job = LoadtestJob(server.url, cfg, plan.prompts, plan.out / engine, counter=plan.counter,
                              price=plan.price, model=model, title=f"{plan.title} ({engine})")
            summaries[engine] = run_loadtest(job, console=console, progress=progress)
        console.print(f"{engine}: {one_line_summary(summaries[engine], plan.out / engine)}")
    if plan.remote is not None:
        remote = plan.remote
        job = LoadtestJob(remote.url, plan.cfg.model_copy(update={"api": "openai"}), plan.prompts,
                          plan.out / remote.name, counter=plan.counter, price=remote.price,
                          token_prices=remote.token_prices, api_key=remote.api_key, model=remote.model,
                          title=f"{plan.title} ({remote.name}: {remote.url})")
        summaries[remote.name] = run_loadtest(job, console=console, progress=progress)
        launches[remote.name] = {"engine": remote.name, "version": None, "command": f"(not started) {remote.url}",
                                 "served": None, "adapters": None}
        console.print(f"{remote.name}: {one_line_summary(summaries[remote.name], plan.out / remote.name)}")
    comparison = write_comparison(plan, summaries, launches)
    console.print(comparison_table(comparison))
    return comparison


def at_max_rate(summary: dict[str, Any]) -> dict[str, Any]:
    """The mean metrics of the maximum sustainable rate ({} when none passed)."""
    rate = summary["max_sustainable"]["offered_rps"]
    return next((e["mean"] for e in summary["rates"] if e["offered_rps"] == rate), {}) if rate is not None else {}


def engine_row(engine: str, summary: dict[str, Any], launch: dict[str, Any] | None = None) -> dict[str, Any]:
    best, cost = summary["max_sustainable"], summary["cost"] or {}
    mean = at_max_rate(summary)
    throughput = best.get("throughput_rps")
    output_mean = mean.get("output_tokens_mean")
    return {
        "engine": engine,
        "max_sustainable_rps": best["offered_rps"],
        "every_rate_passed": best["offered_rps"] is not None and best.get("first_failing_rps") is None,
        "lowest_rate_tried": min(e["offered_rps"] for e in summary["rates"]),
        "peak_throughput_rps": max(e["throughput_rps"] for e in summary["rates"]),
        "throughput_rps": throughput,
        "achieved_rps": best.get("achieved_rps"),
        "latency_p90_s": best.get("latency_p90_s"),
        "ttft_p90_s": mean.get("ttft_p90_s"),
        "output_tokens_per_s": throughput * output_mean if throughput is not None and output_mean else None,
        "cost_per_1k_tokens": cost.get("cost_per_1k_tokens"),
        "cost_per_1k_requests": cost.get("cost_per_1k_requests"),
        "tokens_per_request": cost.get("tokens_per_request"),
        "price_per_hour": cost.get("price_per_hour"),
        "pricing": cost.get("pricing", "per hour" if cost else None),
        "instance": cost.get("instance"),
        "engine_version": (launch or {}).get("version"),
        "engine_command": (launch or {}).get("command"),
        "served": (launch or {}).get("served"),
        "adapters": (launch or {}).get("adapters"),
        "loadtest": f"{engine}/loadtest.json",
    }


def write_comparison(plan: BenchPlan, summaries: dict[str, dict[str, Any]],
                     launches: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    rows = [engine_row(engine, s, (launches or {}).get(engine)) for engine, s in summaries.items()]
    series = {engine: s["rates"] for engine, s in summaries.items()}
    max_rates = {engine: s["max_sustainable"]["offered_rps"] for engine, s in summaries.items()}
    slo = parse_slo(plan.cfg.slo)
    plot_latency(series, slo, max_rates, plan.out / "latency.png", f"{plan.title}: latency by engine")
    plot_throughput(series, max_rates, plan.out / "throughput.png", f"{plan.title}: throughput by engine")
    comparison = {"title": plan.title, "serve_args": plan.serve_args, "engines": rows, "slo": plan.cfg.slo,
                  "plots": {"latency": "latency.png", "throughput": "throughput.png"}}
    write_json(plan.out / "comparison.json", comparison)
    write_atomic(plan.out / "comparison.md", comparison_markdown(comparison))
    return comparison


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _table_cells(row: dict[str, Any]) -> list[str]:
    if row["max_sustainable_rps"] is None:
        rate = f"< {row['lowest_rate_tried']:g}"  # even the lowest rate tried failed
    else:
        rate = _fmt(row["max_sustainable_rps"], "g") + (" (all passed)" if row["every_rate_passed"] else "")
    return [row["engine"], rate, _fmt(row["throughput_rps"]), _fmt(row["latency_p90_s"]),
            _fmt(row["peak_throughput_rps"]), _fmt(row["tokens_per_request"], ".0f"),
            _fmt(row["cost_per_1k_tokens"], ".3g"), _fmt(row["cost_per_1k_requests"], ".3g"),
            row.get("engine_version") or "-"]


COLUMNS = ("engine", "max sustainable req/s", "throughput req/s", "p90 s", "peak throughput req/s", "tokens/request",
           "$ per 1K tokens", "$ per 1K requests", "version")


def comparison_markdown(comparison: dict[str, Any]) -> str:
    lines = [f"# {comparison['title']}: engines compared (SLO {comparison['slo']})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_table_cells(row)) + " |" for row in comparison["engines"]]
    lines += ["", *(f"- {row['engine']}: `{row['engine_command']}`" for row in comparison["engines"]
                    if row.get("engine_command"))]
    lines += ["", "![latency](latency.png)", "", "![throughput](throughput.png)", ""]
    return "\n".join(lines)


def comparison_table(comparison: dict[str, Any]) -> Table:
    table = Table(title=f"engines compared (SLO {comparison['slo']})", title_justify="left")
    for column in COLUMNS:
        table.add_column(column)
    for row in comparison["engines"]:
        table.add_row(*_table_cells(row))
    return table
