"""Classification with a generative model: constrained decoding, label log-likelihood, and parsing free text.

Three ways to turn a prompt into a label (`eval.scoring`):

- `constrained` (default): greedy decoding where each step may only continue one of the label token
  sequences (a prefix trie), then EOS. The answer is always a label.
- `loglik`: every label's log-probability after the prompt. The prompt runs once; its KV cache is repeated
  across the labels, which run as one batch. Both the summed and the length-normalised scores are kept.
- `generate`: free greedy generation of a few tokens, then `parse_label` (the original study compared the raw
  text with the label exactly, which is why its zero-shot accuracy was 0%).

Label tokens are the tokens that follow the prompt: the prompt's tail and the label are tokenized jointly
and the tail's tokens removed, so a label that merges with the prompt's last characters is tokenized as the
model would see it. A label may follow the prompt directly or after one space ("Class:" + " sci.med"); both
spellings are allowed, and a label's score is its best spelling. After a prompt that ends in whitespace
only the direct spelling is used.

Contextual calibration ("Calibrate Before Use", Zhao et al. 2021): a small model prompted with a long label
list favours some labels whatever the input (SmolLM2-135M answers the first one, alt.atheism, for most 20
Newsgroups messages). `content_free_prior` measures that bias on the same prompt with a content-free input
("N/A", "", "[MASK]"; probabilities averaged over the three), and the scores are divided by it (log-probabilities
minus the prior's): `loglik` subtracts each label's prior from its score (summed and length-normalised),
`constrained` subtracts, at each trie node, the prior's next-token log-probability before the greedy choice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunebench.evaluate.generation import (
    SharedPrefix,
    cache_argument,
    encode,
    is_seq2seq,
    length_sorted_batches,
    pad_id,
    padded_inputs,
    returned_cache,
)

# Enough characters of the prompt's end to contain its last token, whatever the tokenizer.
TAIL_CHARS = 64
Variant = tuple[str, tuple[int, ...]]  # (label, token ids of one spelling of it)
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # Zhao et al. 2021


@dataclass(frozen=True)
class ClassResult:
    label: str  # always one of the labels
    # Per-label log-probability. loglik: the label's full sequence. constrained: the label's tokens along the
    # greedy path, exact for the chosen label and up to (and including) the token where another label leaves it.
    scores: dict[str, float]
    mean_scores: dict[str, float] | None = None  # loglik only: per-token (length-normalised) log-probability
    n_tokens: int = 0  # tokens decoded (constrained)
    raw: ClassResult | None = None  # loglik calibrated: the uncalibrated result it was made from

    @property
    def label_by_mean(self) -> str | None:
        return max(self.mean_scores, key=self.mean_scores.__getitem__) if self.mean_scores else None


# ---------------------------------------------------------------- label tokens


def continuation_ids(tokenizer: Any, prompt: str, text: str) -> tuple[int, ...]:
    """The token ids of `text` when it follows `prompt`, tokenized jointly with the prompt's tail."""
    tail = prompt[-TAIL_CHARS:]
    head = tokenizer(tail, add_special_tokens=False)["input_ids"]
    joint = tokenizer(tail + text, add_special_tokens=False)["input_ids"]
    if joint[:len(head)] == head:
        return tuple(joint[len(head):])
    # The text merged with the prompt's last token (e.g. the prompt ends in a space): the model reads the
    # prompt's own tokens, so the label is what the text alone tokenizes to.
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def label_variants(tokenizer: Any, prompt: str, labels: Sequence[str], *, seq2seq: bool = False) -> list[Variant]:
    """Every allowed spelling of every label after `prompt`, as token ids (duplicates removed)."""
    if seq2seq:  # the decoder starts fresh: a label is its own tokens
        return [(label, tuple(tokenizer(label, add_special_tokens=False)["input_ids"])) for label in labels]
    spellings = [""] if not prompt or prompt[-1].isspace() else ["", " "]
    seen: set[tuple[int, ...]] = set()
    variants: list[Variant] = []
    for label in labels:
        for space in spellings:
            ids = continuation_ids(tokenizer, prompt, space + label)
            if ids and ids not in seen:
                seen.add(ids)
                variants.append((label, ids))
    return variants


