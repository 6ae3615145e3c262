"""One runner per study: an exclusive `flock` on `runs/<study>/.lock`, checked before any work.

The lock dies with the process holding it (and with any worker that inherited it), so a killed runner never
leaves a stale lock behind. The file records the holder's pid so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tunebench.errors import UserError

LOCK_NAME = ".lock"


class StudyLock:
    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> StudyLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"study {self.path.parent} is already being run by another tunebench process (pid {holder})",
                f"wait for it to finish, or stop it (kill {holder}) and run again: finished cells are kept",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
