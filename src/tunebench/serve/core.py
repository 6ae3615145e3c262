"""The engine process of the split front end: `python -m tunebench.serve.core FD [FD ...]` (started by
`tunebench.serve.client`, never by hand), one channel per front-end process (`serve.frontends`).

It loads the model, builds the engine, and runs the engine's iterations in its main thread, the way the offline
runner does: no HTTP, no event loop, no second thread competing for the interpreter. Between iterations it
reads the front end's messages (`tunebench.serve.channel`); after each one it sends what the step produced as
one message: token ids and logprobs only. Text is the front end's business (detokenization, stop strings,
streaming); EOS and the token limit are decided here, a stop string there (the front end then sends "finish").
The engine's Prometheus observations travel with the tokens and are applied to the front end's metrics.

Several front ends (`tunebench.serve.frontends`) share the engine: each has a channel of its own, request ids are
per channel, a step's events go back on their request's channel, and the metric observations ride on one live
channel only (the front ends' Prometheus files are summed). When a front end goes away (its end of the socket
closes) its running requests are cancelled; the process exits once every front end has asked it to stop or
gone, and has nothing left to run. When the engine crashes, the process exits and every front end fails every
open request.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time
from collections import defaultdict
from typing import Any

from tunebench.serve.channel import DONE, FAILED, TOKEN, BlockingChannel
from tunebench.serve.requests import Completion, GenerationFailed, Sequence

log = logging.getLogger("tunebench.serve")
IDLE_WAIT_S = 0.5


class CoreSequence(Sequence):
    """A Sequence that only counts tokens: no detokenization and no stop strings (the front end has those)."""

    def accept(self, token_id: int, logprob: float) -> Any:
        self.tokens.append(token_id)  # type: ignore[arg-type]  # ids here, TokenEvents in the front end
        if self.row is not None:
            self.row.generated.append(token_id)
        if token_id in self.eos_ids and not self.params.ignore_eos:
            self.finish_reason = "eos_token"
        elif len(self.tokens) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        return (TOKEN, token_id, logprob)

    def completion(self) -> Completion:
        assert self.finish_reason is not None
        return Completion("", self.finish_reason, len(self.tokens), len(self.request.prompt_ids), self.params.seed,
                          None, ())


class CoreHandle:
    """What the engine needs of a request's handle here: its front end, its id there, whether the client went
    away."""

    __slots__ = ("cancelled", "channel", "rid")

    def __init__(self, channel: int, rid: int) -> None:
        self.channel, self.rid = channel, rid
        self.cancelled = False


class MetricsRelay:
    """Stands in for ServeMetrics inside the engine: records every observation, to be sent with the next
    message and applied to the front end's ServeMetrics (`apply_metric_updates`)."""

    def __init__(self) -> None:
        self.observed: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.gauges: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return _Series(self, name)

    def observe_step(self, batch: int) -> None:
        self.observed[("observe_step", "")].append(batch)

    def error(self, kind: str) -> None:
        self.observed[("error", kind)].append(1)

    def engine_time(self, *seconds: float) -> None:
        self.observed[("engine_time", "")].append(seconds)

    def channel_time(self, seconds: float) -> None:
        self.observed[("channel_time", "")].append(seconds)

    def take(self) -> tuple[dict[tuple[str, str], list[float]], dict[str, float]] | None:
        if not self.observed and not self.gauges:
            return None
        out = (dict(self.observed), self.gauges)
        self.observed, self.gauges = defaultdict(list), {}
        return out


class _Series:
    def __init__(self, relay: MetricsRelay, name: str) -> None:
        self.relay, self.name = relay, name

    def observe(self, value: float) -> None:
        self.relay.observed[(self.name, "")].append(value)

    def set(self, value: float) -> None:
        self.relay.gauges[self.name] = value


def apply_metric_updates(metrics: Any, updates: Any) -> None:
    """The front end's side of MetricsRelay."""
    if updates is None:
        return
    observed, gauges = updates
    for (name, label), values in observed.items():
        if name == "observe_step":
            for value in values:
                metrics.observe_step(int(value))
        elif name == "error":
            metrics.errors.labels(kind=label).inc(len(values))
        elif name == "engine_time":
            metrics.engine_time(*(sum(column) for column in zip(*values, strict=True)))
        elif name == "channel_time":
            metrics.channel_time(sum(values))
        else:
            series = getattr(metrics, name)
            for value in values:
                series.observe(value)
    for name, value in gauges.items():
        getattr(metrics, name).set(value)


