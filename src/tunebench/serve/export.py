"""`tunebench export`: what vLLM or TGI needs to serve a model at scale, with the exact launch command.

- `--target tgi`: one merged model directory (safetensors + tokenizer, merged by evaluation's
  `merge_adapter` in `--dtype`, bf16 by default); TGI serves a single set of weights.
- `--target vllm`: base + LoRA adapters for vLLM's multi-LoRA serving (`--enable-lora --lora-modules`), or
  one merged model with `--merge`. A base that is a hub model is referenced by its id (vLLM downloads it);
  a local or random-weight base is written out, so the export runs offline.

The load tester measures those servers through the same TGI and OpenAI protocols as `tunebench serve`.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from tunebench.errors import UserError
from tunebench.rundir import write_atomic, write_json

TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:latest"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def export_model(opts: Any, target: str, out: Path, dtype: str = "bf16") -> dict[str, Any]:
    """Write the export for `target` into `out` (which must be new or empty); returns its manifest."""
    from tunebench.evaluate.merge import DTYPES
    from tunebench.models.loading import resolve
    from tunebench.prompts import context_length_of
    from tunebench.serve.loading import check_base, load_served_tokenizer, read_adapter_config, resolve_sources

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty", "give a new directory (export never overwrites)")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not supported", f"allowed: {', '.join(DTYPES)}")
    model_cfg, run, adapters = resolve_sources(opts)
    model_cfg = model_cfg.model_copy(update={"dtype": DTYPES[dtype]})
    merged = target == "tgi" or opts.merge
    if merged and len(adapters) > 1:
        raise UserError(f"{target} serves one set of weights: {len(adapters)} adapters given",
                        "export one adapter (it is merged), or --target vllm without --merge for several")
    source = resolve(model_cfg)
    skeleton = meta_model(model_cfg, source)
    configs = {spec.name: read_adapter_config(spec) for spec in adapters}
    for spec in adapters:
        check_base(spec, configs[spec.name], skeleton, source)
    tokenizer = load_served_tokenizer(opts, source, model_cfg, run)
    context = context_length_of(source, model_cfg, tokenizer)
    if merged:
        manifest = export_merged(target, out / "model", model_cfg, source, tokenizer, adapters, context)
    else:
        ranks = [int(cfg.get("r", 8)) for cfg in configs.values()]
        manifest = export_lora(out, model_cfg, source, tokenizer, adapters, ranks, context)
    if run is not None:
        manifest["prompt_example"] = prompt_example(run, tokenizer, source)
    write_json(out / "export.json", manifest)
    write_atomic(out / "README.md", readme(manifest))
    return manifest


EXAMPLE_INPUTS = {"classification": "The engine makes a rattling noise when the car idles at a red light.",
                  "summarization": "Anna: are we still on for lunch tomorrow?\nBen: yes, 12:30 at the usual place."}


def prompt_example(run: Any, tokenizer: Any, source: Any) -> dict[str, Any] | None:
    """A request in the prompt format the run was fine-tuned on (a fine-tuned model answers "Hello" badly)."""
    from tunebench.data import Example
    from tunebench.serve.loading import run_task

    endpoint = run_task(run, tokenizer, source, None)
    if endpoint is None:
        return None
    text = EXAMPLE_INPUTS.get(endpoint.task, EXAMPLE_INPUTS["classification"])
    prompt = endpoint.builder.finetune(Example(id="example", input=text, target=""))
    return {"task": endpoint.task, "input": text, "prompt": prompt.text, "stop": endpoint.stop,
            "max_new_tokens": 8 if endpoint.task == "classification" else endpoint.max_new_tokens}


def export_merged(target: str, model_dir: Path, model_cfg: Any, source: Any, tokenizer: Any,
                  adapters: list[Any], context: int) -> dict[str, Any]:
    """One directory of weights (the adapter merged in by evaluation's merge) and the command that serves it."""
    from tunebench.evaluate.merge import merge_adapter

    if adapters:
        merge_adapter(adapters[0].path, model_dir, base=model_cfg, dtype=dtype_flag(model_cfg.dtype), device="cpu")
        tokenizer.save_pretrained(model_dir)  # the tokenizer the server would use (--tokenizer wins)
    else:
        write_base(model_cfg, source, tokenizer, model_dir)
    where = str(model_dir.resolve())
    name = adapters[0].name if adapters else Path(model_cfg.name).name
    if target == "tgi":
        command = (f"docker run --gpus all --shm-size 1g -p 8080:80 -v {shlex.quote(where)}:/data {TGI_IMAGE} "
                   f"--model-id /data --max-input-tokens {context - 1} --max-total-tokens {context}")
    else:
        command = (f"vllm serve {shlex.quote(where)} --served-model-name {shlex.quote(name)} "
                   f"--max-model-len {context} --port 8000")
    return {"target": target, "model": where, "merged_adapter": adapters[0].name if adapters else None,
            "adapters": {}, "served_model_name": name, "context_length": context, "command": command}


def dtype_flag(torch_name: str) -> str:
    from tunebench.evaluate.merge import DTYPES

    return next(flag for flag, name in DTYPES.items() if name == torch_name)


def export_lora(out: Path, model_cfg: Any, source: Any, tokenizer: Any, adapters: list[Any], ranks: list[int],
                context: int) -> dict[str, Any]:
    """vLLM's multi-LoRA serving: the base (by hub id, or written out) plus each adapter directory."""
    if source.local or model_cfg.random_weights:
        base = write_base(model_cfg, source, tokenizer, out / "model")
    else:
        base = source.location
    adapter_dirs = {spec.name: copy_adapter(spec.path, out / "adapters" / spec.name) for spec in adapters}
    parts = ["vllm", "serve", base, "--max-model-len", str(context), "--port", "8000"]
    if adapter_dirs:
        modules = [f"{name}={path}" for name, path in adapter_dirs.items()]
        parts += ["--enable-lora", "--lora-modules", *modules, "--max-lora-rank", str(lora_rank_bucket(max(ranks))),
                  "--max-loras", str(len(adapter_dirs))]
    return {"target": "vllm", "model": base, "merged_adapter": None, "adapters": adapter_dirs,
            "served_model_name": base, "context_length": context, "command": shlex.join(parts)}


def meta_model(model_cfg: Any, source: Any) -> Any:
    """The architecture on the meta device (no memory, no weights): enough to check adapters against it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunebench.models.loading import architecture_config

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(architecture_config(source, model_cfg))


def write_base(model_cfg: Any, source: Any, tokenizer: Any, model_dir: Path) -> str:
    from tunebench.models.loading import load_model

    load_model(model_cfg, source, device="cpu").save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir.resolve())


def copy_adapter(source: Path, target: Path) -> str:
    target.mkdir(parents=True)
    for name in ADAPTER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    return str(target.resolve())


def lora_rank_bucket(rank: int) -> int:
    """vLLM accepts --max-lora-rank from a fixed set; the smallest that holds the adapters' rank."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise UserError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank (512)", "merge it: --merge")


def readme(manifest: dict[str, Any]) -> str:
    target = manifest["target"]
    port = 8080 if target == "tgi" else 8000
    adapters = manifest["adapters"]
    lines = [
        f"# {manifest['served_model_name']} for {'vLLM' if target == 'vllm' else 'Text Generation Inference'}",
        "",
        "Written by `tunebench export`. Launch:",
        "",
        "```bash",
        manifest["command"],
        "```",
        "",
    ]
    if target == "tgi":
        lines += ["TGI serves the merged weights in `model/` (safetensors + tokenizer).", ""]
    elif adapters:
        lines += ["vLLM serves the base model with these LoRA adapters; a request picks one with `\"model\"`:", ""]
        lines += [f"- `{name}`: {path}" for name, path in adapters.items()] + [""]
    else:
        lines += ["vLLM serves the weights above.", ""]
    route = "/generate" if target == "tgi" else "/v1/completions"
    example = manifest.get("prompt_example")
    prompt, tokens = (example["prompt"], example["max_new_tokens"]) if example else ("Hello", 20)
    stop = example["stop"] if example else []
    body = ({"inputs": prompt, "parameters": {"max_new_tokens": tokens, **({"stop": stop} if stop else {})}}
            if target == "tgi" else {"model": next(iter(adapters), manifest["served_model_name"]), "prompt": prompt,
                                     "max_tokens": tokens, **({"stop": stop} if stop else {})})
    if example:
        lines += [f"The model was fine-tuned for {example['task']} on this prompt format; send requests in it "
                  "(anything else, such as a bare \"Hello\", is not what it learned to answer):", "",
                  "```text", example["prompt"], "```", ""]
    lines += [
        "Try it:",
        "",
        "```bash",
        f"curl -s localhost:{port}{route} -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}",
        "```",
        "",
        "Measure it with the same load tester as `tunebench serve` "
        f"(`tunebench loadtest --url http://localhost:{port} --api {'tgi' if target == 'tgi' else 'openai'}`).",
        "",
    ]
    return "\n".join(lines)
