"""Trainer callbacks: epoch bookkeeping, Ctrl-C and SIGTERM, metrics.jsonl and the progress bar."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

METRIC_KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy", "tokens_per_s", "tokens",
               "examples", "peak_memory_gib", "elapsed_s")


class EpochCallback(TrainerCallback):
    """Tells the batch samplers the epoch, and asks for an evaluation and a checkpoint at every epoch end."""

    def __init__(self, samplers: list[Any], evaluate: bool) -> None:
        self.samplers = samplers
        self.evaluate = evaluate
        self.epoch_ended: int | None = None  # the epoch whose end the next checkpoint marks

    def on_epoch_begin(self, args, state, control, **kwargs):
        # A resumed run starts inside an epoch (state.epoch = 1.5): its batches are those of epoch 1.
        for sampler in self.samplers:
            sampler.set_epoch(int(state.epoch or 0))

    def on_epoch_end(self, args, state, control, **kwargs):
        # The Trainer also "ends" an epoch when training stops inside it (max_steps, Ctrl-C): not an epoch end.
        if abs(state.epoch - round(state.epoch)) > 1e-6:
            return
        self.epoch_ended = round(state.epoch)
        control.should_save = args.save_strategy != "no"  # a run without checkpoints (benchmarks) keeps none
        control.should_evaluate = self.evaluate


class InterruptCallback(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler, a container runtime, a preempted spot instance, torchrun stopping
    its workers) finishes the current step, writes a checkpoint and stops; a second signal aborts.

    A second signal within `REPEAT_WINDOW_S` of the first counts as the same one: under torchrun a Ctrl-C
    reaches every worker from the terminal and again from torchrun's agent, milliseconds apart.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_WINDOW_S = 1.0

    def __init__(self, accelerator: Any = None) -> None:
        self.accelerator = accelerator
        self.requested = False
        self.signal_name: str | None = None  # SIGINT or SIGTERM: which one stopped the run
        self.stopped_at: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        import time

        from tunebench.train.signals import Terminated

        if self.requested:
            if time.monotonic() - self._first_at < self.REPEAT_WINDOW_S:
                return
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self._first_at = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread (e.g. a notebook worker): leave the signals as they are
            self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self._anyone_requested():
            self.stopped_at = state.global_step
            self.signal_name = self.signal_name or "SIGTERM"  # another rank was stopped (torchrun)
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}

    def _anyone_requested(self) -> bool:
        # Every process must stop at the same step, or the others wait forever at the next collective.
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return self.requested
        import torch

        flag = torch.tensor([1 if self.requested else 0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max").item())


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON line per training log and per evaluation to metrics.jsonl (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not ({"loss", "eval_loss"} & logs.keys()):
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        record |= {k: logs[k] for k in METRIC_KEYS if k in logs}
        from tunebench.diskspace import space_guard

        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with space_guard(self.path, kept="the checkpoints are intact", then="continue with --resume"), \
                    self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except Exception:
            with self.path.open("r+") as f:  # no half line: a resume appends after the last whole one
                f.truncate(size)
            raise


class ProgressCallback(TrainerCallback):
    """A Rich progress bar: steps, loss, tokens/s, elapsed time and ETA."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from tunebench import terminal

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=terminal.console(stderr=True), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.max_steps, completed=state.global_step,
                                           loss="-", speed="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        fields = {}
        if "loss" in logs:
            fields["loss"] = f"{logs['loss']:.4f}"
        if "tokens_per_s" in logs:
            fields["speed"] = f"{logs['tokens_per_s']:,.0f}"
        self.progress.update(self.task, **fields)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
