"""The load tester picks a served adapter through TGI's `parameters.adapter_id` (its --model with --api tgi),
measured against the real batched server: a loaded adapter answers, an unknown one is refused."""

from __future__ import annotations

import asyncio

from serve_helpers import API_KEY


def load(url: str, model: str | None, stream: bool) -> list:
    from tunebench.loadtest.engine import LoadClient, Target, arrival_offsets
    from tunebench.loadtest.protocols import api_for

    async def go() -> list:
        target = Target(url, api_for("tgi"), API_KEY, model)
        async with LoadClient(target, ["Hello there", "Summarize: a b c"], timeout=30.0, stream=stream,
                              max_new_tokens=4, ignore_eos=True) as client:
            await client.preflight()
            return await client.run(arrival_offsets(20, 0.3, "constant"))

    return asyncio.run(go())


def test_tgi_load_reaches_the_named_adapter(batched):
    for stream in (False, True):
        records = load(batched.url, "alpha", stream)
        assert records and all(r.ok and r.output_tokens == 4 for r in records), [r.error for r in records]
    refused = load(batched.url, "no-such-adapter", stream=False)
    assert refused and all(r.error == "http_4xx" for r in refused)
