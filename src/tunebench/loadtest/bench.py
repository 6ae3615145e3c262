"""Serve, load-test, stop, per engine; then compare: the one-command version of the original's FastAPI-vs-TGI test.

`tunebench serve` runs as a child process (`python -m tunebench.cli serve ...`) on a free loopback port; it
counts as started when GET /health answers 200, and is stopped with SIGTERM (SIGKILL after a grace period)
whatever happens to the load test.

    OUT/
      <engine>/loadtest.json, requests.csv, latency.png, throughput.png    one load test per engine
      server-<engine>.log                                                  the server's output
      comparison.json, comparison.md, latency.png, throughput.png          the engines side by side
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunebench import terminal
from tunebench.config.schema import LoadtestConfig
from tunebench.cost import Price
from tunebench.errors import UserError
from tunebench.loadtest.plots import plot_latency, plot_throughput
from tunebench.loadtest.prompt_sets import PromptSet, TokenCounter
from tunebench.loadtest.runner import LoadtestJob, one_line_summary, run_loadtest
from tunebench.loadtest.spec import parse_slo
from tunebench.rundir import write_atomic, write_json

ENGINES = ("naive", "batched")
HEALTH_POLL_S = 0.25
STOP_GRACE_S = 20.0
LOG_TAIL_CHARS = 2000


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`tunebench serve` in a child process, healthy on entry and stopped on exit."""

    def __init__(self, serve_args: list[str], *, host: str, port: int, log: Path, startup_timeout: float) -> None:
        self.command = [sys.executable, "-m", "tunebench.cli", "serve", *serve_args, "--host", host,
                        "--port", str(port)]
        self.url = f"http://{host}:{port}"
        self.log = log
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"'{' '.join(self.command[2:])}' exited with code {self.process.returncode} "
                                f"before it was healthy:\n{self._log_tail()}",
                                f"fix the server options; the whole log is in {self.log}")
            if self._healthy():
                return
            time.sleep(HEALTH_POLL_S)
        raise UserError(f"the server did not answer GET {self.url}/health within {self.startup_timeout:g} s",
                        f"give it longer with --startup-timeout, or read {self.log}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # graceful: the server drains in-flight requests
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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


def bench_engines(plan: BenchPlan, *, console: Console | None = None, progress: bool = True) -> dict[str, Any]:
    """Load-test each engine in turn on a fresh server; write and return the comparison."""
    console = console or terminal.console()
    require_serve_command()
    summaries: dict[str, dict[str, Any]] = {}
    for engine in plan.engines:
        port = free_port(plan.host)
        console.print(f"[bold]starting[/] tunebench serve --engine {engine} on {plan.host}:{port}")
        with ServerProcess([*plan.serve_args, "--engine", engine], host=plan.host, port=port,
                           log=plan.out / f"server-{engine}.log", startup_timeout=plan.startup_timeout) as server:
            job = LoadtestJob(server.url, plan.cfg, plan.prompts, plan.out / engine, counter=plan.counter,
                              price=plan.price, title=f"{plan.title} ({engine})")
            summaries[engine] = run_loadtest(job, console=console, progress=progress)
        console.print(f"{engine}: {one_line_summary(summaries[engine], plan.out / engine)}")
    comparison = write_comparison(plan, summaries)
    console.print(comparison_table(comparison))
    return comparison


def engine_row(engine: str, summary: dict[str, Any]) -> dict[str, Any]:
    best, cost = summary["max_sustainable"], summary["cost"] or {}
    return {
        "engine": engine,
        "max_sustainable_rps": best["offered_rps"],
        "every_rate_passed": best["offered_rps"] is not None and best.get("first_failing_rps") is None,
        "lowest_rate_tried": min(e["offered_rps"] for e in summary["rates"]),
        "peak_throughput_rps": max(e["throughput_rps"] for e in summary["rates"]),
        "throughput_rps": best.get("throughput_rps"),
        "achieved_rps": best.get("achieved_rps"),
        "latency_p90_s": best.get("latency_p90_s"),
        "cost_per_1k_tokens": cost.get("cost_per_1k_tokens"),
        "cost_per_1k_requests": cost.get("cost_per_1k_requests"),
        "tokens_per_request": cost.get("tokens_per_request"),
        "price_per_hour": cost.get("price_per_hour"),
        "instance": cost.get("instance"),
        "loadtest": f"{engine}/loadtest.json",
    }


def write_comparison(plan: BenchPlan, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = [engine_row(engine, s) for engine, s in summaries.items()]
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
            _fmt(row["cost_per_1k_tokens"], ".3g"), _fmt(row["cost_per_1k_requests"], ".3g")]


COLUMNS = ("engine", "max sustainable req/s", "throughput req/s", "p90 s", "peak throughput req/s", "tokens/request",
           "$ per 1K tokens", "$ per 1K requests")


def comparison_markdown(comparison: dict[str, Any]) -> str:
    lines = [f"# {comparison['title']}: engines compared (SLO {comparison['slo']})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_table_cells(row)) + " |" for row in comparison["engines"]]
    lines += ["", "![latency](latency.png)", "", "![throughput](throughput.png)", ""]
    return "\n".join(lines)


def comparison_table(comparison: dict[str, Any]) -> Table:
    table = Table(title=f"engines compared (SLO {comparison['slo']})", title_justify="left")
    for column in COLUMNS:
        table.add_column(column)
    for row in comparison["engines"]:
        table.add_row(*_table_cells(row))
    return table
