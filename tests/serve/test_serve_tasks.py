"""A fine-tuned run's task routes (/classify, /summarize) and the original's /predict, checked against evaluation."""

from __future__ import annotations

import pytest
from serve_helpers import start

TEXT = "The rocket reached orbit and deployed the satellite over the Pacific."
DIALOGUE = "Anna: are we still on for lunch tomorrow?\nBen: yes, 12:30 at the usual place."


@pytest.fixture(scope="module")
def cls_server(tiny_llama_dir, cls_run):
    background, live = start(tiny_llama_dir, run=cls_run)
    yield live
    background.stop()


@pytest.fixture(scope="module")
def sum_server(tiny_llama_dir, sum_run):
    background, live = start(tiny_llama_dir, run=sum_run)
    yield live
    background.stop()


def evaluation_setup(run_path):
    """The model, tokenizer and fine-tuning prompt builder exactly as evaluation loads them for this run."""
    from tunebench.evaluate.loading import load_for_eval, recorded_labels, run_label_places
    from tunebench.prompts import PromptBuilder, context_length_of
    from tunebench.rundir import RunDir

    run = RunDir(run_path)
    cell = run.read_config()
    loaded = load_for_eval(cell, run)
    labels = recorded_labels(*run_label_places(run, None))
    builder = PromptBuilder(cell.prompt, cell.data.task, loaded.tokenizer, labels=labels, train_examples=[],
                            use_chat_template=False,
                            context_length=context_length_of(loaded.source, cell.model, loaded.tokenizer))
    return loaded, builder, labels


def test_classify_matches_evaluation(cls_server, cls_run):
    from tunebench.data import Example
    from tunebench.evaluate.classify import constrained_classify

    response = cls_server.post("/classify", {"text": TEXT})
    assert response.status_code == 200, response.text
    loaded, builder, labels = evaluation_setup(cls_run)
    expected = constrained_classify(loaded.model, loaded.tokenizer, [builder.finetune(Example("q", TEXT, "")).text],
                                    labels)[0]
    out = response.json()
    assert out["label"] == expected.label and out["label"] in labels
    assert set(out["scores"]) == set(labels)
    for label, score in expected.scores.items():
        assert out["scores"][label] == pytest.approx(score, abs=1e-4)


def test_run_info_names_its_adapter_and_labels(cls_server, cls_run):
    with cls_server.client() as c:
        info = c.get("/info").json()
    assert info["default_adapter"] == cls_run.name and info["adapters"] == [cls_run.name]
    assert info["task"]["task"] == "classification" and len(info["task"]["labels"]) >= 2


def test_predict_and_wrong_task_route(cls_server):
    response = cls_server.post("/predict", {"prompt": f"###Sentence:{TEXT}###Class:", "max_new_tokens": 12})
    assert response.status_code == 200 and "###" not in response.json()["prediction"]
    wrong = cls_server.post("/summarize", {"dialogue": DIALOGUE})
    assert wrong.status_code == 404 and "needs a fine-tuned summarization run" in wrong.json()["error"]


def test_summarize_matches_evaluation(sum_server, sum_run):
    from tunebench.data import Example
    from tunebench.evaluate.generation import generate

    response = sum_server.post("/summarize", {"dialogue": DIALOGUE, "max_new_tokens": 20})
    assert response.status_code == 200, response.text
    loaded, builder, _ = evaluation_setup(sum_run)
    prompt = builder.finetune(Example("q", DIALOGUE, "")).text
    expected = generate(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=20, stop=builder.stop_strings)[0]
    assert response.json()["summary"] == expected.text.strip()
    assert sum_server.post("/classify", {"text": TEXT}).status_code == 404


def test_task_routes_need_a_run(naive):
    response = naive.post("/classify", {"text": TEXT})
    assert response.status_code == 404 and "tunebench serve --run DIR" in response.json()["error"]
