"""Adapters: evaluating a run end to end through the CLI, merging (logits equal base + adapter), and refusing
an adapter made for another base or a dataset with other labels."""

from __future__ import annotations

import json

import pytest

from tunebench.config.schema import CellConfig, ModelConfig
from tunebench.errors import UserError
from tunebench.rundir import RunDir

BUILTIN_LABELS = ["autos", "baseball", "cooking", "electronics", "gardening", "medicine", "politics", "space"]


def save_adapter(model_dir, out, targets, *, seed=0, auto=None):
    """A LoRA adapter with non-zero B matrices (peft's default B = 0 would make merging trivially exact)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = (auto or AutoModelForCausalLM).from_pretrained(model_dir)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def lora_run(tmp_path, model_dir, labels=BUILTIN_LABELS):
    cell = CellConfig.model_validate({"model": {"name": str(model_dir)}, "method": "lora",
                                      "data": {"source": "builtin:classification", "task": "classification"},
                                      "eval": {"bootstrap": 50}})
    run = RunDir(tmp_path / "runs" / "study" / "cell")
    run.write_config(cell)
    save_adapter(model_dir, run.adapter, ["q_proj", "v_proj"])
    (run.adapter / "labels.json").write_text(json.dumps(labels))
    return run


def test_eval_run_end_to_end(cli, tmp_path, tiny_llama_dir):
    run = lora_run(tmp_path, tiny_llama_dir)
    result = cli("eval", "--run", str(run.path), "--limit", "6")
    assert result.returncode == 0, result.stderr
    out = run.eval_dir("test", "lora")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["adapter"] == str(run.adapter) and doc["method"] == "lora" and doc["scoring"] == "constrained"
    assert doc["n_evaluated"] == 6 and doc["n_skipped"] == 0
    assert doc["labels"] == BUILTIN_LABELS
    low, high = doc["metrics"]["accuracy"]["ci95"]
    assert low <= doc["metrics"]["accuracy"]["value"] <= high
    assert doc["speed"]["examples_per_s"] > 0 and doc["speed"]["generated_tokens"] > 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["reference"] for r in rows}) > 1  # the limit is a stratified sample
    for row in rows:
        assert {"id", "prompt_tokens", "truncated", "raw_output", "prediction", "reference", "score"} <= set(row)
        assert row["prediction"] in BUILTIN_LABELS and row["score"] in (0.0, 1.0)
    assert (out / "confusion.png").exists()
    assert "evaluated 6 of 6 examples" in result.stderr


def test_eval_refuses_labels_other_than_the_trained_ones(cli, tmp_path, tiny_llama_dir):
    run = lora_run(tmp_path, tiny_llama_dir, labels=[*BUILTIN_LABELS[:-1], "weather"])
    result = cli("eval", "--run", str(run.path), "--limit", "2")
    assert result.returncode == 2
    assert "not in the data: weather" in result.stderr and "never seen in training: space" in result.stderr
    assert "Traceback" not in result.stderr


def test_adapter_for_another_base_is_refused(cli, tmp_path, tiny_llama_dir, tiny_neox_dir, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    neox_adapter = save_adapter(tiny_neox_dir, tmp_path / "neox-adapter", ["query_key_value"])
    result = cli("eval", str(tiny_llama_dir), "--adapter", str(neox_adapter), "--task", "classification",
                 "--limit", "2")
    assert result.returncode == 2
    assert f"trained for base model '{tiny_neox_dir}'" in result.stderr and "no module" in result.stderr
    # Same module names, other shapes: a wider llama.
    torch.manual_seed(0)
    wide = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=400, hidden_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4, num_key_value_heads=2,
                                                        intermediate_size=64))
    wide.save_pretrained(tmp_path / "wide")
    tiny_tokenizer.save_pretrained(tmp_path / "wide")
    wide_adapter = save_adapter(tmp_path / "wide", tmp_path / "wide-adapter", ["q_proj"])
    from tunebench.evaluate.loading import check_adapter_fits
    from tunebench.models.loading import resolve

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(UserError, match="takes 32 inputs, the adapter's lora_A expects 64"):
        check_adapter_fits(base, wide_adapter, resolve(ModelConfig(name=str(tiny_llama_dir))))


def logits(model, tok, texts):
    import torch

    with torch.no_grad():
        return torch.stack([model(**tok(t, return_tensors="pt")).logits[0, -1] for t in texts])


def test_merged_logits_equal_base_plus_adapter(tmp_path, tiny_llama_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunebench.evaluate.merge import MERGE_RECORD, merge_adapter

    adapter = save_adapter(tiny_llama_dir, tmp_path / "adapter", "all-linear")
    record = merge_adapter(adapter, tmp_path / "merged", dtype="fp32")  # base read from adapter_config.json
    assert record["base"] == str(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    texts = ["The engine makes a rattling noise", "###Sentence: hello world ###Class:"]
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), adapter)
    base_only = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    expected, got = logits(with_adapter, tok, texts), logits(merged, tok, texts)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(logits(base_only, tok, texts), expected, atol=1e-3)  # the adapter matters
    assert json.loads((tmp_path / "merged" / MERGE_RECORD).read_text())["dtype"] == "fp32"


def test_merged_seq2seq_model_loads_and_matches(tmp_path, tiny_t5_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tunebench.evaluate.merge import merge_adapter

    adapter = save_adapter(tiny_t5_dir, tmp_path / "adapter", ["q", "v"], auto=AutoModelForSeq2SeqLM)
    merge_adapter(adapter, tmp_path / "merged", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    batch = tok(["Anna: lunch tomorrow?"], return_tensors="pt")
    decoder = torch.zeros((1, 1), dtype=torch.long)
    with torch.no_grad():
        merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "merged")(**batch, decoder_input_ids=decoder)
        peft = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir), adapter)
        expected = peft(**batch, decoder_input_ids=decoder)
    assert torch.allclose(merged.logits, expected.logits, atol=1e-5)


def test_merge_cli_from_a_run_in_bf16(cli, tmp_path, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    run = lora_run(tmp_path, tiny_llama_dir)
    result = cli("merge", "--run", str(run.path), "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.dtype == torch.bfloat16
    again = cli("merge", "--run", str(run.path), "--out", str(tmp_path / "merged"))
    assert again.returncode == 2 and "not empty" in again.stderr
    zero = RunDir(tmp_path / "zero")
    zero.write_config(CellConfig())
    refused = cli("merge", "--run", str(zero.path), "--out", str(tmp_path / "m2"))
    assert refused.returncode == 2 and "no adapter to merge" in refused.stderr
