"""Batched text generation: the one generation path of tunebench (evaluation and the server both use it).

Never one example at a time: prompts are tokenized once, sorted by length (so a batch wastes little
padding), left-padded, and generated together with the KV cache. Results come back in the caller's order.
Greedy decoding gives the same text batched and unbatched (tested in fp32).

Stopping: at EOS, or when the decoded text contains one of `stop` (transformers' stop-string criterion;
the text is cut before the stop string). `finish_reason` follows the OpenAI convention: "stop" for EOS or a
stop string, "length" when `max_new_tokens` ran out.

Shared beginnings: few-shot prompts all start with the same instruction and examples (hundreds of tokens). When
every prompt of a call starts with at least PREFIX_MIN_TOKENS identical tokens (causal models, full-attention
caches), that prefix is run once and its KV cache copied into each batch; the rows are [prefix][padding]
[rest], and the attention mask and positions skip the padding, so in fp32 the tokens are the same as without
it (in bf16 the prefix's rounding differs, as batching's does, and a close call can go the other way).

Engines: "padded" is `model.generate` on padded batches (any device, causal or seq2seq). "batched" is
tunebench's own serving engine run offline (`tunebench.serve.offline`: continuous batching over a slot KV
cache, CUDA graphs on CUDA; causal models whose every layer is full attention; the shared prefix is computed
once and copied into each prefill's slots). "continuous" is transformers' continuous batching
(`generate_batch`, CUDA and causal models only; stop strings are applied after generation there), kept as the
comparison peer. "auto" picks "batched" for a causal model on CUDA whose cache is full attention in every
layer, "padded" otherwise (CPU, seq2seq, sliding windows): `benchmarks/generation_engines.py` measures them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Engine = Literal["auto", "padded", "continuous", "batched"]
ENGINES = ("auto", "padded", "continuous", "batched")
PREFIX_MIN_TOKENS = 32  # a shorter shared beginning is cheaper to recompute than to copy into every batch


@dataclass(frozen=True)
class Generation:
    text: str  # the generated text, cut before a stop string; special tokens removed
    n_tokens: int  # generated tokens, up to and including the one that ended generation
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int = 0
    # the generated ids, up to and including the one that ended generation (for analyses of where two runs part)
    ids: tuple[int, ...] = field(default=(), compare=False, repr=False)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt; a text that already starts with the BOS token (chat templates) gets no second one."""
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def is_seq2seq(model: Any) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token that ends a sequence: the tokenizer's EOS and the generation config's EOS id(s)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids |= set(configured) if isinstance(configured, list | tuple) else {configured}
    return ids


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_padded(batch: list[list[int]], pad: int, device: Any) -> tuple[Any, Any]:
    """(input_ids, attention_mask) with every row padded on the left to the longest."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
    return input_ids.to(device), mask.to(device)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an out-of-memory shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def generation_config(model: Any, tokenizer: Any, *, max_new_tokens: int, do_sample: bool, temperature: float,
                      top_p: float, **extra: Any) -> Any:
    """A fresh config: the model's own defaults (sampling flags, odd max lengths) never leak into a run."""
    from transformers import GenerationConfig

    sampling = {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1,
                            pad_token_id=pad_id(tokenizer), eos_token_id=sorted(end_token_ids(model, tokenizer)),
                            decoder_start_token_id=getattr(model.generation_config, "decoder_start_token_id", None),
                            **sampling, **extra)


