"""What `tunebench run --dry-run` checks before anything runs: every cell's model and data source exist.

A preset, a local model directory (its config.json), a built-in data set and a local data file are checked for
real. A hub id (a model or a data set) can only be checked for its form without the network, unless it is in the
local cache already: the dry run says which were checked how, and a run loads them then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.errors import UserError

HUB_NOTE = "a hub id not in the local cache: only its form (org/name) was checked offline; the run downloads it"


def preflight(cells: list[Any]) -> list[str]:
    """One note per model or data source that could not be fully checked; a UserError for one that is wrong."""
    notes: dict[str, str] = {}
    for cell in cells:
        cfg = getattr(cell, "config", cell)
        note = check_model(cfg.model)
        if note:
            notes.setdefault(f"model {cfg.model.name}", note)
        note = check_data(cfg.data)
        if note:
            notes.setdefault(f"data {cfg.data.source}", note)
    return [f"{what}: {note}" for what, note in notes.items()]


def check_model(model: Any) -> str | None:
    from tunebench.models.loading import looks_like_path, resolve
    from tunebench.models.presets import EMBEDDED, PRESETS

    name = model.name
    if name in PRESETS:
        if name == EMBEDDED or model.random_weights:
            return None  # shipped, or built from the preset's numbers: nothing to fetch
        return None if in_hub_cache(PRESETS[name].hf_id, model.revision) else HUB_NOTE
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise UserError(f"model.name: '{name}' has no config.json" if path.exists() else
                            f"model.name: the model directory '{name}' does not exist",
                            "point model.name at a directory written by save_pretrained, a preset "
                            "(tunebench models) or a hub id")
        return None
    if "/" not in name:
        resolve(model)  # raises the unknown-preset error with its did-you-mean
    parts = name.split("/")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"model.name: '{name}' is neither a preset, a local directory nor a hub id (org/name)",
                        "see tunebench models for the presets")
    return None if in_hub_cache(name, model.revision) else HUB_NOTE


def check_data(data: Any) -> str | None:
    from tunebench.data.sources import BUILTIN_PREFIX, builtin_path, is_local

    source = data.source
    if source.startswith(BUILTIN_PREFIX):
        builtin_path(source.removeprefix(BUILTIN_PREFIX))
        return None
    if is_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"data.source: data file not found: {path}",
                            "give an existing JSONL/CSV/Parquet file or directory, a hub dataset id, or "
                            "builtin:classification / builtin:summarization")
        return None
    return "a hub dataset id: only its form was checked offline; the run loads it with datasets.load_dataset"


def in_hub_cache(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # a malformed id: huggingface_hub's validation
        return False
    return isinstance(found, str)
