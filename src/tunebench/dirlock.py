"""An exclusive `flock` on a file inside a directory, naming the holder's pid when refused.

The lock dies with the process holding it (and with any child that inherited its descriptor), so a killed
process never leaves a stale lock behind. The file records the holder's pid so a refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tunebench.errors import UserError


class DirLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def refusal(self, holder: str) -> UserError:
        return UserError(f"{self.path.parent} is in use by another tunebench process (pid {holder})",
                         f"wait for it to finish, or stop it (kill {holder}) and run again")

    def acquire(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise self.refusal(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
