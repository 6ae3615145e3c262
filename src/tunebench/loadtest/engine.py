"""The open-loop request engine: requests leave at their scheduled times whether or not earlier ones returned.

Like Vegeta, and unlike a closed loop of N clients, a slow server cannot slow the sender down and hide its
queue: every latency is measured from the request's *scheduled* send time (no coordinated omission), and the
engine records how late each send actually was, so the tool's own overhead is visible too.

aiohttp, not httpx: on this 2-core machine aiohttp sustains 2,000-3,000 requests/s open loop against a
trivial endpoint with p99 send lateness near 1 ms, while httpx saturates near 200 requests/s
(benchmarks/loadtest_overhead.py measures the engine).

Only the host in the given URL is contacted: no redirects are followed and no proxy from the environment
is used.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import random
import resource
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from tunebench.errors import UserError
from tunebench.loadtest.protocols import Api, BadReply, Reply

LEAD_S = 0.05  # the first request is scheduled this far ahead, so setting up does not make it late
GRACE_S = 2.0  # a run stops by itself this long after the last request's timeout
TICK_S = 0.2  # progress refresh interval
DRAIN_PAUSE_S = 0.5  # between probes refused while the server works off a backlog
PREFLIGHT_TIMEOUT_S = 10.0
ERROR_KINDS = ("timeout", "connect", "disconnect", "http_3xx", "http_4xx", "http_5xx", "bad_json", "protocol")


@dataclass(frozen=True)
class Target:
    url: str  # base URL without a trailing slash; the protocol adds its route
    api: Api
    api_key: str | None = None
    model: str | None = None  # the OpenAI 'model' field; TGI: the adapter_id

    def endpoint(self, stream: bool) -> str:
        path = self.api.path(stream)
        return self.url if self.url.endswith(path) else self.url + path

    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--url '{url}' is not an http(s) URL with a host",
                        "give the server's base URL, e.g. --url http://127.0.0.1:8080")
    return url.rstrip("/")


class Record:
    """One request: when it was due, how late it left, how long it took from when it was due, what came back."""

    __slots__ = ("end", "error", "index", "input_tokens", "itl", "latency", "lateness", "output_tokens", "prompt",
                 "scheduled", "status", "text", "tpot", "ttft")

    def __init__(self, index: int, prompt: int, scheduled: float) -> None:
        self.index = index
        self.prompt = prompt
        self.scheduled = scheduled  # seconds after the run started
        self.lateness = math.nan
        self.latency = math.nan
        self.end = math.nan
        self.status = 0
        self.error = ""
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.text: str | None = None  # kept only when the server did not count the output tokens
        self.ttft: float | None = None
        self.tpot: float | None = None
        self.itl: list[float] | None = None

    @property
    def ok(self) -> bool:
        return not self.error


def arrival_offsets(rate: float, seconds: float, arrival: str, seed: int = 0) -> list[float]:
    """Scheduled send times (seconds from the start) of a run at `rate` requests/s lasting `seconds`."""
    if arrival == "constant":
        return [i / rate for i in range(math.ceil(rate * seconds - 1e-9))]
    rng = random.Random(seed)
    offsets, t = [], 0.0
    while t < seconds:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


def run_schedule(rate: float, warmup: float, duration: float, arrival: str, seed: int = 0) -> list[float]:
    """A run's send times: the warm-up's, then the measured window's from `warmup` on (never empty)."""
    measured = arrival_offsets(rate, duration, arrival, seed + 1)
    return arrival_offsets(rate, warmup, arrival, seed) + [warmup + t for t in measured]


