"""One runner per study: an exclusive `flock` on `runs/<study>/.lock`, checked before any work.

The lock dies with the process holding it (and with any worker that inherited it), so a killed runner never
leaves a stale lock behind. The file records the holder's pid so the refusal can name it.
"""

from __future__ import annotations

from pathlib import Path

from tunebench.dirlock import DirLock
from tunebench.errors import UserError

LOCK_NAME = ".lock"


class StudyLock(DirLock):
    def __init__(self, study_dir: Path) -> None:
        super().__init__(Path(study_dir) / LOCK_NAME)

    def refusal(self, holder: str) -> UserError:
        return UserError(
            f"study {self.path.parent} is already being run by another tunebench process (pid {holder})",
            f"wait for it to finish, or stop it (kill {holder}) and run again: finished cells are kept",
        )

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self