class LabelTrie:
    """The token sequences of the labels as a prefix trie; `allowed` gives the legal next tokens."""

    def __init__(self, variants: Sequence[Variant], end_id: int) -> None:
        self.end_id = end_id
        self.children: dict[tuple[int, ...], set[int]] = {}
        self.complete: dict[tuple[int, ...], str] = {}
        for label, ids in variants:
            for i in range(len(ids)):
                self.children.setdefault(ids[:i], set()).add(ids[i])
            self.complete[ids] = label

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        prefix = tuple(prefix)
        options = set(self.children.get(prefix, ()))
        if prefix in self.complete or not options:  # a finished label (or a finished row) may only end
            options.add(self.end_id)
        return sorted(options)

    def label_of(self, ids: Sequence[int]) -> str | None:
        return self.complete.get(tuple(ids))


# ---------------------------------------------------------------- constrained decoding


def constrained_classify(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str], *,
                         batch_size: int = 16, prior: LabelPrior | None = None,
                         on_progress: Callable[[int], None] | None = None) -> list[ClassResult]:
    """Greedy decoding restricted to the labels' token sequences; always returns a label.

    With a `prior` (content_free_prior), each step picks the allowed token with the best calibrated score
    (log-probability minus the prior's at that trie node); `scores` stay the uncalibrated log-probabilities.
    """
    if not labels:
        raise ValueError("constrained classification needs at least one label")
    encoded = [encode(tokenizer, p) for p in prompts]
    variants = [label_variants(tokenizer, p, labels, seq2seq=is_seq2seq(model)) for p in prompts]
    end_id = tokenizer.eos_token_id
    results: list[ClassResult | None] = [None] * len(prompts)
    prefix = SharedPrefix.of(model, encoded)  # few-shot prompts: the examples run once
    for batch in length_sorted_batches([len(e) for e in encoded], batch_size):
        tries = [LabelTrie(variants[i], end_id) for i in batch]
        rows = constrained_batch(model, tokenizer, [encoded[i] for i in batch], tries, prior, prefix)
        for i, trie, (ids, logprobs) in zip(batch, tries, rows, strict=True):
            results[i] = read_constrained(trie, variants[i], ids, logprobs)
        if on_progress:
            on_progress(len(batch))
    return [r for r in results if r is not None]


def constrained_batch(model: Any, tokenizer: Any, batch: list[list[int]], tries: list[LabelTrie],
                      prior: LabelPrior | None = None, prefix: SharedPrefix | None = None) -> list[Any]:
    """One padded batch of trie-constrained greedy decoding: per row, (generated ids, per-step log-probs)."""
    import torch
    from transformers import LogitsProcessorList

    from tunebench.evaluate.generation import generation_config

    input_ids, mask, extra = padded_inputs(model, batch, pad_id(tokenizer), prefix)
    offset = 1 if is_seq2seq(model) else input_ids.shape[1]

    def allowed(row: int, sequence: Any) -> list[int]:
        return tries[row].allowed(sequence[offset:].tolist())

    longest = max(len(ids) for trie in tries for ids in trie.complete)
    config = generation_config(model, tokenizer, max_new_tokens=longest + 1, do_sample=False, temperature=1.0,
                               top_p=1.0, output_logits=True, return_dict_in_generate=True)
    processors = LogitsProcessorList([SubtractNodePrior(prior.nodes, offset)] if prior else [])
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                             prefix_allowed_tokens_fn=allowed, logits_processor=processors, **extra)
    steps = torch.stack(out.logits, dim=1).float().log_softmax(dim=-1)  # (batch, steps, vocab), unconstrained
    generated = out.sequences[:, offset:]
    return [(generated[row].tolist(), steps[row]) for row in range(len(batch))]


