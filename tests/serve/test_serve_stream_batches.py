"""Tokens that piled up while the front end was busy go out as one write, with the same events in order."""

from __future__ import annotations

import asyncio
import json

import pytest

from tunebench.serve.requests import Completion, GenerationFailed, RequestHandle, TokenEvent


def _token(i: int) -> TokenEvent:
    return TokenEvent(i, f" t{i}", -0.5, False)


def _completion(n: int) -> Completion:
    return Completion("".join(f" t{i}" for i in range(n)), "length", n, 3, None, None,
                      tuple(_token(i) for i in range(n)))


def test_batches_hand_over_everything_queued_and_stop_at_the_completion():
    async def go() -> list[list]:
        handle = RequestHandle()
        for i in range(3):
            handle._queue.put_nowait(_token(i))
        out = []
        async for items in handle.batches():
            out.append(items)
            if len(out) == 1:  # the rest arrives later, one at a time
                handle._queue.put_nowait(_token(3))
                asyncio.get_running_loop().call_soon(handle._queue.put_nowait, _completion(4))
        return out

    batches = asyncio.run(go())
    assert [len(b) for b in batches] == [3, 1, 1]
    assert isinstance(batches[-1][0], Completion)


def test_batches_yield_the_tokens_before_a_failure_then_raise_it():
    async def go() -> tuple[list, GenerationFailed | None]:
        handle = RequestHandle()
        handle._queue.put_nowait(_token(0))
        handle._queue.put_nowait(GenerationFailed("internal", "the engine process exited"))
        seen = []
        try:
            async for items in handle.batches():
                seen.append(items)
        except GenerationFailed as err:
            return seen, err
        return seen, None

    seen, err = asyncio.run(go())
    assert [len(b) for b in seen] == [1] and err is not None and err.kind == "internal"


@pytest.mark.parametrize("spread", [False, True])
def test_a_coalesced_tgi_stream_has_the_same_events(spread):
    from tunebench.serve.schemas import TgiRequest
    from tunebench.serve.tgi_api import stream_events

    async def go() -> list[str]:
        handle = RequestHandle()
        body = TgiRequest(inputs="hi", parameters={"max_new_tokens": 4})
        items = [*(_token(i) for i in range(4)), _completion(4)]
        chunks = []
        if not spread:  # all queued before the stream starts: one write
            for item in items:
                handle._queue.put_nowait(item)
        gen = stream_events(body, handle, 3)
        if spread:
            async def feed() -> None:
                for item in items:
                    handle._queue.put_nowait(item)
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
            feeder = asyncio.get_running_loop().create_task(feed())
        async for chunk in gen:
            chunks.append(chunk)
        if spread:
            await feeder
        return chunks

    chunks = asyncio.run(go())
    assert len(chunks) == (1 if not spread else 4)
    events = [json.loads(e[5:]) for e in "".join(chunks).split("\n\n") if e]
    assert [e["index"] for e in events] == [1, 2, 3, 4]
    assert [e["token"]["text"] for e in events] == [" t0", " t1", " t2", " t3"]
    assert events[-1]["generated_text"] == " t0 t1 t2 t3" and events[-1]["details"]["generated_tokens"] == 4
    assert all(e["generated_text"] is None for e in events[:-1])
