"""Training peers (issue 21): tunebench `fast` next to TRL's SFTTrainer and a plain transformers Trainer, one run.

Every system trains the same RedPajama-INCITE-3B architecture (random weights, seed 0, drawn by tunebench's own
loader) with the same LoRA (tunebench's cell: r 8, alpha 32, dropout 0.1 on query_key_value, dense,
dense_h_to_4h, dense_4h_to_h; fp32 adapter weights as peft makes them), learning rate 2e-4 constant, max grad
norm 0.3, on the same token sequences: benchmarks/train_throughput.py's synthetic 20 Newsgroups-shaped data,
tokenized by tunebench (prompt + label + EOS, loss on the completion, truncated to the 2,048-token context).
Throughput is measured alike for all: logging every step, rate = non-pad tokens between the first log after
the warm-up steps and the last log, over the time between them; MFU = tokens/s x 4N / 790 TFLOP/s (N = base
parameters, no attention term); peak = torch.cuda.max_memory_allocated.

    tunebench-<case>         train_throughput.py's case or variant (default: fast), through the engine
    trl-packed-padding-free  TRL SFTTrainer + peft: packing (best-fit decreasing) into 16,384-token rows with
                             padding-free batches (position ids), bf16, use_liger_kernel, fused AdamW, no
                             gradient checkpointing. Padding-free wants varlen flash attention (flash-attn or
                             the kernels hub), which the GPU machine lacks: with SDPA, transformers builds a
                             block-diagonal mask over the whole row from the position ids (masked SDPA).
    trl-padded-grouped       the same TRL settings without padding-free: no packing, 8 rows per batch grouped
                             by length, padded with an attention mask
    hf-trainer-padded        plain transformers Trainer + peft: 8 random rows per batch padded to the longest
                             (DataCollatorForSeq2Seq), bf16, fused AdamW, the model's own loss (full logits)

The last line holds the ratios of every tunebench row to every peer, and to the fastest TRL row.

Device (carry .whl: trl, datasets, dill, multiprocess, liger-kernel, bitsandbytes, pydantic...):
    python3 benchmarks/train_peers.py --tunebench before-issue-21,fast --profile-after fast --out $OUT
CPU smoke run (tiny architecture, a few seconds per system):
    python benchmarks/train_peers.py --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import train_throughput as tt

SYSTEMS: dict[str, dict[str, Any]] = {
    "trl-packed-padding-free": {"trainer": "trl", "packing": True},
    "trl-padded-grouped": {"trainer": "trl", "packing": False, "rows": 8, "grouped": True},
    "hf-trainer-padded": {"trainer": "hf", "rows": 8},
}
PACKED_TOKENS = 16384  # TRL's packed row: tunebench fast's token budget per step


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated: {', '.join(SYSTEMS)}")
    parser.add_argument("--tunebench", default="fast", help="comma-separated train_throughput cases or variants")
    parser.add_argument("--profile-after", default="", help="tunebench cases to profile after their timed steps")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per system after warm-up")
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--case-timeout", type=float, default=150.0)
    parser.add_argument("--budget", type=float, default=600.0, help="wall seconds; later systems are skipped")
    parser.add_argument("--packed-tokens", type=int, default=PACKED_TOKENS, help="TRL's packed row length")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: 2 layers, hidden 64, 3 s, 300 examples, "
                        "512-token packed rows, examples cut to 256 tokens")
    parser.add_argument("--max-len", type=int, default=None, help="cut examples shorter than the context (smoke runs)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.seconds, args.examples, args.warmup_steps = min(args.seconds, 3.0), min(args.examples, 200), 2
        args.packed_tokens, args.max_len = min(args.packed_tokens, 512), 256
    return args


def throughput_args(args: argparse.Namespace) -> argparse.Namespace:
    """train_throughput's own arguments for the tunebench rows (and the shared data and model folders)."""
    argv = ["--seconds", str(args.seconds), "--warmup-steps", str(args.warmup_steps), "--examples",
            str(args.examples), "--case-timeout", str(args.case_timeout), "--profile-after", args.profile_after]
    if args.tiny:
        argv += ["--layers", "2", "--hidden", "64"]
    if args.out:
        argv += ["--out", str(args.out)]
    return tt.arguments(argv)


# ---------------------------------------------------------------- one peer (in a worker process)


