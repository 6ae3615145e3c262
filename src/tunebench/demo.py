"""`tunebench demo`: the demo study end to end on the embedded model and the built-in samples, then its report.

It runs `studies/demo.yaml` through the studies runner (zero-shot, few-shot and LoRA on both tasks, a small
sample-efficiency sweep, time and cost), writes the four-pillar report as Markdown and self-contained HTML,
and prints the headline tables. A second run reuses every finished cell. `--examples N` is a quick look
instead: N rendered zero-shot prompts per task with the model's greedy answer beside the reference.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tunebench import terminal
from tunebench.errors import UserError

TASKS = ("classification", "summarization")
# x86 flags of native bf16 matrix instructions. Without them PyTorch emulates bf16 on the CPU, which is slower
# than fp32; with them the demo's matmuls run 2-4x faster than in fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = ("auto", "float32", "bfloat16")
MAX_NEW_TOKENS = {"classification": 8, "summarization": 48}
DEMO_STUDY = Path("studies") / "demo.yaml"


@dataclass
class DemoItem:
    task: str
    example_id: str
    prompt: str
    n_tokens: int
    reference: str
    output: str = ""


# ---------------------------------------------------------------- a look at the prompts (--examples N)


def prepare(n_examples: int, tokenizer: Any, source: Any) -> list[DemoItem]:
    from tunebench.config.schema import CellConfig, DataConfig
    from tunebench.data import load_task_data
    from tunebench.prompts import PromptBuilder

    items: list[DemoItem] = []
    for task in TASKS:
        cell = CellConfig(data=DataConfig(source=f"builtin:{task}", task=task), method="zero_shot")
        data = load_task_data(cell.data, tokenizer)
        builder = PromptBuilder.for_cell(cell, tokenizer, data, source)
        for ex in data.test[:n_examples]:
            prompt = builder.zero_shot(ex)
            items.append(DemoItem(task, ex.id, prompt.text, prompt.n_tokens, ex.target))
    return items


def greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, chat: bool) -> str:
    import torch

    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat)
    with torch.inference_mode():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0][encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def show(console: Console, item: DemoItem) -> None:
    body = Group(Text(item.prompt, style="dim"), Text.assemble(("model: ", "bold green"), item.output or "(empty)"),
                 Text.assemble(("reference: ", "bold"), item.reference))
    console.print(Panel(body, title=f"{item.task} · {item.example_id} · zero-shot prompt, {item.n_tokens} tokens",
                        title_align="left"))


def run_demo(n_examples: int, console: Console) -> list[DemoItem]:
    from tunebench.config.schema import ModelConfig
    from tunebench.models.loading import load_model, load_tokenizer, resolve

    start = time.perf_counter()
    cfg = ModelConfig()
    source = resolve(cfg)
    tokenizer = load_tokenizer(source, cfg)
    model = load_model(cfg, source, device="cpu").eval()
    items = prepare(n_examples, tokenizer, source)
    chat = source.instruct and bool(tokenizer.chat_template)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task(f"generating with {cfg.name}", total=len(items))
        for item in items:
            item.output = greedy(model, tokenizer, item.prompt, MAX_NEW_TOKENS[item.task], chat)
            progress.advance(bar)
    for item in items:
        show(console, item)
    exact = sum(i.output.strip().lower() == i.reference.lower() for i in items if i.task == "classification")
    n_cls = sum(i.task == "classification" for i in items)
    console.print(f"demo: {len(items)} zero-shot prompts on {cfg.name} (built-in samples) in "
                  f"{time.perf_counter() - start:.1f} s; classification answers equal to the label: {exact}/{n_cls}")
    return items


# ---------------------------------------------------------------- the demo study and its report


def demo_study_file() -> Path:
    """studies/demo.yaml of this checkout (or of the current directory)."""
    import tunebench

    for root in (Path(tunebench.__file__).resolve().parents[2], Path.cwd()):
        if (root / DEMO_STUDY).exists():
            return root / DEMO_STUDY
    raise UserError(f"the demo study {DEMO_STUDY} is not in this checkout or the current directory",
                    "run from a clone of the tunebench repository, or give the study with --study FILE")


def rich_table(table: Any) -> Table:
    """A report table (tunebench.study.report.Table) for the terminal."""
    out = Table(title=table.caption, title_justify="left")
    for header in table.headers:
        out.add_column(header, overflow="fold")
    for row in table.rows:
        out.add_row(*row)
    return out


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty elsewhere, which means no bf16 and so fp32."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def choose_dtype(asked: str, flags: set[str]) -> tuple[str, str]:
    """(weights dtype, why) for a CPU run: bf16 only where the CPU computes it natively."""
    if asked != "auto":
        return asked, "--dtype"
    native = sorted(flags & set(NATIVE_BF16_FLAGS))
    if native:
        return "bfloat16", f"this CPU has {', '.join(native)}: native bf16 matmuls, 2-4x faster than fp32"
    return "float32", "this CPU has no AVX512-BF16 or AMX-BF16, where bf16 would be emulated and slower than fp32"


def passive_waiting() -> None:
    """OpenMP threads that sleep instead of spinning while they wait for each other (unless OMP_WAIT_POLICY is
    set). Spinning wins a little on idle cores, but on a machine shared with other jobs the spinning threads
    take the CPU from the ones with work: two threads then ran a forward pass 3-5x slower than one did."""
    if "torch" not in sys.modules:  # the OpenMP runtime reads the variable once, when torch loads it
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_every_core() -> int:
    """PyTorch threads = every core this process may use (PyTorch's own default may count physical cores only,
    one on a 2-vCPU machine with hyper-threading); OMP_NUM_THREADS, when set, wins."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(available_cores())
    return torch.get_num_threads()


