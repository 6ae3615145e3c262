"""Loading what an evaluation needs: the model (with its adapter or fine-tuned weights), tokenizer and labels.

An adapter is checked against the base before peft loads it: `adapter_config.json` names the base it was
trained on, and every LoRA matrix must fit the shape of the module it adapts. A mismatch is a user error
that names the base the adapter expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.config.schema import ADAPTER_METHODS, CellConfig
from tunebench.errors import UserError
from tunebench.models.loading import ModelSource, default_device, load_model, load_tokenizer, resolve
from tunebench.models.presets import EMBEDDED
from tunebench.rundir import RunDir, read_json

ADAPTER_CONFIG = "adapter_config.json"
QLORA_ON_16BIT = ("QLoRA adapter applied to the 16-bit base (bitsandbytes on CUDA is not available here); "
                  "it was trained against the 4-bit base, so results can differ slightly")


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    source: ModelSource
    adapter: Path | None = None
    notes: list[str] = field(default_factory=list)  # what a reader must know about this model's numbers

    @property
    def model_note(self) -> str | None:
        return "; ".join(self.notes) or None


def trained_model_dir(run: RunDir) -> Path:
    """Where a fully fine-tuned run keeps its model."""
    return run.train / "model"


def needs_weights(cell: CellConfig, run: RunDir | None, adapter: Path | None) -> None:
    """A fine-tuned method needs something fine-tuned: a run, or an adapter."""
    if cell.method in ADAPTER_METHODS and adapter is None and run is None:
        raise UserError(f"--method {cell.method} evaluates a trained adapter, and none was given",
                        "pass --run DIR (a trained cell) or --adapter DIR (a PEFT adapter directory); "
                        "use --method zero_shot or few_shot for the base model")
    if cell.method in ADAPTER_METHODS and adapter is None and run is not None and not run.adapter.is_dir():
        raise UserError(f"{run.path} has no trained adapter ({run.adapter} is missing)",
                        "train the cell first (tunebench train / tunebench run), or pass --adapter DIR")
    if cell.method == "full" and run is not None and not trained_model_dir(run).is_dir():
        raise UserError(f"{run.path} has no fully fine-tuned model ({trained_model_dir(run)} is missing)",
                        "train the cell first, or give the fine-tuned model directory as MODEL")


def load_for_eval(cell: CellConfig, run: RunDir | None = None, adapter: Path | None = None) -> Loaded:
    """Model + tokenizer (+ adapter) for evaluating `cell`; with a run, its adapter or trained model."""
    needs_weights(cell, run, adapter)
    if adapter is None and run is not None and cell.method in ADAPTER_METHODS:
        adapter = run.adapter
    model_cfg = cell.model
    if cell.method == "full" and run is not None:
        model_cfg = model_cfg.model_copy(update={"name": str(trained_model_dir(run)), "random_weights": False})
    source = resolve(model_cfg)
    tokenizer = adapter_tokenizer(adapter) if adapter is not None else None
    tokenizer = tokenizer or load_tokenizer(source, model_cfg)
    notes = base_notes(cell, source)
    quantization = qlora_quantization() if cell.method == "qlora" else None
    if cell.method == "qlora" and adapter is not None and quantization is None:
        notes.append(QLORA_ON_16BIT)
    model = load_model(model_cfg, source, quantization=quantization)
    if notes and cell.model.name == EMBEDDED and str(model.dtype) != "torch.float32":
        notes.append(f"run with weights in {str(model.dtype).removeprefix('torch.')}")
    if adapter is not None:
        model = with_adapter(model, Path(adapter), source)
    model.eval()
    return Loaded(model, tokenizer, source, Path(adapter) if adapter is not None else None, notes)


def base_notes(cell: CellConfig, source: ModelSource) -> list[str]:
    from tunebench.models.embedded import NOTE

    notes = []
    if cell.model.name == EMBEDDED and not cell.model.random_weights:
        notes.append(NOTE)
    if cell.model.random_weights:
        notes.append("random weights (architecture only): quality numbers are meaningless")
    return notes


def qlora_quantization() -> Any:
    """The 4-bit config QLoRA trains against (NF4, double quantization), when bitsandbytes and CUDA exist."""
    import importlib.util

    if not default_device().startswith("cuda") or importlib.util.find_spec("bitsandbytes") is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def adapter_tokenizer(adapter: Path) -> Any:
    """The tokenizer saved beside an adapter (the trainer saves it there), else None."""
    from transformers import AutoTokenizer

    if not (Path(adapter) / "tokenizer_config.json").exists():
        return None
    tok = AutoTokenizer.from_pretrained(adapter)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------- adapters


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    path = Path(adapter) / ADAPTER_CONFIG
    if not path.exists():
        raise UserError(f"{adapter} is not a PEFT adapter directory (no {ADAPTER_CONFIG})",
                        "give the adapter directory a training run wrote (runs/<study>/<cell>/train/adapter)")
    return json.loads(path.read_text())


def with_adapter(model: Any, adapter: Path, source: ModelSource) -> Any:
    from peft import PeftModel

    check_adapter_fits(model, adapter, source)
    return PeftModel.from_pretrained(model, adapter, is_trainable=False)


def check_adapter_fits(model: Any, adapter: Path, source: ModelSource) -> None:
    """Refuse an adapter whose LoRA matrices do not fit this base, naming the base it was trained on."""
    config = read_adapter_config(adapter)
    expected = config.get("base_model_name_or_path") or "(not recorded)"
    problems = adapter_mismatches(model, adapter)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UserError(
            f"adapter {adapter} was trained for base model '{expected}' and does not fit '{source.name}': {shown}",
            f"evaluate it with its base: tunebench eval {expected} --adapter {adapter} (or --run the cell that "
            "trained it)")


def adapter_mismatches(model: Any, adapter: Path) -> list[str]:
    """Every LoRA matrix whose module is missing in the model or whose shape does not fit it."""
    modules = dict(model.named_modules())
    problems = []
    for key, shape in adapter_shapes(adapter).items():
        name, _, part = key.rpartition(".lora_")
        name = name.removeprefix("base_model.model.")
        module = modules.get(name)
        if module is None:
            problems.append(f"the base has no module '{name}'")
            continue
        fan_in, fan_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if part.startswith("A.") and fan_in is not None and shape[-1] != fan_in:
            problems.append(f"'{name}' takes {fan_in} inputs, the adapter's lora_A expects {shape[-1]}")
        if part.startswith("B.") and fan_out is not None and shape[0] != fan_out:
            problems.append(f"'{name}' has {fan_out} outputs, the adapter's lora_B gives {shape[0]}")
    return problems


def adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the LoRA weights in an adapter file, read from the header (no tensors loaded)."""
    from safetensors import safe_open

    path = Path(adapter) / "adapter_model.safetensors"
    if not path.exists():
        raise UserError(f"{adapter} has no adapter_model.safetensors", "give a complete PEFT adapter directory")
    with safe_open(str(path), framework="pt") as f:
        # safe_open handles are not iterable, so .keys() is needed here.
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys() if ".lora_" in key}  # noqa: SIM118


