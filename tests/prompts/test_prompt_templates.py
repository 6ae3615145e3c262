"""Prompt templates: the original study's structure, few-shot selection, the fine-tuning format, custom
templates and their validation, and chat templates for every kind of preset."""

from __future__ import annotations

import re

import pytest

from tunebench.config.schema import CellConfig, DataConfig, ModelConfig, PromptConfig
from tunebench.data import Example, load_task_data
from tunebench.errors import UserError
from tunebench.models.loading import ModelSource, resolve
from tunebench.models.presets import PRESETS
from tunebench.prompts import PromptBuilder

CLS = load_task_data(DataConfig(source="builtin:classification"))
SUM = load_task_data(DataConfig(source="builtin:summarization", task="summarization"))


def builder(tokenizer, data=CLS, chat: bool = False, context: int = 4096, **prompt) -> PromptBuilder:
    return PromptBuilder(PromptConfig(**prompt), data.task, tokenizer, labels=data.labels, train_examples=data.train,
                         use_chat_template=chat, context_length=context)


@pytest.fixture(scope="module")
def plain_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tok.chat_template = None
    return tok


def test_zero_shot_classification_structure(tiny_tokenizer):
    ex = CLS.test[0]
    prompt = builder(tiny_tokenizer).zero_shot(ex)
    assert ", ".join(CLS.labels) in prompt.text and "exactly one" in prompt.text
    assert f"```{ex.input}```" in prompt.text and prompt.text.endswith("Class:")
    assert prompt.n_tokens == len(tiny_tokenizer(prompt.text)["input_ids"]) and not prompt.truncated


def test_zero_shot_summarization_structure(tiny_tokenizer):
    ex = SUM.test[0]
    prompt = builder(tiny_tokenizer, SUM).zero_shot(ex)
    assert f"```{ex.input}```" in prompt.text and prompt.text.endswith("Summary:") and "{" not in prompt.text


def test_few_shot_one_example_per_class_deterministic_never_the_evaluated_one(tiny_tokenizer):
    b = builder(tiny_tokenizer)
    for ex in (CLS.test[0], CLS.train[0], CLS.train[5]):
        text = b.few_shot(ex).text
        answers = re.findall(r"^Class: (\w+)$", text, flags=re.MULTILINE)
        assert sorted(answers) == CLS.labels  # one per class, even when the evaluated example is a candidate
        assert text.count(ex.input) == 1 and text.endswith(f"```{ex.input}```\nClass:")
    assert b.few_shot(CLS.test[3]).text == builder(tiny_tokenizer).few_shot(CLS.test[3]).text
    shots = b.shots_for(CLS.train[0])
    assert CLS.train[0] not in shots and {s.id for s in shots} <= {ex.id for ex in CLS.train}


def test_few_shot_summarization_uses_a_fixed_number(tiny_tokenizer):
    text = builder(tiny_tokenizer, SUM).few_shot(SUM.test[1]).text
    assert text.count("Summary:") == 3 + 1
    assert builder(tiny_tokenizer, SUM, few_shot_examples=1).few_shot(SUM.test[1]).text.count("Summary:") == 2


def test_finetune_format_and_its_inference_twin(tiny_tokenizer):
    ex = CLS.train[0]
    b = builder(tiny_tokenizer, chat=True)
    assert b.finetune(ex).text == f"###Sentence:{ex.input}###Class:"  # never the chat template
    assert b.finetune_pair(ex) == (f"###Sentence:{ex.input}###Class:", ex.target)
    assert b.stop_strings == ["###"] and b.stops_for("qlora") == ["###"] and b.stops_for("zero_shot") == []
    s = SUM.train[0]
    assert builder(tiny_tokenizer, SUM).finetune_pair(s) == (f"###Dialogue:{s.input}###Summary:", s.target)
    assert b.for_method("full", ex).text == b.finetune(ex).text
    assert b.for_method("few_shot", ex).text == b.few_shot(ex).text


