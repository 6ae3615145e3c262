"""The open-loop engine against a real local server with a known delay (in its own process)."""

from __future__ import annotations

import asyncio

import pytest

from tunebench.errors import UserError
from tunebench.loadtest.bench import free_port
from tunebench.loadtest.engine import LoadClient, Record, Target, arrival_offsets
from tunebench.loadtest.metrics import summarize
from tunebench.loadtest.protocols import api_for

PROMPTS = ["one two three", "four five six seven"]


def run_at(url: str, rate: float, seconds: float, *, api: str = "tgi", stream: bool = False,
           timeout: float = 5.0) -> list[Record]:
    async def go() -> list[Record]:
        async with LoadClient(Target(url, api_for(api)), PROMPTS, timeout=timeout, stream=stream, max_new_tokens=8,
                              ignore_eos=False) as client:
            await client.preflight()
            return await client.run(arrival_offsets(rate, seconds, "constant"))

    return asyncio.run(go())


def test_achieved_matches_offered_and_percentiles_match_the_delay(fake_server):
    url = fake_server(delay=0.05)
    records = run_at(url, rate=50, seconds=2)
    m = summarize(records, 50)
    assert m["requests"] == 100 and m["success_ratio"] == 1.0
    assert m["sent_rps"] == pytest.approx(50, rel=0.03)
    assert m["achieved_rps"] == pytest.approx(50, rel=0.05)
    # Every request takes the server's 50 ms plus a little transport: the percentiles sit just above it.
    for stat in ("p50", "p90", "p99"):
        assert 0.049 <= m[f"latency_{stat}_s"] < 0.09, (stat, m[f"latency_{stat}_s"])
    assert m["latency_p50_s"] <= m["latency_p90_s"] <= m["latency_p99_s"] <= m["latency_max_s"]
    assert m["send_lateness_p50_ms"] < 10
    assert m["output_tokens_mean"] == 4  # from the server's details


def test_queueing_counts_from_the_scheduled_time(fake_server):
    """One slot of 100 ms (capacity 10/s) offered 20/s for 1 s: the open loop still sends at 20/s and the
    queue shows in the latency; a closed loop would report ~100 ms for every request."""
    url = fake_server(delay=0.1, capacity=1)
    records = run_at(url, rate=20, seconds=1)
    m = summarize(records, 20)
    assert m["sent_rps"] == pytest.approx(20, rel=0.05)
    assert m["success_ratio"] == 1.0
    # Request k (scheduled at k/20 s) completes near (k+1)/10 s: the last of 20 waits about 1 s.
    last = max(records, key=lambda r: r.scheduled)
    assert last.latency == pytest.approx(2.0 - 0.95, abs=0.2)
    assert m["latency_max_s"] > 0.8 and m["latency_p50_s"] > 0.3  # a closed loop would see 0.1 s for all
    assert m["achieved_rps"] == pytest.approx(10, rel=0.15)  # the server's capacity, not the offered rate


def test_a_saturated_server_achieves_less_than_offered(fake_server):
    """Capacity 10/s offered 20/s with a 0.5 s timeout: request k waits about 0.1 + k/20 s, so those from
    k = 8 on time out; achieved counts the replies that came back, over the 1 s of scheduled sends."""
    url = fake_server(delay=0.1, capacity=1)
    records = run_at(url, rate=20, seconds=1, timeout=0.5)
    m = summarize(records, 20, window_s=1.0, timeout_s=0.5)
    assert m["error_counts"].get("timeout", 0) >= 10
    assert 0 < m["achieved_rps"] <= 10.5 < 0.95 * 20   # at most its capacity: the sweep sees it fail
    assert m["throughput_rps"] == m["achieved_rps"]     # every reply that came back in time was a success


def synthetic(scheduled: float, latency: float, status: int = 200, error: str = "") -> Record:
    rec = Record(0, 0, scheduled)
    rec.latency, rec.end, rec.status, rec.error, rec.lateness = latency, scheduled + latency, status, error, 0.0
    return rec


