"""A hosted model as the baseline: zero- and few-shot evaluation against an OpenAI-compatible endpoint.

The alternative a user weighs against fine-tuning is often a hosted API. `model.endpoint` names one; the
cell's prompts are built as for a local model (with `model.name`'s tokenizer: the hosted model's own, or
the closest open one), sent to `/v1/completions` (or, `model.endpoint_api: chat`, as one user message to
`/v1/chat/completions`) greedily, and scored as generated text (a hosted API gives no label
log-probabilities to score). Its cost is what the API bills: the `usage` token counts it returned × the
per-token prices, recorded in metrics.json's `endpoint` and charged to the eval stage in results.db.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError
from tunebench.rundir import RunDir

REQUEST_TIMEOUT_S = 120.0
RETRIES = 3  # a 429 or 5xx is retried, after 1, 2, 4 s


def api_key(cell: CellConfig) -> str | None:
    name = cell.model.endpoint_api_key_env
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise UserError(f"model.endpoint_api_key_env names {name}, which is not set",
                        f"export {name}=<the API key> before running")
    return key


def base_url(url: str) -> str:
    """http://host:8000, http://host:8000/ and http://host:8000/v1 all mean the same server."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


class EndpointClient:
    """Greedy completions from one endpoint, with the token counts it bills."""

    def __init__(self, cell: CellConfig, max_new_tokens: int, stop: list[str]) -> None:
        import httpx

        m = cell.model
        key = api_key(cell)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # trust_env=False: only the named host is contacted, never a proxy from the environment
        self.http = httpx.Client(base_url=base_url(m.endpoint or ""), headers=headers, timeout=REQUEST_TIMEOUT_S,
                                 trust_env=False)
        self.model, self.chat = m.endpoint_model or m.name, m.endpoint_api == "chat"
        self.max_new_tokens, self.stop = max_new_tokens, stop[:4]  # OpenAI accepts up to 4 stop strings
        self.input_tokens = self.output_tokens = 0

    def close(self) -> None:
        self.http.close()

    def complete(self, prompt: str) -> Any:
        from tunebench.evaluate.generation import Generation

        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_new_tokens, "temperature": 0}
        if self.stop:
            body["stop"] = self.stop
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        obj = self._post("/v1/chat/completions" if self.chat else "/v1/completions", body)
        choice = (obj.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") if self.chat else choice.get("text")
        if not isinstance(text, str):
            raise UserError(f"model.endpoint {self.http.base_url}: the reply has no generated text "
                            f"({str(obj)[:200]})", "check that it is an OpenAI-compatible endpoint (endpoint_api: "
                            "completions or chat)")
        usage = obj.get("usage") or {}
        prompt_tokens, output_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.input_tokens += prompt_tokens
        self.output_tokens += output_tokens
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Generation(text, output_tokens, finish, prompt_tokens)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for attempt in range(RETRIES + 1):
            try:
                resp = self.http.post(path, json=body)
            except httpx.HTTPError as err:
                if attempt == RETRIES:
                    raise UserError(f"model.endpoint {self.http.base_url}{path}: {err}",
                                    "check the URL and that the server is running") from None
            else:
                if resp.status_code == 200:
                    return resp.json()
                if resp.status_code not in (429, 500, 502, 503, 504) or attempt == RETRIES:
                    raise UserError(f"model.endpoint {self.http.base_url}{path} answered {resp.status_code}: "
                                    f"{resp.text[:300]}", "check model.endpoint_model, the API key "
                                    "(model.endpoint_api_key_env) and the endpoint's limits")
            time.sleep(2 ** attempt)
        raise AssertionError("unreachable")


def endpoint_predictor(client: EndpointClient, concurrency: int) -> Any:
    """`runner.predict`'s stand-in: every kept prompt through the endpoint, `concurrency` at a time, in order."""

    def predict(cell: CellConfig, loaded: Any, kept: list[tuple[Any, Any]], labels: Any, stop: list[str],
                advance: Any, content_free: list[str]) -> tuple[list[Any], None]:
        client.stop = stop[:4]

        def one(prompt: str) -> Any:
            result = client.complete(prompt)
            advance(1)
            return result

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(one, [p.text for _, p in kept])), None

    return predict


def evaluate_endpoint(cell: CellConfig, run: RunDir, *, limit: int | None = None, progress: bool = True) -> dict:
    """Evaluate a hosted model on the cell's eval split; writes run.eval_dir(split, method) like a local one."""
    from tunebench.evaluate.loading import Loaded
    from tunebench.evaluate.runner import eval_split, evaluate, max_new_tokens, split_name
    from tunebench.models.loading import load_tokenizer, resolve

    m = cell.model
    cell = cell.model_copy(update={"eval": cell.eval.model_copy(update={"scoring": "generate",
                                                                          "calibrate": "none"})})
    start = time.perf_counter()
    source = resolve(m)
    loaded = Loaded(None, load_tokenizer(source, m), source,
                    notes=[f"hosted model '{m.endpoint_model or m.name}' at {base_url(m.endpoint or '')}, greedy, "
                           f"scored as generated text; prompts built with {m.name}'s tokenizer"])
    client = EndpointClient(cell, max_new_tokens(cell), [])
    try:
        predictor = endpoint_predictor(client, cell.eval.batch_size)
        doc = evaluate(cell, loaded, run.eval_dir(split_name(eval_split(cell)), cell.method), limit=limit,
                       progress=progress, load_seconds=time.perf_counter() - start, predictor=predictor,
                       extra={"endpoint": endpoint_record(cell, client)})
    finally:
        client.close()
    return doc


def endpoint_record(cell: CellConfig, client: EndpointClient) -> Any:
    """metrics.json's `endpoint`, filled in when scoring is done (a callable: the counts grow while it runs)."""
    m = cell.model

    def record() -> dict[str, Any]:
        usd = (client.input_tokens * m.endpoint_input_usd_per_1m
               + client.output_tokens * m.endpoint_output_usd_per_1m) / 1e6
        return {"url": base_url(m.endpoint or ""), "model": client.model, "api": m.endpoint_api,
                "input_tokens": client.input_tokens, "output_tokens": client.output_tokens,
                "input_usd_per_1m": m.endpoint_input_usd_per_1m, "output_usd_per_1m": m.endpoint_output_usd_per_1m,
                "usd": usd}

    return record
