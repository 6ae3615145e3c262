"""Price table and the arithmetic of cost: to train (wall hours × price) and to serve (per 1K tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from tunebench.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Price:
    name: str
    gpu: str
    gpus: int
    price_per_hour: float
    source: str
    date: str
    # Spot (preemptible): None where the table has no dated public source for it; never filled in by a guess
    spot_price_per_hour: float | None = None
    spot_source: str | None = None
    spot_date: str | None = None


@cache
def price_table() -> dict[str, Price]:
    text = resources.files("tunebench.cost").joinpath("prices.yaml").read_text()
    return {name: Price(name=name, **fields) for name, fields in yaml.safe_load(text).items()}


def lookup(instance: str) -> Price:
    table = price_table()
    if instance not in table:
        raise UserError(
            f"unknown instance '{instance}' in the price table",
            f"{did_you_mean(instance, list(table))}; or give cost.price_per_hour / --price-per-hour",
        )
    return table[instance]


def instance_for_device(device_name: str | None) -> str:
    """The price-table entry that best matches a device name such as 'NVIDIA H200' (CPU: 'cpu-2core')."""
    if not device_name:
        return "cpu-2core"
    name = device_name.lower()
    for key, needle in (("h200", "h200"), ("h100", "h100"), ("a10g", "a10g"), ("l4", "l4"), ("t4", "t4")):
        if needle in name:
            return key
    if "a100" in name:
        return "a100-80gb" if "80" in name else "a100-40gb"
    if "cpu" in name:
        return "cpu-2core"
    raise UserError(
        f"no price known for device '{device_name}'",
        "set cost.instance to an entry of the price table (tunebench models --prices) or cost.price_per_hour",
    )


def resolve_price(instance: str | None, price_per_hour: float | None, device_name: str | None) -> Price:
    """An explicit price wins, then a named instance, then the entry matching the device we ran on."""
    if price_per_hour is not None:
        return Price("custom", device_name or "unknown", 1, price_per_hour, "given by the user", "-")
    return lookup(instance or instance_for_device(device_name))


def training_cost(wall_seconds: float, price: Price) -> float:
    return wall_seconds / 3600.0 * price.price_per_hour


def cost_per_1k_tokens(price_per_hour: float, requests_per_second: float, tokens_per_request: float) -> float:
    """The original study's formula: price per hour over thousands of tokens served per hour."""
    tokens_per_hour = requests_per_second * tokens_per_request * 3600.0
    if tokens_per_hour <= 0:
        return float("inf")
    return price_per_hour / (tokens_per_hour / 1000.0)
