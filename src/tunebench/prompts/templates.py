"""Prompt templates: the defaults (the original study's structure, our wording) and custom ones from a study.

Placeholders are `{name}`: the task's input field (`{text}` or `{dialogue}`; the generation task's are its
data.inputs), `{labels}` (classification: the class names, comma-separated), `{examples}` (few-shot: the
solved examples) and, in the fine-tuning format, the target field (`{label}`, `{summary}` or data.target),
which must end the template: the text before it is the inference twin. Substitution is a single pass, so
braces inside the data (JSON) are never read as placeholders.

The generation task's default templates are built from its field names and `prompt.instruction` the same way
as the two fixed tasks' (`generation_templates`): fields in triple backticks, the answer after `<Target>:`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunebench.data.records import fields_of
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


def title(name: str) -> str:
    """A field name as a prompt label: `due_date` -> `Due date`."""
    words = name.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def generation_templates(inputs: tuple[str, ...], target: str, instruction: str | None) -> dict[str, str]:
    """The generation task's default zero-shot, few-shot, shot and fine-tuning templates for its fields."""
    instruction = instruction or f"Write the {title(target).lower()} for the {', '.join(inputs)} below."
    block = "\n".join(f"{title(name)}: ```{{{name}}}```" for name in inputs)
    reply = f"Reply with the {title(target).lower()} only"
    return {
        "zero_shot": f"{instruction}\n{reply}.\n\n{block}\n{title(target)}:",
        "few_shot": f"{instruction}\n{reply}. Solved examples come first.\n\n{{examples}}\n\n{block}\n"
                    f"{title(target)}:",
        "shot": f"{block}\n{title(target)}: {{{target}}}",
        "finetune": "".join(f"###{title(name)}:{{{name}}}" for name in inputs) + f"###{title(target)}:{{{target}}}",
    }


@dataclass(frozen=True)
class Templates:
    task: str
    zero_shot: str
    few_shot: str
    finetune_prompt: str  # the fine-tuning format up to its target: what inference sees
    shot: str
    input_fields: tuple[str, ...] = ()  # the first is the one the context guard cuts
    target_field: str = ""

    @property
    def input_field(self) -> str:
        return self.input_fields[0]

    @classmethod
    def from_config(cls, cfg: PromptConfig, task: str, inputs: tuple[str, ...] | None = None,
                    target: str | None = None) -> Templates:
        """`inputs` / `target`: the generation task's fields (data.inputs, data.target)."""
        input_fields, target_field = fields_of(task, list(inputs) if inputs else None, target)
        labels = ("labels",) if task == "classification" else ()
        if task == "generation":
            defaults = generation_templates(input_fields, target_field, cfg.instruction)
        else:
            defaults = {"zero_shot": ZERO_SHOT[task], "few_shot": FEW_SHOT[task], "shot": SHOT[task],
                        "finetune": FINETUNE[task]}
        zero = checked("zero_shot", cfg.zero_shot or defaults["zero_shot"], required=input_fields, optional=labels)
        few = checked("few_shot", cfg.few_shot or defaults["few_shot"], required=(*input_fields, "examples"),
                      optional=labels)
        finetune = checked("finetune", cfg.finetune or defaults["finetune"], required=(*input_fields, target_field))
        prompt, _, suffix = finetune.rpartition(f"{{{target_field}}}")
        if suffix.strip():
            raise UserError(f"prompt.finetune: the template must end with {{{target_field}}} (found {suffix!r} "
                            "after it)", f"move {{{target_field}}} to the end, e.g. {defaults['finetune']!r}")
        return cls(task, zero, few, prompt, defaults["shot"], input_fields, target_field)


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
