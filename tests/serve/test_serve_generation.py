"""A fine-tuned generation run's /task route: its input fields by name in, the same text as evaluation out."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import make_adapter, start

PASSAGE = "The shop on Main Street opens at 9 am and closes at 6 pm."
QUESTION = "When does the shop open?"


@pytest.fixture(scope="module")
def gen_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """A two-input generation LoRA run laid out as training writes it (config + PEFT adapter)."""
    from tunebench.config.schema import CellConfig
    from tunebench.rundir import RunDir

    cell = CellConfig.model_validate({"model": {"name": str(tiny_llama_dir)}, "method": "lora",
                                      "data": {"source": "qa.jsonl", "task": "generation",
                                               "inputs": ["passage", "question"], "target": "answer"},
                                      "eval": {"max_new_tokens": 10, "stop": ["\n"]}})
    run = RunDir(tmp_path_factory.mktemp("runs") / "gen-lora")
    run.write_config(cell)
    make_adapter(tiny_llama_dir, run.adapter, 5, ["q_proj", "v_proj"])
    return run.path


@pytest.fixture(scope="module")
def gen_server(tiny_llama_dir, gen_run):
    background, live = start(tiny_llama_dir, run=gen_run)
    yield live
    background.stop()


def test_task_matches_evaluation(gen_server, gen_run):
    from tunebench.data import Example
    from tunebench.data.records import data_fields
    from tunebench.evaluate.generation import generate
    from tunebench.evaluate.loading import load_for_eval
    from tunebench.prompts import PromptBuilder, context_length_of
    from tunebench.rundir import RunDir

    response = gen_server.post("/task", {"inputs": {"passage": PASSAGE, "question": QUESTION}})
    assert response.status_code == 200, response.text
    run = RunDir(gen_run)
    cell = run.read_config()
    loaded = load_for_eval(cell, run)
    builder = PromptBuilder(cell.prompt, "generation", loaded.tokenizer, labels=None, train_examples=[],
                            use_chat_template=False, fields=data_fields(cell.data),
                            context_length=context_length_of(loaded.source, cell.model, loaded.tokenizer))
    prompt = builder.finetune(Example("q", PASSAGE, "", (("question", QUESTION),))).text
    assert prompt == f"###Passage:{PASSAGE}###Question:{QUESTION}###Answer:"
    stops = [*builder.stops_for("lora"), *cell.eval.stop]
    expected = generate(loaded.model, loaded.tokenizer, [prompt], max_new_tokens=10, stop=stops)[0]
    out = response.json()
    assert out["output"] == expected.text.strip() and out["target"] == "answer"
    assert out["finish_reason"] in ("eos_token", "stop_sequence", "length")


def test_task_names_the_missing_or_unknown_field(gen_server):
    missing = gen_server.post("/task", {"inputs": {"passage": PASSAGE}})
    assert missing.status_code == 422
    assert "missing question; this run's input fields are passage, question" in missing.json()["error"]
    unknown = gen_server.post("/task", {"inputs": {"passage": PASSAGE, "question": QUESTION, "extra": "x"}})
    assert unknown.status_code == 422 and "unknown extra" in unknown.json()["error"]
    assert gen_server.post("/summarize", {"dialogue": "A: hi"}).status_code == 404
