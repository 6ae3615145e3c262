"""benchmarks/admission_profile.py's load-generator check: the real loadtest path against a null streaming server
(chunked SSE, one token per tick) keeps up with the offered rate and counts every streamed token."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_the_load_generator_keeps_up_with_a_null_streaming_server(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("admission_profile", None)
    import admission_profile

    line = admission_profile.loadgen(rate=40.0, tokens=8, duration=1.5, warmup=0.5, tick_ms=5.0)
    assert line["success_ratio"] == 1.0
    assert line["achieved_over_offered"] >= 0.95
    assert line["itl_p90_s"] is not None and line["itl_p90_s"] < 0.5  # tokens arrived as a stream
