"""One unit of a study in its own process: `python -m tunebench.study.worker STUDY_DIR UNIT_JSON [--retry-failed]`.

Started by the runner with --gpus, one per GPU (CUDA_VISIBLE_DEVICES set by the runner). The cells' configs are
read from their run directories (the runner wrote resolved-config.yaml for each before starting workers).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rich.console import Console

from tunebench.config.study import Cell
from tunebench.rundir import RunDir
from tunebench.study.plan import Unit
from tunebench.study.runner import Runner, RunOptions, sigterm_as_interrupt
from tunebench.study.stages import real_stages
from tunebench.study.store import Store


def read_cell(study_dir: Path, cell_id: str) -> Cell:
    return Cell(cell_id, RunDir.for_cell(study_dir, cell_id).read_config())


def read_unit(study_dir: Path, spec: str) -> Unit:
    data = json.loads(spec)
    return Unit(cells=[read_cell(study_dir, cid) for cid in data["cells"]],
                trainer=read_cell(study_dir, data["trainer"]) if data["trainer"] else None,
                epoch_of={cid: int(epoch) for cid, epoch in data["epoch_of"].items()})


def main(argv: list[str]) -> int:
    study_dir, spec = Path(argv[0]), argv[1]
    options = RunOptions(retry_failed="--retry-failed" in argv[2:], progress=False)
    unit = read_unit(study_dir, spec)
    console = Console(force_terminal=False, width=160)
    console.print(f"unit {unit.id} ({len(unit.cells)} cell(s)) in pid {os.getpid()}, "
                  f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}")
    with Store.open(study_dir) as store, sigterm_as_interrupt():
        runner = Runner(study_dir, store, real_stages(), console=console, options=options)
        try:
            runner.run_unit(unit)
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