# ---------------------------------------------------------------- labels


def recorded_labels(*places: Path | None) -> list[str] | None:
    """The label set training recorded: labels.json beside the weights (or in train/), else train/summary.json."""
    folders = [Path(p) for p in places if p is not None]
    files = [f / "labels.json" for f in folders] + [f / "summary.json" for f in folders]
    for path in files:
        if path.is_file():
            content = read_json(path)
            labels = content if isinstance(content, list) else content.get("labels")
            if labels:
                return [str(label) for label in labels]
    return None


def run_label_places(run: RunDir | None, adapter: Path | None) -> list[Path]:
    """Where a run or an adapter keeps its label set: the weights directory, then train/."""
    places = [run.adapter, trained_model_dir(run), run.train] if run is not None else []
    return places + ([Path(adapter), Path(adapter).parent] if adapter is not None else [])


def check_same_labels(data_labels: list[str], trained: list[str]) -> None:
    missing, extra = sorted(set(trained) - set(data_labels)), sorted(set(data_labels) - set(trained))
    if missing or extra:
        parts = ([f"not in the data: {', '.join(missing)}"] if missing else []) + (
            [f"never seen in training: {', '.join(extra)}"] if extra else [])
        raise UserError(f"the dataset's labels differ from the labels the model was trained on ({'; '.join(parts)})",
                        "evaluate on data with the training label set (map columns with data.columns), "
                        "or train a run on this dataset")
