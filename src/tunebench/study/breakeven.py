"""Break-even: after how many requests does fine-tuning pay for itself?

Serving a request costs (prompt tokens + output tokens) × the cost per token, the original study's formula
(cost per 1K tokens = price per hour ÷ thousands of tokens served per hour). Few-shot prompts carry
examples, zero-shot prompts carry instructions and the label list, the fine-tuned format carries neither:
the fine-tuned model is cheaper per request, and its training cost is paid back after

    requests = training cost ÷ (cost per request of the prompting method − cost per request fine-tuned)

Token counts are measured on the evaluated prompts (mean with a 95% interval); the cost per token is the
load test's when the study has one, else an assumption the report states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @classmethod
    def exact(cls, value: float) -> Interval:
        return cls(value, value, value)

    def scaled(self, factor: float) -> Interval:
        return Interval(self.value * factor, self.low * factor, self.high * factor)

    def __add__(self, other: Interval) -> Interval:
        return Interval(self.value + other.value, self.low + other.low, self.high + other.high)

    def __sub__(self, other: Interval) -> Interval:
        return Interval(self.value - other.value, self.low - other.high, self.high - other.low)


@dataclass(frozen=True)
class TokenPrice:
    """What one token costs to serve, and where that number comes from."""

    usd_per_1k_tokens: float
    source: str            # "load test (...)" or the stated assumption


def token_price_from_throughput(price_per_hour: float, tokens_per_second: float) -> float:
    """USD per 1K tokens for a device at `price_per_hour` serving `tokens_per_second`."""
    if tokens_per_second <= 0:
        return math.inf
    return price_per_hour / (tokens_per_second * 3600.0 / 1000.0)


def cost_per_1k_requests(tokens_per_request: Interval, price: TokenPrice) -> Interval:
    """USD for 1,000 requests of this many (prompt + output) tokens each."""
    return tokens_per_request.scaled(price.usd_per_1k_tokens)   # 1000 requests × tokens/1000 × usd per 1K


@dataclass(frozen=True)
class Payback:
    requests: float | None          # None: never (fine-tuned requests are not cheaper)
    low: float | None               # fewest requests within the intervals
    high: float | None              # most requests within the intervals (None: maybe never)
    saving_per_1m: Interval         # USD saved per million requests


def payback(training_usd: float, prompting_per_1k: Interval, finetuned_per_1k: Interval) -> Payback:
    """Requests after which the training cost is recovered by cheaper requests."""
    saving_per_request = (prompting_per_1k - finetuned_per_1k).scaled(1 / 1000)
    saving_per_1m = saving_per_request.scaled(1_000_000)

    def requests(saving: float) -> float | None:
        if saving <= 0:
            return None
        return training_usd / saving

    return Payback(requests=requests(saving_per_request.value), low=requests(saving_per_request.high),
                   high=requests(saving_per_request.low), saving_per_1m=saving_per_1m)


# ---------------------------------------------------------------- multi-LoRA: N adapters on one base, or N merged


@dataclass(frozen=True)
class Deployment:
    replicas: int            # servers running
    usd_per_hour: float

    def usd_per_1k_requests(self, total_rps: float) -> float:
        return self.usd_per_hour / (total_rps * 3.6) if total_rps > 0 else math.inf  # 3600 s / 1000 requests


def merged_deployments(n: int, total_rps: float, merged_max_rps: float, price_per_hour: float) -> Deployment:
    """N fine-tuned models merged into their own weights: each its own deployment, at least one server each,
    sized for its share of the traffic at the merged model's max sustainable rate."""
    per_model = math.ceil(total_rps / n / merged_max_rps - 1e-9) if merged_max_rps > 0 else 1
    replicas = n * max(1, per_model)
    return Deployment(replicas, replicas * price_per_hour)


def multi_lora_deployment(total_rps: float, adapters_max_rps: float, price_per_hour: float) -> Deployment:
    """N adapters unmerged on one base (vLLM/SGLang multi-LoRA): every server holds every adapter, so the
    traffic of all N shares one pool, sized at the unmerged-adapter max sustainable rate."""
    replicas = max(1, math.ceil(total_rps / adapters_max_rps - 1e-9)) if adapters_max_rps > 0 else 1
    return Deployment(replicas, replicas * price_per_hour)
