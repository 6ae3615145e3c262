"""The OpenAPI schema is served and valid, and schemathesis, driven by it, finds no 5xx (a bounded number of cases)."""

from __future__ import annotations

import pytest
from serve_helpers import API_KEY, start

EXAMPLES = 8  # per operation and mode: enough to reach every field's edges, fast on two cores


@pytest.fixture(scope="module")
def fuzzed(tiny_llama_dir, lora_adapters):
    """Small limits keep every generated request short: a huge max_new_tokens is a quick 422, not a long run."""
    background, live = start(tiny_llama_dir, lora_adapters, api_key=API_KEY, max_new_tokens=8, max_input_tokens=64)
    yield live
    background.stop()


@pytest.fixture(scope="module")
def schema(fuzzed):
    import schemathesis

    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json", headers=fuzzed.headers)


def test_openapi_schema_is_served_and_valid(schema):
    schema.validate()  # against the OpenAPI meta-schema
    paths = set(schema.raw_schema["paths"])
    assert {"/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions", "/v1/models",
            "/predict", "/classify", "/summarize", "/health", "/info", "/metrics"} <= paths
    assert "HTTPBearer" in schema.raw_schema["components"]["securitySchemes"]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzing_finds_no_server_error(fuzzed, schema, mode):
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
        def call(case):
            response = case.call(base_url=fuzzed.url, headers=fuzzed.headers, timeout=60)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} {case.body!r:.200} -> {response.status_code} "
                                f"{response.text[:200]}")

        try:
            call()
        except Unsatisfiable:
            assert mode == "negative"  # a route without parameters has no invalid input to make
    assert not failures, "\n".join(failures)
