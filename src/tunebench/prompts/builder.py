"""Turning examples into prompts for each method, within the model's context window.

    zero_shot / few_shot   the templates, wrapped in the tokenizer's chat template for instruct models
    finetune               the compact `###Sentence:{text}###Class:` format (never a chat template)
    finetune_pair          (prompt, completion) for training; the trainer appends EOS itself

The context guard: a prompt longer than the context minus `prompt.answer_tokens` is either truncated (every
input in it, the evaluated one and each few-shot example's, is capped at the largest common number of tokens
that fits) or skipped, by `prompt.context_policy`. Both are counted per method (`guard_counts`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunebench.data.records import Example
from tunebench.errors import UserError
from tunebench.prompts.templates import PLACEHOLDER, SHOT_SEPARATOR, Templates, render

if TYPE_CHECKING:
    from tunebench.config.schema import CellConfig, ModelConfig, PromptConfig
    from tunebench.data.records import TaskData
    from tunebench.models.loading import ModelSource

FINETUNE_METHODS = ("lora", "qlora", "full")
DEFAULT_DIALOGUE_SHOTS = 3
FALLBACK_CONTEXT = 2048
FIELD_SEPARATOR = "###"


@dataclass
class Prompt:
    example_id: str
    text: str  # the full prompt (chat template applied when used); "" when skipped
    n_tokens: int  # tokens of `text`; when skipped, of the prompt that did not fit
    truncated: bool  # the input (or few-shot example inputs) cut to fit the context
    skipped: bool  # context_policy "skip" and it did not fit


class Cutter:
    """One text, tokenized once, cut to any number of tokens at a token boundary."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
        self.ids = encoded["input_ids"]
        self.offsets = encoded.get("offset_mapping")

    def __len__(self) -> int:
        return len(self.ids)

    def cut(self, n_tokens: int) -> str:
        if n_tokens >= len(self.ids):
            return self.text
        if self.offsets is not None:
            return self.text[:self.offsets[n_tokens - 1][1]]
        return self.tokenizer.decode(self.ids[:n_tokens])


def shot_order(ex: Example) -> str:
    """A fixed order of training examples for picking few-shot examples: no seed, no dependence on file order."""
    return hashlib.sha256(f"{ex.id}\x00{ex.input}".encode()).hexdigest()


