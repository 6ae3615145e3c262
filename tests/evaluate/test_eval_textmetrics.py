"""The generation task's metrics on fixed predictions: values equal hand-computed ones, each with an interval;
a user metric is called once per example; bad metric choices are UserErrors naming the metric and example."""

from __future__ import annotations

import json

import pytest

from tunebench.config.schema import CellConfig, EvalConfig
from tunebench.config.tasks import check_cell, metric_outputs
from tunebench.errors import UserError
from tunebench.evaluate.textmetrics import TextScorer, exact_match, normalized, parse_json, token_f1

BOOT = {"resamples": 200, "seed": 0}


def scored(preds, refs, **cfg):
    ids = [f"ex-{i}" for i in range(len(preds))]
    return TextScorer(EvalConfig(**cfg)).score(ids, preds, refs, [{"input": "x"} for _ in preds], BOOT)


def test_exact_match_normalization_options():
    assert normalized("  Hello,\n  World! ", ["whitespace"]) == "Hello, World!"
    assert exact_match("Hello,  World!", "hello world", ["whitespace"]) == 0.0
    assert exact_match("Hello,  World!", "hello world", ["case", "whitespace", "punctuation"]) == 1.0
    assert exact_match("¡Hola!", "hola", ["case", "punctuation"]) == 1.0  # Unicode punctuation too
    out = scored(["Paris", "paris ", "Rome"], ["Paris", "Paris", "Paris"], metrics=["exact_match"],
                 normalize=["case", "whitespace"])
    assert out.metrics["exact_match"]["value"] == pytest.approx(2 / 3)
    low, high = out.metrics["exact_match"]["ci95"]
    assert low < 2 / 3 < high  # Wilson interval
    assert [r["exact_match"] for r in out.per_example] == [1.0, 1.0, 0.0]


def test_token_f1_equals_hand_computed_values():
    # SQuAD normalization drops case, punctuation and the articles a/an/the
    assert token_f1("the cat sat on the mat", "a cat sat on a hat") == pytest.approx(0.75)  # 3 of 4 both ways
    assert token_f1("Paris, France", "paris") == pytest.approx(2 / 3)  # p = 1/2, r = 1
    assert token_f1("", "paris") == 0.0
    assert token_f1("The", "an") == 1.0  # both empty after normalization
    out = scored(["the cat sat on the mat", "Paris, France", "London"], ["a cat sat on a hat", "paris", "Rome"],
                 metrics=["token_f1"])
    assert out.metrics["token_f1"]["value"] == pytest.approx((0.75 + 2 / 3 + 0) / 3)
    low, high = out.metrics["token_f1"]["ci95"]
    assert 0 <= low <= out.metrics["token_f1"]["value"] <= high <= 1


JSON_PAIRS = [
    # 4 leaf fields; "ann" != "Ann" without case folding, zip missing: 2 of 4
    ('{"name": "ann ", "qty": 3, "addr": {"city": "Oslo"}}',
     '{"name": "Ann", "qty": 3, "addr": {"city": "Oslo", "zip": "0150"}}'),
    ('```json\n{"a": true}\n```', '{"a": 1}'),        # valid (fence read), but true is not 1: 0 of 1
    ("not json at all", '{"a": 1, "b": 2}'),          # invalid: 0
    ('{"a": 1, "b": 2, "c": 3}', '{"a": 1, "b": 2}'),  # every target field right (2/2), not exact (extra c)
    ('{"x": [1, 2]}', '{"x": [1, 2]}'),               # lists compared whole: 1/1, exact
]


def test_json_field_accuracy_equals_hand_computed_values():
    preds, refs = zip(*JSON_PAIRS, strict=True)
    out = scored(list(preds), list(refs), metrics=["json"])
    assert out.metrics["json_field_accuracy"]["value"] == pytest.approx((0.5 + 0 + 0 + 1 + 1) / 5)
    assert out.metrics["json_valid"]["value"] == pytest.approx(4 / 5)
    assert out.metrics["json_exact"]["value"] == pytest.approx(1 / 5)
    assert all(out.metrics[k]["ci95"] is not None for k in ("json_field_accuracy", "json_valid", "json_exact"))
    assert [r["json_field_accuracy"] for r in out.per_example] == [0.5, 0.0, 0.0, 1.0, 1.0]
    fields = out.extra["json_fields"]
    assert fields["addr.zip"] == {"accuracy": 0.0, "n": 1}
    assert fields["a"] == {"accuracy": 0.3333, "n": 3}  # pairs 2 and 3 miss it, pair 4 has it
    # with case folding the name matches too: 3 of 4
    folded = scored(list(preds), list(refs), metrics=["json"], normalize=["case", "whitespace"])
    assert folded.per_example[0]["json_field_accuracy"] == 0.75
    assert parse_json("```\n[1, 2]\n```") == (True, [1, 2])


def test_json_schema_validity(tmp_path):
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    preds, refs = ['{"a": 1}', '{"a": "one"}', "nope"], ['{"a": 1}'] * 3
    for spec in (schema, str(path)):
        out = scored(preds, refs, metrics=["json"], json_schema=spec)
        assert out.metrics["json_schema_valid"]["value"] == pytest.approx(1 / 3)
    assert "json_schema_valid" in metric_outputs(EvalConfig(metrics=["json"], json_schema=schema))
    with pytest.raises(UserError, match="not a valid JSON schema"):
        TextScorer(EvalConfig(metrics=["json"], json_schema={"type": "no-such-type"}))
    with pytest.raises(UserError, match="needs JSON targets, and example 'ex-1'"):
        scored(["{}", "{}"], ["{}", "plain text"], metrics=["json"])


