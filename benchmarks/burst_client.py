"""The closed-loop burst client the serving benchmarks share (`serve_throughput.py`, `frontend_split.py`,
`served_arrivals.py`): `count` requests sent at once with `ignore_eos`, timed from the first send to the last
answer, and the engine's schedule over it from /metrics.

Connections are the one choice that moves the figure on its own. With `connections="cold"` every request opens
its TCP connection inside the timed window, as each of 512 new users would: one aiohttp process connects all 512
before it writes the first request body, so the first reaches the server ~0.1 s after the clock starts (a
2-core laptop against a server that only records arrivals: first body 101 ms cold against 27 ms warm) and the
engine idles that long. With `connections="warm"` (the default) the connections are opened first, outside the
window, and the burst reuses them (HTTP keep-alive), as a gateway, a load balancer or any client with a pool
does and as wrk and vegeta measure: what is timed is the server, not this process's connection set-up. The
serving benchmarks report both where it matters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tunebench.serve.metrics import ENGINE_PHASES

CONNECTIONS = ("warm", "cold")


async def open_connections(session: Any, url: str, count: int) -> None:
    """`count` keep-alive connections in `session`'s pool: as many GET /health at once, each holding its
    connection until all are open (a quick answer would otherwise hand its connection to the next request and
    the pool would hold fewer)."""
    opened, everyone = 0, asyncio.Event()

    async def one() -> None:
        nonlocal opened
        async with session.get(f"{url}/health") as response:
            await response.read()
            opened += 1
            if opened == count:
                everyone.set()
            await everyone.wait()

    await asyncio.gather(*(one() for _ in range(count)))


async def fire(url: str, texts: list[str], count: int, new_tokens: int, adapter: str | None = None,
               connections: str = "warm") -> tuple[float, int, int, float]:
    """(wall seconds, output tokens, requests answered, `time.time()` at the first send) of one burst of `count`
    /generate requests."""
    import aiohttp

    if connections not in CONNECTIONS:
        raise ValueError(f"connections={connections!r}; choose from {', '.join(CONNECTIONS)}")
    parameters: dict[str, Any] = {"max_new_tokens": new_tokens, "ignore_eos": True, "details": True}
    if adapter:
        parameters["adapter_id"] = adapter

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        body = {"inputs": texts[i % len(texts)], "parameters": parameters}
        async with session.post(f"{url}/generate", json=body) as response:
            if response.status != 200:
                return -1
            return (await response.json())["details"]["generated_tokens"]

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        if connections == "warm":
            await open_connections(session, url, count)
        start, started = time.monotonic(), time.time()
        tokens = await asyncio.gather(*(one(session, i) for i in range(count)))
        wall = time.monotonic() - start
    return wall, sum(t for t in tokens if t > 0), sum(t > 0 for t in tokens), started


SCHEDULE_SERIES = {"steps": "tunebench_batch_size_count", "rows": "tunebench_batch_size_sum",
                   "prefills": "tunebench_prefill_size_count", "prefilled": "tunebench_prefill_size_sum",
                   "queued": "tunebench_queue_duration_seconds_count",
                   "queue_s": "tunebench_queue_duration_seconds_sum",
                   **{f"engine_{phase}": f'tunebench_engine_seconds_total{{phase="{phase}"}}'
                      for phase in ENGINE_PHASES}}


def engine_counters(url: str) -> dict[str, float] | None:
    """The engine's step and prefill counters from /metrics (None from a server without them)."""
    import httpx

    from tunebench.serve.metrics import parse_metrics

    try:
        samples = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
        return {key: samples[name] for key, name in SCHEDULE_SERIES.items()}
    except (httpx.HTTPError, KeyError):
        return None


def schedule(before: dict[str, float] | None, after: dict[str, float] | None, wall: float) -> dict[str, Any] | None:
    """What the engine did between two scrapes, in the terms of the offline engine's profile (steps, rows per
    step, prefills), so that a served burst and the same burst offline can be compared step for step; and the
    engine thread's seconds by phase, against the burst's wall: what is left ("idle") the engine spent with no
    work, waiting for requests to reach it."""
    if before is None or after is None:
        return None
    d = {key: after[key] - before[key] for key in SCHEDULE_SERIES}
    engine = {key.removeprefix("engine_"): round(v, 3) for key, v in d.items() if key.startswith("engine_")}
    return {"steps": int(d["steps"]), "rows_per_step": round(d["rows"] / max(d["steps"], 1), 2),
            "prefills": int(d["prefills"]), "prompts_per_prefill": round(d["prefilled"] / max(d["prefills"], 1), 2),
            "queue_mean_s": round(d["queue_s"] / max(d["queued"], 1), 4),
            "engine_s": {**engine, "idle": round(max(0.0, wall - sum(engine.values())), 3)}}
