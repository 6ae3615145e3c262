"""Turning a `model:` section into a tokenizer and a model.

`model.name` is a preset name, a Hugging Face id or a local path. Hub loading is real (`from_pretrained`,
`trust_remote_code` off by default); when the hub cannot be reached and nothing is cached, the error says
so and how to point at a local copy. `random_weights` builds the architecture from the preset's numbers or
a local config.json, with no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.config.schema import ModelConfig
from tunebench.errors import UserError, did_you_mean
from tunebench.models.presets import EMBEDDED, PRESETS, Kind, Preset

ENCODER_TYPES = {"bert", "distilbert", "roberta", "deberta", "deberta-v2", "electra", "albert", "modernbert"}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved once."""

    name: str  # what the user wrote
    location: str  # hub id or local directory that from_pretrained reads
    preset: Preset | None
    kind: Kind
    local: bool

    @property
    def lora_targets(self) -> list[str] | str:
        return self.preset.lora_targets if self.preset else "all-linear"

    @property
    def instruct(self) -> bool:
        return bool(self.preset and self.preset.instruct)


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def resolve(cfg: ModelConfig) -> ModelSource:
    name = cfg.name
    if name == EMBEDDED and not cfg.random_weights:
        from tunebench.models.embedded import embedded_model_dir

        return ModelSource(name, str(embedded_model_dir()), PRESETS[name], "causal", True)
    if name in PRESETS:
        preset = PRESETS[name]
        return ModelSource(name, preset.hf_id, preset, preset.kind, False)
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise UserError(f"model path '{name}' has no config.json",
                            "point model.name at a directory written by save_pretrained or 'tunebench merge'")
        return ModelSource(name, str(path), None, kind_of(load_config(str(path), cfg)), True)
    if "/" not in name:
        raise UserError(f"unknown model preset '{name}'",
                        f"{did_you_mean(name, list(PRESETS))}; or give a hub id (org/name) or a local path")
    return ModelSource(name, name, None, kind_of(load_config(name, cfg)), False)


def kind_of(config: Any) -> Kind:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = getattr(config, "architectures", None) or []
    if config.model_type in ENCODER_TYPES or any(a.endswith("ForSequenceClassification") for a in archs):
        return "encoder"
    return "causal"


def hub_error(location: str, err: Exception) -> UserError:
    return UserError(
        f"cannot load '{location}': the model hub is unreachable or the model is not cached ({type(err).__name__})",
        f"on a connected machine run 'hf download {location} --local-dir DIR', then set model.name to DIR "
        "(or use --random-weights for a preset's architecture without weights)",
    )


def load_config(location: str, cfg: ModelConfig) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    except (OSError, ValueError) as err:
        if Path(location).exists():
            raise UserError(f"cannot read the model config in '{location}': {err}", "check the directory") from None
        raise hub_error(location, err) from None


def architecture_config(source: ModelSource, cfg: ModelConfig) -> Any:
    """The model config without any weights: the preset's numbers, or the config.json of a path or id."""
    from transformers import AutoConfig

    if source.preset is not None:
        arch = dict(source.preset.architecture)
        return AutoConfig.for_model(arch.pop("model_type"), **arch)
    return load_config(source.location, cfg)


def torch_dtype(cfg: ModelConfig, device: str | None = None) -> Any:
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    on_cuda = (device or default_device()).startswith("cuda")
    return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(source: ModelSource, cfg: ModelConfig) -> Any:
    """The model's tokenizer; random-weight presets without a cached one borrow the embedded tokenizer."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.location, trust_remote_code=cfg.trust_remote_code,
                                            revision=cfg.revision)
    except (OSError, ValueError) as err:
        if not cfg.random_weights:
            raise hub_error(source.location, err) from None
        from tunebench.models.embedded import embedded_model_dir

        tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    if tok.pad_token is None:
        # Padding reuses EOS; the training stage keeps EOS in the labels regardless (see train/).
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, source: ModelSource | None = None, *, device: str | None = None,
               num_labels: int | None = None, quantization: Any = None) -> Any:
    """Load (or build, with random_weights) the model for `cfg` on `device`."""
    import transformers

    source = source or resolve(cfg)
    dtype = torch_dtype(cfg, device)
    auto = {
        "causal": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "encoder": transformers.AutoModelForSequenceClassification,
    }[source.kind]
    extra: dict[str, Any] = {}
    if num_labels is not None and source.kind == "encoder":
        extra["num_labels"] = num_labels
    if cfg.attn_implementation:
        extra["attn_implementation"] = cfg.attn_implementation
    if cfg.random_weights:
        config = architecture_config(source, cfg)
        for key, value in extra.items():
            setattr(config, key if key != "attn_implementation" else "_attn_implementation", value)
        # Draw the random weights where the model will run: 2.8B parameters take ~1 s on an H200 and over two
        # minutes initialised on the CPU first. (4-bit loading needs weights on disk; the caller handles it.)
        import torch

        with torch.device("cpu" if quantization is not None else device or default_device()):
            model = auto.from_config(config, dtype=dtype)
    else:
        try:
            model = auto.from_pretrained(source.location, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                         revision=cfg.revision, quantization_config=quantization, **extra)
        except OSError as err:
            raise hub_error(source.location, err) from None
    if quantization is not None:
        return model
    model = model.to(device or default_device())
    if model.device.type == "cpu" and dtype is not None and "bfloat16" in str(dtype):
        contiguous_head_input(model)
    return model


def contiguous_head_input(model: Any) -> None:
    """On the CPU, a bf16 linear layer given a non-contiguous input (generate's `logits_to_keep` slice of the
    hidden states) copies its weight once per batch row: 2.7 GB and ~5 s per 48-row batch for SmolLM2's
    49k-token head, against 0.01 s on a contiguous input. Making the head's input contiguous costs one
    hidden-size row per sequence."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


def parameter_count(source: ModelSource, cfg: ModelConfig) -> int:
    """Exact parameter count from the architecture, built on the meta device (no memory, no download)."""
    import torch
    import transformers

    config = architecture_config(source, cfg)
    auto = {"causal": transformers.AutoModelForCausalLM, "seq2seq": transformers.AutoModelForSeq2SeqLM,
            "encoder": transformers.AutoModelForSequenceClassification}[source.kind]
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())
