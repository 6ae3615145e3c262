"""The training part of a run directory: what is there, and whether a run may start, resume or overwrite it.

    train/
      adapter/ | model/            the final weights (PEFT adapter, or the full model) and the tokenizer
      checkpoints/checkpoint-N/    full training state every N steps and at epoch ends (latest two kept)
      checkpoints/epoch-N/         the weights at the end of epoch N, with epoch.json (its eval metrics)
      metrics.jsonl, summary.json

Every directory is written under a temporary name and renamed into place, so a crash or a full disk never
leaves a half-written checkpoint where a resume would find it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError
from tunebench.rundir import RunDir

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LABELS = "labels.json"  # beside every saved set of weights: the label set, in class-index order
COUNTERS = "tunebench-counters.json"  # in each step checkpoint: tokens, examples and time so far
FITTED = "fitted-budget.json"  # in train/: the memory-fitted batch settings, reused on --resume (same batches)
# Sections that do not change the trained weights; a resume may differ in them.
NOT_TRAINING = ("eval", "cost", "serve", "loadtest", "resources")


def step_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(root: Path) -> Path | None:
    found = step_checkpoints(root)
    return found[-1] if found else None


def epoch_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.glob("epoch-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def replace_dir(source: Path, target: Path) -> Path:
    """Move a finished directory into place; an existing one is swapped out first, then removed."""
    old = target.with_name(f".old-{target.name}")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def weights_dir(run: RunDir, adapter: bool) -> Path:
    return run.adapter if adapter else run.train / "model"


def check_run_dir(cell: CellConfig, run: RunDir, *, resume: bool, force: bool) -> Path | None:
    """Check the run directory against what was asked (reading only); returns the checkpoint to resume from."""
    summary = run.train / SUMMARY
    latest = latest_checkpoint(run.checkpoints)
    if resume and force:
        raise UserError("--resume and --force contradict each other",
                        "--resume continues an unfinished run; --force deletes it and starts over")
    if summary.exists() and not force:
        raise UserError(f"{run.path} is already trained ({summary} exists)",
                        "use --force to delete it and train again, or a different --out")
    if resume:
        if latest is None:
            changed_since_start(cell, run)
            raise UserError(f"--resume: no checkpoint in {run.checkpoints} to resume from",
                            "start the run without --resume")
        check_same_config(cell, run)
        return latest
    if latest is not None and not force:
        raise UserError(f"{run.path} holds an unfinished run (latest checkpoint: {latest.name})",
                        "continue it with --resume, or delete it and start over with --force")
    return None


def clear(run: RunDir) -> None:
    """--force: the previous training output goes (only once the new run's settings have been checked)."""
    if run.train.exists():
        shutil.rmtree(run.train)


def config_changes(cell: CellConfig, config_file: Path) -> list[str]:
    """'key: before -> now' for every training-relevant field that differs from the recorded configuration."""
    before = flat(yaml.safe_load(config_file.read_text()))
    now = flat(cell.model_dump(mode="json"))
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if k.split(".", 1)[0] not in NOT_TRAINING and before.get(k) != now.get(k)]


def check_same_config(cell: CellConfig, run: RunDir) -> None:
    if not run.config_file.exists():
        return
    changed = config_changes(cell, run.config_file)
    if changed:
        raise UserError(f"--resume: the configuration differs from the one {run.path} was started with: "
                        f"{'; '.join(changed)}", "resume with the original settings, or start over with --force")


def changed_since_start(cell: CellConfig, run: RunDir) -> None:
    """--resume found nothing here: a config edit gives the cell another id, so its run is a sibling directory.
    Name the closest one that has a checkpoint and list what changed, instead of only 'no checkpoint'."""
    candidates = []
    for other in sorted(run.path.parent.glob("*/resolved-config.yaml")) if run.path.parent.is_dir() else []:
        sibling = RunDir(other.parent)
        if sibling.path == run.path or latest_checkpoint(sibling.checkpoints) is None:
            continue
        try:
            changes = config_changes(cell, other)
        except (OSError, yaml.YAMLError):
            continue
        candidates.append((len(changes), sibling.path, changes))
    if not candidates:
        return
    _, path, changes = min(candidates)
    raise UserError(f"--resume: no checkpoint for this configuration; the closest run with one, {path}, was started "
                    f"with different settings: {'; '.join(changes)}",
                    "resume with the original settings (undo the edit or the --set), or start this configuration "
                    "without --resume")


def trim_replayed_metrics(run: RunDir, checkpoint: Path) -> None:
    """A resume replays the steps after its checkpoint: drop their lines from metrics.jsonl first, so each step
    appears once (the killed run may have logged steps the resumed one logs again)."""
    import json

    path = run.train / METRICS
    if not path.exists():
        return
    step = int(checkpoint.name.split("-", 1)[1])
    lines = path.read_text().splitlines()

    def before_checkpoint(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except ValueError:  # a line torn by a kill
            return False

    kept = [line for line in lines if line.strip() and before_checkpoint(line)]
    if len(kept) != len(lines):
        from tunebench.rundir import write_atomic

        write_atomic(path, "".join(f"{line}\n" for line in kept))


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}.{key}" if prefix else str(key))
    return out
