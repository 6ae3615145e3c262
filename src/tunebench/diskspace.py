"""Out of space on any write: one clear message (where, how much is free, about how much is needed), and nothing
half-written left behind.

Libraries report a full disk differently: an OSError with ENOSPC or EDQUOT from Python's own writes,
safetensors' `SafetensorError` ("... StorageFull ... No space left on device"), torch.save's RuntimeError
(no errno), SQLite's "database or disk is full". `is_out_of_space` recognises each.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunebench.errors import UserError

MARKERS = ("no space left on device", "storagefull", "disk quota exceeded", "os error 28", "errno 28",
           "database or disk is full")
# torch.save names no errno ("file write failed", "basic_ios::clear: iostream error", "unexpected pos ..." from its
# zip writer): such a failure counts as a full disk when the filesystem has less than this left.
TORCH_WRITE_MARKERS = ("file write failed", "iostream error", "inline_container", "pytorchstreamwriter")
NEARLY_FULL_BYTES = 16 << 20


def existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(existing(path)).free


def mount_point(path: Path) -> Path:
    path = existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def size_of(path: Path | None) -> int:
    if path is None or not Path(path).exists():
        return 0
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def is_out_of_space(err: BaseException, where: Path | None = None) -> bool:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current).lower()
        if any(marker in text for marker in MARKERS):
            return True
        if any(m in text for m in TORCH_WRITE_MARKERS) and where is not None and free_bytes(where) < NEARLY_FULL_BYTES:
            return True
        current = current.__cause__ or current.__context__
    return False


class OutOfSpace(UserError):
    def __init__(self, path: Path, needed: int | None, kept: str = "",
                 then: str = "run the same command again") -> None:
        free, mount = free_bytes(path), mount_point(path)
        need = f", about {human(needed)} needed" if needed else ""
        super().__init__(f"no space left on {mount} while writing {path} ({human(free)} free{need}); "
                         f"nothing half-written was left{'; ' + kept if kept else ''}",
                         f"free {'at least ' + human(needed) if needed else 'space'} on {mount} (or write "
                         f"elsewhere with --out DIR), then {then}")
        self.path = Path(path)
        self.needed = needed


def remove(path: Path | None) -> None:
    if path is None:
        return
    if Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


@contextmanager
def space_guard(path: Path, *, partial: Path | None = None, needed: int | None = None, kept: str = "",
                then: str = "run the same command again") -> Iterator[None]:
    """Turn a full disk inside the block into `OutOfSpace`, after removing `partial` (what it was writing).
    The space needed is at least what the partial write had reached, or `needed` when that is larger."""
    try:
        yield
    except OutOfSpace:
        remove(partial)
        raise
    except Exception as err:
        if not is_out_of_space(err, path):
            raise
        reached = size_of(partial)
        remove(partial)
        raise OutOfSpace(path, max(needed or 0, reached) or None, kept, then) from err
