"""Training throughput on the GPU (issue 9): `original` vs `fast` recipes through the real engine, one JSON line each.

Every case trains a RedPajama-INCITE architecture (3B or 7B preset numbers, random weights) through
`tunebench.train.train_cell` (recipes, batching, Trainer, PEFT, bitsandbytes, liger-kernel) on synthetic
classification text whose token lengths follow benchmarks/data/token_profile.json (20 Newsgroups in the
fine-tuning format, truncated by the recipe as in a real run). A case runs a few warm-up steps, then is timed
for --seconds; its line has non-pad tokens/s over the timed steps, MFU (4N FLOPs/token for LoRA, 6N full),
peak GPU memory, step time, the loss at the end, and the loss at fixed token counts (`loss_at_tokens`, mean of
the logged step losses within ±25 % of each count) so "not worse at equal tokens" can be checked against
`original`. Runs are stopped by time, so every case uses a constant learning rate without warm-up (a warm-up
ratio of an unknown step count means nothing); all other hyperparameters are the recipes'.

    original            the original study: QLoRA nf4 + fp16, 512-token concatenated rows, 1 x 4 accumulation,
                        gradient checkpointing, paged AdamW 32-bit
    fast                fast recipe, bf16 LoRA (same targets, r, alpha, dropout, learning rate)
    fast-qlora-24gib    fast recipe, QLoRA nf4, process capped at 24 GiB (the original's A10G budget)
    fast-7b             fast recipe on the 7B architecture
    fast-tokens-2k      fast with the original's 2,048 tokens per optimizer step: the loss at equal tokens
                        and equal step size, separating the engine from the larger-batch trade-off
    full-7b-fsdp        full fine-tuning of 7B, FSDP full_shard over the GPUs (run it under torchrun)

`--variants` sweeps engine knobs on the 3B `fast` case (token budget, attention path, liger, torch.compile,
fused AdamW, and issue 21's kernel choices: `no-norms`, `no-rope` (transformers' rotary instead of the compiled
one), `split-rope`, `rope` (liger's), `no-sync-free`, `no-lora-linear`, `issue-21-round-1` (`fast` as issue
21's first round left it) and `before-issue-21`, which is `fast` without any of them); `--profile-after CASE[,CASE]`
profiles 3 steps after a case's timed ones, with a per-step device-time breakdown (benchmarks/train_profiling.py);
`--profile CASE[,CASE]` writes a torch.profiler summary for those cases (top CUDA kernels, GPU busy
vs. wall time, the largest idle gaps) to --out. Each single-GPU case runs in its own subprocess (a memory cap
and a crash stay inside it; `--case-timeout` bounds it); under torchrun the cases run in the launched processes.
The last line estimates the time and cost to fine-tune RedPajama-3B on the full 20 Newsgroups (5 epochs) and
SAMSum (1 epoch) from the measured tokens/s and src/tunebench/cost/prices.yaml.

Device commands (carry [".whl"]; liger-kernel, bitsandbytes and pydantic are the wheels needed):
    P="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site"
    $P .whl/liger_kernel-*.whl .whl/bitsandbytes-*.whl .whl/pydantic-*.whl .whl/pydantic_core-*.whl \\
       .whl/annotated_types-*.whl .whl/typing_inspection-*.whl \\
       && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
  1. exploration (one H200, about 7 min):
       $P ... && python3 benchmarks/train_throughput.py --variants --profile fast,original --out $OUT
  2. final measurement (one H200, about 6 min): original, fast, fast-qlora-24gib, fast-7b, fast-tokens-2k
       $P ... && python3 benchmarks/train_throughput.py --out $OUT
  3. two GPUs (nvidia-h200-x2, about 4 min): data-parallel `fast`, then full fine-tuning of 7B with FSDP:
       $P ... && NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc-per-node 2 benchmarks/train_throughput.py \\
         --cases fast,full-7b-fsdp --out $OUT

Smoke run on a CPU (tiny architecture, no quantization):
    python benchmarks/train_throughput.py --cases fast --layers 2 --hidden 64 --seconds 3 --no-cost
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from train_profiling import write_profile

HERE = Path(__file__).resolve().parent
PROFILE = HERE / "data" / "token_profile.json"
LABELS = [f"topic{i:02d}" for i in range(20)]
WORDS = [f"w{i}" for i in range(4000)]
PROMPT_OVERHEAD = 8  # "###", "Sentence", ":", "###", "Class", ":", the label, EOS: one token each
GIB = 2**30
PROFILED = "-profiled"  # suffix of the profiled runs' case names (their rates carry the profiler's overhead)
CONTEXT = 2048  # RedPajama's context: both recipes truncate an example to it
LOSS_GRID = [2**k * 1024 for k in range(4, 12)]  # 16k ... 2M tokens
PROFILE_AFTER_STEPS = 3

CASES: dict[str, dict[str, Any]] = {
    "original": {"model": "3b", "method": "qlora", "training": {"recipe": "original"}},
    "fast": {"model": "3b", "method": "lora", "training": {"recipe": "fast"}},
    "fast-qlora-24gib": {"model": "3b", "method": "qlora", "training": {"recipe": "fast"}, "memory_gib": 24},
    "fast-7b": {"model": "7b", "method": "lora", "training": {"recipe": "fast"}},
    "fast-tokens-2k": {"model": "3b", "method": "lora", "training": {"recipe": "fast", "tokens_per_batch": 2048}},
    "full-7b-fsdp": {"model": "7b", "method": "full", "training": {"recipe": "fast", "gradient_checkpointing": True},
                     "overrides": {"fused_loss": False}},
}
# Engine knobs, each on top of the 3B `fast` case; the riskiest (compilation) last.
VARIANTS: dict[str, dict[str, Any]] = {
    "fast": {},
    "tokens-8k": {"training": {"tokens_per_batch": 8192}},
    "tokens-32k": {"training": {"tokens_per_batch": 32768}},
    "packed-sdpa": {"training": {"packing": "padding_free"}},
    "padded-masked-sdpa": {"overrides": {"attention_mask": True}},
    "no-liger": {"overrides": {"fused_loss": False}},
    "qlora-24gib-ckpt-16k": {"method": "qlora", "memory_gib": 24,
                             "training": {"tokens_per_batch": 16384, "gradient_checkpointing": True}},
    "compile": {"overrides": {"compile": True}, "timeout": 90},
    "packed-flex": {"training": {"packing": "padding_free"}, "attn": "flex_attention", "timeout": 90},
    "adamw-unfused": {"training": {"optimizer": "adamw_torch"}},
    # Issue 21's kernel choices (train/fastlora.py), each removed from `fast`, and all of them together:
    "no-rope": {"overrides": {"fused_rope": False, "rope": "transformers"}},
    "rope": {"overrides": {"fused_rope": True}},
    "split-rope": {"overrides": {"rope": "split"}},
    "no-sync-free": {"overrides": {"sync_free_steps": False}},
    "no-lora-linear": {"overrides": {"fused_lora_linear": False}},
    "no-norms": {"overrides": {"norms_in_compute_dtype": False}},
    # `fast` as the first round of issue 21 left it (fused LoRA, flash SDPA, bf16 norms; stock rope, syncs):
    "issue-21-round-1": {"overrides": {"rope": "transformers", "sync_free_steps": False, "fused_lora_linear": False}},
    "before-issue-21": {"overrides": {"fused_lora": False, "fused_lora_linear": False, "flash_sdpa": False,
                                      "norms_in_compute_dtype": False, "fused_rope": False, "rope": "transformers",
                                      "sync_free_steps": False}},
}
DEFAULT_SECONDS = {"original": 60.0, "full-7b-fsdp": 45.0}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None, help=f"comma-separated: {', '.join(CASES)} "
                        "(default: all single-GPU cases, or none with --variants)")
    parser.add_argument("--variants", action="store_true", help=f"sweep: {', '.join(VARIANTS)}")
    parser.add_argument("--only-variants", default=None, help="comma-separated subset of the variants")
    parser.add_argument("--profile", default=None, help="comma-separated cases or variants to profile")
    parser.add_argument("--profile-after", default="", help="comma-separated cases or variants that, after their "
                        "timed steps, profile PROFILE_AFTER_STEPS more (the rate is not affected)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timed seconds per case after warm-up (default 30; original 60; variants 12)")
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--case-timeout", type=float, default=150.0, help="seconds before a case's process is killed")
    parser.add_argument("--budget", type=float, default=440.0, help="wall seconds for the whole sweep; later "
                        "variants are skipped (and named) once it is spent")
    parser.add_argument("--examples", type=int, default=6000, help="synthetic training examples")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="CASE.training.KEY=VALUE",
                        help="override a case's training field, e.g. fast.training.tokens_per_batch=8192")
    parser.add_argument("--layers", type=int, default=None, help="shrink the architecture (smoke runs)")
    parser.add_argument("--hidden", type=int, default=None, help="shrink the architecture (smoke runs)")
    parser.add_argument("--no-cost", action="store_true", help="skip the time/cost-to-train line")
    parser.add_argument("--out", type=Path, default=None, help="write results, loss curves and profiles here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON spec of one case (internal)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- synthetic model directories and data


def profile_lengths(dataset: str) -> tuple[list[int], list[int]]:
    histogram = json.loads(PROFILE.read_text())["datasets"][dataset]["histogram"]
    return histogram["edges"], histogram["counts"]


def sequence_lengths(n: int, rng: random.Random) -> list[int]:
    """Token lengths of whole training sequences, drawn from the 20 Newsgroups profile."""
    edges, counts = profile_lengths("newsgroups")
    bins = rng.choices(range(len(counts)), weights=counts, k=n)
    return [min(rng.randrange(edges[b], edges[b + 1]), 8 * CONTEXT) for b in bins]


def write_data(folder: Path, n_train: int) -> None:
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choices(WORDS, k=max(1, length - PROMPT_OVERHEAD))), "label": LABELS[i % 20]}
            for i, length in enumerate(sequence_lengths(n_train + 64, rng))]
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def write_model_dir(folder: Path, preset: str, layers: int | None, hidden: int | None) -> None:
    """config.json of the preset, and a word-level tokenizer (one token per synthetic word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, PreTrainedTokenizerFast

    from tunebench.models.presets import PRESETS

    arch = dict(PRESETS[preset].architecture)
    if layers:
        arch["num_hidden_layers"] = layers
    if hidden:
        arch.update(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=4)
    AutoConfig.for_model(arch.pop("model_type"), **arch).save_pretrained(folder)
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<unk>", "###", "Sentence", "Class", ":",
                                                  *LABELS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            unk_token="<unk>").save_pretrained(folder)