def read_constrained(trie: LabelTrie, variants: Sequence[Variant], ids: list[int], logprobs: Any) -> ClassResult:
    end = ids.index(trie.end_id) if trie.end_id in ids else len(ids)
    label = trie.label_of(ids[:end])
    if label is None:  # cannot happen while the trie constrains every step; fail loudly if it ever does
        raise RuntimeError(f"constrained decoding produced ids {ids[:end]} that spell no label")
    scores: dict[str, float] = {}
    for name, spelling in variants:
        total = 0.0
        for step, token in enumerate(spelling[:len(ids)]):
            total += float(logprobs[step, token])
            if token != ids[step]:
                break
        scores[name] = max(scores.get(name, float("-inf")), total)
    return ClassResult(label, scores, n_tokens=end + 1)


class SubtractNodePrior:
    """A logits processor: at each trie node, subtract the content-free prior's next-token log-probabilities.

    Tokens the prior does not cover are left alone (the trie constraint masks them anyway); rows whose ids
    are no trie node (finished, padded) are unchanged. Out of place: generate keeps the raw logits.
    """

    def __init__(self, nodes: dict[tuple[int, ...], dict[int, float]], offset: int) -> None:
        self.nodes = nodes
        self.offset = offset

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        shift = torch.zeros_like(scores)
        for row in range(input_ids.shape[0]):
            node = self.nodes.get(tuple(input_ids[row, self.offset:].tolist()))
            if node:
                shift[row, list(node)] = torch.tensor(list(node.values()), dtype=scores.dtype, device=scores.device)
        return scores - shift


# ---------------------------------------------------------------- contextual calibration


@dataclass(frozen=True)
class LabelPrior:
    """What the model answers when the input says nothing: log of probabilities averaged over content-free
    prompts. `sums` / `means`: each label's summed / per-token log-probability (best spelling); `nodes`:
    at each node of the label trie, the log-probability of every allowed next token (the end token too)."""

    sums: dict[str, float]
    means: dict[str, float]
    nodes: dict[tuple[int, ...], dict[int, float]]

    def label_probabilities(self) -> dict[str, float]:
        """The prior over the labels (summed scores, normalised to 1): how biased the prompt is."""
        top = max(self.sums.values())
        weights = {label: math.exp(v - top) for label, v in self.sums.items()}
        total = sum(weights.values())
        return {label: w / total for label, w in weights.items()}


def content_free_prior(model: Any, tokenizer: Any, content_free_prompts: Sequence[str], prompts: Sequence[str],
                       labels: Sequence[str]) -> LabelPrior:
    """The label prior on content-free prompts (the task's prompt with a content-free input).

    Label sequence priors use each content-free prompt's own label spellings; the trie-node priors cover
    every spelling that follows any of `prompts` (one label trie for prompts that share their tail).
    """
    if not content_free_prompts:
        raise ValueError("contextual calibration needs at least one content-free prompt")
    seq2seq = is_seq2seq(model)
    spellings = sorted({ids for p in prompts for _, ids in label_variants(tokenizer, p, labels, seq2seq=seq2seq)})
    end_id = tokenizer.eos_token_id
    trie = LabelTrie([("", ids) for ids in spellings], end_id)
    sums: list[dict[str, float]] = []
    means: list[dict[str, float]] = []
    nodes: list[dict[tuple[int, ...], dict[int, float]]] = []
    for cf_prompt in content_free_prompts:
        variants = label_variants(tokenizer, cf_prompt, labels, seq2seq=seq2seq)
        sequences = sorted({*spellings, *(ids for _, ids in variants)})  # usually the same spellings
        steps = dict(zip(sequences, step_logprobs(model, tokenizer, encode(tokenizer, cf_prompt), sequences),
                         strict=True))
        result = label_scores(variants, [summed(steps[ids], ids) for _, ids in variants])
        sums.append(result.scores)
        means.append(result.mean_scores or {})
        nodes.append(node_logprobs(trie, spellings, [steps[ids] for ids in spellings]))
    return LabelPrior(log_mean_exp(sums), log_mean_exp(means), {
        node: log_mean_exp([n[node] for n in nodes]) for node in nodes[0]})


