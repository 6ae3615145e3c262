"""Wrapping a model in LoRA prints no transformers FutureWarning (peft 0.21 reads a deprecated property; without
the filter in tunebench/__init__.py this prints "`is_gradient_checkpointing` is deprecated")."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import tunebench
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1))
get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
print("wrapped")
"""


def test_get_peft_model_prints_no_future_warning():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "wrapped" in result.stdout, result.stderr
    assert "FutureWarning" not in result.stderr, result.stderr
