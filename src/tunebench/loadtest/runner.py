"""One load test from start to files: check the plan, reach the server, sweep, bisect, cost, write, plot.

    --out DIR/
      loadtest.json             config, per-rate metrics (offered_rps, achieved_rps, mean ± std), max rate, costs
      requests.csv              one row per request (warm-up rows flagged)
      latency.png               latency percentiles vs offered rate, with the SLO line
      throughput.png            achieved rate and throughput vs offered rate
"""

from __future__ import annotations

import asyncio
import csv
import ipaddress
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunebench import terminal
from tunebench.config.schema import LoadtestConfig
from tunebench.cost import Price
from tunebench.errors import UserError
from tunebench.loadtest.engine import LoadClient, Record, Target, check_url, run_schedule
from tunebench.loadtest.inference_cost import TokenPrices, cost_at_max_rate
from tunebench.loadtest.metrics import aggregate, summarize
from tunebench.loadtest.plots import plot_latency, plot_throughput
from tunebench.loadtest.prompt_sets import PromptSet, TokenCounter
from tunebench.loadtest.protocols import api_for
from tunebench.loadtest.search import (
    MIN_ACHIEVED,
    MIN_SUCCESS,
    RateResult,
    find_max_rate,
    judge,
    max_sustainable,
)
from tunebench.loadtest.spec import Slo, check_request_bound, parse_slo, planned_rates
from tunebench.rundir import write_json

CSV_COLUMNS = ("offered_rps", "phase", "repetition", "request", "warmup", "prompt", "scheduled_s", "send_lateness_ms",
               "latency_s", "status", "error", "input_tokens", "output_tokens", "ttft_s", "tpot_s", "itl_mean_s")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


@dataclass
class TokenSources:
    """Where token counts came from: the server's reply, or our tokenizer."""

    input: set[str] = field(default_factory=set)
    output: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, str]:
        return {"input": " + ".join(sorted(self.input)) or "none", "output": " + ".join(sorted(self.output)) or "none"}


class Sweep:
    """Measures rates one after another on one client, writing every request to the CSV as it goes."""

    def __init__(self, client: LoadClient, cfg: LoadtestConfig, slo: Slo, counter: TokenCounter | None,
                 csv_writer: Any, progress: Progress | None, console: Console) -> None:
        self.client, self.cfg, self.slo, self.counter = client, cfg, slo, counter
        self.csv, self.progress, self.console = csv_writer, progress, console
        self.prompt_tokens = [counter.count(p) for p in client.prompts] if counter else None
        self.output_cache: dict[str, int] = {}
        self.sources = TokenSources()
        self.next_prompt = 0

    async def measure(self, rate: float, phase: str) -> RateResult:
        repetitions = []
        for rep in range(self.cfg.repeat):
            records, busy = await self._one_run(rate, phase, rep)
            self._fill_tokens(records)
            self._write_rows(rate, phase, rep, records)
            summary = summarize([r for r in records if r.scheduled >= self.cfg.warmup], rate,
                                window_s=self.cfg.duration, timeout_s=self.cfg.timeout)
            summary["server_engine_busy"] = busy
            repetitions.append(summary)
        mean, std = aggregate(repetitions)
        result = RateResult(rate, phase, mean, std, repetitions)
        result.reasons = judge(mean, self.slo)
        result.passed = not result.reasons
        self.console.print(rate_line(result))
        return result

    async def _one_run(self, rate: float, phase: str, rep: int) -> tuple[list[Record], float | None]:
        """The run's records, and a tunebench server's engine busy share over it (warm-up included; None from
        other servers): the share of time the engine had work (it steps whenever it has a request), so well below
        1 at a failing rate says the engine ran dry and something before it (front end, network) is the limit."""
        offsets = run_schedule(rate, self.cfg.warmup, self.cfg.duration, self.cfg.arrival,
                               seed=hash((self.cfg.seed, rate, rep)) & 0xFFFFFFFF)
        await self.client.drain()
        before, started = await self.client.engine_seconds(), time.monotonic()
        label = f"{rate:g} req/s {phase} {rep + 1}/{self.cfg.repeat}"
        task = self.progress.add_task(label, total=len(offsets)) if self.progress else None

        def tick(sent: int, done: int) -> None:
            if self.progress is not None and task is not None:
                self.progress.update(task, completed=done)

        records = await self.client.run(offsets, first_prompt=self.next_prompt, tick=tick)
        after, wall = await self.client.engine_seconds(), time.monotonic() - started
        self.next_prompt += len(offsets)
        if self.progress is not None and task is not None:
            self.progress.remove_task(task)
        known = before is not None and after is not None and after > before
        return records, min(1.0, (after - before) / wall) if known else None  # type: ignore[operator]

    def _fill_tokens(self, records: list[Record]) -> None:
        for rec in records:
            if not rec.ok:
                continue
            if rec.input_tokens is not None:
                self.sources.input.add("server")
            elif self.prompt_tokens is not None:
                rec.input_tokens = self.prompt_tokens[rec.prompt]
                self.sources.input.add(f"tokenizer {self.counter.name}")  # type: ignore[union-attr]
            if rec.output_tokens is not None:
                self.sources.output.add("server")
            elif rec.text is not None and self.counter is not None:
                if rec.text not in self.output_cache:
                    self.output_cache[rec.text] = self.counter.count(rec.text)
                rec.output_tokens = self.output_cache[rec.text]
                self.sources.output.add(f"tokenizer {self.counter.name}")
            rec.text = None

    def _write_rows(self, rate: float, phase: str, rep: int, records: list[Record]) -> None:
        for r in records:
            itl = sum(r.itl) / len(r.itl) if r.itl else None
            self.csv.writerow((rate, phase, rep + 1, r.index, int(r.scheduled < self.cfg.warmup), r.prompt,
                               _num(r.scheduled), _num(r.lateness * 1000, 4), _num(r.latency), r.status or "",
                               r.error, r.input_tokens if r.input_tokens is not None else "",
                               r.output_tokens if r.output_tokens is not None else "", _num(r.ttft), _num(r.tpot),
                               _num(itl)))