class PromptBuilder:
    def __init__(self, cfg: PromptConfig, task: str, tokenizer: Any, *, labels: list[str] | None,
                 train_examples: list[Example], use_chat_template: bool, context_length: int,
                 fields: tuple[tuple[str, ...], str] | None = None) -> None:
        """`fields`: the generation task's (input fields, target field), from `data_fields(cell.data)`."""
        if task == "classification" and not labels:
            raise ValueError("classification prompts need the label set (TaskData.labels)")
        self.cfg = cfg
        self.task = task
        self.tokenizer = tokenizer
        self.labels = list(labels or [])
        self.templates = Templates.from_config(cfg, task, *(fields or (None, None)))
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise UserError("prompt.chat_template is true, but the model's tokenizer has no chat template",
                            "set prompt.chat_template: false, or leave it unset to follow the model preset")
        self.use_chat_template = use_chat_template
        self.context_length = context_length
        if context_length - cfg.answer_tokens < 1:
            raise UserError(f"prompt.answer_tokens = {cfg.answer_tokens} leaves no room for a prompt in the "
                            f"model's context of {context_length} tokens", f"give fewer than {context_length}")
        self.n_shots = cfg.few_shot_examples or (len(self.labels) if task == "classification"
                                                 else DEFAULT_DIALOGUE_SHOTS)
        self.shot_pool = self._shot_pool(train_examples)
        self.stop_strings = [FIELD_SEPARATOR] if FIELD_SEPARATOR in self.templates.finetune_prompt else []
        # A prompted generation answer ends where the next solved example would begin ("\n\nMessage: ```").
        opening = PLACEHOLDER.split(self.templates.shot, maxsplit=1)[0]
        self.prompted_stops = [SHOT_SEPARATOR + opening if opening.strip() else SHOT_SEPARATOR]
        self.counts: dict[str, Counter[str]] = {}

    @classmethod
    def for_cell(cls, cell: CellConfig, tokenizer: Any, data: TaskData, source: ModelSource) -> PromptBuilder:
        from tunebench.data.records import data_fields

        chat = cell.prompt.chat_template
        if chat is None:
            chat = source.instruct and bool(getattr(tokenizer, "chat_template", None))
        return cls(cell.prompt, data.task, tokenizer, labels=data.labels, train_examples=data.train,
                   use_chat_template=chat, context_length=context_length_of(source, cell.model, tokenizer),
                   fields=data_fields(cell.data))

    # ------------------------------------------------------------ the methods

    def zero_shot(self, ex: Example) -> Prompt:
        def compose(inputs: list[str]) -> str:
            return self._wrap(render(self.templates.zero_shot, **self._values(inputs[0], ex)))

        return self._guarded("zero_shot", ex.id, [ex.input], compose, self.budget, chat=self.use_chat_template)

    def few_shot(self, ex: Example) -> Prompt:
        shots = self.shots_for(ex)
        shot_fields = self.templates.input_field, self.templates.target_field

        def compose(inputs: list[str]) -> str:
            examples = SHOT_SEPARATOR.join(
                render(self.templates.shot, **dict(shot.extra),
                       **dict(zip(shot_fields, (text, shot.target), strict=True)))
                for shot, text in zip(shots, inputs[1:], strict=True))
            return self._wrap(render(self.templates.few_shot, **self._values(inputs[0], ex), examples=examples))

        inputs = [ex.input, *(shot.input for shot in shots)]
        return self._guarded("few_shot", ex.id, inputs, compose, self.budget, chat=self.use_chat_template)

    def finetune(self, ex: Example) -> Prompt:
        """The fine-tuning format's inference twin: the prompt up to (not including) the answer."""
        self._check_finetune_labels()
        return self._guarded("finetune", ex.id, [ex.input], self._finetune_compose(ex), self.budget, chat=False)

    def finetune_pair(self, ex: Example) -> tuple[str, str]:
        """(prompt, completion) for training; completion is the label or summary, without EOS.

        One pair always comes back: an over-long input is truncated whatever the policy (`training_pairs`
        honours "skip" by leaving such examples out).
        """
        prompt = self._pair_prompt(ex, "truncate")
        if prompt.skipped:
            raise UserError(f"example {ex.id}: its {self.templates.target_field} alone does not fit the "
                            f"model's context of {self.context_length} tokens",
                            "drop that example, or use a model with a longer context")
        return prompt.text, ex.target

    def training_pairs(self, examples: list[Example]) -> list[tuple[str, str]]:
        """finetune_pair for each example under the context policy: over-long ones truncated or left out."""
        pairs = []
        for ex in examples:
            prompt = self._pair_prompt(ex, self.cfg.context_policy)
            if not prompt.skipped:
                pairs.append((prompt.text, ex.target))
        return pairs

    def for_method(self, method: str, ex: Example) -> Prompt:
        if method == "zero_shot":
            return self.zero_shot(ex)
        if method == "few_shot":
            return self.few_shot(ex)
        if method in FINETUNE_METHODS:
            return self.finetune(ex)
        raise ValueError(f"unknown method {method!r}")

    def stops_for(self, method: str) -> list[str]:
        """Stop strings for generation: the field separator after a fine-tuned answer, the next example's
        opening backticks after a few-shot answer."""
        if method in FINETUNE_METHODS:
            return list(self.stop_strings)
        if self.task == "generation":
            return list(self.prompted_stops)
        return ["```"] if method == "few_shot" else []

    def guard_counts(self, method: str | None = None) -> dict[str, int]:
        """How many prompts were built, truncated and skipped (for one method, or all)."""
        total: Counter[str] = Counter()
        for name, counts in self.counts.items():
            if method is None or name == method:
                total.update(counts)
        return {key: total[key] for key in ("prompts", "truncated", "skipped")}

    # ------------------------------------------------------------ few-shot examples

    def _shot_pool(self, train: list[Example]) -> dict[str, list[Example]]:
        """Candidates per label (one pool for summaries), in a fixed order, with one spare each so that
        leaving out the evaluated example never leaves a class without an example."""
        ordered = sorted(train, key=shot_order)
        if self.task != "classification":
            return {"": ordered[:self.n_shots + 1]}
        per_label = -(-self.n_shots // len(self.labels)) + 1
        pool: dict[str, list[Example]] = {label: [] for label in self.labels}
        for ex in ordered:
            if ex.target in pool and len(pool[ex.target]) < per_label:
                pool[ex.target].append(ex)
        return pool

    def shots_for(self, ex: Example) -> list[Example]:
        """The few-shot examples for `ex`: never `ex` itself; classification goes round the classes."""
        usable = {key: [s for s in pool if s.id != ex.id and s.input != ex.input]
                  for key, pool in self.shot_pool.items()}
        depth = max((len(pool) for pool in usable.values()), default=0)
        chosen = [pool[r] for r in range(depth) for pool in usable.values() if r < len(pool)][:self.n_shots]
        if not chosen:
            raise UserError("few-shot prompts need training examples, and the training split has none usable",
                            "check data.train_split, or use method zero_shot")
        return sorted(chosen, key=shot_order)

    # ------------------------------------------------------------ rendering and the context guard

    @property
    def budget(self) -> int:
        return self.context_length - self.cfg.answer_tokens

    def _values(self, text: str, ex: Example) -> dict[str, str]:
        values = {**dict(ex.extra), self.templates.input_field: text}
        if self.task == "classification":
            values["labels"] = ", ".join(self.labels)
        return values

    def _wrap(self, text: str) -> str:
        if not self.use_chat_template:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def _finetune_compose(self, ex: Example) -> Callable[[list[str]], str]:
        return lambda inputs: render(self.templates.finetune_prompt, **dict(ex.extra),
                                     **{self.templates.input_field: inputs[0]})

    def _pair_prompt(self, ex: Example, policy: str) -> Prompt:
        self._check_finetune_labels()
        if self.task == "generation" and self.stop_strings and FIELD_SEPARATOR in ex.target:
            raise UserError(f"example {ex.id}: its {self.templates.target_field} contains '{FIELD_SEPARATOR}', the "
                            "fine-tuning format's field separator, where generation would stop",
                            f"fix that example in the data, or give prompt.finetune a template without "
                            f"'{FIELD_SEPARATOR}'")
        # Room for the completion and the EOS token the trainer appends.
        budget = self.context_length - self.count_tokens(ex.target, special_tokens=False) - 1
        return self._guarded("finetune_pair", ex.id, [ex.input], self._finetune_compose(ex), budget, chat=False,
                             policy=policy)

    def _check_finetune_labels(self) -> None:
        if not self.stop_strings:
            return
        for label in self.labels:
            if FIELD_SEPARATOR in label:
                raise UserError(f"label {label!r} contains '{FIELD_SEPARATOR}', the fine-tuning format's field "
                                "separator, so a fine-tuned answer could not be read back",
                                f"rename that label in the data, or give prompt.finetune a template without "
                                f"'{FIELD_SEPARATOR}'")

    def count_tokens(self, text: str, *, special_tokens: bool = True) -> int:
        return len(self.tokenizer(text, add_special_tokens=special_tokens)["input_ids"])

    def _guarded(self, method: str, example_id: str, inputs: list[str], compose: Callable[[list[str]], str],
                 budget: int, *, chat: bool, policy: str | None = None) -> Prompt:
        counts = self.counts.setdefault(method, Counter())
        counts["prompts"] += 1
        text = compose(inputs)
        # A chat-templated text carries its own special tokens; a plain prompt gets the tokenizer's (BOS).
        n_tokens = self.count_tokens(text, special_tokens=not chat)
        if n_tokens <= budget:
            return Prompt(example_id, text, n_tokens, truncated=False, skipped=False)
        if (policy or self.cfg.context_policy) == "truncate":
            fitted = self._fit(inputs, compose, budget, chat)
            if fitted is not None:
                counts["truncated"] += 1
                return Prompt(example_id, fitted[0], fitted[1], truncated=True, skipped=False)
        counts["skipped"] += 1
        return Prompt(example_id, "", n_tokens, truncated=False, skipped=True)

    def _fit(self, inputs: list[str], compose: Callable[[list[str]], str], budget: int,
             chat: bool) -> tuple[str, int] | None:
        """The prompt with every input capped at the largest common token count that fits (binary search)."""
        cutters = [Cutter(self.tokenizer, text) for text in inputs]
        low, high, best = 1, max(len(c) for c in cutters), None
        while low <= high:
            cap = (low + high) // 2
            text = compose([c.cut(cap) for c in cutters])
            n_tokens = self.count_tokens(text, special_tokens=not chat)
            if n_tokens <= budget:
                best, low = (text, n_tokens), cap + 1
            else:
                high = cap - 1
        return best


def context_length_of(source: ModelSource, model: ModelConfig, tokenizer: Any) -> int:
    """The model's context window: the preset's, else its config's positions, else the tokenizer's limit."""
    if source.preset is not None:
        return source.preset.context_length
    from tunebench.models.loading import load_config

    config = load_config(source.location, model)
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    # Tokenizers without a limit report a huge sentinel (about 1e30).
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else FALLBACK_CONTEXT