def prepare(root: Path, args: argparse.Namespace) -> None:
    write_data(root / "data", args.examples)
    for size in ("3b", "7b"):
        write_model_dir(root / f"model-{size}", f"redpajama-{size}", args.layers, args.hidden)


# ---------------------------------------------------------------- one case (in a worker process)


def case_spec(name: str, args: argparse.Namespace, root: Path, variant: bool) -> dict[str, Any]:
    base = dict(CASES["fast"] if variant else CASES[name])
    extra = VARIANTS[name] if variant else {}
    training = {**base.get("training", {}), **extra.get("training", {})}
    for item in args.sets:
        key, _, value = item.partition("=")
        case, _, field = key.partition(".training.")
        if case == name and field:
            training[field] = json.loads(value) if value[:1] in "0123456789tfn[{\"-" else value
    seconds = args.seconds or (12.0 if variant else DEFAULT_SECONDS.get(name, 30.0))
    return {"name": name, "variant": variant, "root": str(root), "model": base["model"],
            "method": extra.get("method", base["method"]), "training": training,
            "overrides": {**base.get("overrides", {}), **extra.get("overrides", {})},
            "memory_gib": extra.get("memory_gib", base.get("memory_gib")), "attn": extra.get("attn"),
            "seconds": seconds, "warmup_steps": args.warmup_steps, "profile": False,
            "profile_after": name in args.profile_after.split(","),
            "timeout": min(args.case_timeout, extra.get("timeout", args.case_timeout)),
            "out": str(args.out) if args.out else None}