def test_achieved_is_never_above_offered_with_few_requests():
    """0.5/s offered: two requests at 0 s and 2 s; the first took 1.5 s, the second 0.1 s. The old
    (n - 1) / (last end - first end) said 1/0.6 s = 1.67/s; two requests in 4 s of sends is 0.5/s."""
    m = summarize([synthetic(0.0, 1.5), synthetic(2.0, 0.1)], 0.5, window_s=3.0, timeout_s=60.0)
    assert m["achieved_rps"] == pytest.approx(0.5) and m["throughput_rps"] == pytest.approx(0.5)
    # five requests at 0.5/s, the last reply 0.9 s slower than the first: jitter, not a queue (it kept up)
    jitter = [synthetic(2.0 * i, 0.5) for i in range(4)] + [synthetic(8.0, 1.4)]
    assert summarize(jitter, 0.5, window_s=10.0)["achieved_rps"] == pytest.approx(0.5)
    # a reply after its timeout, and a failed request, are not throughput; an HTTP error still came back
    m = summarize([synthetic(0.0, 0.1), synthetic(2.0, 0.1, 500, "http_5xx"), synthetic(4.0, 70.0, 0, "timeout")],
                  0.5, window_s=6.0, timeout_s=60.0)
    assert m["achieved_rps"] == pytest.approx(2 / 6) and m["throughput_rps"] == pytest.approx(1 / 6)


@pytest.mark.parametrize("api", ["tgi", "openai"])
def test_an_empty_streamed_reply_is_a_success_with_no_tokens(fake_server, api):
    """The model emitted EOS at once: a correct reply, counted as a success with 0 output tokens."""
    url = fake_server(delay=0.01, tokens=0)
    records = run_at(url, rate=10, seconds=0.5, api=api, stream=True)
    assert all(r.ok and r.output_tokens == 0 and r.ttft is None for r in records), [r.error for r in records]
    m = summarize(records, 10)
    assert m["success_ratio"] == 1.0 and m["output_tokens_mean"] == 0


def test_errors_and_timeouts_counted_per_kind(fake_server):
    url = fake_server(delay=0.01, status_every="5:500", bad_json_every=7, hang_every=11)
    records = run_at(url, rate=40, seconds=1, timeout=0.5)
    m = summarize(records, 40)
    n = m["requests"]
    posts = range(1, n + 1)  # the server counts POSTs from 1 and injects by that count
    http_5xx = sum(i % 5 == 0 for i in posts)
    bad_json = sum(i % 5 != 0 and i % 7 == 0 for i in posts)
    timeout = sum(i % 5 != 0 and i % 7 != 0 and i % 11 == 0 for i in posts)
    assert m["error_counts"] == {"bad_json": bad_json, "http_5xx": http_5xx, "timeout": timeout}
    assert m["status_counts"] == {"200": n - http_5xx - timeout, "500": http_5xx, "none": timeout}
    assert m["successes"] == n - http_5xx - bad_json - timeout
    hung = [r for r in records if r.error == "timeout"]
    assert all(0.5 <= r.latency < 1.0 for r in hung)


@pytest.mark.parametrize("api", ["tgi", "openai"])
def test_streaming_token_latencies(fake_server, api):
    url = fake_server(delay=0.03, tokens=5, token_delay=0.02)
    records = run_at(url, rate=10, seconds=1, api=api, stream=True)
    m = summarize(records, 10)
    assert m["success_ratio"] == 1.0 and m["output_tokens_mean"] == 5
    assert 0.03 <= m["ttft_p50_s"] < 0.07
    assert m["tpot_p50_s"] == pytest.approx(0.02, abs=0.006)
    assert m["itl_p50_s"] == pytest.approx(0.02, abs=0.006)
    assert m["latency_p50_s"] == pytest.approx(0.03 + 4 * 0.02, abs=0.03)
    if api == "openai":  # the usage chunk's prompt count (the fake server counts words)
        assert m["input_tokens_mean"] == pytest.approx(sum(len(p.split()) for p in PROMPTS) / 2, abs=0.6)


def test_openai_and_naive_replies(fake_server):
    url = fake_server(delay=0.0, tokens=3)
    openai = run_at(url, rate=20, seconds=0.5, api="openai")
    assert all(r.ok and r.output_tokens == 3 and r.input_tokens in (3, 4) for r in openai)
    naive = run_at(url, rate=20, seconds=0.5, api="naive")
    assert all(r.ok and r.output_tokens is None and r.text == "tok tok tok " for r in naive)


def test_unreachable_url_fails_before_any_request():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match="cannot reach"):
        run_at(url, rate=10, seconds=1)


def test_naive_api_cannot_stream():
    with pytest.raises(UserError, match="cannot stream"):
        LoadClient(Target("http://127.0.0.1:1", api_for("naive")), PROMPTS, timeout=1, stream=True,
                   max_new_tokens=1, ignore_eos=False)
