"""The report's engine comparison (issue 22): side by side when a cell ran on more than one server."""

from __future__ import annotations

import pytest
from test_study_report import study_dir  # noqa: F401  (the known store: prompting and LoRA cells)

from tunebench.study.report import study_report, to_markdown
from tunebench.study.store import Cost, Metric, Store

ROW = {"throughput_rps": 3.9, "p90_s": 0.5, "tokens_per_request": 120.0, "price_per_hour": 0.36,
       "instance": "cpu-2core", "usd_per_1k_requests": None, "result": None, "pricing": "per hour"}


def add_engines(where, rows: list[dict]) -> None:
    with Store.open(where) as store:
        store.stage_started("lora0", "loadtest")
        store.stage_done("lora0", "loadtest", seconds=5.0, metrics=[], inference=[{**ROW, **r} for r in rows])


def test_engines_side_by_side_with_their_break_even(study_dir):  # noqa: F811
    add_engines(study_dir, [
        {"engine": "batched", "max_rps": 4.0, "usd_per_1k_tokens": 0.001, "engine_version": "tunebench 0.1.0",
         "engine_command": "python -m tunebench.cli serve --run x", "output_tokens_per_s": 7.8},
        {"engine": "vllm", "max_rps": 20.0, "usd_per_1k_tokens": 0.0002, "engine_version": "0.11.0",
         "engine_command": "vllm serve /m --max-num-seqs 32", "served": "adapters", "adapters": 1,
         "output_tokens_per_s": 39.0, "ttft_p90_s": 0.05}])
    text = to_markdown(study_report(study_dir, study_dir / "plots"), study_dir)
    assert "### Engines compared" in text
    assert "| redpajama-3b | LoRA | vllm | 20.00 |" in text and "| vllm 0.11.0 |" in text  # version, last column
    # few-shot (998 + 2 tokens) vs LoRA (98 + 2 tokens), training $0.36 (mean of the seeds): at $0.001 per 1K
    # tokens it pays back after 0.36 / (0.9 / 1000) = 400 requests; on vLLM at $0.0002, after 2,000
    assert ("| batched | tunebench 0.1.0 | 4.00 | 7.8 | 0.500 | – | $0.001 | 1,800 (vs zero-shot); 400 (vs few-shot) "
            "| tunebench serve; per hour |") in text
    assert "9,000 (vs zero-shot); 2,000 (vs few-shot)" in text
    assert "| vllm | 0.11.0 | 20.00 | 39.0 | 0.500 | 0.050 |" in text
    assert "1 LoRA adapter(s), unmerged; per hour" in text
    assert "vllm: `vllm serve /m --max-num-seqs 32`" in text


def test_one_engine_gets_no_comparison(study_dir):  # noqa: F811
    add_engines(study_dir, [{"engine": "batched", "max_rps": 4.0, "usd_per_1k_tokens": 0.001}])
    text = to_markdown(study_report(study_dir, study_dir / "plots"), study_dir)
    assert "Engines compared" not in text and "| batched |" in text


def test_multi_lora_pools_adapters_where_merging_needs_a_server_each():
    from tunebench.study import breakeven as be

    # one merged server sustains 4 req/s, one unmerged-multi-LoRA server 3 req/s, $0.36/h each
    light = be.merged_deployments(4, 4.0, 4.0, 0.36), be.multi_lora_deployment(4.0, 3.0, 0.36)
    assert (light[0].replicas, light[1].replicas) == (4, 2)  # 1 req/s each still needs a server each
    heavy = be.merged_deployments(4, 16.0, 4.0, 0.36), be.multi_lora_deployment(16.0, 3.0, 0.36)
    assert (heavy[0].replicas, heavy[1].replicas) == (4, 6)  # saturated: the unmerged overhead costs more
    assert light[1].usd_per_1k_requests(4.0) == pytest.approx(0.72 / (4.0 * 3.6))


def test_the_break_even_section_prices_multi_lora_and_the_hosted_baseline(study_dir):  # noqa: F811
    from test_study_report import add_cell, finish_eval

    add_engines(study_dir, [{"engine": "vllm", "max_rps": 3.0, "usd_per_1k_tokens": 0.001, "served": "adapters",
                             "adapters": 1}])
    with Store.open(study_dir) as store:
        store.stage_started("zs", "loadtest")
        store.stage_done("zs", "loadtest", seconds=5.0, metrics=[],
                         inference=[{**ROW, "engine": "vllm", "max_rps": 4.0, "usd_per_1k_tokens": 0.002,
                                     "served": "base"}])
        add_cell(store, "hosted", "gpt-x (hosted)", "zero_shot")
        finish_eval(store, "hosted", 0.5, 298.0)
        store.stage_done("hosted", "eval", seconds=10.0, metrics=[
            Metric("accuracy", 0.5, 0.4, 0.6, 50), Metric("prompt_tokens_mean", 298.0, 296.0, 300.0, 50)],
            cost=Cost(wall_seconds=10.0, device="hosted", instance="gpt-x at http://api", usd=0.05))
    text = to_markdown(study_report(study_dir, study_dir / "plots"), study_dir)
    assert "### Multi-LoRA: N adapters on one base, or N merged deployments" in text
    assert "unmerged adapters sustain 3 req/s, the merged/base model 4 req/s (75%)" in text
    n4 = next(line for line in text.splitlines() if line.startswith("| 4 |"))
    assert "4 × $0.360/h = $1.44/h" in n4 and "2 × $0.360/h = $0.720/h" in n4 and "6 × $0.360/h = $2.16/h" in n4
    # the hosted model billed $0.05 for 50 requests ($1.00 per 1K); LoRA costs $0.10 per 1K (its serving
    # price) after $0.36 of training: paid back after 0.36 / (0.90 / 1000) = 400 requests
    assert "### A hosted model as the baseline" in text
    assert "| gpt-x (hosted), zero-shot | 50.0 [40.0, 60.0] n=50 | $1.00 | – | – |" in text
    assert "| redpajama-3b, LoRA |" in text and "| $0.360 | 400 |" in text