def cell_for(spec: dict[str, Any]) -> Any:
    from tunebench.config.schema import CellConfig
    from tunebench.models.presets import NEOX_TARGETS

    root = Path(spec["root"])
    model = {"name": str(root / f"model-{spec['model']}"), "random_weights": True}
    if spec["attn"]:
        model["attn_implementation"] = spec["attn"]
    return CellConfig.model_validate({
        "model": model, "method": spec["method"], "lora": {"target_modules": NEOX_TARGETS},
        "data": {"source": str(root / "data"), "task": "classification", "validation_size": 0.01},
        "training": {"epochs": 1, "max_steps": 100_000, "warmup_ratio": 0.0, "eval_each_epoch": False,
                     **spec["training"]},
        "cost": {"instance": "h200"},
    })


def timer_callback(spec: dict[str, Any]) -> Any:
    """Stops training `seconds` after the warm-up steps; optionally profiles a few steps after the warm-up."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def __init__(self) -> None:
            self.started: float | None = None
            self.profiler: Any = None
            self.profiled_steps = 0
            self.profile_wall = 0.0
            self.timed_end: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == spec["warmup_steps"]:
                self.started = time.perf_counter()
                if spec["profile"]:
                    self.start_profile()
            elif self.profiler is not None:
                self.profiled_steps += 1
                if self.profiled_steps == 5:
                    self.stop_profile()
            if self.started is not None and self.profiler is None and self.time_is_up(state.global_step):
                if spec.get("profile_after") and self.timed_end is None:
                    self.timed_end = state.global_step  # the rate ends here; the profiled steps follow
                    self.start_profile()
                    self.profiled_steps = -PROFILE_AFTER_STEPS + 5  # stop_profile after PROFILE_AFTER_STEPS
                    return
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            if self.profiler is not None:  # training ended inside the profiled steps
                self.stop_profile()

        def time_is_up(self, step: int) -> bool:
            up = time.perf_counter() - self.started >= spec["seconds"]
            import torch.distributed as dist

            if not dist.is_available() or not dist.is_initialized():
                return up
            if step % 5:  # every process must stop at the same step: agree every 5 steps
                return False
            import torch

            where = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
            flag = torch.tensor([int(up)], device=where)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())

        def start_profile(self) -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                record_shapes=bool(spec.get("profile_after")))
            self.profiler.__enter__()
            self.profile_wall = time.perf_counter()

        def stop_profile(self) -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.profile_wall
            self.profiler.__exit__(None, None, None)
            steps = PROFILE_AFTER_STEPS if self.timed_end is not None else max(1, self.profiled_steps)
            write_profile(self.profiler, wall, steps, spec)
            self.profiler = None

    return StopAfter()


def loss_at_tokens(records: list[dict[str, Any]]) -> dict[str, float]:
    points = [(r["tokens"], r["loss"]) for r in records if "loss" in r and "tokens" in r]
    found = {}
    for target in LOSS_GRID:
        near = [loss for tokens, loss in points if 0.75 * target <= tokens <= 1.25 * target]
        if near:
            found[str(target)] = round(sum(near) / len(near), 4)
    return found


def steady(records: list[dict[str, Any]], warmup_steps: int) -> dict[str, Any]:
    """Throughput between the first log after warm-up and the last log (each log waits for the GPU)."""
    timed = [r for r in records if "tokens" in r and r["step"] >= warmup_steps]
    if len(timed) < 2:
        return {}
    first, last = timed[0], timed[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    steps = last["step"] - first["step"]
    return {"tokens_per_s": round((last["tokens"] - first["tokens"]) / seconds, 1), "timed_steps": steps,
            "timed_s": round(seconds, 2), "step_time_s": round(seconds / steps, 4)}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tunebench.rundir import RunDir
    from tunebench.train import train_cell
    from tunebench.train.engine import RunOptions
    from tunebench.train.metering import mfu

    cuda = torch.cuda.is_available()
    if cuda and spec["memory_gib"]:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        torch.cuda.set_per_process_memory_fraction(spec["memory_gib"] * GIB / total)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run = RunDir(Path(spec["root"]) / "runs" / spec["name"])
    start = time.perf_counter()
    options = RunOptions(plan_overrides=spec["overrides"], logging_steps=1, save=False)
    timer = timer_callback(spec)
    summary = train_cell(cell_for(spec), run, force=True, progress=False, callbacks=[timer], options=options)
    records = [json.loads(line) for line in (run.train / "metrics.jsonl").read_text().splitlines()]
    if timer.timed_end is not None:  # leave the profiled steps out of the rate and the losses
        records = [r for r in records if r.get("step", 0) <= timer.timed_end]
    rate = steady(records, spec["warmup_steps"])
    losses = [r["loss"] for r in records if "loss" in r]
    plan = summary["plan"]
    util = mfu(rate.get("tokens_per_s", 0.0), summary["base_parameters"], plan["method"] != "full",
               summary["device"], summary["processes"] if cuda else 1)
    if spec["out"] and int(os.environ.get("RANK", "0")) == 0:
        out = Path(spec["out"])
        out.mkdir(parents=True, exist_ok=True)
        with (out / "loss_curves.jsonl").open("a") as f:
            f.write(json.dumps({"case": spec["name"], "points": [[r["tokens"], r["loss"]] for r in records
                                                                 if "loss" in r]}) + "\n")
    return {
        "case": spec["name"], "variant": spec["variant"], "model": f"redpajama-{spec['model']}",
        "method": plan["method"], "recipe": plan["recipe"], "gpus": summary["processes"],
        **rate, "mfu": None if util.value is None else round(util.value, 4),
        "peak_memory_gib": summary["peak_memory_gib"], "memory_cap_gib": spec["memory_gib"],
        "steps": summary["steps"], "tokens_seen": summary["tokens_seen"],
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "loss_end_mean5": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None,
        "loss_at_tokens": loss_at_tokens(records),
        "packing": plan["packing"], "attention_mask": plan["attention_mask"], "attn": spec["attn"] or "sdpa",
        "fused_loss": plan["fused_loss"], "compile": plan["compile"], "optimizer": plan["optimizer"],
        **{k: plan.get(k) for k in ("fused_lora", "fused_lora_linear", "flash_sdpa", "norms_in_compute_dtype",
                                    "fused_rope", "rope", "sync_free_steps")},
        "precision": plan["precision"], "quantization": plan["quantization"],
        "tokens_per_batch": plan["tokens_per_batch"], "batch_size": plan["batch_size"],
        "gradient_accumulation": plan["gradient_accumulation"],
        "gradient_checkpointing": plan["gradient_checkpointing"],
        "base_parameters": summary["base_parameters"], "case_wall_s": round(time.perf_counter() - start, 1),
        "device": summary["device"], "notes": summary["notes"],
    }


# ---------------------------------------------------------------- driver


def run_in_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One case in its own Python process: its memory cap, compilation caches and a crash stay there."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-600:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"case": spec["name"], "error": f"timed out after {timeout:.0f} s", "stderr_tail": tail}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    for line in lines[:-1]:  # profiler summaries
        print(line, flush=True)
    if done.returncode != 0 or not lines:
        return {"case": spec["name"], "error": f"exit {done.returncode}", "stderr_tail": done.stderr[-1500:],
                "wall_s": round(time.perf_counter() - started, 1)}
    return json.loads(lines[-1])


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel", "triton"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def plan_runs(args: argparse.Namespace, distributed: bool) -> list[tuple[str, bool]]:
    if args.cases:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    else:
        cases = [] if args.variants or args.profile else [
            "original", "fast", "fast-qlora-24gib", "fast-7b", "fast-tokens-2k"]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if "full-7b-fsdp" in cases and not distributed:
        raise SystemExit("full-7b-fsdp shards over several GPUs: run it under torchrun --nproc-per-node 2")
    runs = [(c, False) for c in cases]
    if args.variants:
        chosen = args.only_variants.split(",") if args.only_variants else list(VARIANTS)
        runs += [(v, True) for v in chosen if v in VARIANTS]
    return runs


def profile_runs(args: argparse.Namespace) -> list[tuple[str, bool]]:
    names = [n.strip() for n in (args.profile or "").split(",") if n.strip()]
    return [(n, n not in CASES) for n in names if n in CASES or n in VARIANTS]


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(run_worker(spec)), flush=True)
        return 0
    distributed = "LOCAL_RANK" in os.environ
    return run_distributed(args) if distributed else run_single(args)


def emit(line: dict[str, Any], args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    results.append(line)
    print(json.dumps(line), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "train_throughput.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")


def run_single(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tunebench-throughput-") as tmp:
        root = Path(tmp)
        prepare(root, args)
        emit({"benchmark": "train_throughput", "lengths_from": f"{PROFILE.name} (newsgroups)",
              "versions": versions(), "prepared_s": round(time.perf_counter() - started, 1)}, args, results)
        # Profiles first: the sweep's budget may run out before its last variants.
        todo = [(name, variant, True) for name, variant in profile_runs(args)]
        todo += [(name, variant, False) for name, variant in plan_runs(args, False)]
        for name, variant, profile in todo:
            left = args.budget - (time.perf_counter() - started)
            if left < 30:
                emit({"case": name, "skipped": f"--budget {args.budget:.0f} s spent"}, args, results)
                continue
            spec = case_spec(name, args, root, variant)
            if profile:
                spec.update(profile=True, seconds=min(spec["seconds"], 6.0), name=f"{name}{PROFILED}")
            line = run_in_subprocess(spec, min(spec["timeout"], left))
            line["elapsed_total_s"] = round(time.perf_counter() - started, 1)
            emit(line, args, results)
    finish(args, results)
    return 1 if any("error" in r for r in results) else 0


def run_distributed(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    state = PartialState()
    root = Path(tempfile.gettempdir()) / "tunebench-throughput-ddp"
    if state.is_main_process:
        prepare(root, args)
    state.wait_for_everyone()
    results: list[dict[str, Any]] = []
    for name, variant in plan_runs(args, True):
        spec = case_spec(name, args, root, variant)
        spec["name"] = f"{name}-{os.environ.get('WORLD_SIZE', state.num_processes)}gpu"
        try:
            line = run_worker(spec)
        except Exception as err:  # one failing case must not hide the next one's numbers
            line = {"case": spec["name"], "error": f"{type(err).__name__}: {err}"}
        if state.is_main_process:
            emit(line, args, results)
        state.wait_for_everyone()
    if state.is_main_process:
        finish(args, results)
    return 0


# ---------------------------------------------------------------- time and cost to train


def dataset_tokens(dataset: str, cap: int) -> tuple[int, int]:
    """Rows and tokens of a whole training split, each sequence truncated to `cap` (histogram midpoints)."""
    edges, counts = profile_lengths(dataset)
    tokens = sum(n * min((lo + hi) / 2, cap) for lo, hi, n in zip(edges, edges[1:], counts, strict=False))
    return sum(counts), int(tokens)


def measured(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cases measured without a profiler attached, variants left out."""
    return [r for r in results if r.get("tokens_per_s") and not r.get("variant")
            and not r["case"].endswith(PROFILED)]