def finish(tokenizer: Any, generated: Sequence[int], *, ends: set[int], pad: int | None, stop: Sequence[str],
           max_new_tokens: int, prompt_tokens: int) -> Generation:
    """Turn one row of generated ids into a Generation: cut at the end token, then at the first stop string.

    `pad` is the id that fills a row after it stopped early on a stop string (when it is not an end token).
    """
    ids = list(generated)
    end = next((i for i, t in enumerate(ids) if t in ends), None)
    if end is not None:
        text = tokenizer.decode(ids[:end], skip_special_tokens=True)
        return Generation(cut_at_stop(text, stop)[0], end + 1, "stop", prompt_tokens, tuple(ids[:end + 1]))
    if pad is not None and pad in ids:
        ids = ids[:ids.index(pad)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    text, stopped = cut_at_stop(text, stop)
    reason = "stop" if stopped or len(ids) < max_new_tokens else "length"
    return Generation(text, len(ids), reason, prompt_tokens, tuple(ids))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def resolve_engine(engine: Engine, model: Any) -> str:
    from tunebench.errors import UserError

    if engine not in ENGINES:
        raise UserError(f"generation engine {engine!r} is unknown", f"allowed: {', '.join(ENGINES)}")
    if engine == "continuous":
        on_cuda = model.device.type == "cuda"
        if not on_cuda or is_seq2seq(model) or not hasattr(model, "generate_batch"):
            raise UserError("continuous batching needs a causal model on a CUDA GPU",
                            "use eval.engine=padded (or auto) here")
        return "continuous"
    if engine == "batched":
        if is_seq2seq(model) or not has_full_attention(model):
            raise UserError("eval.engine=batched needs a causal model whose every layer is full attention "
                            "(no sliding window)", "use eval.engine=padded (or auto) for this model")
        return "batched"
    if engine == "auto" and model.device.type == "cuda" and not is_seq2seq(model) and has_full_attention(model):
        return "batched"
    return "padded"


def has_full_attention(model: Any) -> bool:
    """Whether a one-token forward pass returns a cache that keeps every position in every layer."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=model.device), use_cache=True)
    return full_attention(returned_cache(out))


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = (),
             batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             seed: int | None = None, engine: Engine = "auto",
             on_progress: Callable[[int], None] | None = None) -> list[Generation]:
    """Generate a continuation for every prompt, in the order given.

    `on_progress(n)` is called after each batch with the number of prompts it finished (for progress bars).
    """
    import torch

    if not prompts:
        return []
    if seed is not None:
        torch.manual_seed(seed)
    encoded = [encode(tokenizer, p) for p in prompts]
    chosen = resolve_engine(engine, model)
    if chosen == "batched":
        return generate_batched(model, tokenizer, encoded, max_new_tokens=max_new_tokens, stop=stop,
                                batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
                                seed=seed, on_progress=on_progress)
    continuous = chosen == "continuous"
    # Stop strings are a criterion of the padded path; continuous batching applies them afterwards.
    stop_strings = {"stop_strings": list(stop)} if stop and not continuous else {}
    config = generation_config(model, tokenizer, max_new_tokens=max_new_tokens, do_sample=do_sample,
                               temperature=temperature, top_p=top_p, **stop_strings)
    if continuous:
        return generate_continuous(model, tokenizer, encoded, config, stop=stop, on_progress=on_progress)
    results: list[Generation | None] = [None] * len(prompts)
    ends = end_token_ids(model, tokenizer)
    prefix = SharedPrefix.of(model, encoded)
    for batch in length_sorted_batches([len(e) for e in encoded], batch_size):
        rows = generate_padded(model, tokenizer, [encoded[i] for i in batch], config, prefix)
        for i, generated in zip(batch, rows, strict=True):
            results[i] = finish(tokenizer, generated, ends=ends, pad=pad_id(tokenizer), stop=stop,
                                max_new_tokens=max_new_tokens, prompt_tokens=len(encoded[i]))
        if on_progress:
            on_progress(len(batch))
    return [r for r in results if r is not None]


class SharedPrefix:
    """The prompts' common first tokens and their KV cache, computed once (see the module docstring)."""

    def __init__(self, ids: list[int], cache: Any, argument: str) -> None:
        self.ids, self.cache = ids, cache
        self.argument = argument  # the model's name for its cache argument

    @classmethod
    def of(cls, model: Any, encoded: list[list[int]]) -> SharedPrefix | None:
        """The shared prefix of `encoded` (each prompt keeps at least one token of its own), or None when it
        is short, there is one prompt, or the model is not a causal LM with a full-attention cache."""
        import torch
        from transformers.cache_utils import DynamicCache

        length = common_prefix_length(encoded)
        if len(encoded) < 2 or length < PREFIX_MIN_TOKENS or is_seq2seq(model):
            return None
        ids = encoded[0][:length]
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True)
        cache = returned_cache(out)
        if type(cache) is not DynamicCache or not full_attention(cache):
            return None  # sliding windows or other caches: generate computes the whole prompt
        return cls(ids, cache, cache_argument(model))

    def cache_for(self, prompt_ids: list[int]) -> dict[str, Any]:
        """The model's cache argument for one prompt that starts with the prefix (and goes on); {} otherwise."""
        if len(prompt_ids) <= len(self.ids) or prompt_ids[:len(self.ids)] != self.ids:
            return {}
        return {self.argument: self.for_batch(1)}

    def for_batch(self, rows: int) -> Any:
        """A copy of the cache for a batch of `rows` (generate extends the cache it is given)."""
        import copy

        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def common_prefix_length(encoded: list[list[int]]) -> int:
    """How many first tokens all prompts share, leaving every prompt at least one token after it."""
    limit = min(len(ids) for ids in encoded) - 1
    first = encoded[0]
    for at in range(max(limit, 0)):
        if any(ids[at] != first[at] for ids in encoded):
            return at
    return max(limit, 0)


