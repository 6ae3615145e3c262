"""Where load-test prompts come from, and how their tokens are counted.

Three sources: the built-in set of ~100-token prompts written for this project (the original study used
~100-token prompts), a file (one prompt per line, or JSONL), or a dataset through a prompt template.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebench.errors import UserError

if TYPE_CHECKING:
    from tunebench.config.schema import ModelConfig

BUILTIN = "builtin"
JSON_KEYS = ("prompt", "inputs", "text", "input")
DEFAULT_TOKENIZER = "smollm2-135m-instruct"


@dataclass
class PromptSet:
    texts: list[str]
    source: str


def builtin_prompts() -> PromptSet:
    text = resources.files("tunebench.loadtest").joinpath("prompts.txt").read_text(encoding="utf-8")
    return PromptSet([line.strip() for line in text.splitlines() if line.strip()], BUILTIN)


def _json_prompt(line: str, where: str) -> str:
    try:
        obj = json.loads(line)
    except ValueError as err:
        raise UserError(f"{where}: not valid JSON ({err})", "give one JSON object or string per line") from None
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for key in JSON_KEYS:
            if isinstance(obj.get(key), str):
                return obj[key]
    raise UserError(f"{where}: no prompt in this line", f"give a JSON string or an object with one of the keys "
                    f"{', '.join(JSON_KEYS)}")


def read_prompt_file(path: Path) -> PromptSet:
    """One prompt per line; a .jsonl file (or one whose lines are JSON) holds a string or object per line."""
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}", "give an existing file with one prompt per line")
    lines = [(i, line) for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if not lines:
        raise UserError(f"prompt file {path} is empty", "put at least one prompt in it (one per line, or JSONL)")
    as_json = path.suffix == ".jsonl" or all(line.lstrip().startswith(("{", '"')) for _, line in lines)
    texts = [_json_prompt(line, f"{path}:{i}") if as_json else line.strip() for i, line in lines]
    empty = [i for (i, _), text in zip(lines, texts, strict=True) if not text.strip()]
    if empty:
        raise UserError(f"{path}:{empty[0]}: the prompt is empty", "remove empty prompts from the file")
    return PromptSet(texts, str(path))


def dataset_prompts(source: str, task: str, method: str, tokenizer_name: str, limit: int | None = None) -> PromptSet:
    """The eval split of a dataset through the project's prompt templates (tunebench.data, tunebench.prompts)."""
    try:
        from tunebench.data import load_task_data
        from tunebench.prompts import PromptBuilder
    except ImportError as err:
        raise UserError(f"--data needs the data and prompt stages, which are not available in this version ({err})",
                        "use --prompts FILE, or leave both out for the built-in ~100-token prompts") from None
    from tunebench.config.schema import CellConfig, DataConfig, ModelConfig
    from tunebench.models.loading import load_tokenizer, resolve

    cell = CellConfig(model=ModelConfig(name=tokenizer_name), data=DataConfig(source=source, task=task),
                      method=method)
    model_source = resolve(cell.model)
    tokenizer = load_tokenizer(model_source, cell.model)
    data = load_task_data(cell.data, tokenizer)
    builder = PromptBuilder.for_cell(cell, tokenizer, data, model_source)
    prompts = [builder.for_method(method, ex) for ex in data.test[:limit]]
    texts = [p.text for p in prompts if not p.skipped and p.text]
    if not texts:
        raise UserError(f"dataset {source} gave no prompts for task {task}", "check --data and --task")
    return PromptSet(texts, f"{source} ({task}, {method} prompts)")


# ---------------------------------------------------------------- token counting


@dataclass
class TokenCounter:
    name: str
    encode: Callable[[str], Any]

    def count(self, text: str) -> int:
        return len(self.encode(text))


def load_counter(name: str, model: ModelConfig | None = None) -> TokenCounter:
    """A tokenizer for counts the server does not report: a directory with tokenizer.json, or a model name.

    `model` carries the rest of a cell's model section (random_weights: a preset without a cached tokenizer
    borrows the embedded one, as the serving side does).
    """
    path = Path(name).expanduser()
    if not (path / "tokenizer.json").exists():
        from tunebench.config.schema import ModelConfig
        from tunebench.models.loading import load_tokenizer, resolve

        cfg = model or ModelConfig(name=name)
        source = resolve(cfg)
        path = Path(source.location)
        if not (path / "tokenizer.json").exists():
            tok = load_tokenizer(source, cfg)
            return TokenCounter(name, lambda text: tok(text, add_special_tokens=False)["input_ids"])
    from tokenizers import Tokenizer

    fast = Tokenizer.from_file(str(path / "tokenizer.json"))
    return TokenCounter(name, lambda text: fast.encode(text, add_special_tokens=False).ids)
