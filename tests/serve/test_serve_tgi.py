"""TGI's API on a real server: /generate, /generate_stream, POST /, and both Hugging Face clients unchanged."""

from __future__ import annotations

from serve_helpers import sse_events

PROMPT = "The engine makes a rattling noise"


def test_generate_returns_text_and_details(batched):
    out = batched.generate(PROMPT, max_new_tokens=12, details=True, decoder_input_details=True)
    details = out["details"]
    assert details["finish_reason"] in ("length", "eos_token")
    assert details["generated_tokens"] == len(details["tokens"]) <= 12
    assert "".join(t["text"] for t in details["tokens"] if not t["special"]) == out["generated_text"]
    assert all(t["logprob"] <= 0 for t in details["tokens"])
    assert details["prefill"] and details["prefill"][0]["logprob"] is None
    assert details["seed"] is None  # greedy


def test_stream_matches_generate(batched):
    expected = batched.generate(PROMPT, max_new_tokens=12)["generated_text"]
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12}}
    with batched.client() as c, c.stream("POST", "/generate_stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["generated_text"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == expected
    assert events[-1]["details"]["generated_tokens"] == len(events)
    assert "".join(e["token"]["text"] for e in events if not e["token"]["special"]) == expected


def test_text_generation_client(batched):
    from text_generation import Client

    client = Client(batched.url, headers=batched.headers)
    expected = batched.generate(PROMPT, max_new_tokens=10)["generated_text"]
    response = client.generate(PROMPT, max_new_tokens=10)
    assert response.generated_text == expected
    assert response.details.generated_tokens == len(response.details.tokens)
    streamed = list(client.generate_stream(PROMPT, max_new_tokens=10))
    assert "".join(r.token.text for r in streamed if not r.token.special) == expected
    assert streamed[-1].details.finish_reason.value in ("length", "eos_token")


def test_huggingface_inference_client(batched, local_hub_client):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=batched.url, api_key=batched.key)
    expected = batched.generate(PROMPT, max_new_tokens=10)["generated_text"]
    assert client.text_generation(PROMPT, max_new_tokens=10) == expected
    assert "".join(client.text_generation(PROMPT, max_new_tokens=10, stream=True)) == expected
    detailed = client.text_generation(PROMPT, max_new_tokens=10, details=True)
    assert detailed.generated_text == expected and detailed.details.generated_tokens >= 1


def test_compat_route_returns_a_list(batched):
    response = batched.post("/", {"inputs": PROMPT, "parameters": {"max_new_tokens": 5}})
    assert response.status_code == 200 and isinstance(response.json(), list)
    assert response.json()[0]["generated_text"] == batched.generate(PROMPT, max_new_tokens=5)["generated_text"]


def test_stop_sequence_is_kept_as_tgi_does(batched):
    text = batched.generate(PROMPT, max_new_tokens=20, ignore_eos=True)["generated_text"]
    stop = text[4:7]  # a piece of the greedy output: generation must stop where it first appears
    out = batched.generate(PROMPT, max_new_tokens=20, ignore_eos=True, stop=[stop], details=True)
    assert out["details"]["finish_reason"] == "stop_sequence"
    assert stop in out["generated_text"] and text.startswith(out["generated_text"])
    assert out["generated_text"].find(stop) == text.find(stop)


def test_ignore_eos_generates_exactly_max_new_tokens(batched):
    out = batched.generate(PROMPT, max_new_tokens=25, ignore_eos=True, details=True)
    assert out["details"]["generated_tokens"] == 25 and out["details"]["finish_reason"] == "length"


def test_seeded_sampling_is_reproducible(batched):
    first = batched.generate(PROMPT, max_new_tokens=15, do_sample=True, temperature=1.5, seed=7, details=True)
    again = batched.generate(PROMPT, max_new_tokens=15, do_sample=True, temperature=1.5, seed=7)
    other = batched.generate(PROMPT, max_new_tokens=15, do_sample=True, temperature=1.5, seed=8)
    assert first["generated_text"] == again["generated_text"] != other["generated_text"]
    assert first["details"]["seed"] == 7
    unseeded = batched.generate(PROMPT, max_new_tokens=3, do_sample=True, details=True)
    assert isinstance(unseeded["details"]["seed"], int)  # a random seed, reported as TGI does


def test_return_full_text(batched):
    out = batched.generate(PROMPT, max_new_tokens=5, return_full_text=True)
    assert out["generated_text"].startswith(PROMPT)


def test_health_info_and_metrics(batched):
    import httpx

    assert httpx.get(f"{batched.url}/health").json()["status"] == "ok"  # no API key needed
    info = batched.post("/info", {}).status_code  # wrong method
    assert info == 405
    with batched.client() as c:
        info = c.get("/info").json()
        page = c.get("/metrics").text
    assert info["engine"] == "batched" and info["adapters"] == ["alpha", "beta"]
    assert info["max_total_tokens"] == 512 and info["max_input_tokens"] == 256
    for name in ("tunebench_requests_total", "tunebench_request_duration_seconds_bucket",
                 "tunebench_queue_duration_seconds", "tunebench_time_to_first_token_seconds",
                 "tunebench_inter_token_latency_seconds", "tunebench_batch_size_bucket",
                 "tunebench_generated_tokens", 'tunebench_errors_total{kind="overloaded"}'):
        assert name in page, name


def test_extreme_sampling_values_stay_well_defined(batched):
    greedy = batched.generate(PROMPT, max_new_tokens=8)["generated_text"]
    # A temperature near zero is greedy decoding (vLLM's rule), not an overflow.
    assert batched.generate(PROMPT, max_new_tokens=8, temperature=1e-300)["generated_text"] == greedy
    out = batched.generate(PROMPT, max_new_tokens=8, do_sample=True, temperature=0.001, repetition_penalty=0.01,
                           frequency_penalty=-2, top_k=10**9, top_p=1e-9, seed=3, details=True)
    assert out["details"]["generated_tokens"] >= 1
