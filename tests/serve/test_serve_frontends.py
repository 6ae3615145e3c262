"""Several front-end processes sharing one engine process (`tunebench serve --frontends N`), through the real CLI:
the processes answer alike, /metrics counts the whole server whichever answers, a dead engine fails every open
request in every front end, a dead front end leaves the others serving, SIGTERM drains."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_helpers import LONG
from test_serve_cli import start_cli_server

from tunebench.serve.metrics import parse_metrics

KEY = {"Authorization": "Bearer s3cret"}


def front_end_pids(log_text: str) -> dict[int, int]:
    return {int(i): int(pid) for i, pid in re.findall(r"front end (\d+): pid (\d+)", log_text)}


def engine_pid(log_text: str) -> int:
    found = re.search(r"engine process (\d+) ready", log_text)
    assert found, log_text
    return int(found.group(1))


def get(url: str, path: str) -> httpx.Response:
    """On a connection of its own, so that any front end may answer."""
    with httpx.Client(headers=KEY, timeout=60) as client:
        return client.get(f"{url}{path}")


def answering(url: str, wanted: int, tries: int = 400) -> set[int]:
    """Which front ends answer /info over fresh connections (all of them, usually within a few tries)."""
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(get(url, "/info").json()["frontend_index"])
        if len(seen) == wanted:
            break
    return seen


@pytest.fixture
def two(tiny_llama_dir, tmp_path):
    """`tunebench serve --frontend split --frontends 2` and its log."""
    log = tmp_path / "server.log"
    process, url = start_cli_server([str(tiny_llama_dir), "--frontend", "split", "--frontends", "2",
                                     "--max-new-tokens", "480"], log, {"TUNEBENCH_API_KEY": "s3cret"})
    yield process, url, log
    if process.poll() is None:
        process.kill()
        process.wait(30)
    for pid in [*front_end_pids(log.read_text()).values(), engine_pid(log.read_text())]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def generate(url: str, prompt: str, new_tokens: int = 8) -> httpx.Response:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens, "details": True}}
    with httpx.Client(headers=KEY, timeout=120) as client:
        return client.post(f"{url}/generate", json=body)


def test_front_ends_share_the_engine_and_the_metrics(two):
    process, url, log = two
    assert answering(url, 2) == {0, 1}  # both accept from the one socket
    info = get(url, "/info").json()
    assert info["frontends"] == 2 and info["frontend"] == "split"
    prompts = [f"Request {i} says" for i in range(4)] * 6
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda p: generate(url, p), prompts))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    by_prompt: dict[str, set[str]] = {}
    for prompt, response in zip(prompts, responses, strict=True):
        by_prompt.setdefault(prompt, set()).add(response.json()["generated_text"])
    assert all(len(texts) == 1 for texts in by_prompt.values()), by_prompt  # greedy: alike whoever answered
    stream = httpx.post(f"{url}/generate_stream", json={"inputs": "x", "parameters": {"max_new_tokens": 5}},
                        headers=KEY, timeout=60)
    assert stream.status_code == 200 and stream.text.count("data:") == 5
    # /metrics sums every front end's files: the same counts whichever process answers
    pages = [parse_metrics(get(url, "/metrics").text) for _ in range(6)]
    counted = {page['tunebench_requests_total{route="/generate",status="200"}'] for page in pages}
    assert counted == {24.0}, counted
    assert all(page["tunebench_generated_tokens_count"] == 25.0 for page in pages)
    assert all(page["tunebench_batch_size_count"] > 0 and page["tunebench_max_batch_size"] >= 2 for page in pages)
    # SIGTERM: the supervisor stops the front ends gracefully, then the engine exits; nothing is left
    result = {}

    def long_request():
        result["response"] = generate(url, "The engine", LONG)

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 30
    while parse_metrics(get(url, "/metrics").text)["tunebench_running_sequences"] < 1:
        assert time.monotonic() < deadline
    process.send_signal(signal.SIGTERM)
    thread.join(120)
    assert result["response"].status_code == 200
    assert result["response"].json()["details"]["generated_tokens"] == LONG
    assert process.wait(60) == 0, log.read_text()
    for pid in [*front_end_pids(log.read_text()).values(), engine_pid(log.read_text())]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def client_of(url: str, frontend: int | None) -> httpx.Client:
    """A client on a connection of its own; with `frontend`, one that front end accepted (fresh connections until
    /info says so: the kernel spreads them over the front ends, so a handful of streams may all land on one)."""
    for _ in range(400):
        client = httpx.Client(headers=KEY, timeout=60)
        if frontend is None or client.get(f"{url}/info").json()["frontend_index"] == frontend:
            return client  # keep-alive: its next request goes over the same connection, to the same front end
        client.close()
    raise AssertionError(f"no connection reached front end {frontend}")


def open_streams(url: str, count: int, new_tokens: int, running: int,
                 frontends: int = 0) -> tuple[list, list[threading.Thread]]:
    """`count` long streams on connections of their own, returned once `running` sequences decode; each one's
    outcome (the stream's text, or the HTTP error) lands in the returned list. With `frontends`, stream i goes to
    front end i % frontends. Every connection is made (and, with `frontends`, pinned) before any stream starts, so
    that a test killing a process after this returns never catches a stream still looking for its front end."""
    outcomes: list = []
    clients = [client_of(url, i % frontends if frontends else None) for i in range(count)]

    def long_stream(client: httpx.Client):
        body = {"inputs": "The engine", "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True}}
        try:
            outcomes.append(client.post(f"{url}/generate_stream", json=body).text)
        except httpx.HTTPError as err:
            outcomes.append(err)
        finally:
            client.close()

    threads = [threading.Thread(target=long_stream, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while parse_metrics(get(url, "/metrics").text)["tunebench_running_sequences"] < running:
        assert time.monotonic() < deadline
    return outcomes, threads


def test_a_dead_engine_fails_every_front_ends_requests_and_health_says_so(two):
    process, url, log = two
    outcomes, threads = open_streams(url, 6, LONG, running=6)
    os.kill(engine_pid(log.read_text()), signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 6
    assert all(isinstance(o, str) and "error" in o and "engine process" in o for o in outcomes), outcomes
    for _ in range(8):  # every front end now says so
        health = get(url, "/health")
        assert health.status_code == 503 and "engine process" in health.json()["reason"]
    refused = generate(url, "after")
    assert refused.status_code == 500 and "engine process" in refused.json()["error"]
    assert process.poll() is None  # still up, reporting why it cannot generate


def test_a_dead_front_end_leaves_the_others_serving(two):
    """Killed mid-stream (its channel closes with the engine's messages unread): the engine and the other front
    end go on; the streams it held end, the others finish."""
    process, url, log = two
    assert answering(url, 2) == {0, 1}
    outcomes, threads = open_streams(url, 8, 400, running=8, frontends=2)  # 4 on each, all decoding
    pid = front_end_pids(log.read_text())[1]
    os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(90)
    finished = [o for o in outcomes if isinstance(o, str) and o.count("data:") == 400]
    assert len(outcomes) == 8 and len(finished) == 4, outcomes  # front end 0's 4 streams finished, 1's ended
    deadline = time.monotonic() + 30
    while f"front end 1 (pid {pid}) exited with code -9; 1 of 2 still serve" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert answering(url, 2, tries=20) == {0}
    assert all(generate(url, f"after {i}").status_code == 200 for i in range(4))
    assert process.poll() is None


@pytest.mark.parametrize(("extra", "message"), [
    (["--frontends", "2", "--frontend", "inline"], "--frontends 2 needs the engine in a process of its own"),
    (["--frontends", "0"], "--frontends must be > 0"),
    (["--frontends", "65"], "--frontends 65 is more front-end processes"),
    (["--frontends", "many"], "--frontends 'many' is not a number of processes"),
])
def test_bad_front_end_counts_are_refused(cli, tiny_llama_dir, extra, message):
    result = cli("serve", str(tiny_llama_dir), *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "fix:" in result.stderr and "Traceback" not in result.stderr
