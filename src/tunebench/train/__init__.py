"""Training: LoRA, QLoRA and full fine-tuning of causal, seq2seq and encoder models (see engine.py)."""

from __future__ import annotations

from typing import Any


def train_cell(cell: Any, run: Any, *, resume: bool = False, force: bool = False, progress: bool = True,
               callbacks: Any = (), options: Any = None) -> dict[str, Any]:
    """Train one cell into its run directory; returns the content of train/summary.json. `options`: an
    engine.RunOptions (benchmarks: plan overrides, logging frequency, no checkpoints)."""
    from tunebench.train.engine import train_cell as run_training

    return run_training(cell, run, resume=resume, force=force, progress=progress, callbacks=callbacks,
                        options=options)


__all__ = ["train_cell"]
