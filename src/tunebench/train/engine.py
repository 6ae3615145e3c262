"""`train_cell`: one cell's training run, from its config to trained weights, metrics and a summary.

    config ─ recipe ─> Plan          every hyperparameter, with what this device had to change
    data ─ prompts ─> features        prompt + completion + EOS, labels by position
    features ─ packing ─> batches     padding-free / concat / length-grouped / padded
    Trainer (+ PEFT, accelerate)      checkpoints (atomic), epoch copies, Ctrl-C, metering
    ─> train/adapter | train/model, metrics.jsonl, summary.json

The same function serves `tunebench train` and the studies runner. Under torchrun/accelerate each process
runs it; only the main process writes the run directory's files. Full fine-tuning on several GPUs shards the
model with FSDP (accelerate's plugin through TrainingArguments: full_shard, auto-wrap by the decoder layer
class, bf16 compute, activation checkpointing by FSDP); LoRA/QLoRA on several GPUs is data parallel (DDP).

`RunOptions` are for benchmarks and tools, not studies: plan overrides (engine knobs that have no config field:
attention_mask, fused_loss, compile), logging frequency, and skipping checkpoints and final weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunebench.config.schema import CellConfig
from tunebench.dirlock import DirLock
from tunebench.diskspace import space_guard
from tunebench.errors import UserError
from tunebench.rundir import RunDir, device_name, write_json
from tunebench.train import checkpoints as ck
from tunebench.train.inputs import TrainInputs, build_inputs, load_examples
from tunebench.train.metering import Meter, cost_of, memory_kind, mfu, peak_memory_gib, price_for
from tunebench.train.recipes import Device, Plan, resolve_plan

BEST_METRICS = {"eval_loss": "min", "eval_accuracy": "max"}
FITTED_FIELDS = ("tokens_per_batch", "max_seq_len", "gradient_checkpointing")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    plan_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # Plan fields to replace
    logging_steps: int | None = None  # None: about 20 logs per run, at most every 10 steps
    save: bool = True                 # False: no checkpoints and no final weights (throughput benchmarks)


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after writing a checkpoint; `--resume` continues from it."""

    def __init__(self, step: int, checkpoint: Path | None, signal_name: str = "SIGINT") -> None:
        super().__init__(f"training interrupted ({signal_name}) at step {step}; checkpoint: {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint
        self.signal_name = signal_name


class TrainLock(DirLock):
    """One training process per run directory: a second one would delete the first one's `.partial/` and
    interleave its steps in metrics.jsonl. Held by the main process (rank 0 under torchrun)."""

    def __init__(self, run: RunDir) -> None:
        super().__init__(run.path / ".train.lock")

    def refusal(self, holder: str) -> UserError:
        return UserError(f"{self.path.parent} is already being trained by another tunebench process (pid {holder})",
                         f"wait for it to finish, or stop it (kill {holder}: it checkpoints at the next step) "
                         "and continue with --resume")


def train_cell(cell: Any, run: RunDir, *, resume: bool = False, force: bool = False, progress: bool = True,
               callbacks: Sequence[Any] = (), options: RunOptions | None = None) -> dict[str, Any]:
    """Train one cell (a CellConfig or a study Cell) into `run`; returns what summary.json holds."""
    from accelerate import PartialState

    with TrainLock(run) if PartialState().is_main_process else contextlib.nullcontext():
        return train_locked(cell, run, resume=resume, force=force, progress=progress, callbacks=callbacks,
                            options=options)


def train_locked(cell: Any, run: RunDir, *, resume: bool, force: bool, progress: bool, callbacks: Sequence[Any],
                 options: RunOptions | None) -> dict[str, Any]:
    from accelerate import PartialState
    from transformers import set_seed

    from tunebench.models.loading import load_tokenizer, resolve
    from tunebench.prompts import context_length_of

    cfg: CellConfig = getattr(cell, "config", cell)
    cell_id = getattr(cell, "id", run.path.name)
    if cfg.training.best_metric not in BEST_METRICS:
        raise UserError(f"training.best_metric = {cfg.training.best_metric!r} is not computed during training",
                        f"allowed values: {', '.join(BEST_METRICS)}")
    checkpoint = ck.check_run_dir(cfg, run, resume=resume, force=force)
    state = PartialState()
    device = Device.detect()
    source = resolve(cfg.model)
    tokenizer = load_tokenizer(source, cfg.model)
    context = context_length_of(source, cfg.model, tokenizer)
    options = options or RunOptions()
    plan = dataclasses.replace(resolve_plan(cfg, source.kind, device, context), **options.plan_overrides)
    report_to, report_callbacks = reporting(cfg.training.report_to, run)
    if force and state.is_main_process:
        ck.clear(run)
    state.wait_for_everyone()
    examples = load_examples(cfg, tokenizer, source)
    if state.is_main_process:
        run.write_config(cfg)
        run.write_provenance(cfg, examples.data_hash, device_name())
        if checkpoint is not None:
            ck.trim_replayed_metrics(run, checkpoint)
    set_seed(cfg.training.seed)
    # The model comes first: the token budget (and so the batches) is sized to the memory it leaves.
    fitted = run.train / ck.FITTED
    earlier = json.loads(fitted.read_text()) if checkpoint is not None and fitted.exists() else None
    model, n_params, plan = build_model(cfg, source, plan, examples.labels, device, state.num_processes, earlier)
    if state.is_main_process and earlier is None:
        write_json(fitted, {k: getattr(plan, k) for k in FITTED_FIELDS})
    inputs = build_inputs(source.kind, tokenizer, examples, plan, context=context, seed=cfg.training.seed)
    meter = Meter(source.kind, tokenizer.eos_token_id)
    if checkpoint is not None and (checkpoint / ck.COUNTERS).exists():
        meter.load_state_dict(json.loads((checkpoint / ck.COUNTERS).read_text()))
    trainer, interrupt = build_trainer(cfg, run, plan, model, tokenizer, inputs, meter, state,
                                       [*report_callbacks, *callbacks], report_to, progress, options)
    output = run_training(trainer, cfg, plan, run, checkpoint)
    if interrupt.stopped_at is not None:
        raise TrainingInterrupted(interrupt.stopped_at, ck.latest_checkpoint(run.checkpoints),
                                  interrupt.signal_name or "SIGINT")
    if inputs.eval_sampler is not None and trainer.last_eval.get("step") != trainer.state.global_step:
        trainer.evaluate()
    weights = save_weights(trainer, run, plan, inputs, state) if options.save else None
    summary = summarize(cfg, cell_id, run, plan, trainer, output, inputs, meter, n_params, source.kind, weights,
                        checkpoint, state.num_processes)
    if state.is_main_process:
        write_json(run.train / ck.SUMMARY, summary)
        if progress:
            print_summary(summary)
    state.wait_for_everyone()
    return summary


def reporting(report_to: list[str], run: RunDir) -> tuple[list[str] | str, list[Any]]:
    """TensorBoard writes under train/tensorboard; MLflow goes through the Trainer's own integration."""
    for name, package in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
        if name in report_to and importlib.util.find_spec(package) is None:
            raise UserError(f"training.report_to asks for {name}, but the '{package}' package is not installed",
                            f"pip install {package}, or remove {name} from training.report_to")
    callbacks = []
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(log_dir=str(run.train / "tensorboard"))))
    rest = [name for name in report_to if name != "tensorboard"]
    return rest or "none", callbacks


