"""Profiler summaries for benchmarks/train_throughput.py: GPU busy vs wall time, idle gaps, top kernels, and
(with recorded shapes) device time per step split into LoRA's skinny matmuls, other matmuls, attention, the
optimizer and the rest, plus the CPU time spent fetching batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def merged_busy(intervals: list[tuple[float, float]]) -> tuple[float, list[float]]:
    """Total covered time of (start, end) intervals, and the idle gaps between them, both in µs."""
    busy, gaps = 0.0, []
    end = None
    for s, e in sorted(intervals):
        if end is None or s > end:
            if end is not None:
                gaps.append(s - end)
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy, gaps


def write_profile(prof: Any, wall_s: float, steps: int, spec: dict[str, Any]) -> None:
    """Top CUDA kernels by time, GPU busy vs wall, idle gaps and CPU op time, for `steps` optimizer steps."""
    from torch.autograd import DeviceType

    events = prof.events()
    kernels = [(e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA]
    busy_us, gaps = merged_busy(kernels)
    averages = prof.key_averages()
    if not kernels:  # device events not listed one by one: their summed self time, without gaps
        busy_us = sum(getattr(k, "self_device_time_total", 0.0) for k in averages)
    table = averages.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70)
    cpu_table = averages.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=70)
    summary = {
        "profile": spec["name"], "steps": steps, "wall_s": round(wall_s, 4),
        "step_wall_ms": round(1e3 * wall_s / steps, 2), "gpu_busy_ms_per_step": round(busy_us / 1e3 / steps, 2),
        "gpu_busy_fraction": round(busy_us / 1e6 / wall_s, 4), "kernels": len(kernels),
        "kernels_per_step": len(kernels) // steps,
        "idle_gaps_over_100us": sum(g > 100 for g in gaps), "idle_ms_in_gaps_over_100us":
            round(sum(g for g in gaps if g > 100) / 1e3, 2),
        "largest_gaps_ms": [round(g / 1e3, 2) for g in sorted(gaps, reverse=True)[:10]],
    }
    if spec.get("profile_after"):
        summary["breakdown_ms_per_step"] = breakdown(prof, steps)
    print(json.dumps(summary), flush=True)
    if spec["out"]:
        out = Path(spec["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"profile-{spec['name']}.txt").write_text(
            json.dumps(summary, indent=2) + "\n\nTop kernels/ops by self CUDA time:\n" + table
            + "\n\nTop ops by self CPU time:\n" + cpu_table + "\n")


def breakdown(prof: Any, steps: int) -> dict[str, float]:
    """Device time per step by what it is for: LoRA's rank-r matmuls (an input with a dimension of at most 64)
    vs the other matmuls, attention, the optimizer, and the CPU time spent fetching batches."""
    parts = dict.fromkeys(("lora_matmuls", "other_matmuls", "attention", "optimizer", "elementwise_and_rest"), 0.0)
    dataloader_cpu = 0.0
    for item in prof.key_averages(group_by_input_shape=True):
        device = getattr(item, "self_device_time_total", 0.0) / 1e3
        name = item.key
        if "DataLoader" in name:
            dataloader_cpu += item.cpu_time_total / 1e3
        if not device or not name.startswith("aten::"):  # kernels are listed too, under their own names
            continue
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::addmm_"):
            skinny = any(len(shape) == 2 and min(shape) <= 64 for shape in (item.input_shapes or []) if shape)
            parts["lora_matmuls" if skinny else "other_matmuls"] += device
        elif "attention" in name or "sdpa" in name or "flash" in name:
            parts["attention"] += device
        elif "adam" in name or "foreach" in name or "vector_norm" in name:
            parts["optimizer"] += device
        else:
            parts["elementwise_and_rest"] += device
    out = {k: round(v / steps, 2) for k, v in parts.items()}
    out["dataloader_cpu"] = round(dataloader_cpu / steps, 2)
    return out
