"""The generation task's prompts: default formats built from its fields and prompt.instruction, custom
templates over several input fields, stop sequences, the context guard on the first input, and the built-in
extraction sample regenerating byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.config.schema import PromptConfig
from tunebench.data.records import Example
from tunebench.errors import UserError
from tunebench.prompts import PromptBuilder

ROOT = Path(__file__).resolve().parents[2]
QA = (("passage", "question"), "answer")
TRAIN = [Example(f"t{i}", f"The museum opens at {i} am.", f"{i} am", (("question", "When does it open?"),))
         for i in range(1, 6)]
EX = Example("q", "The bakery closes at 5 pm.", "5 pm", (("question", "When does it close?"),))


def builder(tokenizer, fields=QA, context=512, **prompt):
    return PromptBuilder(PromptConfig(**prompt), "generation", tokenizer, labels=None, train_examples=TRAIN,
                         use_chat_template=False, context_length=context, fields=fields)


def test_default_formats_are_built_from_the_fields(tiny_tokenizer):
    b = builder(tiny_tokenizer, instruction="Answer the question from the passage.", few_shot_examples=2)
    zero = b.zero_shot(EX).text
    assert zero == ("Answer the question from the passage.\nReply with the answer only.\n\n"
                    "Passage: ```The bakery closes at 5 pm.```\nQuestion: ```When does it close?```\nAnswer:")
    few = b.few_shot(EX).text
    assert few.count("Answer: ") == 2 and few.endswith("Question: ```When does it close?```\nAnswer:")
    assert b.finetune(EX).text == "###Passage:The bakery closes at 5 pm.###Question:When does it close?###Answer:"
    assert b.finetune_pair(TRAIN[0]) == ("###Passage:The museum opens at 1 am.###Question:When does it open?"
                                         "###Answer:", "1 am")
    # a prompted answer ends where the next solved example would begin; a fine-tuned one at the separator
    assert b.stops_for("few_shot") == b.stops_for("zero_shot") == ["\n\nPassage: ```"]
    assert b.stops_for("lora") == ["###"]
    default = builder(tiny_tokenizer, fields=(("message",), "fields")).zero_shot(
        Example("m", "hi", "{}")).text
    assert default.startswith("Write the fields for the message below.\n")


def test_custom_templates_and_their_placeholders(tiny_tokenizer):
    b = builder(tiny_tokenizer, zero_shot="Q: {question}\nContext: {passage}\nA:",
                finetune="<p>{passage}</p><q>{question}</q>{answer}")
    assert b.zero_shot(EX).text == "Q: When does it close?\nContext: The bakery closes at 5 pm.\nA:"
    assert b.finetune(EX).text == "<p>The bakery closes at 5 pm.</p><q>When does it close?</q>"
    assert b.stops_for("lora") == []  # no ### in a custom format: EOS (and eval.stop) end the answer
    with pytest.raises(UserError, match=r"prompt.zero_shot: the template has no \{question\} placeholder"):
        builder(tiny_tokenizer, zero_shot="Context: {passage}\nA:")
    with pytest.raises(UserError, match=r"unknown placeholder \{questoin\}") as err:
        builder(tiny_tokenizer, zero_shot="{passage} {questoin}")
    assert "did you mean {question}?" in err.value.fix


def test_a_target_holding_the_separator_is_refused_naming_the_example(tiny_tokenizer):
    bad = Example("bad-7", "text", "a ### b", (("question", "q"),))
    with pytest.raises(UserError, match="example bad-7: its answer contains '###'"):
        builder(tiny_tokenizer).finetune_pair(bad)


def test_the_context_guard_cuts_the_first_input(tiny_tokenizer):
    long = Example("long", "very long passage " * 200, "x", (("question", "When?"),))
    prompt = builder(tiny_tokenizer, context=256, answer_tokens=32).zero_shot(long)
    assert prompt.truncated and prompt.n_tokens <= 256 - 32 and prompt.text.endswith("Question: ```When?```\nAnswer:")


def test_builtin_extraction_sample_regenerates_identically():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_extraction_data.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    from tunebench.config.schema import DataConfig
    from tunebench.data import load_task_data

    data = load_task_data(DataConfig(source="builtin:extraction", task="generation"))
    assert (len(data.train), len(data.validation), len(data.test)) == (90, 10, 50)
    assert data.test[0].target.startswith('{"name": ')
