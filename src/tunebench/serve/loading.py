"""Loading what a server serves: a base model, a run's fine-tuned model, LoRA adapters (several, or one merged).

Adapters are checked before they touch the model: a PEFT LoRA directory, trained for this base model
(evaluation's shape check: every LoRA matrix must fit a module of the base; and the recorded hub id when
both are hub ids), so a wrong adapter fails at start-up with a message that names it and its base. Several
adapters load into one PeftModel under their names, for peft's mixed-batch `adapter_names`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.errors import UserError
from tunebench.serve.options import ADAPTER_NAME, AdapterSpec, ModelOptions

log = logging.getLogger("tunebench.serve")

FINETUNED = ("lora", "qlora", "full")
DEFAULT_SUMMARY_TOKENS = 96
DEFAULT_GENERATION_TOKENS = 64  # evaluation's default for the generation task


@dataclass
class TaskEndpoint:
    """A fine-tuned run's task: its prompt format, labels and stop strings (for /classify and /summarize)."""

    task: str
    labels: list[str] | None
    builder: Any  # tunebench.prompts.PromptBuilder
    stop: list[str]
    adapter: str | None  # the adapter the task uses (None: the weights as served)
    max_new_tokens: int = DEFAULT_SUMMARY_TOKENS


@dataclass
class ServedModel:
    model: Any
    tokenizer: Any
    model_id: str
    context_length: int
    dtype: str
    device: str
    adapters: dict[str, Path] = field(default_factory=dict)  # loaded unmerged, selectable per request
    default_adapter: str | None = None  # used when a request names no model (a run's own adapter)
    merged: str | None = None  # the adapter merged into the weights, if any
    task: TaskEndpoint | None = None

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def model_names(self) -> list[str]:
        return [self.model_id, *self.adapters]


def load_served(opts: ModelOptions) -> ServedModel:
    # Everything that can be checked without torch is checked first: a typo fails in a second, not after imports.
    model_cfg, run, adapters = resolve_sources(opts)
    adapter_cfgs = {spec.name: read_adapter_config(spec) for spec in adapters}
    if opts.merge and len(adapters) != 1:
        raise UserError(f"--merge merges exactly one adapter; {len(adapters)} given",
                        "give one adapter (--run DIR or one --adapter NAME=DIR) with --merge")
    merge = opts.merge or any_dora(adapter_cfgs)

    import torch

    from tunebench.models.loading import default_device, load_model, resolve
    from tunebench.prompts import context_length_of

    source = resolve(model_cfg)
    if source.kind != "causal":
        raise UserError(f"model '{model_cfg.name}' is a {source.kind} model; the server generates with causal "
                        "language models", "serve a causal model (e.g. redpajama-3b, smollm2-135m-instruct)")
    tokenizer = load_served_tokenizer(opts, source, model_cfg, run)
    device = opts.device or default_device()
    # Random weights are drawn where the model will run: on an H200, 2.8B parameters take 1 s there and over
    # 2 minutes initialized on the CPU first.
    with torch.device(device) if model_cfg.random_weights else contextlib.nullcontext():
        model = load_model(model_cfg, source, device=device)
    check_vocabulary(tokenizer, model, model_cfg.name)
    for spec in adapters:
        check_base(spec, adapter_cfgs[spec.name], model, source)
    if merge and not opts.merge:
        log.warning("adapter '%s' uses DoRA, which cannot share a batch with other adapters: serving it merged",
                    adapters[0].name)
    model, loaded = attach_adapters(model, adapters, merge=merge)
    model.eval()
    served = ServedModel(model, tokenizer, model_id=model_cfg.name,
                         context_length=context_length_of(source, model_cfg, tokenizer),
                         dtype=str(next(model.parameters()).dtype).removeprefix("torch."), device=str(model.device),
                         adapters=loaded, merged=adapters[0].name if merge else None)
    if run is not None:
        if run.path.name in loaded:
            served.default_adapter = run.path.name
        if model_cfg.name == str(run.train / "model"):
            served.model_id = run.path.name  # a fully fine-tuned run: its weights are the run's
        served.task = run_task(run, tokenizer, source, served.default_adapter)
    return served