def rate_line(result: RateResult) -> str:
    m = result.mean
    p90 = m.get("latency_p90_s")
    verdict = "[green]pass[/]" if result.passed else f"[red]fail[/] ({'; '.join(result.reasons)})"
    busy = m.get("server_engine_busy")
    return (f"  {result.offered_rps:g} req/s ({result.phase}): achieved {m['achieved_rps']:.3g}/s, "
            f"success {m['success_ratio']:.1%}, p90 {_num(p90, 3) or '-'} s, "
            f"send lateness p99 {_num(m.get('send_lateness_p99_ms'), 3) or '-'} ms"
            + (f", engine busy {busy:.0%}" if busy is not None else "") + f": {verdict}")


def make_progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@dataclass
class LoadtestJob:
    """Everything one load test needs."""

    url: str
    cfg: LoadtestConfig
    prompts: PromptSet
    out: Path
    counter: TokenCounter | None = None
    price: Price | None = None
    token_prices: TokenPrices | None = None  # a hosted API's per-token prices (instead of an hourly price)
    api_key: str | None = None
    model: str | None = None
    title: str = "load test"


def prepare(url: str, cfg: LoadtestConfig, api_key: str | None = None,
            model: str | None = None) -> tuple[Target, Slo, list[float]]:
    """Every check that needs no server: URL, API, SLO, rates, request bound."""
    target = Target(check_url(url), api_for(cfg.api), api_key, model)
    if model and cfg.api == "naive":
        raise UserError(f"--model '{model}': the naive API (/predict) has no model or adapter field",
                        "drop --model, or load-test the server's TGI or OpenAI route (--api tgi|openai)")
    slo = parse_slo(cfg.slo)
    rates = planned_rates(cfg)
    check_request_bound(rates, cfg)
    return target, slo, rates


