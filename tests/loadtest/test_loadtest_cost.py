"""Inference cost: the original study's formula and its figures."""

from __future__ import annotations

import pytest

from tunebench.cost import Price, lookup
from tunebench.loadtest.inference_cost import cost_at_max_rate, inference_cost


def test_original_study_figures():
    """135 requests/s × ~120 tokens per request at $1.624/h (g5.4xlarge) ≈ $0.00003 per 1K tokens."""
    price = lookup("g5.4xlarge")
    assert price.price_per_hour == 1.624
    cost = inference_cost(price, throughput_rps=135, input_tokens=100, output_tokens=20)
    assert cost["tokens_per_hour"] == pytest.approx(135 * 120 * 3600)
    assert cost["cost_per_1k_tokens"] == pytest.approx(1.624 / (135 * 120 * 3.6))
    assert round(cost["cost_per_1k_tokens"], 5) == 0.00003


def test_per_kind_and_per_request_costs():
    cost = inference_cost(Price("p", "gpu", 1, 3.6, "test", "-"), throughput_rps=10, input_tokens=80,
                          output_tokens=20)
    # 3.6 $/h over 36,000 requests/h: $0.1 per 1K requests; 3.6M tokens/h: $0.001 per 1K tokens.
    assert cost["cost_per_1k_requests"] == pytest.approx(0.1)
    assert cost["cost_per_1k_tokens"] == pytest.approx(0.001)
    assert cost["cost_per_1k_input_tokens"] == pytest.approx(3.6 / (10 * 80 * 3.6))
    assert cost["cost_per_1k_output_tokens"] == pytest.approx(3.6 / (10 * 20 * 3.6))


def test_no_cost_without_price_or_passing_rate():
    price = Price("p", "gpu", 1, 1.0, "test", "-")
    assert cost_at_max_rate(None, {"offered_rps": 4, "throughput_rps": 4}, {}) is None
    assert cost_at_max_rate(price, {"offered_rps": None}, None) is None
    cost = cost_at_max_rate(price, {"offered_rps": 4, "throughput_rps": 3.9},
                            {"input_tokens_mean": 100, "output_tokens_mean": 20})
    assert cost["throughput_rps"] == 3.9 and cost["tokens_per_request"] == 120
