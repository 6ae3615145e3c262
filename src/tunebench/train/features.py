"""Examples to token ids and labels, for each kind of model.

Causal LM: prompt tokens, then completion tokens, then the EOS token id appended here (the prompt builder's
completion carries no EOS). Labels copy the completion and its EOS (`loss_on: completion`) or every token
(`loss_on: full`); untrained positions are -100. Labels are built from positions, never by masking pad ids:
the embedded model's pad token *is* its EOS, and masking pads would hide the EOS the model must learn to emit.
The first label of every example is -100: nothing precedes it inside the example, and in a packed row the
token before it belongs to another example.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tunebench.errors import UserError

IGNORE = -100


@dataclass
class Encoded:
    features: list[dict[str, Any]]
    lengths: list[int] = field(default_factory=list)  # tokens an example costs in a batch
    truncated: int = 0                                 # examples whose prompt was cut to fit


def eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of '{tokenizer.name_or_path}' has no EOS token, so a fine-tuned model "
                        "could never learn to stop", "use a model whose tokenizer defines eos_token")
    return int(tokenizer.eos_token_id)


def encode_causal(tokenizer: Any, pairs: list[tuple[str, str]], *, loss_on: str, max_len: int) -> Encoded:
    eos = eos_id(tokenizer)
    out = Encoded([])
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    for prompt, completion in zip(prompts, completions, strict=True):
        completion = [*completion[: max_len - 2], eos]
        room = max_len - len(completion)
        if len(prompt) > room:
            # Keep the end of the prompt: it holds the answer marker ("###Class:") the completion follows.
            prompt = prompt[len(prompt) - room:]
            out.truncated += 1
        input_ids = [*prompt, *completion]
        labels = [IGNORE] * len(prompt) + completion if loss_on == "completion" else list(input_ids)
        labels[0] = IGNORE
        out.features.append({"input_ids": input_ids, "labels": labels})
        out.lengths.append(len(input_ids))
    return out


def encode_seq2seq(tokenizer: Any, pairs: list[tuple[str, str]], *, max_len: int) -> Encoded:
    eos = eos_id(tokenizer)
    out = Encoded([])
    sources = tokenizer([p for p, _ in pairs], truncation=True, max_length=max_len)["input_ids"]
    targets = tokenizer([c for _, c in pairs], add_special_tokens=True)["input_ids"]
    for source, target in zip(sources, targets, strict=True):
        target = list(target)
        if not target or target[-1] != eos:
            target.append(eos)
        target = [*target[: max_len - 1], eos] if len(target) > max_len else target
        out.features.append({"input_ids": list(source), "labels": target})
        out.lengths.append(len(source) + len(target))
    return out


def encode_classifier(tokenizer: Any, texts: list[str], label_ids: list[int], *, max_len: int) -> Encoded:
    out = Encoded([])
    encoded = tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
    for ids, label in zip(encoded, label_ids, strict=True):
        out.features.append({"input_ids": list(ids), "labels": label})
        out.lengths.append(len(ids))
    return out


def concat_rows(encoded: Encoded, row_len: int, seed: int) -> Encoded:
    """The original study's packing: examples end to end in one stream, cut into rows of `row_len` tokens.

    Attention runs across the examples sharing a row and an example may straddle two rows, as in the
    original; the last row is shorter and gets padded in its batch.
    """
    order = list(range(len(encoded.features)))
    random.Random(seed).shuffle(order)
    ids: list[int] = []
    labels: list[int] = []
    for i in order:
        ids += encoded.features[i]["input_ids"]
        labels += encoded.features[i]["labels"]
    rows = [{"input_ids": ids[s: s + row_len], "labels": labels[s: s + row_len]} for s in range(0, len(ids), row_len)]
    return Encoded(rows, [len(r["input_ids"]) for r in rows], encoded.truncated)
