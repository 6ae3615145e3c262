"""The generation task end to end through the real CLI on the tiny model: a study on the built-in extraction
sample (zero-shot, few-shot, LoRA) with exact match, JSON, token F1 and a user metric, its report and
break-even; and bad input (a metric that does not fit, a user metric that raises: exit 2 naming what failed;
a missing target column). A user metric that cannot be imported: tests/evaluate/test_eval_textmetrics.py."""

from __future__ import annotations

import json
import sqlite3

import pytest
from tinystudy import statuses, write_study

METRIC = '''
def has_brace(prediction, reference):
    return float("{" in prediction)

def explodes(prediction, reference):
    raise RuntimeError("metric bug")
'''


def generation_study(model_dir, metric_file) -> str:
    return f"""
name: gen
defaults:
  model: {{name: "{model_dir}"}}
  data: {{source: "builtin:extraction", task: generation, train_count: 16}}
  prompt: {{instruction: "Extract the order as JSON.", few_shot_examples: 1}}
  eval: {{limit: 6, bootstrap: 50, max_new_tokens: 12,
          metrics: [exact_match, json, token_f1, "{metric_file}:has_brace"]}}
  training: {{save_steps: 1000, epochs: 1}}
experiments:
  - sweep: {{method: [zero_shot, few_shot]}}
  - method: lora
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama_dir, cli):
    root = tmp_path_factory.mktemp("gen")
    metric = root / "metric.py"
    metric.write_text(METRIC)
    study = write_study(root, generation_study(tiny_llama_dir, metric))
    result = cli("run", str(study), "--out", str(root / "runs"), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return root, root / "runs"


def test_every_method_is_scored_with_the_chosen_metrics(finished):
    _, out = finished
    assert statuses(out / "results.db") == {"done": 3 + 1}  # three evaluations, one training
    docs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*-gen-*/eval/*/metrics.json")}
    assert set(docs) == {"test-zero_shot", "test-few_shot", "test-lora"}
    for doc in docs.values():
        assert doc["task"] == "generation" and doc["scoring"] == "generate" and doc["n_evaluated"] == 6
        assert list(doc["metrics"]) == ["exact_match", "json_field_accuracy", "json_valid", "json_exact",
                                        "token_f1", "has_brace"]
        assert all(m["ci95"] is not None for m in doc["metrics"].values())
        assert doc["user_metrics"]["has_brace"]["calls"] == 6  # once per example
        assert set(doc["json_fields"]) == {"name", "product", "quantity", "city", "date"}
    rows = [json.loads(line) for line in next(out.glob("*-gen-lora-*/eval/test-lora/predictions.jsonl"))
            .read_text().splitlines()]
    assert len(rows) == 6 and all(set(r["score"]) >= {"exact_match", "has_brace"} for r in rows)
    assert all(json.loads(r["reference"])["date"].startswith("2026-") for r in rows)  # the target, as JSON text
    with sqlite3.connect(out / "results.db") as conn:
        names = {n for (n,) in conn.execute("SELECT name FROM metrics WHERE stage = 'eval'")}
    assert {"exact_match", "json_field_accuracy", "token_f1", "has_brace"} <= names


def test_report_and_break_even_cover_the_task(finished, cli):
    _, out = finished
    result = cli("report", str(out))
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert "Generation: zero-shot vs few-shot vs fine-tuned" in text
    assert "generation: exact match (%) per model" in text and "JSON field accuracy (%)" in text
    assert "Wilson score interval" in text and "has_brace" in text
    breakeven = text[text.index("## 4. Break-even"):]
    assert "### Generation, " in breakeven and "| LoRA | " in breakeven and "vs zero-shot: " in breakeven
    assert (out / "report-plots" / "quality-generation.png").exists()


def test_bad_metric_choices_exit_2(finished, cli, tiny_llama_dir, tmp_path):
    root, _ = finished
    study = write_study(tmp_path, generation_study(tiny_llama_dir, root / "metric.py"))
    result = cli("run", "--dry-run", str(study), "--set", "eval.metrics=[accuracy]")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'accuracy' is a classification metric" in result.stderr and "fix: use exact_match" in result.stderr
    base = ("eval", str(tiny_llama_dir), "--task", "generation", "--data", "builtin:extraction", "--limit", "2",
            "--max-new-tokens", "2", "--out", str(tmp_path / "e"))
    raises = cli(*base, "--set", f"eval.metrics=['{root / 'metric.py'}:explodes']")
    assert raises.returncode == 2 and "Traceback" not in raises.stderr
    assert "raised RuntimeError: metric bug on example 'ext-" in raises.stderr


def test_a_users_jsonl_without_its_target_column_is_refused(tmp_path):
    from tunebench.config.schema import DataConfig
    from tunebench.data import load_task_data
    from tunebench.errors import UserError

    data = tmp_path / "qa.jsonl"
    rows = [{"passage": f"The shop opens at {h} am.", "question": "When does it open?", "answer": f"{h} am"}
            for h in range(6, 12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(source=str(data), task="generation", inputs=["passage", "question"])
    with pytest.raises(UserError, match=r"no column 'target' \(the generation task's target field, data\.target\)") \
            as err:
        load_task_data(cfg)
    assert "columns present: passage, question, answer" in err.value.fix
    loaded = load_task_data(cfg.model_copy(update={"target": "answer", "eval_split": "validation"}))
    assert loaded.test[0].extra == (("question", "When does it open?"),) and loaded.test[0].target.endswith(" am")