def tunebench_inputs(root: Path, targs: argparse.Namespace,
                     max_len: int | None = None) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The cell of tunebench's `fast` case, its tokenizer, and its training features (input_ids, labels)."""
    from tunebench.models.loading import load_tokenizer, resolve
    from tunebench.prompts import context_length_of
    from tunebench.train.features import encode_causal
    from tunebench.train.inputs import load_examples

    cell = tt.cell_for(tt.case_spec("fast", targs, root, False))
    source = resolve(cell.model)
    tokenizer = load_tokenizer(source, cell.model)
    context = context_length_of(source, cell.model, tokenizer)
    examples = load_examples(cell, tokenizer, source)
    encoded = encode_causal(tokenizer, examples.train, loss_on=cell.training.loss_on,
                            max_len=min(context, max_len or context))
    return cell, tokenizer, encoded.features


def base_model(cell: Any, cuda: bool) -> Any:
    """tunebench's loader, so every system starts from the same random weights."""
    import torch
    from transformers import set_seed

    from tunebench.models.loading import load_model, resolve

    set_seed(cell.training.seed)
    model_cfg = cell.model.model_copy(update={"dtype": "bfloat16" if cuda else "float32"})
    model = load_model(model_cfg, resolve(model_cfg), device="cuda" if cuda else "cpu")
    model.config.use_cache = False  # a KV cache turns off transformers' packed-sequence masks
    assert next(model.parameters()).dtype == (torch.bfloat16 if cuda else torch.float32)
    return model


def lora_config(cell: Any) -> Any:
    from peft import LoraConfig

    from tunebench.models.presets import NEOX_TARGETS

    return LoraConfig(r=cell.lora.r, lora_alpha=cell.lora.alpha, lora_dropout=cell.lora.dropout,
                      target_modules=list(NEOX_TARGETS), task_type="CAUSAL_LM")


def common_arguments(cell: Any, out: str, cuda: bool) -> dict[str, Any]:
    return {"output_dir": out, "max_steps": 100_000, "learning_rate": 2e-4, "lr_scheduler_type": "constant",
            "warmup_steps": 0, "weight_decay": cell.training.weight_decay, "max_grad_norm": 0.3,
            "optim": "adamw_torch_fused" if cuda else "adamw_torch", "bf16": cuda, "fp16": False,
            "gradient_checkpointing": False, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
            "disable_tqdm": True, "dataloader_num_workers": 2 if cuda else 0, "seed": cell.training.seed,
            "data_seed": cell.training.seed, "use_cpu": not cuda}


