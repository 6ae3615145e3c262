"""The engine process of the split front end: `python -m tunebench.serve.core FD` (started by
`tunebench.serve.client`, never by hand).

It loads the model, builds the engine, and runs the engine's iterations in its main thread, the way the offline
runner does: no HTTP, no event loop, no second thread competing for the interpreter. Between iterations it
reads the front end's messages (`tunebench.serve.channel`); after each one it sends what the step produced as
one message: token ids and logprobs only. Text is the front end's business (detokenization, stop strings,
streaming); EOS and the token limit are decided here, a stop string there (the front end then sends "finish").
The engine's Prometheus observations travel with the tokens and are applied to the front end's metrics.

When the front end goes away (its end of the socket closes) the running requests are cancelled and the process
exits; when the engine crashes, the process exits and the front end fails every open request.
"""

from __future__ import annotations

import logging
import os
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
    """What the engine needs of a request's handle here: its id and whether the client went away."""

    __slots__ = ("cancelled", "rid")

    def __init__(self, rid: int) -> None:
        self.rid = rid
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
    def __init__(self, channel: BlockingChannel, served: Any, engine: Any, relay: MetricsRelay) -> None:
        self.channel, self.served, self.engine, self.relay = channel, served, engine, relay
        self.seqs: dict[int, CoreSequence] = {}
        self.backlog: list[Any] = []  # submissions and jobs read while the engine was mid-iteration
        self.stopping = False
        engine._loop = _Sender(self)

    # ------------------------------------------------------------ messages in

    def poll_controls(self) -> None:
        """Read what arrived; apply cancels and finishes now, keep the rest for the main loop."""
        for message in self.channel.receive(0):
            if not self.control(message):
                self.backlog.append(message)

    def control(self, message: Any) -> bool:
        kind = message[0]
        if kind in ("cancel", "finish"):
            seq = self.seqs.get(message[1])
            if seq is not None:
                if kind == "cancel":
                    seq.handle.cancelled = True  # the engine fails it at its next step (counted as cancelled)
                else:  # a stop string: the front end finished it; leave quietly
                    seq.finish_reason, seq.ended = "stop_sequence", True
                    del self.seqs[message[1]]
            return True
        return False

    def handle(self, messages: list[Any]) -> None:
        dropped_jobs = {m[1] for m in messages if m[0] == "cancel_job"}
        for message in messages:
            kind = message[0]
            if self.control(message) or kind == "cancel_job":
                continue
            if kind == "submit":
                _, rid, request = message
                seq = CoreSequence(request, CoreHandle(rid), self.engine)  # type: ignore[arg-type]
                self.seqs[rid] = seq
                self.engine._accept_item(seq)
            elif kind == "job" and message[1] not in dropped_jobs:
                self.run_job(message[1], message[2])
            elif kind == "stop":
                self.stopping = True

    def run_job(self, rid: int, job: Any) -> None:
        try:
            self.channel.send(("job", rid, True, job.run(self.served)))
        except Exception as err:  # handed to the waiting route, which answers 500
            log.exception("engine job failed")
            self.channel.send(("job", rid, False, ("internal", f"{type(err).__name__}: {err}")))

    # ------------------------------------------------------------ messages out

    def send_items(self, items: list[tuple[CoreHandle, Any]]) -> None:
        events = []
        for handle, item in items:
            if isinstance(item, tuple):
                events.append((handle.rid, *item))
            elif isinstance(item, Completion):
                events.append((handle.rid, DONE, item.finish_reason, item.generated_tokens))
                self.seqs.pop(handle.rid, None)
            elif isinstance(item, GenerationFailed):
                events.append((handle.rid, FAILED, item.kind, item.message))
                self.seqs.pop(handle.rid, None)
        self.channel.send(("out", events, self.relay.take()))

    # ------------------------------------------------------------ the loop

    def run(self) -> None:
        import torch

        engine = self.engine
        with torch.inference_mode():
            while True:
                idle = not engine._has_work() and not self.backlog
                if self.stopping and idle:
                    break
                messages, self.backlog = self.backlog, []
                messages += self.channel.receive(IDLE_WAIT_S if idle else 0)
                self.handle(messages)
                if self.channel.closed and not self.stopping:  # the front end is gone: nobody to answer
                    self.stopping = True
                    for seq in self.seqs.values():
                        seq.handle.cancelled = True
                try:
                    engine._iteration()
                except Exception as err:  # a bug or an out-of-memory must not hang every client
                    log.exception("engine iteration failed")
                    engine._fail_all(GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))
                if self.channel.closed:
                    engine._outbox.clear()
                    continue
                engine._flush()
                updates = self.relay.take()
                if updates is not None:
                    self.channel.send(("out", [], updates))
        if not self.channel.closed:
            engine._fail_all(GenerationFailed("shutdown", "the server is shutting down"))
            engine._flush()


def start_engine(channel: BlockingChannel, init: Any) -> EngineCore | None:
    """Load the model and build the engine the "init" message asks for; report "ready" or the error."""
    from tunebench.errors import UserError
    from tunebench.serve.engine import create_engine
    from tunebench.serve.loading import load_served

    _, model_options, kind, limits = init
    relay = MetricsRelay()
    try:
        served = load_served(model_options)
        engine = create_engine(kind, served, limits, relay)
    except UserError as err:
        channel.send(("error", err.problem, err.fix))
        return None
    except Exception as err:
        log.exception("the engine process could not start")
        channel.send(("error", f"the engine process could not start: {type(err).__name__}: {err}",
                      "see the server log above for the traceback"))
        return None
    channel.send(("ready", {
        "kind": engine.kind, "slots": engine.slots, "eos_ids": sorted(engine.eos_ids), "pid": os.getpid(),
        "model_id": served.model_id, "context_length": served.context_length, "dtype": served.dtype,
        "device": served.device, "adapters": {name: str(path) for name, path in served.adapters.items()},
        "default_adapter": served.default_adapter, "merged": served.merged}))
    return EngineCore(channel, served, engine, relay)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s (engine process): %(message)s")
    sock = socket.socket(fileno=int(argv[0]))
    channel = BlockingChannel(sock)
    init = channel.receive_one(None)
    if init is None or init[0] != "init":
        return 1
    started = time.monotonic()
    core = start_engine(channel, init)
    if core is None:
        return 2
    log.info("engine process %d ready in %.1f s", os.getpid(), time.monotonic() - started)
    # Ctrl-C reaches the whole process group: the front end drains HTTP and then sends "stop"; were this process
    # to die at once, the requests being drained would fail. SIGTERM (a service manager stopping the group):
    # finish what is admitted, then exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: setattr(core, "stopping", True))
    core.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
