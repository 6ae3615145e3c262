"""Turning generated tokens into text as they arrive, and finding stop strings in it.

Decoding one token alone is wrong for most tokenizers (a SentencePiece word loses its leading space, a
byte-level token may end in the middle of a UTF-8 character), so the detokenizer decodes a short window
that starts a few tokens back, in the prompt's context, and emits only what the new token added; incomplete
characters wait for the next token. This is how TGI and vLLM stream text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# A stream event's JSON, for the TGI and OpenAI routes: json.dumps(..., ensure_ascii=False) builds a new
# JSONEncoder on every call (only the all-defaults call reuses one), once per token event; built once, the same
# settings give the same text.
event_json = json.JSONEncoder(ensure_ascii=False).encode

# Prompt tokens decoded with the first generated ones, so the first word gets its leading space right.
PROMPT_CONTEXT = 5
INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-PROMPT_CONTEXT:])
        self.prefix = 0  # start of the decoding window
        self.read = len(self.ids)  # tokens before this index have been emitted
        self.text = ""  # all generated text so far (special tokens skipped)
        # Fast tokenizers: call the Rust decoder directly. transformers' decode() adds ~20 µs of Python per call,
        # and the detokenizer calls it twice per token per running sequence (milliseconds per decode step at
        # batch 200 on the H200); without clean-up it returns the same text.
        backend = getattr(tokenizer, "_tokenizer", None)
        self._backend_decode = getattr(backend, "decode", None)

    def decode(self, ids: Sequence[int]) -> str:
        if self._backend_decode is not None:
            return self._backend_decode(list(ids), skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Append a generated token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith(INCOMPLETE):
            delta = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held back (an incomplete character stays as U+FFFD)."""
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        delta = after[len(before):]
        self.read = len(self.ids)
        self.text += delta
        return delta


def find_stop(text: str, stop: Sequence[str], start: int = 0) -> int | None:
    """Index in `text` of the earliest stop string found at or after `start`, or None."""
    hits = [i for s in stop if s and (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def stop_search_start(text_len_before: int, stop: Sequence[str]) -> int:
    """Where a search must begin after new text arrived: a stop string may straddle the old end."""
    longest = max((len(s) for s in stop), default=0)
    return max(0, text_len_before - longest + 1)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string (not safe to send yet)."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class StopTrimmer:
    """Streams text without the stop string (OpenAI's convention): holds back what might begin one."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(stop)
        self.sent = 0

    def release(self, text: str, *, final: bool = False, stop_at: int | None = None) -> str:
        if final:
            end = stop_at if stop_at is not None else len(text)
        else:  # a complete stop string may arrive before the engine's verdict does
            found = find_stop(text, self.stop)
            end = found if found is not None else len(text) - held_back(text, self.stop)
        if end <= self.sent:
            return ""
        chunk, self.sent = text[self.sent:end], end
        return chunk