def test_custom_templates(tiny_tokenizer):
    b = builder(tiny_tokenizer, zero_shot="Topic of <{text}> among [{labels}]?",
                finetune="Post: {text}\nTopic: {label}\n", few_shot="{examples}\n---\n{text} =>")
    ex = Example("x", "a post with {labels} and {text} inside", "space")
    assert b.zero_shot(ex).text == f"Topic of <{ex.input}> among [{', '.join(CLS.labels)}]?"
    assert b.finetune_pair(ex) == (f"Post: {ex.input}\nTopic: ", "space") and b.stop_strings == []
    assert b.few_shot(ex).text.endswith(f"---\n{ex.input} =>")


@pytest.mark.parametrize(("fields", "message"), [
    ({"zero_shot": "Pick one of {labels}"}, "prompt.zero_shot: the template has no {text} placeholder"),
    ({"few_shot": "{text} Class:"}, "prompt.few_shot: the template has no {examples} placeholder"),
    ({"finetune": "###Class:{label}"}, "prompt.finetune: the template has no {text} placeholder"),
    ({"finetune": "{label}: {text}"}, "prompt.finetune: the template must end with {label}"),
    ({"zero_shot": "{txt} Class:"}, "unknown placeholder {txt}"),
])
def test_bad_custom_templates_are_user_errors(tiny_tokenizer, fields, message):
    with pytest.raises(UserError, match=re.escape(message)):
        builder(tiny_tokenizer, **fields)


def test_summarization_templates_need_dialogue(tiny_tokenizer):
    with pytest.raises(UserError, match=re.escape("unknown placeholder {text}")) as err:
        builder(tiny_tokenizer, SUM, zero_shot="Summarize {text}")
    assert err.value.fix == "placeholders here: {dialogue}"
    with pytest.raises(UserError) as err:
        builder(tiny_tokenizer, zero_shot="{txt} {labels}")
    assert err.value.fix == "did you mean {text}? placeholders here: {text}, {labels}"


def test_label_with_field_separator_is_rejected_for_finetuning(tiny_tokenizer):
    b = PromptBuilder(PromptConfig(), "classification", tiny_tokenizer, labels=["sci###space", "autos"],
                      train_examples=[], use_chat_template=False, context_length=512)
    ex = Example("1", "rockets", "sci###space")
    assert b.zero_shot(ex).text.endswith("Class:")  # prompting is fine
    with pytest.raises(UserError, match="contains '###'"):
        b.finetune(ex)
    with pytest.raises(UserError, match="contains '###'"):
        b.finetune_pair(ex)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_chat_template_follows_the_preset(tiny_tokenizer, plain_tokenizer, preset):
    p = PRESETS[preset]
    source = ModelSource(p.name, p.hf_id, p, p.kind, False)
    cell = CellConfig(model=ModelConfig(name=preset))
    ex = CLS.test[0]
    with_template = PromptBuilder.for_cell(cell, tiny_tokenizer, CLS, source)
    assert with_template.use_chat_template is p.instruct and with_template.context_length == p.context_length
    text = with_template.zero_shot(ex).text
    assert text.startswith("<|im_start|>user\n") is p.instruct and "Class:" in text
    assert with_template.finetune(ex).text.startswith("###Sentence:")
    assert not PromptBuilder.for_cell(cell, plain_tokenizer, CLS, source).use_chat_template
    forced_off = cell.model_copy(update={"prompt": PromptConfig(chat_template=False)})
    assert not PromptBuilder.for_cell(forced_off, tiny_tokenizer, CLS, source).use_chat_template


def test_chat_template_forced_on_without_one_is_a_user_error(plain_tokenizer):
    with pytest.raises(UserError, match="has no chat template"):
        builder(plain_tokenizer, chat=True)


def test_local_model_context_from_its_config(tiny_tokenizer, tiny_llama_dir):
    cell = CellConfig(model=ModelConfig(name=str(tiny_llama_dir)))
    b = PromptBuilder.for_cell(cell, tiny_tokenizer, CLS, resolve(cell.model))
    assert b.context_length == 512 and not b.use_chat_template  # no preset: not known to be instruct
