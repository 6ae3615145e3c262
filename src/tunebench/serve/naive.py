"""The `naive` engine: one request at a time through `model.generate`, the original server's behaviour, kept
as the baseline."""

from __future__ import annotations

import logging
import time
from typing import Any

from tunebench.serve.engine_base import Engine
from tunebench.serve.requests import GenerationFailed, Sequence

log = logging.getLogger("tunebench.serve")


class NaiveEngine(Engine):
    """One request at a time through `model.generate`: the original server's behaviour, kept as the baseline."""

    kind = "naive"
    slots = 1

    def _iteration(self) -> None:
        self._prune_waiting()
        if not self._waiting:
            return
        seq = self._waiting.popleft()
        self._flush()
        self._admitted(seq)
        try:
            self._generate(seq)
        except Exception as err:
            log.exception("generation failed")
            self._fail(seq, GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))
            return
        failure = None if seq.done else self._drop_reason(seq, time.monotonic())
        if failure:
            self._fail(seq, failure)

    def _generate(self, seq: Sequence) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from tunebench.evaluate.generation import generation_config

        p = seq.params
        config = generation_config(self.model, self.tokenizer, max_new_tokens=p.max_new_tokens,
                                   do_sample=p.do_sample, temperature=p.temperature, top_p=p.top_p,
                                   repetition_penalty=p.repetition_penalty)
        config.eos_token_id = None  # the sequence decides when to stop (EOS, stop strings, ignore_eos)
        if p.do_sample:
            config.top_k = p.top_k
            torch.manual_seed(p.seed if p.seed is not None else 0)
        ids = torch.tensor([seq.request.prompt_ids], device=self.device)
        last_logits = LastLogits(self.model)
        processors = LogitsProcessorList([FrequencyPresence(seq)] if p.frequency_penalty or p.presence_penalty
                                         else [])
        try:
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                logits_processor=processors,
                                stopping_criteria=StoppingCriteriaList([TokenTap(self, seq, last_logits)]),
                                **self._adapter_kwargs([seq]))
        finally:
            last_logits.remove()


class LastLogits:
    """Keeps the last position's logits of each forward pass (for the log-probability of the chosen token)."""

    def __init__(self, model: Any) -> None:
        self.row: Any = None
        self._hook = model.get_output_embeddings().register_forward_hook(self._keep)

    def _keep(self, _module: Any, _inputs: Any, out: Any) -> None:
        self.row = out[0, -1]

    def remove(self) -> None:
        self._hook.remove()


class TokenTap:
    """A StoppingCriteria that sees every new token first: it streams it, then says whether to stop.

    Stopping criteria run once per step with the new token at the end of `input_ids`, in every recent
    transformers (a streamer's place in the loop has moved between versions), so tokens are taken here.
    """

    def __init__(self, engine: NaiveEngine, seq: Sequence, last_logits: LastLogits) -> None:
        self.engine, self.seq, self.last_logits = engine, seq, last_logits

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        seq = self.seq
        token = int(input_ids[0, -1])
        logprob = float(torch.log_softmax(self.last_logits.row.float(), dim=-1)[token])
        self.engine.metrics.observe_step(1)
        self.engine._token(seq, token, logprob)
        self.engine._flush()  # stream every token as it is produced
        stop = seq.done or seq.handle.cancelled or seq.expired(time.monotonic())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class FrequencyPresence:
    """A LogitsProcessor applying OpenAI's frequency and presence penalties (transformers has neither)."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.prompt_len = len(seq.request.prompt_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        from tunebench.serve.sampling import apply_frequency_presence

        p = self.seq.params
        return apply_frequency_presence(scores[0], input_ids[0, self.prompt_len:], p.frequency_penalty,
                                        p.presence_penalty)[None]