def test_bleu_and_chrf_are_sacrebleu_corpus_scores_with_intervals():
    from sacrebleu.metrics import BLEU, CHRF

    preds = ["the cat is on the mat", "a quick brown fox jumps", "hello there", "completely different words"]
    refs = ["the cat sat on the mat", "the quick brown fox jumps", "hello there", "nothing in common here"]
    out = scored(preds, refs, metrics=["bleu", "chrf", "rouge"])
    assert out.metrics["bleu"]["value"] == pytest.approx(BLEU(effective_order=True).corpus_score(preds, [refs]).score)
    assert out.metrics["chrf"]["value"] == pytest.approx(CHRF().corpus_score(preds, [refs]).score)
    for name in ("bleu", "chrf", "rouge1", "rougeLsum"):
        low, high = out.metrics[name]["ci95"]
        assert low <= out.metrics[name]["value"] <= high, name
    assert out.per_example[2]["bleu"] == pytest.approx(100.0)
    # the same seed gives the same interval
    assert scored(preds, refs, metrics=["bleu"]).metrics["bleu"]["ci95"] == out.metrics["bleu"]["ci95"]


USER_METRIC = '''
CALLS = []

def starts_same(prediction, reference):
    CALLS.append((prediction, reference))
    return prediction[:1] == reference[:1]

def length_ratio(prediction, reference, inputs):
    return len(prediction) / max(1, len(inputs["input"]))

def broken(prediction, reference):
    if prediction == "boom":
        raise ValueError("cannot score this")
    return 1.0

def not_a_number(prediction, reference):
    return "high"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(USER_METRIC)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys

    sys.modules.pop("my_metrics", None)


def test_user_metric_is_called_once_per_example_with_mean_and_ci(user_module):
    import my_metrics

    out = scored(["apple", "banana", "cherry", "apricot"], ["avocado", "blueberry", "plum", "apple"],
                 metrics=["exact_match", "my_metrics:starts_same"])
    assert my_metrics.CALLS == [("apple", "avocado"), ("banana", "blueberry"), ("cherry", "plum"),
                                ("apricot", "apple")]
    assert out.metrics["starts_same"]["value"] == pytest.approx(3 / 4)
    assert out.metrics["starts_same"]["ci95"] is not None
    assert out.extra["user_metrics"]["starts_same"] == {"entry_point": "my_metrics:starts_same", "calls": 4}
    assert [r["starts_same"] for r in out.per_example] == [1.0, 1.0, 0.0, 1.0]
    # by file path, and with the example's input fields when the function takes `inputs`
    by_path = scored(["ab", "abcd"], ["x", "y"], metrics=[f"{user_module / 'my_metrics.py'}:length_ratio"])
    assert by_path.metrics["length_ratio"]["value"] == pytest.approx((2 + 4) / 2)


def test_user_metric_failures_name_the_metric_and_the_example(user_module):
    with pytest.raises(UserError, match=r"'my_metrics:broken' raised ValueError: cannot score this on example 'ex-1'"):
        scored(["fine", "boom"], ["a", "b"], metrics=["my_metrics:broken"])
    with pytest.raises(UserError, match=r"returned 'high' on example 'ex-0'"):
        scored(["a"], ["b"], metrics=["my_metrics:not_a_number"])
    with pytest.raises(UserError, match=r"cannot be imported: ModuleNotFoundError"):
        TextScorer(EvalConfig(metrics=["no_such_module_xyz:score"]))
    with pytest.raises(UserError, match=r"has no function 'missing'") as err:
        TextScorer(EvalConfig(metrics=["my_metrics:missing"]))
    assert "starts_same" in err.value.fix


def gen_cell(**eval_cfg):
    return CellConfig.model_validate({"data": {"source": "builtin:extraction", "task": "generation"},
                                      "eval": eval_cfg})


def test_metrics_that_do_not_fit_the_task_are_refused():
    with pytest.raises(UserError, match="'accuracy' is a classification metric") as err:
        check_cell(gen_cell(metrics=["accuracy"]), "study.yaml")
    assert "exact_match" in err.value.fix
    with pytest.raises(UserError, match="unknown metric 'exact'"):
        check_cell(gen_cell(metrics=["exact"]), "study.yaml")
    with pytest.raises(UserError, match="reports 'bleu', which 'bleu' already"):
        check_cell(gen_cell(metrics=["bleu", "mod:bleu"]), "study.yaml")
    with pytest.raises(UserError, match=r"eval\.json_schema is set, but eval\.metrics has no 'json'"):
        check_cell(gen_cell(metrics=["exact_match"], json_schema={"type": "object"}), "study.yaml")
    classification = CellConfig.model_validate({"eval": {"metrics": ["exact_match"]}})
    with pytest.raises(UserError, match="classification task always reports accuracy"):
        check_cell(classification, "study.yaml")
    check_cell(gen_cell(metrics=["json", "exact_match", "pkg.mod:fn"]), "study.yaml")
    assert metric_outputs(gen_cell().eval) == ["exact_match", "token_f1"]