class _Sender:
    """Takes the engine's `loop.call_soon_threadsafe(deliver, items)` (its flush) and sends the items instead;
    the naive engine flushes after every token, so its stream stays a stream."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    def call_soon_threadsafe(self, _deliver: Any, items: list[tuple[CoreHandle, Any]]) -> None:
        self.core.send_items(items)
        self.core.poll_controls()  # a long naive generation must still hear cancels and stop strings


class EngineCore:
    def __init__(self, channels: list[BlockingChannel], served: Any, engine: Any, relay: MetricsRelay) -> None:
        self.channels, self.served, self.engine, self.relay = channels, served, engine, relay
        self.seqs: dict[tuple[int, int], CoreSequence] = {}  # (channel, request id there)
        self.backlog: list[tuple[int, Any]] = []  # submissions and jobs read while the engine was mid-iteration
        self.stopped: set[int] = set()  # channels whose front end asked to stop
        self.gone: set[int] = set()  # channels whose front end went away (handled once)
        self.stopping = False  # SIGTERM, or every front end stopped or gone
        engine._loop = _Sender(self)
        # TUNEBENCH_ENGINE_ARRIVALS=FILE: a JSON line per batch of requests read (wall time, count), to tell when a
        # burst's requests reached the engine (benchmarks/served_arrivals.py)
        arrivals = os.environ.get("TUNEBENCH_ENGINE_ARRIVALS")
        self.arrivals = open(arrivals, "a", buffering=1) if arrivals else None  # noqa: SIM115 (the process's life)

    # ------------------------------------------------------------ messages in

    def receive(self, timeout: float) -> list[tuple[int, Any]]:
        """(channel, message) for everything that arrived, waiting up to `timeout` for the first."""
        live = [(i, c) for i, c in enumerate(self.channels) if not c.closed]
        if len(live) == 1:
            i, channel = live[0]
            return [(i, m) for m in channel.receive(timeout)]
        out = [(i, m) for i, c in live for m in c.receive(0)]
        if out or not live or timeout == 0:
            return out
        ready, _, _ = select.select([c.sock for _, c in live], [], [], timeout)
        return [(i, m) for i, c in live if c.sock in ready for m in c.receive(0)]

    def poll_controls(self) -> None:
        """Read what arrived; apply cancels and finishes now, keep the rest for the main loop."""
        for item in self.receive(0):
            if not self.control(*item):
                self.backlog.append(item)

    def control(self, channel: int, message: Any) -> bool:
        kind = message[0]
        if kind in ("cancel", "finish"):
            key = (channel, message[1])
            seq = self.seqs.get(key)
            if seq is not None:
                if kind == "cancel":
                    seq.handle.cancelled = True  # the engine fails it at its next step (counted as cancelled)
                else:  # a stop string: the front end finished it; leave quietly
                    seq.finish_reason, seq.ended = "stop_sequence", True
                    del self.seqs[key]
            return True
        return False

    def handle(self, messages: list[tuple[int, Any]]) -> None:
        if self.arrivals is not None and messages:
            submits = sum(m[0] == "submit" for _, m in messages)
            if submits:
                self.arrivals.write(f'{{"t": {time.time():.6f}, "submits": {submits}}}\n')
        dropped_jobs = {(i, m[1]) for i, m in messages if m[0] == "cancel_job"}
        for channel, message in messages:
            kind = message[0]
            if self.control(channel, message) or kind == "cancel_job":
                continue
            if kind == "submit":
                _, rid, request = message
                seq = CoreSequence(request, CoreHandle(channel, rid), self.engine)  # type: ignore[arg-type]
                self.seqs[(channel, rid)] = seq
                self.engine._accept_item(seq)
            elif kind == "job" and (channel, message[1]) not in dropped_jobs:
                self.run_job(channel, message[1], message[2])
            elif kind == "stop":
                self.stopped.add(channel)

    def run_job(self, channel: int, rid: int, job: Any) -> None:
        try:
            self.channels[channel].send(("job", rid, True, job.run(self.served)))
        except Exception as err:  # handed to the waiting route, which answers 500
            log.exception("engine job failed")
            self.channels[channel].send(("job", rid, False, ("internal", f"{type(err).__name__}: {err}")))

    def check_channels(self) -> None:
        """Front ends that went away: cancel their requests (nobody can read the answers). Stop once every front
        end has stopped or gone."""
        for i, channel in enumerate(self.channels):
            if channel.closed and i not in self.gone:
                self.gone.add(i)
                if i not in self.stopped:
                    log.warning("front end %d went away: cancelling its requests", i)
                for (c, _), seq in self.seqs.items():
                    if c == i:
                        seq.handle.cancelled = True
        if len(self.stopped | self.gone) == len(self.channels):
            self.stopping = True

    # ------------------------------------------------------------ messages out

    def metrics_channel(self) -> int | None:
        """The channel the metric observations go to: the first live one."""
        return next((i for i, c in enumerate(self.channels) if not c.closed), None)

    def send_items(self, items: list[tuple[CoreHandle, Any]]) -> None:
        events: dict[int, list[tuple]] = defaultdict(list)
        for handle, item in items:
            out = events[handle.channel]
            if isinstance(item, tuple):
                out.append((handle.rid, *item))
            elif isinstance(item, Completion):
                out.append((handle.rid, DONE, item.finish_reason, item.generated_tokens))
                self.seqs.pop((handle.channel, handle.rid), None)
            elif isinstance(item, GenerationFailed):
                out.append((handle.rid, FAILED, item.kind, item.message))
                self.seqs.pop((handle.channel, handle.rid), None)
        updates_to = self.metrics_channel()
        if updates_to is not None and updates_to not in events:
            events[updates_to] = []
        for i, batch in events.items():
            self.channels[i].send(("out", batch, self.relay.take() if i == updates_to else None))

    def send_updates(self) -> None:
        updates_to = self.metrics_channel()
        if updates_to is None:
            self.relay.take()
            return
        updates = self.relay.take()
        if updates is not None:
            self.channels[updates_to].send(("out", [], updates))

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        import torch

        engine = self.engine
        sent_s = 0.0
        with torch.inference_mode():
            while True:
                idle = not engine._has_work() and not self.backlog
                if self.stopping and idle:
                    break
                messages, self.backlog = self.backlog, []
                if idle:  # waiting for work is no phase of the engine's: only what it does once work came
                    messages += self.receive(IDLE_WAIT_S)
                    started = time.perf_counter()
                else:
                    started = time.perf_counter()
                    messages += self.receive(0)
                self.handle(messages)
                self.check_channels()
                channel_s = time.perf_counter() - started
                try:
                    engine._iteration()
                except Exception as err:  # a bug or an out-of-memory must not hang every client
                    log.exception("engine iteration failed")
                    engine._fail_all(GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))
                if self.metrics_channel() is None:  # every front end is gone: nobody to answer
                    engine._outbox.clear()
                    continue
                started = time.perf_counter()
                engine._flush()
                # The messages' time ("channel" in /metrics) rides with this iteration's updates; sending
                # those updates is counted with the next iteration's.
                self.relay.channel_time(channel_s + time.perf_counter() - started + sent_s)
                started = time.perf_counter()
                self.send_updates()
                sent_s = time.perf_counter() - started
        if self.metrics_channel() is not None:
            engine._fail_all(GenerationFailed("shutdown", "the server is shutting down"))
            engine._flush()


def start_engine(channels: list[BlockingChannel], init: Any) -> EngineCore | None:
    """Load the model and build the engine the "init" message asks for; report "ready" or the error to every
    front end."""
    from tunebench.errors import UserError
    from tunebench.serve.engine import create_engine
    from tunebench.serve.loading import load_served

    _, model_options, kind, limits = init
    relay = MetricsRelay()
    try:
        served = load_served(model_options)
        engine = create_engine(kind, served, limits, relay)
    except UserError as err:
        problem = ("error", err.problem, err.fix)
    except Exception as err:
        log.exception("the engine process could not start")
        problem = ("error", f"the engine process could not start: {type(err).__name__}: {err}",
                   "see the server log above for the traceback")
    else:
        problem = None
    if problem is not None:
        for channel in channels:
            channel.send(problem)
        return None
    from tunebench.serve.engine_base import freeze_heap

    # Frozen before "ready", so that no request waits on the collection. Here most of all: this process runs
    # every decode step, and a full collection over a compiled model's objects stalled a 512-request burst for
    # 0.3-0.5 s on the H200 (lead-21/22).
    frozen = freeze_heap()
    log.info("%d objects frozen out of garbage collection", frozen)
    ready = ("ready", {"heap_frozen": frozen,
        "kind": engine.kind, "slots": engine.slots, "eos_ids": sorted(engine.eos_ids), "pid": os.getpid(),
        "model_id": served.model_id, "context_length": served.context_length, "dtype": served.dtype,
        "device": served.device, "adapters": {name: str(path) for name, path in served.adapters.items()},
        "default_adapter": served.default_adapter, "merged": served.merged})
    for channel in channels:
        channel.send(ready)
    return EngineCore(channels, served, engine, relay)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s (engine process): %(message)s")
    channels = [BlockingChannel(socket.socket(fileno=int(fd))) for fd in argv]
    init = channels[0].receive_one(None)  # the first front end (or the supervisor) says what to load
    if init is None or init[0] != "init":
        return 1
    started = time.monotonic()
    core = start_engine(channels, init)
    if core is None:
        return 2
    log.info("engine process %d ready in %.1f s", os.getpid(), time.monotonic() - started)
    # Ctrl-C reaches the whole process group: the front ends drain HTTP and then send "stop"; were this process
    # to die at once, the requests being drained would fail. SIGTERM (a service manager stopping the group):
    # finish what is admitted, then exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(channels) == 1:
        signal.signal(signal.SIGTERM, lambda *_: setattr(core, "stopping", True))
    else:  # several front ends drain first and then stop or close their channels: that is when this one stops
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    core.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
