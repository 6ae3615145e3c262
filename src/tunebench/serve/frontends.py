"""Several front-end processes sharing one engine process (`tunebench serve --frontends N`, `serve.frontends`).

Why: one front end spends ~2 ms of CPU per request (HTTP parsing, validation, tokenization, detokenization,
streaming; `benchmarks/frontend_cpu.py`), so a single process admits a 512-request burst over ~1 s and caps a
100-token-prompt workload near 450 req/s while the engine offline goes faster (README, "The issue's run at 512
slots"). N front ends share that work, as uvicorn's and gunicorn's workers do.

How: this process (the supervisor) binds the listening sockets (`tunebench.serve.server.bind_each`: on Linux one
per front end in a SO_REUSEPORT group, which spreads connections evenly), starts the engine process with one
channel per front end (`tunebench.serve.core`), then starts N front ends (`python -m tunebench.serve.frontends`),
each given its listening socket and its channel, and with PROMETHEUS_MULTIPROC_DIR set so that /metrics, whichever front
end answers it, shows the whole server (`tunebench.serve.metrics`). Each front end admits its share of the
capacity. The supervisor
only watches: it announces the server once every front end is up, relays SIGINT/SIGTERM as a graceful stop
(every front end drains, tells the engine, and exits; the engine exits when all have), and stops the rest when
every front end is gone. A front end that dies is logged and not replaced: the others keep serving (its open
requests fail; their clients see the connection drop). An engine that dies fails every open request in every
front end, whose /health answers 503 from then on, as with one front end.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tunebench.errors import UserError

log = logging.getLogger("tunebench.serve")
WATCH_EVERY_S = 0.25
STOP_GRACE_S = 30.0


# ---------------------------------------------------------------- the supervisor


def serve_many(model_options: Any, options: Any, announce: Any) -> None:
    """Serve with `options.frontends` front-end processes until SIGTERM/SIGINT, then drain; `announce` gets
    (URL, the engine's ready info) once every front end accepts connections."""
    from tunebench.serve.client import spawn_engine
    from tunebench.serve.options import engine_limits
    from tunebench.serve.server import bind_each, url_of

    listeners = bind_each(options.host, options.port, options.frontends)
    url = url_of(listeners[0])
    metrics_dir = tempfile.mkdtemp(prefix="tunebench-metrics-")
    engine, channels = spawn_engine(model_options, options.engine, engine_limits(options), options.frontends)
    fronts: list[subprocess.Popen] = []
    stop = Stop()
    try:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        for index, channel in enumerate(channels):
            fronts.append(start_front_end(index, listeners[index], channel.sock, engine.pid, model_options, options,
                                          env))
            log.info("front end %d: pid %d", index, fronts[-1].pid)
            channel.sock.close()  # the front end holds it now: when it dies, the engine hears of it
        for listener in set(listeners):
            listener.close()  # each front end holds its own: a dead one's leaves the group
        stop.install()
        info = await_front_ends(fronts, engine, stop)
        stop.starting = False
        if info is not None:
            announce(url, info)
            supervise(fronts, engine, stop, metrics_dir)
    finally:
        stop.starting = False  # a signal now asks for a forced stop; it no longer raises
        for channel in channels:
            channel.sock.close()  # those not handed to a front end yet: the engine hears they are gone
        shut_down(fronts, engine, stop)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        stop.restore()
    if stop.failed:
        raise SystemExit(1)


def start_front_end(index: int, listener: socket.socket, channel: socket.socket, engine_pid: int,
                    model_options: Any, options: Any, env: dict[str, str]) -> subprocess.Popen:
    import tunebench

    src = str(Path(tunebench.__file__).resolve().parents[1])
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)}
    fds = (listener.fileno(), channel.fileno())
    process = subprocess.Popen([sys.executable, "-m", "tunebench.serve.frontends"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, pass_fds=fds, env=env, preexec_fn=stop_with_parent)
    assert process.stdin is not None
    process.stdin.write(pickle.dumps({"index": index, "frontends": options.frontends, "listener": fds[0],
                                      "channel": fds[1], "engine_pid": engine_pid,
                                      "model_options": model_options, "options": options}))
    process.stdin.close()
    return process


def stop_with_parent() -> None:
    """In the child before it runs: SIGTERM (a drain) when the supervisor dies, however it dies (Linux's
    PR_SET_PDEATHSIG), so no front end outlives it holding the port."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


class Stop:
    """SIGINT/SIGTERM in the supervisor: the first asks for a graceful stop, a second Ctrl-C for a forced one."""

    def __init__(self) -> None:
        self.starting = True  # until the server is announced, a signal aborts the start-up
        self.requested = False
        self.forced = False
        self.failed = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, sig: int, _frame: Any) -> None:
        if self.starting:
            raise KeyboardInterrupt  # out of the wait for the front ends' reports; the rest is stopped
        if self.requested and sig == signal.SIGINT:
            self.forced = True
        self.requested = True


def await_front_ends(fronts: list[subprocess.Popen], engine: subprocess.Popen, stop: Stop) -> dict | None:
    """Every front end's report: ready (the engine's info), or the error that stopped it (raised here)."""
    info: dict | None = None
    for index, front in enumerate(fronts):
        assert front.stdout is not None
        line = front.stdout.readline()  # blocks until it reports or exits; signals still reach `stop`
        report = json.loads(line) if line.strip() else None
        if report is None:
            if stop.requested:
                return None
            code = front.wait()
            raise UserError(f"front end {index} exited with code {code} while starting",
                            "see its log above; run with --frontends 1 to serve from one process")
        if "error" in report:
            raise UserError(report["error"], report["fix"])
        info = report["ready"]
        if stop.requested:
            return None
    return info


def supervise(fronts: list[subprocess.Popen], engine: subprocess.Popen, stop: Stop, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    signalled = False
    engine_reported = False
    live = set(range(len(fronts)))
    while live:
        if stop.requested and not signalled:
            signalled = True
            for i in live:
                fronts[i].send_signal(signal.SIGTERM)  # uvicorn drains, then the front end stops its channel
        if stop.forced:
            log.warning("second interrupt: stopping at once")
            return
        time.sleep(WATCH_EVERY_S)
        for i in sorted(live):
            code = fronts[i].poll()
            if code is None:
                continue
            live.discard(i)
            multiprocess.mark_process_dead(fronts[i].pid, metrics_dir)
            if not signalled:
                log.error("front end %d (pid %d) exited with code %s; %d of %d still serve", i, fronts[i].pid,
                          code, len(live), len(fronts))
        if engine.poll() is not None and not engine_reported and not signalled:
            engine_reported = True  # the front ends answer 503 and say why; they keep serving /health
            log.error("the engine process exited with code %s", engine.returncode)
    if not signalled:
        log.error("every front end has exited: stopping")
        stop.failed = True


def shut_down(fronts: list[subprocess.Popen], engine: subprocess.Popen, stop: Stop) -> None:
    """Whatever is still running: front ends get SIGTERM (a drain) then SIGKILL; the engine, which exits once
    every front end has stopped or gone, is waited for, then killed. A forced stop (a second Ctrl-C, now or
    during the wait) kills at once."""
    def forced_kill() -> None:
        for process in (*fronts, engine):
            if process.poll() is None:
                process.kill()
        for process in (*fronts, engine):
            process.wait()

    if stop.forced:
        forced_kill()
        return
    deadline = time.monotonic() + STOP_GRACE_S
    for front in fronts:
        if front.poll() is None:
            front.send_signal(signal.SIGTERM)
    while any(p.poll() is None for p in (*fronts, engine)) and time.monotonic() < deadline:
        if stop.forced:
            log.warning("second interrupt: stopping at once")
            break
        time.sleep(0.05)
    if any(p.poll() is None for p in (*fronts, engine)) and not stop.forced:
        log.warning("the server did not stop in %.0f s: killing what is left", STOP_GRACE_S)
    forced_kill()


# ---------------------------------------------------------------- a front end


class EngineProcess:
    """The shared engine as a front end that did not start it sees it: running or not (the supervisor starts,
    reaps and stops it; a front end never kills it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 0  # gone; its exit code is the supervisor's to know
        except PermissionError:
            pass
        return None

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"engine process {self.pid}", timeout or 0)
            time.sleep(0.02)

    def kill(self) -> None:
        pass

    terminate = kill