def grouping(config_cls: Any) -> dict[str, Any]:
    """Length-grouped sampling under whichever name this transformers version has."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def counting(trainer_cls: Any) -> Any:
    """The trainer class, counting each micro-batch's non-pad tokens on the device (read at every log)."""

    class Counting(trainer_cls):
        pending: list[Any]

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            self.pending.append(mask.sum() if mask is not None else inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    return Counting


def recorder(records: list[dict[str, Any]]) -> Any:
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        trainer: Any = None

        def __init__(self) -> None:
            self.tokens = 0
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # the loss was just read from the GPU: the step is done
                self.tokens += sum(int(t) for t in self.trainer.pending)
                self.trainer.pending.clear()
                records.append({"step": state.global_step, "tokens": self.tokens, "loss": logs["loss"],
                                "elapsed_s": time.perf_counter() - self.start})

    return Record()


def build_peer(system: dict[str, Any], cell: Any, tokenizer: Any, features: list[dict[str, Any]], out: str,
               cuda: bool, packed_tokens: int = PACKED_TOKENS) -> tuple[Any, dict[str, Any]]:
    model = base_model(cell, cuda)
    n_params = sum(p.numel() for p in model.parameters())
    common = common_arguments(cell, out, cuda)
    if system["trainer"] == "hf":
        from peft import get_peft_model
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        args = TrainingArguments(**common, per_device_train_batch_size=system["rows"], remove_unused_columns=False)
        trainer = counting(Trainer)(
            model=get_peft_model(model, lora_config(cell)), args=args, train_dataset=features,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            processing_class=tokenizer)
        settings = {"batch": f"{system['rows']} random rows padded to the longest", "attention_mask": True,
                    "loss": "model's own (full logits)"}
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        packing = system["packing"]
        extra = {} if packing else grouping(SFTConfig)
        args = SFTConfig(**common, **extra, max_length=packed_tokens if packing else None, packing=packing,
                         packing_strategy="bfd", padding_free=packing, use_liger_kernel=cuda,
                         per_device_train_batch_size=1 if packing else system["rows"])
        trainer = counting(SFTTrainer)(model=model, args=args, train_dataset=Dataset.from_list(features),
                                       processing_class=tokenizer, peft_config=lora_config(cell))
        settings = {"batch": f"packed rows of {packed_tokens} tokens (bfd), padding-free" if packing
                    else f"{system['rows']} length-grouped rows, padded", "attention_mask": not packing,
                    "use_liger_kernel": cuda, "loss": "TRL's chunked LM head"}
    trainer.pending = []
    settings |= {"optimizer": args.optim, "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
                 "attn_implementation": model.config._attn_implementation, "lora_r": cell.lora.r,
                 "lora_alpha": cell.lora.alpha, "lora_dropout": cell.lora.dropout}
    return trainer, {"base_parameters": n_params, "settings": settings}


def run_peer(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tunebench.rundir import device_name
    from tunebench.train.metering import mfu, peak_memory_gib

    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    root, targs = Path(spec["root"]), argparse.Namespace(**spec["targs"])
    cell, tokenizer, features = tunebench_inputs(root, targs, spec.get("max_len"))
    system = SYSTEMS[spec["name"]]
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peer-") as out:
        trainer, info = build_peer(system, cell, tokenizer, features, out, cuda, spec["packed_tokens"])
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # its printed dicts would mix with the JSON lines
        record = recorder(records)
        record.trainer = trainer
        trainer.add_callback(record)
        trainer.add_callback(tt.timer_callback({"warmup_steps": spec["warmup_steps"], "seconds": spec["seconds"],
                                                "profile": False, "name": spec["name"], "out": None}))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    rate = tt.steady(records, spec["warmup_steps"])
    device = device_name()
    util = mfu(rate.get("tokens_per_s", 0.0), info["base_parameters"], True, device, 1)
    losses = [r["loss"] for r in records]
    return {"system": spec["name"], "trainer": system["trainer"], "model": "redpajama-3b", "method": "lora", **rate,
            "mfu": None if util.value is None else round(util.value, 4), "peak_memory_gib": round(peak_memory_gib(), 3),
            "steps": records[-1]["step"] if records else 0, "tokens_seen": records[-1]["tokens"] if records else 0,
            "tokens_per_step": round(records[-1]["tokens"] / records[-1]["step"]) if records else None,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "loss_at_tokens": tt.loss_at_tokens(records), **info, "device": device,
            "case_wall_s": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------- driver


def run_peer_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-1500:]
        return {"system": spec["name"], "error": f"timed out after {timeout:.0f} s",
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"system": spec["name"], "error": f"exit {done.returncode}", "stderr_tail": done.stderr[-2500:]}
    return json.loads(lines[-1])


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found = tt.versions()
    for name in ("trl", "datasets"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    rate = {r["system"]: r["tokens_per_s"] for r in results if r.get("tokens_per_s") and "system" in r}
    ours = {s: v for s, v in rate.items() if s.startswith("tunebench-")}
    peers = {s: v for s, v in rate.items() if not s.startswith("tunebench-")}
    trl = {s: v for s, v in peers.items() if s.startswith("trl-")}
    best = max(trl, key=trl.get) if trl else None
    return {"ratios": {f"{a} / {b}": round(va / vb, 2) for a, va in ours.items() for b, vb in peers.items()},
            "trl_best": best, "vs_trl_best": {a: round(va / trl[best], 2) for a, va in ours.items()} if best else {}}


def emit(line: dict[str, Any], args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    results.append(line)
    print(json.dumps(line), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "train_peers.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        print(json.dumps(run_peer(json.loads(args.worker))), flush=True)
        return 0
    started = time.perf_counter()
    targs = throughput_args(args)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tunebench-peers-") as tmp:
        root = Path(tmp)
        tt.prepare(root, targs)
        emit({"benchmark": "train_peers", "versions": versions(), "seconds": args.seconds,
              "warmup_steps": args.warmup_steps, "examples": args.examples}, args, results)
        todo = [("tunebench", n.strip()) for n in args.tunebench.split(",") if n.strip()]
        todo += [("peer", n.strip()) for n in args.systems.split(",") if n.strip()]
        for kind, name in todo:
            left = args.budget - (time.perf_counter() - started)
            if left < 30:
                emit({"system": name, "skipped": f"--budget {args.budget:.0f} s spent"}, args, results)
                continue
            if kind == "tunebench":
                spec = tt.case_spec(name, targs, root, name not in tt.CASES)
                line = {"system": f"tunebench-{name}", **tt.run_in_subprocess(spec, min(spec["timeout"], left))}
            else:
                if name not in SYSTEMS:
                    raise SystemExit(f"unknown system {name!r}; choose from {list(SYSTEMS)}")
                spec = {"name": name, "root": str(root), "targs": {k: (str(v) if isinstance(v, Path) else v)
                                                                    for k, v in vars(targs).items()},
                        "warmup_steps": args.warmup_steps, "seconds": args.seconds,
                        "packed_tokens": args.packed_tokens, "max_len": args.max_len}
                line = run_peer_subprocess(spec, min(args.case_timeout, left))
            line["elapsed_total_s"] = round(time.perf_counter() - started, 1)
            emit(line, args, results)
    emit(ratios(results), args, results)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
