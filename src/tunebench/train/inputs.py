"""From a cell's data to what the Trainer consumes: datasets, batch samplers and collators.

Causal and seq2seq models learn the fine-tuning prompt format (PromptBuilder.finetune_pair: the prompt, then
the label or summary); encoder classifiers read the raw text and predict a class index (label order = the
sorted label set of the training split, saved as the model's id2label). Validation is always batched in
padded rows, without cross-example attention whatever the training packing, so every recipe is scored alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError
from tunebench.models.loading import ModelSource
from tunebench.train.batching import PAD_MULTIPLE, FixedBatches, batch_sampler, collator_for
from tunebench.train.features import Encoded, concat_rows, encode_causal, encode_classifier, encode_seq2seq
from tunebench.train.recipes import Plan

EVAL_ROWS = 16
Pairs = list[tuple[str, str]]  # (input, target): (prompt, completion) or (text, label)


@dataclass
class Examples:
    train: Pairs
    validation: Pairs
    labels: list[str] | None
    data_hash: str | None = None


@dataclass
class TrainInputs:
    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    train_sampler: FixedBatches
    eval_sampler: FixedBatches | None
    collator: Any
    eval_collator: Any
    labels: list[str] | None
    n_train: int
    n_validation: int
    truncated: int


def load_examples(cell: CellConfig, tokenizer: Any, source: ModelSource) -> Examples:
    from tunebench.data import load_task_data

    data = load_task_data(cell.data, tokenizer)
    if source.kind == "encoder":
        if cell.data.task != "classification":
            raise UserError(f"model '{cell.model.name}' is an encoder classifier; it cannot do {cell.data.task}",
                            "use an encoder for classification only, or a causal / seq2seq model")
        examples = Examples([(ex.input, ex.target) for ex in data.train],
                            [(ex.input, ex.target) for ex in data.validation], data.labels, data.data_hash)
    else:
        from tunebench.prompts import PromptBuilder

        # The builder refuses labels holding the template's delimiter ("###"), where generation would stop,
        # and applies prompt.context_policy to over-long inputs (truncate them, or leave them out).
        builder = PromptBuilder.for_cell(cell, tokenizer, data, source)
        examples = Examples(builder.training_pairs(data.train), builder.training_pairs(data.validation),
                            data.labels, data.data_hash)
    if not examples.train:
        raise UserError(f"data.source {cell.data.source!r}: no training examples left ({len(data.train)} after "
                        f"sampling, {len(examples.train)} that fit the context with prompt.context_policy = "
                        f"{cell.prompt.context_policy!r})",
                        "raise data.train_fraction / data.train_count, or use prompt.context_policy: truncate")
    return examples


def encode(kind: str, tokenizer: Any, pairs: Pairs, plan: Plan, labels: list[str] | None, *,
           max_len: int) -> Encoded:
    if kind == "causal":
        return encode_causal(tokenizer, pairs, loss_on=plan.loss_on, max_len=max_len)
    if kind == "seq2seq":
        return encode_seq2seq(tokenizer, pairs, max_len=max_len)
    index = {label: i for i, label in enumerate(labels or [])}
    unknown = sorted({target for _, target in pairs if target not in index})
    if unknown:
        raise UserError(f"labels {unknown} are not in the training label set {labels}",
                        "check data.columns and the label values of every split")
    return encode_classifier(tokenizer, [text for text, _ in pairs], [index[t] for _, t in pairs], max_len=max_len)


def build_inputs(kind: str, tokenizer: Any, examples: Examples, plan: Plan, *, context: int,
                 seed: int) -> TrainInputs:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Concatenated rows may split an example across rows, so an example is only limited by the context.
    example_limit = context if plan.packing == "concat" else plan.max_seq_len
    train = encode(kind, tokenizer, examples.train, plan, examples.labels, max_len=example_limit)
    if plan.packing == "concat":
        train = concat_rows(train, plan.max_seq_len, seed)
    validation = encode(kind, tokenizer, examples.validation, plan, examples.labels, max_len=plan.max_seq_len)
    # Padded rows of similar lengths: contamination-free whatever the training packing, cheap on any device.
    eval_packing = "length_grouped"
    eval_tokens = max([plan.tokens_per_batch or 0, plan.max_seq_len, *validation.lengths])
    multiple = 1 if plan.attention_mask else PAD_MULTIPLE
    return TrainInputs(
        train=train.features, validation=validation.features,
        train_sampler=batch_sampler(plan.packing, train.lengths, batch_size=plan.batch_size,
                                    tokens=plan.tokens_per_batch, seed=seed, multiple=multiple),
        eval_sampler=batch_sampler(eval_packing, validation.lengths, batch_size=EVAL_ROWS,
                                   tokens=eval_tokens, seed=seed, shuffle=False) if validation.features else None,
        collator=collator_for(plan.packing, pad_id, kind, plan.attention_mask),
        eval_collator=collator_for(eval_packing, pad_id, kind),
        labels=examples.labels, n_train=len(examples.train), n_validation=len(examples.validation),
        truncated=train.truncated,
    )