@contextmanager
def out_of_memory_is_user_error(cfg: CellConfig, plan: Plan) -> Iterator[None]:
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        batch = (f"{plan.tokens_per_batch} tokens per batch" if plan.tokens_per_batch
                 else f"batch size {plan.batch_size} × {plan.max_seq_len} tokens")
        raise UserError(
            f"out of GPU memory training '{cfg.model.name}' with method {plan.method} and {batch}",
            "lower training.tokens_per_batch (or training.batch_size), set training.gradient_checkpointing: true, "
            "or use method: qlora (4-bit base weights)") from None


def build_model(cfg: CellConfig, source: Any, plan: Plan, labels: list[str] | None, device: Device,
                processes: int, fitted: dict[str, Any] | None = None) -> tuple[Any, int, Plan]:
    """The model ready to train, its base parameter count, and the plan with its memory-fitted budget (or the
    `fitted` settings of the run being resumed, so its batches are the same)."""
    from tunebench.train.modeling import base_parameters, fit_to_memory, load_base, local_device, prepare_model

    where = local_device(device.cuda)
    labels = labels if source.kind == "encoder" else None
    with out_of_memory_is_user_error(cfg, plan):
        model = load_base(cfg, source, plan, where, num_labels=len(labels) if labels else None)
        if labels:
            model.config.id2label = dict(enumerate(labels))
            model.config.label2id = {label: i for i, label in enumerate(labels)}
        n_params = base_parameters(model, source, cfg, plan)
        plan = dataclasses.replace(plan, **fitted) if fitted else fit_to_memory(model, plan, where, processes)
        by_transformers = plan.gradient_checkpointing and not uses_fsdp(plan, processes)
        model = prepare_model(model, cfg, source, plan, bool(by_transformers))
    return model, n_params, plan


