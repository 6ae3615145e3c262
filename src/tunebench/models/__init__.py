"""Models: presets with exact architectures, loading (hub, local, random weights) and the embedded default."""

from tunebench.models.presets import EMBEDDED, PRESETS, Preset, get_preset

__all__ = ["EMBEDDED", "PRESETS", "Preset", "get_preset"]
