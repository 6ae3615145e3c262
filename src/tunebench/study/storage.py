"""Where a study's run directories live: a local path (one host, or NFS) or an fsspec URI (s3://, gs://).

On a local path tasks write in place, as a single machine always did. On an object store a task works in
node-local scratch: it downloads the run directories its unit needs, runs, and uploads what a stage wrote
with the stage's marker file (summary.json, metrics.json, comparison.json) last — object stores have no
rename, so a marker present means everything before it is there. Step checkpoints are uploaded as they are
written, so a task retried on another node resumes from the last one. All copying goes through fsspec.
Credentials and endpoints come from the usual places (AWS_* variables, FSSPEC_S3_ENDPOINT_URL, ...).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunebench.errors import UserError

MARKERS = ("summary.json", "metrics.json", "comparison.json")


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


class Storage:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.protocol = protocol_of(uri)
        self.local = self.protocol in ("file", "local")
        if self.local:
            self.root = Path(uri.split("://", 1)[1] if "://" in uri else uri).absolute()
            self.fs: Any = None
            self.base = str(self.root)
        else:
            import fsspec

            try:
                self.fs = fsspec.filesystem(self.protocol)
            except (ImportError, ValueError) as err:
                raise UserError(f"storage {uri}: fsspec cannot open '{self.protocol}://' ({err})",
                                "install the filesystem's package (s3fs for s3://, gcsfs for gs://), or give a "
                                "local or NFS path") from None
            self.base = uri.split("://", 1)[1].rstrip("/")
            self.root = Path()

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def exists(self, rel: str) -> bool:
        if self.local:
            return (self.root / rel).exists()
        return bool(self.fs.exists(self.path(rel)))

    def check_writable(self) -> None:
        """Fail before any work when the storage cannot be written (wrong bucket, no credentials)."""
        probe = f".write-test-{os.getpid()}"
        try:
            if self.local:
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / probe).write_text("")
                (self.root / probe).unlink()
            else:
                self.fs.pipe(self.path(probe), b"")
                self.fs.rm(self.path(probe))
        except Exception as err:  # any backend's error: credentials, a missing bucket, permissions
            raise UserError(f"cannot write to the study's storage {self.uri}: {err}",
                            "check the path or bucket and its credentials (AWS_* variables, "
                            "FSSPEC_S3_ENDPOINT_URL for an S3-compatible server)") from None

    # ------------------------------------------------------------ copying (object stores only)

    def pull(self, rel: str, dest: Path) -> None:
        """Download a run directory (or one file) into `dest`, when it exists."""
        if self.local or not self.fs.exists(self.path(rel)):
            return
        if self.fs.isdir(self.path(rel)):
            dest.mkdir(parents=True, exist_ok=True)
            self.fs.get(self.path(rel) + "/", str(dest) + "/", recursive=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(self.path(rel), str(dest))

    def push(self, src: Path, rel: str, only: Iterable[str] | None = None) -> None:
        """Upload the files under `src` (following links: an object store has none) to `rel`, markers last.

        `only`: sub-paths of `src` to upload (a stage's own folders), default everything."""
        if self.local:
            return
        roots = [src / part for part in only] if only is not None else [src]
        files: list[Path] = []
        for root in roots:
            if root.is_file():
                files.append(root)
            elif root.is_dir():
                for folder, _, names in os.walk(root, followlinks=True):
                    files += [Path(folder) / name for name in names if not name.startswith(".")]
        files.sort(key=lambda p: (p.name in MARKERS, str(p)))
        prefix = f"{rel.strip('/')}/" if rel.strip("/") else ""
        for file in files:
            self.fs.put_file(str(file), self.path(prefix + file.relative_to(src).as_posix()))

    @contextmanager
    def workspace(self, rels: Iterable[str]) -> Iterator[Path]:
        """The directory a task works in: the storage itself when local, else scratch holding `rels`."""
        if self.local:
            self.root.mkdir(parents=True, exist_ok=True)
            yield self.root
            return
        scratch = Path(tempfile.mkdtemp(prefix="tunebench-", dir=os.environ.get("TUNEBENCH_SCRATCH")))
        try:
            for rel in rels:
                self.pull(rel, scratch / rel)
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
