"""Per-request sampling: the parameters a request carries, and choosing the next token for a whole batch.

Every row of a running batch may have its own temperature, top-k, top-p, penalties and seed, so the batched
engine picks tokens row-aware: greedy rows take the argmax of the (penalized) logits in one vectorized call;
sampling rows are warped (temperature, then top-k, then top-p, as transformers and TGI order them) and drawn
with their own seeded generator, so a seeded request is reproducible whatever else shares its batch.
The repetition penalty follows transformers' definition (over prompt and generated tokens), so greedy output
with a penalty matches `model.generate`; frequency and presence penalties follow OpenAI's (generated tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

MAX_SEED = 2**64 - 1
# Below this temperature sampling is greedy decoding (vLLM's rule): dividing by it would overflow the logits.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def resolved(self) -> SamplingParams:
        """A near-zero temperature means greedy; sampling without a seed gets a random one, reported back to
        the client (as TGI does)."""
        if self.do_sample and self.temperature < GREEDY_TEMPERATURE:
            return replace(self, do_sample=False, temperature=1.0)
        if self.do_sample and self.seed is None:
            return replace(self, seed=random.randrange(MAX_SEED))
        return self


@dataclass
class RowState:
    """What sampling needs to know about one running sequence."""

    params: SamplingParams
    prompt_ids: Any  # 1-D LongTensor on the model's device, for the repetition penalty only (else None)
    generated: list[int] = field(default_factory=list)
    generator: Any = None  # torch.Generator, seeded, for sampling rows

    @classmethod
    def create(cls, params: SamplingParams, prompt_ids: list[int], device: Any) -> RowState:
        import torch

        generator = None
        if params.do_sample:
            generator = torch.Generator(device=device)
            generator.manual_seed(params.seed if params.seed is not None else 0)
        # Only a repetition penalty reads the prompt on the device: a copy per admitted request stalled the host
        # ~50 us each, which left the GPU idle ~2 ms at every 40-prompt admission (H200, lead-21).
        prompt = (torch.tensor(prompt_ids, dtype=torch.long, device=device) if params.repetition_penalty != 1.0
                  else None)
        return cls(params, prompt, [], generator)


def apply_repetition_penalty(logits: Any, seen: Any, penalty: float) -> Any:
    """transformers' RepetitionPenaltyLogitsProcessor for one row: divide positive, multiply negative scores."""
    import torch

    score = logits.gather(0, seen)
    logits.scatter_(0, seen, torch.where(score < 0, score * penalty, score / penalty))
    return logits


def apply_frequency_presence(logits: Any, generated: Any, frequency: float, presence: float) -> Any:
    """OpenAI's penalties for one row: minus count x frequency, minus presence once a token appeared."""
    import torch

    if generated.numel() == 0:
        return logits
    counts = torch.bincount(generated, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def penalize(logits: Any, row: RowState) -> Any:
    import torch

    p = row.params
    generated = torch.tensor(row.generated, dtype=torch.long, device=logits.device)
    if p.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, torch.cat([row.prompt_ids, generated]), p.repetition_penalty)
    if p.frequency_penalty or p.presence_penalty:
        logits = apply_frequency_presence(logits, generated, p.frequency_penalty, p.presence_penalty)
    return logits


def warp(logits: Any, p: SamplingParams) -> Any:
    """Temperature, then top-k, then top-p (nucleus), on one row of logits."""
    import torch

    # A huge logit over a tiny temperature overflows; infinities would turn softmax into NaN.
    big = torch.finfo(logits.dtype).max
    logits = torch.nan_to_num(logits / p.temperature, posinf=big, neginf=-big)
    if 0 < p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the most likely token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= p.top_p
        drop_sorted[0] = False
        logits = logits.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    return logits


def choose_tokens(logits: Any, rows: list[RowState]) -> tuple[list[int], list[float]]:
    """The next token of every row and its log-probability under the model's raw distribution."""
    import torch

    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    if any(r.params.penalized for r in rows):
        logits = logits.clone()
        for i, row in enumerate(rows):
            if row.params.penalized:
                logits[i] = penalize(logits[i], row)
    tokens = logits.argmax(dim=-1)
    for i, row in enumerate(rows):
        if row.params.do_sample:
            probs = warp(logits[i], row.params).softmax(-1)
            tokens[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist()
