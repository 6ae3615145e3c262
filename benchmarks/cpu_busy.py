"""Cores busy per second of a server's processes and of the load tester, sampled in a thread (Linux /proc), for
the serving benchmarks: a process pinned at 1.0 is what caps the served rate."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a live process (Linux /proc; None elsewhere or once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class CpuSampler:
    """Cores busy per second of the server's processes (the front end, its engine process and any other
    child) and of this process (the load tester), sampled every `every` s in a thread: a process pinned at
    1.0 is what caps the served rate. Each loadtest is logged with the peak and mean of its samples."""

    def __init__(self, every: float = 1.0) -> None:
        self.every, self.pids, self.samples = every, {}, []
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, pid: int) -> dict[str, int]:
        """Sample the server `pid`, its children and this process from now on; returns what is sampled."""
        with self.lock:
            self.pids = {"frontend": pid, "loadtest": os.getpid()}
            for i, child in enumerate(children(pid)):
                self.pids["engine" if i == 0 else f"child{i}"] = child
            return dict(self.pids)

    def unwatch(self) -> None:
        with self.lock:
            self.pids = {}

    def _run(self) -> None:
        last: dict[str, tuple[float, float]] = {}
        while True:
            time.sleep(self.every)
            now = time.monotonic()
            with self.lock:
                pids = dict(self.pids)
            sample: dict[str, float] = {}
            for name, pid in pids.items():
                cpu = cpu_seconds(pid)
                if cpu is None:
                    continue
                if name in last and last[name][0] == pid:
                    sample[name] = round((cpu - last[name][1]) / self.every, 2)
                last[name] = (pid, cpu)
            if sample:
                self.samples.append((now, sample))

    def between(self, start: float, end: float) -> dict[str, dict[str, float]]:
        window = [s for t, s in self.samples if start <= t <= end]
        names = sorted({n for s in window for n in s})
        return {n: {"peak": max(s.get(n, 0.0) for s in window),
                    "mean": round(sum(s.get(n, 0.0) for s in window) / len(window), 2)} for n in names}
