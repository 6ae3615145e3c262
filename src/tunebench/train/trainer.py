"""transformers' Trainer with tunebench's batches, metering, evaluation and crash-safe checkpoints.

What differs from the stock Trainer, and why:
- data loaders use tunebench's batch samplers (token budgets, packing) instead of a fixed batch size;
- every log carries non-pad tokens, tokens/s, examples, peak memory and elapsed time;
- evaluation is the token-weighted loss over the validation split, always without packing contamination (so
  recipes with different packing are compared on the same numbers), plus teacher-forced exact match;
- a checkpoint is written to a temporary directory and renamed into place, so a crash or a full disk while
  writing leaves the previous checkpoint valid; it also carries tunebench's counters, and epoch-end
  checkpoints leave a copy of the weights in checkpoints/epoch-N for evaluating epochs without retraining.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from tunebench.diskspace import is_out_of_space, size_of
from tunebench.train.batching import METERING_KEYS
from tunebench.train.callbacks import EpochCallback
from tunebench.train.checkpoints import COUNTERS, LABELS, latest_checkpoint, replace_dir, step_checkpoints
from tunebench.train.features import IGNORE
from tunebench.train.metering import Meter

EPOCH_FILE = "epoch.json"
STEP_CHECKPOINTS_KEPT = 2
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                        COUNTERS)


class DiskFullError(Exception):
    def __init__(self, checkpoint: Path, previous: Path | None, needed: int | None = None) -> None:
        super().__init__(f"no space left on the device while writing {checkpoint}")
        self.checkpoint = checkpoint
        self.previous = previous
        self.needed = needed  # bytes: about the size of a whole checkpoint


class TunebenchTrainer(Trainer):
    def __init__(self, *args: Any, train_sampler: Any, eval_sampler: Any, eval_collator: Any, meter: Meter,
                 kind: str, labels: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels = labels
        self.train_sampler = train_sampler
        self.eval_sampler = eval_sampler
        self.eval_collator = eval_collator
        self.meter = meter
        self.kind = kind
        self.last_eval: dict[str, Any] = {}
        self._staging: str | None = None

    # ------------------------------------------------------------ data

    def _loader(self, dataset: Any, sampler: Any, collator: Any) -> Any:
        from torch.utils.data import DataLoader

        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator,
                            num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available())
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> Any:
        return self._loader(self.train_dataset, self.train_sampler, self.data_collator)

    # ------------------------------------------------------------ metering

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        self.meter.count(inputs)
        inputs = {k: v for k, v in inputs.items() if k not in METERING_KEYS}
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.meter.flush(self.accelerator)
        if "loss" in logs:
            logs.update(self.meter.log_fields())
        super().log(logs, start_time)

    # ------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.validation_metrics().items()}
        self.last_eval = {"step": self.state.global_step, **metrics}
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        loader = self._loader(self.eval_dataset, self.eval_sampler, self.eval_collator)
        totals = torch.zeros(4, dtype=torch.float64)  # loss sum, scored tokens, exact examples, examples
        try:
            for batch in loader:
                totals += self._score(model, batch)
        finally:
            model.train(was_training)
        if self.accelerator.num_processes > 1:  # each process scored its shard of the validation split
            totals = self.accelerator.reduce(totals.to(self.accelerator.device), "sum").cpu()
        loss_sum, tokens, exact, examples = totals.tolist()
        return {"loss": loss_sum / max(tokens, 1.0), "accuracy": exact / max(examples, 1.0),
                "tokens": int(tokens), "examples": int(examples)}

    def _score(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch["labels"]
        # A seq2seq decoder reads the shifted labels; the other kinds need no loss from the model.
        inputs = batch if self.kind == "seq2seq" else {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        if self.kind == "encoder":
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            right = (logits.argmax(-1) == labels).sum()
            n = labels.numel()
            return torch.tensor([loss.item(), n, right.item(), n], dtype=torch.float64)
        if self.kind == "causal":  # position t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
            example = example_index(batch)[:, 1:]
        else:
            example = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
        scored = labels != IGNORE
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        wrong = ((logits.argmax(-1) != labels) & scored).long()
        n_examples = int(example.max().item()) + 1
        wrong_per_example = torch.zeros(n_examples, dtype=torch.long, device=labels.device)
        wrong_per_example.scatter_add_(0, example[scored], wrong[scored])
        has_target = torch.zeros(n_examples, dtype=torch.long, device=labels.device)
        has_target.scatter_add_(0, example[scored], torch.ones_like(wrong[scored]))
        exact = ((wrong_per_example == 0) & (has_target > 0)).sum()
        return torch.tensor([losses[scored].sum().item(), scored.sum().item(), exact.item(),
                             (has_target > 0).sum().item()], dtype=torch.float64)

    # ------------------------------------------------------------ checkpoints

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self.meter.flush(self.accelerator)
        root = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging = root / ".partial"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                (staging / name / COUNTERS).write_text(json.dumps(self.meter.state_dict()))
            self.accelerator.wait_for_everyone()
        except Exception as err:  # safetensors and torch.save report a full disk without an OSError
            reached = size_of(staging)
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            if is_out_of_space(err, root):
                previous = latest_checkpoint(root)
                raise DiskFullError(root / name, previous, max(reached, size_of(previous)) or None) from err
            raise
        finally:
            self._staging = None
        if self.args.should_save:
            final = replace_dir(staging / name, root / name)
            staging.rmdir()
            self._after_checkpoint(final)
        self.accelerator.wait_for_everyone()

    def _after_checkpoint(self, checkpoint: Path) -> None:
        epochs = [c for c in self.callback_handler.callbacks if isinstance(c, EpochCallback)]
        if epochs and epochs[0].epoch_ended is not None:
            self.write_epoch_copy(checkpoint, epochs[0].epoch_ended)
            epochs[0].epoch_ended = None
        for old in step_checkpoints(checkpoint.parent)[:-STEP_CHECKPOINTS_KEPT]:
            shutil.rmtree(old)

    def write_epoch_copy(self, checkpoint: Path, epoch: int) -> None:
        """checkpoints/epoch-N: the weights (adapter or model) and tokenizer at the end of epoch N."""
        target = checkpoint.parent / f"epoch-{epoch}"
        staging = checkpoint.parent / f".partial-epoch-{epoch}"
        shutil.rmtree(staging, ignore_errors=True)
        record = {"epoch": epoch, "step": self.state.global_step}
        if self.last_eval.get("step") == self.state.global_step:
            record |= {k: v for k, v in self.last_eval.items() if k != "step"}
        try:
            staging.mkdir()
            for item in checkpoint.iterdir():
                if item.is_file() and item.name not in TRAINING_STATE_FILES and not item.name.startswith("rng_state"):
                    shutil.copy2(item, staging / item.name)
            (staging / EPOCH_FILE).write_text(json.dumps(record, indent=2) + "\n")
            if self.labels:
                (staging / LABELS).write_text(json.dumps(self.labels) + "\n")
        except Exception as err:
            shutil.rmtree(staging, ignore_errors=True)
            if is_out_of_space(err, target):
                raise DiskFullError(target, checkpoint, size_of(checkpoint) or None) from err
            raise
        replace_dir(staging, target)


def example_index(batch: dict[str, Any]) -> torch.Tensor:
    """Which example each position belongs to: packed rows restart their position ids at every example."""
    if "position_ids" in batch:
        starts = (batch["position_ids"] == 0).long()
        return starts.cumsum(-1) - 1 + (starts.sum(-1, keepdim=True).cumsum(0) - starts.sum(-1, keepdim=True))
    labels = batch["labels"]
    return torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