def front_end_server(state: Any) -> Any:
    """uvicorn's server, except that no signal forces an exit: Ctrl-C reaches every process of the group and
    the supervisor relays it, so a front end sees two signals for one stop (the supervisor forces if asked)."""
    import uvicorn

    from tunebench.serve.server import uvicorn_server

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            self.should_exit = True

    return Server(uvicorn_server(state).config)


def run_front_end(job: dict[str, Any]) -> int:
    from tunebench.serve.channel import BlockingChannel
    from tunebench.serve.client import front_model, front_state
    from tunebench.serve.engine_base import freeze_heap

    report = os.fdopen(os.dup(1), "w", buffering=1)  # the supervisor reads one JSON line from stdout
    os.dup2(2, 1)  # and nothing else: prints go to the log
    index, options = job["index"], job["options"]
    channel = BlockingChannel(socket.socket(fileno=job["channel"]))
    listener = socket.socket(fileno=job["listener"])
    try:
        front = front_model(job["model_options"])
    except UserError as err:
        report.write(json.dumps({"error": err.problem, "fix": err.fix}) + "\n")
        return 2
    answer = channel.receive_one(None)
    if answer is None or answer[0] != "ready":
        problem, fix = (answer[1], answer[2]) if answer else ("the engine process exited while loading the model",
                                                              "see its log above")
        if index == 0:  # one report of the engine's error is enough
            report.write(json.dumps({"error": problem, "fix": fix}) + "\n")
        return 2
    state = front_state(front, options, answer[1], EngineProcess(job["engine_pid"]), channel.sock, job["frontends"])
    state.frontend_index = index
    server = front_end_server(state)

    def tell_when_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if server.started:
            report.write(json.dumps({"ready": answer[1]}) + "\n")
        report.close()

    threading.Thread(target=tell_when_started, daemon=True).start()
    for sig in (signal.SIGINT, signal.SIGTERM):  # what uvicorn restores (and re-raises into) when it returns
        signal.signal(sig, lambda *_: None)
    freeze_heap()  # as the engine process does (`tunebench.serve.core.main`) and `serve_forever`
    server.run(sockets=[listener])
    return 0


def main() -> int:
    job = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(level=logging.INFO,
                        format=f"%(levelname)s %(name)s (front end {job['index']}): %(message)s")
    return run_front_end(job)


if __name__ == "__main__":
    sys.exit(main())
