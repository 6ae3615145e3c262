"""Oversized bodies, abandoned task requests, and what a keyed server shows, against real servers (issue 18)."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest
from serve_helpers import API_KEY, LONG, start

from tunebench.serve.guards import body_limit

MB = 1 << 20


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def small(tiny_llama_dir):
    background, live = start(tiny_llama_dir, max_input_tokens=256)
    yield live
    background.stop()


def connect(live) -> socket.socket:
    url = urlparse(live.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < length_of(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def length_of(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def headers(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_declared_oversized_body_is_refused_before_it_is_sent(small):
    limit = body_limit(256)
    with connect(small) as sock:
        sock.sendall(headers("/generate", f"Content-Length: {20 * MB}\r\n"))  # and not one byte of the body
        status, body = read_response(sock)
    assert status == 413 and body["error_type"] == "too_large"
    assert f"the limit is {limit:,} bytes" in body["error"] and "--max-input-tokens 256" in body["error"]
    with connect(small) as sock:  # OpenAI routes answer in OpenAI's shape
        sock.sendall(headers("/v1/completions", f"Content-Length: {20 * MB}\r\n"))
        status, body = read_response(sock)
    assert status == 413 and body["error"]["type"] == "invalid_request_error"


def test_chunked_body_is_counted_as_it_arrives(small):
    limit = body_limit(256)
    piece = b"x" * (64 * 1024)
    with connect(small) as sock:
        sock.sendall(headers("/generate", "Transfer-Encoding: chunked\r\n"))
        sock.sendall(chunk(b'{"inputs": "'))
        for _ in range(limit // len(piece)):
            sock.sendall(chunk(piece))
        sock.sendall(chunk(piece))  # past the limit; the body never ends, the server must not wait for it
        status, body = read_response(sock)
    assert status == 413 and f"longer than {limit:,} bytes" in body["error"]


def send_chunked_body(live, size: int, outcome: list) -> None:
    """A 20 MB prompt as fast as the socket takes it; the server may cut it off (that is the point)."""
    words = b"the engine makes a rattling noise " * 2048
    try:
        with connect(live) as sock:
            sock.sendall(headers("/generate", "Transfer-Encoding: chunked\r\n"))
            sock.sendall(chunk(b'{"inputs": "'))
            sent = 0
            while sent < size:
                sock.sendall(chunk(words))
                sent += len(words)
            sock.sendall(chunk(b'"}') + b"0\r\n\r\n")
            outcome.append(read_response(sock)[0])
    except OSError as err:  # refused mid-body: the connection is closed under the sender
        outcome.append(type(err).__name__)


def probe_health(client: httpx.Client, at: float, latencies: list) -> None:
    """One /health probe on its own warm connection, timed from when it was due (a stalled loop delays it)."""
    time.sleep(max(0.0, at - time.perf_counter()))
    response = client.get("/health")
    latencies.append((time.perf_counter() - at, response.status_code))


def test_health_stays_fast_while_a_20mb_body_is_refused(small):
    outcome: list = []
    latencies: list = []
    clients = [httpx.Client(base_url=small.url, timeout=120) for _ in range(10)]
    for c in clients:
        assert c.get("/health").status_code == 200  # connected before the clock starts
    sender = threading.Thread(target=send_chunked_body, args=(small, 20 * MB, outcome))
    now = time.perf_counter()
    # every 200 ms for 2 s, each in its own thread: one stall of the event loop delays every probe due during it
    probes = [threading.Thread(target=probe_health, args=(c, now + 0.2 * i, latencies))
              for i, c in enumerate(clients)]
    sender.start()
    for probe in probes:
        probe.start()
    for thread in (*probes, sender):
        thread.join(180)
    for c in clients:
        c.close()
    assert all(status == 200 for _, status in latencies) and len(latencies) == 10
    assert statistics.median(t for t, _ in latencies) < 0.1, latencies
    assert outcome and outcome[0] != 200, outcome


def test_prompt_far_over_the_token_limit_is_refused_without_tokenizing_it_all(small):
    """Under the byte limit, but 100 times the token limit: judged by a prefix, off the event loop."""
    text = "The engine makes a rattling noise. " * 25_000  # ~900 kB
    start_at = time.perf_counter()
    response = small.post("/generate", {"inputs": text})
    elapsed = time.perf_counter() - start_at
    assert response.status_code == 422 and "has more than 256 tokens" in response.json()["error"]
    assert "in its first 2,048 characters alone" in response.json()["error"]
    assert elapsed < 5, elapsed
    # truncate keeps the last tokens, so that prompt is tokenized whole and accepted
    response = small.post("/generate", {"inputs": text[:60_000], "parameters": {"truncate": 32, "max_new_tokens": 2}})
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ abandoned /classify requests


@pytest.fixture(scope="module")
def naive_cls(tiny_llama_dir, cls_run):
    """The naive engine is busy for the whole of a generation: jobs wait behind it. One running + two queued."""
    background, live = start(tiny_llama_dir, run=cls_run, engine="naive", max_queue=2)
    yield live
    background.stop()


def test_abandoned_classify_requests_free_their_places(naive_cls):
    engine = naive_cls.state.engine
    long_body = {"inputs": "The engine", "parameters": {"max_new_tokens": LONG, "ignore_eos": True}}
    started = threading.Event()

    def generate() -> None:  # streamed, so the test knows when the engine is decoding it
        with naive_cls.client(timeout=60) as c, c.stream("POST", "/generate_stream", json=long_body) as r:
            for _ in r.iter_lines():
                started.set()

    busy = threading.Thread(target=generate)
    busy.start()
    # The engine has taken it (were it still in the engine's inbox, a job sent now would run first)
    assert started.wait(30) and engine.in_flight == 1
    for _ in range(2):  # two clients give up while the model is busy
        with pytest.raises(httpx.ReadTimeout), naive_cls.client(timeout=0.2) as c:
            c.post("/classify", json={"text": "the rocket reached orbit"})
    # without cancellation the two jobs hold their places until the generation ends, and the next request is 503
    wait_for(lambda: engine.in_flight == 1, timeout=2)
    assert busy.is_alive(), "the generation ended too soon for this test to tell"
    response = naive_cls.post("/classify", {"text": "the rocket reached orbit"})
    assert response.status_code == 200, response.text
    busy.join(60)
    assert naive_cls.metrics()['tunebench_errors_total{kind="cancelled"}'] >= 2


# ------------------------------------------------------------------ what a keyed server shows (issue 18, item 6)


def test_docs_and_schema_need_the_api_key(batched):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{batched.url}{path}").status_code == 401, path
        assert httpx.get(f"{batched.url}{path}", headers=batched.headers).status_code == 200, path
    schema = httpx.get(f"{batched.url}/openapi.json", headers=batched.headers).json()
    assert "/generate" in schema["paths"] and "/docs" not in schema["paths"]


def test_docs_stay_open_without_a_key(naive_cls):
    assert httpx.get(f"{naive_cls.url}/openapi.json").status_code == 200


def test_models_name_adapters_without_their_server_paths(batched, lora_adapters):
    listed = httpx.get(f"{batched.url}/v1/models", headers=batched.headers).json()["data"]
    assert {m["id"] for m in listed} >= {"alpha", "beta"}
    shown = httpx.get(f"{batched.url}/v1/models", headers=batched.headers).text
    assert all(str(path) not in shown for path in lora_adapters.values())


def test_no_key_on_a_reachable_address_is_refused(tiny_llama_dir, cli, tmp_path):
    env = {"TUNEBENCH_API_KEY": ""}
    refused = cli("serve", str(tiny_llama_dir), "--host", "0.0.0.0", "--port", "0", env=env)
    assert refused.returncode == 2 and "no API key is set" in refused.stderr and "--allow-no-auth" in refused.stderr
    empty = tmp_path / "key"
    empty.write_text("\n")
    refused = cli("serve", str(tiny_llama_dir), "--api-key-file", str(empty), env=env)
    assert refused.returncode == 2 and "is empty" in refused.stderr


def test_api_key_from_a_file(tmp_path):
    from tunebench.errors import UserError
    from tunebench.serve.commands import read_api_key

    path = tmp_path / "key"
    path.write_text(f"{API_KEY}\n")
    assert read_api_key(None, path) == API_KEY and read_api_key("", None) is None
    with pytest.raises(UserError, match="only one"):
        read_api_key("k", path)


def test_help_says_where_the_key_can_come_from(cli):
    shown = " ".join(cli("serve", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert "TUNEBENCH_API_KEY" in shown and "--api-key-file" in shown and "ps" in shown
