"""Bad input, auth, overload, disconnects and timeouts against real servers."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from serve_helpers import LONG, start

LONG_BODY = {"inputs": "The engine", "parameters": {"max_new_tokens": LONG, "ignore_eos": True}}

BAD_TGI = [
    ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "max_new_tokens: Input should be greater than or equal"),
    ({"inputs": "x", "parameters": {"max_new_tokens": -5}}, "max_new_tokens: Input should be greater than or equal"),
    ({"inputs": "x", "parameters": {"max_new_tokens": 10**9}}, "must be <= 480 (the server's --max-new-tokens)"),
    ({"inputs": "x", "parameters": {"stop": ["a"] * 100}}, "at most 4 stop sequences, got 100"),
    ({"inputs": "x", "parameters": {"stop": [""]}}, "every stop sequence must have 1 to"),
    ({"inputs": "x", "parameters": {"temperature": -1}}, "temperature: Input should be greater than 0"),
    ({"inputs": "x", "parameters": {"top_p": 1.5}}, "top_p: Input should be less than 1"),
    ({"inputs": "x", "parameters": {"seed": -1}}, "seed: Input should be greater than or equal to 0"),
    ({"inputs": "The engine makes a noise. " * 60}, "tokens; the limit is 256"),
    ({"inputs": ""}, "inputs must not be empty"),
    ({"inputs": "x", "parameters": {"adapter_id": "nope"}}, "unknown model 'nope'; available:"),
    ({"parameters": {}}, "inputs: Field required"),
    ({"inputs": "x", "parameters": {"best_of": 2}}, "best_of: only 1 is supported"),
    ({"inputs": "x", "parameters": {"watermark": True}}, "watermark is not supported"),
    ({"inputs": ["not", "a", "string"]}, "inputs: Input should be a valid string"),
]


@pytest.mark.parametrize(("body", "message"), BAD_TGI, ids=[m[:30] for _, m in BAD_TGI])
def test_tgi_validation_errors_are_422_with_a_clear_message(batched, body, message):
    response = batched.post("/generate", body)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation" and message in response.json()["error"]


def test_prompt_plus_new_tokens_must_fit_the_context(batched):
    from tunebench.evaluate.generation import encode

    prompt = "The engine makes a rattling noise when the car idles at a red light. " * 3
    n = len(encode(batched.state.served.tokenizer, prompt))
    response = batched.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 512 - n + 1}})
    assert response.status_code == 422 and "must be <= 512, the model's context length" in response.json()["error"]


def test_malformed_json_is_422(batched):
    with batched.client() as c:
        response = c.post("/generate", content=b'{"inputs": "x",', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]


@pytest.mark.parametrize(("body", "message"), [
    ({"prompt": "x", "temperature": 3}, "temperature: Input should be less than or equal to 2"),
    ({"prompt": "x", "n": 2}, "n: Input should be less than or equal to 1"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "at most 4 stop sequences"),
    ({"prompt": "x", "logprobs": 3}, "logprobs is not supported"),
])
def test_openai_validation_errors_have_openai_shape(batched, body, message):
    response = batched.post("/v1/completions", body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


def test_auth(batched):
    import openai

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}):
        response = httpx.post(f"{batched.url}/generate", json={"inputs": "x"}, headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error_type"] == "auth"
    assert httpx.get(f"{batched.url}/metrics").status_code == 401
    assert httpx.get(f"{batched.url}/health").status_code == 200
    wrong = openai.OpenAI(base_url=f"{batched.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert batched.metrics()['tunebench_errors_total{kind="auth"}'] >= 4


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def cancelled(live):
    return live.metrics()['tunebench_errors_total{kind="cancelled"}']


def test_client_disconnect_mid_stream_cancels_generation(batched):
    before = cancelled(batched)
    with batched.client() as c, c.stream("POST", "/generate_stream", json=LONG_BODY) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i > 4:
                break  # leaving the block closes the connection mid-stream
    wait_for(lambda: cancelled(batched) == before + 1)
    wait_for(lambda: batched.metrics()["tunebench_running_sequences"] == 0)


def test_client_disconnect_while_waiting_cancels_generation(batched):
    before = cancelled(batched)
    with pytest.raises(httpx.ReadTimeout), batched.client(timeout=0.1) as c:
        c.post("/generate", json=LONG_BODY)
    wait_for(lambda: cancelled(batched) == before + 1)


@pytest.fixture(scope="module")
def tight(tiny_llama_dir):
    """One running slot and one queue place: the third concurrent request is turned away."""
    background, live = start(tiny_llama_dir, max_concurrency=1, max_queue=1)
    yield live
    background.stop()


def test_full_queue_answers_503_with_retry_after(tight):
    running, queued = threading.Event(), threading.Event()
    stop = threading.Event()

    def stream(flag):
        with tight.client() as c, c.stream("POST", "/generate_stream", json=LONG_BODY) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                flag.set()
                if stop.is_set():
                    return
            flag.set()

    first = threading.Thread(target=stream, args=(running,))
    first.start()
    assert running.wait(30)
    second = threading.Thread(target=stream, args=(queued,))
    second.start()
    wait_for(lambda: tight.state.engine.in_flight == 2)
    responses = [tight.post("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 2}}) for _ in range(3)]
    for response in responses:
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error_type"] == "overloaded"
    stop.set()
    first.join(30)
    second.join(30)
    wait_for(lambda: tight.state.engine.in_flight == 0)
    assert tight.generate("x", max_new_tokens=2)["generated_text"] is not None


def test_burst_far_above_capacity_is_bounded(tight):
    async def burst():
        async with httpx.AsyncClient(base_url=tight.url, timeout=60) as client:
            # Long enough that the two admitted requests hold their places while the rest arrive.
            return await asyncio.gather(*(client.post("/generate", json={"inputs": "Simmer", "parameters": {
                "max_new_tokens": 200, "ignore_eos": True}}) for _ in range(40)))

    statuses = [r.status_code for r in asyncio.run(burst())]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 30 and statuses.count(200) >= 2
    assert tight.metrics()["tunebench_waiting_requests"] == 0


def test_request_timeout_is_504(tiny_llama_dir):
    background, live = start(tiny_llama_dir, request_timeout=0.2)
    try:
        response = live.post("/generate", LONG_BODY)
        assert response.status_code == 504 and response.json()["error_type"] == "timeout"
        with live.client() as c, c.stream("POST", "/generate_stream", json=LONG_BODY) as stream:
            last = list(stream.iter_lines())[-2]
        assert '"error_type": "timeout"' in last
        assert live.metrics()['tunebench_errors_total{kind="timeout"}'] == 2
    finally:
        background.stop()