def resolve_sources(opts: ModelOptions) -> tuple[Any, Any, list[AdapterSpec]]:
    """(model config, run directory or None, adapters) from MODEL or --run plus --adapter."""
    from tunebench.config.schema import ModelConfig
    from tunebench.rundir import RunDir

    if (opts.model is None) == (opts.run is None):
        raise UserError("give a MODEL or --run DIR (one of them)",
                        "e.g. 'tunebench serve smollm2-135m-instruct' or 'tunebench serve --run runs/demo/<cell-id>'")
    adapters = list(opts.adapters)
    run = None
    if opts.model is not None:
        model_cfg = ModelConfig(name=opts.model, random_weights=opts.random_weights, dtype=opts.dtype)
    else:
        run = RunDir(Path(opts.run))
        cell = run.read_config()
        model_cfg = cell.model.model_copy(update={"dtype": opts.dtype if opts.dtype != "auto" else cell.model.dtype,
                                                  "random_weights": cell.model.random_weights or opts.random_weights})
        if cell.method == "full":
            weights = run.train / "model"
            if not (weights / "config.json").exists():
                raise UserError(f"run {run.path} was fully fine-tuned but has no model in {weights}",
                                "train it first (tunebench run), or serve its base model by name")
            model_cfg = model_cfg.model_copy(update={"name": str(weights), "random_weights": False})
        elif cell.method in ("lora", "qlora"):
            if not (run.adapter / "adapter_config.json").exists():
                raise UserError(f"run {run.path} has no trained adapter in {run.adapter}",
                                "train it first (tunebench run), or serve its base model by name")
            adapters.insert(0, AdapterSpec(run.path.name, run.adapter))
    names = [a.name for a in adapters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"adapter name(s) {', '.join(duplicates)} given twice", "give every adapter its own NAME")
    if any(not ADAPTER_NAME.match(n) for n in names):
        raise UserError(f"adapter names must be letters, digits, '.', '_' or '-': {names}", "rename the adapter")
    return model_cfg, run, adapters