def padded_inputs(model: Any, batch: list[list[int]], pad: int,
                  prefix: SharedPrefix | None) -> tuple[Any, Any, dict[str, Any]]:
    """(input_ids, attention_mask, generate's cache argument) of a batch: left-padded rows, or with `prefix`
    rows of [prefix][left-padded rest] and a copy of the prefix's cache, so generate feeds only the rest."""
    import torch

    if prefix is None:
        return *left_padded(batch, pad, model.device), {}
    rest, mask = left_padded([ids[len(prefix.ids):] for ids in batch], pad, model.device)
    shared = torch.tensor(prefix.ids, device=model.device).expand(len(batch), -1)
    return (torch.cat([shared, rest], dim=1), torch.cat([torch.ones_like(shared), mask], dim=1),
            {prefix.argument: prefix.for_batch(len(batch))})


def cache_argument(model: Any) -> str:
    """The name of the KV-cache argument: `cache` in recent transformers, `past_key_values` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The KV cache a forward pass returned (`cache` in recent transformers, `past_key_values` before)."""
    return out.get("cache") if out.get("cache") is not None else out.get("past_key_values")


def full_attention(cache: Any) -> bool:
    """Whether every layer of a returned cache keeps every position (no sliding window, no other layout)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def generate_padded(model: Any, tokenizer: Any, batch: list[list[int]], config: Any,
                    prefix: SharedPrefix | None = None) -> list[list[int]]:
    """One padded batch through `model.generate`; returns the generated ids of each row (padding included).
    With `prefix`, generation starts from the shared prefix's cache (`padded_inputs`)."""
    import torch

    input_ids, mask, extra = padded_inputs(model, batch, pad_id(tokenizer), prefix)
    with torch.inference_mode():
        # The tokenizer is only read by the stop-string criterion.
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config, tokenizer=tokenizer,
                             **extra)
    # A causal model returns prompt + continuation; a seq2seq model returns the decoder start + continuation.
    start = 1 if is_seq2seq(model) else input_ids.shape[1]
    return out[:, start:].tolist()


def generate_continuous(model: Any, tokenizer: Any, encoded: list[list[int]], config: Any, *, stop: Sequence[str],
                        on_progress: Callable[[int], None] | None) -> list[Generation]:
    """transformers' continuous batching (CUDA); outputs come back keyed by request id ("req_<n>", numbered
    in input order), so they are put back in input order by that number whatever order the dict has."""
    import torch

    # Not inference_mode: generate_batch's background thread updates its cache in place, which tensors made
    # under inference mode refuse outside it ("Inplace update to inference tensor outside InferenceMode").
    with torch.no_grad():
        outputs = model.generate_batch(inputs=encoded, generation_config=config, progress_bar=False)
    ordered = sorted(outputs.values(), key=lambda out: int(re.sub(r"\D", "", out.request_id) or 0))
    if len(ordered) != len(encoded):
        raise RuntimeError(f"continuous batching returned {len(ordered)} results for {len(encoded)} prompts")
    ends = end_token_ids(model, tokenizer)
    results = [finish(tokenizer, out.generated_tokens, ends=ends, pad=None, stop=stop,
                      max_new_tokens=config.max_new_tokens, prompt_tokens=len(ids))
               for out, ids in zip(ordered, encoded, strict=True)]
    if on_progress:
        on_progress(len(encoded))
    return results


def generate_batched(model: Any, tokenizer: Any, encoded: list[list[int]], *, max_new_tokens: int,
                     stop: Sequence[str], batch_size: int, do_sample: bool, temperature: float, top_p: float,
                     seed: int | None, on_progress: Callable[[int], None] | None) -> list[Generation]:
    """Every prompt through the serving engine offline (`tunebench.serve.offline`), at most
    max(batch_size, OFFLINE_SLOTS) rows at once; the generated ids are finished exactly as the padded path's
    (same end tokens, stop strings, decoding), so greedy text is the same in fp32."""
    from tunebench.serve.offline import OFFLINE_SLOTS, cached_prefix, offline_engine, run_offline
    from tunebench.serve.requests import GenerationRequest
    from tunebench.serve.sampling import SamplingParams

    shared = SharedPrefix.of(model, encoded)
    engine = offline_engine(model, tokenizer, longest=max(len(ids) for ids in encoded) + max_new_tokens,
                            slots=max(batch_size, OFFLINE_SLOTS))
    requests = [GenerationRequest(ids, SamplingParams(
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
        seed=None if seed is None else seed + i, stop=tuple(s for s in stop if s)))
        for i, ids in enumerate(encoded)]
    try:
        completions = run_offline(engine, requests, on_finished=on_progress,
                                  prefix=cached_prefix(shared.ids, shared.cache) if shared is not None else None)
    finally:
        del engine  # its KV cache takes most of the free device memory: hand it back to whatever runs next
        if model.device.type == "cuda":
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()
    ends = end_token_ids(model, tokenizer)
    return [finish(tokenizer, [t.id for t in c.tokens], ends=ends, pad=None, stop=stop,
                   max_new_tokens=max_new_tokens, prompt_tokens=len(ids))
            for c, ids in zip(completions, encoded, strict=True)]
