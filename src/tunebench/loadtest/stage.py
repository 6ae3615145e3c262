"""The serve + load-test stage of a study cell, for the studies runner.

    run_serve_loadtest(cell, run, model_ref) -> dict

starts `tunebench serve` (or the installed vLLM / SGLang, on an export of the model under `run.serve/export`)
for `model_ref` once per engine in `cell.loadtest.engines`, sweeps it with the
cell's `loadtest` settings, stops it, writes everything under `run.serve` (`<engine>/loadtest.json`, the
comparison and plots), and returns a flat dict per engine for the results store: the numbers the report's
inference tables need (max sustainable rate, throughput, p90, cost per 1K tokens and per 1K requests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench import terminal
from tunebench.config.schema import ADAPTER_METHODS, CellConfig
from tunebench.cost import resolve_price
from tunebench.errors import UserError
from tunebench.loadtest.bench import BenchPlan, RemoteServer, bench_engines
from tunebench.loadtest.inference_cost import local_device
from tunebench.loadtest.prompt_sets import builtin_prompts, load_counter, read_prompt_file
from tunebench.rundir import RunDir
from tunebench.serve.external import EXTERNAL_ENGINES, launcher_for


def serve_options(cell: CellConfig) -> list[str]:
    """The cell's `serve:` section as `tunebench serve` options (the engine and port are set per run)."""
    s = cell.serve
    if cell.loadtest.max_new_tokens > s.max_new_tokens:
        raise UserError(f"loadtest.max_new_tokens {cell.loadtest.max_new_tokens} is above serve.max_new_tokens "
                        f"{s.max_new_tokens}, so every request would be refused",
                        "lower loadtest.max_new_tokens or raise serve.max_new_tokens")
    options = ["--max-concurrency", str(s.max_concurrency), "--max-queue", str(s.max_queue),
               "--max-input-tokens", str(s.max_input_tokens), "--max-new-tokens", str(s.max_new_tokens),
               "--timeout", f"{s.request_timeout:g}"]
    if cell.model.dtype != "auto":   # served in the dtype it was evaluated in (the demo picks bf16 on such CPUs)
        options += ["--dtype", cell.model.dtype]
    return [*options, "--merge"] if s.merge else options


def model_arguments(cell: CellConfig, model_ref: str) -> list[str]:
    """A cell directory is served with --run (model, adapter, prompt format); anything else is a model name."""
    if (Path(model_ref) / "resolved-config.yaml").exists():
        return ["--run", model_ref]
    return [model_ref, "--random-weights"] if cell.model.random_weights else [model_ref]


def served_by(cell: CellConfig, model_ref: str) -> str:
    """What a cell's server holds: its LoRA adapter unmerged (or merged, serve.merge), full weights, or the base."""
    if not (Path(model_ref) / "resolved-config.yaml").exists():
        return "base"
    if cell.method in ADAPTER_METHODS:
        return "merged" if cell.serve.merge else "adapters"
    return "merged"  # full fine-tuning: weights of the base model's shapes


def export_options(cell: CellConfig, model_ref: str) -> Any:
    """What vllm / sglang serve: the cell's run (its adapter, merged when serve.merge) or the base model."""
    from tunebench.serve.options import ModelOptions

    if (Path(model_ref) / "resolved-config.yaml").exists():
        return ModelOptions(run=Path(model_ref), merge=cell.serve.merge)
    return ModelOptions(model=model_ref, random_weights=cell.model.random_weights)


def evaluated_prompts(cell: CellConfig, run: RunDir) -> Any:
    """The prompts the cell was evaluated on (its eval stage writes them), so each method is load-tested with
    its own prompt shape: zero-shot instructions, few-shot examples, or the fine-tuned format."""
    from tunebench.evaluate.runner import split_name

    path = run.eval_dir(split_name(cell.eval.split or cell.data.eval_split), cell.method) / "prompts.jsonl"
    return read_prompt_file(path) if path.is_file() else None


def run_serve_loadtest(cell: CellConfig, run: RunDir, model_ref: str, *, progress: bool = True) -> dict[str, Any]:
    """Serve and load-test each engine of the cell; results under run.serve; a dict for the results store."""
    cfg = cell.loadtest
    m = cell.model
    if m.endpoint:  # a hosted model: nothing to start; its endpoint is load-tested and priced per token
        cfg = cfg.model_copy(update={"engines": [], "url": m.endpoint.rstrip("/").removesuffix("/v1"),
                                     "url_name": "hosted", "url_model": m.endpoint_model or m.name,
                                     "url_api_key_env": m.endpoint_api_key_env, "url_price_per_hour": None,
                                     "url_input_usd_per_1m": m.endpoint_input_usd_per_1m,
                                     "url_output_usd_per_1m": m.endpoint_output_usd_per_1m})
    prompts = read_prompt_file(Path(cfg.prompts)) if cfg.prompts else evaluated_prompts(cell, run) or builtin_prompts()
    price = resolve_price(cell.cost.instance, cell.cost.price_per_hour, local_device())
    plan = BenchPlan(serve_args=[*model_arguments(cell, model_ref), *serve_options(cell)], engines=list(cfg.engines),
                     cfg=cfg, prompts=prompts, out=run.serve, counter=load_counter(cell.model.name, cell.model),
                     price=price, host=cell.serve.host, title=cell.model.name,
                     remote=RemoteServer.from_config(cfg))
    plan.served = served_by(cell, model_ref)
    if any(e in EXTERNAL_ENGINES for e in cfg.engines):
        plan.external = launcher_for(cell.serve, cell.model.dtype, export_options(cell, model_ref),
                                     run.serve / "export")
        plan.startup_timeout = cell.serve.startup_timeout
    comparison = bench_engines(plan, console=terminal.console(), progress=progress)
    engines = {row["engine"]: {**row, "loadtest": str(run.serve / row["loadtest"])} for row in comparison["engines"]}
    return {"engines": engines, "comparison": str(run.serve / "comparison.json"),
            "plots": {name: str(run.serve / file) for name, file in comparison["plots"].items()},
            "slo": cfg.slo, "api": cfg.api}
