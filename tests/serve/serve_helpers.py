"""Helpers for the serving tests: real servers on 127.0.0.1 (uvicorn in a thread) and how to talk to them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API_KEY = "test-key-123"
LONG = 440  # tokens a "long" request generates (the tiny model's context is 512)


def make_adapter(model_dir: Path, out: Path, seed: int, targets: list[str]) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=targets,
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out



@dataclass
class Live:
    """A running server and how to talk to it."""

    url: str
    state: Any
    key: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, **kwargs: Any) -> Any:
        import httpx

        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> Any:
        with self.client() as c:
            return c.post(path, json=body, **kwargs)

    def metrics(self) -> dict[str, float]:
        from tunebench.serve.metrics import parse_metrics

        with self.client() as c:
            return parse_metrics(c.get("/metrics").text)

    def generate(self, inputs: str, **parameters: Any) -> dict[str, Any]:
        response = self.post("/generate", {"inputs": inputs, "parameters": parameters})
        assert response.status_code == 200, response.text
        return response.json()


def start(model_dir: Path, adapters: dict[str, Path] | None = None, *, run: Path | None = None,
          api_key: str | None = None, **server: Any) -> tuple[Any, Live]:
    from tunebench.serve.app import build_state
    from tunebench.serve.loading import load_served
    from tunebench.serve.options import AdapterSpec, ModelOptions, ServerOptions
    from tunebench.serve.server import BackgroundServer

    specs = tuple(AdapterSpec(n, p) for n, p in (adapters or {}).items())
    opts = ModelOptions(model=None if run else str(model_dir), run=run, adapters=specs)
    defaults = {"max_new_tokens": 480, "max_input_tokens": 256, "max_concurrency": 16, "max_queue": 64,
                "frontend": "split"}
    options = ServerOptions(api_key=api_key, **{**defaults, **server})
    if options.frontend == "split":  # the engine in a process of its own, as `tunebench serve` runs it
        from tunebench.serve.client import build_split_state

        state = build_split_state(opts, options)
    else:
        state = build_state(load_served(opts), options)
    background = BackgroundServer(state).start()
    return background, Live(background.url, state, api_key)



def sse_events(lines: Any) -> list[Any]:
    """The JSON payloads of a server-sent event stream ('[DONE]' kept as a string)."""
    events = []
    for line in lines:
        if line.startswith("data:"):
            payload = line[len("data:"):].strip()
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def load(model_dir):
    """The served model (`tunebench.serve.loading.load_served`) of a tiny model directory."""
    from tunebench.serve.loading import load_served
    from tunebench.serve.options import ModelOptions

    return load_served(ModelOptions(model=str(model_dir)))
