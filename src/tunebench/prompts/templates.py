"""Prompt templates: the defaults (the original study's structure, our wording) and custom ones from a study.

Placeholders are `{name}`: the task's input field (`{text}` or `{dialogue}`), `{labels}` (classification:
the class names, comma-separated), `{examples}` (few-shot: the solved examples) and, in the fine-tuning
format, the target field (`{label}` or `{summary}`), which must end the template: the text before it is the
inference twin. Substitution is a single pass, so braces inside the data are never read as placeholders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunebench.data.records import task_fields
from tunebench.errors import UserError, closest

if TYPE_CHECKING:
    from tunebench.config.schema import PromptConfig

PLACEHOLDER = re.compile(r"\{(\w+)\}")

ZERO_SHOT = {
    "classification": (
        "Classify the text below into exactly one of these classes: {labels}.\n"
        "Reply with the name of one class and nothing else.\n\n```{text}```\n\nClass:"
    ),
    "summarization": (
        "Summarize the conversation below in one or two sentences, written in the third person.\n\n"
        "```{dialogue}```\n\nSummary:"
    ),
}
FEW_SHOT = {
    "classification": (
        "Classify each text into exactly one of these classes: {labels}.\n"
        "Reply with the name of one class and nothing else. Solved examples come first.\n\n"
        "{examples}\n\n```{text}```\nClass:"
    ),
    "summarization": (
        "Summarize each conversation in one or two sentences, written in the third person. "
        "Solved examples come first.\n\n{examples}\n\n```{dialogue}```\nSummary:"
    ),
}
# One solved example inside {examples}; examples are separated by a blank line.
SHOT = {"classification": "```{text}```\nClass: {label}", "summarization": "```{dialogue}```\nSummary: {summary}"}
FINETUNE = {
    "classification": "###Sentence:{text}###Class:{label}",
    "summarization": "###Dialogue:{dialogue}###Summary:{summary}",
}
SHOT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Templates:
    task: str
    zero_shot: str
    few_shot: str
    finetune_prompt: str  # the fine-tuning format up to its target: what inference sees
    shot: str

    @property
    def input_field(self) -> str:
        return task_fields(self.task)[0]

    @property
    def target_field(self) -> str:
        return task_fields(self.task)[1]

    @classmethod
    def from_config(cls, cfg: PromptConfig, task: str) -> Templates:
        input_field, target_field = task_fields(task)
        labels = ("labels",) if task == "classification" else ()
        zero = checked("zero_shot", cfg.zero_shot or ZERO_SHOT[task], required=(input_field,), optional=labels)
        few = checked("few_shot", cfg.few_shot or FEW_SHOT[task], required=(input_field, "examples"),
                      optional=labels)
        finetune = checked("finetune", cfg.finetune or FINETUNE[task], required=(input_field, target_field))
        prompt, _, suffix = finetune.rpartition(f"{{{target_field}}}")
        if suffix.strip():
            raise UserError(f"prompt.finetune: the template must end with {{{target_field}}} (found {suffix!r} "
                            "after it)", f"move {{{target_field}}} to the end, e.g. {FINETUNE[task]!r}")
        return cls(task, zero, few, prompt, SHOT[task])


def checked(name: str, template: str, *, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> str:
    """`template` if its placeholders are right for prompt.<name>; a UserError naming what is wrong."""
    allowed = [*required, *optional]
    listed = ", ".join(f"{{{f}}}" for f in allowed)
    found = PLACEHOLDER.findall(template)
    for field in found:
        if field not in allowed:
            guess = closest(field, allowed)
            raise UserError(f"prompt.{name}: unknown placeholder {{{field}}} in the template",
                            (f"did you mean {{{guess}}}? " if guess else "") + f"placeholders here: {listed}")
    for field in required:
        if field not in found:
            raise UserError(f"prompt.{name}: the template has no {{{field}}} placeholder",
                            f"add {{{field}}} where it belongs; placeholders here: {listed}")
    return template


def render(template: str, **values: str) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)
