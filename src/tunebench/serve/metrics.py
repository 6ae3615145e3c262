"""Prometheus metrics of one server, in a registry of its own (several servers can live in one process).

Latencies are histograms in seconds. `tunebench_batch_size` is observed once per decode step with the
number of sequences in that step: its buckets above 1 are the proof that requests really share steps.

With several front-end processes (`tunebench.serve.frontends`) every one of them runs in prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before they start): each writes its samples
to files there, and /metrics, whichever process answers it, sums the counters and histograms of all of them.
The engine's gauges reach one front end only (the engine relays them on one channel), so they are the largest
value over the live processes.
"""

from __future__ import annotations

import os

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
TOKEN_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_COUNT_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# gpu_wait: blocked on a step's tokens (GPU time the host could not overlap); launch: decode steps' launches;
# prefill: admitting prompts (their launches, or whole passes on the CPU); tokens: handing tokens to requests;
# sampling: on-host sampling; scheduling: the rest of each iteration (pruning, admission, compaction);
# channel: the split engine process's messages between its iterations (requests in, tokens and metrics out).
ENGINE_PHASES = ("gpu_wait", "launch", "prefill", "tokens", "sampling", "scheduling", "channel")
ERROR_KINDS = ("validation", "auth", "overloaded", "timeout", "cancelled", "not_found", "internal", "shutdown")


class ServeMetrics:
    def __init__(self, engine: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the page and nobody reads them
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunebench_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.request_latency = Histogram("tunebench_request_duration_seconds",
                                         "end-to-end latency (until the last byte of the response)", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("tunebench_queue_duration_seconds", "arrival to joining the running batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunebench_time_to_first_token_seconds", "arrival to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("tunebench_inter_token_latency_seconds", "time between consecutive tokens",
                                     buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tunebench_batch_size", "sequences in each decode step",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.prefill_size = Histogram("tunebench_prefill_size", "prompts in each prefill launch",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.generated_tokens = Histogram("tunebench_generated_tokens", "tokens generated per finished request",
                                          buckets=TOKEN_COUNT_BUCKETS, registry=r)
        self.prompt_tokens = Histogram("tunebench_prompt_tokens", "prompt tokens per admitted request",
                                       buckets=TOKEN_COUNT_BUCKETS, registry=r)
        self.errors = Counter("tunebench_errors", "failed requests by kind", ["kind"], registry=r)
        # The engine thread's time by what it did (its wall minus their sum: idle, no work); a rate of these over
        # a burst says whether the engine waited on the GPU or on the requests (the serving benchmark reads them).
        engine_seconds = Counter("tunebench_engine_seconds", "the engine thread's time in scheduler iterations, "
                                 "by phase", ["phase"], registry=r)
        # every phase an iteration's seconds split into, and the split engine process's message time apart
        self._iteration_phases = [engine_seconds.labels(phase=phase) for phase in ENGINE_PHASES if phase != "channel"]
        self._channel_seconds = engine_seconds.labels(phase="channel")
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        mode = "livemax"  # the one front end the engine relays them to; the others hold 0
        self.running = Gauge("tunebench_running_sequences", "sequences in the running batch", registry=r,
                             multiprocess_mode=mode)
        self.waiting = Gauge("tunebench_waiting_requests", "requests queued for a batch slot", registry=r,
                             multiprocess_mode=mode)
        self.max_batch = Gauge("tunebench_max_batch_size", "largest decode batch since start", registry=r,
                               multiprocess_mode=mode)
        info = Gauge("tunebench_engine_info", "the engine serving requests", ["engine"], registry=r,
                     multiprocess_mode=mode)
        info.labels(engine=engine).set(1)
        for kind in ERROR_KINDS:  # every kind is exported from the start, at 0
            self.errors.labels(kind=kind)
        self._max_batch = 0

    def observe_step(self, batch: int) -> None:
        self.batch_size.observe(batch)
        if batch > self._max_batch:
            self._max_batch = batch
            self.max_batch.set(batch)

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def engine_time(self, iteration: float, *phases: float) -> None:
        """One or more scheduler iterations' seconds, and within them their phases (ENGINE_PHASES up to
        scheduling) but the last, scheduling: the rest."""
        for child, seconds in zip(self._iteration_phases, (*phases, max(0.0, iteration - sum(phases))), strict=True):
            if seconds:
                child.inc(seconds)

    def channel_time(self, seconds: float) -> None:
        """The split engine process's seconds on messages between iterations (the phase "channel")."""
        if seconds:
            self._channel_seconds.inc(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # every front end's files, summed
        return generate_latest(registry), CONTENT_TYPE_LATEST


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of a Prometheus text page as {'name{labels}': value} (for tests and the GPU check)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out

