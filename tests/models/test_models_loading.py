"""Model loading details that matter for speed."""

from __future__ import annotations


def test_bf16_cpu_head_gets_a_contiguous_input(tiny_llama_dir):
    """generate() slices the last hidden state (non-contiguous); a bf16 CPU linear would copy its weight per row."""
    import torch

    from tunebench.config.schema import ModelConfig
    from tunebench.models.loading import load_model

    model = load_model(ModelConfig(name=str(tiny_llama_dir), dtype="bfloat16"), device="cpu")
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    with torch.inference_mode():
        model(input_ids=torch.randint(0, 50, (3, 7)), logits_to_keep=1)
    assert seen == [True]