def cost_line(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Time and cost of the original study's two fine-tunings at the measured rates (one GPU each)."""
    from tunebench.cost import lookup
    from tunebench.train.metering import PEAK_TFLOPS

    rates = {r["case"]: (r["tokens_per_s"], r.get("gpus") or 1) for r in measured(results)}
    if not rates:
        return None
    jobs = {"newsgroups_5_epochs": ("newsgroups", 5), "samsum_1_epoch": ("samsum", 1)}
    h200, a10g = lookup("h200"), lookup("g5.2xlarge")
    a10g_scale = PEAK_TFLOPS["a10g"] / PEAK_TFLOPS["h200"]
    estimates: dict[str, Any] = {}
    for job, (dataset, epochs) in jobs.items():
        rows, tokens = dataset_tokens(dataset, CONTEXT)
        entry: dict[str, Any] = {"rows": rows, "tokens_per_epoch": tokens, "epochs": epochs}
        for case, (rate, gpus) in rates.items():
            hours = tokens * epochs / rate / 3600
            entry[case] = {"h200_hours": round(hours, 3), "h200_usd": round(hours * gpus * h200.price_per_hour, 2)}
            if case in ("original", "fast-qlora-24gib"):  # fits the A10G's 24 GB; same MFU assumed there
                a10g_hours = hours / a10g_scale
                entry[case] |= {"a10g_hours_est": round(a10g_hours, 2),
                                "a10g_usd_est": round(a10g_hours * a10g.price_per_hour, 2)}
        estimates[job] = entry
    return {"estimate": "time_and_cost_to_train_redpajama_3b", "jobs": estimates,
            "tokens": f"token_profile.json histograms (midpoints), each sequence truncated to {CONTEXT}",
            "prices": {"h200": h200.price_per_hour, "g5.2xlarge_a10g": a10g.price_per_hour},
            "a10g_method": f"H200 tokens/s x {a10g_scale:.3f} (dense bf16 peak ratio 125/790), i.e. the same MFU",
            "original_study": {"newsgroups_5_epochs": "2 h, $2.42 (A10G)", "samsum_1_epoch": "3 h, $3.64 (A10G)"},
            "wall_clock_excludes": "model loading, evaluation and checkpoint writing"}


def equal_token_line(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    base = next((r for r in results if r.get("case") == "original" and r.get("loss_at_tokens")), None)
    if base is None:
        return None
    others = {r["case"]: r["loss_at_tokens"] for r in measured(results) if r.get("loss_at_tokens") and r is not base}
    shared = {case: {t: [base["loss_at_tokens"][t], loss[t]] for t in base["loss_at_tokens"] if t in loss}
              for case, loss in others.items()}
    return {"compare": "loss_at_equal_tokens [original, case]", "cases": shared}


def finish(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    extra = [equal_token_line(results)]
    if not args.no_cost:
        extra.append(cost_line(results))
    for line in extra:
        if line:
            emit(line, args, [])


if __name__ == "__main__":
    sys.exit(main())
