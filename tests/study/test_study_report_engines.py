"""The report's engine comparison (issue 22): side by side when a cell ran on more than one server."""

from __future__ import annotations

from test_study_report import study_dir  # noqa: F401  (the known store: prompting and LoRA cells)

from tunebench.study.report import study_report, to_markdown
from tunebench.study.store import Store

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
    assert "| redpajama-3b | LoRA | vllm 0.11.0 | 20.00 |" in text  # the main table names the version too
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