def node_logprobs(trie: LabelTrie, spellings: list[tuple[int, ...]], steps: list[Any]) -> dict[tuple[int, ...],
                                                                                              dict[int, float]]:
    """Per trie node, the log-probabilities of its allowed next tokens, read off the label sequences' steps."""
    nodes: dict[tuple[int, ...], dict[int, float]] = {}
    for ids, rows in zip(spellings, steps, strict=True):
        for j in range(len(ids) + 1):
            node = ids[:j]
            if node not in nodes:
                nodes[node] = {token: float(rows[j, token]) for token in trie.allowed(node)}
    return nodes


def log_mean_exp(dicts: list[dict[Any, float]]) -> dict[Any, float]:
    """log of the mean of exp(value), key by key: log-probabilities averaged as probabilities."""
    return {key: math.log(sum(math.exp(d[key]) for d in dicts) / len(dicts)) for key in dicts[0]}


def calibrated(results: Sequence[ClassResult], prior: LabelPrior) -> list[ClassResult]:
    """loglik results divided by the content-free prior (the uncalibrated result is kept as `raw`)."""
    out = []
    for result in results:
        scores = {label: v - prior.sums[label] for label, v in result.scores.items()}
        means = ({label: v - prior.means[label] for label, v in result.mean_scores.items()}
                 if result.mean_scores is not None else None)
        out.append(ClassResult(max(scores, key=scores.__getitem__), scores, means, result.n_tokens, raw=result))
    return out


# ---------------------------------------------------------------- log-likelihood ranking


def loglik_classify(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str], *,
                    on_progress: Callable[[int], None] | None = None) -> list[ClassResult]:
    """Rank the labels by log-probability after each prompt (summed; the length-normalised ranking is kept too)."""
    results = []
    encoded = [encode(tokenizer, p) for p in prompts]
    prefix = SharedPrefix.of(model, encoded)
    for prompt, prompt_ids in zip(prompts, encoded, strict=True):
        variants = label_variants(tokenizer, prompt, labels, seq2seq=is_seq2seq(model))
        results.append(label_scores(variants, variant_logprobs(model, tokenizer, prompt_ids,
                                                               [ids for _, ids in variants], prefix)))
        if on_progress:
            on_progress(1)
    return results


def label_scores(variants: Sequence[Variant], sums: Sequence[float]) -> ClassResult:
    """Each label's best spelling, summed and per token; the label with the best sum wins."""
    scores: dict[str, float] = {}
    means: dict[str, float] = {}
    for (label, ids), total in zip(variants, sums, strict=True):
        scores[label] = max(scores.get(label, float("-inf")), total)
        means[label] = max(means.get(label, float("-inf")), total / len(ids))
    return ClassResult(max(scores, key=scores.__getitem__), scores, means)


def variant_logprobs(model: Any, tokenizer: Any, prompt_ids: list[int], variants: list[tuple[int, ...]],
                     prefix: SharedPrefix | None = None) -> list[float]:
    """Summed log-probability of each token sequence after the prompt; the prompt is computed once."""
    steps = step_logprobs(model, tokenizer, prompt_ids, variants, prefix)
    return [summed(rows, ids) for rows, ids in zip(steps, variants, strict=True)]


def summed(rows: Any, ids: tuple[int, ...]) -> float:
    """A sequence's log-probability from its step log-probabilities (row j predicts token j)."""
    return float(sum(rows[j, token] for j, token in enumerate(ids)))


