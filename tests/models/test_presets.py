"""Presets build their exact architectures without downloads; loading resolves names, paths and errors."""

from __future__ import annotations

import pytest

from tunebench.config.schema import ModelConfig
from tunebench.errors import UserError
from tunebench.models.loading import ModelSource, architecture_config, load_model, parameter_count, resolve
from tunebench.models.presets import PARAMETERS, PRESETS


def test_redpajama_3b_architecture_is_exact():
    p = PRESETS["redpajama-3b"]
    cfg = architecture_config(ModelSource(p.name, p.hf_id, p, p.kind, False), ModelConfig(name=p.name))
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == \
        ("gpt_neox", 2560, 32, 32)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.use_parallel_residual) == (10240, 50432, False)
    assert cfg.rope_parameters["partial_rotary_factor"] == 1.0  # rotary_pct 1.0
    assert cfg.max_position_embeddings == 2048
    seven = PRESETS["redpajama-7b"].architecture
    assert (seven["hidden_size"], seven["intermediate_size"]) == (4096, 16384)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    """Count parameters on the meta device, then really build a reduced-size copy with random weights."""
    p = PRESETS[name]
    source = ModelSource(p.name, p.hf_id, p, p.kind, False)
    # the stored count `tunebench models` prints without torch is the architecture's exact count
    assert parameter_count(source, ModelConfig(name=name, random_weights=True)) == PARAMETERS[name] > 50e6
    cfg = architecture_config(source, ModelConfig(name=name))
    for key in ("num_hidden_layers", "num_layers", "n_layers", "num_decoder_layers"):
        if hasattr(cfg, key) and key in cfg.to_dict():
            setattr(cfg, key, 1)
    import torch
    import transformers

    auto = {"causal": transformers.AutoModelForCausalLM, "seq2seq": transformers.AutoModelForSeq2SeqLM,
            "encoder": transformers.AutoModelForSequenceClassification}[p.kind]
    # The 7B-class embeddings alone take seconds to initialise; their shapes are checked on the meta device.
    with torch.device("meta" if p.architecture.get("vocab_size", 0) * cfg.hidden_size > 2e8 else "cpu"):
        model = auto.from_config(cfg)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert set(p.lora_targets) <= names, f"{name}: LoRA targets missing from the architecture"


def test_parameter_counts_match_the_published_sizes():
    def count(name):
        p = PRESETS[name]
        return parameter_count(ModelSource(p.name, p.hf_id, p, p.kind, False), ModelConfig(name=name))

    assert 2.7e9 < count("redpajama-3b") < 2.9e9
    assert 6.8e9 < count("redpajama-7b") < 6.95e9
    assert 134e6 < count("smollm2-135m-instruct") < 136e6


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(UserError) as info:
        resolve(ModelConfig(name="redpajama-3"))
    assert "unknown model preset 'redpajama-3'" in info.value.problem
    assert "redpajama-3b" in info.value.fix


def test_random_weights_path_without_config(tmp_path):
    with pytest.raises(UserError, match=r"has no config\.json"):
        resolve(ModelConfig(name=str(tmp_path), random_weights=True))


def test_local_path_loads_through_the_real_path(tiny_neox_dir, tiny_t5_dir, tiny_bert_dir):
    assert resolve(ModelConfig(name=str(tiny_neox_dir))).kind == "causal"
    assert resolve(ModelConfig(name=str(tiny_t5_dir))).kind == "seq2seq"
    assert resolve(ModelConfig(name=str(tiny_bert_dir))).kind == "encoder"
    model = load_model(ModelConfig(name=str(tiny_neox_dir)), device="cpu")
    assert model.config.num_hidden_layers == 2


def test_random_weights_from_local_config(tiny_llama_dir):
    model = load_model(ModelConfig(name=str(tiny_llama_dir), random_weights=True), device="cpu")
    assert model.config.model_type == "llama"


def test_offline_hub_error_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        resolve(ModelConfig(name="someone/not-cached-model"))
    assert "unreachable" in info.value.problem
    assert "--local-dir" in info.value.fix