def uses_fsdp(plan: Plan, processes: int) -> bool:
    """Full fine-tuning on several GPUs: the weights, gradients and optimizer states are sharded (FSDP)."""
    return plan.method == "full" and processes > 1 and _cuda()


def fsdp_arguments(model: Any, plan: Plan) -> dict[str, Any]:
    layers = sorted(getattr(model, "_no_split_modules", None) or [])
    if not layers:
        raise UserError(f"full fine-tuning on several GPUs shards the model by decoder layer, but "
                        f"{type(model).__name__} names no layer class (_no_split_modules)",
                        "train on one GPU (--gpus 0), or use method: lora")
    return {"fsdp": "full_shard auto_wrap",
            "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": layers, "reshard_after_forward": True,
                            "activation_checkpointing": bool(plan.gradient_checkpointing),
                            "state_dict_type": "FULL_STATE_DICT"}}


def steps_per_epoch(inputs: TrainInputs, plan: Plan, processes: int) -> int:
    batches = -(-len(inputs.train_sampler) // processes)
    return max(1, -(-batches // plan.gradient_accumulation))


def training_arguments(cfg: CellConfig, plan: Plan, run: RunDir, total_steps: int, report_to: Any,
                       options: RunOptions | None = None, fsdp: dict[str, Any] | None = None) -> Any:
    from transformers import TrainingArguments

    options = options or RunOptions()
    return TrainingArguments(
        output_dir=str(run.checkpoints), num_train_epochs=plan.epochs, max_steps=cfg.training.max_steps or -1,
        per_device_train_batch_size=1, per_device_eval_batch_size=1,
        gradient_accumulation_steps=plan.gradient_accumulation, learning_rate=plan.learning_rate,
        lr_scheduler_type=plan.lr_scheduler, warmup_steps=plan.warmup_ratio, weight_decay=plan.weight_decay,
        max_grad_norm=plan.max_grad_norm, optim=plan.optimizer,
        bf16=plan.precision == "bf16", fp16=plan.precision == "fp16",
        logging_steps=options.logging_steps or max(1, min(10, total_steps // 20)),
        save_strategy="steps" if options.save else "no",
        save_steps=cfg.training.save_steps or max(1, -(-total_steps // 10)), torch_compile=plan.compile,
        eval_strategy="no",  # EpochCallback asks for an evaluation at every epoch end
        report_to=report_to, seed=cfg.training.seed, data_seed=cfg.training.seed,
        disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=2 if _cuda() else 0,  # collate the next batch while the GPU works on this one
        use_cpu=not _cuda(), ddp_find_unused_parameters=False, **(fsdp or {}), **sync_free(plan),
    )


def sync_free(plan: Plan) -> dict[str, Any]:
    """TrainingArguments that keep the host from waiting on the GPU between logs (`Plan.sync_free_steps`): the
    NaN/Inf check of every step's loss (which only edits the logged average) reads the loss back, and a
    blocking copy of each batch to the GPU waits for the queued work; batches come from pinned memory, so
    they can be copied asynchronously. Weights and losses stay the same; a NaN or Inf loss is logged as it is
    instead of being replaced by the running average."""
    if not plan.sync_free_steps:
        return {}
    return {"logging_nan_inf_filter": False, "accelerator_config": {"non_blocking": True},
            "dataloader_pin_memory": True}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_trainer(cfg: CellConfig, run: RunDir, plan: Plan, model: Any, tokenizer: Any, inputs: TrainInputs,
                  meter: Meter, state: Any, callbacks: list[Any], report_to: Any, progress: bool,
                  options: RunOptions) -> tuple[Any, Any]:
    from transformers import PrinterCallback
    from transformers import ProgressCallback as TqdmCallback

    from tunebench.train.callbacks import EpochCallback, InterruptCallback, MetricsFileCallback, ProgressCallback
    from tunebench.train.trainer import TunebenchTrainer

    per_epoch = steps_per_epoch(inputs, plan, state.num_processes)
    total = cfg.training.max_steps or per_epoch * plan.epochs
    interrupt = InterruptCallback()
    ours = [EpochCallback([inputs.train_sampler], evaluate=cfg.training.eval_each_epoch and bool(inputs.validation)),
            interrupt, MetricsFileCallback(run.train / ck.METRICS)]
    if progress:
        ours.append(ProgressCallback("train"))
    trainer = TunebenchTrainer(
        model=model, args=training_arguments(cfg, plan, run, total, report_to, options,
                                             fsdp_arguments(model, plan) if uses_fsdp(plan, state.num_processes)
                                             else None), train_dataset=inputs.train,
        eval_dataset=inputs.validation or None, data_collator=inputs.collator, processing_class=tokenizer,
        callbacks=[*ours, *callbacks], train_sampler=inputs.train_sampler, eval_sampler=inputs.eval_sampler,
        eval_collator=inputs.eval_collator, meter=meter, kind=plan.kind, labels=inputs.labels,
    )
    for stock in (PrinterCallback, TqdmCallback):
        trainer.remove_callback(stock)
    interrupt.accelerator = trainer.accelerator
    return trainer, interrupt


def run_training(trainer: Any, cfg: CellConfig, plan: Plan, run: RunDir, checkpoint: Path | None) -> Any:
    from tunebench.train.fastlora import sdpa_kernels
    from tunebench.train.trainer import DiskFullError

    trainer.meter.start_training()
    try:
        with out_of_memory_is_user_error(cfg, plan), sdpa_kernels(plan.flash_sdpa):
            return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except DiskFullError as err:
        from tunebench.diskspace import OutOfSpace

        kept = f"the previous checkpoint {err.previous} is intact" if err.previous else "no earlier checkpoint exists"
        then = "run again with --resume" if err.previous else "run again"
        raise OutOfSpace(err.checkpoint, err.needed, kept, then) from None


def save_weights(trainer: Any, run: RunDir, plan: Plan, inputs: TrainInputs, state: Any) -> Path:
    """The final weights (adapter or full model) and the tokenizer, written aside and renamed into place."""
    target = ck.weights_dir(run, plan.adapter)
    staging = target.with_name(f".partial-{target.name}")
    model = trainer.model
    if not plan.adapter:
        model.config.use_cache = True  # inference wants the KV cache back
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    latest = ck.latest_checkpoint(run.checkpoints)
    kept = f"the last checkpoint {latest} is intact" if latest else ""
    with space_guard(target, partial=staging if state.is_main_process else None, kept=kept,
                     then="run the same command with --resume" if latest else "run again"):
        trainer.save_model(str(staging))
        if state.is_main_process:
            (staging / "training_args.bin").unlink(missing_ok=True)
            if inputs.labels:
                (staging / ck.LABELS).write_text(json.dumps(inputs.labels) + "\n")
            ck.replace_dir(staging, target)
    state.wait_for_everyone()
    return target


def best_epoch(run: RunDir, metric: str) -> dict[str, Any] | None:
    scored = []
    for path in ck.epoch_dirs(run.checkpoints):
        record = json.loads((path / "epoch.json").read_text())
        if metric in record:
            scored.append((record[metric], record["epoch"], path))
    if not scored:
        return None
    pick = min if BEST_METRICS[metric] == "min" else max
    value, epoch, path = pick(scored, key=lambda s: s[0])
    return {"metric": metric, "value": value, "epoch": epoch, "path": str(path)}


def summarize(cfg: CellConfig, cell_id: str, run: RunDir, plan: Plan, trainer: Any, output: Any,
              inputs: TrainInputs, meter: Meter, n_params: int, kind: str, weights: Path | None,
              resumed_from: Path | None, processes: int) -> dict[str, Any]:
    trainer.meter.flush(trainer.accelerator)
    device = device_name()
    train_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens_per_s = meter.tokens / max(meter.train_seconds, 1e-9)
    util = mfu(tokens_per_s, n_params, plan.adapter, device, processes if _cuda() else 1)
    price, price_note = price_for(cfg.cost.instance, cfg.cost.price_per_hour, device)
    wall = meter.wall_seconds
    eval_metrics = trainer.last_eval
    return {
        "cell_id": cell_id, "model": cfg.model.name, "kind": kind, "method": plan.method, "recipe": plan.recipe,
        "task": cfg.data.task, "labels": inputs.labels, "device": device, "processes": processes,
        "steps": trainer.state.global_step, "epochs": plan.epochs, "epochs_done": round(trainer.state.epoch or 0, 4),
        "train_loss": train_losses[-1] if train_losses else None, "train_loss_mean": output.training_loss,
        "eval_loss": eval_metrics.get("eval_loss"), "eval_accuracy": eval_metrics.get("eval_accuracy"),
        "best": best_epoch(run, cfg.training.best_metric),
        "epoch_checkpoints": [str(p) for p in ck.epoch_dirs(run.checkpoints)],
        "train_examples": inputs.n_train, "validation_examples": inputs.n_validation,
        "truncated_examples": inputs.truncated, "examples_seen": meter.examples, "tokens_seen": meter.tokens,
        "train_time_s": round(meter.train_seconds, 3), "wall_time_s": round(wall, 3),
        "tokens_per_s": round(tokens_per_s, 2),
        "mfu": util.value, "mfu_formula": util.formula, "base_parameters": n_params,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "quantized_linear_layers": sum(type(m).__name__ == "Linear4bit" for m in trainer.model.modules()),
        "peak_memory_gib": round(peak_memory_gib(), 3), "memory_kind": memory_kind(),
        "price_per_hour": price.price_per_hour if price else None, "price_source": price.name if price else None,
        "cost_usd": cost_of(wall, price, processes if _cuda() else 1),
        "plan": dataclasses.asdict(plan), "notes": [*plan.notes, *([price_note] if price_note else [])],
        "resumed_from": str(resumed_from) if resumed_from else None,
        "weights": str(weights) if weights else None,
    }


def print_summary(s: dict[str, Any]) -> None:
    from tunebench import terminal

    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    cost = "-" if s["cost_usd"] is None else f"${s['cost_usd']:.4f} ({s['price_source']})"
    terminal.console().print(
        f"trained {s['cell_id']}: {s['steps']} steps, {s['epochs_done']:g} epochs, train loss "
        f"{num(s['train_loss'], '.4f')}, eval loss {num(s['eval_loss'], '.4f')}, {s['tokens_per_s']:,.0f} tok/s, "
        f"{s['wall_time_s']:.0f} s, {cost} -> {s['weights']}", highlight=False, soft_wrap=True)