def load_served_tokenizer(opts: ModelOptions, source: Any, model_cfg: Any, run: Any) -> Any:
    from transformers import AutoTokenizer

    from tunebench.models.loading import load_tokenizer

    where = opts.tokenizer
    if where is None and run is not None:
        from tunebench.evaluate.loading import adapter_tokenizer

        saved = adapter_tokenizer(run.adapter)  # the trainer saves the tokenizer beside the weights
        if saved is not None:
            return saved
    if where is None:
        return load_tokenizer(source, model_cfg)
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a tokenizer from '{where}': {err}",
                        "give --tokenizer a directory written by save_pretrained") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_vocabulary(tokenizer: Any, model: Any, name: str) -> None:
    """Every token id the tokenizer can produce must have a row in the model's embeddings."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but model '{name}' embeds only {rows}",
                        "use the model's own tokenizer (leave out --tokenizer) or one with a smaller vocabulary")


def read_adapter_config(spec: AdapterSpec) -> dict[str, Any]:
    fix = "give the PEFT adapter directory, the one holding adapter_config.json (a run's is <run>/train/adapter)"
    path = spec.path / "adapter_config.json"
    if not spec.path.is_dir():
        raise UserError(f"adapter '{spec.name}': {spec.path} is not a directory", fix)
    if not path.exists():
        raise UserError(f"adapter '{spec.name}': {spec.path} has no adapter_config.json", fix)
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"adapter '{spec.name}': {path} is not valid JSON ({err})", fix) from None
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"adapter '{spec.name}' is a {cfg.get('peft_type')} adapter; only LoRA adapters are served",
                        "train with method lora or qlora")
    return cfg


def check_base(spec: AdapterSpec, adapter_cfg: dict[str, Any], model: Any, source: Any) -> None:
    """Refuse an adapter trained for another base model, naming both: by shapes, then by hub id."""
    from tunebench.evaluate.loading import check_adapter_fits
    from tunebench.models.loading import looks_like_path

    base = adapter_cfg.get("base_model_name_or_path") or ""
    fix = f"serve adapter '{spec.name}' with the model it was trained on: tunebench serve {base or 'BASE'} " \
          f"--adapter {spec.name}={spec.path}"
    try:
        check_adapter_fits(model, spec.path, source)
    except UserError as err:
        raise UserError(f"adapter '{spec.name}': {err.problem}", fix) from None
    if base and not looks_like_path(base) and not source.local and base != source.location:
        raise UserError(f"adapter '{spec.name}' was trained on {base}, not on the served model {source.location}",
                        fix)


def any_dora(adapter_cfgs: dict[str, dict[str, Any]]) -> bool:
    """peft cannot mix DoRA adapters in a batch; one DoRA adapter alone is served merged."""
    dora = [name for name, cfg in adapter_cfgs.items() if cfg.get("use_dora")]
    if dora and len(adapter_cfgs) > 1:
        raise UserError(f"adapter(s) {dora} use DoRA, which peft cannot serve beside other adapters",
                        "serve a DoRA adapter alone (it is merged), or with --merge")
    return bool(dora)


def attach_adapters(model: Any, adapters: list[AdapterSpec], *, merge: bool) -> tuple[Any, dict[str, Path]]:
    """Load the adapters into a PeftModel (or merge the single one); return the model and the loaded names."""
    if not adapters:
        return model, {}
    from peft import PeftModel

    first, *rest = adapters
    # Served unmerged, the LoRA weights take the base model's dtype: peft's default keeps them in float32
    # beside a bf16 model, so every LoRA layer of every decode step casts its input and multiplies in fp32.
    # A merge is computed from float32 weights (peft's default), as before.
    dtype = {"autocast_adapter_dtype": merge}
    try:
        model = PeftModel.from_pretrained(model, str(first.path), adapter_name=first.name, **dtype)
        for spec in rest:
            model.load_adapter(str(spec.path), adapter_name=spec.name, **dtype)
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"cannot load the adapter(s) onto the served model: {str(err).splitlines()[0][:300]}",
                        "check that every adapter was trained on this base model") from None
    if merge:
        return model.merge_and_unload(), {}
    model.set_adapter(first.name)
    return model, {spec.name: spec.path for spec in adapters}


def run_task(run: Any, tokenizer: Any, source: Any, adapter: str | None) -> TaskEndpoint | None:
    """The task endpoints of a fine-tuned run: its labels and fine-tuning prompt format."""
    from tunebench.prompts import PromptBuilder, context_length_of

    cell = run.read_config()
    if cell.method not in FINETUNED:
        return None
    task = cell.data.task
    labels = read_labels(run) if task == "classification" else None
    from tunebench.data.records import data_fields

    builder = PromptBuilder(cell.prompt, task, tokenizer, labels=labels, train_examples=[], use_chat_template=False,
                            context_length=context_length_of(source, cell.model, tokenizer),
                            fields=data_fields(cell.data))
    default_tokens = DEFAULT_GENERATION_TOKENS if task == "generation" else DEFAULT_SUMMARY_TOKENS
    return TaskEndpoint(task, labels, builder, [*builder.stops_for(cell.method), *cell.eval.stop], adapter,
                        cell.eval.max_new_tokens or default_tokens)


def read_labels(run: Any) -> list[str]:
    from tunebench.evaluate.loading import recorded_labels, run_label_places

    labels = recorded_labels(*run_label_places(run, None))
    if not labels:
        raise UserError(f"run {run.path} has no recorded label set (labels.json beside its weights)",
                        "train the run first (tunebench run); training records the label set")
    return labels
