"""`tunebench eval` end to end on a tiny model, the library entry point, few-shot prompts, and bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from tunebench.config.schema import CellConfig
from tunebench.rundir import RunDir


def test_eval_model_with_generate_scoring(cli, tmp_path, tiny_llama_dir):
    out = tmp_path / "out"
    result = cli("eval", str(tiny_llama_dir), "--task", "classification", "--data", "builtin:classification",
                 "--scoring", "generate", "--limit", "5", "--max-new-tokens", "4", "--out", str(out),
                 "--set", "eval.bootstrap=100")
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["scoring"] == "generate" and doc["n_evaluated"] == 5
    assert {"accuracy", "macro_f1", "raw_exact_match", "invalid_rate"} <= set(doc["metrics"])
    assert doc["model_note"] is None and doc["bootstrap"]["resamples"] == 100
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(0 < r["generated_tokens"] <= 4 and isinstance(r["raw_output"], str) for r in rows)
    invalid = sum(r["prediction"] is None for r in rows) / len(rows)
    assert doc["metrics"]["invalid_rate"]["value"] == pytest.approx(invalid)


def test_evaluate_cell_summarization_few_shot(tmp_path, tiny_llama_dir):
    from tunebench.evaluate import evaluate_cell

    cell = CellConfig.model_validate({"model": {"name": str(tiny_llama_dir)}, "method": "few_shot",
                                      "data": {"source": "builtin:summarization", "task": "summarization"},
                                      "eval": {"max_new_tokens": 6, "bootstrap": 100, "batch_size": 2}})
    run = RunDir(tmp_path / "cell")
    doc = evaluate_cell(cell, run, limit=3, progress=False)
    assert set(doc["metrics"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(doc["metrics"][k]["ci95"] is not None for k in doc["metrics"])
    # Three solved dialogues do not fit the tiny model's 512 tokens: the context guard truncates and says so.
    assert doc["n_truncated"] == 3 and "context_policy=truncate" in doc["truncated_why"]
    rows = [json.loads(line) for line in (run.eval_dir("test", "few_shot") / "predictions.jsonl").read_text()
            .splitlines()]
    assert [r["truncated"] for r in rows] == [True] * 3
    assert all(r["prompt_tokens"] <= 512 - 64 and r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(set(r["score"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"} for r in rows)


def test_skip_policy_is_counted(tmp_path, tiny_llama_dir):
    from tunebench.evaluate import evaluate_cell

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"the engine makes a noise {i}", "label": "autos"} for i in range(4)]
    rows += [{"text": f"the pitcher threw a ball {i}", "label": "baseball"} for i in range(4)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows[0]["text"] = rows[5]["text"] = "far too long for the context " * 200
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cell = CellConfig.model_validate({"model": {"name": str(tiny_llama_dir)}, "data": {"source": str(data)},
                                      "prompt": {"context_policy": "skip"}, "eval": {"bootstrap": 0}})
    run = RunDir(tmp_path / "cell")
    doc = evaluate_cell(cell, run, progress=False)
    assert (doc["n_examples"], doc["n_evaluated"], doc["n_skipped"]) == (8, 6, 2)
    assert "context_policy=skip" in doc["skipped_why"] and doc["metrics"]["accuracy"]["ci95"] is None
    predictions = (run.eval_dir("test", "zero_shot") / "predictions.jsonl").read_text().splitlines()
    skipped = [json.loads(line) for line in predictions if json.loads(line)["skipped"]]
    assert len(skipped) == 2 and all(r["prediction"] is None for r in skipped)


def test_encoder_classifier_predicts_with_its_head(tmp_path, tiny_tokenizer):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tunebench.evaluate import evaluate, load_for_eval

    labels = ["autos", "baseball", "cooking", "electronics", "gardening", "medicine", "politics", "space"]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={name: i for i, name in enumerate(labels)})
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    tiny_tokenizer.save_pretrained(tmp_path / "bert")
    cell = CellConfig.model_validate({"model": {"name": str(tmp_path / "bert")}, "eval": {"bootstrap": 0}})
    doc = evaluate(cell, load_for_eval(cell), tmp_path / "out", limit=6, progress=False)
    assert doc["scoring"] == "classifier head" and doc["n_evaluated"] == 6
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["prediction"] in labels and set(r["label_scores"]) == set(labels) for r in rows)


def test_few_shot_prompts_show_every_class_but_never_the_example(tiny_tokenizer):
    from tunebench.data import load_task_data
    from tunebench.models.loading import resolve
    from tunebench.prompts import PromptBuilder

    cell = CellConfig.model_validate({"data": {"source": "builtin:classification"}, "method": "few_shot",
                                      "prompt": {"chat_template": False}})
    data = load_task_data(cell.data, tiny_tokenizer)
    builder = PromptBuilder.for_cell(cell, tiny_tokenizer, data, resolve(cell.model))
    for ex in data.train[:5] + data.test[:5]:
        shots = builder.shots_for(ex)
        assert sorted(s.target for s in shots) == data.labels  # one per class by default
        assert ex.id not in {s.id for s in shots}
        assert {s.id for s in shots} <= {t.id for t in data.train}


def test_embedded_model_results_carry_the_dequantized_note():
    from tunebench.evaluate.loading import base_notes
    from tunebench.models.loading import ModelSource

    source = ModelSource("smollm2-135m-instruct", "/x", None, "causal", True)
    assert "dequantized" in base_notes(CellConfig(), source)[0]
    assert base_notes(CellConfig.model_validate({"model": {"name": "/x"}}), source) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "lora", "--task", "classification"], "--method lora evaluates a trained adapter"),
    (["--limit", "0", "--task", "classification"], "--limit 0"),
    (["--run", "somewhere"], "either MODEL or --run"),
    (["--task", "classification", "--scoring", "vote"], "eval.scoring = 'vote' is not allowed"),
])
def test_bad_input_exits_2(cli, tiny_llama_dir, args, message):
    result = cli("eval", str(tiny_llama_dir), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_empty_split_and_missing_adapter_exit_2(cli, tmp_path, tiny_llama_dir):
    from tunebench.data.sources import builtin_path

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(builtin_path("classification"), data / "train.jsonl")
    (data / "test.jsonl").write_text("")
    result = cli("eval", str(tiny_llama_dir), "--task", "classification", "--data", str(data))
    assert result.returncode == 2 and "test.jsonl has no rows" in result.stderr
    run = RunDir(tmp_path / "untrained")
    run.write_config(CellConfig.model_validate({"model": {"name": str(tiny_llama_dir)}, "method": "lora"}))
    result = cli("eval", "--run", str(run.path))
    assert result.returncode == 2 and "has no trained adapter" in result.stderr


def test_metrics_record_the_calibration(tmp_path, tiny_llama_dir):
    """Prompted label scoring is calibrated by default and says so; loglik keeps the uncalibrated rankings."""
    from tunebench.evaluate import evaluate_cell

    def run(name, scoring, **eval_options):
        cell = CellConfig.model_validate({"model": {"name": str(tiny_llama_dir)}, "data": {"source":
                                          "builtin:classification"}, "eval": {"scoring": scoring,
                                                                              "bootstrap": 50, **eval_options}})
        return evaluate_cell(cell, RunDir(tmp_path / name), limit=4, progress=False)

    loglik = run("loglik", "loglik")
    assert loglik["calibration"]["method"] == "content_free" and loglik["settings"]["calibrate"] == "content_free"
    assert loglik["calibration"]["content_free_inputs"] == ["N/A", "", "[MASK]"]
    assert sum(loglik["calibration"]["label_prior"].values()) == pytest.approx(1.0, abs=1e-3)
    assert {"accuracy", "accuracy_length_normalised", "accuracy_uncalibrated",
            "accuracy_length_normalised_uncalibrated"} <= set(loglik["metrics"])
    constrained = run("constrained", "constrained", calibrate="none")
    assert constrained["calibration"] == {"method": "none", "setting": "none"}
    assert "accuracy_uncalibrated" not in constrained["metrics"]


def test_fine_tuned_methods_are_not_calibrated_by_default(tiny_llama_dir):
    from tunebench.evaluate import load_for_eval
    from tunebench.evaluate.runner import calibration

    def cell(**fields):
        return CellConfig.model_validate({"model": {"name": str(tiny_llama_dir)}, **fields})

    loaded = load_for_eval(cell())
    assert calibration(cell(method="zero_shot"), loaded) == "content_free"
    assert calibration(cell(method="few_shot"), loaded) == "content_free"
    assert calibration(cell(method="lora"), loaded) == "none"
    assert calibration(cell(method="lora", eval={"calibrate": "content_free"}), loaded) == "content_free"
    assert calibration(cell(eval={"scoring": "generate"}), loaded) == "none"
