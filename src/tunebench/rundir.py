"""The run-directory contract every stage reads and writes.

    runs/<study-name>/                  a study (override with --out)
      results.db                        the study's results store
      <cell-id>/                        one cell: readable prefix + hash of its resolved config
        resolved-config.yaml            the full CellConfig this cell ran with
        provenance.json                 package versions, git sha, device, data hash, seed
        train/                          adapter or model, checkpoints/, metrics.jsonl, summary.json
        eval/<split>-<method>/          predictions.jsonl, metrics.json
        serve/                          load-test results

Commands that consume a trained model take `--run <cell dir>` and read model, adapter, prompt format and
labels from here. Files are written atomically (temporary file, then rename) so a crash never leaves a
half-written result behind.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError

TRACKED_PACKAGES = ("tunebench", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def for_cell(cls, study_dir: Path, cell_id: str) -> RunDir:
        return cls(Path(study_dir) / cell_id)

    @property
    def config_file(self) -> Path:
        return self.path / "resolved-config.yaml"

    @property
    def provenance_file(self) -> Path:
        return self.path / "provenance.json"

    @property
    def train(self) -> Path:
        return self.path / "train"

    @property
    def adapter(self) -> Path:
        return self.train / "adapter"

    @property
    def checkpoints(self) -> Path:
        return self.train / "checkpoints"

    @property
    def serve(self) -> Path:
        return self.path / "serve"

    def eval_dir(self, split: str, method: str) -> Path:
        """A split given as a file path (data/test.jsonl) is named by its stem, so results stay in the run."""
        if "/" in split or "\\" in split or Path(split).suffix:
            split = Path(split).stem
        return self.path / "eval" / f"{split}-{method}"

    def write_config(self, cfg: CellConfig) -> None:
        write_atomic(self.config_file, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def read_config(self) -> CellConfig:
        if not self.config_file.exists():
            raise UserError(f"{self.path} is not a tunebench run directory (no resolved-config.yaml)",
                            "give --run the directory of one cell, e.g. runs/<study>/<cell-id>")
        return CellConfig.model_validate(yaml.safe_load(self.config_file.read_text()))

    def write_provenance(self, cfg: CellConfig, data_hash: str | None = None, device: str | None = None) -> None:
        write_json(self.provenance_file, provenance(cfg, data_hash, device))


def write_atomic(path: Path, text: str) -> None:
    from tunebench.diskspace import space_guard

    path = Path(path)
    with space_guard(path, needed=len(text.encode())):  # a full disk: a clear message, the old file intact
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are meant to be shared and read
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def provenance(cfg: CellConfig, data_hash: str | None = None, device: str | None = None) -> dict[str, Any]:
    return {
        "packages": dict(package_versions()),
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "device": device or device_name(),
        "data_hash": data_hash,
        "seed": cfg.data.seed,
        "training_seed": cfg.training.seed,
    }