def step_logprobs(model: Any, tokenizer: Any, prompt_ids: list[int], sequences: list[tuple[int, ...]],
                  prefix: SharedPrefix | None = None) -> list[Any]:
    """Per sequence, a (len + 1, vocab) tensor: row j is log P(next token | prompt, sequence[:j]).

    The prompt runs once (after `prefix`'s cache, when the prompt starts with it); its KV cache is repeated
    across the sequences, which run as one right-padded batch.
    """
    import torch

    with torch.inference_mode():
        if is_seq2seq(model):
            return seq2seq_steps(model, tokenizer, prompt_ids, sequences)
        start = prefix.cache_for(prompt_ids) if prefix is not None else {}
        fed = prompt_ids[len(prefix.ids):] if start else prompt_ids
        out = model(input_ids=torch.tensor([fed], device=model.device), use_cache=True, **start)
        first = out.logits[0, -1].float().log_softmax(dim=-1)
        cache = returned_cache(out)
        cache.batch_repeat_interleave(len(sequences))
        feed, feed_mask = right_padded(sequences, pad_id(tokenizer), model.device)
        mask = torch.cat([torch.ones((len(sequences), len(prompt_ids)), dtype=torch.long, device=model.device),
                          feed_mask], dim=1)
        logits = model(input_ids=feed, attention_mask=mask, use_cache=True, **{cache_argument(model): cache}).logits
        rest = logits.float().log_softmax(dim=-1)  # position j of the batch predicts token j + 1
        return [torch.cat([first[None], rest[k, :len(ids)]]) for k, ids in enumerate(sequences)]


def seq2seq_steps(model: Any, tokenizer: Any, prompt_ids: list[int], sequences: list[tuple[int, ...]]) -> list[Any]:
    """The encoder runs once; its output is shared by a batch of decoder passes, one per sequence."""
    import torch

    source = torch.tensor([prompt_ids], device=model.device)
    encoded = model.get_encoder()(input_ids=source).last_hidden_state.expand(len(sequences), -1, -1)
    start = model.generation_config.decoder_start_token_id
    feed, feed_mask = right_padded([(start, *ids) for ids in sequences], pad_id(tokenizer), model.device)
    logits = model(encoder_outputs=(encoded,), attention_mask=torch.ones_like(source).expand(len(sequences), -1),
                   decoder_input_ids=feed, decoder_attention_mask=feed_mask).logits
    logprobs = logits.float().log_softmax(dim=-1)
    return [logprobs[k, :len(ids) + 1] for k, ids in enumerate(sequences)]


def right_padded(rows: list[tuple[int, ...]], pad: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[k, :len(row)] = 1
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------- parsing free text


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words: case, whitespace and punctuation do not matter."""
    return re.findall(r"[a-z0-9]+", text.lower())


def contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a generated text names, or None (invalid).

    In order, the first rule that gives exactly one label wins: exact match after normalising case,
    whitespace and punctuation; prefix (the text starts with a label, or is the start of one); the text
    contains a label; a label contains the text.
    """
    said = words(text)
    if not said:
        return None
    forms = {label: words(label) for label in labels}
    rules: list[Callable[[list[str]], bool]] = [
        lambda form: form == said,
        lambda form: said[:len(form)] == form or form[:len(said)] == said,
        lambda form: contains(said, form),
        lambda form: contains(form, said),
    ]
    for rule in rules:
        matches = [label for label, form in forms.items() if form and rule(form)]
        if len(matches) == 1:
            return matches[0]
    return None


# ---------------------------------------------------------------- encoder classifiers


def head_classify(model: Any, tokenizer: Any, texts: Sequence[str], labels: Sequence[str], *, batch_size: int = 16,
                  max_length: int = 512, on_progress: Callable[[int], None] | None = None) -> list[ClassResult]:
    """An encoder with a classification head (BERT baselines): the label with the highest logit."""
    import torch

    from tunebench.errors import UserError

    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if sorted(names) != sorted(labels):
        raise UserError(f"the classifier head's labels ({', '.join(names)}) differ from the task's labels "
                        f"({', '.join(labels)})", "evaluate it on the data it was trained on (config.json id2label "
                        "names its classes)")
    results = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            logprobs = model(**batch.to(model.device)).logits.float().log_softmax(dim=-1)
        for row in logprobs:
            scores = {name: float(v) for name, v in zip(names, row, strict=True)}
            results.append(ClassResult(max(scores, key=scores.__getitem__), scores))
        if on_progress:
            on_progress(len(chunk))
    return results
