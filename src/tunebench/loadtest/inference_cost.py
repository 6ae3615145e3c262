"""Inference cost from a load test, with the original study's formula.

tokens per hour = requests/s × mean (input + output) tokens per request × 3600
cost per 1K tokens = price per hour ÷ (tokens per hour ÷ 1000)

The rate is the throughput (successful requests/s) achieved at the maximum sustainable rate. The per-1K
input and per-1K output figures charge the whole hour to that kind of token, as price sheets do. A hosted
API priced per token (USD per 1M input and per 1M output tokens) costs the same per token at any rate.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.cost import Price, cost_per_1k_tokens, resolve_price


@dataclass(frozen=True)
class TokenPrices:
    """Per-token pricing, as hosted APIs charge."""

    input_usd_per_1m: float
    output_usd_per_1m: float
    name: str = "per-token"


def inference_cost(price: Price, throughput_rps: float, input_tokens: float, output_tokens: float) -> dict[str, Any]:
    tokens_per_request = input_tokens + output_tokens
    per_hour = price.price_per_hour
    return {
        "instance": price.name,
        "price_per_hour": per_hour,
        "price_source": price.source,
        "throughput_rps": throughput_rps,
        "input_tokens_per_request": input_tokens,
        "output_tokens_per_request": output_tokens,
        "tokens_per_request": tokens_per_request,
        "tokens_per_hour": throughput_rps * tokens_per_request * 3600.0,
        "cost_per_1k_tokens": cost_per_1k_tokens(per_hour, throughput_rps, tokens_per_request),
        "cost_per_1k_input_tokens": cost_per_1k_tokens(per_hour, throughput_rps, input_tokens),
        "cost_per_1k_output_tokens": cost_per_1k_tokens(per_hour, throughput_rps, output_tokens),
        "cost_per_1k_requests": cost_per_1k_tokens(per_hour, throughput_rps, 1.0),
        "pricing": "per hour",
    }


def token_priced_cost(prices: TokenPrices, throughput_rps: float, input_tokens: float,
                      output_tokens: float) -> dict[str, Any]:
    """A hosted API's cost: it bills tokens, not hours, so the cost per token does not depend on the rate.

    price_per_hour is what it would bill in an hour at `throughput_rps`: the figure to set beside a
    self-hosted server's hourly price."""
    per_request = (input_tokens * prices.input_usd_per_1m + output_tokens * prices.output_usd_per_1m) / 1e6
    tokens = input_tokens + output_tokens
    return {
        "instance": prices.name,
        "price_per_hour": per_request * throughput_rps * 3600.0,
        "price_source": f"${prices.input_usd_per_1m:g} per 1M input tokens, ${prices.output_usd_per_1m:g} per 1M "
                        "output tokens",
        "pricing": "per token",
        "throughput_rps": throughput_rps,
        "input_tokens_per_request": input_tokens,
        "output_tokens_per_request": output_tokens,
        "tokens_per_request": tokens,
        "tokens_per_hour": throughput_rps * tokens * 3600.0,
        "cost_per_1k_tokens": per_request / tokens * 1000 if tokens else float("inf"),
        "cost_per_1k_input_tokens": prices.input_usd_per_1m / 1000,
        "cost_per_1k_output_tokens": prices.output_usd_per_1m / 1000,
        "cost_per_1k_requests": per_request * 1000,
    }


def price_for(instance: str | None, price_per_hour: float | None, local_server: bool) -> Price | None:
    """The price to charge: explicit, a named instance, or (for a server on this machine) this device's."""
    if price_per_hour is None and instance is None and not local_server:
        return None
    device = local_device() if price_per_hour is None and instance is None else None
    return resolve_price(instance, price_per_hour, device)


def local_device() -> str:
    """This machine's device as rundir.device_name names it; without an NVIDIA driver it is the CPU, and
    knowing that needs no torch import (seconds on a busy 2-core machine)."""
    if shutil.which("nvidia-smi") is None and not Path("/proc/driver/nvidia").exists():
        return "cpu"
    from tunebench.rundir import device_name

    return device_name()


def cost_at_max_rate(price: Price | None, best: dict[str, Any], mean: dict[str, Any] | None,
                     tokens: TokenPrices | None = None) -> dict[str, Any] | None:
    """Costs at the maximum sustainable rate; None without a price or a passing rate."""
    if best.get("offered_rps") is None or mean is None:
        return None
    if tokens is not None:
        return token_priced_cost(tokens, best["throughput_rps"], mean.get("input_tokens_mean") or 0.0,
                                 mean.get("output_tokens_mean") or 0.0)
    if price is None:
        return None
    return inference_cost(price, best["throughput_rps"], mean.get("input_tokens_mean") or 0.0,
                          mean.get("output_tokens_mean") or 0.0)
