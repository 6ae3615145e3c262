"""`tunebench demo`: the stages that exist so far, end to end on the embedded model and the built-in samples.

For a few test examples of each task it shows the rendered zero-shot prompt (chat template included) and the
model's greedy answer beside the reference. Generation here is a plain `model.generate`; the evaluation stage
replaces it with its batched generation and constrained classification.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

TASKS = ("classification", "summarization")
MAX_NEW_TOKENS = {"classification": 8, "summarization": 48}


@dataclass
class DemoItem:
    task: str
    example_id: str
    prompt: str
    n_tokens: int
    reference: str
    output: str = ""


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


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(examples: int = typer.Option(3, "--examples", min=1, max=20, help="test examples per task")) -> None:
        """Show zero-shot prompts and the embedded model's answers on the built-in samples (offline)."""
        run_demo(examples, Console())