def run_loadtest(job: LoadtestJob, *, console: Console | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the whole load test and write its files under job.out; return what loadtest.json holds."""
    console = console or terminal.console()
    target, slo, rates = prepare(job.url, job.cfg, job.api_key, job.model)
    prompts = list(job.prompts.texts)
    random.Random(job.cfg.seed).shuffle(prompts)
    started = time.time()
    job.out.mkdir(parents=True, exist_ok=True)
    partial_csv = job.out / ".requests.csv.partial"
    with partial_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        results, sweep, target = asyncio.run(_sweep(job, target, slo, rates, prompts, writer, console, progress))
    partial_csv.replace(job.out / "requests.csv")
    summary = build_summary(job, target, slo, results, sweep, started)
    summary["plots"] = write_plots(job, slo, summary)
    write_json(job.out / "loadtest.json", summary)
    return summary


async def _sweep(job: LoadtestJob, target: Target, slo: Slo, rates: list[float], prompts: list[str], writer: Any,
                 console: Console, progress: bool) -> tuple[list[RateResult], Sweep, Target]:
    cfg = job.cfg
    async with LoadClient(target, prompts, timeout=cfg.timeout, stream=cfg.stream, max_new_tokens=cfg.max_new_tokens,
                          ignore_eos=cfg.ignore_eos) as client:
        await client.preflight()
        console.print(f"[bold]{job.title}[/]: {client.target.endpoint(cfg.stream)} ({cfg.api}), rates {rates} req/s, "
                      f"{cfg.duration:g} s × {cfg.repeat} (+{cfg.warmup:g} s warm-up), {cfg.arrival} arrivals")
        bar = make_progress(console) if progress else None
        sweep = Sweep(client, cfg, slo, job.counter, writer, bar, bar.console if bar else console)
        if bar:
            with bar:
                results = await find_max_rate(rates, cfg.bisect, sweep.measure)
        else:
            results = await find_max_rate(rates, cfg.bisect, sweep.measure)
        return results, sweep, client.target


def build_summary(job: LoadtestJob, target: Target, slo: Slo, results: list[RateResult], sweep: Sweep,
                  started: float) -> dict[str, Any]:
    best = max_sustainable(results)
    best_mean = next((r.mean for r in results if r.offered_rps == best["offered_rps"]), None)
    priced, priced_mean = best, best_mean
    served = [r for r in results if r.mean["throughput_rps"] > 0]
    if job.token_prices is not None and best_mean is None and served:
        # billed per token, a hosted API costs the same at any rate: price the busiest rate that had successes
        busiest = max(served, key=lambda r: r.mean["throughput_rps"])
        priced = {"offered_rps": busiest.offered_rps, "throughput_rps": busiest.mean["throughput_rps"]}
        priced_mean = busiest.mean
    cost = cost_at_max_rate(job.price, priced, priced_mean, job.token_prices)
    cost_note = None
    if cost is None:
        cost_note = ("no price: give --price-per-hour or --instance"
                     if job.price is None and job.token_prices is None
                     else "no rate passed, so there is no sustainable cost")
    entries = [{"offered_rps": r.offered_rps, "phase": r.phase, "passed": r.passed, "reasons": r.reasons,
                "achieved_rps": r.mean["achieved_rps"], "throughput_rps": r.mean["throughput_rps"],
                "mean": r.mean, "std": r.std, "repetitions": r.repetitions} for r in results]
    return {
        "title": job.title,
        "target": {"url": target.url, "endpoint": target.endpoint(job.cfg.stream), "api": job.cfg.api,
                   "model": target.model, "stream": job.cfg.stream},
        "config": job.cfg.model_dump(mode="json"),
        "prompts": {"source": job.prompts.source, "count": len(job.prompts.texts)},
        "token_counts": sweep.sources.as_dict(),
        "criteria": {"min_success_ratio": MIN_SUCCESS, "min_achieved_over_offered": MIN_ACHIEVED, "slo": slo.text},
        "rates": entries,
        "max_sustainable": best,
        "cost": cost,
        "cost_note": cost_note,
        "files": {"requests": "requests.csv"},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 3),
    }


def write_plots(job: LoadtestJob, slo: Slo, summary: dict[str, Any]) -> dict[str, str]:
    series = {"": summary["rates"]}
    max_rate = {"": summary["max_sustainable"]["offered_rps"]}
    latency = plot_latency(series, slo, max_rate, job.out / "latency.png", f"{job.title}: latency")
    throughput = plot_throughput(series, max_rate, job.out / "throughput.png", f"{job.title}: throughput")
    return {"latency": latency.name, "throughput": throughput.name}


def one_line_summary(summary: dict[str, Any], out: Path) -> str:
    best = summary["max_sustainable"]
    if best["offered_rps"] is None:
        peak = max(e["throughput_rps"] for e in summary["rates"])
        head = (f"no rate passed (lowest tried failed: {'; '.join(best['failure_reasons'])}); "
                f"peak throughput {peak:.3g}/s")
    else:
        bound = "" if best.get("first_failing_rps") else " (every rate passed: at least)"
        head = (f"max sustainable rate {best['offered_rps']:g} req/s{bound}: throughput "
                f"{best['throughput_rps']:.3g}/s, p90 {_num(best['latency_p90_s'], 3)} s")
    cost = summary["cost"]
    money = (f"${cost['cost_per_1k_tokens']:.3g} per 1K tokens at ${cost['price_per_hour']:g}/h ({cost['instance']})"
             if cost else summary["cost_note"])
    return f"{head}; {money}; results in {out}"