def cpu_settings(study: Any, asked: str, console: Console) -> list[str]:
    """The `--set` overrides that fit this CPU, after a line saying what was chosen and why."""
    import torch

    if torch.cuda.is_available():
        return []
    threads = f"{use_every_core()} thread(s) on {available_cores()} core(s)"
    pinned = sorted({cell.config.model.dtype for cell in study.cells} - {"auto"})
    if pinned and asked == "auto":
        console.print(f"demo on the CPU: {threads}; weights in {', '.join(pinned)} (set in the study file)")
        return []
    dtype, why = choose_dtype(asked, cpu_flags())
    console.print(f"demo on the CPU: {threads}; weights in {dtype} ({why})")
    # dtype auto is float32 on a CPU, so float32 needs no override and keeps the cells of `tunebench run`
    return [] if dtype == "float32" and not pinned else [f"model.dtype={dtype}"]


def run_demo_study(study_file: Path, out: Path | None, console: Console, dtype: str = "auto") -> bool:
    from tunebench.config.study import load_study
    from tunebench.study.commands import print_outcome
    from tunebench.study.report import save_report, study_report
    from tunebench.study.runner import run_study

    start, cpu_start = time.perf_counter(), time.process_time()
    study = load_study(study_file)
    sets = cpu_settings(study, dtype, console)
    if sets:
        study = load_study(study_file, sets=sets)
    from tunebench.study.predicted import predict_at_launch

    study_dir = out or Path("runs") / study.name
    outcome = run_study(study, study_dir, console=console,   # the prediction is kept for predicted vs actual
                        before_run=lambda cells: predict_at_launch(cells, study_dir, console))
    print_outcome(outcome, console)
    md = outcome.study_dir / "report.md"
    report = study_report(outcome.study_dir, outcome.study_dir / "report-plots")
    save_report(report, "md", md)
    html = save_report(report, "html", outcome.study_dir / "report.html")
    for table in report.headline:
        console.print(rich_table(table))
    for verdict in report.verdicts:   # is fine-tuning better at all, at this n? (the break-even needs it to be)
        console.print(verdict, highlight=False)
    console.print(f"report: {md} (and {html}, one self-contained page) · demo took "
                  f"{time.perf_counter() - start:.0f} s (CPU {time.process_time() - cpu_start:.0f} s); "
                  "run it again to reuse every finished cell")
    return outcome.ok


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        examples: int = typer.Option(0, "--examples", min=0, max=20,
                                     help="only show N zero-shot prompts per task with the model's answers"),
        out: Path | None = typer.Option(None, "--out", help="study directory (default: runs/demo)"),
        study: Path | None = typer.Option(None, "--study", help="another study file to run as the demo"),
        dtype: str = typer.Option("auto", "--dtype", help="CPU weights: auto (bfloat16 where the CPU has native "
                                  "bf16, else float32), float32 or bfloat16"),
    ) -> None:
        """Run the demo study on the embedded model (offline), then write and show its four-pillar report."""
        console = terminal.console()
        passive_waiting()
        if examples:
            run_demo(examples, console)
            return
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype} is not a choice", f"allowed: {', '.join(DTYPES)}")
        try:
            ok = run_demo_study(study or demo_study_file(), out, console, dtype)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: run it again to continue; finished cells are kept")
            sys.exit(130)
        if not ok:
            sys.exit(1)
