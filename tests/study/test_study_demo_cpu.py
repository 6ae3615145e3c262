"""How `tunebench demo` fits the CPU it runs on: bf16 weights only where the CPU has native bf16 instructions,
every core as a PyTorch thread; and the Wilson interval that keeps accuracy honest at 0% and 100%."""

from __future__ import annotations

import math
import os

import pytest

from tunebench.demo import choose_dtype, cpu_flags, use_every_core
from tunebench.evaluate.metrics import proportion_ci

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx avx2 fma {extra}
bugs\t\t: sysret_ss_attrs
"""


@pytest.mark.parametrize(("extra", "dtype"), [("avx512f avx512_bf16", "bfloat16"), ("amx_bf16 amx_tile", "bfloat16"),
                                               ("avx512f", "float32"), ("", "float32")])
def test_bf16_only_with_native_bf16_instructions(tmp_path, extra, dtype):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    chosen, why = choose_dtype("auto", cpu_flags(cpuinfo))
    assert chosen == dtype
    assert ("native bf16" in why) == (dtype == "bfloat16")


def test_no_cpuinfo_means_fp32_and_an_explicit_dtype_wins(tmp_path):
    assert cpu_flags(tmp_path / "missing") == set()
    assert choose_dtype("auto", set())[0] == "float32"
    assert choose_dtype("float32", {"avx512_bf16"}) == ("float32", "--dtype")


def test_threads_follow_omp_num_threads_else_every_core(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert use_every_core() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert use_every_core() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def wilson_by_hand(hits: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_accuracy_interval_is_wilson_and_honest_at_the_boundary():
    assert proportion_ci([1.0] * 48) == pytest.approx([48 / (48 + 1.959963984540054 ** 2), 1.0])
    low, high = proportion_ci([0.0] * 10)
    assert low == 0.0 and high == pytest.approx(3.8415 / 13.8415, rel=1e-4)   # z² / (n + z²)
    assert proportion_ci([1.0] * 16 + [0.0] * 32) == pytest.approx(list(wilson_by_hand(16, 48)))
    assert proportion_ci([], resamples=1000) is None and proportion_ci([1.0], resamples=0) is None


def test_the_demo_study_gets_bf16_by_override_and_keeps_its_float32_cells(monkeypatch, tmp_path):
    import torch
    from rich.console import Console

    from tunebench.config.study import load_study
    from tunebench.demo import cpu_settings, demo_study_file

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))   # leave this process's threads alone
    console = Console(record=True, width=200)
    study = load_study(demo_study_file())
    assert cpu_settings(study, "bfloat16", console) == ["model.dtype=bfloat16"]
    assert cpu_settings(study, "float32", console) == []     # float32 is what `tunebench run` gives: same cells
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(demo_study_file().read_text().replace("model: {name: smollm2-135m-instruct}",
                                                            "model: {name: smollm2-135m-instruct, dtype: float32}"))
    assert cpu_settings(load_study(pinned), "auto", console) == []
    assert cpu_settings(load_study(pinned), "bfloat16", console) == ["model.dtype=bfloat16"]
    text = console.export_text()
    assert "weights in bfloat16 (--dtype)" in text and "weights in float32 (set in the study file)" in text
