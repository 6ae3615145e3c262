"""A trivial LLM server with a known delay, for load-test tests: TGI, OpenAI and naive routes.

Run as a script (in its own process, so its timing does not share the test's event loop):

    python loadtest_fake_server.py --delay 0.05 [--capacity K] [--tokens N] [--token-delay S]
        [--status-every N:CODE] [--bad-json-every N] [--hang-every N] [--no-details]

It prints "PORT <n>" once listening on 127.0.0.1. Every request is served after `--delay` seconds; with
`--capacity K` at most K are served at a time (the rest wait in line), so it saturates at K / delay
requests/s. Error injection counts POST requests from 1: every Nth gets the status, bad JSON, or hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys

from aiohttp import web

WORD = "tok "


class FakeLlm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.slots = asyncio.Semaphore(args.capacity) if args.capacity else None
        self.posts = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def serve_time(self) -> None:
        if self.slots is None:
            await asyncio.sleep(self.args.delay)
            return
        async with self.slots:
            await asyncio.sleep(self.args.delay)

    async def injected(self) -> web.Response | None:
        """The injected failure for this POST, if any."""
        self.posts += 1
        n, a = self.posts, self.args
        if a.status_every and n % a.status_every[0] == 0:
            return web.json_response({"error": "injected"}, status=a.status_every[1])
        if a.bad_json_every and n % a.bad_json_every == 0:
            return web.Response(text="{not json", content_type="application/json")
        if a.hang_every and n % a.hang_every == 0:
            await asyncio.sleep(3600)
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            failure = await self.injected()
            if failure is not None:
                return failure
            await self.serve_time()
            return await self.reply(request, body)
        finally:
            self.in_flight -= 1

    async def reply(self, request: web.Request, body: dict) -> web.StreamResponse:
        n = self.args.tokens
        details = None if self.args.no_details else {"finish_reason": "length", "generated_tokens": n}
        if request.path == "/generate":
            return web.json_response({"generated_text": WORD * n, "details": details})
        if request.path == "/predict":
            return web.json_response({"prediction": WORD * n})
        if request.path == "/v1/completions" and not body.get("stream"):
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n}
            return web.json_response({"choices": [{"text": WORD * n, "index": 0}], "usage": usage})
        return await self.stream(request, body)

    async def stream(self, request: web.Request, body: dict) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n, tgi = self.args.tokens, request.path == "/generate_stream"
        for i in range(n):
            if i:
                await asyncio.sleep(self.args.token_delay)
            last = i == n - 1
            if tgi:
                event = {"index": i + 1, "token": {"id": 5, "text": WORD, "logprob": -0.1, "special": False},
                         "generated_text": WORD * n if last else None,
                         "details": {"finish_reason": "length", "generated_tokens": n} if last else None}
            else:
                event = {"choices": [{"text": WORD, "index": 0, "finish_reason": "length" if last else None}]}
            await resp.write(f"data:{json.dumps(event)}\n\n".encode())
        if tgi and n == 0:  # EOS at once: TGI's one final event carries the special token and the empty text
            event = {"index": 1, "token": {"id": 0, "text": "</s>", "logprob": -0.1, "special": True},
                     "generated_text": "", "details": {"finish_reason": "eos_token", "generated_tokens": 0}}
            await resp.write(f"data:{json.dumps(event)}\n\n".encode())
        if not tgi:
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n}
            await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"posts": self.posts, "max_in_flight": self.max_in_flight})


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--capacity", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--status-every", type=lambda s: tuple(int(x) for x in s.split(":")), default=None)
    parser.add_argument("--bad-json-every", type=int, default=0)
    parser.add_argument("--hang-every", type=int, default=0)
    parser.add_argument("--no-details", action="store_true")
    return parser.parse_args(argv)


async def main(argv: list[str]) -> None:
    llm = FakeLlm(parse_args(argv))
    app = web.Application()
    app.router.add_get("/", lambda r: web.Response(text="fake llm"))
    app.router.add_get("/health", lambda r: web.Response(text="ok"))
    app.router.add_get("/v1/models", lambda r: web.json_response({"data": [{"id": "fake-model"}]}))
    app.router.add_get("/stats", llm.stats)
    for path in ("/generate", "/generate_stream", "/v1/completions", "/predict"):
        app.router.add_post(path, llm.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", llm.args.port), backlog=4096)
    await web.SockSite(runner, sock).start()
    print(f"PORT {sock.getsockname()[1]}", flush=True)  # the port the OS chose for --port 0
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