def connection_limit() -> int:
    """As many connections as file descriptors allow (an open loop may have thousands in flight)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, min(soft - 64, 10_000)) if soft != resource.RLIM_INFINITY else 10_000


def error_kind(err: BaseException) -> str:
    if isinstance(err, BadReply):
        return "bad_json"
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(err, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return "disconnect"
    return "protocol"


def status_kind(status: int) -> str:
    return "" if status < 300 else f"http_{status // 100}xx"


class LoadClient:
    """An aiohttp session bound to one target, with the request bodies prepared once."""

    def __init__(self, target: Target, prompts: list[str], *, timeout: float, stream: bool, max_new_tokens: int,
                 ignore_eos: bool) -> None:
        if stream and not target.api.streams:
            raise UserError(f"the '{target.api.name}' API cannot stream", "drop --stream, or use --api tgi|openai")
        if not prompts:
            raise UserError("there are no prompts to send", "give a prompt file with at least one line")
        self.target = target
        self.prompts = prompts
        self.timeout = timeout
        self.stream = stream
        self.max_new_tokens = max_new_tokens
        self.ignore_eos = ignore_eos
        self.headers = {"Content-Type": "application/json"}
        if target.api_key:
            self.headers["Authorization"] = f"Bearer {target.api_key}"
        self.session: aiohttp.ClientSession | None = None
        self.bodies: list[bytes] = []
        self.endpoint = target.endpoint(stream)
        self.sent = 0
        self.done = 0

    async def __aenter__(self) -> LoadClient:
        connector = aiohttp.TCPConnector(limit=connection_limit(), limit_per_host=0)
        # No cookies, no proxies from the environment: every request is the same, to the one host given.
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                                             cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------ before the sweep

    async def preflight(self) -> None:
        """Fail before the sweep when the server cannot be reached; learn the OpenAI model name if not given."""
        await self._get(self.target.base() + "/")
        if self.target.api.name == "openai" and not self.target.model:
            self.target = Target(self.target.url, self.target.api, self.target.api_key, await self._first_model())
        self.bodies = [self._body(p) for p in self.prompts]
        self.endpoint = self.target.endpoint(self.stream)

    async def _get(self, url: str) -> tuple[int, bytes]:
        assert self.session is not None
        try:
            async with self.session.get(url, headers=self.headers, allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=min(PREFLIGHT_TIMEOUT_S, self.timeout))
                                        ) as resp:
                return resp.status, await resp.read()
        except TimeoutError:
            raise UserError(f"{url} did not answer within {PREFLIGHT_TIMEOUT_S:g} s",
                            "check that the server is up and not busy, then run again") from None
        except aiohttp.ClientError as err:
            raise UserError(f"cannot reach {self.target.url}: {err}",
                            "start the server first (tunebench serve ...), or check --url: scheme, host and port"
                            ) from None

    async def engine_seconds(self) -> float | None:
        """The seconds a tunebench server's batched engine has spent in scheduler iterations (the sum of
        `tunebench_engine_seconds_total` on its /metrics), or None from any other server, or without
        prometheus-client to read the page. Never fails the run."""
        try:
            from prometheus_client.parser import text_string_to_metric_families

            status, data = await self._get(self.target.base() + "/metrics")
            if status != 200:
                return None
            families = text_string_to_metric_families(data.decode(errors="replace"))
            total = [sample.value for family in families if family.name == "tunebench_engine_seconds"
                     for sample in family.samples if sample.name.endswith("_total")]
        except (ImportError, UserError, ValueError):
            return None
        return sum(total) if total else None

    async def _first_model(self) -> str:
        status, data = await self._get(self.target.base() + "/v1/models")
        try:
            return str(json.loads(data)["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UserError(f"{self.target.base()}/v1/models gave no model name (HTTP {status})",
                            "name the model with --model") from None

    def _body(self, prompt: str) -> bytes:
        body = self.target.api.body(prompt, max_new_tokens=self.max_new_tokens, ignore_eos=self.ignore_eos,
                                    stream=self.stream, model=self.target.model)
        return json.dumps(body).encode()

    async def drain(self, probes: int = 3) -> None:
        """Wait for the server to finish what an earlier (overloaded) run left queued.

        A server that cannot cancel abandoned requests keeps working through them; one request sent now
        completes only behind that backlog, so the next run starts on an idle server. A quick refusal (503
        while its queue is full) is retried after a pause; a server that keeps failing is measured as it is.
        """
        loop = asyncio.get_running_loop()
        for _ in range(probes):
            probe = Record(-1, 0, 0.0)
            await self._send(probe, loop.time())
            if probe.ok:
                return
            if probe.error != "timeout":
                await asyncio.sleep(DRAIN_PAUSE_S)

    # ------------------------------------------------------------ one run

    async def run(self, offsets: list[float], first_prompt: int = 0,
                  tick: Callable[[int, int], None] | None = None) -> list[Record]:
        """Send one request per offset at start + offset; return when all ended or the run's deadline passed.

        The cyclic garbage collector is paused for the run: a full collection over tens of thousands of live
        requests stalls the sender for ~70 ms (measured at 2,000 requests/s), which would show up as
        send lateness. A run is bounded, so the garbage it leaves is too; it is collected right after.
        """
        collecting = gc.isenabled()
        gc.disable()
        try:
            return await self._run(offsets, first_prompt, tick)
        finally:
            if collecting:
                gc.enable()
                gc.collect()

    async def _run(self, offsets: list[float], first_prompt: int,
                   tick: Callable[[int, int], None] | None) -> list[Record]:
        loop = asyncio.get_running_loop()
        n_prompts = len(self.bodies)
        records = [Record(i, (first_prompt + i) % n_prompts, off) for i, off in enumerate(offsets)]
        self.sent = self.done = 0
        ticker = loop.create_task(self._tick(tick)) if tick else None
        start = loop.time() + LEAD_S
        tasks = []
        for rec in records:
            due = start + rec.scheduled
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(self._send(rec, due)))
        deadline = start + (offsets[-1] if offsets else 0.0) + self.timeout + GRACE_S
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time())) if tasks else ((), ())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._close_unfinished(records, loop.time() - start)
        if ticker:
            ticker.cancel()
            tick(self.sent, self.done)  # type: ignore[misc]
        return records

    def _close_unfinished(self, records: list[Record], elapsed: float) -> None:
        for rec in records:
            if math.isnan(rec.latency):
                rec.error = rec.error or "timeout"
                rec.latency = elapsed - rec.scheduled
                rec.end = elapsed

    async def _tick(self, tick: Callable[[int, int], None]) -> None:
        while True:
            tick(self.sent, self.done)
            await asyncio.sleep(TICK_S)

    async def _send(self, rec: Record, due: float) -> None:
        assert self.session is not None
        loop = asyncio.get_running_loop()
        rec.lateness = loop.time() - due
        self.sent += 1
        try:
            async with self.session.post(self.endpoint, data=self.bodies[rec.prompt],
                                         headers=self.headers, allow_redirects=False) as resp:
                rec.status = resp.status
                rec.error = status_kind(resp.status)
                if rec.error:
                    await resp.read()
                elif self.stream:
                    await self._read_stream(resp, rec, due)
                else:
                    self._take(rec, self.target.api.parse(await resp.read()))
        except (BadReply, TimeoutError, aiohttp.ClientError) as err:
            rec.error = error_kind(err)
        rec.latency = loop.time() - due
        rec.end = rec.scheduled + rec.latency
        self.done += 1

    @staticmethod
    def _take(rec: Record, reply: Reply) -> None:
        rec.input_tokens = reply.input_tokens
        rec.output_tokens = reply.output_tokens
        if reply.output_tokens is None:
            rec.text = reply.text

    async def _read_stream(self, resp: aiohttp.ClientResponse, rec: Record, due: float) -> None:
        """Server-sent events: one timestamp per token-carrying event, counts from the final event(s)."""
        loop = asyncio.get_running_loop()
        times: list[float] = []
        tokens = 0
        final = Reply()
        finished = False
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            event = self.target.api.parse_event(line[5:].decode("utf-8", "replace"))
            if event.tokens:
                times.append(loop.time())
                tokens += event.tokens
            if event.reply:
                final.input_tokens = event.reply.input_tokens or final.input_tokens
                final.output_tokens = event.reply.output_tokens or final.output_tokens
            finished = finished or event.done or event.reply is not None
        if not times:
            if not finished:
                raise BadReply("the event stream ended with neither tokens nor a final event")
            # A correct, empty reply (the model emitted EOS at once): a success with 0 tokens and no TTFT.
            rec.input_tokens, rec.output_tokens = final.input_tokens, final.output_tokens or 0
            return
        rec.ttft = times[0] - due
        rec.itl = [b - a for a, b in itertools.pairwise(times)]
        rec.input_tokens = final.input_tokens
        rec.output_tokens = final.output_tokens or tokens
        if len(times) > 1:
            rec.tpot = (times[-1] - times[0]) / (rec.output_tokens - 1) if rec.output_tokens > 1 else None
